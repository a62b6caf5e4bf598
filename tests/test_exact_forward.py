"""camelid's forward pass is bit-identical to llama.cpp's CPU path (llama-cpp-python, this build).

Tiny random LLaMA and Qwen2 models (tests/tiny_gguf.py) are quantized by llama.cpp itself
(llama_model_quantize) to each weight type family, then both engines run the same tokens: every
logit must have the same float32 bits, for a teacher-forced batch (llama.cpp with logits_all, so its
output matrix runs as a batch), and for a prompt followed by single-token decoding with logits for
the last token only (llama.cpp then runs the last feed-forward and the output matrix on one row).
The default SmolLM2 Q4_1 model is checked the same way on the agreement test's prompts.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is the test oracle: pip install -e '.[test]'")

import camelid  # noqa: E402
from tiny_gguf import write_tiny_model  # noqa: E402

# llama_ftype values: the weight types llama.cpp's quantizer writes for each (tensor types vary inside
# a K-quant mix; tied embeddings become Q6_K / Q8_0)
FTYPES = {"F16": 1, "BF16": 32, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}
N_VOCAB = 512


def _bits(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
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
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = ftype
            params.nthread = 2
            if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
                pytest.skip(f"llama.cpp could not quantize a tiny model to {name}")
            paths[(arch, name)] = dst
    return paths


def _last_logits(llm) -> np.ndarray:
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()


def assert_same_as_llama_cpp(path, tokens, n_prompt: int) -> None:
    model = camelid.load(str(path), n_ctx=512, show_progress=False)
    batch = llama_cpp.Llama(model_path=str(path), n_ctx=512, logits_all=True, n_threads=2, verbose=False)
    batch.eval(tokens)
    expected = np.array(batch.scores[: len(tokens)], dtype=np.float32)
    ours = model.forward(tokens, model.new_cache())
    assert np.array_equal(_bits(ours), _bits(expected)), f"batch: max diff {np.abs(ours - expected).max()}"

    step = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False)
    step.eval(tokens[:n_prompt])
    cache = model.new_cache()
    logits = model.forward(tokens[:n_prompt], cache, last_only=True)[-1]
    for i, token in enumerate(tokens[n_prompt:]):
        expected = _last_logits(step)
        assert np.array_equal(_bits(logits), _bits(expected)), f"step {i}: max diff {np.abs(logits - expected).max()}"
        step.eval([token])
        logits = model.forward([token], cache, last_only=True)[-1]


@pytest.mark.parametrize("weights", ["F32", *FTYPES])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_models_bit_identical(tiny_models, arch, weights):
    tokens = [int(t) for t in np.random.default_rng(1).integers(0, N_VOCAB, 40)]
    assert_same_as_llama_cpp(tiny_models[(arch, weights)], tokens, n_prompt=30)


def test_default_model_bit_identical():
    from camelid.default_model import default_model_path
    from camelid.errors import CamelidError
    from test_llama_cpp_agreement import PROMPTS

    try:
        path = default_model_path()
    except CamelidError as exc:
        pytest.skip(str(exc))
    oracle = llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=2, verbose=False)
    for text in PROMPTS.values():
        prompt = oracle.tokenize(text.encode(), add_bos=True, special=True)
        oracle.reset()
        oracle.eval(prompt)
        continuation = []
        for _ in range(24):  # llama.cpp's own greedy continuation
            continuation.append(int(np.argmax(_last_logits(oracle))))
            oracle.eval(continuation[-1:])
        assert_same_as_llama_cpp(path, prompt + continuation, n_prompt=len(prompt))
