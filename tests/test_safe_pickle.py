"""The PyTorch checkpoint reader: real torch.save files load exactly; pickles that would run code are refused."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch

from camelid.errors import CamelidError
from camelid.formats import safe_pickle
from camelid.formats.hf import open_tensor_files


class _CreatesFile:
    """An object whose unpickling would run a shell command creating `path`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _CallsOpen:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _torch_state_dict() -> OrderedDict:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=g)
    return OrderedDict(
        f32=torch.randn(3, 5, generator=g),
        f16=torch.randn(4, 7, generator=g).half(),
        bf16=torch.randn(2, 9, generator=g).bfloat16(),
        transposed=torch.randn(5, 3, generator=g).t(),  # non-contiguous strides
        row_slice=base[2:5],  # storage offset into a shared storage
        col_slice=base[:, 3:6],  # offset and strides into the same storage
        param=torch.nn.Parameter(torch.randn(4, generator=g)),
        scalar=torch.tensor(3.5),
        ints=torch.arange(10, dtype=torch.int64),
    )


def _expected(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def test_torch_saved_state_dict_loads_equal(tmp_path):
    sd = _torch_state_dict()
    path = tmp_path / "pytorch_model.bin"
    torch.save(sd, path)
    source = open_tensor_files([path])
    assert source.names() == list(sd)
    for name, t in sd.items():
        got = source.load(name)
        want = _expected(t)
        assert source.shape(name) == tuple(t.shape)
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_module_state_dict_with_metadata_loads_in_every_protocol(tmp_path, protocol):
    # A module's state_dict() carries `_metadata`, which the pickle sets with BUILD on the OrderedDict;
    # protocols 4 and 5 add FRAME, MEMOIZE, STACK_GLOBAL and SHORT_BINUNICODE.
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)).to(torch.bfloat16)
    sd = module.state_dict()
    assert hasattr(sd, "_metadata")
    path = tmp_path / "pytorch_model.bin"
    torch.save(sd, path, pickle_protocol=protocol)
    source = open_tensor_files([path])
    assert source.names() == list(sd)
    for name, t in sd.items():
        np.testing.assert_array_equal(source.load(name), _expected(t), err_msg=name)


def test_state_dict_nested_under_state_dict_key(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"w": torch.ones(2, 2)}, "epoch": 3}, path)
    np.testing.assert_array_equal(open_tensor_files([path]).load("w"), np.ones((2, 2), np.float32))


@pytest.mark.parametrize("payload", [_CreatesFile, _CallsOpen])
def test_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    torch.save({"weight": torch.zeros(2, 2), "evil": payload(marker)}, path)
    with pytest.raises(CamelidError, match="refuses to run code from a checkpoint") as exc:
        open_tensor_files([path])
    assert ("system" in str(exc.value)) if payload is _CreatesFile else ("open" in str(exc.value))
    assert not marker.exists()


def test_hand_written_zip_with_stack_global_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    # protocol 4 uses STACK_GLOBAL; the archive mimics torch's layout so only the pickle is wrong.
    evil = pickle.dumps({"w": _CreatesFile(marker)}, protocol=4)
    path = tmp_path / "model.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model/data.pkl", evil)
        z.writestr("model/byteorder", "little")
    with pytest.raises(CamelidError, match="camelid refuses to run code"):
        safe_pickle.load_state_dict(path)
    assert not marker.exists()


def test_bare_pickle_file_is_not_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(pickle.dumps(_CreatesFile(marker), protocol=2))
    with pytest.raises(CamelidError, match="legacy"):
        open_tensor_files([path])
    assert not marker.exists()


def test_truncated_checkpoint_is_reported(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.randn(64, 64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CamelidError, match="truncated"):
        open_tensor_files([path])


def test_non_tensor_pickle_content_is_refused(tmp_path):
    buf = io.BytesIO()
    torch.save({"w": torch.ones(1), "opt": torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)}, buf)
    path = tmp_path / "ckpt.pth"
    path.write_bytes(buf.getvalue())
    with pytest.raises(CamelidError, match="refuses to run code"):
        open_tensor_files([path])
