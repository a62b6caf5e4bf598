"""2023 legacy model files (ggml, ggmf v1, ggjt v1/v2/v3): reading, converting to GGUF, bad input.

Oracles: the files come from tests/legacy_writer.py (the 2023 writers and ggml.c quantizers, written
from llama.cpp's history independently of camelid's reader); the reference for every file is the same
float weights written as GGUF with gguf-py's writer and quantized by gguf-py's reference
`gguf.quants.quantize`; llama.cpp (llama-cpp-python) runs the converted GGUF files.
"""

from __future__ import annotations

import os
import subprocess
import sys

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize, quantize

import camelid
from camelid.errors import CamelidError
from camelid.formats.gguf import open_gguf, read_metadata
from camelid.formats.model_file import open_model_file
from camelid.tools.legacy_convert import convert_legacy
from legacy_writer import decode as legacy_decode
from legacy_writer import layout_of
from legacy_writer import quantize as legacy_quantize
from legacy_writer import write_legacy_model
import oracle
from oracle.mode import assert_greedy_matches
from test_reference_forward import f16_noise_floor, logit_scale, reference_forward
from tiny_gguf import _random_weights, tiny_hparams

T = gguf.GGMLQuantizationType
VOCAB = os.path.join(os.path.dirname(__file__), "data", "vocab", "ggml-vocab-llama-spm.gguf")
SHAPE = dict(n_embd=64, n_mult=32, n_head=4, n_layer=2)  # n_ff = ceil(2 * 4 * 64 / 3 / 32) * 32 = 192
TOKENS = [1, 15043, 3186, 29892, 920, 526, 366, 29973, 450, 4996]  # <s> Hello world, how are you? The quick

CASES = [("ggml", 0, k) for k in ("F32", "F16", "Q4_0", "Q4_1")] + \
        [("ggmf", 1, k) for k in ("F16", "Q4_0", "Q4_1")] + \
        [("ggjt", 1, k) for k in ("F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")] + \
        [("ggjt", 2, k) for k in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")] + \
        [("ggjt", 3, k) for k in ("F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")]


@pytest.fixture(scope="module")
def vocab():
    m = read_metadata(VOCAB)
    return m["tokenizer.ggml.tokens"], m["tokenizer.ggml.scores"], m["tokenizer.ggml.token_type"]


@pytest.fixture(scope="module")
def tiny():
    """(hparams, float32 weights by GGUF name) of a tiny LLaMA with LLaMA's 32000-token vocabulary."""
    hp = tiny_hparams(n_vocab=32000, n_embd=64, n_head=4, n_head_kv=4, n_ff=192, rms_eps=1e-6, n_ctx_train=2048, seed=5)
    return hp, _random_weights(hp)


def write_reference_gguf(path, hp, weights, kind: str, vocab) -> None:
    """The same weights as GGUF: 2-D tensors as `kind` through gguf.quants.quantize, 1-D as F32."""
    tokens, scores, types = vocab
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(2048)
    w.add_embedding_length(hp["n_embd"])
    w.add_block_count(hp["n_layer"])
    w.add_feed_forward_length(hp["n_ff"])
    w.add_rope_dimension_count(hp["head_dim"])
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_head_kv"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, t in weights.items():
        if t.ndim == 1 or kind == "F32":
            w.add_tensor(name, t)
        elif kind == "F16":
            w.add_tensor(name, t.astype(np.float16))
        else:
            w.add_tensor(name, quantize(t, T[kind]), raw_dtype=T[kind])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny, vocab):
    """(fmt, version, kind) -> path of the legacy file; kind -> path of the reference GGUF."""
    root = tmp_path_factory.mktemp("legacy")
    hp, weights = tiny
    paths = {}
    for fmt, version, kind in CASES:
        paths[fmt, version, kind] = root / f"{fmt}{version}-{kind}.bin"
        write_legacy_model(paths[fmt, version, kind], fmt, version, weights, SHAPE, kind, *vocab)
    for kind in {k for _, _, k in CASES}:
        paths[kind] = root / f"reference-{kind}.gguf"
        write_reference_gguf(paths[kind], hp, weights, kind, vocab)
    # Layout-1 Q4_0 rounds with roundf(x/d) + 8 where ggml (from v2) and gguf-py take trunc(x/d + 8.5)
    # in float32; they differ when that sum rounds up to an integer (4 of 131k blocks here). Its
    # reference quantizes the weights the file holds, d * (q - 8), which gives back the same codes.
    held = {name: legacy_decode(legacy_quantize(w, "Q4_0", 1), "Q4_0", 1).reshape(w.shape) if w.ndim == 2 else w
            for name, w in weights.items()}
    paths["Q4_0/1"] = root / "reference-Q4_0-layout1.gguf"
    write_reference_gguf(paths["Q4_0/1"], hp, held, "Q4_0", vocab)
    return paths


@pytest.fixture(scope="module")
def reference_logits(files):
    cache = {}

    def get(kind):
        if kind not in cache:
            model = camelid.load(files[kind], show_progress=False)
            cache[kind] = model.forward(TOKENS, model.new_cache())
        return cache[kind]

    return get


@pytest.mark.parametrize("fmt,version,kind", CASES, ids=[f"{f}{v}-{k}" for f, v, k in CASES])
def test_blocks_and_logits_equal_the_gguf_reference(files, tiny, reference_logits, fmt, version, kind):
    """Every weight camelid reads is the 2023 block's value with its scales rounded to f16; the blocks
    are gguf.quants.quantize's; the logits are those of the GGUF reference, bit for bit."""
    _, weights = tiny
    layout = layout_of(fmt, version)
    reference = "Q4_0/1" if (kind, layout) == ("Q4_0", 1) else kind
    g = open_model_file(files[fmt, version, kind], show_progress=False)
    ref = open_gguf(files[reference])
    assert set(g.tensors) == set(ref.tensors)
    for name, t in ref.tensors.items():
        mine, w = g.tensors[name], weights[name]
        assert (mine.ggml_type, mine.shape) == (t.ggml_type, t.shape), name
        assert np.array_equal(mine.raw, t.raw), f"{name}: blocks differ from gguf.quants.quantize"
        stored = legacy_quantize(w.reshape(-1, w.shape[-1]), kind if w.ndim == 2 else "F32", layout)
        held = legacy_decode(stored, kind if w.ndim == 2 else "F32", layout, f16_scales=True)
        np.testing.assert_array_equal(dequantize(np.asarray(mine.raw), mine.ggml_type).reshape(held.shape), held, err_msg=name)
    model = camelid.load(files[fmt, version, kind], show_progress=False)
    np.testing.assert_array_equal(model.forward(TOKENS, model.new_cache()), reference_logits(reference))


@pytest.mark.parametrize("fmt,version", [("ggmf", 1), ("ggjt", 1), ("ggjt", 3)])
def test_vocabulary_and_hyperparameters(files, vocab, fmt, version):
    meta = open_model_file(files[fmt, version, "F16"], show_progress=False).metadata
    tokens, scores, types = vocab
    assert meta["tokenizer.ggml.tokens"] == tokens
    assert meta["tokenizer.ggml.token_type"] == types
    np.testing.assert_array_equal(np.float32(meta["tokenizer.ggml.scores"]), np.float32(scores))
    assert meta["llama.feed_forward_length"] == 192  # from n_mult, as llama.cpp computed it
    ref = read_metadata(files["F16"])
    for key in ("llama.embedding_length", "llama.block_count", "llama.attention.head_count",
                "llama.attention.head_count_kv", "llama.rope.dimension_count", "tokenizer.ggml.bos_token_id"):
        assert meta[key] == ref[key], key


def test_ggml_without_scores_tokenizes_like_llama_cpp(files):
    """'ggml' files have no scores; the synthesized ones reproduce llama.cpp's tokenizer test vectors."""
    model = camelid.load(files["ggml", 0, "F16"], show_progress=False)
    inputs = open(VOCAB + ".inp", encoding="utf-8").read().split("\n__ggml_vocab_test__\n")
    expected = open(VOCAB + ".out", encoding="utf-8").read().splitlines()
    for text, ids in zip(inputs, expected):
        assert model.tokenize(text, add_special=False) == [int(i) for i in ids.split()], text


def test_fp16_scale_rounding_is_below_the_float16_noise_floor(files, tiny):
    """What converting ggjt v1/v2 blocks costs: their f32 scales become f16.

    float64 reference forward with the weights as the 2023 file meant them (f32 scales, decoded here
    from the format description) and as camelid runs them (f16 scales): the difference is compared to
    the Q4_0 quantization error itself and to the float16 noise floor of llama.cpp's f16 KV cache.
    """
    hp, weights = tiny
    g = open_model_file(files["ggjt", 1, "Q4_0"], show_progress=False)
    as_2023, as_camelid = {}, {}
    for name, w in weights.items():
        if w.ndim == 1:
            as_2023[name] = as_camelid[name] = w.astype(np.float64)
            continue
        as_2023[name] = legacy_decode(legacy_quantize(w, "Q4_0", 1), "Q4_0", 1).astype(np.float64).reshape(w.shape)
        t = g.tensors[name]
        as_camelid[name] = dequantize(np.asarray(t.raw), t.ggml_type).astype(np.float64).reshape(w.shape)
    exact = reference_forward({k: v.astype(np.float64) for k, v in weights.items()}, hp, TOKENS)
    meant = reference_forward(as_2023, hp, TOKENS)
    runs = reference_forward(as_camelid, hp, TOKENS)
    scale_effect = np.abs(runs - meant).max()
    quant_error = np.abs(meant - exact).max()
    floor = f16_noise_floor(as_2023, hp, TOKENS, meant)
    model = camelid.load(files["ggjt", 1, "Q4_0"], show_progress=False)
    engine_error = np.abs(model.forward(TOKENS, model.new_cache()) - meant).max()
    rms = logit_scale(meant)
    print(f"\nmax|dlogit| / RMS(logits): f16 scales {scale_effect / rms:.2e}; float16 noise floor {floor / rms:.2e}; "
          f"llama.cpp's Q4_0 path (int8 activations, f16 KV cache; camelid) {engine_error / rms:.2e}; "
          f"Q4_0 quantization {quant_error / rms:.2e}")
    assert 0 < scale_effect < 0.01 * quant_error
    assert scale_effect < 2 * floor
    assert scale_effect < 0.25 * engine_error


def test_convert_legacy_output_is_the_reference_gguf_and_llama_cpp_agrees(files, tmp_path):
    src = files["ggjt", 1, "Q4_0"]
    out = tmp_path / "converted.gguf"
    convert_legacy(src, out, progress=False)
    g, ref = open_gguf(out), open_gguf(files["Q4_0/1"])
    for name, t in ref.tensors.items():
        assert np.array_equal(g.tensors[name].raw, t.raw), name
    types = {k: v[0] for k, v in g.metadata_types.items()}
    V = gguf.GGUFValueType
    assert types["llama.block_count"] == types["llama.feed_forward_length"] == types["llama.attention.head_count"] == V.UINT32
    assert types["llama.attention.layer_norm_rms_epsilon"] == V.FLOAT32
    assert g.metadata_types["tokenizer.ggml.token_type"] == (V.ARRAY, V.INT32)
    assert g.metadata_types["tokenizer.ggml.scores"] == (V.ARRAY, V.FLOAT32)

    llm = oracle.Llama(out, n_ctx=128)
    prompt = llm.tokenize("Hello world, how are you?", special=False)
    model = camelid.load(src, n_ctx=128, show_progress=False)
    assert model.tokenize("Hello world, how are you?") == prompt
    theirs, their_logits = llm.greedy(prompt, 8)
    chunks = model.stream_tokens(prompt, max_tokens=8, temperature=0.0, repeat_penalty=1.0, ignore_eos=True)
    ours = [c.token for c in chunks if c.token is not None]
    assert_greedy_matches(ours, theirs, their_logits)


def test_camelid_run_on_a_legacy_file(files, tmp_path):
    """`camelid run -m legacy.bin` end to end: the text of the tokens camelid chose, as llama.cpp
    detokenizes them, and those tokens are llama.cpp's greedy choice on the converted file."""
    path = files["ggjt", 2, "Q4_0"]
    converted = tmp_path / "converted.gguf"
    convert_legacy(path, converted, progress=False)
    prompt = "Hello world"
    llm = oracle.Llama(converted, n_ctx=128)
    prompt_ids = llm.tokenize(prompt, special=False)
    theirs, their_logits = llm.greedy(prompt_ids, 8, stop_at_eog=True)
    model = camelid.load(path, n_ctx=128, show_progress=False)
    chunks = model.stream_tokens(prompt_ids, max_tokens=8, temperature=0.0, repeat_penalty=1.0)
    ours = [c.token for c in chunks if c.token is not None]
    assert_greedy_matches(ours, theirs, their_logits)
    before, after = llm.detokenize(prompt_ids), llm.detokenize(prompt_ids + ours)
    assert after.startswith(before)
    expected = prompt + after[len(before):].decode()
    result = subprocess.run([sys.executable, "-m", "camelid", "run", "-m", str(path), "-p", prompt, "-n", "8",
                             "--temp", "0", "--repeat-penalty", "1.0"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n") == expected


def test_q8_0_of_april_2023_had_type_id_6(files, tiny, vocab, tmp_path):
    """For a day (llama.cpp 7a32fcb3b, 2023-04-25, to 574406dc7) Q8_0 tensors had type id 6, Q5_0's later."""
    _, weights = tiny
    raw = {name: (6, legacy_quantize(w, "Q8_0", 1)) for name, w in weights.items() if w.ndim == 2}
    path = tmp_path / "ggjt1-q8_0-april.bin"
    write_legacy_model(path, "ggjt", 1, weights, SHAPE, "Q8_0", *vocab, raw_blocks=raw)
    april, later = open_model_file(path, show_progress=False), open_model_file(files["ggjt", 1, "Q8_0"], show_progress=False)
    for name, t in later.tensors.items():
        assert april.tensors[name].ggml_type == t.ggml_type and np.array_equal(april.tensors[name].raw, t.raw), name


def test_ggjt_v3_k_quants_pass_through(tmp_path, vocab):
    """ggjt v3 files of June-August 2023 had K-quants in today's layout: llama.cpp's own Q4_K_M blocks,
    put in a v3 file, give the logits of the GGUF llama.cpp wrote."""
    hp = tiny_hparams(n_vocab=32000, n_embd=256, n_head=4, n_head_kv=4, n_ff=768, rms_eps=1e-6, n_ctx_train=2048, seed=7)
    weights = _random_weights(hp)
    f32, q = tmp_path / "f32.gguf", tmp_path / "q4_k_m.gguf"
    write_reference_gguf(f32, hp, weights, "F32", vocab)
    oracle.quantize(f32, q, 15)  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    ref = open_gguf(q)
    assert {t.ggml_type for t in ref.tensors.values()} >= {T.Q4_K, T.Q6_K}
    legacy = tmp_path / "ggjt3-q4_k_m.bin"
    raw = {name: (int(t.ggml_type), np.asarray(t.raw)) for name, t in ref.tensors.items()}
    write_legacy_model(legacy, "ggjt", 3, weights, dict(n_embd=256, n_mult=256, n_head=4, n_layer=2, ftype=15), "F32",
                       *vocab, raw_blocks=raw)
    g = open_model_file(legacy, show_progress=False)
    for name, t in ref.tensors.items():
        assert g.tensors[name].ggml_type == t.ggml_type and np.array_equal(g.tensors[name].raw, t.raw), name
    ours, theirs = camelid.load(legacy, show_progress=False), camelid.load(q, show_progress=False)
    np.testing.assert_array_equal(ours.forward(TOKENS, ours.new_cache()), theirs.forward(TOKENS, theirs.new_cache()))


def test_chinese_llama_alpaca_vocabulary(tmp_path, tiny, vocab):
    """A 49954-token vocabulary as Chinese-LLaMA-Alpaca's: LLaMA's 32000 pieces, 17953 Chinese ones,
    and the added <pad>; llama.cpp tokenizes Chinese text on the converted file as camelid does."""
    tokens, scores, types = vocab
    known = set(tokens)
    words = ["你好", "中国", "\u2581你好", "\u2581中国"]
    chars = [chr(c) for c in range(0x4E00, 0x9FA6) if chr(c) not in known]
    extra = (words + chars)[:17953]
    big = (tokens + extra + ["<pad>"],
           scores + [-32000.0 - i for i in range(len(extra))] + [-1000.0],
           types + [1] * (len(extra) + 1))
    hp, weights = tiny
    hp = dict(hp, n_vocab=49954)
    rng = np.random.default_rng(11)
    weights = dict(weights, **{name: np.concatenate([weights[name], rng.standard_normal((17954, 64)).astype(np.float32) * 0.35])
                               for name in ("token_embd.weight", "output.weight")})
    path = tmp_path / "zh-alpaca-q8_0.bin"
    write_legacy_model(path, "ggjt", 3, weights, SHAPE, "Q8_0", *big)
    reference = tmp_path / "zh-alpaca-q8_0.gguf"
    write_reference_gguf(reference, hp, weights, "Q8_0", big)
    meta = open_model_file(path, show_progress=False).metadata
    assert meta["tokenizer.ggml.tokens"] == big[0] and meta["tokenizer.ggml.token_type"] == big[2]
    model = camelid.load(path, show_progress=False)
    text = "你好，中国！我们一起学习。"
    ids = model.tokenize(text)
    assert any(i >= 32000 for i in ids)
    converted = tmp_path / "converted.gguf"
    convert_legacy(path, converted, progress=False)
    assert oracle.Llama(converted, vocab_only=True).tokenize(text, special=False) == ids
    ref = camelid.load(reference, show_progress=False)
    np.testing.assert_array_equal(model.forward(ids, model.new_cache()), ref.forward(ids, ref.new_cache()))


# ------------------------------------------------------------------------------------------- bad input

def _bad_file(name: str, files, tiny, vocab, tmp_path):
    """Write the bad file of a case; return (path, words the message must contain)."""
    good = files["ggjt", 1, "Q4_0"].read_bytes()
    path = tmp_path / f"{name}.bin"
    hp, weights = tiny
    if name.startswith("truncated"):
        cut = {"truncated-header": 20, "truncated-vocab": 100_000, "truncated-data": len(good) - 7}[name]
        path.write_bytes(good[:cut])
        return path, "truncated"
    if name == "unknown-version":
        path.write_bytes(good[:4] + (4).to_bytes(4, "little") + good[8:])
        return path, "unknown version 4"
    if name == "ggmf-v2":
        path.write_bytes(b"fmgg" + (2).to_bytes(4, "little") + good[8:])
        return path, "unknown version 2"
    if name == "q4_2-file":
        write_legacy_model(path, "ggjt", 1, weights, SHAPE, "F16", *vocab)  # ftype says Q4_2
        data = bytearray(path.read_bytes())
        data[32:36] = (5).to_bytes(4, "little")
        path.write_bytes(bytes(data))
        return path, "Q4_2"
    if name == "q4_3-tensor":
        raw = {"blk.0.attn_q.weight": (5, np.zeros((64, 2 * 4 * 12), np.uint8))}  # Q4_3: 12 bytes per 16 weights
        write_legacy_model(path, "ggjt", 1, weights, SHAPE, "F16", *vocab, raw_blocks=raw)
        return path, "Q4_3"
    if name == "corrupted-hparams":
        path.write_bytes(good[:8] + (0).to_bytes(4, "little") + good[12:])
        return path, "corrupted"
    if name == "corrupted-tensor-header":
        write_legacy_model(path, "ggjt", 1, weights, SHAPE, "F16", *vocab,
                           raw_blocks={"token_embd.weight": (99, np.zeros(1, np.uint8))})
        return path, "unknown type id 99"
    if name == "not-llama":
        path.write_bytes(good.replace(b"tok_embeddings.weight", b"transformer.wte.weigh", 1))  # same length
        return path, "not a tensor of a LLaMA model"
    if name == "vocab-only":
        write_legacy_model(path, "ggjt", 1, {}, dict(n_embd=0, n_mult=0, n_head=1, n_layer=0), "F32", *vocab)
        return path, "vocabulary-only"
    if name == "one-part-of-two":
        half = dict(weights, **{"token_embd.weight": weights["token_embd.weight"][:, :32]})
        write_legacy_model(path, "ggml", 0, half, SHAPE, "F16", *vocab)
        return path, "split over several files"
    raise AssertionError(name)


BAD = ["truncated-header", "truncated-vocab", "truncated-data", "unknown-version", "ggmf-v2", "q4_2-file",
       "q4_3-tensor", "corrupted-hparams", "corrupted-tensor-header", "not-llama", "vocab-only", "one-part-of-two"]


@pytest.mark.parametrize("case", BAD)
def test_bad_legacy_file(case, files, tiny, vocab, tmp_path):
    path, words = _bad_file(case, files, tiny, vocab, tmp_path)
    with pytest.raises(CamelidError, match=words):
        camelid.load(path, show_progress=False)
    out = tmp_path / "out" / "converted.gguf"
    out.parent.mkdir()
    with pytest.raises(CamelidError, match=words):
        convert_legacy(path, out, progress=False)
    assert os.listdir(out.parent) == []


@pytest.mark.parametrize("case", ["truncated-data", "q4_2-file", "corrupted-tensor-header"])
def test_bad_legacy_file_cli_is_one_line(case, files, tiny, vocab, tmp_path):
    path, words = _bad_file(case, files, tiny, vocab, tmp_path)
    result = subprocess.run([sys.executable, "-m", "camelid", "run", "-m", str(path), "-p", "hi", "-n", "2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("camelid: error: ") and words in lines[0], result.stderr


def test_open_gguf_still_refuses_legacy_files(files):
    with pytest.raises(CamelidError, match="legacy ggjt"):
        open_gguf(files["ggjt", 3, "Q4_0"])
