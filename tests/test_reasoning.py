"""The reasoning splitter: <think>...</think> apart from the answer, the same however the reply is split into pieces."""

from __future__ import annotations

import itertools

import pytest

from camelid.errors import CamelidError
from camelid.reasoning import ReasoningSplitter, prompt_opens_thinking, split_reasoning, splits_reasoning

CASES = [
    # (reply, prompt opened <think>, reasoning, content)
    ("<think>\nThe user asks about France.\n</think>\n\nParis.", False, "The user asks about France.", "Paris."),
    ("The user asks about France.\n</think>\n\nParis.", True, "The user asks about France.", "Paris."),
    ("Paris.", False, "", "Paris."),
    ("  Paris, <think>not reasoning</think>", False, "", "  Paris, <think>not reasoning</think>"),
    ("<think>\nstill thinking when the tokens ran out\n", False, "still thinking when the tokens ran out", ""),
    ("<think>\n\n</think>\n\nParis.", False, "", "Paris."),
    ("<thinking> is a word here", False, "", "<thinking> is a word here"),
    ("<think>a < b and </thin is not the end</think>答案：巴黎 🦙", False, "a < b and </thin is not the end", "答案：巴黎 🦙"),
    ("<think>two\n\nparagraphs</think>\n", False, "two\n\nparagraphs", ""),
    ("<thi", False, "", "<thi"),
]


@pytest.mark.parametrize("reply, opened, reasoning, content", CASES)
def test_whole_reply(reply, opened, reasoning, content):
    assert split_reasoning(reply, opened) == (reasoning, content)


def streamed(pieces, opened):
    splitter = ReasoningSplitter(opened)
    parts = [splitter.feed(p) for p in pieces] + [splitter.flush()]
    return "".join(r for r, _ in parts), "".join(c for _, c in parts)


@pytest.mark.parametrize("reply, opened, reasoning, content", CASES)
def test_any_split_into_pieces_gives_the_same(reply, opened, reasoning, content):
    assert streamed(list(reply), opened) == (reasoning, content)  # a character at a time
    for i, j in itertools.combinations(range(len(reply) + 1), 2):
        assert streamed([reply[:i], reply[i:j], reply[j:]], opened) == (reasoning, content), (i, j)


def test_nothing_is_held_back_longer_than_a_possible_tag():
    splitter = ReasoningSplitter()
    assert splitter.feed("<think>\nStep one") == ("Step one", "")
    assert splitter.feed(" and two.</th") == (" and two.", "")
    assert splitter.feed("ink>\n\nThe answer") == ("", "The answer")
    assert splitter.feed(" is 4.") == ("", " is 4.")
    assert splitter.flush() == ("", "")


def test_prompt_and_format_checks():
    assert prompt_opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert splits_reasoning("auto", "{{ '<think>' }}") and not splits_reasoning("auto", "{{ messages }}")
    assert splits_reasoning("deepseek", "") and not splits_reasoning("none", "<think>")
    with pytest.raises(CamelidError, match="reasoning format"):
        splits_reasoning("r1", "")


# ---- through a real server: SmolLM2 under a template that opens <think> in the prompt (as DeepSeek-R1's)

THINKING_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                     "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from model_files import smollm2_path
    from server_process import serve

    yield from serve(tmp_path_factory, "-m", str(smollm2_path()), "-c", "1024", "--chat-template", THINKING_TEMPLATE)


def test_reasoning_content_streamed_or_not(server):
    client = server.openai()
    ask = dict(model="m", messages=QUESTION, max_tokens=24, temperature=0)
    plain = client.chat.completions.create(**ask, extra_body={"reasoning_format": "none"}).choices[0].message
    assert plain.content and getattr(plain, "reasoning_content", None) is None
    reasoning, content = split_reasoning(plain.content, opened=True)
    assert reasoning  # the reply starts inside the <think> the prompt opened
    split = client.chat.completions.create(**ask).choices[0].message
    assert split.reasoning_content == reasoning and (split.content or "") == content
    deltas = [c.choices[0].delta for c in client.chat.completions.create(**ask, stream=True) if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == reasoning
    assert "".join(d.content or "" for d in deltas) == content
    bad = server.post("/v1/chat/completions", json={"messages": QUESTION, "reasoning_format": "r1"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "reasoning_format"


def test_ollama_thinking(server):
    from dependencies import require_module

    ollama = require_module("ollama")
    client = ollama.Client(host=server.url, timeout=120)
    options = {"temperature": 0, "num_predict": 24}
    plain = server.openai().chat.completions.create(model="m", messages=QUESTION, max_tokens=24, temperature=0,
                                                    extra_body={"reasoning_format": "none"}).choices[0].message.content
    reasoning, content = split_reasoning(plain, opened=True)
    reply = client.chat(model="m", messages=QUESTION, options=options, think=True)
    assert reply.message.thinking == reasoning and reply.message.content == content
    parts = list(client.chat(model="m", messages=QUESTION, options=options, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == reasoning
    generated = client.generate(model="m", prompt=QUESTION[0]["content"], options=options)
    assert generated.thinking == reasoning
