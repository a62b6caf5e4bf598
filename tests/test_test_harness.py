"""The test harness itself: the oracle's child process, its build flags, the mode, child processes
that die with the test process, and the Numba cache key."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import oracle
from oracle.install import choose
from oracle.mode import build_name

ZEN4 = set("fpu sse sse2 avx avx2 fma f16c bmi2 avx512f avx512dq avx512bw avx512vl avx512_vnni avx512vbmi avx512_bf16".split())
XEON_AMX = ZEN4 | {"amx_tile", "amx_int8", "amx_bf16", "avx512_fp16", "avx_vnni"}
ZEN2 = set("fpu sse sse2 avx avx2 fma f16c bmi2".split())


def test_a_crash_in_llama_cpp_fails_one_call_and_the_next_call_works():
    lib = oracle.ggml()
    raw = np.zeros((1, 36), np.uint8)  # two Q4_0 blocks for a row that has one: ggml asserts and aborts
    with pytest.raises(oracle.OracleCrashed, match="SIGABRT"):
        lib.mul_mat(T.Q4_0, raw, np.zeros((1, 32), np.float32))
    assert "avx" in lib.build()


def test_errors_in_the_worker_come_back_as_errors():
    with pytest.raises(oracle.OracleError, match="FileNotFoundError"):
        oracle.Llama("/nonexistent/model.gguf").load()


def test_oracle_flags_never_enable_amx_and_follow_the_cpu():
    name, args = choose(XEON_AMX, "x86_64")
    assert name == "avx512-vnni-vbmi-bf16"
    assert {"-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF",
            "-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON"} <= set(args)
    assert choose(ZEN4, "x86_64")[0] == "avx512-vnni-vbmi-bf16"
    name, args = choose(ZEN2, "x86_64")
    assert name == "avx2" and "-DGGML_AVX512=OFF" in args and "-DGGML_AVX2=ON" in args
    name, args = choose({"fpu", "sse2"}, "x86_64")
    assert name == "x86-64" and "-DGGML_AVX=OFF" in args and "-DGGML_AVX2=OFF" in args
    assert choose(set(), "aarch64")[0] == "aarch64-native"


def test_build_names_round_trip():
    assert build_name({"avx": True, "avx2": True, "fma": True, "f16c": True, "avx512": True, "avx512_vnni": True,
                       "avx512_vbmi": True, "avx512_bf16": True}) == "avx512-vnni-vbmi-bf16"
    assert build_name({"avx": True, "avx2": True, "fma": True, "f16c": True, "avx512": False}) == "avx2"
    assert build_name({"avx": False, "avx2": False}) == "x86-64"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_children_die_with_the_test_process(tmp_path):
    # a stand-in for a test process: it starts a long-lived child, then is killed with SIGKILL
    script = textwrap.dedent(f"""
        import subprocess, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from child_processes import tie_children_to_this_process
        tie_children_to_this_process()
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        print(child.pid, flush=True)
        time.sleep(300)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(100):
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{child_pid}/stat") as f:
            if f.read().split(")")[-1].split()[0] == "Z":  # dead, waiting to be reaped by init
                return
        time.sleep(0.05)
    os.kill(child_pid, signal.SIGKILL)
    pytest.fail("the child outlived its killed parent")


def test_numba_cache_key_follows_inlined_helpers_and_switches(tmp_path, monkeypatch):
    from camelid import compile_cache

    package = tmp_path / "camelid"
    shutil.copytree(compile_cache._PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(compile_cache, "_PACKAGE", package)
    monkeypatch.delenv("CAMELID_SIMD", raising=False)
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    key = compile_cache.cache_key()
    helper = package / "cpu" / "ggml_math.py"  # inlined into the kernels of other files
    helper.write_text(helper.read_text() + "\n# an edit\n")
    edited = compile_cache.cache_key()
    assert edited != key
    (package / "cli" / "chat.py").write_text("# no kernels here\n")
    assert compile_cache.cache_key() == edited  # files without Numba code do not matter
    monkeypatch.setenv("CAMELID_SIMD", "none")
    assert compile_cache.cache_key() != edited
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    assert compile_cache.cache_dir().parent == tmp_path / "numba"


def test_the_kernels_are_cached_under_the_keyed_directory():
    import numba

    import camelid  # noqa: F401 - configures the cache
    from camelid import compile_cache

    assert numba.config.CACHE_DIR == str(compile_cache.cache_dir())
