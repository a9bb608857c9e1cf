// Conversations: the list of past ones, the current one, new and delete. The server keeps each
// conversation's turns (questions are answered as follow-ups of it); the browser keeps only
// which conversation this tab shows, in sessionStorage, so a reload comes back to it and two
// tabs hold two different conversations.

import { ApiError, api, apiJson, plural, postJson } from "./api.js";
import { $, confirmAction, setStatus, showView } from "./ui.js";

const CURRENT_STORAGE = "ragtune.conversation";
const UNTITLED = "New conversation";

let current = sessionStorage.getItem(CURRENT_STORAGE) || null;
let available = true; // false when the server has no conversations API
let hooks = { open: () => {}, reset: () => {} };

export const currentConversation = () => current;

function setCurrent(id, title) {
  current = id;
  if (id) sessionStorage.setItem(CURRENT_STORAGE, id);
  else sessionStorage.removeItem(CURRENT_STORAGE);
  $("chat-title").textContent = title || UNTITLED;
  for (const item of document.querySelectorAll("#conversation-list .conversation")) {
    const open = item.querySelector(".conversation-open");
    if (item.dataset.id === id) open.setAttribute("aria-current", "true");
    else open.removeAttribute("aria-current");
  }
}

// The id to ask in: the current conversation, or a new one made now (null without the API).
export async function ensureConversation() {
  if (current || !available) return current;
  try {
    const made = await (await postJson("/v1/conversations", {})).json();
    setCurrent(made.id, made.title);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 405)) {
      available = false;
      return null;
    }
    throw error;
  }
  return current;
}

// After an answer: the server may have named the conversation (from its first question).
export function answeredIn(id) {
  if (id && id !== current) setCurrent(id);
  refreshConversations();
}

function conversationItem(conversation) {
  const title = conversation.title || UNTITLED;
  const item = document.createElement("li");
  item.className = "conversation";
  item.dataset.id = conversation.id;
  const open = document.createElement("button");
  open.type = "button";
  open.className = "conversation-open";
  const name = document.createElement("span");
  name.className = "conversation-title";
  name.textContent = title;
  const info = document.createElement("span");
  info.className = "muted small";
  const when = new Date(conversation.updated_at);
  info.textContent = `${plural(conversation.turns, "question")} · ${when.toLocaleString()}`;
  open.append(name, info);
  if (conversation.id === current) open.setAttribute("aria-current", "true");
  open.addEventListener("click", () => {
    showView("chat"); // on a phone, from the conversation list to the chat
    openConversation(conversation.id);
  });
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "secondary small";
  remove.textContent = "Delete";
  remove.setAttribute("aria-label", `Delete the conversation ${title}`);
  remove.addEventListener("click", () => deleteConversation(conversation, title));
  item.append(open, remove);
  return item;
}

export async function refreshConversations() {
  if (!available) return;
  let listing;
  try {
    listing = await apiJson("/v1/conversations?limit=50");
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      available = false;
      $("conversations-summary").textContent = "This server keeps no conversations.";
    } else {
      $("conversations-summary").textContent = `Cannot list conversations: ${error.message}`;
    }
    return;
  }
  $("conversation-list").replaceChildren(...listing.conversations.map(conversationItem));
  $("conversations-summary").textContent =
    listing.total === 0 ? "No conversations yet." : plural(listing.total, "conversation");
  const shown = listing.conversations.find((c) => c.id === current);
  if (shown && shown.title) $("chat-title").textContent = shown.title;
}

export async function openConversation(id) {
  let conversation;
  try {
    conversation = await apiJson(`/v1/conversations/${encodeURIComponent(id)}`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      if (id === current) newConversation(); // deleted meanwhile (or in another tab)
      else setStatus("That conversation no longer exists", "error");
      refreshConversations();
    } else {
      setStatus(`Cannot open the conversation: ${error.message}`, "error");
    }
    return;
  }
  setCurrent(conversation.id, conversation.title);
  hooks.open(conversation);
}

// The current conversation is gone: the next question starts a new one (the chat stays as it is).
export function forgetConversation() {
  setCurrent(null);
  refreshConversations();
}

export function newConversation() {
  setCurrent(null);
  hooks.reset();
}

async function deleteConversation(conversation, title) {
  if (!(await confirmAction(`Delete the conversation “${title}” and its answers?`, "Delete"))) return;
  try {
    await api(`/v1/conversations/${encodeURIComponent(conversation.id)}`, { method: "DELETE" });
    setStatus(`Deleted the conversation ${title}`, "ok");
  } catch (error) {
    setStatus(`Could not delete the conversation: ${error.message}`, "error");
  }
  if (conversation.id === current) newConversation();
  refreshConversations();
}

// `open(conversation)` shows a conversation's turns; `reset()` empties the chat.
export function setupConversations(callbacks) {
  hooks = callbacks;
  $("new-conversation").addEventListener("click", () => {
    newConversation();
    showView("chat");
    $("question").focus();
  });
  if (current) openConversation(current);
  refreshConversations();
}
