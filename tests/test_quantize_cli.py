"""`camelid quantize` against llama.cpp's own quantizer (`llama_model_quantize` from llama-cpp-python,
the code behind `llama-quantize`): the same input and file type must give the same file, byte for
byte (tensor types of the Q4_K_M/Q5_K_M mixes, fallbacks, blocks, metadata, order). The output must
load and generate in llama.cpp and in camelid with the same greedy tokens."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from camelid.cli.main import main
from camelid.formats.gguf import open_gguf

import oracle
from model_files import gemma_path, smollm2_path
from oracle.mode import assert_greedy_matches, camelid_greedy
from tiny_gguf import write_tiny_model

LLAMA_FTYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q4_K_S": 14,
               "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "BF16": 32}


def llama_quantize(src: Path, dst: Path, type_name: str, allow_requantize: bool = False) -> None:
    oracle.quantize(src, dst, LLAMA_FTYPE[type_name], allow_requantize=allow_requantize)


def camelid_quantize(*args: str) -> int:
    return main(["quantize", "--quiet", *map(str, args)])


@pytest.fixture(scope="module")
def tiny_f16(tmp_path_factory) -> Path:
    """16 layers (so use_more_bits picks layers 0, 1, 4, 7, 10, 13, 14, 15), rows of 256 (K-quants fit),
    an untied output, and ffn_down rows of 512."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-f16.gguf"
    write_tiny_model(path, n_embd=256, n_ff=512, n_layer=16, n_head=4, n_head_kv=2, n_vocab=512, weight_type="F16", seed=3)
    return path


@pytest.fixture(scope="module")
def tiny_odd(tmp_path_factory) -> Path:
    """Rows of 96 (no K-quant block fits: fallbacks) and ffn_down rows of 160; tied output; F32."""
    path = tmp_path_factory.mktemp("odd") / "tiny-odd.gguf"
    write_tiny_model(path, n_embd=96, n_ff=160, n_layer=3, n_head=4, n_head_kv=2, n_vocab=300, tied_output=True, seed=4)
    return path


@pytest.mark.parametrize("type_name", ["q8_0", "Q4_0", "q4_1", "Q5_0", "Q5_1", "Q4_K_S", "q4_k_m", "Q4_K",
                                       "Q5_K_S", "Q5_K_M", "q6_k", "F16", "BF16"])
def test_same_file_as_llama_quantize(tiny_f16, tmp_path, type_name):
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    assert camelid_quantize(tiny_f16, ours, type_name) == 0
    llama_quantize(tiny_f16, ref, {"Q4_K": "Q4_K_M"}.get(type_name.upper(), type_name.upper()))
    a, b = open_gguf(ours), open_gguf(ref)
    assert {n: t.ggml_type.name for n, t in a.tensors.items()} == {n: t.ggml_type.name for n, t in b.tensors.items()}
    assert a.metadata == b.metadata
    assert ours.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("type_name", ["Q4_K_M", "Q5_K_M", "Q6_K", "Q4_0"])
def test_fallbacks_match_llama_quantize(tiny_odd, tmp_path, type_name):
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    with pytest.warns(UserWarning, match="not a multiple of"):
        assert camelid_quantize(tiny_odd, ours, type_name) == 0
    llama_quantize(tiny_odd, ref, type_name)
    assert ours.read_bytes() == ref.read_bytes()
    assert {t.ggml_type.name for t in open_gguf(ours).tensors.values()} - {"F32"} <= {"Q5_0", "Q5_1", "Q8_0", "Q4_0", "F16"}


def test_q4_k_m_mix_uses_more_bits_where_llama_cpp_does(tiny_f16, tmp_path):
    out = tmp_path / "m.gguf"
    assert camelid_quantize(tiny_f16, out, "Q4_K_M") == 0
    types = {n: t.ggml_type.name for n, t in open_gguf(out).tensors.items()}
    more_bits = [i for i in range(16) if types[f"blk.{i}.ffn_down.weight"] == "Q6_K"]
    assert more_bits == [0, 1, 4, 7, 10, 13, 14, 15]
    assert [i for i in range(16) if types[f"blk.{i}.attn_v.weight"] == "Q6_K"] == more_bits
    assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q4_K"
    assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.2.attn_q.weight"] == "Q4_K"


def test_q8_0_requantization_of_smollm2_generates_like_llama_cpp(tmp_path):
    """The default Q4_1 model requantized to Q8_0: llama.cpp's own requantization gives the same file,
    and greedy decoding of the file in camelid equals llama.cpp's on it."""
    import camelid

    src, ours, ref = smollm2_path(), tmp_path / "smollm2-q8_0.gguf", tmp_path / "ref.gguf"
    assert camelid_quantize(src, ours, "Q8_0") == 1  # quantized input: refused without the flag
    assert not ours.exists()
    with pytest.warns(UserWarning, match="requantizing"):
        assert camelid_quantize("--allow-requantize", "-t", "2", src, ours, "q8_0") == 0
    llama_quantize(src, ref, "Q8_0", allow_requantize=True)
    assert ours.read_bytes() == ref.read_bytes()

    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    llm = oracle.Llama(ours, n_ctx=256)
    tokens = llm.tokenize(prompt)
    expected, expected_logits = llm.greedy(tokens, 16)
    model = camelid.load(str(ours), n_ctx=256, show_progress=False)
    got = camelid_greedy(model, tokens, 16)
    assert_greedy_matches(got, expected, expected_logits,
                          f"camelid {model.detokenize(got)!r} vs llama.cpp {model.detokenize(expected)!r}")
    assert "Paris" in model.detokenize(got)


@pytest.mark.parametrize("type_name", ["Q4_K_M", "Q8_0"])
def test_requantized_gemma3_is_llama_quantizes_file(tmp_path, type_name):
    """Gemma 3 270M Q4_K_M (K-quant input, 262k-token vocabulary, gemma3 tensor names) requantized."""
    src, ours, ref = gemma_path(), tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    with pytest.warns(UserWarning):
        assert camelid_quantize("--allow-requantize", src, ours, type_name) == 0
    llama_quantize(src, ref, type_name, allow_requantize=True)
    assert ours.read_bytes() == ref.read_bytes()


def test_dry_run_prints_the_exact_size_and_writes_nothing(tiny_f16, tmp_path, capsys):
    out = tmp_path / "q.gguf"
    assert main(["quantize", "--dry-run", str(tiny_f16), str(out), "Q4_K_M"]) == 0
    dry = capsys.readouterr().out
    assert not out.exists() and not list(tmp_path.iterdir())
    assert main(["quantize", "--dry-run", str(tiny_f16), "q4_k_m"]) == 0  # the output name may be left out
    assert capsys.readouterr().out == dry
    assert camelid_quantize(tiny_f16, out, "Q4_K_M") == 0
    capsys.readouterr()
    assert f"would write {out.stat().st_size} bytes" in dry
    counts = {t.ggml_type.name: 0 for t in open_gguf(out).tensors.values()}
    for t in open_gguf(out).tensors.values():
        counts[t.ggml_type.name] += 1
    for name, n in counts.items():
        assert f"{n} {name}" in dry


def _error(capsys, *args) -> str:
    assert main(["quantize", "--quiet", *map(str, args)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("camelid: error: ") and "Traceback" not in err and err.count("\n") == 1
    return err


def test_bad_input_is_a_one_line_error_and_writes_nothing(tiny_f16, tmp_path, capsys):
    out = tmp_path / "out.gguf"
    err = _error(capsys, tiny_f16, out, "q3_k_xl")
    assert "unknown quantization type 'q3_k_xl'" in err and "Q4_K_M" in err and "Q8_0" in err
    assert "not found" in _error(capsys, tmp_path / "missing.gguf", out, "q8_0")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_f16.read_bytes()[:5000])
    assert "truncated" in _error(capsys, truncated, out, "q8_0")
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a model at all" * 100)
    assert "not a GGUF file" in _error(capsys, garbage, out, "q8_0")
    assert "is the input file" in _error(capsys, tiny_f16, tiny_f16, "q8_0")
    assert "does not exist" in _error(capsys, tiny_f16, tmp_path / "no-such-dir" / "out.gguf", "q8_0")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert "does not exist" in _error(capsys, tiny_f16, blocker / "out.gguf", "q8_0")
    assert "give the target type" in _error(capsys, tiny_f16, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "garbage.gguf", "truncated.gguf"]


def test_unwritable_output_is_a_clear_error(tiny_f16, capsys):
    target = "/proc/camelid-quantize-test.gguf"  # not writable even for root
    if os.access("/proc", os.W_OK) and os.path.exists(target):
        pytest.skip("/proc is writable here")
    assert "cannot write" in _error(capsys, tiny_f16, target, "q8_0")


def test_failure_mid_write_leaves_no_file(tiny_f16, tmp_path, monkeypatch, capsys):
    import camelid.quant.encode as quantize

    calls = []
    real = quantize.quantize_rows

    def failing(x, t):
        calls.append(t)
        if len(calls) == 20:
            raise OSError(28, "No space left on device")
        return real(x, t)

    monkeypatch.setattr(quantize, "quantize_rows", failing)
    assert "No space left on device" in _error(capsys, tiny_f16, tmp_path / "out.gguf", "q8_0")
    assert len(calls) == 20 and list(tmp_path.iterdir()) == []


def test_legacy_ggjt_input(tmp_path):
    """A 2023 ggjt v3 F16 file (tests/legacy_writer.py) quantizes like its weights through gguf-py."""
    import gguf
    from legacy_writer import write_legacy_model
    from tiny_gguf import _random_weights, tiny_hparams

    vocab_file = Path(__file__).parent / "data" / "vocab" / "ggml-vocab-llama-spm.gguf"
    fields = gguf.GGUFReader(str(vocab_file)).fields
    vocab = [fields[f"tokenizer.ggml.{k}"].contents() for k in ("tokens", "scores", "token_type")]
    hp = tiny_hparams(n_vocab=len(vocab[0]), n_embd=64, n_head=4, n_head_kv=4, n_ff=192, seed=6)
    weights = _random_weights(hp)
    legacy = tmp_path / "ggml-model-f16.bin"
    write_legacy_model(legacy, "ggjt", 3, weights, dict(n_embd=64, n_mult=32, n_head=4, n_layer=2), "F16", *vocab)
    out = tmp_path / "q8.gguf"
    assert camelid_quantize(legacy, out, "Q8_0") == 0
    got = open_gguf(out)
    assert got.metadata["general.file_type"] == 7
    assert set(got.tensors) == set(weights)
    for name, w in weights.items():
        if w.ndim == 1:
            assert np.array_equal(np.asarray(got.tensors[name].raw).view(np.float32).ravel(), w.astype(np.float32))
        else:
            expected = gguf.quants.quantize(w.astype(np.float16).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
            assert np.array_equal(got.tensors[name].raw, expected), name
