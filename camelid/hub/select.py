"""Pick the GGUF file of a quantization in a repository's file list, with every part of a split model."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from camelid.errors import CamelidError
from camelid.hub.names import DEFAULT_QUANT

# llama.cpp's gguf-split names: PREFIX-00001-of-00003.gguf
SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
_QUANT_IN_NAME = re.compile(
    r"(?<![A-Za-z0-9])(I?Q[0-9](?:_[A-Za-z0-9]+)*|TQ[12]_0|BF16|F16|F32|MXFP4(?:_MOE)?)(?![A-Za-z0-9])",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a remote repository, as its listing describes it."""

    path: str  # relative to the repository root, '/'-separated
    size: int | None  # bytes
    sha256: str | None  # of the content (Git LFS files on Hugging Face, every file on ModelScope)
    git_blob_id: str | None = None  # Git's SHA-1 of a file kept outside LFS


@dataclass(frozen=True)
class Choice:
    """The files that make one model: one GGUF, or the parts of a split one in order."""

    quant: str
    files: tuple[RemoteFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size or 0 for f in self.files)


def quant_of(path: str) -> str | None:
    """The llama.cpp file type a GGUF file name carries (Q4_K_M, Q8_0, F16, ...), upper case, or None."""
    name = posixpath.basename(path)
    match = SPLIT_NAME.match(name)
    stem = match["prefix"] if match else re.sub(r"\.gguf$", "", name, flags=re.IGNORECASE)
    found = _QUANT_IN_NAME.findall(stem)
    return found[-1].upper() if found else None


def _groups(files: list[RemoteFile]) -> list[tuple[str, list[RemoteFile], int]]:
    """(key, files in part order, expected part count) for each model among the GGUF files."""
    singles, splits = [], {}
    for f in files:
        name = posixpath.basename(f.path)
        match = SPLIT_NAME.match(name)
        if match:
            key = posixpath.join(posixpath.dirname(f.path), match["prefix"])
            splits.setdefault(key, {"count": int(match["count"]), "parts": {}})["parts"][int(match["no"])] = f
        else:
            singles.append((f.path, [f], 1))
    for key, split in splits.items():
        parts = [split["parts"][i] for i in sorted(split["parts"])]
        singles.append((key, parts, split["count"]))
    return singles


def choose_gguf(files: list[RemoteFile], quant: str | None, repo_label: str) -> Choice:
    """The model of quantization `quant` (None: DEFAULT_QUANT, or the only model) among `files`.

    repo_label names the repository in messages, as a user would write it (hf.co/USER/REPO).
    Raises CamelidError when the repository has no GGUF file, none of that quantization (listing
    those it has), or only some parts of a split model.
    """
    ggufs = [f for f in files if f.path.lower().endswith(".gguf") and "mmproj" not in posixpath.basename(f.path).lower()]
    if not ggufs:
        raise CamelidError(
            f"{repo_label} has no GGUF model file. camelid pulls GGUF repositories (their names usually end in -GGUF); "
            "a Transformers checkpoint can be converted with `camelid convert`."
        )
    groups = _groups(ggufs)
    want = quant or DEFAULT_QUANT
    matches = [g for g in groups if quant_of(g[1][0].path) == want]
    if not matches and quant is None and len(groups) == 1:
        matches = groups
    if not matches:
        have = sorted({q for g in groups if (q := quant_of(g[1][0].path))}) or sorted(g[1][0].path for g in groups)
        hint = f"{repo_label}:{have[0]}" if quant_of(groups[0][1][0].path) else repo_label
        raise CamelidError(f"{repo_label} has no {want} GGUF file; it has {', '.join(have)}. Pick one, e.g. `camelid pull {hint}`.")
    key, parts, count = min(matches, key=lambda g: (len(g[0]), g[0]))
    if count > 1:
        numbers = [int(SPLIT_NAME.match(posixpath.basename(p.path))["no"]) for p in parts]
        if numbers != list(range(1, count + 1)):
            raise CamelidError(f"{repo_label}: the split model {key} has {count} parts but the repository lists {len(parts)} of them.")
    return Choice(quant_of(parts[0].path) or want, tuple(parts))
