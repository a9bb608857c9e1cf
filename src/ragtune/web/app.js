// ragtune web UI: conversations with streamed, cited answers; document upload and management.
// Plain browser JavaScript in ES modules served from /ui/, no build step. Text from the server
// is only ever set as text (textContent, text nodes; markdown.js builds answers node by node),
// so neither documents nor answers can inject markup.
//
//   api.js            HTTP, the API key, Server-Sent Events
//   ui.js             status line, confirmation dialog, panels on narrow screens
//   markdown.js       safe Markdown with citation chips
//   chat.js           asking, streaming, Stop / Copy / Regenerate, what a question searches
//   conversations.js  the conversation list, the current one (per tab), new and delete
//   documents.js      uploads, their jobs, the document list

import { hasKey, onUnauthorized, saveKey } from "./api.js";
import { resetChat, setupChat, showConversation } from "./chat.js";
import { currentConversation, openConversation, refreshConversations, setupConversations } from "./conversations.js";
import { refreshDocuments, setupDocuments } from "./documents.js";
import { $, checkStatus, setStatusNote, setupViews } from "./ui.js";

// --- API key ----------------------------------------------------------------------------------
function showKeyControls() {
  $("key-button").hidden = false;
  $("key-button").textContent = hasKey() ? "Change key" : "API key";
  $("sign-out").hidden = !hasKey();
}

function askForKey(reason, refused) {
  showKeyControls();
  setStatusNote(refused ? "API key refused" : "API key needed");
  const message = $("key-message");
  message.textContent = refused ? `That key was refused (${reason}). Check it, or make a new one.` : "";
  message.hidden = !refused;
  const dialog = $("key-dialog");
  if (!dialog.open) {
    $("key-input").value = "";
    dialog.showModal();
  }
}

function reloadData() {
  refreshDocuments();
  refreshConversations();
  if (currentConversation()) openConversation(currentConversation());
  checkStatus();
}

function setupKeyDialog() {
  const dialog = $("key-dialog");
  onUnauthorized(askForKey);
  $("key-button").addEventListener("click", () => {
    $("key-message").hidden = true;
    $("key-input").value = "";
    dialog.showModal();
  });
  $("sign-out").addEventListener("click", () => {
    saveKey("");
    setStatusNote("");
    resetChat();
    reloadData(); // asks for a key again if the server needs one
    showKeyControls();
  });
  // Forget is no submit button: Enter in the key field saves.
  $("forget-key").addEventListener("click", () => dialog.close("forget"));
  dialog.addEventListener("close", () => {
    const action = dialog.returnValue;
    dialog.returnValue = "";
    if (action === "save") saveKey($("key-input").value);
    else if (action === "forget") saveKey("");
    else return;
    setStatusNote("");
    showKeyControls();
    reloadData();
  });
  if (hasKey()) showKeyControls();
}

document.addEventListener("DOMContentLoaded", () => {
  setupViews();
  setupKeyDialog();
  setupChat();
  setupDocuments();
  setupConversations({ open: showConversation, reset: resetChat });
  checkStatus();
  refreshDocuments();
});
