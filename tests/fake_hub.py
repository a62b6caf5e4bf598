"""Local stand-ins for the Hugging Face Hub and ModelScope, for the real clients to talk to in tests.

FakeHub answers what huggingface_hub asks, as huggingface.co does:
  GET  /api/models/USER/REPO[/revision/REV][?blobs=true]  model info: "sha", "siblings" (with ?blobs=true:
       "size", "blobId", "lfs": {"size", "sha256", "pointerSize"}); a missing repository is a 401 with
       X-Error-Code: RepoNotFound
  HEAD|GET /USER/REPO/resolve/REV/FILE  for an LFS file a 302 to the CDN (another origin: a second port)
       carrying X-Repo-Commit, X-Linked-Etag (the SHA-256, quoted) and X-Linked-Size; for another file
       the bytes, with ETag (the Git blob id) and X-Repo-Commit; a missing file is a 404 with
       X-Error-Code: EntryNotFound
  HEAD|GET /blobs/SHA256 on the CDN port  the bytes, with ETag, Accept-Ranges and Range (206)
FakeModelScope answers modelscope-hub's file listing (/api/v1/models/USER/REPO/repo/files) and
download (/api/v1/models/USER/REPO/repo?FilePath=...) with Range.

Faults for tests: cut[name] = n closes the connection after n bytes of that file, once; corrupt[name]
= offset serves that byte flipped; stall[name] = n sends n bytes then waits until release() (or 60 s).
Every request is logged in .requests as (method, path, Range header).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

CHUNK = 1 << 16
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class HostedFile:
    name: str
    source: Path | bytes
    size: int
    sha256: str
    git_sha1: str
    lfs: bool

    def read(self, start: int, end: int) -> bytes:
        if isinstance(self.source, bytes):
            return self.source[start:end]
        with open(self.source, "rb") as f:
            f.seek(start)
            return f.read(end - start)


def _blocks(source: Path | bytes):
    if isinstance(source, bytes):
        yield source
        return
    with open(source, "rb") as f:
        while block := f.read(1 << 22):
            yield block


def hosted(name: str, source: Path | bytes, lfs: bool | None = None) -> HostedFile:
    """A file to serve, from a path or bytes; .gguf files are Git LFS files unless lfs says otherwise."""
    size = sum(len(b) for b in _blocks(source))
    sha, git = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    for block in _blocks(source):
        sha.update(block)
        git.update(block)
    return HostedFile(name, source, size, sha.hexdigest(), git.hexdigest(), name.endswith(".gguf") if lfs is None else lfs)


class _Server:
    """A threaded HTTP server on 127.0.0.1 with fault injection, shared by FakeHub and FakeModelScope."""

    def __init__(self):
        self.repos: dict[str, dict[str, HostedFile]] = {}
        self.commits: dict[str, str] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.cut: dict[str, int] = {}
        self.corrupt: dict[str, int] = {}
        self.stall: dict[str, int] = {}
        self._released = threading.Event()
        self._servers: list[ThreadingHTTPServer] = []

    def add_repo(self, repo: str, files: dict[str, Path | bytes], commit: str | None = None) -> None:
        self.repos[repo] = {name: hosted(name, src) for name, src in files.items()}
        self.commits[repo] = commit or hashlib.sha1(repo.encode()).hexdigest()

    def release(self) -> None:
        """Let stalled transfers go on (they end their connection)."""
        self._released.set()

    def reset(self) -> None:
        """Forget the faults and the request log."""
        self._released.set()
        self._released = threading.Event()
        self.cut.clear()
        self.corrupt.clear()
        self.stall.clear()
        self.requests.clear()

    def _start(self, handler_cls) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
        server.daemon_threads = True
        server.fake = self
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._servers.append(server)
        return server

    def stop(self) -> None:
        self._released.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    @property
    def fake(self) -> _Server:
        return self.server.fake

    def _log(self) -> None:
        self.fake.requests.append((self.command, self.path, self.headers.get("Range")))

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._reply(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _send_file(self, f: HostedFile, headers: dict[str, str]) -> None:
        start, end = 0, f.size
        match = _RANGE.match(self.headers.get("Range", "") or "")
        status = 200
        if match:
            start = int(match[1])
            end = min(f.size, int(match[2]) + 1) if match[2] else f.size
            if start >= f.size:
                self._reply(416, headers={"Content-Range": f"bytes */{f.size}"})
                return
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{f.size}"}
        self.send_response(status)
        for k, v in {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if self.command == "HEAD":
            return
        fake = self.fake
        cut = fake.cut.get(f.name)
        if cut is not None and start < cut < end:
            del fake.cut[f.name]
        else:
            cut = None
        stall = fake.stall.get(f.name)
        corrupt = fake.corrupt.get(f.name)
        pos = start
        while pos < end:
            n = min(CHUNK, end - pos)
            if cut is not None and pos < cut <= pos + n:
                n = cut - pos
            if stall is not None and pos < stall <= pos + n:
                n = stall - pos
            data = bytearray(f.read(pos, pos + n))
            if corrupt is not None and pos <= corrupt < pos + n:
                data[corrupt - pos] ^= 0xFF
            self.wfile.write(data)
            pos += n
            if cut is not None and pos == cut:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if stall is not None and pos == stall:
                self.wfile.flush()
                fake._released.wait(60)
                self.close_connection = True
                self.connection.shutdown(2)
                return


class _HubHandler(_Handler):
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self._log()
        url = urlparse(self.path)
        path = unquote(url.path)
        if path.startswith("/api/models/"):
            return self._model_info(path[len("/api/models/"):], parse_qs(url.query))
        if path.startswith("/blobs/"):
            return self._blob(path[len("/blobs/"):])
        match = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if match:
            return self._resolve(*match.groups())
        self._reply(404)

    def _model_info(self, rest: str, query: dict) -> None:
        repo, _, revision = rest.partition("/revision/")
        files = self.fake.repos.get(repo)
        if files is None:
            return self._json({"error": "Repository not found"}, 401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for f in files.values():
            entry = {"rfilename": f.name}
            if blobs:
                entry.update(size=f.size, blobId=f.git_sha1)
                if f.lfs:
                    entry["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": 134}
            siblings.append(entry)
        commit = self.fake.commits[repo]
        self._json({"_id": "0" * 24, "id": repo, "modelId": repo, "sha": commit, "private": False, "tags": ["gguf"], "siblings": siblings})

    def _resolve(self, repo: str, revision: str, name: str) -> None:
        files = self.fake.repos.get(repo)
        if files is None:
            return self._json({"error": "Repository not found"}, 401, {"X-Error-Code": "RepoNotFound"})
        commit = self.fake.commits[repo]
        if revision not in ("main", commit):
            return self._json({"error": "Invalid rev id"}, 404, {"X-Error-Code": "RevisionNotFound"})
        f = files.get(name)
        if f is None:
            return self._json({"error": "Entry not found"}, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        if f.lfs:
            location = f"{self.fake.cdn_url}/blobs/{f.sha256}?name={name}"
            return self._reply(302, headers={
                "Location": location, "X-Repo-Commit": commit, "ETag": f'"{f.git_sha1}"',
                "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size),
            })
        self._send_file(f, {"ETag": f'"{f.git_sha1}"', "X-Repo-Commit": commit})

    def _blob(self, sha: str) -> None:
        for files in self.fake.repos.values():
            for f in files.values():
                if f.sha256 == sha:
                    return self._send_file(f, {"ETag": f'"{sha}"'})
        self._reply(404)


class FakeHub(_Server):
    """A Hugging Face Hub on 127.0.0.1; `endpoint` is what HF_ENDPOINT should be set to."""

    def __init__(self):
        super().__init__()
        hub = self._start(_HubHandler)
        cdn = self._start(_HubHandler)
        self.endpoint = f"http://127.0.0.1:{hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{cdn.server_address[1]}"

    def ranges(self, name: str) -> list[str | None]:
        """The Range headers of the CDN GETs for one file, in order."""
        sha = {f.name: f.sha256 for files in self.repos.values() for f in files.values()}[name]
        return [r for m, p, r in self.requests if m == "GET" and p.startswith(f"/blobs/{sha}")]


class _ModelScopeHandler(_Handler):
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self._log()
        url = urlparse(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        match = re.match(r"^/api/v1/models/([^/]+/[^/]+)/repo(/files)?$", path)
        if not match:
            return self._json({"Code": 10010205001, "Message": "not found", "Success": False}, 404)
        files = self.fake.repos.get(match[1])
        if files is None:
            return self._json({"Code": 10010205001, "Message": f"model {match[1]} not found", "Success": False}, 404)
        if match[2]:
            listing = [{"Name": f.name.rsplit("/", 1)[-1], "Path": f.name, "Size": f.size, "Sha256": f.sha256,
                        "Type": "blob", "Revision": self.fake.commits[match[1]]} for f in files.values()]
            return self._json({"Code": 200, "Data": {"Files": listing}, "Message": "success", "Success": True})
        f = files.get(query.get("FilePath", [""])[0])
        if f is None:
            return self._json({"Code": 10010205001, "Message": "file not found", "Success": False}, 404)
        self._send_file(f, {})


class FakeModelScope(_Server):
    """A ModelScope hub on 127.0.0.1; `endpoint` is what MODELSCOPE_ENDPOINT should be set to."""

    def __init__(self):
        super().__init__()
        server = self._start(_ModelScopeHandler)
        self.endpoint = f"http://127.0.0.1:{server.server_address[1]}"

    def ranges(self, name: str) -> list[str | None]:
        return [r for m, p, r in self.requests if m == "GET" and "FilePath=" in p and p.endswith(name.replace("/", "%2F"))]
