"""Peak memory and time of `camelid merge-lora` on a big checkpoint, measured from outside the process.

    python benchmarks/make_7b_hf_checkpoint.py /tmp/ckpt7b          # once: ~14 GB
    nice -n 19 python benchmarks/merge_memory.py /tmp/ckpt7b/base /tmp/ckpt7b/lora -o /tmp/zh-7b-f16.gguf

Runs the merge in a subprocess and samples /proc/PID/status (VmRSS; RssAnon, the process's own
memory; RssFile, mapped file pages) every 50 ms, then reads the kernel's own peak, VmHWM, and
getrusage's ru_maxrss of the child. The output is deleted afterwards unless --keep. The old
merge_llama_with_chinese_lora_low_mem.py needed about 15 GB for 7B; the target here is under 2 GB.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def read_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status (VmRSS, VmHWM, RssAnon, RssFile...), empty once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="Measure peak RSS and time of camelid merge-lora.")
    parser.add_argument("base", help="base HF checkpoint directory")
    parser.add_argument("lora", nargs="+", help="LoRA adapter directories, in order")
    parser.add_argument("-o", "--outfile", required=True, help="output path (deleted afterwards unless --keep)")
    parser.add_argument("--outtype", default="f16")
    parser.add_argument("--format", choices=("gguf", "safetensors"), default="gguf")
    parser.add_argument("--keep", action="store_true", help="keep the output")
    args = parser.parse_args()

    cmd = [sys.executable, "-m", "camelid", "merge-lora", "--base", args.base, "-o", args.outfile,
           "--outtype", args.outtype, "--format", args.format, "--no-progress"]
    for lora in args.lora:
        cmd += ["--lora", lora]
    print(" ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, "VmHWM": 0}
    while proc.poll() is None:
        status = read_status(proc.pid)
        for key in peak:
            peak[key] = max(peak[key], status.get(key, 0))
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    maxrss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    size = sum(f.stat().st_size for f in Path(args.outfile).rglob("*") if f.is_file()) if Path(args.outfile).is_dir() \
        else (os.path.getsize(args.outfile) if os.path.exists(args.outfile) else 0)
    mib = 1 / 1024
    print(f"exit status      {proc.returncode}")
    print(f"wall time        {elapsed:.1f} s")
    print(f"output size      {size / 2**30:.2f} GiB")
    print(f"peak RSS         {maxrss_kb * mib:.0f} MiB (getrusage ru_maxrss of the child)")
    print(f"sampled peaks    VmHWM {peak['VmHWM'] * mib:.0f} MiB, VmRSS {peak['VmRSS'] * mib:.0f} MiB, RssAnon {peak['RssAnon'] * mib:.0f} MiB, "
          f"RssFile {peak['RssFile'] * mib:.0f} MiB (every 50 ms)")
    if not args.keep and os.path.exists(args.outfile):
        shutil.rmtree(args.outfile) if os.path.isdir(args.outfile) else os.unlink(args.outfile)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
