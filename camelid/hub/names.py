"""Model names: Ollama-style short names from a curated table, Hugging Face and ModelScope repositories.

    qwen2.5:0.5b                        a short name: a GGUF repository and a quantization from CATALOG
    hf.co/USER/REPO[:QUANT]             any GGUF repository on Hugging Face (or the HF_ENDPOINT mirror)
    USER/REPO[:QUANT]                   the same, without the prefix
    modelscope.cn/USER/REPO[:QUANT]     a GGUF repository on ModelScope

QUANT is a llama.cpp file type (Q4_K_M, Q8_0, ...); without it a repository gives its Q4_K_M file,
as llama.cpp's `-hf` picks, or its only GGUF model.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from camelid.errors import CamelidError

DEFAULT_QUANT = "Q4_K_M"
HUGGINGFACE = "huggingface"
MODELSCOPE = "modelscope"

# Short name -> (source, repository, quantization). The repositories are those the model makers or
# the usual GGUF publishers (bartowski, unsloth) put on Hugging Face; they were written from memory
# and not checked online when this table was made: `camelid pull` says clearly when one is gone.
CATALOG: dict[str, tuple[str, str, str]] = {
    "qwen2.5:0.5b": (HUGGINGFACE, "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "Q4_K_M"),
    "qwen2.5:1.5b": (HUGGINGFACE, "Qwen/Qwen2.5-1.5B-Instruct-GGUF", "Q4_K_M"),
    "qwen2.5:3b": (HUGGINGFACE, "Qwen/Qwen2.5-3B-Instruct-GGUF", "Q4_K_M"),
    "qwen2.5:7b": (HUGGINGFACE, "Qwen/Qwen2.5-7B-Instruct-GGUF", "Q4_K_M"),
    "qwen2.5-coder:1.5b": (HUGGINGFACE, "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF", "Q4_K_M"),
    "qwen2.5-coder:7b": (HUGGINGFACE, "Qwen/Qwen2.5-Coder-7B-Instruct-GGUF", "Q4_K_M"),
    "qwen3:0.6b": (HUGGINGFACE, "unsloth/Qwen3-0.6B-GGUF", "Q4_K_M"),
    "qwen3:1.7b": (HUGGINGFACE, "unsloth/Qwen3-1.7B-GGUF", "Q4_K_M"),
    "qwen3:4b": (HUGGINGFACE, "unsloth/Qwen3-4B-GGUF", "Q4_K_M"),
    "qwen3:8b": (HUGGINGFACE, "unsloth/Qwen3-8B-GGUF", "Q4_K_M"),
    "deepseek-r1:1.5b": (HUGGINGFACE, "bartowski/DeepSeek-R1-Distill-Qwen-1.5B-GGUF", "Q4_K_M"),
    "deepseek-r1:7b": (HUGGINGFACE, "bartowski/DeepSeek-R1-Distill-Qwen-7B-GGUF", "Q4_K_M"),
    "gemma3:270m": (HUGGINGFACE, "unsloth/gemma-3-270m-it-GGUF", "Q4_K_M"),
    "gemma3:1b": (HUGGINGFACE, "unsloth/gemma-3-1b-it-GGUF", "Q4_K_M"),
    "gemma3:4b": (HUGGINGFACE, "unsloth/gemma-3-4b-it-GGUF", "Q4_K_M"),
    "llama3.2:1b": (HUGGINGFACE, "bartowski/Llama-3.2-1B-Instruct-GGUF", "Q4_K_M"),
    "llama3.2:3b": (HUGGINGFACE, "bartowski/Llama-3.2-3B-Instruct-GGUF", "Q4_K_M"),
    "llama3.1:8b": (HUGGINGFACE, "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF", "Q4_K_M"),
    "mistral:7b": (HUGGINGFACE, "bartowski/Mistral-7B-Instruct-v0.3-GGUF", "Q4_K_M"),
    "smollm2:135m": (HUGGINGFACE, "bartowski/SmolLM2-135M-Instruct-GGUF", "Q4_K_M"),
    "smollm2:1.7b": (HUGGINGFACE, "bartowski/SmolLM2-1.7B-Instruct-GGUF", "Q4_K_M"),
    "tinyllama:1.1b": (HUGGINGFACE, "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF", "Q4_K_M"),
}

_HF_PREFIXES = ("hf.co/", "huggingface.co/")
_MS_PREFIXES = ("modelscope.cn/models/", "modelscope.cn/", "www.modelscope.cn/models/", "www.modelscope.cn/",
                "modelscope.ai/models/", "modelscope.ai/", "ms://")
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_QUANT = re.compile(r"^[A-Za-z0-9_]+$")
_SHORT = re.compile(r"^[a-z0-9][\w.-]*:[\w.-]+$")
_FILE_SUFFIXES = (".gguf", ".bin", ".ggml", ".ggjt", ".safetensors", ".pth")


@dataclass(frozen=True)
class ModelRef:
    """What a name asks for: a repository on a source, and a quantization (None: the default)."""

    name: str  # the canonical name, the key under which the pulled model is listed
    source: str  # HUGGINGFACE or MODELSCOPE
    repo: str  # USER/REPO
    quant: str | None  # upper case, e.g. "Q4_K_M"; None picks DEFAULT_QUANT or the only model


def _split_quant(text: str) -> tuple[str, str | None]:
    repo, sep, quant = text.partition(":")
    if not sep:
        return repo, None
    if not quant or not _QUANT.match(quant):
        raise CamelidError(f"{text!r}: the quantization after ':' should look like Q4_K_M or Q8_0.")
    return repo, quant.upper()


def _repo_ref(prefix: str, source: str, text: str) -> ModelRef:
    repo, quant = _split_quant(text)
    if not _REPO.match(repo):
        where = "Hugging Face" if source == HUGGINGFACE else "ModelScope"
        raise CamelidError(f"{prefix}{text!r} is not a {where} repository name; write {prefix}USER/REPO or {prefix}USER/REPO:Q4_K_M.")
    return ModelRef(f"{prefix}{repo}" + (f":{quant}" if quant else ""), source, repo, quant)


def parse_name(value: str) -> ModelRef | None:
    """The ModelRef a -m value or `camelid pull` argument names, or None when it reads as a file path.

    Raises CamelidError for a short name that is not in CATALOG (listing the ones that are), a
    malformed repository name after hf.co/ or modelscope.cn/, or a malformed quantization.
    """
    text = value.strip()
    for scheme in ("https://", "http://"):
        if text.lower().startswith(scheme):
            text = text[len(scheme):]
    lower = text.lower()
    for prefix in _HF_PREFIXES:
        if lower.startswith(prefix):
            return _repo_ref("hf.co/", HUGGINGFACE, text[len(prefix):].strip("/"))
    for prefix in _MS_PREFIXES:
        if lower.startswith(prefix):
            return _repo_ref("modelscope.cn/", MODELSCOPE, text[len(prefix):].strip("/"))
    if "/" not in text:
        if _SHORT.match(lower):
            return _catalog_ref(lower)
        if any(name.startswith(lower + ":") for name in CATALOG):
            sizes = ", ".join(n for n in CATALOG if n.startswith(lower + ":"))
            raise CamelidError(f"{value!r} needs a size: one of {sizes}.")
        return None
    repo, _ = text.partition(":")[::2]
    if not _REPO.match(repo) or repo.lower().endswith(_FILE_SUFFIXES) or os.path.isdir(repo.split("/")[0]):
        return None
    return _repo_ref("hf.co/", HUGGINGFACE, text)


def _catalog_ref(name: str) -> ModelRef:
    if name not in CATALOG:
        family = name.partition(":")[0]
        sizes = [n for n in CATALOG if n.startswith(family + ":")]
        known = ", ".join(sizes) if sizes else ", ".join(CATALOG)
        raise CamelidError(
            f"unknown model name {name!r}; camelid knows {known}. Any GGUF repository works too: "
            "hf.co/USER/REPO:Q4_K_M or modelscope.cn/USER/REPO:Q4_K_M."
        )
    source, repo, quant = CATALOG[name]
    return ModelRef(name, source, repo, quant)

