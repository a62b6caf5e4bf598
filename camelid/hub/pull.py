"""Pull a model by name: list the repository, pick the GGUF file(s), check the architecture and the
free disk space, download through the source's client, and record the name once the files are verified."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from camelid.errors import CamelidError
from camelid.hub import registry
from camelid.hub.gguf_probe import NotGGUF, probe_architecture
from camelid.hub.names import HUGGINGFACE, ModelRef
from camelid.hub.registry import PulledModel
from camelid.hub.select import Choice, RemoteFile, choose_gguf


def _backend(source: str):
    if source == HUGGINGFACE:
        from camelid.hub import huggingface

        return huggingface
    from camelid.hub import modelscope

    return modelscope


def repo_label(ref: ModelRef) -> str:
    """The repository as a user writes it: hf.co/USER/REPO or modelscope.cn/USER/REPO."""
    return ("hf.co/" if ref.source == HUGGINGFACE else "modelscope.cn/") + ref.repo


def format_size(n: int) -> str:
    """Bytes in decimal units, as download sizes are usually shown: 397.8 MB, 4.68 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{n} B"


def _say(text: str) -> None:
    sys.stdout.flush()
    print(f"camelid: {text}", file=sys.stderr, flush=True)


def is_offline() -> bool:
    """Whether pulls must not touch the network (HF_HUB_OFFLINE=1 or CAMELID_OFFLINE=1)."""
    from camelid.hub.huggingface import is_offline as offline

    return offline()


def check_architecture(ref: ModelRef, revision: str, first: RemoteFile) -> str | None:
    """general.architecture of the remote file, read by ranged requests; CamelidError if camelid cannot run it."""
    from camelid.model.config import SUPPORTED_ARCHITECTURES

    backend = _backend(ref.source)
    try:
        arch = probe_architecture(lambda n: backend.read_prefix(ref.repo, revision, first.path, n))
    except NotGGUF as exc:
        raise CamelidError(f"{first.path} in {repo_label(ref)} is not a GGUF file ({exc}); nothing was downloaded.") from None
    if arch is not None and arch not in SUPPORTED_ARCHITECTURES:
        raise CamelidError(
            f"{repo_label(ref)} holds a {arch!r} model, which camelid cannot run yet (it runs {', '.join(SUPPORTED_ARCHITECTURES)}); "
            "nothing was downloaded. Pick a model of those, e.g. `camelid pull qwen2.5:1.5b`."
        )
    return arch


def check_disk_space(ref: ModelRef, choice: Choice) -> None:
    """CamelidError if the cache's disk lacks room for the bytes still to download."""
    backend = _backend(ref.source)
    need = sum(max(0, (f.size or 0) - backend.partial_bytes(ref.repo, f)) for f in choice.files)
    folder = backend.cache_dir()
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        where = "HF_HOME" if ref.source == HUGGINGFACE else "MODELSCOPE_CACHE"
        raise CamelidError(
            f"not enough disk space for {ref.name}: it needs {format_size(need)} in {folder}, which has {format_size(free)} free. "
            f"Free some space, or set {where} to a folder on a larger disk."
        )


def _local_architecture(path: str) -> str | None:
    with open(path, "rb") as f:
        return probe_architecture(lambda n: (f.seek(0), f.read(n))[1])


def _from_local_cache(ref: ModelRef) -> PulledModel | None:
    """The model from the Hugging Face cache alone (no network), recorded under its name; None if absent."""
    if ref.source != HUGGINGFACE:
        return None
    from camelid.hub import huggingface

    cached = huggingface.cached_listing(ref.repo)
    if cached is None:
        return None
    commit, files = cached
    try:
        choice = choose_gguf(files, ref.quant, repo_label(ref))
    except CamelidError:
        return None
    paths = [str(huggingface.local_path(ref.repo, commit, f.path)) for f in choice.files]
    record = PulledModel(ref.name, ref.source, ref.repo, commit, choice.quant, [f.path for f in choice.files], paths,
                         choice.size, _local_architecture(paths[0]), [None] * len(paths))
    registry.put(record)
    return record


def pull(ref: ModelRef) -> PulledModel:
    """Download the model `ref` names unless the local copy is current, record it, and return the record.

    With the network off (HF_HUB_OFFLINE=1), only the local copy is used. Raises CamelidError for an
    unknown repository, no GGUF file of the quantization, an architecture camelid cannot run, too
    little disk space, no network (saying how to use a mirror), or a download that fails its checksum.
    """
    if is_offline():
        record = _usable(registry.get(ref.name)) or _from_local_cache(ref)
        if record is None:
            raise CamelidError(f"{ref.name} is not downloaded, and the network is off (HF_HUB_OFFLINE or CAMELID_OFFLINE); unset it to pull.")
        return record
    backend = _backend(ref.source)
    revision, files = backend.listing(ref.repo)
    choice = choose_gguf(files, ref.quant, repo_label(ref))
    filenames = [f.path for f in choice.files]
    existing = _usable(registry.get(ref.name))
    if existing is not None and existing.revision == revision and existing.filenames == filenames:
        _say(f"{ref.name} is up to date ({existing.path}).")
        return existing
    arch = check_architecture(ref, revision, choice.files[0])
    check_disk_space(ref, choice)
    parts = f" in {len(filenames)} parts" if len(filenames) > 1 else ""
    source = "" if ref.name.startswith(repo_label(ref)) else f" from {repo_label(ref)}"
    _say(f"pulling {ref.name}{source}: {filenames[0]}{parts} ({format_size(choice.size)}, {choice.quant}, {arch or 'architecture unknown'})")
    paths = [str(backend.download(ref.repo, revision, f)) for f in choice.files]
    record = PulledModel(ref.name, ref.source, ref.repo, revision, choice.quant, filenames, paths, choice.size, arch,
                         [f.sha256 for f in choice.files])
    registry.put(record)
    return record


def _usable(record: PulledModel | None) -> PulledModel | None:
    return record if record is not None and record.is_complete() else None


def ensure(ref: ModelRef) -> PulledModel:
    """The local copy of `ref`, pulled first if it is missing (a model already pulled loads without the network)."""
    record = _usable(registry.get(ref.name))
    if record is not None:
        return record
    return pull(ref)


def remove(ref: ModelRef) -> PulledModel:
    """Forget a pulled model and delete its files, unless another pulled name uses the same files."""
    record = registry.get(ref.name)
    if record is None:
        raise CamelidError(f"{ref.name} is not pulled; `camelid list` shows the models that are.")
    registry.remove(ref.name)
    shared = {os.path.realpath(p) for other in registry.all_models() for p in other.paths}
    mine = [p for p in record.paths if os.path.realpath(p) not in shared]
    _backend(record.source).remove_files(mine)
    return record
