"""The list of pulled models: one JSON record per name, written atomically once the files are verified.

Records live in $CAMELID_HOME/models (default: $XDG_CACHE_HOME/camelid/models, else
~/.cache/camelid/models). The model files themselves stay in their client's cache: Hugging Face's
(HF_HUB_CACHE, HF_HOME) or ModelScope's (MODELSCOPE_CACHE).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

from camelid.errors import CamelidError


def camelid_home() -> Path:
    """camelid's own cache folder: $CAMELID_HOME, else $XDG_CACHE_HOME/camelid, else ~/.cache/camelid."""
    if os.environ.get("CAMELID_HOME"):
        return Path(os.environ["CAMELID_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "camelid"


def records_dir() -> Path:
    """The folder of the pulled models' records."""
    return camelid_home() / "models"


@dataclass
class PulledModel:
    """A model that was pulled: where its files are and what they hold."""

    name: str  # as listed and passed to -m: qwen2.5:0.5b, hf.co/USER/REPO:Q4_K_M
    source: str  # "huggingface" or "modelscope"
    repo: str  # USER/REPO
    revision: str  # the commit the files came from (ModelScope: the branch)
    quant: str  # Q4_K_M, ...
    filenames: list[str]  # in the repository, the parts of a split model in order
    paths: list[str]  # the local copies, same order
    size: int  # bytes, all parts
    architecture: str | None  # general.architecture
    sha256: list[str | None] = field(default_factory=list)
    pulled_at: float = 0.0  # seconds since the epoch

    @property
    def path(self) -> str:
        """The file to load: the only one, or the first part of a split model."""
        return self.paths[0]

    def is_complete(self) -> bool:
        """Whether every file is still there, at its recorded size."""
        try:
            return sum(os.path.getsize(p) for p in self.paths) == self.size
        except OSError:
            return False


def _record_path(name: str) -> Path:
    return records_dir() / (quote(name, safe="") + ".json")


def get(name: str) -> PulledModel | None:
    """The record of a pulled name, or None."""
    try:
        data = json.loads(_record_path(name).read_text(encoding="utf-8"))
        return PulledModel(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise CamelidError(f"the record of {name} in {records_dir()} is unreadable ({exc}); remove it with `camelid rm {name}`.") from None


def put(record: PulledModel) -> None:
    """Write the record of a pulled model (atomically: it appears whole or not at all)."""
    folder = records_dir()
    folder.mkdir(parents=True, exist_ok=True)
    record.pulled_at = record.pulled_at or time.time()
    fd, tmp = tempfile.mkstemp(prefix=".record.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(record), f, indent=1)
        os.replace(tmp, _record_path(record.name))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove(name: str) -> bool:
    """Forget a pulled name; True if it was there."""
    try:
        _record_path(name).unlink()
        return True
    except FileNotFoundError:
        return False


def all_models() -> list[PulledModel]:
    """Every pulled model, by name (unreadable records are left out)."""
    folder = records_dir()
    if not folder.is_dir():
        return []
    models = []
    for entry in sorted(folder.glob("*.json")):
        try:
            models.append(PulledModel(**json.loads(entry.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(models, key=lambda m: m.name)
