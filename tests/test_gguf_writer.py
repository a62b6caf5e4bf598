"""The streaming GGUF writer: exact copies that llama.cpp loads, and no partial file on failure."""

import os

import numpy as np
import pytest

from camelid.errors import CamelidError
from camelid.formats.gguf import open_gguf
from camelid.formats.gguf_writer import PlannedTensor, _umask, metadata_from_gguf, write_gguf
from model_files import smollm2_path
import oracle


def _copy_plan(g):
    return [PlannedTensor(t.name, t.ggml_type, t.shape, lambda t=t: t.raw) for t in g.tensors.values()]


def test_copy_is_exact_and_llama_cpp_loads_it(tmp_path):
    src = open_gguf(smollm2_path())
    out = tmp_path / "copy.gguf"
    write_gguf(out, src.metadata["general.architecture"], metadata_from_gguf(src.metadata, src.metadata_types), _copy_plan(src), progress=None)
    copy = open_gguf(out)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~_umask()
    assert copy.metadata == src.metadata
    assert copy.metadata_types == src.metadata_types
    for name, t in src.tensors.items():
        c = copy.tensors[name]
        assert (c.ggml_type, c.shape) == (t.ggml_type, t.shape)
        assert np.array_equal(c.raw, t.raw)
    llm = oracle.Llama(out, n_ctx=64)
    llm.load()
    assert llm.tokenize("Hello") == oracle.Llama(smollm2_path(), n_ctx=64, vocab_only=True).tokenize("Hello")


def test_failure_leaves_no_file(tmp_path):
    src = open_gguf(smollm2_path())
    plan = _copy_plan(src)

    def broken():
        raise RuntimeError("disk on fire")

    plan[3] = PlannedTensor(plan[3].name, plan[3].ggml_type, plan[3].shape, broken)
    out = tmp_path / "out.gguf"
    with pytest.raises(RuntimeError):
        write_gguf(out, "llama", metadata_from_gguf(src.metadata, src.metadata_types), plan, progress=None)
    assert os.listdir(tmp_path) == []


def test_wrong_size_is_refused(tmp_path):
    src = open_gguf(smollm2_path())
    plan = _copy_plan(src)
    plan[0] = PlannedTensor(plan[0].name, plan[0].ggml_type, plan[0].shape, lambda: np.zeros(3, np.uint8))
    with pytest.raises(CamelidError, match="expected"):
        write_gguf(tmp_path / "out.gguf", "llama", {}, plan, progress=None)
    assert os.listdir(tmp_path) == []
