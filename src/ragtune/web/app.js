// ragtune web UI: chat with streamed answers and clickable citations, document upload and
// management. Plain browser JavaScript, no build step. Text from the server is only ever set
// with textContent, so document contents can never inject markup.
"use strict";

const KEY_STORAGE = "ragtune.apiKey";
const JOB_POLL_MS = 500;
const $ = (id) => document.getElementById(id);

let apiKey = localStorage.getItem(KEY_STORAGE) || "";

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// --- HTTP -----------------------------------------------------------------------------------
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey) headers.set("Authorization", `Bearer ${apiKey}`);
  const response = await fetch(path, { ...options, headers });
  if (response.ok) return response;
  let code = "error";
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body.error) ({ code, message } = body.error);
  } catch (_) {
    // not JSON (a proxy's error page): the status line is the message
  }
  if (response.status === 401) askForKey(message);
  throw new ApiError(response.status, code, message);
}

async function apiJson(path, options) {
  return (await api(path, options)).json();
}

// Server-Sent Events from a POST response: calls onEvent(name, data) for each event.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

// --- API key --------------------------------------------------------------------------------
function askForKey(reason) {
  $("key-button").hidden = false;
  const dialog = $("key-dialog");
  if (!dialog.open) {
    $("key-input").value = apiKey;
    setStatus(reason, "error");
    dialog.showModal();
  }
}

function setupKeyDialog() {
  $("key-button").addEventListener("click", () => askForKey("Enter the API key."));
  $("key-dialog").addEventListener("close", () => {
    const action = $("key-dialog").returnValue;
    if (action === "save") {
      apiKey = $("key-input").value.trim();
      localStorage.setItem(KEY_STORAGE, apiKey);
    } else if (action === "forget") {
      apiKey = "";
      localStorage.removeItem(KEY_STORAGE);
    } else {
      return;
    }
    refreshDocuments();
    checkStatus();
  });
}

// --- status ---------------------------------------------------------------------------------
function setStatus(text, kind = "") {
  const el = $("service-status");
  el.textContent = text;
  el.dataset.kind = kind;
}

async function checkStatus() {
  try {
    const response = await fetch("/ready");
    const body = await response.json();
    if (body.ready) setStatus("Ready", "ok");
    else setStatus(`Not ready: ${body.error ? body.error.message : "a dependency is down"}`, "error");
  } catch (error) {
    setStatus(`Server unreachable: ${error.message}`, "error");
  }
}

// --- chat -----------------------------------------------------------------------------------
function appendMessage(role) {
  const item = document.createElement("li");
  item.className = `message ${role}`;
  const label = document.createElement("span");
  label.className = "visually-hidden";
  label.textContent = role === "user" ? "You asked: " : "Answer: ";
  item.append(label);
  $("messages").append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

// Empties a chat message but keeps its screen-reader label ("Answer: ").
function clearMessage(item) {
  item.replaceChildren(item.querySelector(".visually-hidden"));
}

function citationLabel(c) {
  return c.page ? `${c.source}, page ${c.page}` : c.source;
}

function openPassage(citation) {
  $("passage-title").textContent = `[${citation.number}] ${citation.title || citation.source}`;
  const meta = [citation.source];
  if (citation.page) meta.push(`page ${citation.page}`);
  if (citation.heading) meta.push(citation.heading);
  $("passage-meta").textContent = meta.join(" · ");
  $("passage-text").textContent = citation.snippet;
  $("passage-dialog").showModal();
}

function citationButton(citation) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "citation";
  button.textContent = `[${citation.number}]`;
  button.setAttribute("aria-label", `Source ${citation.number}: ${citationLabel(citation)}`);
  button.addEventListener("click", () => openPassage(citation));
  return button;
}

// The answer text with each [n] marker turned into a button opening that citation.
function renderAnswer(container, result) {
  clearMessage(container);
  const byNumber = new Map(result.citations.map((c) => [c.number, c]));
  const text = document.createElement("p");
  text.className = "answer-text";
  for (const part of (result.answer || "").split(/(\[\d+\])/)) {
    const marker = part.match(/^\[(\d+)\]$/);
    const citation = marker && byNumber.get(Number(marker[1]));
    text.append(citation ? citationButton(citation) : document.createTextNode(part));
  }
  container.append(text);
  if (result.abstained) container.classList.add("abstained");
  if (result.citations.length) {
    const sources = document.createElement("ol");
    sources.className = "sources";
    sources.setAttribute("aria-label", "Sources");
    for (const c of result.citations) {
      const item = document.createElement("li");
      const link = document.createElement("button");
      link.type = "button";
      link.className = "source-link";
      link.textContent = citationLabel(c);
      link.addEventListener("click", () => openPassage(c));
      item.append(citationButton(c), " ", link);
      sources.append(item);
    }
    container.append(sources);
  }
  const timing = document.createElement("p");
  timing.className = "muted small";
  timing.textContent = `${Math.round(result.timings_ms.total ?? result.timings_ms.retrieve)} ms`;
  container.append(timing);
}

async function ask(question) {
  const user = appendMessage("user");
  user.append(question);
  const answer = appendMessage("assistant");
  answer.setAttribute("aria-busy", "true");
  const live = document.createElement("p");
  live.className = "answer-text streaming";
  live.textContent = "Searching…";
  answer.append(live);
  $("ask-button").disabled = true;
  try {
    const response = await api("/v1/query", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ question, stream: true }),
    });
    let started = false;
    await readEvents(response, (event, data) => {
      if (event === "token") {
        if (!started) live.textContent = "";
        started = true;
        live.textContent += data.text;
      } else if (event === "done") {
        renderAnswer(answer, data);
      } else if (event === "error") {
        throw new ApiError(500, data.error.code, data.error.message);
      }
    });
  } catch (error) {
    clearMessage(answer);
    const problem = document.createElement("p");
    problem.className = "error";
    problem.setAttribute("role", "alert");
    problem.textContent = error.message;
    answer.append(problem);
  } finally {
    answer.removeAttribute("aria-busy");
    answer.scrollIntoView({ block: "end" });
    $("ask-button").disabled = false;
  }
}

function setupChat() {
  const form = $("ask-form");
  const input = $("question");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const question = input.value.trim();
    if (!question) return;
    input.value = "";
    ask(question);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
}

// --- documents ------------------------------------------------------------------------------
function badge(status) {
  const el = document.createElement("span");
  el.className = `badge ${status}`;
  el.textContent = status;
  return el;
}

async function refreshDocuments() {
  let listing;
  try {
    listing = await apiJson("/v1/documents?limit=500");
  } catch (error) {
    $("documents-summary").textContent = `Cannot list documents: ${error.message}`;
    return;
  }
  const list = $("document-list");
  list.replaceChildren();
  for (const doc of listing.documents) {
    const item = document.createElement("li");
    item.className = "document";
    item.dataset.id = doc.id;
    item.dataset.status = doc.status;
    const name = document.createElement("span");
    name.className = "document-name";
    name.textContent = doc.title && doc.title !== doc.source ? `${doc.title}` : doc.source;
    name.title = doc.source;
    const info = document.createElement("span");
    info.className = "muted small";
    info.textContent = doc.status === "indexed" ? `${doc.chunks} chunks · ${doc.source}` : doc.source;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "secondary small";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete ${doc.source}`);
    remove.addEventListener("click", () => deleteDocument(doc, remove));
    item.append(badge(doc.status), name, remove, info);
    if (doc.error) {
      const error = document.createElement("p");
      error.className = "error small";
      error.textContent = doc.error;
      item.append(error);
    }
    list.append(item);
  }
  const shown = listing.documents.length;
  $("documents-summary").textContent =
    listing.total === 0 ? "No documents yet." : `${listing.total} document${listing.total === 1 ? "" : "s"}` +
      (shown < listing.total ? ` (first ${shown} shown)` : "");
}

async function deleteDocument(doc, button) {
  button.disabled = true;
  try {
    await api(`/v1/documents/${encodeURIComponent(doc.id)}`, { method: "DELETE" });
    setStatus(`Deleted ${doc.source}`, "ok");
  } catch (error) {
    setStatus(`Could not delete ${doc.source}: ${error.message}`, "error");
  }
  refreshDocuments();
}

// --- uploads --------------------------------------------------------------------------------
function jobItem(title) {
  const item = document.createElement("li");
  item.className = "job";
  const heading = document.createElement("p");
  heading.className = "job-title";
  heading.textContent = title;
  const progress = document.createElement("progress");
  progress.max = 1;
  progress.value = 0;
  progress.setAttribute("aria-label", `Progress of ${title}`);
  const detail = document.createElement("p");
  detail.className = "job-detail muted small";
  detail.textContent = "Uploading…";
  const errors = document.createElement("ul");
  errors.className = "job-errors";
  item.append(heading, progress, detail, errors);
  $("jobs").prepend(item);
  return { item, progress, detail, errors };
}

function showJob(view, job) {
  view.progress.max = job.files_total;
  view.progress.value = job.files_done;
  const state = { queued: "Queued", running: "Indexing", done: "Done", failed: "Failed" }[job.state];
  view.detail.textContent =
    `${state}: ${job.files_done} of ${job.files_total} files, ${job.chunks} chunks` +
    (job.files_failed ? `, ${job.files_failed} failed` : "") + (job.error ? ` (${job.error})` : "");
  view.item.dataset.state = job.state;
  view.errors.replaceChildren();
  for (const file of job.files.filter((f) => f.error)) {
    const li = document.createElement("li");
    li.className = "error small";
    li.textContent = `${file.filename}: ${file.error}`;
    view.errors.append(li);
  }
}

async function upload(files) {
  if (!files.length) return;
  const names = Array.from(files, (f) => f.name);
  const view = jobItem(names.length === 1 ? names[0] : `${names.length} files`);
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  let accepted;
  try {
    accepted = await apiJson("/v1/documents", { method: "POST", body: form });
  } catch (error) {
    view.item.dataset.state = "failed";
    view.detail.textContent = `Not uploaded: ${error.message}`;
    view.detail.setAttribute("role", "alert");
    return;
  }
  refreshDocuments();
  for (;;) {
    let job;
    try {
      job = await apiJson(accepted.status_url);
    } catch (error) {
      view.detail.textContent = `Lost track of the job: ${error.message}`;
      return;
    }
    showJob(view, job);
    if (job.state === "done" || job.state === "failed") break;
    await new Promise((resolve) => setTimeout(resolve, JOB_POLL_MS));
  }
  refreshDocuments();
}

function setupUploads() {
  const zone = $("dropzone");
  const input = $("file-input");
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  input.addEventListener("change", () => {
    upload(input.files);
    input.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    upload(event.dataTransfer.files);
  });
  $("refresh-documents").addEventListener("click", refreshDocuments);
}

document.addEventListener("DOMContentLoaded", () => {
  setupKeyDialog();
  setupChat();
  setupUploads();
  checkStatus();
  refreshDocuments();
});
