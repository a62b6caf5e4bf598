"""Architectures beyond llama/qwen2, each from a tiny random checkpoint built with transformers' own
model class and converted by camelid: Qwen3, Llama 3 with llama3 RoPE scaling, Mistral with a sliding
window (against transformers only: llama.cpp ignores the window for llama), Gemma 3 (with its
sliding-window layers), Phi-3 (fused qkv and gate/up). Per architecture: llama.cpp loads the GGUF; teacher-forced logits over 3
prompts x 64 positions agree with llama.cpp's (tests/oracle/mode.py decides how closely); greedy 32
tokens agree; the F32 file's logits match transformers' in float64.
Then the real Gemma 3 270M Q4_K_M: greedy 64 tokens as llama.cpp's on three prompts, one Chinese.
"""

from __future__ import annotations

import numpy as np
import pytest

import hf_fixtures as F
import oracle
from dependencies import require_module
from oracle.mode import assert_greedy_matches, assert_logits_match, camelid_greedy

N_FORCED = 64
N_GREEDY = 32
TEXTS = ["The llama is a domesticated South American camelid", "羊驼是一种生活在南美洲的动物。", "Hello world! 12345"]
# Transformers' float64 logits against camelid on the F32 file: float16 KV cache and queries (and
# for Gemma float16 GELU) keep camelid a few hundredths of a logit away.
HF_TOLERANCE = {"qwen3": 0.05, "llama3": 0.05, "mistral": 0.05, "gemma3": 0.1, "phi3": 0.05}


def _init_random(model, seed: int, norm_center: float) -> None:
    """Weights scaled so the logits are O(3) and attention is not uniform; norms around norm_center."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((norm_center if "norm" in name else 0.0) + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                std = 0.35 if "embed" in name or "lm_head" in name else (0.2 if ("q_proj" in name or "k_proj" in name) else 0.12)
                p.copy_(std * torch.randn(p.shape, generator=gen))


def random_model(arch: str, n_vocab: int, seed: int = 0):
    """A float32 transformers model of `arch` with tiny dimensions and random weights."""
    import torch
    import transformers as T

    common = dict(vocab_size=n_vocab, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "qwen3":
        # head size 32, independent of hidden_size / heads (16)
        config = T.Qwen3Config(**common, num_hidden_layers=2, head_dim=32, tie_word_embeddings=False,
                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
        cls, norm_center = T.Qwen3ForCausalLM, 1.0
    elif arch == "llama3":
        config = T.LlamaConfig(**common, num_hidden_layers=2, tie_word_embeddings=False, rope_parameters={
            "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
        cls, norm_center = T.LlamaForCausalLM, 1.0
    elif arch == "mistral":
        config = T.MistralConfig(**common, num_hidden_layers=2, sliding_window=8, tie_word_embeddings=False)
        cls, norm_center = T.MistralForCausalLM, 1.0
    elif arch == "phi3":
        config = T.Phi3Config(**common, num_hidden_layers=2, tie_word_embeddings=False, sliding_window=None,
                              rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
        cls, norm_center = T.Phi3ForCausalLM, 1.0
    elif arch == "gemma3":
        # 6 layers: 5 windowed (window 8, RoPE base 10000) then one global (base 1e6), llama.cpp's default pattern
        config = T.Gemma3TextConfig(**common, num_hidden_layers=6, head_dim=32, query_pre_attn_scalar=32,
                                    sliding_window=8, tie_word_embeddings=True)
        config.architectures = ["Gemma3ForCausalLM"]
        cls, norm_center = T.Gemma3ForCausalLM, 0.0
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = cls(config).eval()
    _init_random(model, seed, norm_center)
    return model


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    require_module("transformers")
    require_module("sentencepiece")
    return tmp_path_factory.mktemp("architectures")


@pytest.fixture(scope="module")
def spm_dir(work):
    return F.train_spm_tokenizer(work / "tokenizer")


@pytest.fixture(scope="module", params=["qwen3", "llama3", "mistral", "gemma3", "phi3"])
def arch_case(request, work, spm_dir):
    """(arch, torch model, {outtype: GGUF path}) for one architecture."""
    from camelid.cli.main import main as camelid_main

    arch = request.param
    model = random_model(arch, F.spm_piece_count(spm_dir))
    # general.name comes from the directory: llama.cpp gives a name with "phi3" Phi-3's special-token
    # rules, which need a <|endoftext|> token the test tokenizer lacks
    hf_dir = work / arch / "hf"
    model.save_pretrained(hf_dir, safe_serialization=True)
    F.copy_tokenizer(spm_dir, hf_dir)
    files = {}
    for outtype in ("f32", "q8_0"):
        out = work / f"{arch}-{outtype}.gguf"
        assert camelid_main(["convert", str(hf_dir), "-o", str(out), "--outtype", outtype, "--no-progress"]) == 0
        files[outtype] = out
    return arch, model, files


def _load(path):
    import camelid

    return camelid.load(str(path), n_ctx=256, show_progress=False)


def test_metadata_and_tensors(arch_case):
    from camelid.formats.gguf import open_gguf

    arch, model, files = arch_case
    f = open_gguf(str(files["f32"]))
    gguf_arch = {"llama3": "llama", "mistral": "llama"}.get(arch, arch)
    assert f.metadata["general.architecture"] == gguf_arch
    names = set(f.tensors)
    if arch in ("qwen3", "gemma3"):
        assert {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"} <= names
        assert f.metadata[f"{arch}.attention.key_length"] == 32
    if arch == "gemma3":
        assert {"blk.0.post_attention_norm.weight", "blk.0.post_ffw_norm.weight"} <= names
        assert f.metadata["gemma3.attention.sliding_window"] == 8
        hf_norm = model.model.layers[0].input_layernorm.weight.detach().numpy()
        assert np.allclose(f.tensors["blk.0.attn_norm.weight"].raw.view(np.float32), hf_norm + 1)  # Gemma's 1 + w
    if arch == "llama3":
        assert "rope_freqs.weight" in names
    if arch == "mistral":
        assert f.metadata["llama.attention.sliding_window"] == 8
    if arch == "phi3":
        assert {"blk.0.attn_qkv.weight", "blk.0.ffn_up.weight"} <= names and "blk.0.ffn_gate.weight" not in names


def test_unsupported_architecture_names_the_supported_ones():
    from camelid.errors import CamelidError
    from camelid.model.config import SUPPORTED_ARCHITECTURES, Config

    with pytest.raises(CamelidError) as err:
        Config.from_metadata({"general.architecture": "mamba"}, {}, "m.gguf")
    assert "'mamba'" in str(err.value)
    assert all(a in str(err.value) for a in ("llama", "qwen2", "qwen3", "gemma3", "phi3"))
    assert set(SUPPORTED_ARCHITECTURES) >= {"llama", "qwen2", "qwen3", "gemma3", "phi3"}


def test_llama_cpp_teacher_forced_and_greedy(arch_case):
    arch, _, files = arch_case
    if arch == "mistral":
        oracle.Llama(files["f32"], n_ctx=256).load()
        pytest.skip("llama.cpp loads the file but ignores llama.attention.sliding_window; transformers is the reference")
    for outtype, path in files.items():
        llm = oracle.Llama(path, n_ctx=256)
        m = _load(path)
        for i, text in enumerate(TEXTS):
            prompt = llm.tokenize(text)
            forced, _ = llm.greedy(prompt, N_FORCED)
            tokens = prompt + forced
            ref = llm.logits(tokens)[len(prompt) - 1: len(tokens) - 1]
            ours = m.forward(tokens, m.new_cache())[len(prompt) - 1: len(tokens) - 1]
            assert ours.shape == ref.shape == (N_FORCED, m.network.n_vocab)
            print(f"{arch} {outtype} prompt {i}: max logit diff {np.abs(ours - ref).max():.4g} (spread {ref.std():.3g}), "
                  f"top-1 {np.mean(ours.argmax(-1) == ref.argmax(-1)):.3f}")
            assert_logits_match(ours, ref, f"{arch} {outtype} prompt {i}, teacher-forced", tiny=True)
            ref_greedy, ref_logits = llm.greedy(prompt, N_GREEDY)
            assert_greedy_matches(camelid_greedy(m, prompt, N_GREEDY), ref_greedy, ref_logits, f"{arch} {outtype} prompt {i}")


def test_batched_decode_equals_each_sequence_alone(arch_case):
    """LlamaModel.decode of three sequences at different positions (past the sliding window) gives
    each one's logits bit for bit as forward() of that sequence alone, step after step."""
    arch, _, files = arch_case
    for outtype, path in files.items():
        m = _load(path)
        net = m.network
        prompts = [m.tokenize(text) for text in TEXTS]
        batched, alone = [m.new_cache() for _ in prompts], [m.new_cache() for _ in prompts]
        next_tokens = []
        for prompt, cache_b, cache_a in zip(prompts, batched, alone):
            net.forward(prompt, cache_b)
            next_tokens.append(int(net.forward(prompt, cache_a, last_only=True)[-1].argmax()))
        for step in range(6):
            logits = net.decode(next_tokens, batched)
            for i, cache in enumerate(alone):
                own = net.forward([next_tokens[i]], cache)[0]
                assert np.array_equal(logits[i].view(np.uint32), own.view(np.uint32)), f"{arch} {outtype} sequence {i} step {step}"
            assert [c.tokens for c in batched] == [c.tokens for c in alone]
            next_tokens = [int(row.argmax()) for row in logits]


@pytest.mark.parametrize("ftype_name, ftype", [("Q4_K_M", 15), ("Q5_0", 8)])
def test_quantize_writes_llama_quantizes_file(arch_case, tmp_path, ftype_name, ftype):
    """`camelid quantize` of the converted F32 file: byte for byte llama.cpp's llama_model_quantize (rows
    of 64 take Q4_K_M's fallbacks; the norms, fused tensors and rope_freqs keep their types)."""
    from camelid.cli.main import main as camelid_main

    arch, _, files = arch_case
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    assert camelid_main(["quantize", "--quiet", str(files["f32"]), str(ours), ftype_name]) == 0
    oracle.quantize(files["f32"], ref, ftype)
    assert ours.read_bytes() == ref.read_bytes(), f"{arch} {ftype_name}"


def test_f32_matches_transformers(arch_case, spm_dir):
    import sentencepiece as spm

    arch, model, files = arch_case
    sp = spm.SentencePieceProcessor(model_file=str(spm_dir / "tokenizer.model"))
    ids = [1] + sp.encode(" ".join(TEXTS) * 3)[:100]  # longer than gemma3's window of 8
    ref = F.hf_logits(model, ids)
    m = _load(files["f32"])
    ours = m.forward(ids, m.new_cache())
    assert np.abs(ref).max() > 3
    diff = float(np.abs(ours - ref).max())
    print(f"{arch} f32 vs transformers: max logit diff {diff:.4g}, top-1 {np.mean(ours.argmax(-1) == ref.argmax(-1)):.3f}")
    assert diff < HF_TOLERANCE[arch], f"{arch}: max logit difference {diff}"
    assert np.mean(ours.argmax(-1) == ref.argmax(-1)) >= 0.97


# --- the real Gemma 3 270M Q4_K_M ---------------------------------------------------------------

GEMMA_PROMPTS = ["The capital of France is", "请用中文介绍一下长城的历史。", "def fibonacci(n):\n"]


@pytest.fixture(scope="module")
def gemma():
    from model_files import gemma_path

    path = gemma_path()
    return oracle.Llama(path, n_ctx=512), _load(path)


@pytest.mark.parametrize("text", GEMMA_PROMPTS)
def test_gemma3_270m_greedy_matches_llama_cpp(gemma, text):
    llm, m = gemma
    prompt = llm.tokenize(text)
    assert m.tokenize(text, add_special=True, parse_special=True) == prompt
    ref, ref_logits = llm.greedy(prompt, 64)
    ours = camelid_greedy(m, prompt, 64)
    print(f"gemma3 270M {text!r}: {sum(a == b for a, b in zip(ours, ref))}/64 tokens identical, first difference at "
          f"{next((i for i, (a, b) in enumerate(zip(ours, ref)) if a != b), None)}")
    assert_greedy_matches(ours, ref, ref_logits, f"gemma3 270M {text!r}: ours {m.detokenize(ours)!r} vs llama.cpp {m.detokenize(ref)!r}")
