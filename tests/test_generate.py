"""Generation: stop conditions, stop strings, KV-cache reuse, seeded reproducibility, on SmolLM2."""

from __future__ import annotations

import numpy as np
import pytest

import camelid
from camelid.generate import StopStringMatcher
from model_files import smollm2_path

CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def model():
    return camelid.load(smollm2_path(), n_ctx=512, show_progress=False)


def collect(chunks):
    chunks = list(chunks)
    assert all(c.finish_reason is None for c in chunks[:-1])
    return "".join(c.text for c in chunks), chunks[-1]


def greedy_tokens(model, prompt_tokens, n):
    """Independent greedy loop over forward() on a fresh cache."""
    cache = model.new_cache()
    logits = model.forward(prompt_tokens, cache, last_only=True)[-1]
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = model.forward([out[-1]], cache, last_only=True)[-1]
    return out


def test_stop_string_matcher_holds_back_partial_matches():
    m = StopStringMatcher(["###", "</s>"])
    assert m.feed("Hello #") == ("Hello ", False)
    assert m.feed("#") == ("", False)
    assert m.feed(" world") == ("## world", False)
    assert m.feed(" end</") == (" end", False)
    assert m.feed("s> tail") == ("", True)


def test_stop_string_spanning_tokens(model):
    text, last = collect(model.stream("1, 2, 3, 4, 5, 6,", max_tokens=40, temperature=0, stop=["10"]))
    full, _ = collect(model.stream("1, 2, 3, 4, 5, 6,", max_tokens=40, temperature=0))
    assert "10" in full, "the model must count past 10 for this test to mean anything"
    assert last.finish_reason == "stop"
    assert text == full[: full.index("10")]


def test_token_limit(model):
    text, last = collect(model.stream("Once upon a time", max_tokens=5, temperature=0))
    assert last.finish_reason == "length"
    assert last.stats.generated_tokens == 5
    assert text == model.detokenize(greedy_tokens(model, model.tokenize("Once upon a time"), 5))


def test_end_of_generation_token(model):
    _, last = collect(model.stream(CHAT.format("What is 2+2? Answer in one sentence."), max_tokens=100, temperature=0))
    assert last.finish_reason == "stop"
    assert last.stats.generated_tokens < 100


def test_ignore_eos_never_samples_the_end(model):
    """As llama.cpp's --ignore-eos (and its server's ignore_eos): the end-of-generation tokens get a
    logit of -inf, so where greedy decoding would end, the next best token follows instead."""
    from camelid.engine import Request, generate
    from camelid.sampling import SamplingParams

    prompt = model.tokenize(CHAT.format("What is 2+2? Answer in one sentence."), parse_special=True)
    plain = list(model.stream_tokens(prompt, max_tokens=100, temperature=0, cache=model.new_cache()))
    n = plain[-1].stats.generated_tokens  # the last one is the end-of-generation token
    assert plain[-1].finish_reason == "stop"
    request = Request(prompt, max_tokens=n + 3, sampling=SamplingParams(temperature=0), ignore_eos=True, top_logprobs=1)
    chunks = list(generate(model.network, model.tokenizer, request, model.new_cache()))
    sampled = [piece for c in chunks for piece, _, _ in c.logprobs]
    ends = {model.tokenizer.token_to_bytes(t, True) for t in model.tokenizer.eog_ids}
    assert len(sampled) == n + 3 and not ends & set(sampled)
    assert "".join(c.text for c in chunks).startswith("".join(c.text for c in plain))


def test_context_full(model):
    small = camelid.load(model.path, n_ctx=24, show_progress=False)
    prompt = small.tokenize("Once upon a time, in a land far away,")
    chunks = list(small.stream_tokens(prompt, max_tokens=-1, temperature=0, ignore_eos=True))
    last = chunks[-1]
    assert last.finish_reason == "context"
    assert last.stats.generated_tokens == 24 - len(prompt) + 1


def test_greedy_stream_equals_forward_loop_and_prefix_reuse(model):
    prompt = model.tokenize(CHAT.format("Write a haiku about the sea."))
    expected = greedy_tokens(model, prompt, 20)
    first, last = collect(model.stream_tokens(prompt, max_tokens=20, temperature=0))
    assert first == model.detokenize(expected)
    assert last.stats.cached_tokens == 0
    longer = prompt + expected[:10]
    again, last = collect(model.stream_tokens(longer, max_tokens=10, temperature=0))
    assert last.stats.cached_tokens == len(longer) - 2  # the last two recomputed, a batch like a fresh prompt's last
    assert again == model.detokenize(expected[10:20])


def test_seed_reproduces_sampled_output(model):
    kwargs = dict(max_tokens=24, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    a, _ = collect(model.stream("My favourite food is", **kwargs))
    b, _ = collect(model.stream("My favourite food is", **kwargs))
    c, _ = collect(model.stream("My favourite food is", **{**kwargs, "seed": 99}))
    assert a == b
    assert a != c


def test_chinese_stream_never_splits_characters(model):
    chunks = list(model.stream(CHAT.format("用中文写一句关于春天的话。"), max_tokens=40, temperature=0))
    assert all("\ufffd" not in c.text for c in chunks)
    text = "".join(c.text for c in chunks)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text)


def test_chat_session_reuses_cache_and_keeps_history(model):
    chat = model.chat(temperature=0, max_tokens=30)
    assert "Paris" in chat.reply("What is the capital of France? Answer in one sentence.")
    first_prompt = chat.last_stats.prompt_tokens
    assert "Rome" in chat.reply("And what is the capital of Italy? Answer in one sentence.")
    assert chat.last_stats.cached_tokens >= first_prompt - 1
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "user", "assistant"]
