"""Every SIMD path camelid ships, tested wherever this CPU can run it.

camelid chooses its integer dot product at run time (camelid.cpu.simd, camelid.cpu.amx): "amx" (VNNI
plus AMX tiles for prompts), "vnni", "avx512bw", "avx2", or "none" (the float32 kernels). The rest of the suite tests the path this CPU chooses; here each other
path the CPU can run is forced with CAMELID_SIMD in its own pytest process (with its own Numba cache,
camelid.compile_cache keys on the path) that runs the kernel tests and the end-to-end agreement with
llama.cpp, each within the mode tests/oracle/mode.py decides for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from llvmlite import binding as llvm_binding

from camelid.cpu import amx, simd

ROOT = Path(__file__).resolve().parent.parent
PATHS = ["amx", "vnni", "avx512bw", "avx2", "none"]
SUITES = ["tests/test_kernels.py", "tests/test_llama_cpp_agreement.py"]


def runnable(path: str) -> bool:
    features = llvm_binding.get_host_cpu_features()
    needs = simd._NEEDS["vnni"] + ("amx-tile", "amx-int8") if path == "amx" else simd._NEEDS.get(path, ())
    return all(features.get(f, False) for f in needs)


@pytest.mark.parametrize("path", [p for p in PATHS if p != amx.kernel_path()])
def test_forced_path_passes_the_kernel_and_agreement_tests(path):
    if not runnable(path):
        pytest.skip(f"this CPU cannot run the {path} instructions")
    if path == "vnni" and amx.kernel_path() == "amx":
        pytest.skip("the amx path is the vnni path plus AMX for Q4_0 and Q4_K prompts, which test_kernels compares with VNNI's")
    env = dict(os.environ, CAMELID_SIMD=path)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    summary = result.stdout[-6000:]
    print(summary)
    assert result.returncode == 0, f"CAMELID_SIMD={path}:\n{summary}\n{result.stderr[-2000:]}"
    assert f"camelid {path} kernels" in result.stdout, "the forced run did not use the path"
