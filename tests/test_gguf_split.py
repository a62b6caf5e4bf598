"""Split GGUF models (llama.cpp's gguf-split layout, written by the gguf package's own writer) load as one model."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import camelid
from camelid.errors import CamelidError
from camelid.formats.gguf import open_gguf
from camelid.formats.model_file import open_model_file
from model_files import smollm2_path
from split_gguf import write_split

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("split")
    return write_split(smollm2_path(), folder / "smollm2-q4_1.gguf", max_tensors=100)


def _greedy(model) -> list[int]:
    return [c.token for c in model.stream(PROMPT, max_tokens=24, temperature=0) if c.token is not None]


def test_split_has_the_layout_of_gguf_split(parts):
    assert [p.name for p in parts] == [f"smollm2-q4_1-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    whole = open_gguf(smollm2_path())
    heads = [open_gguf(p) for p in parts]
    assert [h.metadata["split.no"] for h in heads] == [0, 1, 2]
    assert all(h.metadata["split.count"] == 3 and h.metadata["split.tensors.count"] == len(whole.tensors) for h in heads)
    assert "tokenizer.ggml.tokens" in heads[0].metadata and "tokenizer.ggml.tokens" not in heads[1].metadata
    assert sum(len(h.tensors) for h in heads) == len(whole.tensors)


def test_any_part_opens_the_whole_model(parts):
    whole = open_gguf(smollm2_path())
    for p in parts:
        gf = open_model_file(p)
        assert gf.path == str(parts[0])
        assert gf.tensors.keys() == whole.tensors.keys()
        for name, t in whole.tensors.items():
            assert (gf.tensors[name].ggml_type, gf.tensors[name].shape) == (t.ggml_type, t.shape)
            assert np.array_equal(gf.tensors[name].raw, t.raw)


def test_split_generates_the_same_tokens_as_the_whole_file(parts):
    whole = _greedy(camelid.load(smollm2_path(), show_progress=False))
    split = _greedy(camelid.load(parts[0], show_progress=False))
    assert len(whole) == 24 and split == whole


def test_missing_or_foreign_part_is_refused(parts, tmp_path):
    copy = [shutil.copy(p, tmp_path / p.name) for p in parts[:2]]
    with pytest.raises(CamelidError, match=r"smollm2-q4_1-00003-of-00003\.gguf is missing.*split into 3 files"):
        open_model_file(copy[0])
    shutil.copy(parts[1], tmp_path / parts[2].name)
    with pytest.raises(CamelidError, match="says it is part 1 of 3, but its name makes it part 2 of 3"):
        open_model_file(copy[0])
    renamed = tmp_path / "renamed.gguf"
    shutil.copy(parts[0], renamed)
    with pytest.raises(CamelidError, match="does not end in -0000N-of-00003.gguf"):
        open_model_file(renamed)
