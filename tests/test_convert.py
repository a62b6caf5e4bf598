"""`camelid convert`: tiny HF / Meta checkpoints made in the test, checked against transformers, sentencepiece,
the `tokenizers` library and llama.cpp (llama-cpp-python)."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch

import hf_fixtures as F
import oracle
from oracle.mode import assert_greedy_matches
from camelid.cli.main import main as camelid_main
from camelid.formats.gguf import open_gguf

TEXTS = [
    "羊驼是一种生活在南美洲的动物。Hello llama, how are you? 12345",
    "  你好，世界！The quick brown fox 龘 jumps.\n\nNew paragraph: 人工智能",
    "Hello",
]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("convert")


@pytest.fixture(scope="module")
def spm_dir(work):
    return F.train_spm_tokenizer(work / "tokenizer")


@pytest.fixture(scope="module")
def hf_model(work, spm_dir):
    """(torch model, HF safetensors checkpoint dir)."""
    model = F.make_hf_checkpoint(work / "hf", spm_dir)
    return model, work / "hf"


def convert(src, out, outtype="f16"):
    rc = camelid_main(["convert", str(src), "-o", str(out), "--outtype", outtype, "--no-progress"])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def gguf_files(work, hf_model):
    _, hf_dir = hf_model
    return {t: convert(hf_dir, work / f"model-{t}.gguf", t) for t in ("f32", "f16", "q8_0")}


@pytest.fixture(scope="module")
def prompt_ids(spm_dir):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_dir / "tokenizer.model"))
    return [1] + sp.encode(TEXTS[0] + " " + TEXTS[1])


def _load(path):
    import camelid

    return camelid.load(path, show_progress=False)


@pytest.mark.parametrize("outtype,tolerance", [("f32", 0.05), ("f16", 0.1)])
def test_logits_match_transformers(gguf_files, hf_model, prompt_ids, outtype, tolerance):
    model, _ = hf_model
    ref = F.hf_logits(model, prompt_ids)  # (n_tokens, n_vocab), float64
    m = _load(gguf_files[outtype])
    ours = m.forward(prompt_ids, m.new_cache())
    assert ours.shape == ref.shape
    assert np.abs(ref).max() > 5  # the random model's logits are far from uniform
    diff = float(np.abs(ours - ref).max())
    assert diff < tolerance, f"max logit difference {diff}"
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


def test_q8_0_top1_agrees_with_transformers(gguf_files, hf_model, prompt_ids):
    model, _ = hf_model
    ref = F.hf_logits(model, prompt_ids)
    m = _load(gguf_files["q8_0"])
    ours = m.forward(prompt_ids, m.new_cache())
    agreement = float(np.mean(ours.argmax(-1) == ref.argmax(-1)))
    diff = float(np.abs(ours - ref).max())
    print(f"q8_0 vs transformers: top-1 agreement {agreement:.3f}, max logit difference {diff:.3f}")
    assert agreement >= 0.85 and diff < 1.0


@pytest.mark.parametrize("text", TEXTS)
def test_tokenization_matches_sentencepiece(gguf_files, spm_dir, text):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_dir / "tokenizer.model"))
    m = _load(gguf_files["f16"])
    ids = m.tokenize(text)
    assert ids == [1] + sp.encode(text)
    assert any(sp.id_to_piece(i).startswith("<0x") for i in ids[1:]) or text == "Hello" or "龘" not in text


def test_llama_cpp_loads_and_agrees(gguf_files):
    for outtype, path in gguf_files.items():
        llm = oracle.Llama(path, n_ctx=256)
        m = _load(path)
        prompt = TEXTS[0]
        ids = llm.tokenize(prompt)
        assert ids == m.tokenize(prompt)
        ref, ref_logits = llm.greedy(ids, 16)
        cache = m.new_cache()
        logits = m.forward(ids, cache, last_only=True)[-1]
        ours = []
        for _ in range(16):
            token = int(np.argmax(logits))
            ours.append(token)
            logits = m.forward([token], cache, last_only=True)[-1]
        assert_greedy_matches(ours, ref, ref_logits, outtype)


def test_metadata_llama_cpp_expects(gguf_files, hf_model):
    model, _ = hf_model
    f = open_gguf(gguf_files["f16"])
    md, cfg = f.metadata, model.config
    assert md["general.architecture"] == "llama"
    assert md["llama.embedding_length"] == cfg.hidden_size
    assert md["llama.block_count"] == cfg.num_hidden_layers
    assert md["llama.feed_forward_length"] == cfg.intermediate_size
    assert md["llama.attention.head_count"] == cfg.num_attention_heads
    assert md["llama.attention.head_count_kv"] == cfg.num_key_value_heads
    assert md["llama.rope.dimension_count"] == cfg.hidden_size // cfg.num_attention_heads
    assert md["llama.context_length"] == cfg.max_position_embeddings
    assert md["general.file_type"] == 1
    assert md["tokenizer.ggml.model"] == "llama"
    assert md["tokenizer.chat_template"] == F.CHAT_TEMPLATE
    types = md["tokenizer.ggml.token_type"]
    assert types[0] == 2 and types[1] == 3 and types[2] == 3 and types[3:259] == [6] * 256  # unk, bos, eos, bytes
    assert f.tensors["blk.0.attn_norm.weight"].ggml_type.name == "F32"
    assert f.tensors["blk.0.attn_q.weight"].ggml_type.name == "F16"


def test_pytorch_bin_and_meta_layout_give_the_same_file(work, hf_model, spm_dir, gguf_files):
    model, _ = hf_model
    F.save_pytorch_bin(model, work / "bin", spm_dir)
    F.write_meta_checkpoint(model, work / "meta1", spm_dir, n_shards=1)
    F.write_meta_checkpoint(model, work / "meta2", spm_dir, n_shards=2)
    want = open_gguf(gguf_files["f16"])
    for name in ("bin", "meta1", "meta2"):
        got = open_gguf(convert(work / name, work / f"{name}.gguf"))
        assert set(got.tensors) == set(want.tensors), name
        for t, info in want.tensors.items():
            assert np.array_equal(got.tensors[t].raw, info.raw), (name, t)
        assert got.metadata["tokenizer.ggml.tokens"] == want.metadata["tokenizer.ggml.tokens"]


def test_bf16_checkpoint_and_bf16_outtype(work, hf_model, spm_dir):
    model, hf_dir = hf_model
    bf16 = work / "hf-bf16"
    shutil.copytree(hf_dir, bf16)
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(bf16, safe_serialization=True)
    got = open_gguf(convert(bf16, work / "from-bf16.gguf", "bf16"))
    emb = got.tensors["token_embd.weight"]
    assert emb.ggml_type.name == "BF16"
    want = model.model.embed_tokens.weight.detach().to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(emb.raw.view(np.uint16).reshape(want.shape), want)
    f32 = open_gguf(convert(bf16, work / "from-bf16-f32.gguf", "f32"))
    np.testing.assert_array_equal(f32.tensors["output_norm.weight"].raw.view(np.float32).reshape(-1),
                                  model.model.norm.weight.detach().to(torch.bfloat16).float().numpy())


def test_tied_embeddings_and_padded_vocab(work, spm_dir):
    n_pieces = F.spm_piece_count(spm_dir)
    model = F.make_hf_checkpoint(work / "tied", spm_dir, n_vocab=n_pieces + 12, tie=True, seed=3)
    out = convert(work / "tied", work / "tied.gguf", "f32")
    f = open_gguf(out)
    assert "output.weight" not in f.tensors
    tokens = f.metadata["tokenizer.ggml.tokens"]
    assert len(tokens) == n_pieces + 12 and tokens[-1] == f"[PAD{n_pieces + 11}]"
    assert f.metadata["tokenizer.ggml.token_type"][-1] == 5  # UNUSED
    ids = [1, 100, 200, 300, 400]
    m = _load(out)
    ours = m.forward(ids, m.new_cache())
    ref = F.hf_logits(model, ids)
    assert np.abs(ours - ref).max() < 0.05
    oracle.Llama(out, n_ctx=64).load()


def test_sharded_safetensors_with_index(work, hf_model, gguf_files):
    model, hf_dir = hf_model
    sharded = work / "sharded"
    shutil.copytree(hf_dir, sharded)
    (sharded / "model.safetensors").unlink()
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="200KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    got = open_gguf(convert(sharded, work / "sharded.gguf", "f16"))
    want = open_gguf(gguf_files["f16"])
    for t, info in want.tensors.items():
        assert np.array_equal(got.tensors[t].raw, info.raw), t


@pytest.mark.parametrize("style", ["smollm", "llama3"])
def test_bpe_tokenizer_json(work, style):
    from tokenizers import Tokenizer

    tok_dir = F.train_bpe_tokenizer(work / f"bpe-{style}", style)
    n_vocab = F.bpe_token_count(tok_dir)
    F.make_hf_checkpoint(work / f"hf-{style}", tok_dir, n_vocab=n_vocab)
    out = convert(work / f"hf-{style}", work / f"{style}.gguf", "f16")
    md = open_gguf(out).metadata
    assert md["tokenizer.ggml.model"] == "gpt2"
    assert md["tokenizer.ggml.pre"] == {"smollm": "smollm", "llama3": "llama-bpe"}[style]
    ref_tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    m = _load(out)
    vocab = oracle.Llama(out, n_ctx=64, vocab_only=True)
    for text in TEXTS:
        want = ref_tok.encode(text).ids  # the LLaMA-3 post-processor adds <|begin_of_text|> itself
        assert m.tokenize(text) == want, text
        assert vocab.tokenize(text, add_bos=style == "llama3") == want


# --- bad input: one clear line, exit 1, and no output file (not even a partial one) ---------------

def _variant(work, hf_dir, name, mutate):
    d = work / f"bad-{name}"
    if not d.exists():
        shutil.copytree(hf_dir, d)
        mutate(d)
    return d


def _edit_config(**changes):
    def mutate(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(changes)
        (d / "config.json").write_text(json.dumps(cfg))
    return mutate


def _truncate(d):
    p = d / "model.safetensors"
    p.write_bytes(p.read_bytes()[:-1000])


def _shard_missing(d):
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                        "lm_head.weight": "model-00002-of-00002.safetensors"}}))
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")


def _meta_shard_missing(d):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(d)
    for f in list(d.iterdir()):
        f.unlink()
    F.write_meta_checkpoint(model, d, F.train_spm_tokenizer(d / "tok"), n_shards=3)
    (d / "consolidated.01.pth").unlink()


BAD_INPUTS = {
    "unknown-architecture": (_edit_config(architectures=["GPT2LMHeadModel"]), "f16", "GPT2LMHeadModel"),
    "mismatched-shapes": (_edit_config(intermediate_size=256), "f16", "shape"),
    "missing-layer": (_edit_config(num_hidden_layers=3), "f16", "lacks tensor model.layers.2"),
    "extra-layer": (_edit_config(num_hidden_layers=1), "f16", "model.layers.1."),
    "meta-shard-missing": (_meta_shard_missing, "f16", "consolidated.01.pth is missing"),
    "truncated-safetensors": (_truncate, "f16", "truncated"),
    "missing-shard": (_shard_missing, "f16", "model-00002-of-00002.safetensors, which is missing"),
    "no-config": (lambda d: (d / "config.json").unlink(), "f16", "neither config.json"),
    "no-tokenizer": (lambda d: (d / "tokenizer.model").unlink(), "f16", "no tokenizer"),
    "other-tokenizer": (lambda d: F.train_spm_tokenizer(d, vocab_size=600), "f16", "belongs to another model"),
    "unknown-outtype": (lambda d: None, "q3_k", "unknown --outtype"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_a_clear_error_without_output(work, hf_model, capsys, case):
    mutate, outtype, message = BAD_INPUTS[case]
    src = _variant(work, hf_model[1], case, mutate)
    out_dir = work / f"out-{case}"
    out_dir.mkdir()
    rc = camelid_main(["convert", str(src), "-o", str(out_dir / "out.gguf"), "--outtype", outtype, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("camelid: error:") and message in last and "Traceback" not in err, err
    assert list(out_dir.iterdir()) == []


def test_failure_while_writing_leaves_no_file(work, hf_model):
    from camelid.errors import CamelidError
    from camelid.formats.checkpoint import open_checkpoint
    from camelid.formats.hf import Checkpoint, TensorSource
    from camelid.tools.convert import convert_checkpoint

    ckpt = open_checkpoint(hf_model[1])

    class FailsHalfway(TensorSource):
        loads = 0

        def names(self):
            return ckpt.tensors.names()

        def shape(self, name):
            return ckpt.tensors.shape(name)

        def load(self, name):
            FailsHalfway.loads += 1
            if FailsHalfway.loads == 8:
                raise CamelidError("disk went away")
            return ckpt.tensors.load(name)

    out_dir = work / "out-halfway"
    out_dir.mkdir()
    with pytest.raises(CamelidError, match="disk went away"):
        convert_checkpoint(Checkpoint(ckpt.config, FailsHalfway(), ckpt.tokenizer_dir, ckpt.source),
                           out_dir / "out.gguf", "q8_0", progress=False)
    assert FailsHalfway.loads == 8
    assert list(out_dir.iterdir()) == []


def test_cli_refuses_malicious_checkpoint(work, hf_model):
    import os
    import subprocess
    import sys

    src = work / "evil"
    src.mkdir()
    shutil.copy(hf_model[1] / "config.json", src)
    shutil.copy(hf_model[1] / "tokenizer.model", src)
    marker = work / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2), "x": Evil()}, src / "pytorch_model.bin")
    out = work / "evil.gguf"
    r = subprocess.run([sys.executable, "-m", "camelid", "convert", str(src), "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.startswith("camelid: error:") and "camelid refuses to run code from a checkpoint" in r.stderr
    assert "Traceback" not in r.stderr
    assert not marker.exists() and not out.exists()


@pytest.fixture(scope="module")
def wide_dir(work, spm_dir):
    """A one-layer model 256 wide, so rows fill whole 256-weight K-quant super-blocks."""
    F.make_hf_checkpoint(work / "wide", spm_dir, hidden=256, intermediate=512, layers=1, heads=4, kv_heads=2, seed=5)
    return work / "wide"


@pytest.mark.parametrize("outtype", ["bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k"])
def test_every_outtype_runs_in_llama_cpp_like_in_camelid(work, wide_dir, outtype):
    out = convert(wide_dir, work / f"wide-{outtype}.gguf", outtype)
    f = open_gguf(out)
    assert f.tensors["blk.0.ffn_down.weight"].ggml_type.name == outtype.upper()
    assert f.tensors["blk.0.ffn_norm.weight"].ggml_type.name == "F32"
    ids = [1, 300, 17, 250, 42, 499, 8, 120]
    ref = oracle.Llama(out, n_ctx=64).logits(ids)
    m = _load(out)
    ours = m.forward(ids, m.new_cache())
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_qwen2_with_biases_and_tied_output(work):
    tok_dir = F.train_bpe_tokenizer(work / "qwen-tok", "smollm")
    model = F.make_hf_checkpoint(work / "qwen2", tok_dir, n_vocab=F.bpe_token_count(tok_dir), arch="qwen2", tie=True)
    out = convert(work / "qwen2", work / "qwen2.gguf", "f32")
    f = open_gguf(out)
    assert f.metadata["general.architecture"] == "qwen2" and "blk.0.attn_q.bias" in f.tensors
    assert "output.weight" not in f.tensors
    ids = [5, 100, 200, 300, 17, 42, 399]
    m = _load(out)
    ours = m.forward(ids, m.new_cache())
    ref = F.hf_logits(model, ids)
    assert np.abs(ours - ref).max() < 0.05


def test_from_legacy_ggjt_matches_the_hf_conversion(work, spm_dir):
    """The same weights through the 2023 route (HF -> ggjt v3 file, written by tests/legacy_writer.py) and
    `camelid convert --from-legacy` give the tensors `camelid convert` writes from the HF checkpoint."""
    from legacy_writer import write_legacy_model

    # ggjt has no grouped-query attention and derives n_ff from n_mult: 64 wide, n_mult 64 -> n_ff 192.
    F.make_hf_checkpoint(work / "for-legacy", spm_dir, intermediate=192, kv_heads=4, seed=7)
    direct = open_gguf(convert(work / "for-legacy", work / "for-legacy-f16.gguf", "f16"))
    f32 = open_gguf(convert(work / "for-legacy", work / "for-legacy-f32.gguf", "f32"))
    weights = {n: np.array(t.raw).view(np.float32).reshape(t.shape) for n, t in f32.tensors.items()}
    md = f32.metadata
    legacy = work / "ggml-model-f16.bin"
    write_legacy_model(legacy, "ggjt", 3, weights, {"n_embd": 64, "n_mult": 64, "n_head": 4, "n_layer": 2}, "F16",
                       md["tokenizer.ggml.tokens"], md["tokenizer.ggml.scores"], md["tokenizer.ggml.token_type"])
    rc = camelid_main(["convert", "--from-legacy", str(legacy), "-o", str(work / "from-legacy.gguf"), "--no-progress"])
    assert rc == 0
    got = open_gguf(work / "from-legacy.gguf")
    assert set(got.tensors) == set(direct.tensors)
    for name, info in direct.tensors.items():
        assert np.array_equal(got.tensors[name].raw, info.raw), name
    a, b = _load(work / "from-legacy.gguf"), _load(work / "for-legacy-f16.gguf")
    for text in TEXTS:
        assert a.tokenize(text) == b.tokenize(text)
