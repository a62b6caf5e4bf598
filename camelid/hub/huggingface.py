"""Hugging Face and its mirrors (HF_ENDPOINT), through huggingface_hub.

Listing (model info with file sizes and LFS SHA-256), a ranged read of a file's first bytes, and
downloads into huggingface_hub's own cache layout (HF_HUB_CACHE: blobs/ named by ETag, snapshots/
COMMIT/FILE linking to them, refs/main): huggingface_hub's HTTP client does the transfer, with its
token (HF_TOKEN), retries and Range resumption. The partial file is kept as blobs/ETAG.incomplete
until the transfer ends, so a pull stopped by Ctrl+C or a lost connection resumes where it stopped;
the blob and its snapshot link appear only after the SHA-256 (or, outside LFS, the Git blob id)
matches the listing.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
from pathlib import Path
from typing import Iterator

from camelid.errors import CamelidError
from camelid.hub.select import RemoteFile

DEFAULT_ENDPOINT = "https://huggingface.co"
MIRROR_HINT = ("If huggingface.co cannot be reached from here, use a mirror (HF_ENDPOINT=https://hf-mirror.com camelid pull NAME) "
               "or ModelScope (camelid pull modelscope.cn/USER/REPO).")


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "on", "yes", "true")


def is_offline() -> bool:
    """Whether the network is off for pulls: HF_HUB_OFFLINE=1 (or CAMELID_OFFLINE=1)."""
    return _truthy("HF_HUB_OFFLINE") or _truthy("TRANSFORMERS_OFFLINE") or _truthy("CAMELID_OFFLINE")


def endpoint() -> str:
    """The Hub's address: $HF_ENDPOINT (a mirror), else https://huggingface.co (read at each call)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def cache_dir() -> Path:
    """huggingface_hub's cache folder, from the environment at each call, with the library's precedence."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.path.expanduser(os.environ["HF_HUB_CACHE"])))
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def _storage(repo: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache_dir() / repo_folder_name(repo_id=repo, repo_type="model")


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors = []
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


@contextlib.contextmanager
def hub_errors(repo: str) -> Iterator[None]:
    """Turn huggingface_hub's and the HTTP client's errors into CamelidErrors that say what to do."""
    from huggingface_hub import errors as hf

    try:
        yield
    except hf.GatedRepoError:
        raise CamelidError(f"hf.co/{repo} is gated: accept its terms on its page at {endpoint()}/{repo}, then set HF_TOKEN to an access token.") from None
    except hf.RepositoryNotFoundError:
        raise CamelidError(
            f"{endpoint()} has no repository {repo} (or it is private: set HF_TOKEN). Check the name; "
            "`camelid pull --list` shows the short names camelid knows."
        ) from None
    except hf.RevisionNotFoundError:
        raise CamelidError(f"hf.co/{repo} has no such revision.") from None
    except hf.OfflineModeIsEnabled:
        raise CamelidError(f"hf.co/{repo} is not downloaded and HF_HUB_OFFLINE is set; unset it to download.") from None
    except hf.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise CamelidError(f"{endpoint()} answered HTTP {status} for {repo}; try again later. {MIRROR_HINT}") from None
    except _transport_errors() as exc:
        raise CamelidError(f"cannot reach {endpoint()} ({type(exc).__name__}: {exc}). {MIRROR_HINT}") from None


def listing(repo: str) -> tuple[str, list[RemoteFile]]:
    """(commit, files) of a repository's main branch, with each file's size and SHA-256."""
    from huggingface_hub import HfApi

    with hub_errors(repo):
        info = HfApi(endpoint=endpoint()).model_info(repo, files_metadata=True)
    files = []
    for s in info.siblings or []:
        if s.lfs is not None:
            files.append(RemoteFile(s.rfilename, s.lfs.size, s.lfs.sha256))
        else:
            files.append(RemoteFile(s.rfilename, s.size, None, s.blob_id))
    return info.sha, files


def _url(repo: str, commit: str, filename: str) -> str:
    from huggingface_hub.file_download import hf_hub_url

    return hf_hub_url(repo, filename, revision=commit, endpoint=endpoint())


def read_prefix(repo: str, commit: str, filename: str, n: int) -> bytes:
    """The first n bytes of a file (fewer if it is shorter), by one ranged request."""
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_stream_backoff

    headers = {**build_hf_headers(), "Range": f"bytes=0-{n - 1}", "Accept-Encoding": "identity"}
    out = bytearray()
    with hub_errors(repo), http_stream_backoff("GET", _url(repo, commit, filename), headers=headers) as response:
        hf_raise_for_status(response)
        for chunk in response.iter_bytes():
            out += chunk
            if len(out) >= n:
                break
    return bytes(out[:n])


def local_path(repo: str, commit: str, filename: str) -> Path:
    """Where a file of a commit lives once downloaded: the snapshot link in huggingface_hub's cache."""
    return _storage(repo) / "snapshots" / commit / filename


def partial_bytes(repo: str, file: RemoteFile) -> int:
    """Bytes of `file` already on disk, complete or partial (to size the download still to come)."""
    blobs = _storage(repo) / "blobs"
    for name in (file.sha256, file.git_blob_id):
        if name:
            for candidate in (blobs / name, blobs / f"{name}.incomplete"):
                if candidate.exists():
                    return candidate.stat().st_size
    return 0


def _digest(path: Path, git_blob: bool) -> str:
    from tqdm import tqdm

    h = hashlib.sha1() if git_blob else hashlib.sha256()
    size = path.stat().st_size
    if git_blob:
        h.update(b"blob %d\0" % size)
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc="verifying", leave=False,
                                     disable=size < (256 << 20)) as bar:
        while block := f.read(1 << 22):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def download(repo: str, commit: str, file: RemoteFile) -> Path:
    """Download one file of `commit` into the cache (resuming a partial one) and return its snapshot path.

    Raises CamelidError when the content does not match the listing's SHA-256 or Git blob id: the
    bad bytes are deleted, so nothing half-written stays in the cache.
    """
    from huggingface_hub.file_download import get_hf_file_metadata, http_get
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    pointer = local_path(repo, commit, file.path)
    if pointer.exists() and (file.size is None or pointer.stat().st_size == file.size):
        return pointer
    storage = _storage(repo)
    url = _url(repo, commit, file.path)
    with hub_errors(repo):
        meta = get_hf_file_metadata(url)
    etag = meta.etag or file.sha256 or file.git_blob_id
    blob = storage / "blobs" / etag
    partial = blob.with_name(f"{etag}.incomplete")
    blob.parent.mkdir(parents=True, exist_ok=True)
    lock = cache_dir() / ".locks" / storage.name / f"{etag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(str(lock)):
        if not blob.exists():
            done = partial.stat().st_size if partial.exists() else 0
            if file.size is not None and done > file.size:
                partial.unlink()
                done = 0
            headers = build_hf_headers()
            with hub_errors(repo), open(partial, "ab") as f:
                http_get(meta.location, f, resume_size=done, headers=headers, expected_size=file.size,
                         displayed_filename=os.path.basename(file.path))
            _verify(partial, file, repo)
            os.chmod(partial, 0o644)
            os.replace(partial, blob)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        if not pointer.exists():
            with contextlib.suppress(FileNotFoundError):
                pointer.unlink()
            os.symlink(os.path.relpath(blob, pointer.parent), pointer)
        ref = storage / "refs" / "main"
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
    return pointer


def _verify(path: Path, file: RemoteFile, repo: str) -> None:
    expected, git_blob = (file.sha256, False) if file.sha256 else (file.git_blob_id, True)
    if not expected:
        return
    actual = _digest(path, git_blob)
    if actual.lower() != expected.lower():
        path.unlink()
        kind = "Git blob id" if git_blob else "SHA-256"
        raise CamelidError(
            f"{file.path} from hf.co/{repo} arrived damaged: its {kind} is {actual}, the Hub lists {expected}. "
            f"The download was deleted; pull again (if it repeats, the endpoint {endpoint()} serves a different file)."
        )


def cached_listing(repo: str) -> tuple[str, list[RemoteFile]] | None:
    """(commit, files) of the copy of a repository's main branch in the local cache, or None."""
    storage = _storage(repo)
    try:
        commit = (storage / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = storage / "snapshots" / commit
    if not snapshot.is_dir():
        return None
    files = []
    for path in sorted(snapshot.rglob("*")):
        if path.is_file():
            files.append(RemoteFile(path.relative_to(snapshot).as_posix(), path.stat().st_size, None))
    return commit, files


def remove_files(paths: list[str]) -> None:
    """Delete snapshot links and the blobs they point to (no-op for paths outside the HF cache)."""
    for p in paths:
        path = Path(p)
        if path.is_symlink():
            target = path.resolve()
            path.unlink()
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
        elif path.exists():
            path.unlink()
