"""`camelid chat` driven through a real pseudo-terminal (pexpect) with the default SmolLM2 model.

Replies are compared with greedy generation from the Python API on the same history rendered
through the template (a fresh cache, no ChatSession), with a second process started differently, or
with the JSON that /save writes; token counts with the template and tokenizer applied in this process.
"""

from __future__ import annotations

import json
import os
import re
import sys

import subprocess

import pexpect
import pytest

import camelid
from model_files import smollm2_path

PROMPT = ">>> "
STATS_LINE = re.compile(r"\[(\d+) tokens, ([\d.]+) tok/s\]")


@pytest.fixture(scope="module")
def model():
    return camelid.load(smollm2_path(), show_progress=False)


class Chat:
    """One `camelid chat` process in a pty; say() sends a line and returns what came back before the next prompt."""

    def __init__(self, *args: str):
        self.child = pexpect.spawn(
            sys.executable, ["-m", "camelid", "chat", *args], encoding="utf-8", codec_errors="replace",
            timeout=300, dimensions=(50, 1000), env={**os.environ, "TERM": "xterm"},
        )
        self.child.expect_exact(PROMPT)
        self.banner = self.child.before

    def say(self, line: str) -> str:
        self.child.sendline(line)
        self.child.expect_exact(PROMPT)
        out = self.child.before.replace("\r\n", "\n")
        echo, _, rest = out.partition("\n")
        assert echo.endswith(line), out
        return rest

    def quit(self) -> int:
        self.child.sendeof()
        self.child.expect(pexpect.EOF)
        self.child.close()
        return self.child.exitstatus

    def close(self) -> None:
        self.child.close(force=True)


def reply_of(out: str) -> str:
    """The model's reply in what a message brought back (the text before the tokens/s line)."""
    m = STATS_LINE.search(out)
    assert m, f"no tokens/s line after the reply: {out!r}"
    return out[:m.start()].strip()


def encode(model, text: str) -> list[int]:
    return model.tokenize(text, add_special=False, parse_special=True)


def greedy_answer(model, messages, max_tokens: int) -> str:
    """The greedy reply to a whole history processed at once on a fresh cache, through the API."""
    tokens = encode(model, model.template.render(messages, add_generation_prompt=True))
    chunks = model.stream_tokens(tokens, cache=model.new_cache(), max_tokens=max_tokens, stop=model.template.stop_strings, temperature=0)
    return "".join(c.text for c in chunks).strip()


def saved(path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_save_then_load_in_a_new_process_continues_the_chat(model, tmp_path):
    path = tmp_path / "chat.json"
    u1, u2 = "Remember the word banana.", "Which word did I ask you to remember?"
    first = Chat("--temp", "0", "-n", "20")
    try:
        a1 = reply_of(first.say(u1))
        assert f"Saved 1 exchange to {path}" in first.say(f"/save {path}")
        assert first.quit() == 0
    finally:
        first.close()
    data = saved(path)
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][1]["content"].strip() == a1

    second = Chat("--temp", "0.9", "-n", "4")  # the file brings back greedy sampling and 20 tokens
    try:
        assert "Loaded 1 exchange" in second.say(f"/load {path}")
        answer = reply_of(second.say(u2))
        assert second.quit() == 0
    finally:
        second.close()
    history = data["messages"] + [{"role": "user", "content": u2}]
    assert answer == greedy_answer(model, history, 20)
    assert "banana" in answer.lower()
    assert "banana" not in greedy_answer(model, history[-1:], 20).lower()  # only the loaded history says banana


def test_undo_and_retry(tmp_path):
    chat = Chat("--temp", "0", "-n", "16")
    try:
        u1 = "Name a colour of the sky."
        a1 = reply_of(chat.say(u1))
        assert reply_of(chat.say("/retry")) == a1  # greedy: the same reply, replacing the first
        chat.say(f"/save {tmp_path / 'one.json'}")
        assert "Removed the last exchange; 0 exchanges left." in chat.say("/undo")
        chat.say(f"/save {tmp_path / 'none.json'}")
        assert "Nothing to undo." in chat.say("/undo")
        assert "no reply to retry" in chat.say("/retry")
        assert chat.quit() == 0
    finally:
        chat.close()
    messages = saved(tmp_path / "one.json")["messages"]
    assert [m["content"].strip() for m in messages] == [u1, a1]
    assert saved(tmp_path / "none.json")["messages"] == []


def test_system_and_clear(tmp_path):
    system = "You are a pirate. Always talk like a pirate."
    chat = Chat("--temp", "0", "-n", "16")
    try:
        empty = chat.say("/stats")
        plain = reply_of(chat.say("Hello!"))
        assert "Conversation cleared." in chat.say("/clear")
        assert "System prompt set" in chat.say(f"/system {system}")
        assert f"System prompt: {system}" in chat.say("/system")
        pirate = reply_of(chat.say("Hello!"))
        chat.say(f"/save {tmp_path / 'chat.json'}")
        assert "Conversation cleared (the system prompt stays)." in chat.say("/clear")
        assert "System prompt removed." in chat.say("/system -")
        assert chat.say("/stats").split("\n")[0] == empty.split("\n")[0]  # back to the empty conversation's size
        assert chat.quit() == 0
    finally:
        chat.close()
    data = saved(tmp_path / "chat.json")
    assert data["system"] == system and [m["role"] for m in data["messages"]] == ["user", "assistant"]

    fresh = Chat("--temp", "0", "-n", "16", "--system", system)
    try:
        assert reply_of(fresh.say("Hello!")) == pirate  # /system after /clear == --system in a new process
        assert fresh.quit() == 0
    finally:
        fresh.close()
    assert pirate != plain


def stats_numbers(out: str) -> dict:
    numbers = {}
    m = re.search(r"context: (\d+) / (\d+) tokens used", out)
    numbers["used"], numbers["n_ctx"] = int(m[1]), int(m[2])
    m = re.search(r"last reply: (\d+) tokens, ([\d.]+) tokens/s; its prompt: (\d+) tokens processed, (\d+) reused", out)
    if m:
        numbers.update(generated=int(m[1]), speed=m[2], processed=int(m[3]), reused=int(m[4]))
    numbers["dropped"] = int(re.search(r"turns dropped so far: (\d+)", out)[1])
    return numbers


def test_stats_agree_with_the_reply_line_and_the_template(model, tmp_path):
    system = "You are a helpful assistant."
    chat = Chat("--temp", "0", "-n", "12", "--system", system, "-c", "1024")
    try:
        before = stats_numbers(chat.say("/stats"))
        out = chat.say("What is two plus two?")
        line = STATS_LINE.search(out)
        after = stats_numbers(chat.say("/stats"))
        chat.say(f"/save {tmp_path / 'chat.json'}")
        chat.say("And three plus three?")
        second = stats_numbers(chat.say("/stats"))
        assert chat.quit() == 0
    finally:
        chat.close()
    head = [{"role": "system", "content": system}]
    messages = saved(tmp_path / "chat.json")["messages"]

    def tokens(msgs):
        return len(encode(model, model.template.render(head + msgs, add_generation_prompt=True)))

    assert before == {"used": tokens([]), "n_ctx": 1024, "dropped": 0}
    assert (after["generated"], after["speed"]) == (int(line[1]), line[2])
    assert after["processed"] + after["reused"] == tokens(messages[:1]) and after["reused"] == 0
    assert after["used"] == tokens(messages)
    assert second["reused"] >= tokens(messages[:1]) + after["generated"] - 1  # the first prompt and reply came from the cache
    assert second["processed"] < 25
    assert after["dropped"] == second["dropped"] == 0


def test_chinese_prompt_streams_without_replacement_characters():
    chat = Chat("--temp", "0", "-n", "24")
    try:
        out = chat.say("请用中文回答：你好吗？")  # the greedy reply is Chinese followed by emoji
        assert chat.quit() == 0
    finally:
        chat.close()
    reply = reply_of(out)
    assert "\ufffd" not in reply and "<0x" not in reply
    assert any("\u4e00" <= ch <= "\u9fff" for ch in reply)


def test_ctrl_c_stops_a_reply_and_keeps_what_was_written(tmp_path):
    chat = Chat("--temp", "0", "-n", "300")
    try:
        chat.child.sendline("Write a long story about a dragon who learns to bake bread.")
        chat.child.expect(r"bread\.\r\n\S+ \S+ \S+ ")  # the echo, then the first words of the reply
        partial = chat.child.after.partition("\n")[2]
        chat.child.sendintr()
        chat.child.expect_exact("[stopped]")
        partial += chat.child.before
        chat.child.expect_exact(PROMPT)
        chat.say(f"/save {tmp_path / 'chat.json'}")
        chat.child.sendline("Go on.")  # the chat goes on, and the next reply stops the same way
        chat.child.expect(r"Go on\.\r\n\S+ \S+ ")
        chat.child.sendintr()
        chat.child.expect_exact("[stopped]")
        chat.child.expect_exact(PROMPT)
        chat.child.sendintr()  # Ctrl+C at the prompt: a hint, a second one quits
        chat.child.expect_exact("Ctrl+C again")
        chat.child.sendintr()
        chat.child.expect(pexpect.EOF)
        chat.child.close()
        assert chat.child.exitstatus == 0
    finally:
        chat.close()
    messages = saved(tmp_path / "chat.json")["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    kept = messages[1]["content"].strip()
    assert len(kept.split()) >= 3 and kept == partial.replace("^C", "").strip()  # what was shown stays in the chat
    assert "tok/s" not in partial


def test_mistakes_get_one_line_and_full_context_drops_whole_turns(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"camelid_chat": 1, "messages": [', encoding="utf-8")
    chat = Chat("--temp", "0", "-n", "8", "-c", "128", "--system", "Be brief.")
    try:
        empty = chat.say("/stats")
        assert "Unknown command /frobnicate; /help lists the commands" in chat.say("/frobnicate now")
        assert "/save needs a file name" in chat.say("/save")
        assert "cannot read the chat file" in chat.say(f"/load {tmp_path / 'missing.json'}")
        assert "do not fit in the context of 128" in chat.say("word " * 150)
        assert chat.say("/stats") == empty  # nothing reached the model
        reply_of(chat.say("Name a fruit."))
        assert "invalid JSON" in chat.say(f"/load {bad}")
        chat.say(f"/save {tmp_path / 'kept.json'}")
        notices = [chat.say(f"Name an animal that starts with the letter {c}.") for c in "BCDEFG"]
        dropped = stats_numbers(chat.say("/stats"))["dropped"]
        assert chat.quit() == 0
    finally:
        chat.close()
    assert "Traceback" not in "".join(notices)
    assert [m["content"] for m in saved(tmp_path / "kept.json")["messages"]][:1] == ["Name a fruit."]  # the bad /load lost nothing
    announced = [int(m[1]) for out in notices for m in re.finditer(r"dropped the oldest (\d+) turns?", out)]
    assert announced and sum(announced) == dropped
    for out in notices:
        reply_of(out)  # every turn was answered


def test_load_option_with_a_wrong_file_is_one_clear_line(tmp_path):
    bad = tmp_path / "chat.json"
    bad.write_text("[]", encoding="utf-8")
    for path, message in ((bad, "not a usable camelid chat file"), (tmp_path / "missing.json", "cannot read the chat file")):
        result = subprocess.run([sys.executable, "-m", "camelid", "chat", "--load", str(path)], capture_output=True, text=True, timeout=300)
        assert result.returncode == 1
        assert result.stderr.startswith("camelid: error: ") and message in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


THINKING_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                     "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")


def test_thinking_is_dimmed_and_can_be_hidden():
    from camelid.reasoning import split_reasoning

    model = camelid.load(smollm2_path(), chat_template=THINKING_TEMPLATE, show_progress=False)
    question = "Why is the sky blue?"
    reasoning, _ = split_reasoning(greedy_answer(model, [{"role": "user", "content": question}], 12), opened=True)
    assert reasoning
    chat = Chat("--temp", "0", "-n", "12", "--chat-template", THINKING_TEMPLATE)
    try:
        shown = chat.say(question)
        assert "\x1b[2m" + reasoning in shown and "\x1b[0m" in shown
        assert "hidden" in chat.say("/thinking hide")
        hidden = chat.say("/retry")
        assert reasoning not in hidden and "thinking..." in hidden and "\r\x1b[K" in hidden
        assert "shown" in chat.say("/thinking")
        assert "show or hide" in chat.say("/thinking maybe")
        assert chat.quit() == 0
    finally:
        chat.close()
