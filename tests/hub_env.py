"""What the pull tests share: the repositories the fake hubs serve, a clean environment pointing the
clients at them, and `camelid` run as a child process (the clients read their settings at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

from gguf import GGUFWriter

QWEN_REPO = "Qwen/Qwen2.5-0.5B-Instruct-GGUF"
QWEN_FILE = "qwen2.5-0.5b-instruct-q4_k_m.gguf"
SPLIT_REPO = "camelid-test/SmolLM2-135M-Instruct-split-GGUF"
SPLIT_NAME = f"hf.co/{SPLIT_REPO}:Q4_1"
MAMBA_REPO = "camelid-test/Mamba-130M-GGUF"
_CLIENT_VARS = ("HF_", "HUGGINGFACE_", "MODELSCOPE_", "CAMELID_HOME", "CAMELID_OFFLINE", "TRANSFORMERS_OFFLINE")


def mamba_gguf(path: Path) -> Path:
    """A small GGUF whose architecture camelid does not run, with a 2 MB tensor behind its header."""
    import numpy as np

    w = GGUFWriter(path, "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((1024, 512), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def hf_repos(smollm2: Path, split_parts: list[Path], mamba: Path) -> dict[str, dict[str, Path | bytes]]:
    """Repositories laid out as on the Hub: the default model under Qwen's name, a split model, a mamba model."""
    split = {f"smollm2-135m-instruct-q4_1-{i:05d}-of-{len(split_parts):05d}.gguf": p for i, p in enumerate(split_parts, 1)}
    return {
        QWEN_REPO: {QWEN_FILE: smollm2, "README.md": b"# Qwen2.5-0.5B-Instruct-GGUF (stand-in)\n", "LICENSE": b"Apache-2.0\n"},
        SPLIT_REPO: {**split, "README.md": b"# split\n"},
        MAMBA_REPO: {"mamba-130m-q4_k_m.gguf": mamba},
    }


def client_env(tmp: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any Hub client settings, with caches under tmp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLIENT_VARS)}
    env.update(HF_HOME=str(tmp / "hf"), CAMELID_HOME=str(tmp / "camelid"), MODELSCOPE_CACHE=str(tmp / "modelscope"),
               MODELSCOPE_HOME=str(tmp / "modelscope-home"), HF_HUB_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def camelid(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`camelid ARGS` in a child process; stdout and stderr as text."""
    return subprocess.run([sys.executable, "-m", "camelid", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def record(env: dict[str, str], name: str) -> dict | None:
    """The registry record of a pulled name, or None."""
    path = Path(env["CAMELID_HOME"]) / "models" / (quote(name, safe="") + ".json")
    return json.loads(path.read_text()) if path.exists() else None


def hf_storage(env: dict[str, str], repo: str) -> Path:
    return Path(env["HF_HOME"]) / "hub" / ("models--" + repo.replace("/", "--"))
