// Page-wide helpers: element lookup, the header status line, the confirmation dialog and, on
// narrow screens, which panel (chat, conversations, documents) is shown.

export const $ = (id) => document.getElementById(id);

let statusNote = ""; // a standing problem (no key, key refused) that "Ready" must not hide

export function setStatus(text, kind = "") {
  const el = $("service-status");
  el.textContent = text;
  el.dataset.kind = kind;
}

export function setStatusNote(note) {
  statusNote = note;
  if (note) setStatus(note, "error");
}

export async function checkStatus() {
  try {
    const response = await fetch("/ready");
    const body = await response.json();
    if (statusNote) setStatus(statusNote, "error");
    else if (body.ready) setStatus("Ready", "ok");
    else setStatus(`Not ready: ${body.error ? body.error.message : "a dependency is down"}`, "error");
  } catch (error) {
    setStatus(`Server unreachable: ${error.message}`, "error");
  }
}

// Resolves true when the person confirms `question` with the `action` button, false otherwise.
// Cancel is the default button, so Enter never deletes by accident.
export function confirmAction(question, action) {
  const dialog = $("confirm-dialog");
  $("confirm-text").textContent = question;
  $("confirm-ok").textContent = action;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

// --- panels on narrow screens ----------------------------------------------------------------
export function showView(view) {
  document.body.dataset.view = view;
  for (const button of document.querySelectorAll(".views button")) {
    button.setAttribute("aria-pressed", String(button.dataset.view === view));
  }
}

export function setupViews() {
  for (const button of document.querySelectorAll(".views button")) {
    button.addEventListener("click", () => showView(button.dataset.view));
  }
}
