"""Phi-3 LongRoPE (Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini) from a tiny random Phi3ForCausalLM with
rope_scaling longrope (original context 256, extended to 1024), converted by camelid.

llama.cpp picks the short factors in a context of at most the original length and the long ones
beyond it (it rounds its context up to a multiple of 256, hence an original length of 256 here);
camelid must pick the same for the same n_ctx. Against llama.cpp: teacher-forced logits over 3
prompts x 64 positions and greedy 32 tokens, at n_ctx 256 (short) and 512 (long). Against
transformers, which picks by the length of the sequence it runs: 100 tokens (short factors) at
n_ctx 256, and 300 tokens (long factors) at n_ctx 512, in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import hf_fixtures as F
import oracle
from dependencies import require_module
from oracle.mode import assert_greedy_matches, assert_logits_match, camelid_greedy
from test_architectures import HF_TOLERANCE, N_FORCED, N_GREEDY, TEXTS, _init_random

N_ORIG = 256  # original_max_position_embeddings
N_MAX = 1024  # max_position_embeddings
HEAD_DIM = 16
SHORT = 256  # n_ctx that keeps the short factors
LONG = 512  # n_ctx that takes the long ones


def longrope_model(n_vocab: int, seed: int = 0):
    """A float32 Phi3ForCausalLM with LongRoPE factors far enough apart to change every logit."""
    import torch
    import transformers as T

    rng = np.random.default_rng(seed)
    short = [float(v) for v in 1.0 + 0.5 * rng.random(HEAD_DIM // 2)]
    long = [float(v) for v in np.sort(1.0 + 15.0 * rng.random(HEAD_DIM // 2))]
    config = T.Phi3Config(vocab_size=n_vocab, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                          num_hidden_layers=2, max_position_embeddings=N_MAX, original_max_position_embeddings=N_ORIG,
                          rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
                          sliding_window=None, rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                                                "short_factor": short, "long_factor": long})
    torch.manual_seed(seed)
    model = T.Phi3ForCausalLM(config).eval()
    _init_random(model, seed, 1.0)
    return model, short, long


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """(torch model, short factors, long factors, {outtype: GGUF path}, spm dir)."""
    require_module("transformers")
    require_module("sentencepiece")
    from camelid.cli.main import main as camelid_main

    work = tmp_path_factory.mktemp("phi3_longrope")
    spm_dir = F.train_spm_tokenizer(work / "tokenizer")
    model, short, long = longrope_model(F.spm_piece_count(spm_dir))
    hf_dir = work / "longrope" / "hf"  # general.name without "phi3": see test_architectures.arch_case
    model.save_pretrained(hf_dir, safe_serialization=True)
    F.copy_tokenizer(spm_dir, hf_dir)
    files = {}
    for outtype in ("f32", "q8_0"):
        out = work / f"longrope-{outtype}.gguf"
        assert camelid_main(["convert", str(hf_dir), "-o", str(out), "--outtype", outtype, "--no-progress"]) == 0
        files[outtype] = out
    return model, short, long, files, spm_dir


def _load(path, n_ctx: int):
    import camelid

    return camelid.load(str(path), n_ctx=n_ctx, show_progress=False)


def test_converted_factors_and_keys(case):
    from camelid.formats.gguf import open_gguf

    _, short, long, files, _ = case
    f = open_gguf(str(files["q8_0"]))
    assert np.array_equal(f.tensors["rope_factors_long.weight"].raw.view(np.float32).reshape(-1), np.float32(long))
    assert np.array_equal(f.tensors["rope_factors_short.weight"].raw.view(np.float32).reshape(-1), np.float32(short))
    assert f.metadata["phi3.rope.scaling.original_context_length"] == N_ORIG
    assert f.metadata["phi3.context_length"] == N_MAX
    expected = math.sqrt(1 + math.log(N_MAX / N_ORIG) / math.log(N_ORIG))  # convert_hf_to_gguf.py's Phi3MiniModel
    assert f.metadata["phi3.rope.scaling.attn_factor"] == pytest.approx(expected, rel=1e-7)
    assert "rope.scaling.type" not in " ".join(f.metadata)


def test_factors_chosen_by_context(case):
    _, _, _, files, _ = case
    short, long = _load(files["f32"], SHORT), _load(files["f32"], LONG)
    assert short.network.ropes_for(SHORT) is short.network.ropes
    assert short.network.ropes_for(SHORT + 1) is short.network.ropes_long
    tokens = list(range(3, 60))
    a = short.forward(tokens, short.new_cache())
    b = long.forward(tokens, long.new_cache())
    assert np.abs(a - b).max() > 1.0  # the two factor sets lead to different models


@pytest.mark.parametrize("n_ctx", [SHORT, LONG])
def test_llama_cpp_teacher_forced_and_greedy(case, n_ctx):
    _, _, _, files, _ = case
    for outtype, path in files.items():
        llm = oracle.Llama(path, n_ctx=n_ctx)
        m = _load(path, n_ctx)
        for i, text in enumerate(TEXTS):
            prompt = llm.tokenize(text)
            forced, _ = llm.greedy(prompt, N_FORCED)
            tokens = prompt + forced
            ref = llm.logits(tokens)[len(prompt) - 1: len(tokens) - 1]
            ours = m.forward(tokens, m.new_cache())[len(prompt) - 1: len(tokens) - 1]
            assert ours.shape == ref.shape == (N_FORCED, m.network.n_vocab)
            print(f"phi3 longrope n_ctx {n_ctx} {outtype} prompt {i}: max logit diff {np.abs(ours - ref).max():.4g} "
                  f"(spread {ref.std():.3g}), top-1 {np.mean(ours.argmax(-1) == ref.argmax(-1)):.3f}")
            assert_logits_match(ours, ref, f"phi3 longrope n_ctx {n_ctx} {outtype} prompt {i}, teacher-forced", tiny=True)
            ref_greedy, ref_logits = llm.greedy(prompt, N_GREEDY)
            assert_greedy_matches(camelid_greedy(m, prompt, N_GREEDY), ref_greedy, ref_logits,
                                  f"phi3 longrope n_ctx {n_ctx} {outtype} prompt {i}")


@pytest.mark.parametrize("n_ctx,n_tokens", [(SHORT, 100), (LONG, 300)])
def test_f32_matches_transformers(case, n_ctx, n_tokens):
    import sentencepiece as spm

    model, _, _, files, spm_dir = case
    sp = spm.SentencePieceProcessor(model_file=str(spm_dir / "tokenizer.model"))
    ids = ([1] + sp.encode(" ".join(TEXTS) * 20))[:n_tokens]
    assert len(ids) == n_tokens and (n_tokens > N_ORIG) == (n_ctx > N_ORIG)  # transformers: long factors beyond N_ORIG tokens
    ref = F.hf_logits(model, ids)
    m = _load(files["f32"], n_ctx)
    ours = m.forward(ids, m.new_cache())
    assert np.abs(ref).max() > 3
    diff = float(np.abs(ours - ref).max())
    print(f"phi3 longrope f32 n_ctx {n_ctx}, {n_tokens} tokens vs transformers: max logit diff {diff:.4g}, "
          f"top-1 {np.mean(ours.argmax(-1) == ref.argmax(-1)):.3f}")
    assert diff < HF_TOLERANCE["phi3"], f"max logit difference {diff}"
    assert np.mean(ours.argmax(-1) == ref.argmax(-1)) >= 0.97


def test_context_shift_turns_keys_without_the_attn_factor(case):
    from camelid.context_shift import shift_context

    _, _, _, files, _ = case
    m = _load(files["f32"], LONG)
    tokens = list(range(3, 43))
    shifted, fresh = m.new_cache(), m.new_cache()
    m.forward(tokens, shifted)
    shift_context(m.network, shifted, 4, 14)
    m.forward(tokens[:4] + tokens[14:], fresh)
    n = shifted.n_past
    assert n == fresh.n_past == 30
    k_shifted, k_fresh = shifted.k[:, 4:n].astype(np.float32), fresh.k[:, 4:n].astype(np.float32)
    # keys of layer 0 depend only on their token and position; later layers saw the dropped tokens
    assert np.abs(k_shifted[0] - k_fresh[0]).max() <= 2e-3 * np.abs(k_fresh[0]).max()
