// The Documents panel: upload (drop or pick) into a collection with metadata, one card per
// upload following its job, the document list with collection, status and delete, and the
// documents and tags a question may be limited to.

import { api, apiJson, plural } from "./api.js";
import { $, confirmAction, setStatus } from "./ui.js";

const JOB_POLL_MS = 500;
const STATES = { queued: "Queued", running: "Indexing", done: "Done", failed: "Failed" };
// The server's rules (ragtune.types), checked here first so a typo is said before any upload.
const COLLECTION_NAME = /^[A-Za-z0-9_][A-Za-z0-9_-]{0,254}$/;
const METADATA_KEY = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;
const MAX_METADATA_KEYS = 32;
const MAX_VALUE_CHARS = 256;
let defaultCollection = "";

let documents = []; // the last listing, for the question scope
const inFlight = new Map(); // document id -> source, while its upload's job has not reached it
let listeners = [];

export const knownDocuments = () => documents;

// `listener(documents)` runs after every refresh of the list.
export function onDocumentsChanged(listener) {
  listeners.push(listener);
}

function badge(status) {
  const el = document.createElement("span");
  el.className = `badge ${status}`;
  el.textContent = status;
  return el;
}

function documentName(doc) {
  return doc.title && doc.title !== doc.source ? doc.title : doc.source;
}

function documentItem(doc, pending) {
  const status = pending ? "pending" : doc.status;
  const item = document.createElement("li");
  item.className = "document";
  item.dataset.id = doc.id;
  item.dataset.status = status;
  const name = document.createElement("span");
  name.className = "document-name";
  name.textContent = documentName(doc);
  name.title = doc.source;
  const info = document.createElement("span");
  info.className = "muted small";
  if (pending) info.textContent = `indexing… · ${doc.source}`;
  else if (doc.status === "indexed") info.textContent = `${plural(doc.chunks, "chunk")} · ${doc.source}`;
  else info.textContent = doc.source;
  if (doc.collection) {
    item.dataset.collection = doc.collection;
    info.textContent = `${doc.collection} · ${info.textContent}`;
  }
  if (doc.tags && doc.tags.length) info.textContent += ` · tags: ${doc.tags.join(", ")}`;
  const meta = Object.entries(doc.metadata || {});
  if (meta.length) info.textContent += ` · ${meta.map(([k, v]) => `${k}=${v}`).join(", ")}`;
  item.append(badge(status), name);
  if (!pending) {
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "secondary small";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete ${doc.source}`);
    remove.addEventListener("click", () => deleteDocument(doc, remove));
    item.append(remove);
  }
  item.append(info);
  if (doc.error && !pending) {
    const error = document.createElement("p");
    error.className = "error small";
    error.textContent = doc.error;
    item.append(error);
  }
  return item;
}

export async function refreshDocuments() {
  let listing;
  try {
    listing = await apiJson("/v1/documents?limit=500");
  } catch (error) {
    $("documents-summary").textContent = `Cannot list documents: ${error.message}`;
    return;
  }
  documents = listing.documents;
  const list = $("document-list");
  list.replaceChildren();
  const listed = new Set();
  for (const doc of listing.documents) {
    listed.add(doc.id);
    list.append(documentItem(doc, inFlight.has(doc.id)));
  }
  // Uploads the worker has not reached yet are not in the catalog: listed as pending too.
  for (const [id, source] of inFlight) {
    if (!listed.has(id)) list.append(documentItem({ id, source, title: "", status: "pending" }, true));
  }
  const shown = listing.documents.length;
  $("documents-summary").textContent =
    listing.total === 0 && inFlight.size === 0
      ? "No documents yet."
      : plural(listing.total, "document") + (shown < listing.total ? ` (first ${shown} shown)` : "");
  for (const listener of listeners) listener(documents);
  refreshCollections();
}

// The collections this key may use, offered as the upload panel's choices.
async function refreshCollections() {
  let listing;
  try {
    listing = await apiJson("/v1/collections");
  } catch (_) {
    return; // the document list already says what is wrong
  }
  defaultCollection = listing.default;
  $("upload-collection").placeholder = `${listing.default} (default)`;
  const options = $("collection-options");
  options.replaceChildren();
  for (const collection of listing.collections) {
    const option = document.createElement("option");
    option.value = collection.name;
    option.label = `${collection.name} (${plural(collection.documents, "document")})`;
    options.append(option);
  }
  showUploadTarget();
}

function showUploadTarget() {
  const name = $("upload-collection").value.trim();
  const target = name || (defaultCollection ? `${defaultCollection} (default)` : "the default collection");
  const hasMetadata = $("upload-metadata").value.trim() !== "";
  $("upload-summary").textContent = `Upload into: ${target}${hasMetadata ? ", with metadata" : ""}`;
}

// The upload options as form fields, or an error message saying what to fix.
function uploadOptions() {
  const collection = $("upload-collection").value.trim();
  if (collection && !COLLECTION_NAME.test(collection)) {
    return {
      field: "upload-collection",
      error: `Collection "${collection.slice(0, 80)}" is not a valid name: use 1 to 255 letters, digits, "_" or "-", not starting with "-".`,
    };
  }
  const raw = $("upload-metadata").value.trim();
  if (!raw) return { collection, metadata: "" };
  let metadata;
  try {
    metadata = JSON.parse(raw);
  } catch (error) {
    return { field: "upload-metadata", error: `Metadata is not valid JSON (${error.message}); write e.g. {"team": "finance"}.` };
  }
  if (metadata === null || typeof metadata !== "object" || Array.isArray(metadata)) {
    return { field: "upload-metadata", error: 'Metadata must be a JSON object, e.g. {"team": "finance", "year": 2024}.' };
  }
  const entries = Object.entries(metadata);
  if (entries.length > MAX_METADATA_KEYS) {
    return { field: "upload-metadata", error: `At most ${MAX_METADATA_KEYS} metadata keys; there are ${entries.length}.` };
  }
  for (const [key, value] of entries) {
    if (!METADATA_KEY.test(key)) {
      return {
        field: "upload-metadata",
        error: `Metadata key "${key.slice(0, 80)}" is not allowed: use letters, digits or "_", not starting with a digit.`,
      };
    }
    const scalar = ["string", "number", "boolean"].includes(typeof value);
    if (!scalar || (typeof value === "string" && (value.length > MAX_VALUE_CHARS || /[\r\n]/.test(value)))) {
      return {
        field: "upload-metadata",
        error: `Metadata ${key}: use a text of at most ${MAX_VALUE_CHARS} characters on one line, a number or true/false.`,
      };
    }
  }
  return { collection, metadata: JSON.stringify(metadata) };
}

function showOptionsError(options) {
  const message = $("upload-options-error");
  for (const id of ["upload-collection", "upload-metadata"]) {
    $(id).setAttribute("aria-invalid", String(options.field === id));
  }
  message.textContent = options.error || "";
  message.hidden = !options.error;
  if (options.error) {
    $("upload-options").open = true;
    $(options.field).focus();
  }
}

async function deleteDocument(doc, button) {
  const sure = await confirmAction(
    `Delete ${doc.source}? Its passages leave the index and answers can no longer cite it.`,
    "Delete",
  );
  if (!sure) return;
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
function jobCard(title) {
  const item = document.createElement("li");
  item.className = "job";
  const header = document.createElement("div");
  header.className = "job-header";
  const heading = document.createElement("p");
  heading.className = "job-title";
  heading.textContent = title;
  const dismiss = document.createElement("button");
  dismiss.type = "button";
  dismiss.className = "secondary small";
  dismiss.textContent = "Dismiss";
  dismiss.setAttribute("aria-label", `Dismiss the upload of ${title}`);
  header.append(heading, dismiss);
  const progress = document.createElement("progress");
  progress.max = 1;
  progress.value = 0;
  progress.setAttribute("aria-label", `Progress of ${title}`);
  const detail = document.createElement("p");
  detail.className = "job-detail muted small";
  detail.textContent = "Uploading…";
  const errors = document.createElement("ul");
  errors.className = "job-errors";
  errors.setAttribute("aria-label", `Files of ${title} not indexed`);
  errors.setAttribute("aria-live", "assertive"); // a list keeps its list role: no role="alert" here
  item.append(header, progress, detail, errors);
  $("jobs").prepend(item);
  const view = { item, progress, detail, errors, dismissed: false, rejected: [] };
  dismiss.addEventListener("click", () => {
    view.dismissed = true;
    item.remove();
  });
  return view;
}

function fileError(view, filename, message) {
  const li = document.createElement("li");
  li.className = "error small";
  const name = document.createElement("strong");
  name.textContent = filename;
  li.append(name, `: ${message}`);
  view.errors.append(li);
}

function showJob(view, job) {
  view.progress.max = 1;
  view.progress.value = job.progress;
  const current = job.current_file;
  let text = `${STATES[job.state]}: ${job.files_done} of ${plural(job.files_total, "file")}, ${plural(job.chunks, "chunk")}`;
  if (current && current.chunks_total) {
    text += ` · ${current.filename}: ${current.chunks_embedded} of ${plural(current.chunks_total, "chunk")} embedded`;
  }
  if (job.files_failed) text += `, ${job.files_failed} failed`;
  if (view.rejected.length) text += `, ${view.rejected.length} not uploaded`;
  if (job.error) text += ` (${job.error})`;
  view.detail.textContent = text;
  view.item.dataset.state = job.state;
  view.item.classList.toggle("has-errors", Boolean(job.files_failed || view.rejected.length));
  view.errors.replaceChildren();
  for (const file of view.rejected) fileError(view, file.filename, `not uploaded: ${file.message}`);
  for (const file of job.files.filter((f) => f.error)) fileError(view, file.filename, file.error);
}

async function upload(files) {
  if (!files.length) return;
  const options = uploadOptions();
  showOptionsError(options);
  if (options.error) return; // said beside the field, which has the focus
  const names = Array.from(files, (f) => f.name);
  const view = jobCard(names.length === 1 ? names[0] : `${names.length} files`);
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  if (options.collection) form.append("collection", options.collection);
  if (options.metadata) form.append("metadata", options.metadata);
  let accepted;
  try {
    accepted = await apiJson("/v1/documents", { method: "POST", body: form });
  } catch (error) {
    view.item.dataset.state = "failed";
    view.detail.textContent = `Not uploaded: ${error.message}`;
    view.detail.classList.replace("muted", "error");
    view.detail.setAttribute("role", "alert");
    return;
  }
  view.rejected = accepted.rejected || [];
  for (const doc of accepted.documents) inFlight.set(doc.document_id, doc.source);
  refreshDocuments();
  let filesDone = 0;
  for (;;) {
    let job;
    try {
      job = await apiJson(accepted.status_url);
    } catch (error) {
      view.detail.textContent = `Lost track of the job: ${error.message}`;
      break;
    }
    if (!view.dismissed) showJob(view, job); // a dismissed card is gone, but its documents are still followed
    const finished = job.state === "done" || job.state === "failed";
    for (const file of job.files) if (file.status !== "queued" || finished) inFlight.delete(file.document_id);
    if (job.files_done !== filesDone || finished) refreshDocuments();
    filesDone = job.files_done;
    if (finished) break;
    await new Promise((resolve) => setTimeout(resolve, JOB_POLL_MS));
  }
  for (const doc of accepted.documents) inFlight.delete(doc.document_id);
}

export function setupDocuments() {
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
  for (const id of ["upload-collection", "upload-metadata"]) {
    $(id).addEventListener("input", () => {
      showUploadTarget();
      if ($("upload-options-error").hidden) return;
      const options = uploadOptions();
      if (!options.error) showOptionsError(options); // clears the message once it is fixed
    });
  }
}
