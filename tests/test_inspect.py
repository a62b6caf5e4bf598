"""`camelid inspect` against gguf-py's own GGUFReader (an independent reader of the same file), and on a
2023 ggjt file written by tests/legacy_writer.py from the format description."""

from __future__ import annotations

import json
import os

import gguf
import numpy as np
import pytest

from camelid.cli.main import main
from model_files import smollm2_path
from tiny_gguf import _random_weights, tiny_hparams, write_tiny_model


def inspect_json(capsys, path, *extra) -> dict:
    assert main(["inspect", "--json", *extra, str(path)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("inspect") / "tiny.gguf"
    write_tiny_model(path, n_embd=64, n_layer=2, n_vocab=300, weight_type="F16", seed=1)
    return path


def test_tensor_table_matches_gguf_reader(capsys, tiny):
    d = inspect_json(capsys, tiny)
    reader = gguf.GGUFReader(str(tiny))
    expected = [{"name": t.name, "type": t.tensor_type.name, "ne": [int(n) for n in t.shape], "n_elements": int(t.n_elements),
                 "bytes": int(t.n_bytes)} for t in reader.tensors]
    assert d["tensors"] == expected
    assert d["n_parameters"] == sum(t["n_elements"] for t in expected)
    assert d["file_bytes"] == os.path.getsize(tiny)
    for type_name, total in d["totals"].items():
        mine = [t for t in expected if t["type"] == type_name]
        assert total == {"tensors": len(mine), "n_elements": sum(t["n_elements"] for t in mine), "bytes": sum(t["bytes"] for t in mine)}
    assert set(d["totals"]) == {"F16", "F32"}


def test_metadata_matches_gguf_reader_and_long_arrays_are_summarized(capsys, tiny):
    d = inspect_json(capsys, tiny)
    reader = gguf.GGUFReader(str(tiny))
    assert list(d["metadata"]) == [k for k in reader.fields if not k.startswith("GGUF.")]
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        shown = d["metadata"][key]
        if isinstance(value, list) and len(value) > 8:
            assert shown["array_length"] == len(value) and shown["first"] == value[:4]
        elif isinstance(value, float):
            assert np.float32(shown) == np.float32(value)
        else:
            assert shown == value, key


def test_tokenizer_summary(capsys, tiny):
    tok = inspect_json(capsys, tiny)["tokenizer"]
    reader = gguf.GGUFReader(str(tiny))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    bos = reader.fields["tokenizer.ggml.bos_token_id"].contents()
    assert tok["model"] == reader.fields["tokenizer.ggml.model"].contents()
    assert tok["vocab_size"] == len(tokens) == 300
    assert tok["special_tokens"]["bos"] == {"id": bos, "text": tokens[bos]}
    assert (tok["chat_template"] is not None) == ("tokenizer.chat_template" in reader.fields)


def test_text_output_of_the_default_model(capsys):
    assert main(["inspect", str(smollm2_path())]) == 0
    out = capsys.readouterr().out
    assert "GGUF v3" in out and "file type Q4_1 (3)" in out
    assert "tokenizer.ggml.tokens = [49152 x STRING:" in out
    assert "token_embd.weight" in out and "Q8_0" in out and "[576, 49152]" in out
    assert "Q4_1    210 tensors" in out
    assert 'bos: 1 "<|im_start|>"' in out and "chat template: yes" in out
    assert main(["inspect", "--no-tensors", str(smollm2_path())]) == 0
    assert "blk.0.attn_q.weight" not in capsys.readouterr().out


def test_legacy_ggjt_file(capsys, tmp_path):
    from legacy_writer import write_legacy_model

    vocab_file = os.path.join(os.path.dirname(__file__), "data", "vocab", "ggml-vocab-llama-spm.gguf")
    fields = gguf.GGUFReader(vocab_file).fields
    tokens, scores, types = (fields[f"tokenizer.ggml.{k}"].contents() for k in ("tokens", "scores", "token_type"))
    hp = tiny_hparams(n_vocab=len(tokens), n_embd=64, n_head=4, n_head_kv=4, n_ff=192, seed=2)
    weights = _random_weights(hp)
    path = tmp_path / "ggml-model-q4_0.bin"
    write_legacy_model(path, "ggjt", 1, weights, dict(n_embd=64, n_mult=32, n_head=4, n_layer=2), "Q4_0", tokens, scores, types)
    d = inspect_json(capsys, path)
    assert d["format"] == "legacy ggjt v1"
    assert {t["name"]: t["type"] for t in d["tensors"]} == {n: "Q4_0" if w.ndim == 2 else "F32" for n, w in weights.items()}
    assert {t["name"]: t["ne"] for t in d["tensors"]} == {n: list(reversed(w.shape)) for n, w in weights.items()}
    assert d["tokenizer"]["vocab_size"] == len(tokens) == 32000
    assert d["tokenizer"]["model"] == "llama"


def test_bad_files_are_one_line_errors(capsys, tmp_path):
    assert main(["inspect", str(tmp_path / "missing.gguf")]) == 1
    assert "not found" in capsys.readouterr().err
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\x00" * 64)
    assert main(["inspect", "--json", str(junk)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("camelid: error:") and "not a GGUF file" in err and err.count("\n") == 1
