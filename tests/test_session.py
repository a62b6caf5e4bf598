"""ChatSession on the default model: KV-cache reuse across turns, whole-turn dropping, undo/retry, save/load.

Token counts are checked against the template and tokenizer applied independently to the messages,
and continued chats against an uninterrupted session's greedy output.
"""

from __future__ import annotations

import json
import os

import pytest

import camelid
from camelid.chat.transcript import load_chat, read_chat, save_chat
from camelid.errors import CamelidError
from model_files import smollm2_path

SYSTEM = "You are a helpful assistant. Answer in one short sentence."


@pytest.fixture(scope="module")
def model():
    return camelid.load(smollm2_path(), n_ctx=512, show_progress=False)


def encode(model, text: str) -> list[int]:
    return model.tokenize(text, add_special=False, parse_special=True)


def render(model, messages, generation_prompt=True) -> str:
    return model.template.render(messages, add_generation_prompt=generation_prompt)


def finish_of(chunks) -> str:
    return chunks[-1].finish_reason


def test_second_turn_processes_only_the_new_turns_tokens(model):
    chat = model.chat(system=SYSTEM, temperature=0, max_tokens=48)
    u1, u2 = "What is the capital of France?", "And of Italy?"
    chunks = list(chat.send(u1))
    assert finish_of(chunks) == "stop", "the reply must end on its own for the cache to hold all of it"
    first = chat.last_stats
    a1 = "".join(c.text for c in chunks)
    assert first.cached_tokens == 0
    assert first.prompt_tokens == len(encode(model, render(model, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": u1}])))

    chunks = list(chat.send(u2))
    second = chat.last_stats
    history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": u1}]
    held = render(model, history) + a1  # what the cache holds: the first prompt and the reply's tokens
    full = render(model, history + [{"role": "assistant", "content": a1}, {"role": "user", "content": u2}])
    assert full.startswith(held)
    new_turn = full[len(held):]
    assert new_turn == f"<|im_end|>\n<|im_start|>user\n{u2}<|im_end|>\n<|im_start|>assistant\n"  # SmolLM2's ChatML
    assert second.prompt_tokens == len(encode(model, full))
    assert second.prompt_tokens - second.cached_tokens == len(encode(model, new_turn))


def test_full_context_drops_oldest_whole_turns_never_the_system_prompt(model):
    n_ctx = 128
    chat = model.chat(system=SYSTEM, temperature=0, max_tokens=8, n_ctx=n_ctx)
    system_tokens = len(encode(model, render(model, [{"role": "system", "content": SYSTEM}], generation_prompt=False)))
    questions = [f"Give me one fact about the number {n}." for n in range(3, 10)]
    drops = []
    for i, question in enumerate(questions):
        list(chat.send(question))
        stats = chat.last_stats
        assert stats.prompt_tokens + stats.generated_tokens <= n_ctx
        kept_users = [m["content"] for m in chat.messages if m["role"] == "user"]
        assert kept_users == questions[i + 1 - len(kept_users):i + 1]  # the newest turns, in order
        assert [m["role"] for m in chat.messages] == ["user", "assistant"] * len(kept_users)
        assert chat.system == SYSTEM
        prompt = encode(model, render(model, [{"role": "system", "content": SYSTEM}] + chat.messages[:-1]))
        assert chat.cache.tokens[:len(prompt)] == prompt  # the cache holds the system prompt and the kept turns
        if chat.last_dropped:
            drops.append(i)
            assert stats.cached_tokens >= system_tokens  # the system prompt's keys and values were kept
    assert drops, "seven exchanges must overflow a 128-token context"
    assert chat.dropped_turns == len(questions) - len(chat.messages) // 2
    assert len(drops) < len(questions) - drops[0], "dropping frees room for more than one further turn"


def test_message_too_long_for_the_context_is_refused_and_nothing_is_lost(model):
    chat = model.chat(temperature=0, max_tokens=6, n_ctx=128)
    chat.reply("Say hello.")
    before = [dict(m) for m in chat.messages]
    with pytest.raises(CamelidError, match="do not fit in the context of 128"):
        list(chat.send("word " * 200))
    assert chat.messages == before
    assert chat.dropped_turns == 0
    assert chat.reply("Say hello.")  # the chat goes on


def test_undo_and_retry(model):
    chat = model.chat(temperature=0, max_tokens=12)
    first = chat.reply("Name a colour of the sky.")
    messages = [dict(m) for m in chat.messages]
    assert "".join(c.text for c in chat.retry()).strip() == first  # greedy: the same reply again
    assert chat.messages == messages
    assert chat.last_stats.cached_tokens == chat.last_stats.prompt_tokens - 2  # only the last two prompt tokens are recomputed
    chat.reply("Name a fruit.")
    assert chat.undo() and chat.messages == messages
    assert chat.undo() and chat.messages == []
    assert not chat.undo()
    with pytest.raises(CamelidError, match="no reply to retry"):
        chat.retry()


def test_retry_draws_a_new_sample_with_a_seed(model):
    chat = model.chat(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7, max_tokens=10)
    first = chat.reply("Write a short poem about the sea.")
    again = "".join(c.text for c in chat.retry()).strip()
    assert again != first
    assert len(chat.messages) == 2 and chat.messages[1]["content"].strip() == again


def test_interrupted_reply_keeps_the_part_written_so_far(model):
    chat = model.chat(temperature=0, max_tokens=16)
    stream = chat.send("Count from one to twenty in words.")
    text = "".join(next(stream).text for _ in range(4))
    stream.close()
    assert [m["role"] for m in chat.messages] == ["user", "assistant"]
    assert chat.messages[1]["content"] == text


def greedy_answer(model, messages, max_tokens):
    """The greedy reply to a whole history processed at once on a fresh cache, without ChatSession."""
    tokens = encode(model, render(model, messages))
    chunks = model.stream_tokens(tokens, cache=model.new_cache(), max_tokens=max_tokens, stop=model.template.stop_strings, temperature=0)
    return "".join(c.text for c in chunks)


def test_saved_chat_continues_from_its_history(model, tmp_path):
    turns = ["Remember the word banana.", "Which word did I ask you to remember?"]
    first = model.chat(temperature=0, max_tokens=20)
    a1 = "".join(c.text for c in first.send(turns[0]))
    path = save_chat(first, tmp_path / "chat.json")
    assert [p.name for p in tmp_path.iterdir()] == ["chat.json"]  # no temporary file left behind
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["system"] is None and data["model"] == os.path.basename(model.path)
    assert data["messages"] == [{"role": "user", "content": turns[0]}, {"role": "assistant", "content": a1}]
    assert data["sampling"]["temperature"] == 0 and data["max_tokens"] == 20

    resumed = model.chat(system="Be brief.", temperature=0.9, max_tokens=5)
    assert load_chat(resumed, path) is None
    assert resumed.system is None and resumed.max_tokens == 20 and resumed.sampling["temperature"] == 0
    answer = "".join(c.text for c in resumed.send(turns[1]))
    history = [{"role": "user", "content": turns[0]}, {"role": "assistant", "content": a1}, {"role": "user", "content": turns[1]}]
    assert answer == greedy_answer(model, history, 20)
    assert "banana" in answer.lower()  # the answer follows the loaded history...
    assert "banana" not in greedy_answer(model, history[-1:], 20).lower()  # ...which the question alone does not give


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{not json", "invalid JSON at line 1"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b'{"messages": []}', "no 'camelid_chat' key"),
        (b'{"camelid_chat": 1, "messages": [{"role": "assistant", "content": "hi"}]}', "message 0 must be"),
        (b'{"camelid_chat": 1, "messages": [{"role": "user", "content": "hi"}]}', "last message must be an assistant reply"),
        (b'{"camelid_chat": 1, "messages": [], "sampling": {"temperature": "hot"}}', "temperature must be a finite number"),
        (b'{"camelid_chat": 1, "messages": [], "sampling": {"warmth": 1}}', "unknown sampling setting 'warmth'"),
        (b'{"camelid_chat": 2, "messages": []}', "format version 2"),
    ],
)
def test_a_wrong_chat_file_changes_nothing(model, tmp_path, content, message):
    chat = model.chat(system="Be brief.", temperature=0, max_tokens=8)
    chat.messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]
    before = (chat.system, [dict(m) for m in chat.messages], dict(chat.sampling))
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(CamelidError, match=message):
        load_chat(chat, path)
    assert (chat.system, chat.messages, chat.sampling) == before


def test_save_errors_are_clear_and_leave_no_file(model, tmp_path):
    chat = model.chat(temperature=0)
    with pytest.raises(CamelidError, match="cannot save the chat to"):
        save_chat(chat, tmp_path / "missing-dir" / "chat.json")
    with pytest.raises(CamelidError, match="it is a directory"):
        save_chat(chat, tmp_path)
    with pytest.raises(CamelidError, match="cannot read the chat file"):
        read_chat(tmp_path / "nothing.json")
    assert list(tmp_path.iterdir()) == []
