"""camelid.engine on Gemma 3 270M Q4_K_M, whose K-quant products round a row differently in batches of
different sizes: requests batched together give what each gives alone, a cache that held another
prompt gives the logits a fresh cache gives, and the per-request hooks (token masks,
log-probabilities, removal) act on their own request only."""

from __future__ import annotations

import numpy as np
import pytest

import camelid
from camelid.engine import PROMPT_CHUNK, Engine, Request, generate
from camelid.generate import prefill
from camelid.sampling import SamplingParams
from model_files import gemma_path

GREEDY = SamplingParams(temperature=0)
PROMPTS = ["The llama is a domesticated South American camelid,", "羊驼是一种生活在南美洲的动物，", "Water boils at", "def add(a, b):"]


@pytest.fixture(scope="module")
def model():
    return camelid.load(str(gemma_path()), n_ctx=256, show_progress=False)


def tokens_of(chunks) -> list[int]:
    return [c.token for c in chunks if c.token is not None]


def run_engine(model, requests):
    """Run requests together to the end; {index: [chunks]}."""
    engine = Engine(model.network, model.tokenizer)
    seqs = {id(engine.add(r, model.new_cache())): i for i, r in enumerate(requests)}
    out = {i: [] for i in range(len(requests))}
    while engine.sequences:
        for seq, chunk in engine.step():
            out[seqs[id(seq)]].append(chunk)
    return out


def test_batched_requests_equal_each_alone(model):
    requests = [Request(model.tokenize(p), max_tokens=12 + 3 * i, sampling=GREEDY, ignore_eos=True, top_logprobs=2)
                for i, p in enumerate(PROMPTS)]
    together = run_engine(model, requests)
    for i, r in enumerate(requests):
        alone = run_engine(model, [r])[0]
        assert [(c.text, c.finish_reason) for c in together[i]] == [(c.text, c.finish_reason) for c in alone]
        entries = [e for c in together[i] for e in c.logprobs]
        assert entries == [e for c in alone for e in c.logprobs]
        assert len(entries) == r.max_tokens and all(len(alternatives) == 2 for _, _, alternatives in entries)
        assert together[i][-1].stats.generated_tokens == r.max_tokens


def test_a_cache_that_held_another_prompt_gives_fresh_logits(model):
    net = model.network
    first = model.tokenize("The llama is a domesticated South American camelid, widely used as a meat and pack animal.")
    reused_any = False
    for text in ["The llama is a domesticated South American camelid, kept", "The llama is a domesticated animal",
                 "The llama is a domesticated South American camelid, widely used as a meat and pack animal."]:
        prompt = model.tokenize(text)
        fresh, _ = prefill(net, model.new_cache(), prompt)
        cache = model.new_cache()
        prefill(net, cache, first)
        logits, reused = prefill(net, cache, prompt)
        reused_any |= reused > 0
        assert np.array_equal(logits.view(np.uint32), fresh.view(np.uint32)), (text, reused)
    assert reused_any


def test_token_mask_and_removal_act_on_one_request(model):
    digits = np.zeros(model.network.n_vocab, bool)
    digit_ids = [model.tokenize(d, add_special=False)[0] for d in "0123456789"]
    digits[digit_ids] = True
    masked = Request(model.tokenize("My favourite word is"), max_tokens=8, sampling=GREEDY, ignore_eos=True,
                     token_mask=lambda generated: digits)
    free = Request(model.tokenize(PROMPTS[0]), max_tokens=8, sampling=GREEDY, ignore_eos=True)
    out = run_engine(model, [masked, free])
    assert set(tokens_of(out[0])) <= set(digit_ids) and len(tokens_of(out[0])) > 0
    assert "".join(c.text for c in out[1]) == "".join(c.text for c in generate(model.network, model.tokenizer, free, model.new_cache()))

    engine = Engine(model.network, model.tokenizer)
    gone, kept = engine.add(free, model.new_cache()), engine.add(masked, model.new_cache())
    engine.step()
    engine.remove(gone)
    assert engine.sequences == [kept]
    while engine.sequences:
        assert all(seq is kept for seq, _ in engine.step())


@pytest.mark.parametrize("length, pieces", [(300, PROMPT_CHUNK), (260, 512)])
def test_a_prompt_in_chunks_equals_it_in_one_batch(model, length, pieces):
    """The engine runs a long prompt in PROMPT_CHUNK pieces (so other streams move between them) only
    where that leaves every row's arithmetic as in llama.cpp's 512-token batches (not for 260 tokens:
    a last piece of 4 would take the K-quants' vec_dot path); either way the log-probabilities equal,
    to the bit, those of the prompt in one batch."""
    words = " ".join(["llama", "alpaca", "guanaco", "vicuña", "camelid", "羊驼"] * 80)
    prompt = model.tokenize(words)[:length]
    request = Request(prompt, max_tokens=3, sampling=GREEDY, ignore_eos=True, top_logprobs=5)
    engine = Engine(model.network, model.tokenizer)
    seq = engine.add(request, model.new_cache(512))
    chunked = [c for _, c in engine.step()]
    assert seq.batch == pieces  # chosen at the first prompt batch
    while engine.sequences:
        chunked += [c for _, c in engine.step()]
    whole = list(generate(model.network, model.tokenizer, request, model.new_cache(512)))
    assert [e for c in chunked for e in c.logprobs] == [e for c in whole for e in c.logprobs]


def test_an_error_in_one_request_ends_only_that_one(model):
    """A token mask that allows nothing: that request ends with finish_reason "error" (the sampler's
    CamelidError), the other one runs on to the answer it gives alone."""
    from camelid.errors import CamelidError

    nothing = np.zeros(model.network.n_vocab, bool)
    broken = Request(model.tokenize(PROMPTS[1]), max_tokens=8, sampling=GREEDY, token_mask=lambda generated: nothing if generated else None)
    fine = Request(model.tokenize(PROMPTS[0]), max_tokens=8, sampling=GREEDY, ignore_eos=True)
    out = run_engine(model, [broken, fine])
    assert out[0][-1].finish_reason == "error" and isinstance(out[0][-1].error, CamelidError)
    assert out[0][-1].stats.generated_tokens == 1
    assert [c.text for c in out[1]] == [c.text for c in run_engine(model, [fine])[0]]
