"""The web chat page in a real headless Chromium against a real `camelid serve` process (default
SmolLM2 model, free port, temporary data directory). The oracle for a streamed reply is the same
server's non-streaming greedy answer to the same messages; for persistence, the server's own API
after a reload and after a restart of the process."""

from __future__ import annotations

import re
from contextlib import contextmanager

import httpx
import pytest

from browser import chromium
from server_process import ServerProcess, poll

MAX_TOKENS = 16  # greedy reply length in the streaming test: long enough to stream, short on 2 busy cores
HOSTILE = (
    "Here is code:\n\n<script>window.__pwned = 'script'</script>\n\n"
    "<img src=x onerror=\"window.__pwned = 'img'\"> and [a link](javascript:window.__pwned='link')\n\n"
    "| a | b |\n|---|---|\n| <b onmouseover=alert(1)>x</b> | 2 |\n\n```html\n<script>window.__pwned = 'code'</script>\n```"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    holder = Restartable(tmp_path_factory.mktemp("serve"))
    try:
        yield holder
    finally:
        holder.process.close()


class Restartable:
    """A ServerProcess that restart() replaces with a new process on the same data directory."""

    def __init__(self, tmp_dir):
        self.tmp_dir = tmp_dir
        self.process = ServerProcess(tmp_dir)

    @property
    def url(self):
        return self.process.url

    def restart(self):
        self.process.close()
        self.process = ServerProcess(self.tmp_dir)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


@pytest.fixture
def page(browser, server):
    page = browser.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    open_page(page, server.url)
    yield page
    page.close()


def open_page(page, url):
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")


def api(server, method, path, **kwargs):
    response = httpx.request(method, server.url + path, timeout=120, **kwargs)
    response.raise_for_status()
    return response.json()


def greedy_answer(server, messages, max_tokens):
    """The server's own non-streaming answer: the oracle for what the page streamed."""
    model = api(server, "GET", "/v1/models")["data"][0]["id"]
    body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
    return api(server, "POST", "/v1/chat/completions", json=body)["choices"][0]["message"]["content"]


def use_settings(page, temperature, max_tokens, system_prompt=""):
    if page.is_hidden("#settings"):
        page.click("#settings-toggle")
    page.fill("#system-prompt", system_prompt)
    page.fill("#temperature", str(temperature))
    page.fill("#max-tokens", str(max_tokens))
    with page.expect_response(lambda r: r.request.method == "PATCH"):
        page.dispatch_event("#max-tokens", "change")


@contextmanager
def reply_saved(page):
    """Wait, after the body, until the page has saved an assistant reply and is ready for the next."""
    saving = lambda r: r.request.method == "PUT" and '"assistant"' in (r.request.post_data or "")
    with page.expect_response(saving, timeout=120_000):
        yield
    page.wait_for_selector(".message.streaming", state="detached")
    page.wait_for_selector("#stop", state="hidden")


def words(text):
    """Text without Markdown punctuation or spacing, to compare rendered text with its source."""
    return re.sub(r"[\s*_`#>|-]+", " ", text).strip()


def current_id(page):
    return page.evaluate("location.hash.slice(1)")


def test_chinese_message_streams_the_greedy_reply_and_survives_reload(page, server):
    page.click("#new-chat")
    use_settings(page, temperature=0, max_tokens=MAX_TOKENS)
    page.evaluate(
        """() => {
        window.__partial = [];
        new MutationObserver(() => {
            const el = document.querySelector('.message.streaming .content');
            if (el && el.textContent && el.textContent !== window.__partial.at(-1)) window.__partial.push(el.textContent);
        }).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
    }"""
    )
    question = "用一句话介绍北京。"
    page.fill("#input", question)
    with reply_saved(page):
        page.press("#input", "Enter")

    cid = current_id(page)
    stored = api(server, "GET", f"/api/conversations/{cid}")
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    assert stored["messages"][0]["content"] == question and stored["title"] == question
    reply = stored["messages"][1]["content"]
    assert reply == greedy_answer(server, [{"role": "user", "content": question}], MAX_TOKENS)
    assert words(page.inner_text(".message.assistant .content")) == words(reply)

    partial = page.evaluate("window.__partial")
    # at least one render before the last: the engine writes 16 tokens in about 0.1 s here, so the
    # browser may batch several tokens into one render
    assert len(partial) >= 2, f"the reply did not arrive progressively: {partial}"
    assert all(words(p) != words(reply) for p in partial[:-1])
    stats = page.inner_text(".message.assistant .stats")
    assert re.search(r"\d+(\.\d)? tokens/s", stats) and f"{MAX_TOKENS} tokens" in stats, stats
    assert stored["messages"][1]["stats"]["completion_tokens"] == MAX_TOKENS

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert current_id(page) == cid
    assert page.inner_text(f".conversation[data-id='{cid}'] .name") == question
    assert page.inner_text(".message.user .content") == question
    assert words(page.inner_text(".message.assistant .content")) == words(reply)
    assert page.errors == []


def test_stop_ends_the_generation_early(page, server):
    page.click("#new-chat")
    use_settings(page, temperature=0, max_tokens=400)
    page.fill("#input", "Write a long story about a llama who learns to code. 写一个很长的故事。")
    page.click("#send")
    page.wait_for_selector(".message.streaming .content:not(:empty)", timeout=120_000)
    with reply_saved(page):
        page.click("#stop")

    cid = current_id(page)
    stored = api(server, "GET", f"/api/conversations/{cid}")["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant"]
    reply, stats = stored[1]["content"], stored[1]["stats"]
    assert stats["finish_reason"] == "stopped" and 0 < stats["completion_tokens"] < 400
    assert "stopped" in page.inner_text(".message.assistant .stats")
    assert page.is_enabled("#send") and page.is_hidden("#stop")
    # What the page kept is the start of the server's greedy answer, and the server is free for the next request.
    longer = greedy_answer(server, [stored[0]], 2 * stats["completion_tokens"] + 4)
    assert longer.startswith(reply) and len(longer) > len(reply)
    metrics = lambda: server.process.metrics()
    poll(lambda: metrics()["camelid_slots_busy"] == 0 and metrics()["camelid_requests_cancelled_total"] == 1)


def test_model_output_with_html_renders_as_text(page, server):
    conversation = api(server, "POST", "/api/conversations", json={"title": "hostile"})
    messages = [{"role": "user", "content": "<img src=x onerror=\"window.__pwned='user'\">"},
                {"role": "assistant", "content": HOSTILE}]
    api(server, "PUT", f"/api/conversations/{conversation['id']}/messages", json={"start": 0, "messages": messages})
    open_page(page, f"{server.url}/#{conversation['id']}")
    page.wait_for_selector(".message.assistant table")  # Markdown still renders: the table
    page.hover(".message.assistant td")
    page.click(".message.assistant a")
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.querySelectorAll('#messages script, #messages img, #messages [onerror], #messages [onmouseover]').length") == 0
    assert "javascript:" not in (page.get_attribute(".message.assistant a", "href") or "")
    text = page.inner_text(".message.assistant .content")
    assert "<script>window.__pwned = 'script'</script>" in text
    assert "<img src=x onerror=\"window.__pwned = 'img'\">" in text
    assert page.inner_text(".message.user .content") == messages[0]["content"]
    assert page.inner_text(".message.assistant pre code").strip() == "<script>window.__pwned = 'code'</script>"


def test_ime_edit_resend_regenerate(page, server):
    page.click("#new-chat")
    use_settings(page, temperature=0, max_tokens=4)
    page.focus("#input")
    cdp = page.context.new_cdp_session(page)
    # An IME composing pinyin: the Enter that confirms the candidate must not send the message.
    page.evaluate(
        """() => { window.__enters = [];
        document.getElementById('input').addEventListener('keydown', e => {
            if (e.key === 'Enter' || e.keyCode === 229) window.__enters.push([e.isComposing, e.keyCode]);
        }); }"""
    )
    cdp.send("Input.imeSetComposition", {"text": "nihao", "selectionStart": 5, "selectionEnd": 5})
    # The IME takes the Enter (no character reaches the text box), then commits the candidate.
    enter = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}
    cdp.send("Input.dispatchKeyEvent", {"type": "rawKeyDown", **enter})
    cdp.send("Input.dispatchKeyEvent", {"type": "keyUp", **enter})
    assert page.evaluate("window.__enters")[0][0] is True  # Chromium saw a composing Enter
    cdp.send("Input.insertText", {"text": "你好"})
    assert page.input_value("#input") == "你好"
    assert page.query_selector(".message.user") is None
    page.keyboard.press("Shift+Enter")
    page.keyboard.insert_text("世界")
    assert page.input_value("#input") == "你好\n世界"
    with reply_saved(page):
        page.keyboard.press("Enter")
    cid = current_id(page)
    first = api(server, "GET", f"/api/conversations/{cid}")["messages"]
    assert first[0]["content"] == "你好\n世界" and first[1]["role"] == "assistant"

    page.click(".message.user .edit")
    page.fill(".message.user .editor textarea", "Hi!")
    with reply_saved(page):
        page.click(".message.user .editor .save")
    edited = api(server, "GET", f"/api/conversations/{cid}")["messages"]
    assert [m["content"] for m in edited[:1]] == ["Hi!"] and len(edited) == 2
    assert edited[1]["content"] == greedy_answer(server, [{"role": "user", "content": "Hi!"}], 4)

    with reply_saved(page):
        page.click(".message.assistant .regenerate")
    again = api(server, "GET", f"/api/conversations/{cid}")["messages"]
    assert len(again) == 2 and again[1]["content"] == edited[1]["content"]  # temperature 0: the same reply
    assert page.errors == []


def test_rename_delete_and_restart(page, server):
    first = api(server, "POST", "/api/conversations", json={"title": "first"})
    api(server, "PUT", f"/api/conversations/{first['id']}/messages", json={"start": 0, "messages": [{"role": "user", "content": "留下来"}]})
    second = api(server, "POST", "/api/conversations", json={"title": "second"})
    open_page(page, server.url)

    page.click(f".conversation[data-id='{first['id']}'] .rename")
    page.fill(f".conversation[data-id='{first['id']}'] input", "重命名的对话")
    with page.expect_response(lambda r: r.request.method == "PATCH"):
        page.keyboard.press("Enter")
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_response(lambda r: r.request.method == "DELETE"):
        page.click(f".conversation[data-id='{second['id']}'] .delete")
    page.wait_for_selector(f".conversation[data-id='{second['id']}']", state="detached")

    everything = lambda: [api(server, "GET", f"/api/conversations/{c['id']}") for c in api(server, "GET", "/api/conversations")["data"]]
    before = everything()
    server.restart()
    assert everything() == before  # with the conversations the other tests made through the page
    open_page(page, f"{server.url}/#{first['id']}")
    titles = {c["id"]: c["title"] for c in api(server, "GET", "/api/conversations")["data"]}
    assert titles[first["id"]] == "重命名的对话" and second["id"] not in titles
    assert page.inner_text(f".conversation[data-id='{first['id']}'] .name") == "重命名的对话"
    assert page.query_selector(f".conversation[data-id='{second['id']}']") is None
    assert page.inner_text(".message.user .content") == "留下来"
    assert httpx.get(f"{server.url}/api/conversations/{second['id']}").status_code == 404


def test_refused_settings_and_requests_show_the_servers_error(page, server):
    page.click("#new-chat")
    cid = current_id(page)
    page.click("#settings-toggle")
    page.fill("#temperature", "5")
    with page.expect_response(lambda r: r.request.method == "PATCH" and r.status == 400):
        page.dispatch_event("#temperature", "change")
    page.wait_for_selector("#error:not([hidden])")
    assert "temperature" in page.inner_text("#error")
    assert page.input_value("#temperature") != "5"  # the field shows the saved value again
    assert api(server, "GET", f"/api/conversations/{cid}")["settings"].get("temperature") != 5

    use_settings(page, temperature=0, max_tokens=1_000_000)  # more than the context: the server refuses
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions") and r.status == 400):
        page.fill("#input", "你好")
        page.press("#input", "Enter")
    page.wait_for_selector("#stop", state="hidden")
    page.wait_for_selector("#error:not([hidden])")
    assert "max_tokens" in page.inner_text("#error")
    stored = api(server, "GET", f"/api/conversations/{cid}")["messages"]
    assert [m["role"] for m in stored] == ["user"]  # the question is kept, no empty reply is saved
    assert page.is_enabled("#send")


def test_api_key_is_asked_once_and_sent(browser, tmp_path):
    key = "sekret-123"
    server = ServerProcess(tmp_path, api_key=key)
    try:
        page = browser.new_page()
        asked = []
        page.on("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept(key)))
        open_page(page, server.url)
        assert len(asked) == 1 and "API key" in asked[0]
        with page.expect_response(lambda r: r.request.method == "POST" and r.status == 201):
            page.click("#new-chat")
        listed = server.get("/api/conversations").json()["data"]
        assert [c["id"] for c in listed] == [current_id(page)]
        assert page.inner_text("#model-name") == f"Model: {server.get('/v1/models').json()['data'][0]['id']}"
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        assert len(asked) == 1 and page.is_hidden("#error")
        assert httpx.get(server.url + "/api/conversations").status_code == 401
        page.close()
    finally:
        server.close()
