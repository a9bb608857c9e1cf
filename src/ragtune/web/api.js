// HTTP for the web UI: the API key, JSON calls with ragtune's error bodies, and Server-Sent
// Events read from a POST response (EventSource can only GET).

const KEY_STORAGE = "ragtune.apiKey";

let apiKey = localStorage.getItem(KEY_STORAGE) || "";
let unauthorized = () => {};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const hasKey = () => apiKey !== "";

export function saveKey(key) {
  apiKey = key.trim();
  if (apiKey) localStorage.setItem(KEY_STORAGE, apiKey);
  else localStorage.removeItem(KEY_STORAGE);
}

// `handler(message, hadKey)` runs on every 401: the key is missing (hadKey false) or refused.
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const sentKey = apiKey;
  if (sentKey) headers.set("Authorization", `Bearer ${sentKey}`);
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
  if (response.status === 401) unauthorized(message, sentKey !== "");
  throw new ApiError(response.status, code, message);
}

export async function apiJson(path, options) {
  return (await api(path, options)).json();
}

export function postJson(path, body, options = {}) {
  return api(path, {
    ...options,
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

// Server-Sent Events from a POST response: calls onEvent(name, data) for each event, in order.
export async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
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

export const plural = (count, word) => `${count} ${word}${count === 1 ? "" : "s"}`;
