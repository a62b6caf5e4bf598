"""camelid's forward pass against llama.cpp's CPU path (llama-cpp-python), logit by logit.

Tiny random LLaMA and Qwen2 models (tests/tiny_gguf.py) are quantized by llama.cpp itself
(llama_model_quantize) to each weight type family, then both engines run the same tokens, for a
teacher-forced batch (llama.cpp with logits for every position, so its output matrix runs as a batch),
and for a prompt followed by single-token decoding with logits for the last token only (llama.cpp then
runs the last feed-forward and the output matrix on one row). The default SmolLM2 Q4_1 model is
checked the same way on the agreement test's prompts. In exact mode every logit has the same float32
bits; in tolerance mode they agree within tests/oracle/mode.py's tolerances.
"""

from __future__ import annotations

import numpy as np
import pytest

import camelid
import oracle
from oracle.mode import assert_logits_match
from tiny_gguf import write_tiny_model

# llama_ftype values: the weight types llama.cpp's quantizer writes for each (tensor types vary inside
# a K-quant mix; tied embeddings become Q6_K / Q8_0)
FTYPES = {"F16": 1, "BF16": 32, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}
N_VOCAB = 512


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    oracle.require()
    root = tmp_path_factory.mktemp("exact")
    paths = {}
    for arch in ("llama", "qwen2"):
        src = root / f"{arch}-F32.gguf"
        # n_embd a multiple of 256 so that the K-quant types apply to every matrix
        write_tiny_model(src, arch, n_vocab=N_VOCAB, n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=512,
                         tied_output=arch == "llama", seed=3)
        paths[(arch, "F32")] = src
        for name, ftype in FTYPES.items():
            dst = root / f"{arch}-{name}.gguf"
            oracle.quantize(src, dst, ftype)
            paths[(arch, name)] = dst
    return paths


def assert_same_as_llama_cpp(path, tokens, n_prompt: int, tiny: bool) -> None:
    model = camelid.load(str(path), n_ctx=512, show_progress=False)
    llm = oracle.Llama(path)
    ours = model.forward(tokens, model.new_cache())
    assert_logits_match(ours, llm.logits(tokens), "batch", tiny=tiny)

    expected = llm.step_logits(tokens, n_prompt)
    cache = model.new_cache()
    steps = [model.forward(tokens[:n_prompt], cache, last_only=True)[-1]]
    steps += [model.forward([token], cache, last_only=True)[-1] for token in tokens[n_prompt:]]
    assert_logits_match(np.stack(steps), expected, "one token at a time", tiny=tiny)


@pytest.mark.parametrize("weights", ["F32", *FTYPES])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_models_agree(tiny_models, arch, weights):
    tokens = [int(t) for t in np.random.default_rng(1).integers(0, N_VOCAB, 40)]
    assert_same_as_llama_cpp(tiny_models[(arch, weights)], tokens, n_prompt=30, tiny=True)


def test_default_model_agrees():
    from model_files import smollm2_path
    from test_llama_cpp_agreement import PROMPTS

    path = smollm2_path()
    llm = oracle.Llama(path)
    for text in PROMPTS.values():
        prompt = llm.tokenize(text)
        continuation, _ = llm.greedy(prompt, 24)  # llama.cpp's own greedy continuation
        assert_same_as_llama_cpp(path, prompt + continuation, n_prompt=len(prompt), tiny=False)
