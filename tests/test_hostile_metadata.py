"""Model files whose metadata lies about sizes: each is refused with one clear error before any kernel runs.

The kernels are compiled without bounds checks, so a head count, head size, RoPE dimension count,
context length or vocabulary size that disagrees with the tensors must never reach them. Each
hostile file is a tiny model (tests/tiny_gguf.py: head size 16, 4 heads over 2 key/value heads)
rewritten with one value changed. The CLI runs in a subprocess with Numba's bounds checks on and a
time limit, so a regression fails the test (an IndexError traceback, a crash or a hang) instead of
corrupting or stalling pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from tiny_gguf import write_tiny_model

from camelid.errors import CamelidError
from camelid.formats.gguf import open_gguf
from camelid.model.config import Config

ROOT = Path(__file__).resolve().parent.parent
V = gguf.GGUFValueType
U32, I32, F32, STR, ARRAY = V.UINT32, V.INT32, V.FLOAT32, V.STRING, V.ARRAY
DROP = object()


def rewrite(src: Path, dst: Path, keys: dict | None = None, tensors: dict | None = None) -> Path:
    """Copy the GGUF file src to dst with metadata keys replaced, added or dropped (key -> (value,
    type), (values, ARRAY, item type) or DROP) and tensors replaced, added or dropped (name -> array or DROP)."""
    keys, tensors = keys or {}, dict(tensors or {})
    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in keys:
            continue
        sub_type = field.types[1] if field.types[0] == ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type=sub_type)
    for name, change in keys.items():
        if change is not DROP:
            writer.add_key_value(name, change[0], change[1], sub_type=change[2] if len(change) > 2 else None)
    for t in reader.tensors:
        data = tensors.pop(t.name, np.array(t.data))
        if data is not DROP:
            writer.add_tensor(t.name, data)
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "tiny.gguf"
    write_tiny_model(path, "llama")  # n_embd 64, 4 heads of 16, 2 kv heads, n_ff 128, 266 tokens, 2 layers
    return path


@pytest.fixture(scope="module")
def base_qwen(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "tiny-qwen2.gguf"
    write_tiny_model(path, "qwen2")
    return path


def cli_run(path: Path) -> subprocess.CompletedProcess:
    # bounds-checked kernels get their own Numba cache: camelid.compile_cache keys on CAMELID_BOUNDSCHECK
    env = {**os.environ, "CAMELID_BOUNDSCHECK": "1"}
    return subprocess.run([sys.executable, "-m", "camelid", "run", "-m", str(path), "-p", "hi", "-n", "1"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("camelid: error: "), result.stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def config_of(path: Path) -> Config:
    f = open_gguf(path)
    return Config.from_metadata(f.metadata, {name: t.shape for name, t in f.tensors.items()}, f.path)


TOKENS = "tokenizer.ggml.tokens"

# name -> (metadata changes, tensor changes (callable of the tiny weights' shapes), words of the message)
CASES = {
    # the issue's probe: rope.dimension_count beyond the head size wrote past the RoPE buffer
    "rope-dim-128": ({"llama.rope.dimension_count": (128, U32)}, None, ("llama.rope.dimension_count", "128", "head size 16")),
    "rope-dim-1e6": ({"llama.rope.dimension_count": (10**6, U32)}, None, ("llama.rope.dimension_count", "1000000")),
    "rope-dim-2^32-1": ({"llama.rope.dimension_count": (2**32 - 1, U32)}, None, ("llama.rope.dimension_count", "4294967295")),
    "rope-dim-0": ({"llama.rope.dimension_count": (0, U32)}, None, ("llama.rope.dimension_count", "0")),
    "rope-dim-odd": ({"llama.rope.dimension_count": (15, U32)}, None, ("llama.rope.dimension_count", "15", "even")),
    "rope-dim-string": ({"llama.rope.dimension_count": ("16", STR)}, None, ("llama.rope.dimension_count", "not a whole number")),
    "head-count-0": ({"llama.attention.head_count": (0, U32)}, None, ("llama.attention.head_count", "0")),
    "head-count-negative": ({"llama.attention.head_count": (-4, I32)}, None, ("llama.attention.head_count", "-4")),
    "head-count-float": ({"llama.attention.head_count": (4.0, F32)}, None, ("llama.attention.head_count", "not a whole number")),
    "head-count-kv-0": ({"llama.attention.head_count_kv": (0, U32)}, None, ("llama.attention.head_count_kv", "0")),
    "head-count-kv-not-dividing": ({"llama.attention.head_count_kv": (3, U32)}, None, ("cannot be grouped", "3")),
    "head-count-kv-over-heads": ({"llama.attention.head_count_kv": (8, U32)}, None, ("cannot be grouped", "8")),
    "head-count-kv-too-many-for-attn_k": ({"llama.attention.head_count_kv": (4, U32)}, None, ("attn_k.weight", "shape")),
    "heads-not-dividing-embd": ({"llama.attention.head_count": (3, U32), "llama.attention.head_count_kv": (3, U32)},
                                None, ("not a multiple of the 3 heads",)),
    "head-size-128": ({"llama.attention.key_length": (128, U32)}, None, ("attn_q.weight", "shape")),
    "head-size-0": ({"llama.attention.key_length": (0, U32)}, None, ("llama.attention.key_length", "0")),
    "value-length-differs": ({"llama.attention.value_length": (32, U32)}, None, ("llama.attention.value_length",)),
    "embedding-length-128": ({"llama.embedding_length": (128, U32)}, None, ("token_embd.weight", "shape")),
    "ffn-length-4096": ({"llama.feed_forward_length": (4096, U32)}, None, ("ffn_gate.weight", "shape")),
    "block-count-0": ({"llama.block_count": (0, U32)}, None, ("llama.block_count", "0")),
    "block-count-3": ({"llama.block_count": (3, U32)}, None, ("blk.2.", "missing")),
    "context-length-0": ({"llama.context_length": (0, U32)}, None, ("llama.context_length", "0")),
    "context-length-negative": ({"llama.context_length": (-1, I32)}, None, ("llama.context_length", "-1")),
    "rope-base-negative": ({"llama.rope.freq_base": (-10000.0, F32)}, None, ("llama.rope.freq_base",)),
    "rope-base-nan": ({"llama.rope.freq_base": (float("nan"), F32)}, None, ("llama.rope.freq_base", "finite")),
    "vocab-size-key": ({"llama.vocab_size": (100000, U32)}, None, ("llama.vocab_size", "100000", "266 rows")),
    "tokens-longer-than-embd": (None, {"token_embd.weight": (200, 64), "output.weight": (200, 64)}, ("266 tokens", "200 rows")),
    "tokens-shorter-than-embd": (None, {"token_embd.weight": (300, 64), "output.weight": (300, 64)}, ("266 tokens", "300 rows")),
    "output-rows-differ": (None, {"output.weight": (300, 64)}, ("output.weight", "(300, 64)")),
    "embd-columns-differ": (None, {"token_embd.weight": (266, 32)}, ("token_embd.weight", "(266, 32)")),
    "attn_q-transposed": (None, {"blk.1.attn_q.weight": (64, 32)}, ("blk.1.attn_q.weight", "shape")),
    "attn_v-rows": (None, {"blk.0.attn_v.weight": (64, 64)}, ("blk.0.attn_v.weight", "shape")),
    "ffn_down-transposed": (None, {"blk.0.ffn_down.weight": (128, 64)}, ("blk.0.ffn_down.weight", "shape")),
    "rope-freqs-size": (None, {"rope_freqs.weight": (16,)}, ("rope_freqs.weight", "shape")),
    "token-texts-are-numbers": ({TOKENS: (list(range(266)), ARRAY, U32)}, None, ("tokenizer.ggml.tokens",)),
}
# Cases the config accepts and the loader refuses, comparing each weight's shape with the config's.
LATER_CASES = {"head-count-kv-too-many-for-attn_k", "head-size-128", "ffn-length-4096", "block-count-3",
               "attn_q-transposed", "attn_v-rows", "ffn_down-transposed", "rope-freqs-size"}


def hostile_file(name: str, base: Path, directory: Path) -> Path:
    keys, shapes, _ = CASES[name]
    tensors = {n: np.full(shape, 0.01, np.float32) for n, shape in (shapes or {}).items()}
    return rewrite(base, directory / f"{name}.gguf", keys, tensors)


def test_rewrite_keeps_a_valid_model_valid(base, tmp_path):
    """The harness itself: an unchanged rewrite loads, so each case's error comes from its one change."""
    copy = rewrite(base, tmp_path / "copy.gguf")
    assert config_of(copy) == config_of(base)
    assert config_of(base).rope_dim == config_of(base).head_dim == 16


@pytest.mark.parametrize("name", sorted(set(CASES) - LATER_CASES))
def test_config_refuses(name, base, tmp_path):
    with pytest.raises(CamelidError) as e:
        config_of(hostile_file(name, base, tmp_path))
    assert "\n" not in str(e.value)
    for word in CASES[name][2]:
        assert word in str(e.value)


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_run_refuses_with_one_line(name, base, tmp_path):
    result = cli_run(hostile_file(name, base, tmp_path))
    assert_one_line_error(result, *CASES[name][2])


def test_qwen2_with_only_some_biases(base_qwen, tmp_path):
    path = rewrite(base_qwen, tmp_path / "no-k-bias.gguf", tensors={"blk.1.attn_k.bias": DROP})
    assert_one_line_error(cli_run(path), "layer 1", "biases")


def test_tensor_with_too_many_dimensions(base, tmp_path):
    path = rewrite(base, tmp_path / "five-dims.gguf", tensors={"extra.weight": np.zeros((1, 1, 1, 2, 32), np.float32)})
    assert_one_line_error(cli_run(path), "extra.weight", "5 dimensions")


def test_tensor_larger_than_ggml_can_index(base, tmp_path):
    """ne of 2^40 x 2^40 overflowed NumPy's int64 product to 0 rows, which passed the size check."""
    path = rewrite(base, tmp_path / "huge.gguf", tensors={"extra.weight": np.zeros((1, 32), np.float32)})
    data = bytearray(path.read_bytes())
    name = b"extra.weight"
    at = data.index(len(name).to_bytes(8, "little") + name) + 8 + len(name)
    assert int.from_bytes(data[at:at + 4], "little") == 2  # n_dims, then ne0 = 32 and ne1 = 1
    data[at + 4:at + 12] = (1 << 40).to_bytes(8, "little")
    data[at + 12:at + 20] = (1 << 40).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    assert_one_line_error(cli_run(path), "extra.weight")


def test_valid_tiny_model_still_runs(base):
    """The validation refuses only what is wrong: the unchanged file generates (with the shared kernel cache)."""
    result = subprocess.run([sys.executable, "-m", "camelid", "run", "-m", str(base), "-p", "hi", "-n", "1", "--temp", "0"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
