"""camelid's forward pass against llama.cpp (llama-cpp-python) on the default SmolLM2 Q4_1 model.

Both engines are fed the same tokens: the prompt followed by llama.cpp's own 64-token greedy
continuation (teacher forcing). At each of those 64 positions the top-1 token must agree at >= 98% of
positions and every logit must agree within the tolerance below. Then each engine runs greedily on
its own, and the first 16 tokens must be identical.

The tolerance is zero. camelid reproduces the arithmetic of the llama.cpp build that pip compiles on
this AVX-512 VNNI machine operation by operation (int8 activation blocks, the SIMD lane order of each
dot product, glibc's cosf/sinf in RoPE, ggml's exp polynomial in softmax and SiLU, the f16 KV cache
padded to 256 positions), so its logits are the same float32 bits. Anything short of that is not a
small error on this model: its residual stream carries activations of ~25000 and every matmul input
is rounded to int8, so a one-ulp difference flips an int8 code and grows through the layers to about
one logit. llama.cpp's own flash-attention variant differs from its default path by 1.1-1.4 logits
and agrees on the top-1 token at only 96.9-100% of these positions. On a CPU without AVX-512 VNNI the
pip-built llama.cpp takes other code paths; there the test falls back to that noise floor
(tolerance 2.0, top-1 >= 95%) and says so.
"""

from __future__ import annotations

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is the test oracle: pip install -e '.[test]'")

from model_files import smollm2_path  # noqa: E402

N_FORCED = 64
N_GREEDY = 16


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


EMULATED_BUILD = {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "f16c", "fma"} <= _cpu_flags()
LOGIT_TOLERANCE = 0.0 if EMULATED_BUILD else 2.0
MIN_TOP1 = 0.98 if EMULATED_BUILD else 0.95
PROMPTS = {
    "english-chat": "<|im_start|>user\nWhat is the capital of France? Explain briefly.<|im_end|>\n<|im_start|>assistant\n",
    "chinese-chat": "<|im_start|>user\n请用中文介绍一下长城的历史。<|im_end|>\n<|im_start|>assistant\n",
    "plain-text": "The history of the Roman Empire began when",
}


@pytest.fixture(scope="module")
def model_path():
    return str(smollm2_path())


@pytest.fixture(scope="module")
def oracle(model_path):
    return llama_cpp.Llama(model_path=model_path, n_ctx=512, n_batch=512, logits_all=True, n_threads=2, verbose=False, seed=1)


@pytest.fixture(scope="module")
def model(model_path):
    import camelid

    return camelid.load(model_path, n_ctx=512, show_progress=False)


def oracle_logits(oracle, tokens) -> np.ndarray:
    """llama.cpp's logits (n, n_vocab) for every position of tokens."""
    oracle.reset()
    oracle.eval(tokens)
    return np.array(oracle.scores[: len(tokens)], dtype=np.float32)


def oracle_greedy(oracle, prompt_tokens, n) -> list[int]:
    oracle.reset()
    oracle.eval(prompt_tokens)
    out = []
    for _ in range(n):
        token = int(np.argmax(oracle.scores[oracle.n_tokens - 1]))
        out.append(token)
        oracle.eval([token])
    return out


def camelid_greedy(model, prompt_tokens, n) -> list[int]:
    cache = model.new_cache()
    logits = model.forward(prompt_tokens, cache, last_only=True)[-1]
    out = []
    for _ in range(n):
        token = int(np.argmax(logits))
        out.append(token)
        logits = model.forward([token], cache, last_only=True)[-1]
    return out


@pytest.mark.parametrize("name", PROMPTS)
def test_tokenization_matches(oracle, model, name):
    text = PROMPTS[name]
    assert model.tokenize(text, add_special=True, parse_special=True) == oracle.tokenize(text.encode(), add_bos=True, special=True)


@pytest.mark.parametrize("name", PROMPTS)
def test_teacher_forced_logits(oracle, model, name):
    prompt = oracle.tokenize(PROMPTS[name].encode(), add_bos=True, special=True)
    forced = oracle_greedy(oracle, prompt, N_FORCED)
    tokens = prompt + forced
    ref = oracle_logits(oracle, tokens)[len(prompt) - 1 : len(tokens) - 1]
    ours = model.forward(tokens, model.new_cache())[len(prompt) - 1 : len(tokens) - 1]
    assert ours.shape == ref.shape == (N_FORCED, model.network.n_vocab)
    top1_agreement = np.mean(ours.argmax(-1) == ref.argmax(-1))
    max_diff = float(np.abs(ours - ref).max())
    assert top1_agreement >= MIN_TOP1, f"top-1 agreement {top1_agreement:.3f}, max logit diff {max_diff:.4f}"
    assert max_diff <= LOGIT_TOLERANCE, f"max logit diff {max_diff:.4f} (top-1 agreement {top1_agreement:.3f})"


@pytest.mark.parametrize("name", PROMPTS)
def test_free_running_greedy(oracle, model, name):
    prompt = oracle.tokenize(PROMPTS[name].encode(), add_bos=True, special=True)
    ref = oracle_greedy(oracle, prompt, N_GREEDY)
    ours = camelid_greedy(model, prompt, N_GREEDY)
    assert ours == ref, f"ours {model.detokenize(ours)!r} vs llama.cpp {model.detokenize(ref)!r}"
