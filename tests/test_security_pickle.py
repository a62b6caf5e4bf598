"""Hostile torch checkpoints, built byte by byte: none may run code, read another file, change how a
later checkpoint reads, or make the reader allocate more than the archive holds."""

from __future__ import annotations

import copyreg
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from camelid.errors import CamelidError
from camelid.formats import safe_pickle
from camelid.formats.hf import open_tensor_files

SECRET = b"root:x:0:0:SECRET-FROM-ANOTHER-FILE:/root:/bin/bash\n"


# ---- a tiny pickle assembler ----------------------------------------------------------------------


def _str(s: str) -> bytes:
    b = s.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(b)) + b


def _int(n: int) -> bytes:
    return pickle.BININT + struct.pack("<i", n)


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _tuple(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def _call(func: bytes, *args: bytes) -> bytes:
    return func + _tuple(*args) + pickle.REDUCE


def _storage(key: str, numel: int, kind: str = "ByteStorage") -> bytes:
    """A persistent id as torch writes it: ('storage', torch.<kind>, key, 'cpu', numel)."""
    return _tuple(_str("storage"), _global("torch", kind), _str(key), _str("cpu"), _int(numel)) + pickle.BINPERSID


def _tensor(storage: bytes, n: int, offset: int = 0) -> bytes:
    """torch._utils._rebuild_tensor_v2(storage, offset, (n,), (1,)): a 1-D tensor of n elements."""
    return _call(_global("torch._utils", "_rebuild_tensor_v2"), storage, _int(offset), _tuple(_int(n)), _tuple(_int(1)))


def _state_dict(**tensors: bytes) -> bytes:
    """PROTO 2, then a dict {name: tensor-expression}, then STOP."""
    items = b"".join(_str(name) + value for name, value in tensors.items())
    return pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.MARK + items + pickle.SETITEMS + pickle.STOP


def _checkpoint(path: Path, pkl: bytes, storages: dict[str, bytes] | None = None,
                compress: int = zipfile.ZIP_STORED) -> Path:
    """A zip laid out like torch.save's: archive/data.pkl, archive/byteorder, archive/data/<key>."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl, compress_type=compress)
        z.writestr("archive/byteorder", "little")
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data)
    return path


def _assert_no_secret(exc: BaseException):
    assert b"SECRET" not in str(exc).encode()


@pytest.fixture
def secret(tmp_path) -> Path:
    p = tmp_path / "passwd"
    p.write_bytes(SECRET)
    return p


def test_hand_built_checkpoint_reads(tmp_path):
    data = bytes(range(16))
    path = _checkpoint(tmp_path / "ok.pth", _state_dict(w=_tensor(_storage("0", 16), 8, offset=4)), {"0": data})
    (name, t), = safe_pickle.load_state_dict(path).items()
    assert name == "w"
    np.testing.assert_array_equal(t.read(), np.arange(4, 12, dtype=np.uint8))


# ---- finding 1: BUILD rewrote a storage's path, offset and size -----------------------------------


def test_build_on_a_storage_cannot_read_another_file(tmp_path, secret):
    # BUILD with a tuple state is what a frozen slots dataclass's __setstate__ takes: (path, offset, n_bytes, kind).
    steered = _storage("0", 4) + _tuple(_str(str(secret)), _int(0), _int(len(SECRET)), _global("torch", "ByteStorage")) + pickle.BUILD
    path = _checkpoint(tmp_path / "evil.pth", _state_dict(w=_tensor(steered, len(SECRET))), {"0": b"\0" * 4})
    with pytest.raises(CamelidError, match="refuses") as exc:
        tensors = safe_pickle.load_state_dict(path)
        for t in tensors.values():  # what the old reader returned: the other file's bytes
            assert SECRET not in t.read().tobytes()
    _assert_no_secret(exc.value)


@pytest.mark.parametrize("target", [
    _global("torch", "ByteStorage"),
    _global("torch._utils", "_rebuild_tensor_v2"),
    pickle.EMPTY_DICT,
    pickle.EMPTY_LIST,
    _tensor(_storage("0", 4), 4),
])
def test_build_is_refused_on_every_object_of_ours(tmp_path, target):
    state = _tuple(pickle.NONE, pickle.EMPTY_DICT + _str("name") + _str("BFloat16Storage") + pickle.SETITEM)
    path = _checkpoint(tmp_path / "evil.pth", _state_dict(w=target + state + pickle.BUILD), {"0": b"\0" * 4})
    with pytest.raises(CamelidError, match="refuses"):
        safe_pickle.load_state_dict(path)


def test_a_refused_checkpoint_does_not_change_how_the_next_one_reads(tmp_path):
    # Rename the storage type torch.HalfStorage to BFloat16Storage (its dtype stays f2), then fail.
    rename = _global("torch", "HalfStorage") + _tuple(_str("BFloat16Storage")) + pickle.BUILD + pickle.POP
    slots = _global("torch._utils", "_rebuild_tensor_v2") + _tuple(
        pickle.NONE, pickle.EMPTY_DICT + _str("__defaults__") + _tuple(_int(7)) + pickle.SETITEM) + pickle.BUILD + pickle.POP
    evil = pickle.PROTO + b"\x02" + rename + slots + _call(_global("os", "system"), _str("true")) + pickle.STOP
    with pytest.raises(CamelidError):
        safe_pickle.load_state_dict(_checkpoint(tmp_path / "evil.pth", evil))
    halves = np.array([1.5, -2.0, 65504.0], "<f2")
    good = _checkpoint(tmp_path / "good.pth", _state_dict(w=_tensor(_storage("0", 3, "HalfStorage"), 3)), {"0": halves.tobytes()})
    source = open_tensor_files([good])
    assert source.load("w").dtype == np.float16
    np.testing.assert_array_equal(source.load("w"), halves)


# ---- storages must lie inside the archive entry they name ------------------------------------------


@pytest.mark.parametrize("tensor, message", [
    (_tensor(_storage("0", 8), 8, offset=4), "reach past its storage"),         # offset + size past the entry
    (_tensor(_storage("0", 8), 1, offset=-1), "reach past its storage|negative"),
    (_tensor(_storage("0", 1 << 30), 1 << 30), "more bytes than"),              # numel larger than the entry
    (_tensor(_storage("1", 8), 8), "lacks"),                                     # a key with no entry
    (_tensor(_storage("../../../../etc/passwd", 8), 8), "lacks"),
    (_call(_global("torch._utils", "_rebuild_tensor_v2"), _storage("0", 8), _int(0), _tuple(_int(1 << 20), _int(1 << 20)),
           _tuple(_int(0), _int(0))), "reach past its storage|zero strides"),
])
def test_storage_outside_its_archive_entry_is_refused(tmp_path, tensor, message):
    path = _checkpoint(tmp_path / "evil.pth", _state_dict(w=tensor), {"0": bytes(8)})
    with pytest.raises(CamelidError, match=message):
        safe_pickle.load_state_dict(path)


def test_storage_entry_past_the_end_of_the_file_is_refused(tmp_path):
    path = _checkpoint(tmp_path / "cut.pth", _state_dict(w=_tensor(_storage("0", 1000), 1000)), {"0": bytes(1000)})
    _patch_sizes(path, "archive/data/0", 1 << 30, compressed_too=True)
    with pytest.raises(CamelidError, match="past the end"):
        open_tensor_files([path])


# ---- finding 5: zip bombs -----------------------------------------------------------------------------


def _patch_sizes(path: Path, name: str, size: int, compressed_too: bool = False):
    """Rewrite the uncompressed (and optionally compressed) size of entry `name` in its local header and
    in the central directory."""
    data = bytearray(path.read_bytes())
    # signature, offset of the compressed size, offset of the name
    for signature, csize_at, name_at in ((b"PK\x03\x04", 18, 30), (b"PK\x01\x02", 20, 46)):
        at = data.index(signature)
        while data[at + name_at:at + name_at + len(name)] != name.encode():
            at = data.index(signature, at + 4)
        fields = (csize_at, csize_at + 4) if compressed_too else (csize_at + 4,)
        for field in fields:
            data[at + field:at + field + 4] = struct.pack("<I", size)
    path.write_bytes(bytes(data))


def test_zip_entry_declaring_a_huge_size_is_refused_before_reading(tmp_path):
    pkl = _state_dict(w=_tensor(_storage("0", 4), 4))
    path = _checkpoint(tmp_path / "bomb.pth", pkl, {"0": bytes(4)}, compress=zipfile.ZIP_DEFLATED)
    _patch_sizes(path, "archive/data.pkl", 0xFFFF_FFF0)
    with pytest.raises(CamelidError, match="data.pkl.*(bytes|large)"):
        safe_pickle.load_state_dict(path)


def test_zip_entry_that_inflates_past_its_declared_size_is_refused(tmp_path):
    # The entry says 64 bytes; its deflated stream holds 64 MiB. Only the declared size may be read.
    path = tmp_path / "bomb.pth"
    _checkpoint(path, pickle.PROTO + b"\x02" + pickle.MARK * (64 << 20) + pickle.STOP, compress=zipfile.ZIP_DEFLATED)
    _patch_sizes(path, "archive/data.pkl", 64)
    with pytest.raises(CamelidError, match="corrupt"):
        safe_pickle.load_state_dict(path)


def _peak_rss_mb_of(code: str) -> float:
    """Run code in a fresh Python under a 2 GB address-space limit; the child's peak resident memory in MB."""
    script = (
        "import resource, sys\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"  # a forked child starts with its parent's peak
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        + code +
        "\nprint(int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.split()[-1])


def test_zip_bomb_pickle_stays_small_in_memory(tmp_path):
    # A few hundred KB on disk, 512 MiB inflated: EMPTY_LIST/APPEND pairs that would build a 16 GB list.
    path = tmp_path / "bomb.pth"
    chunk = (pickle.EMPTY_LIST + pickle.APPEND) * (8 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("archive/data.pkl", "w") as f:
            f.write(pickle.PROTO + b"\x02" + pickle.EMPTY_LIST)
            for _ in range(32):
                f.write(chunk)
            f.write(pickle.STOP)
    assert path.stat().st_size < 8 << 20
    code = (
        "from camelid.errors import CamelidError\n"
        "from camelid.formats import safe_pickle\n"
        "try:\n"
        f"    safe_pickle.load_state_dict({str(path)!r})\n"
        "    sys.exit('the bomb was read')\n"
        "except CamelidError as e:\n"
        "    assert 'data.pkl' in str(e), str(e)\n"
    )
    assert _peak_rss_mb_of(code) < 1000


# ---- the code-execution vectors the probe tried stay refused and run nothing ------------------------


def _vectors(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}"
    py = f"open({str(marker)!r}, 'w').close()"
    p2 = pickle.PROTO + b"\x02"
    p4 = pickle.PROTO + b"\x04"
    return {
        "os.system": p2 + _call(_global("os", "system"), _str(cmd)) + pickle.STOP,
        "posix.system": p2 + _call(_global("posix", "system"), _str(cmd)) + pickle.STOP,
        "builtins.eval": p2 + _call(_global("builtins", "eval"), _str(py)) + pickle.STOP,
        "builtins.exec": p2 + _call(_global("builtins", "exec"), _str(py)) + pickle.STOP,
        "__builtin__.eval": p2 + _call(_global("__builtin__", "eval"), _str(py)) + pickle.STOP,
        "getattr chain": p2 + _call(_call(_global("builtins", "getattr"), _call(_global("builtins", "__import__"), _str("os")),
                                          _str("system")), _str(cmd)) + pickle.STOP,
        "subprocess.Popen": p2 + _call(_global("subprocess", "Popen"), _tuple(_str("touch"), _str(str(marker)))) + pickle.STOP,
        "subprocess.check_call": p2 + _call(_global("subprocess", "check_call"), _str(cmd)) + pickle.STOP,
        "STACK_GLOBAL": p4 + _str("os") + _str("system") + pickle.STACK_GLOBAL + _tuple(_str(cmd)) + pickle.REDUCE + pickle.STOP,
        "INST": p2 + pickle.MARK + _str(cmd) + pickle.INST + b"os\nsystem\n" + pickle.STOP,
        "OBJ": p2 + pickle.MARK + _global("os", "system") + _str(cmd) + pickle.OBJ + pickle.STOP,
        "NEWOBJ": p2 + _global("subprocess", "Popen") + _tuple(_str(cmd)) + pickle.NEWOBJ + pickle.STOP,
        "EXT1 (registered)": p2 + pickle.EXT1 + bytes([0xF3]) + _tuple(_str(cmd)) + pickle.REDUCE + pickle.STOP,
        "PERSID": p2 + pickle.PERSID + cmd.encode() + b"\n" + pickle.STOP,
        "copyreg._reconstructor": p2 + _call(_global("copyreg", "_reconstructor"), _global("subprocess", "Popen"),
                                             _global("builtins", "object"), pickle.NONE) + pickle.STOP,
        "numpy _reconstruct": p2 + _call(_global("numpy.core.multiarray", "_reconstruct"), _global("numpy", "ndarray"),
                                         _tuple(_int(0)), _str("b")) + pickle.STOP,
        "numpy.load": p2 + _call(_global("numpy", "load"), _str(str(marker)), pickle.NEWTRUE) + pickle.STOP,
        "protocol-5 buffer": pickle.PROTO + b"\x05" + pickle.NEXT_BUFFER + pickle.STOP,
        "protocol-5 readonly buffer": pickle.PROTO + b"\x05" + _str("x") + pickle.READONLY_BUFFER + pickle.STOP,
        "nested pickle.loads": p2 + _call(_global("pickle", "loads"), pickle.SHORT_BINBYTES + b"\x01" + b".") + pickle.STOP,
        "torch.load": p2 + _call(_global("torch", "load"), _str(str(marker))) + pickle.STOP,
        "BUILD __setstate__ on a storage type": p2 + _global("torch", "FloatStorage") + _tuple(_str(cmd)) + pickle.BUILD + pickle.STOP,
    }


VECTOR_NAMES = list(_vectors(Path("x")))


@pytest.fixture
def registered_extension():
    """copyreg extension code 0xF3 -> os.system, as another library might have registered one."""
    copyreg.add_extension("os", "system", 0xF3)
    yield
    copyreg.remove_extension("os", "system", 0xF3)


@pytest.mark.parametrize("name", VECTOR_NAMES, ids=VECTOR_NAMES)
def test_code_execution_vectors_are_refused_and_run_nothing(tmp_path, name, registered_extension):
    marker = tmp_path / "pwned"
    path = _checkpoint(tmp_path / "evil.pth", _vectors(marker)[name])
    with pytest.raises(CamelidError):
        safe_pickle.load_state_dict(path)
    assert not marker.exists()
    assert len(VECTOR_NAMES) >= 22


def test_legacy_pickle_file_is_not_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(_vectors(marker)["os.system"])
    with pytest.raises(CamelidError, match="legacy"):
        open_tensor_files([path])
    assert not marker.exists()


def test_returned_objects_refuse_changes(tmp_path):
    path = _checkpoint(tmp_path / "ok.pth", _state_dict(w=_tensor(_storage("0", 4), 4)), {"0": bytes(4)})
    (t,) = safe_pickle.load_state_dict(path).values()
    for obj in (t, t.storage, t.storage.kind):
        assert not hasattr(obj, "__setstate__")
        with pytest.raises(AttributeError):
            obj.offset = 0
    assert os.path.samefile(t.storage.path, path)


@pytest.mark.parametrize("shape, n_bytes", [([1 << 32, 1 << 32], 0), ([-1, -4], 16)], ids=["overflowing", "negative"])
def test_safetensors_shape_that_wraps_around_is_refused(tmp_path, shape, n_bytes):
    # np.prod in int64 made 2**64 elements 0 bytes, and (-1, -4) 16 bytes, matching the data offsets.
    header = json.dumps({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, n_bytes]}}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(n_bytes))
    with pytest.raises(CamelidError, match="has a shape"):
        open_tensor_files([path])
