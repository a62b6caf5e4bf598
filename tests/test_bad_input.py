"""Files and prompts a user can get wrong: one clear message, exit status 1, no traceback, no hang.

Each case is run twice: through the Python API (it must raise CamelidError) and through the CLI in
a subprocess (one `camelid: error:` line on stderr, exit status 1).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter
from tiny_gguf import write_tiny_model

import camelid
from camelid.errors import CamelidError
from camelid.formats.gguf import open_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    write_tiny_model(path, "llama")
    return path


def write_bad_model(path, arch="llama", bad_type=None):
    """A one-layer model with a chosen architecture name, or one tensor of an unsupported type."""
    w = GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.context_length", 64)
    w.add_uint32(f"{arch}.embedding_length", 256)
    w.add_uint32(f"{arch}.block_count", 1)
    w.add_uint32(f"{arch}.feed_forward_length", 256)
    w.add_uint32(f"{arch}.attention.head_count", 4)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "default")
    w.add_array("tokenizer.ggml.tokens", [chr(0x100 + i) for i in range(16)])
    w.add_array("tokenizer.ggml.merges", ["\u0100 \u0101"])
    if bad_type is None:
        w.add_tensor("token_embd.weight", np.zeros((16, 256), np.float32))
    else:  # Q2_K: 256 weights in 84 bytes
        w.add_tensor("token_embd.weight", np.zeros((16, 84), np.uint8), raw_dtype=bad_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def cli_error(*args) -> str:
    result = subprocess.run([sys.executable, "-m", "camelid", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("camelid: error: "), result.stderr
    return lines[0]


def make_case(name, tmp_path, tiny):
    """Build the bad file for a case; return (path, words the message must contain)."""
    path = tmp_path / f"{name}.gguf"
    if name == "missing":
        return tmp_path / "nowhere.gguf", "not found"
    if name == "directory":
        return tmp_path, "directory"
    if name == "text-file":
        path.write_text("this is not a model\n")
        return path, "not a GGUF file"
    if name == "legacy-ggjt":
        path.write_bytes(b"tjgg" + b"\x01\x00\x00\x00" + bytes(64))
        return path, "legacy ggjt"
    if name == "truncated-header":
        path.write_bytes(tiny.read_bytes()[:200])
        return path, "truncated"
    if name == "truncated-data":
        data = tiny.read_bytes()
        path.write_bytes(data[: len(data) - 1000])
        return path, "truncated"
    if name == "unsupported-arch":
        return write_bad_model(path, arch="falcon"), "architecture 'falcon' is not supported"
    if name == "unsupported-type":
        return write_bad_model(path, bad_type=GGMLQuantizationType.Q2_K), "Q2_K"
    if name == "future-version":
        data = bytearray(tiny.read_bytes())
        data[4:8] = (7).to_bytes(4, "little")
        path.write_bytes(bytes(data))
        return path, "version 7"
    raise AssertionError(name)


CASES = ["missing", "directory", "text-file", "legacy-ggjt", "truncated-header", "truncated-data",
         "unsupported-arch", "unsupported-type", "future-version"]


@pytest.mark.parametrize("case", CASES)
def test_bad_model_file_api(case, tmp_path, tiny):
    path, words = make_case(case, tmp_path, tiny)
    with pytest.raises(CamelidError, match=words):
        camelid.load(path, show_progress=False)


@pytest.mark.parametrize("case", CASES)
def test_bad_model_file_cli(case, tmp_path, tiny):
    path, words = make_case(case, tmp_path, tiny)
    assert words in cli_error("run", "-m", str(path), "-p", "hello", "-n", "4")


def test_gguf_version_2_loads(tmp_path, tiny):
    v2 = tmp_path / "v2.gguf"
    data = bytearray(tiny.read_bytes())
    data[4:8] = (2).to_bytes(4, "little")  # v2 and v3 share the little-endian layout
    v2.write_bytes(bytes(data))
    assert open_gguf(v2).version == 2
    model = camelid.load(v2, show_progress=False)
    ref = camelid.load(tiny, show_progress=False)
    tokens = [5, 9, 70]
    np.testing.assert_array_equal(model.forward(tokens, model.new_cache()), ref.forward(tokens, ref.new_cache()))


def test_prompt_longer_than_context(tiny):
    model = camelid.load(tiny, n_ctx=16, show_progress=False)
    with pytest.raises(CamelidError, match="context"):
        model.complete("abc " * 40, max_tokens=4)
    assert "context" in cli_error("run", "-m", str(tiny), "-c", "16", "-p", "abc " * 40)


def test_non_utf8_prompt_file(tmp_path, tiny):
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes("你好".encode("gbk"))
    assert "not UTF-8" in cli_error("run", "-m", str(tiny), "-f", str(prompt))


def test_unreadable_file_is_reported_not_crashed(tmp_path, tiny):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions")
    locked = tmp_path / "locked.gguf"
    shutil.copy(tiny, locked)
    locked.chmod(0)
    assert "permission" in cli_error("run", "-m", str(locked), "-p", "hi")


def test_unknown_chat_template_name(tiny):
    with pytest.raises(CamelidError, match="chatml"):
        camelid.load(tiny, chat_template="vicuna-9000", show_progress=False)


@pytest.mark.parametrize("flag, value", [("--temp", "nan"), ("--top-p", "1.5"), ("--repeat-penalty", "0")])
def test_bad_sampling_values(tiny, flag, value):
    cli_error("run", "-m", str(tiny), "-p", "hi", "-n", "2", flag, value)
