"""camelid's forward pass against llama.cpp (llama-cpp-python) on the default SmolLM2 Q4_1 model.

Both engines are fed the same tokens: the prompt followed by llama.cpp's own 64-token greedy
continuation (teacher forcing); every logit at those 64 positions must agree. Then each engine runs
greedily on its own for 16 tokens. How closely they must agree (bit for bit, or within llama.cpp's
own noise floor) is decided once per run by tests/oracle/mode.py.
"""

from __future__ import annotations

import pytest

import oracle
from model_files import smollm2_path
from oracle.mode import assert_greedy_matches, assert_logits_match, camelid_greedy

N_FORCED = 64
N_GREEDY = 16
PROMPTS = {
    "english-chat": "<|im_start|>user\nWhat is the capital of France? Explain briefly.<|im_end|>\n<|im_start|>assistant\n",
    "chinese-chat": "<|im_start|>user\n请用中文介绍一下长城的历史。<|im_end|>\n<|im_start|>assistant\n",
    "plain-text": "The history of the Roman Empire began when",
}


@pytest.fixture(scope="module")
def model_path():
    return str(smollm2_path())


@pytest.fixture(scope="module")
def llm(model_path):
    return oracle.Llama(model_path)


@pytest.fixture(scope="module")
def model(model_path):
    import camelid

    return camelid.load(model_path, n_ctx=512, show_progress=False)


@pytest.mark.parametrize("name", PROMPTS)
def test_tokenization_matches(llm, model, name):
    text = PROMPTS[name]
    assert model.tokenize(text, add_special=True, parse_special=True) == llm.tokenize(text)


@pytest.mark.parametrize("name", PROMPTS)
def test_teacher_forced_logits(llm, model, name):
    prompt = llm.tokenize(PROMPTS[name])
    forced, _ = llm.greedy(prompt, N_FORCED)
    tokens = prompt + forced
    ref = llm.logits(tokens)[len(prompt) - 1 : len(tokens) - 1]
    ours = model.forward(tokens, model.new_cache())[len(prompt) - 1 : len(tokens) - 1]
    assert ours.shape == ref.shape == (N_FORCED, model.network.n_vocab)
    assert_logits_match(ours, ref, f"{name}, teacher-forced")


@pytest.mark.parametrize("name", PROMPTS)
def test_free_running_greedy(llm, model, name):
    prompt = llm.tokenize(PROMPTS[name])
    ref, ref_logits = llm.greedy(prompt, N_GREEDY)
    ours = camelid_greedy(model, prompt, N_GREEDY)
    assert_greedy_matches(ours, ref, ref_logits, f"{name}: ours {model.detokenize(ours)!r} vs llama.cpp {model.detokenize(ref)!r}")
