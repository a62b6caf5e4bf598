"""`camelid merge-lora` against PEFT itself, a NumPy merge and HF transformers, on Chinese-LLaMA-Alpaca-shaped inputs.

The base is a tiny random LLaMA saved by transformers (tests/hf_fixtures.py) with a SentencePiece
tokenizer trained here on English text only (Chinese falls back to bytes). The adapters are made by
PEFT (`get_peft_model` on the resized transformers model, lora_B randomized so the update is not
zero, `save_pretrained`), with a tokenizer that appends Chinese pieces to the base's, as
Chinese-LLaMA did, and the resized embed_tokens/lm_head in `modules_to_save`. Oracles: PEFT's `merge_and_unload`, a float64 NumPy merge
written from the LoRA definition, transformers' logits on the PEFT-merged model, and the
sentencepiece library's tokenization.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import peft
import sentencepiece as spm
import torch
import transformers
from safetensors.numpy import load_file, save_file

import camelid
import hf_fixtures
from camelid.generate import generate_step, prefill
from camelid.sampling import Sampler, SamplingParams
from camelid.errors import CamelidError
from camelid.formats.safetensors_writer import save_checkpoint
from camelid.tools.merge_lora import merge_lora, open_merged  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CHINESE_WORDS = ["中文", "模型", "北京", "大学", "天气", "人工", "智能", "世界", "你好", "羊驼"]


# ----------------------------------------------------------------------------------------------
# Fixtures: base checkpoint, tokenizers, PEFT adapters
# ----------------------------------------------------------------------------------------------


def _piece(text: str, score: float) -> bytes:
    # ModelProto field 1 (pieces): SentencePiece {1: piece string, 2: score float, 3: type enum NORMAL=1}
    raw = text.encode("utf-8")
    msg = b"\x0a" + _varint(len(raw)) + raw + b"\x15" + struct.pack("<f", score) + b"\x18\x01"
    return b"\x0a" + _varint(len(msg)) + msg


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def extend_tokenizer(base: Path, out: Path, pieces: list[str]) -> None:
    """Append pieces to a SentencePiece model (as Chinese-LLaMA's merge_tokenizers did): base ids keep their meaning.

    Appending serialized `pieces` fields to a ModelProto appends to its repeated field.
    """
    sp = spm.SentencePieceProcessor(model_file=str(base))
    existing = {sp.id_to_piece(i) for i in range(sp.get_piece_size())}
    new = [p for p in pieces if p not in existing]
    out.write_bytes(base.read_bytes() + b"".join(_piece(p, -1.0 - 0.01 * i) for i, p in enumerate(new)))


def new_lora_model(model, r: int, alpha: int, seed: int, **config):
    """PEFT LoRA on all LLaMA projections plus full embed_tokens/lm_head, lora_B random (PEFT starts it at zero)."""
    lora = peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=TARGETS,
                                                      modules_to_save=["embed_tokens", "lm_head"], **config))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)  # differ from the base's rows too
    return lora


@pytest.fixture(scope="module")
def zh(tmp_path_factory):
    """Base (V0 tokens, English-only tokenizer), LLaMA-Plus-like adapter (V1 = V0 + Chinese pieces), Alpaca-Plus-like (V1 + [PAD])."""
    root = tmp_path_factory.mktemp("zh")
    base, plus, alpaca = root / "base", root / "llama-plus-lora", root / "alpaca-plus-lora"
    base_tok = hf_fixtures.train_spm_tokenizer(root / "base-tokenizer", vocab_size=400, text=hf_fixtures.CORPUS_EN * 3)
    v0 = hf_fixtures.spm_piece_count(base_tok)
    chars = sorted(set(c for c in hf_fixtures.CORPUS_ZH if "\u4e00" <= c <= "\u9fff"))
    for d in (plus, alpaca):
        d.mkdir()
        hf_fixtures.copy_tokenizer(base_tok, d)
        extend_tokenizer(base_tok / "tokenizer.model", d / "tokenizer.model", chars + CHINESE_WORDS)
    v1 = hf_fixtures.spm_piece_count(plus)
    (alpaca / "added_tokens.json").write_text(json.dumps({"[PAD]": v1}))

    model = hf_fixtures.make_hf_checkpoint(base, base_tok)
    model.resize_token_embeddings(v1, mean_resizing=False)
    model = new_lora_model(model, r=4, alpha=16, seed=1)
    model.save_pretrained(plus)
    merged_plus = model.merge_and_unload()

    merged_plus.resize_token_embeddings(v1 + 1, mean_resizing=False)
    model = new_lora_model(merged_plus, r=8, alpha=8, seed=2, use_rslora=True)
    model.save_pretrained(alpaca)
    merged_both = model.merge_and_unload().eval()
    # merge_and_unload works in place, so take the one-adapter result again from the saved files
    one = peft.PeftModel.from_pretrained(_resized_base(base, v1), plus).merge_and_unload().eval()
    return dict(root=root, base=base, base_tok=base_tok, plus=plus, alpaca=alpaca, v0=v0, v1=v1,
                peft_plus=one, peft_both=merged_both)


def _resized_base(base: Path, n_vocab: int):
    model = transformers.LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.resize_token_embeddings(n_vocab, mean_resizing=False)
    return model


def numpy_merge(base: Path, adapters: list[Path]) -> dict[str, np.ndarray]:
    """The merge written from the LoRA definition: W += alpha/r (or alpha/sqrt(r)) * B @ A; full tensors replace W."""
    weights = {k: v.astype(np.float64) for k, v in load_file(base / "model.safetensors").items()}
    for d in adapters:
        cfg = json.loads((d / "adapter_config.json").read_text())
        scale = cfg["lora_alpha"] / (np.sqrt(cfg["r"]) if cfg.get("use_rslora") else cfg["r"])
        lora = {k.removeprefix("base_model.model."): v.astype(np.float64) for k, v in load_file(d / "adapter_model.safetensors").items()}
        for key, value in lora.items():
            if ".lora_" not in key:
                weights[key] = value
        for key, a in lora.items():
            if key.endswith(".lora_A.weight"):
                delta = lora[key.replace("lora_A", "lora_B")] @ a
                weights[key.replace(".lora_A", "")] += (delta.T if cfg.get("fan_in_fan_out") else delta) * scale
    return weights


def tensors_of(out_dir: Path) -> dict[str, np.ndarray]:
    files = sorted(out_dir.glob("*.safetensors"))
    return {k: v for f in files for k, v in load_file(f).items()}


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], rel=2e-6):
    """Same tensor names and shapes; values within rel * (largest |value| of the tensor)."""
    assert sorted(got) == sorted(want)
    for name in want:
        g, w = np.asarray(got[name], np.float64), np.asarray(want[name], np.float64)
        assert g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=0, atol=rel * np.abs(w).max(), err_msg=name)


def peft_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# The merged tensors
# ----------------------------------------------------------------------------------------------


def test_merged_tensors_equal_numpy_and_peft(zh, tmp_path):
    out = tmp_path / "merged"
    merge_lora(zh["base"], [zh["plus"]], out, outtype="f32", fmt="safetensors", progress=False)
    got = tensors_of(out)
    assert got["model.embed_tokens.weight"].shape == (zh["v1"], 64)
    assert_close(got, numpy_merge(zh["base"], [zh["plus"]]))
    assert_close(got, peft_state(zh["peft_plus"]))
    base = load_file(zh["base"] / "model.safetensors")
    q = "model.layers.1.self_attn.q_proj.weight"
    assert np.abs(got[q] - base[q]).max() > 0.1  # the LoRA update is far above the tolerance


def test_two_adapters_apply_in_order(zh, tmp_path):
    out = tmp_path / "merged"
    merge_lora(zh["base"], [zh["plus"], zh["alpaca"]], out, outtype="f32", fmt="safetensors", progress=False)
    got = tensors_of(out)
    assert got["lm_head.weight"].shape == (zh["v1"] + 1, 64)
    assert_close(got, numpy_merge(zh["base"], [zh["plus"], zh["alpaca"]]))
    assert_close(got, peft_state(zh["peft_both"]))
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == zh["v1"] + 1
    assert json.loads((out / "added_tokens.json").read_text()) == {"[PAD]": zh["v1"]}


def test_old_bin_adapter_with_default_names(zh, tmp_path):
    """Chinese-LLaMA-Alpaca shipped adapter_model.bin (torch pickles); some files carry PEFT's `.default` names."""
    old = tmp_path / "old-lora"
    shutil.copytree(zh["plus"], old)
    state = {}
    for key, value in load_file(old / "adapter_model.safetensors").items():
        key = key.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
        key = key.replace("embed_tokens.weight", "embed_tokens.modules_to_save.default.weight")
        state[key] = torch.from_numpy(value).half()
    (old / "adapter_model.safetensors").unlink()
    torch.save(state, old / "adapter_model.bin")
    out = tmp_path / "merged"
    merge_lora(zh["base"], [old], out, outtype="f32", fmt="safetensors", progress=False)
    want = numpy_merge(zh["base"], [zh["plus"]])
    got = tensors_of(out)
    assert_close(got, want, rel=2e-3)  # the adapter was rounded to float16
    assert np.abs(got["model.embed_tokens.weight"] - want["model.embed_tokens.weight"]).max() > 0  # came from the f16 copy


def test_meta_layout_base(zh, tmp_path):
    """A base in Meta's consolidated.*.pth layout (2 shards, interleaved q/k) merges to the same tensors."""
    model = transformers.LlamaForCausalLM.from_pretrained(zh["base"], dtype=torch.float32)
    meta = hf_fixtures.write_meta_checkpoint(model, tmp_path / "meta-7B", zh["base_tok"], n_shards=2)
    merge_lora(meta, [zh["plus"]], tmp_path / "from-meta", outtype="f32", fmt="safetensors", progress=False)
    assert_close(tensors_of(tmp_path / "from-meta"), numpy_merge(zh["base"], [zh["plus"]]))


def test_lora_on_embeddings_and_lm_head(zh, tmp_path):
    """A LoRA on embed_tokens is stored as lora_embedding_A (r, n_vocab) / lora_embedding_B (n_embd, r); PEFT merges (B@A).T."""
    model = transformers.LlamaForCausalLM.from_pretrained(zh["base"], dtype=torch.float32)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=6, target_modules=["embed_tokens", "lm_head", "up_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name or "lora_embedding" in name:  # PEFT starts lora_B and lora_embedding_A at zero
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(4)) * 0.3)
    lora.save_pretrained(tmp_path / "emb-lora")
    want = peft_state(lora.merge_and_unload())
    out = tmp_path / "merged"
    merge_lora(zh["base"], [tmp_path / "emb-lora"], out, outtype="f32", fmt="safetensors", progress=False)
    got = tensors_of(out)
    assert_close(got, want)
    base = load_file(zh["base"] / "model.safetensors")
    assert not np.allclose(got["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_fan_in_fan_out(zh, tmp_path):
    """fan_in_fan_out (GPT-2's Conv1D layout) merges transpose(B @ A): A is (r, n_out), B is (n_in, r)."""
    d = tmp_path / "fifo-lora"
    d.mkdir()
    rng = np.random.default_rng(3)
    r, tensors = 2, {}
    for name, (n_out, n_in) in {"self_attn.v_proj": (32, 64), "mlp.down_proj": (64, 128)}.items():
        tensors[f"base_model.model.model.layers.0.{name}.lora_A.weight"] = rng.standard_normal((r, n_out)).astype(np.float32)
        tensors[f"base_model.model.model.layers.0.{name}.lora_B.weight"] = rng.standard_normal((n_in, r)).astype(np.float32)
    save_file(tensors, d / "adapter_model.safetensors")
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 3, "fan_in_fan_out": True}))
    out = tmp_path / "merged"
    merge_lora(zh["base"], [d], out, outtype="f32", fmt="safetensors", progress=False)
    got = tensors_of(out)
    assert_close(got, numpy_merge(zh["base"], [d]))
    base = load_file(zh["base"] / "model.safetensors")
    v = "model.layers.0.self_attn.v_proj.weight"
    assert not np.allclose(got[v], base[v])


# ----------------------------------------------------------------------------------------------
# The merged model runs: GGUF through camelid, safetensors through transformers
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def merged_gguf(zh):
    out = zh["root"] / "zh-plus-f32.gguf"
    merge_lora(zh["base"], [zh["plus"]], out, outtype="f32", progress=False)
    return out


def test_gguf_logits_match_transformers(zh, merged_gguf):
    model = camelid.load(merged_gguf, n_ctx=64, show_progress=False)
    tokens = model.tokenize("The early bird 中文模型看书。", add_special=True)
    assert max(tokens) >= zh["v0"]  # uses the new Chinese pieces
    got = model.forward(tokens, model.new_cache())
    with torch.no_grad():
        want = zh["peft_plus"](torch.tensor([tokens])).logits[0].numpy()
        base = transformers.LlamaForCausalLM.from_pretrained(zh["base"], dtype=torch.float32)
        ascii_tokens = [t for t in tokens if t < zh["v0"]]
        unmerged = base(torch.tensor([ascii_tokens])).logits[0].numpy()
    rms = np.sqrt(np.mean(want**2))
    # f16 KV cache noise is ~1e-3 of the logits' scale; the LoRA moves them by the order of the logits themselves
    assert np.abs(got - want).max() < 1e-2 * rms
    merged_ascii = zh["peft_plus"](torch.tensor([ascii_tokens])).logits[0].detach().numpy()
    assert np.abs(merged_ascii[:, : zh["v0"]] - unmerged).max() > 0.5 * rms


def test_gguf_tokenizes_chinese_into_new_pieces(zh, merged_gguf):
    tok = camelid.load_tokenizer(merged_gguf)
    sp = spm.SentencePieceProcessor(model_file=str(zh["plus"] / "tokenizer.model"))
    base_sp = spm.SentencePieceProcessor(model_file=str(zh["base"] / "tokenizer.model"))
    for text in ("你好世界", "我们今天去北京大学看书", "The weather 天气很好 today."):
        ids = tok.encode(text, add_special=False)
        assert ids == sp.encode(text)
        assert len(ids) < len(base_sp.encode(text))  # bytes before, pieces now
        assert tok.decode(ids) == text


def test_gguf_generates_as_transformers(zh, merged_gguf):
    model = camelid.load(merged_gguf, n_ctx=64, show_progress=False)
    prompt = model.tokenize("人工智能", add_special=True)
    cache = model.new_cache()
    logits, _ = prefill(model.network, cache, prompt)
    steps = generate_step(model.network, cache, logits, Sampler(SamplingParams(temperature=0)))
    got = [next(steps) for _ in range(6)]
    with torch.no_grad():
        out = zh["peft_plus"].generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert got == out[0, len(prompt):].tolist()


def test_safetensors_output_loads_in_transformers(zh, tmp_path):
    merged = open_merged(zh["base"], [zh["plus"], zh["alpaca"]])
    out = tmp_path / "sharded"
    save_checkpoint(merged, out, "f32", max_shard_bytes=200_000, progress=False)
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*.safetensors"))) > 1
    model = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens = torch.tensor([[1, 5, zh["v1"] - 3, zh["v1"]]])
    with torch.no_grad():
        np.testing.assert_allclose(model(tokens).logits.numpy(), zh["peft_both"](tokens).logits.numpy(), atol=1e-4, rtol=0)


def test_bf16_output_rounds_like_torch(zh, tmp_path):
    out = tmp_path / "bf16"
    merge_lora(zh["base"], [zh["plus"]], out, outtype="bf16", fmt="safetensors", progress=False)
    merge_lora(zh["base"], [zh["plus"]], tmp_path / "f32", outtype="f32", fmt="safetensors", progress=False)
    model = transformers.LlamaForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    exact = tensors_of(tmp_path / "f32")
    peft_merged = zh["peft_plus"].state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, torch.from_numpy(exact[name]).to(torch.bfloat16)), name
        torch.testing.assert_close(value.float(), peft_merged[name], rtol=2**-8, atol=0)


def test_cli_quantizes_in_the_same_pass(zh, tmp_path):
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import dequantize

    out = tmp_path / "zh-q8_0.gguf"
    result = subprocess.run([sys.executable, "-m", "camelid", "merge-lora", "--base", str(zh["base"]), "--lora", str(zh["plus"]),
                             "--lora", str(zh["alpaca"]), "-o", str(out), "--outtype", "q8_0", "--no-progress"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    reader = GGUFReader(out)
    tensors = {t.name: t for t in reader.tensors}
    emb = tensors["token_embd.weight"]
    assert emb.tensor_type == GGMLQuantizationType.Q8_0
    want = numpy_merge(zh["base"], [zh["plus"], zh["alpaca"]])["model.embed_tokens.weight"]
    got = dequantize(emb.data, emb.tensor_type).reshape(want.shape)
    assert np.abs(got - want).max() < np.abs(want).max() / 100
    assert [f.name for f in reader.fields.values() if f.name == "tokenizer.ggml.tokens"]
    assert os.listdir(tmp_path) == [out.name]


# ----------------------------------------------------------------------------------------------
# Bad input: one clear line, exit status 1, no output left behind
# ----------------------------------------------------------------------------------------------


def cli_error(*args, out: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "camelid", "merge-lora", *args, "-o", str(out), "--no-progress"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("camelid: error: "), result.stderr
    assert os.listdir(out.parent) == [], os.listdir(out.parent)
    return lines[0]


def merge_error(base, *loras, out: Path) -> str:
    """The one-line CamelidError of a merge that must fail (in-process: faster than the CLI); nothing left in out's directory."""
    with pytest.raises(CamelidError) as info:
        merge_lora(base, list(loras), out, progress=False)
    assert os.listdir(out.parent) == [], os.listdir(out.parent)
    assert "\n" not in str(info.value)
    return str(info.value)


def handmade_adapter(d: Path, tensors: dict[str, np.ndarray], **config) -> Path:
    d.mkdir()
    save_file(tensors, d / "adapter_model.safetensors")
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, **config}))
    return d


def pair(module: str, n_out: int, n_in: int, r: int = 2) -> dict[str, np.ndarray]:
    p = f"base_model.model.{module}"
    return {f"{p}.lora_A.weight": np.ones((r, n_in), np.float32), f"{p}.lora_B.weight": np.ones((n_out, r), np.float32)}


@pytest.fixture
def out(tmp_path):
    (tmp_path / "out").mkdir()
    return tmp_path / "out" / "merged.gguf"


def test_lora_for_another_base(zh, tmp_path, out):
    lora = handmade_adapter(tmp_path / "lora13b", pair("model.layers.0.self_attn.q_proj", 80, 80))
    msg = cli_error("--base", str(zh["base"]), "--lora", str(lora), out=out)
    assert "model.layers.0.self_attn.q_proj.weight" in msg and "(80, 80)" in msg and "(64, 64)" in msg


def test_unknown_target_module(zh, tmp_path, out):
    lora = handmade_adapter(tmp_path / "bloom", pair("model.layers.0.self_attn.query_key_value", 64, 64))
    msg = merge_error(zh["base"], lora, out=out)
    assert "query_key_value" in msg and "does not have" in msg
    deep = handmade_adapter(tmp_path / "deep", pair("model.layers.7.mlp.up_proj", 128, 64))
    assert "model.layers.7.mlp.up_proj" in merge_error(zh["base"], deep, out=out)


def test_rank_zero_and_rank_mismatch(zh, tmp_path, out):
    lora = handmade_adapter(tmp_path / "r0", pair("model.layers.0.self_attn.q_proj", 64, 64), r=0)
    assert "r=0" in merge_error(zh["base"], lora, out=out)
    lora = handmade_adapter(tmp_path / "r4", pair("model.layers.0.self_attn.q_proj", 64, 64), r=4)
    assert "r=4" in merge_error(zh["base"], lora, out=out)


def test_vocab_mismatch_between_embeddings_and_tokenizer(zh, tmp_path, out):
    wrong = tmp_path / "alpaca-with-llama-tokenizer"
    shutil.copytree(zh["alpaca"], wrong)
    (wrong / "added_tokens.json").unlink()  # Chinese-LLaMA's tokenizer (V1) with Chinese-Alpaca's weights (V1 + 1)
    msg = merge_error(zh["base"], zh["plus"], wrong, out=out)
    assert f"{zh['v1'] + 1} rows" in msg and f"{zh['v1']} tokens" in msg
    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(zh["plus"], no_tok)
    (no_tok / "tokenizer.model").unlink()
    assert "no adapter ships a tokenizer" in merge_error(zh["base"], no_tok, out=out)
    zh_tok_only = handmade_adapter(tmp_path / "zh-tokenizer-only", pair("model.layers.0.self_attn.q_proj", 64, 64))
    shutil.copy(zh["plus"] / "tokenizer.model", zh_tok_only)  # Chinese tokenizer, LLaMA's 400-row embeddings
    msg = merge_error(zh["base"], zh_tok_only, out=out)
    assert f"{zh['v1']} tokens" in msg and f"only {zh['v0']} embedding rows" in msg
    no_head = tmp_path / "embed-without-lm-head"
    shutil.copytree(zh["plus"], no_head)
    weights = load_file(no_head / "adapter_model.safetensors")
    del weights["base_model.model.lm_head.weight"]
    save_file(weights, no_head / "adapter_model.safetensors")
    assert f"lm_head has {zh['v0']}" in merge_error(zh["base"], no_head, out=out)


def test_missing_adapter_files(zh, tmp_path, out):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "adapter_config.json" in cli_error("--base", str(zh["base"]), "--lora", str(empty), out=out)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(zh["plus"] / "adapter_config.json", no_weights)
    assert "adapter_model" in merge_error(zh["base"], no_weights, out=out)
    assert "not found" in merge_error(zh["base"], tmp_path / "nope", out=out)
    half = handmade_adapter(tmp_path / "half", {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.ones((2, 64), np.float32)})
    assert "lora_B" in merge_error(zh["base"], half, out=out)


def test_errors_through_the_api_leave_nothing(zh, tmp_path):
    lora = handmade_adapter(tmp_path / "bad", pair("model.layers.1.mlp.down_proj", 64, 64))
    (tmp_path / "out").mkdir()
    with pytest.raises(CamelidError, match="mlp.down_proj.weight"):
        merge_lora(zh["base"], [lora], tmp_path / "out" / "m", fmt="safetensors", progress=False)
    with pytest.raises(CamelidError, match="q8_0"):
        merge_lora(zh["base"], [zh["plus"]], tmp_path / "out" / "m", outtype="q8_0", fmt="safetensors", progress=False)
    assert os.listdir(tmp_path / "out") == []


def test_failure_while_writing_leaves_no_directory(zh, tmp_path):
    merged = open_merged(zh["base"], [zh["plus"]])
    names = merged.tensors.names()

    class FailingTensors(type(merged.tensors)):
        def load(self, name):
            if name == names[5]:
                raise CamelidError("disk on fire")
            return super().load(name)

    merged.tensors.__class__ = FailingTensors
    (tmp_path / "out").mkdir()
    with pytest.raises(CamelidError, match="disk on fire"):
        save_checkpoint(merged, tmp_path / "out" / "merged", "f16", max_shard_bytes=10_000, progress=False)
    assert os.listdir(tmp_path / "out") == []
    with pytest.raises(CamelidError, match="already exists"):
        save_checkpoint(merged, tmp_path / "out", "f16", progress=False)
