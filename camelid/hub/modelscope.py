"""ModelScope (modelscope.cn), through its official client `modelscope-hub` (pip install 'camelid[modelscope]').

The client lists a repository with each file's size and SHA-256, downloads into its own cache
(MODELSCOPE_CACHE, default ~/.cache/modelscope) with Range resumption of its .incomplete file, and
checks the SHA-256 before the file appears under its name. MODELSCOPE_ENDPOINT points it at another
server; MODELSCOPE_API_TOKEN carries a token.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from camelid.errors import CamelidError
from camelid.hub.select import RemoteFile

REVISION = "master"
INSTALL_HINT = "pip install 'camelid[modelscope]'"
DEFAULT_ENDPOINT = "https://www.modelscope.cn"


def endpoint() -> str:
    """ModelScope's address: $MODELSCOPE_ENDPOINT, else https://www.modelscope.cn."""
    return (os.environ.get("MODELSCOPE_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _api():
    try:
        from modelscope_hub import HubApi
    except ImportError:
        raise CamelidError(f"pulling from ModelScope needs its client: {INSTALL_HINT} (or pip install modelscope-hub).") from None
    return HubApi(endpoint=endpoint())


@contextlib.contextmanager
def hub_errors(repo: str) -> Iterator[None]:
    """Turn modelscope-hub's errors into CamelidErrors that say what to do."""
    import modelscope_hub as ms
    import requests

    try:
        yield
    except (ms.NotExistError, ms.NotFoundError):
        raise CamelidError(f"ModelScope ({endpoint()}) has no repository {repo} (or it is private: set MODELSCOPE_API_TOKEN). Check the name.") from None
    except (ms.AuthenticationError, ms.PermissionDeniedError):
        raise CamelidError(f"ModelScope refused access to {repo}; set MODELSCOPE_API_TOKEN to an access token that may read it.") from None
    except ms.FileIntegrityError as exc:
        raise CamelidError(f"a file of modelscope.cn/{repo} kept arriving damaged ({exc}); it was deleted. Pull again later.") from None
    except (ms.NetworkError, requests.ConnectionError, requests.Timeout) as exc:
        raise CamelidError(f"cannot reach ModelScope at {endpoint()} ({type(exc).__name__}). Check the network.") from None
    except ms.HubError as exc:
        raise CamelidError(f"ModelScope failed for {repo}: {exc}") from None


def listing(repo: str) -> tuple[str, list[RemoteFile]]:
    """(revision, files) of a repository's master branch, with each file's size and SHA-256."""
    api = _api()
    with hub_errors(repo):
        infos = api.list_repo_files(repo, "model", revision=REVISION)
    return REVISION, [RemoteFile(f.path, f.size, f.sha256) for f in infos if not f.is_dir]


def read_prefix(repo: str, revision: str, filename: str, n: int) -> bytes:
    """The first n bytes of a file (fewer if it is shorter), by one ranged request."""
    api = _api()
    out = bytearray()
    with hub_errors(repo):
        response = api.legacy.download_stream(repo, "model", filename, revision, headers={"Range": f"bytes=0-{n - 1}"})
        try:
            for chunk in response.iter_content(chunk_size=1 << 16):
                out += chunk
                if len(out) >= n:
                    break
        finally:
            response.close()
    return bytes(out[:n])


def cache_dir() -> Path:
    """modelscope-hub's cache folder: $MODELSCOPE_CACHE, else ~/.cache/modelscope."""
    return Path(os.environ.get("MODELSCOPE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "modelscope"))


def partial_bytes(repo: str, file: RemoteFile) -> int:
    """Bytes already on disk toward `file`: not known outside the client, so 0 (the space check asks for all)."""
    return 0


def download(repo: str, revision: str, file: RemoteFile) -> Path:
    """Download one file (resuming a partial one, checking its SHA-256) and return its local path."""
    api = _api()
    with hub_errors(repo):
        return Path(api.download_file(repo, "model", file.path, revision=revision, expected_sha256=file.sha256, file_size=file.size))


def remove_files(paths: list[str]) -> None:
    """Delete downloaded files from the ModelScope cache."""
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
