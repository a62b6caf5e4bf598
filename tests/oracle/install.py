"""Build and install llama-cpp-python, the tests' oracle, for this CPU with explicit flags.

`pip install llama-cpp-python` compiles ggml with -march=native. On an Intel Xeon with AMX that build
takes ggml's AMX path, which crashes on quantized models; and pip's wheel cache hands every later
install whatever flavour was built first. So this script chooses the flags from the CPU's own list:

- "avx512-vnni": AVX-512 F/BW/VL with VNNI (plus VBMI and BF16 where the CPU has them) — the build
  camelid's kernels reproduce bit for bit;
- "avx2": AVX2, FMA, F16C (plus BMI2 where present);
- "x86-64": the plain baseline, no AVX;
- on other architectures, ggml's native build (there is no AMX to avoid).

AMX is always off. Each flag set's wheel is built once (about 5 minutes on 2 cores) and kept in
~/.cache/camelid/oracle/<version>-<flag set>/; installing a kept wheel takes seconds. The source
distribution is kept beside them (tests read llama.cpp's own files from it: tests/oracle/source.py). Run it as
`python tests/oracle/install.py`; `--print` only prints the flag set and CMake arguments.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

VERSION = "0.3.36"
_ALWAYS = ["-DGGML_NATIVE=OFF", "-DLLAVA_BUILD=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF",
           "-DGGML_AMX_BF16=OFF", "-DGGML_AVX_VNNI=OFF", "-DGGML_CPU_ALL_VARIANTS=OFF", "-DGGML_BACKEND_DL=OFF"]


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo names them (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose(flags: set[str], machine: str | None = None) -> tuple[str, list[str]]:
    """(flag set name, CMake arguments) for a CPU with these /proc/cpuinfo flags."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64"):
        return f"{machine}-native", ["-DGGML_NATIVE=ON", "-DLLAVA_BUILD=OFF"]

    def on(option: str, flag_on: bool) -> str:
        return f"-DGGML_{option}={'ON' if flag_on else 'OFF'}"

    avx2 = {"avx", "avx2", "fma", "f16c"} <= flags
    avx512 = avx2 and {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= flags
    if avx512:
        name = "avx512-vnni" + "".join(f"-{x}" for x, f in (("vbmi", "avx512vbmi"), ("bf16", "avx512_bf16")) if f in flags)
    else:
        name = "avx2" if avx2 else "x86-64"
    args = [on("SSE42", avx2), on("AVX", avx2), on("AVX2", avx2), on("FMA", avx2), on("F16C", avx2),
            on("BMI2", avx2 and "bmi2" in flags), on("AVX512", avx512), on("AVX512_VNNI", avx512),
            on("AVX512_VBMI", avx512 and "avx512vbmi" in flags), on("AVX512_BF16", avx512 and "avx512_bf16" in flags)]
    return name, _ALWAYS + args


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "camelid" / "oracle"


def cache_dir(name: str) -> Path:
    return cache_root() / f"{VERSION}-{name}"


def sdist_path() -> Path:
    return cache_root() / f"llama_cpp_python-{VERSION}.tar.gz"


def ensure_sdist() -> Path:
    """llama-cpp-python's source distribution (llama.cpp under vendor/llama.cpp), downloaded once."""
    path = sdist_path()
    if not path.exists():
        with tempfile.TemporaryDirectory() as tmp:
            pip("download", "--no-deps", "--no-binary", ":all:", f"llama-cpp-python=={VERSION}", "-d", tmp)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(next(Path(tmp).glob("llama_cpp_python-*")), path)
    return path


def installed_from() -> str | None:
    """The file URL the installed llama-cpp-python came from (PEP 610), or None."""
    try:
        text = metadata.distribution("llama-cpp-python").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    return json.loads(text).get("url") if text else None


def pip(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env=env)


def build_wheel(directory: Path, cmake_args: list[str]) -> Path:
    """Compile the wheel into directory. pip's own wheel cache is bypassed: it keys on the source,
    not on CMAKE_ARGS, and would hand back another flag set's build."""
    env = dict(os.environ, CMAKE_ARGS=" ".join(cmake_args), CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
    env.pop("FORCE_CMAKE", None)
    pip("wheel", "--no-deps", "--no-cache-dir", "-w", str(directory), str(ensure_sdist()), env=env)
    return next(directory.glob("llama_cpp_python-*.whl"))


def main(argv: list[str]) -> int:
    name, cmake_args = choose(cpu_flags())
    print(f"llama.cpp oracle: flag set {name}: CMAKE_ARGS={' '.join(cmake_args)}", flush=True)
    if "--print" in argv:
        return 0
    print(f"llama.cpp oracle: source {ensure_sdist()}", flush=True)
    directory = cache_dir(name)
    wheel = next(directory.glob("llama_cpp_python-*.whl"), None)
    if wheel is None:
        print(f"llama.cpp oracle: building the {name} wheel into {directory} (about 5 minutes on 2 cores)", flush=True)
        directory.mkdir(parents=True, exist_ok=True)
        wheel = build_wheel(directory, cmake_args)
    if installed_from() == wheel.as_uri():
        print(f"llama.cpp oracle: {wheel.name} ({name}) is installed", flush=True)
        return 0
    pip("install", "--force-reinstall", "--no-deps", str(wheel))
    pip("install", str(wheel))  # its dependencies, where missing
    print(f"llama.cpp oracle: installed {wheel.name} ({name})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
