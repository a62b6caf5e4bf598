// Calls to the server: the conversations API (JSON) and server-sent events from /v1/chat/completions.

// A server started with --api-key wants it on every API call: asked once, kept in this browser.
function headers(json) {
  const result = json ? { "Content-Type": "application/json" } : {};
  const key = localStorage.getItem("camelid-api-key");
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

export async function fetchWithKey(path, options, json) {
  let response = await fetch(path, { ...options, headers: headers(json) });
  if (response.status === 401) {
    const key = prompt("This server needs its API key (camelid serve --api-key):");
    if (key) {
      localStorage.setItem("camelid-api-key", key.trim());
      response = await fetch(path, { ...options, headers: headers(json) });
    }
  }
  return response;
}

export async function api(method, path, body) {
  const options = { method };
  if (body !== undefined) options.body = JSON.stringify(body);
  const response = await fetchWithKey(path, options, body !== undefined);
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new Error(data?.error?.message || `${method} ${path}: HTTP ${response.status}`);
  return data;
}

export const conversationPath = (id) => `/api/conversations/${encodeURIComponent(id)}`;

// Server-sent events from a fetch body: yields each event's data.
export async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let match;
    while ((match = /\r?\n\r?\n/.exec(buffer))) {
      const block = buffer.slice(0, match.index);
      buffer = buffer.slice(match.index + match[0].length);
      const data = block
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) yield data;
    }
  }
}
