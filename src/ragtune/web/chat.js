// The chat: questions, answers streamed as safe Markdown with live citation chips, Stop, Copy,
// Regenerate, the "not found" next step, and which documents or tags a question searches.

import { ApiError, plural, postJson, readEvents } from "./api.js";
import { answeredIn, ensureConversation, forgetConversation } from "./conversations.js";
import { knownDocuments, onDocumentsChanged } from "./documents.js";
import { renderMarkdown } from "./markdown.js";
import { $, setStatus, showView } from "./ui.js";

let streaming = null; // the AbortController of the answer being written
let lastQuestion = "";
const scope = { documents: new Set(), tags: new Set() };

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function appendMessage(role) {
  $("messages").querySelector(".hint")?.remove();
  const item = el("li", `message ${role}`);
  item.append(el("span", "visually-hidden", role === "user" ? "You asked: " : "Answer: "));
  $("messages").append(item);
  scrollToEnd();
  return item;
}

function scrollToEnd() {
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
}

export function resetChat() {
  stopAnswer();
  lastQuestion = "";
  const hint = el("li", "message hint");
  hint.textContent =
    "Ask a question about the documents in the Documents panel. Answers cite their sources as " +
    "numbered markers: select one to read the passage. Follow-up questions build on the answers before.";
  $("messages").replaceChildren(hint);
}

// --- citations --------------------------------------------------------------------------------
const citationLabel = (c) => (c.page ? `${c.source}, page ${c.page}` : c.source);

function openPassage(citation) {
  $("passage-title").textContent = `[${citation.number}] ${citation.title || citation.source}`;
  const meta = [citation.source];
  if (citation.page) meta.push(`page ${citation.page}`);
  if (citation.heading) meta.push(citation.heading);
  $("passage-meta").textContent = meta.join(" · ");
  $("passage-text").textContent = citation.snippet;
  $("passage-dialog").showModal();
}

// A chip for marker [n]: live while the answer streams, it opens the passage once the answer's
// citations have arrived (the `done` event), and explains itself until then.
function citationChip(number, answer) {
  const chip = el("button", "citation", `[${number}]`);
  chip.type = "button";
  chip.dataset.number = String(number);
  chip.addEventListener("click", () => {
    const citation = answer.citations && answer.citations.get(number);
    if (citation) openPassage(citation);
    else setStatus(`Source ${number} can be opened once the answer is complete`);
  });
  activate(chip, answer);
  return chip;
}

function activate(chip, answer) {
  const number = Number(chip.dataset.number);
  const citation = answer.citations && answer.citations.get(number);
  if (citation) {
    delete chip.dataset.pending;
    chip.setAttribute("aria-label", `Source ${number}: ${citationLabel(citation)}`);
  } else if (answer.citations) {
    chip.replaceWith(document.createTextNode(`[${number}]`)); // the answer cites no such source
  } else {
    chip.dataset.pending = "true"; // still clickable: it says when the source can be read
    chip.setAttribute("aria-label", `Source ${number} (opens when the answer is complete)`);
  }
}

// --- answers ------------------------------------------------------------------------------------
// One answer being shown: its element, the text so far and, once known, its citations.
function answerView(item) {
  const body = el("div", "answer-text");
  item.append(body);
  return { item, body, text: "", rendered: null, citations: null, frame: 0 };
}

function renderBody(answer) {
  const list = $("messages");
  const following = list.scrollHeight - list.scrollTop - list.clientHeight < 48; // at the end: stay there
  answer.frame = 0;
  answer.rendered = answer.text;
  answer.body.replaceChildren(renderMarkdown(answer.text, (n) => citationChip(n, answer)));
  if (following) scrollToEnd();
}

function addText(answer, text) {
  answer.text += text;
  answer.body.classList.remove("streaming");
  if (!answer.frame) answer.frame = requestAnimationFrame(() => renderBody(answer)); // one render per frame
}

function finish(answer, result) {
  cancelAnimationFrame(answer.frame);
  answer.citations = new Map(result.citations.map((c) => [c.number, c]));
  answer.body.classList.remove("streaming");
  answer.text = result.answer || "";
  if (answer.rendered !== answer.text) {
    renderBody(answer); // the final text differs from what streamed (or its last frame is not drawn yet)
  } else {
    for (const chip of answer.body.querySelectorAll("button.citation")) activate(chip, answer); // kept: focus stays
  }
  const { item } = answer;
  if (result.abstained) {
    item.classList.add("abstained");
    item.append(nextStep());
  }
  if (result.citations.length) {
    const sources = el("ol", "sources");
    sources.setAttribute("aria-label", "Sources");
    for (const c of result.citations) {
      const link = el("button", "source-link", citationLabel(c));
      link.type = "button";
      link.addEventListener("click", () => openPassage(c));
      const entry = el("li");
      entry.append(citationChip(c.number, answer), " ", link);
      sources.append(entry);
    }
    item.append(sources);
  }
  const meta = [];
  if (result.rewritten_question) meta.push(`Searched for: ${result.rewritten_question}`);
  if (result.timings_ms) meta.push(`${Math.round(result.timings_ms.total ?? result.timings_ms.retrieve)} ms`);
  if (meta.length) item.append(el("p", "answer-meta muted small", meta.join(" · ")));
  item.append(actions(answer));
}

function nextStep() {
  const hint = el("p", "next-step small");
  const limited = scope.documents.size || scope.tags.size;
  hint.append(
    "Not found in the documents. Try rephrasing the question with the words the documents would use" +
      (limited ? ", search everything instead of the chosen documents and tags" : "") +
      ", or check in the ",
  );
  const link = el("button", "link-button", "document list");
  link.type = "button";
  link.addEventListener("click", () => {
    showView("documents");
    $("documents-title").focus();
  });
  hint.append(link, " that the document holding the answer is indexed.");
  return hint;
}

function actions(answer) {
  const bar = el("div", "answer-actions");
  const copy = el("button", "secondary small", "Copy");
  copy.type = "button";
  copy.setAttribute("aria-label", "Copy the answer");
  copy.addEventListener("click", async () => {
    await copyText(answer.text);
    copy.textContent = "Copied";
    setStatus("Answer copied", "ok");
    setTimeout(() => (copy.textContent = "Copy"), 2000);
  });
  bar.append(copy);
  for (const old of $("messages").querySelectorAll(".regenerate")) old.remove(); // only the last answer
  const again = el("button", "secondary small regenerate", "Regenerate");
  again.type = "button";
  again.setAttribute("aria-label", "Regenerate the answer");
  again.addEventListener("click", () => regenerate(answer));
  bar.append(again);
  return bar;
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) {
    // no clipboard permission (or not a secure context): the old way
    const area = el("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
}

function stoppedActions(answer, question) {
  const bar = el("div", "answer-actions");
  const again = el("button", "secondary small", "Ask again");
  again.type = "button";
  again.addEventListener("click", () => {
    if (streaming) return;
    answer.item.remove();
    ask(question, { again: true });
  });
  bar.append(again);
  return bar;
}

function regenerate(answer) {
  if (streaming || !lastQuestion) return;
  answer.item.remove();
  ask(lastQuestion, { regenerate: true });
}

function problem(answer, message) {
  const error = el("p", "error", message);
  error.setAttribute("role", "alert");
  answer.item.append(error);
}

// --- asking -------------------------------------------------------------------------------------
function setStreaming(controller) {
  streaming = controller;
  $("ask-button").disabled = Boolean(controller);
  $("stop-button").hidden = !controller;
}

export function stopAnswer() {
  if (streaming) streaming.abort();
}

// `regenerate`: answer the conversation's last question again, replacing its stored turn;
// `again`: ask a question again whose answer was stopped (and so never stored).
async function ask(question, { regenerate = false, again = false } = {}) {
  if (streaming) return; // one answer at a time: Enter while one streams does nothing
  const controller = new AbortController();
  setStreaming(controller);
  for (const old of $("messages").querySelectorAll(".regenerate")) old.remove(); // no longer the last answer
  if (!regenerate && !again) appendMessage("user").append(question);
  const item = appendMessage("assistant");
  item.setAttribute("aria-busy", "true");
  const answer = answerView(item);
  answer.body.classList.add("streaming");
  answer.body.textContent = "Searching…";
  let done = false;
  try {
    const conversationId = await ensureConversation();
    const request = { question, stream: true };
    if (conversationId) request.conversation_id = conversationId;
    if (regenerate && conversationId) request.regenerate = true;
    const filters = scopeFilters();
    if (filters) request.filters = filters;
    const response = await postJson("/v1/query", request, { signal: controller.signal });
    lastQuestion = question;
    await readEvents(response, (event, data) => {
      if (event === "token") {
        addText(answer, data.text);
      } else if (event === "done") {
        done = true;
        finish(answer, data);
        answeredIn(data.conversation_id);
      } else if (event === "error") {
        throw new ApiError(500, data.error.code, data.error.message);
      }
    });
    if (!done) throw new Error("the answer stopped before it was complete; ask again");
  } catch (error) {
    cancelAnimationFrame(answer.frame);
    if (error.name === "AbortError") {
      if (answer.text) renderBody(answer);
      else answer.body.replaceChildren();
      answer.body.classList.remove("streaming");
      item.classList.add("stopped");
      item.append(el("p", "muted small", "Stopped."), stoppedActions(answer, question));
    } else if (error instanceof ApiError && error.code === "conversation_not_found") {
      answer.body.replaceChildren();
      forgetConversation(); // deleted, perhaps in another tab: the next question starts a new one
      problem(answer, "This conversation was deleted. Ask again to start a new one.");
    } else {
      answer.body.replaceChildren();
      problem(answer, error.message);
    }
  } finally {
    item.removeAttribute("aria-busy");
    setStreaming(null);
    scrollToEnd();
  }
}

// A stored conversation's turns, shown as they were answered.
export function showConversation(conversation) {
  resetChat();
  const turns = conversation.turns || [];
  if (turns.length) $("messages").replaceChildren();
  for (const turn of turns) {
    appendMessage("user").append(turn.question);
    const answer = answerView(appendMessage("assistant"));
    finish(answer, { ...turn, timings_ms: null });
    lastQuestion = turn.question;
  }
  scrollToEnd();
}

// --- what a question searches -------------------------------------------------------------------
function scopeFilters() {
  if (!scope.documents.size && !scope.tags.size) return null;
  const filters = {};
  if (scope.documents.size) filters.document_ids = [...scope.documents];
  if (scope.tags.size) filters.tags = [...scope.tags];
  return filters;
}

function checkbox(value, label, chosen, detail = "") {
  const row = el("label", "scope-option");
  const box = el("input");
  box.type = "checkbox";
  box.value = value;
  box.checked = chosen.has(value);
  box.addEventListener("change", () => {
    if (box.checked) chosen.add(value);
    else chosen.delete(value);
    describeScope();
  });
  row.append(box, " ", label);
  if (detail) row.append(" ", el("span", "muted small", detail));
  return row;
}

function describeScope() {
  const parts = [];
  if (scope.documents.size) parts.push(plural(scope.documents.size, "document"));
  if (scope.tags.size) parts.push(`${scope.tags.size === 1 ? "tag" : "tags"} ${[...scope.tags].join(", ")}`);
  $("scope-summary").textContent = `Search in: ${parts.length ? parts.join(" with ") : "all documents"}`;
  $("scope").classList.toggle("limited", parts.length > 0);
}

function showScopeChoices(documents) {
  const indexed = documents.filter((d) => d.status === "indexed");
  const ids = new Set(indexed.map((d) => d.id));
  const tags = [...new Set(indexed.flatMap((d) => d.tags || []))].sort();
  for (const id of [...scope.documents]) if (!ids.has(id)) scope.documents.delete(id);
  for (const tag of [...scope.tags]) if (!tags.includes(tag)) scope.tags.delete(tag);
  const docs = indexed.map((d) =>
    d.title && d.title !== d.source
      ? checkbox(d.id, d.title, scope.documents, d.source)
      : checkbox(d.id, d.source, scope.documents),
  );
  $("scope-documents").replaceChildren(...(docs.length ? docs : [el("p", "muted small", "No indexed documents.")]));
  const tagBoxes = tags.map((t) => checkbox(t, t, scope.tags));
  $("scope-tags").replaceChildren(...(tagBoxes.length ? tagBoxes : [el("p", "muted small", "No tags.")]));
  describeScope();
}

export function setupChat() {
  const form = $("ask-form");
  const input = $("question");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const question = input.value.trim();
    if (!question || streaming) return;
    input.value = "";
    ask(question);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (!streaming) form.requestSubmit();
    } else if (event.key === "Escape" && streaming) {
      stopAnswer();
    }
  });
  $("stop-button").addEventListener("click", stopAnswer);
  $("scope-clear").addEventListener("click", () => {
    scope.documents.clear();
    scope.tags.clear();
    showScopeChoices(knownDocuments());
  });
  onDocumentsChanged(showScopeChoices);
  resetChat();
}
