// The camelid chat page: conversations live on the server (/api/conversations), replies stream from
// /v1/chat/completions. Model output reaches the DOM only through renderMarkdown (escaped HTML, then
// DOMPurify); everything else is set with textContent.
import { renderMarkdown } from "./markdown.js";
import { api, conversationPath, fetchWithKey, sseEvents } from "./net.js";

const DEFAULT_TITLE = "New chat";
const DEFAULT_SETTINGS = { temperature: 0.7, top_p: 0.95, max_tokens: 512 };
const $ = (id) => document.getElementById(id);

const state = {
  conversations: [], // summaries, most recent first
  current: null, // the open conversation, with messages
  model: null, // the id from /v1/models
  busy: null, // {controller, id} while a reply streams
  settings: { ...DEFAULT_SETTINGS }, // used for new conversations
};

// ---- Sidebar ----------------------------------------------------------------------------------

async function refreshList() {
  state.conversations = (await api("GET", "/api/conversations")).data;
  renderSidebar();
}

function renderSidebar() {
  const list = $("conversations");
  list.replaceChildren();
  for (const conversation of state.conversations) {
    const item = document.createElement("li");
    item.className = "conversation";
    item.dataset.id = conversation.id;
    if (state.current?.id === conversation.id) item.classList.add("active");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = conversation.title;
    name.title = conversation.title;
    const rename = button("Rename", "rename", (event) => {
      event.stopPropagation();
      startRename(item, conversation);
    });
    const remove = button("Delete", "delete", (event) => {
      event.stopPropagation();
      deleteConversation(conversation);
    });
    item.append(name, rename, remove);
    item.addEventListener("click", () => openConversation(conversation.id).catch(showError));
    list.append(item);
  }
}

function button(label, className, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.className = className;
  element.textContent = label;
  element.addEventListener("click", onClick);
  return element;
}

function startRename(item, conversation) {
  const input = document.createElement("input");
  input.value = conversation.title;
  input.setAttribute("aria-label", "New title");
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    try {
      if (save && title && title !== conversation.title) {
        const saved = await api("PATCH", conversationPath(conversation.id), { title });
        if (state.current?.id === saved.id) {
          state.current.title = saved.title;
          $("title").textContent = saved.title;
        }
      }
    } catch (error) {
      showError(error);
    }
    await refreshList();
  };
  input.addEventListener("click", (event) => event.stopPropagation());
  input.addEventListener("keydown", (event) => {
    if (event.isComposing || event.keyCode === 229) return;
    if (event.key === "Enter") finish(true);
    if (event.key === "Escape") finish(false);
  });
  input.addEventListener("blur", () => finish(true));
  item.querySelector(".name").replaceWith(input);
  input.focus();
  input.select();
}

async function deleteConversation(conversation) {
  if (!confirm(`Delete "${conversation.title}"?`)) return;
  try {
    const busy = state.busy;
    if (busy?.id === conversation.id) {
      busy.controller.abort();
      await busy.done;
    }
    await api("DELETE", conversationPath(conversation.id));
    if (state.current?.id === conversation.id) {
      state.current = null;
      history.replaceState(null, "", location.pathname);
      renderConversation();
    }
  } catch (error) {
    showError(error);
  }
  await refreshList();
}

async function newConversation() {
  const conversation = await api("POST", "/api/conversations", { settings: state.settings });
  state.current = conversation;
  history.replaceState(null, "", `#${conversation.id}`);
  renderConversation();
  await refreshList();
  $("input").focus();
  return conversation;
}

async function openConversation(id) {
  state.current = await api("GET", conversationPath(id));
  state.settings = { ...DEFAULT_SETTINGS, ...state.current.settings };
  history.replaceState(null, "", `#${id}`);
  renderConversation();
  renderSidebar();
}

// ---- Messages ---------------------------------------------------------------------------------

function renderConversation() {
  const conversation = state.current;
  $("title").textContent = conversation ? conversation.title : "camelid";
  fillSettings(conversation);
  const box = $("messages");
  box.replaceChildren();
  if (!conversation || conversation.messages.length === 0) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = "Send a message to start.";
    box.append(empty);
    return;
  }
  conversation.messages.forEach((message, index) => box.append(messageView(message, index)));
  box.scrollTop = box.scrollHeight;
}

function messageView(message, index) {
  const view = document.createElement("div");
  view.className = `message ${message.role}`;
  view.dataset.index = index;
  const role = document.createElement("div");
  role.className = "role";
  role.textContent = message.role === "user" ? "You" : "camelid";
  const content = document.createElement("div");
  content.className = "content";
  const meta = document.createElement("div");
  meta.className = "meta";
  view.append(role, content, meta);
  if (message.role === "user") {
    content.textContent = message.content;
    meta.append(button("Edit", "edit", () => startEdit(view, index)));
  } else {
    renderMarkdown(content, message.content);
    const stats = document.createElement("span");
    stats.className = "stats";
    stats.textContent = describeStats(message.stats);
    meta.append(stats);
    const last = state.current && index === state.current.messages.length - 1;
    if (last) meta.append(button("Regenerate", "regenerate", () => regenerate(index).catch(showError)));
  }
  return view;
}

function describeStats(stats) {
  if (!stats) return "";
  const number = (x) => typeof x === "number" && Number.isFinite(x);
  const parts = [];
  if (number(stats.completion_tokens)) parts.push(`${stats.completion_tokens} tokens`);
  if (number(stats.tokens_per_second)) parts.push(`${stats.tokens_per_second.toFixed(1)} tokens/s`);
  if (number(stats.prompt_tokens_per_second)) parts.push(`prompt ${stats.prompt_tokens_per_second.toFixed(1)} tokens/s`);
  if (stats.finish_reason === "stopped") parts.push("stopped");
  else if (stats.finish_reason === "length") parts.push("token limit reached");
  return parts.join(" · ");
}

function startEdit(view, index) {
  if (state.busy) return;
  const original = state.current.messages[index].content;
  const editor = document.createElement("div");
  editor.className = "editor";
  const area = document.createElement("textarea");
  area.value = original;
  area.rows = Math.min(12, original.split("\n").length + 1);
  const save = () => {
    if (area.value.trim() && !state.busy) submitUserMessage(state.current, index, area.value).catch(showError);
  };
  area.addEventListener("keydown", (event) => onEnter(event, save));
  const actions = document.createElement("div");
  actions.className = "meta";
  actions.append(button("Save & send", "save", save), button("Cancel", "cancel", renderConversation));
  editor.append(area, actions);
  view.querySelector(".meta").remove();
  view.querySelector(".content").replaceWith(editor);
  area.focus();
}

async function regenerate(index) {
  if (state.busy) return;
  const conversation = await api("PUT", `${conversationPath(state.current.id)}/messages`, { start: index, messages: [] });
  state.current = conversation;
  renderConversation();
  await generate(conversation);
}

// ---- Sending and streaming --------------------------------------------------------------------

function onEnter(event, action) {
  // An IME confirms its candidate with Enter: that keydown has isComposing (keyCode 229 in Safari).
  if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
  event.preventDefault();
  action();
}

async function send() {
  const input = $("input");
  const text = input.value;
  if (!text.trim() || state.busy) return;
  const conversation = state.current || (await newConversation());
  input.value = "";
  await submitUserMessage(conversation, conversation.messages.length, text);
}

function titleFrom(text) {
  const line = text.trim().split("\n")[0];
  const chars = Array.from(line);
  return chars.length > 40 ? chars.slice(0, 40).join("") + "…" : line;
}

// Saves the user message at `index` (dropping what followed it), then streams the reply.
async function submitUserMessage(conversation, index, text) {
  let saved = await api("PUT", `${conversationPath(conversation.id)}/messages`, {
    start: index,
    messages: [{ role: "user", content: text }],
  });
  if (index === 0 && saved.title === DEFAULT_TITLE) {
    saved = { ...saved, ...(await api("PATCH", conversationPath(conversation.id), { title: titleFrom(text) })) };
  }
  state.current = saved;
  renderConversation();
  refreshList().catch(showError);
  await generate(saved);
}

async function generate(conversation) {
  const controller = new AbortController();
  let finished;
  state.busy = { controller, id: conversation.id, done: new Promise((resolve) => (finished = resolve)) };
  setBusy(true);
  hideError();
  const index = conversation.messages.length;
  const view = messageView({ role: "assistant", content: "", stats: null }, index);
  view.classList.add("streaming");
  const content = view.querySelector(".content");
  const box = $("messages");
  box.querySelector(".empty")?.remove();
  box.append(view);

  let text = "";
  let pieces = 0;
  let firstAt = null;
  let lastAt = null;
  let pending = false;
  let reply = {};
  let failure = null;
  const paint = () => {
    pending = false;
    renderMarkdown(content, text);
    box.scrollTop = box.scrollHeight;
  };
  const onPiece = (piece) => {
    text += piece;
    pieces += 1;
    lastAt = performance.now();
    firstAt ??= lastAt;
    if (!pending) {
      pending = true;
      requestAnimationFrame(paint);
    }
  };
  try {
    reply = await streamReply(conversation, controller.signal, onPiece);
  } catch (error) {
    if (error.name === "AbortError") reply = { finishReason: "stopped" };
    else failure = error;
  }
  paint();
  view.classList.remove("streaming");

  const clientRate = pieces > 1 ? ((pieces - 1) * 1000) / (lastAt - firstAt) : null;
  const { finishReason = null, timings = null, usage = null } = reply;
  const stats = {
    finish_reason: finishReason,
    prompt_tokens: usage?.prompt_tokens ?? timings?.prompt_n ?? null,
    completion_tokens: usage?.completion_tokens ?? timings?.predicted_n ?? pieces,
    tokens_per_second: timings?.predicted_per_second ?? clientRate,
    prompt_tokens_per_second: timings?.prompt_per_second ?? null,
  };
  view.querySelector(".stats").textContent = describeStats(stats);
  try {
    if (text || finishReason) {
      const saved = await api("PUT", `${conversationPath(conversation.id)}/messages`, {
        start: index,
        messages: [{ role: "assistant", content: text, stats }],
      });
      if (state.current?.id === saved.id) {
        state.current = saved;
        renderConversation();
      }
    }
  } catch (error) {
    failure ??= error;
  }
  state.busy = null;
  finished();
  setBusy(false);
  if (failure) showError(failure);
  refreshList().catch(showError);
}

// Streams the reply to a conversation, calling onPiece(text) for each new piece; returns how it ended
// ({finishReason, timings, usage} from the final chunks). Rejects with an AbortError when stopped.
async function streamReply(conversation, signal, onPiece) {
  const messages = conversation.messages.map(({ role, content }) => ({ role, content }));
  if (conversation.system_prompt) messages.unshift({ role: "system", content: conversation.system_prompt });
  const request = { messages, stream: true, stream_options: { include_usage: true }, ...DEFAULT_SETTINGS, ...conversation.settings };
  if (state.model) request.model = state.model;
  const response = await fetchWithKey("/v1/chat/completions", { method: "POST", body: JSON.stringify(request), signal }, true);
  if (!response.ok) {
    const data = await response.json().catch(() => null);
    throw new Error(data?.error?.message || `the server answered HTTP ${response.status}`);
  }
  const result = { finishReason: null, timings: null, usage: null };
  for await (const data of sseEvents(response.body)) {
    if (data === "[DONE]") break;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new Error(chunk.error.message || "the server reported an error");
    const choice = chunk.choices?.[0];
    if (choice?.delta?.content) onPiece(choice.delta.content);
    if (choice?.finish_reason) result.finishReason = choice.finish_reason;
    if (chunk.timings) result.timings = chunk.timings;
    if (chunk.usage) result.usage = chunk.usage;
  }
  return result;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
  $("send").hidden = busy;
}

function showError(error) {
  const box = $("error");
  box.textContent = error.message || String(error);
  box.hidden = false;
}

function hideError() {
  $("error").hidden = true;
}

// ---- Settings ---------------------------------------------------------------------------------

function fillSettings(conversation) {
  const settings = { ...DEFAULT_SETTINGS, ...(conversation ? conversation.settings : state.settings) };
  $("system-prompt").value = conversation ? conversation.system_prompt : "";
  $("temperature").value = settings.temperature;
  $("top-p").value = settings.top_p;
  $("max-tokens").value = settings.max_tokens;
}

function readSettings() {
  const number = (id) => Number($(id).value);
  return { temperature: number("temperature"), top_p: number("top-p"), max_tokens: Math.round(number("max-tokens")) };
}

async function saveSettings() {
  hideError();
  const settings = readSettings();
  try {
    if (state.current) {
      const saved = await api("PATCH", conversationPath(state.current.id), {
        system_prompt: $("system-prompt").value,
        settings,
      });
      state.current.system_prompt = saved.system_prompt;
      state.current.settings = saved.settings;
    }
    state.settings = settings;
  } catch (error) {
    showError(error);
    fillSettings(state.current);
  }
}

// ---- Start ------------------------------------------------------------------------------------

async function loadModelName() {
  try {
    const models = await api("GET", "/v1/models");
    state.model = models.data?.[0]?.id ?? null;
    $("model-name").textContent = state.model ? `Model: ${state.model}` : "";
  } catch (error) {
    $("model-name").textContent = "";
  }
}

async function start() {
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send().catch(showError);
  });
  $("input").addEventListener("keydown", (event) => onEnter(event, () => send().catch(showError)));
  $("stop").addEventListener("click", () => state.busy?.controller.abort());
  $("new-chat").addEventListener("click", () => {
    if (!state.busy) newConversation().catch(showError);
  });
  $("settings-toggle").addEventListener("click", () => {
    const panel = $("settings");
    panel.hidden = !panel.hidden;
    $("settings-toggle").setAttribute("aria-expanded", String(!panel.hidden));
  });
  for (const id of ["system-prompt", "temperature", "top-p", "max-tokens"]) $(id).addEventListener("change", saveSettings);

  window.addEventListener("hashchange", () => {
    const id = location.hash.slice(1);
    if (id && id !== state.current?.id && !state.busy) openConversation(id).then(refreshList).catch(showError);
  });

  await loadModelName();
  await refreshList();
  const wanted = location.hash.slice(1);
  const first = state.conversations.find((c) => c.id === wanted) ?? state.conversations[0];
  if (first) await openConversation(first.id);
  else renderConversation();
  document.body.dataset.ready = "true";
}

start().catch(showError);
