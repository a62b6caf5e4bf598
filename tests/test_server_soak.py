"""A soak test of a real `camelid serve`: 1,000 requests from 16 concurrent clients, mixing normal,
streamed, cancelled, malformed and never-reading clients.

Pass: no response has a 5xx status, no slot is left busy, and the server's resident memory grows by
less than 5% from request 200 to request 1,000. The figures (requests by kind, statuses, memory,
duration) go to the run's closing report, so CI's log shows them.
"""

from __future__ import annotations

import collections
import itertools
import json
import socket
import threading
import time

import httpx
import openai
import pytest

import suite_report
from model_files import smollm2_path
from server_process import poll, serve

N_REQUESTS = 1000
N_CLIENTS = 16
PARALLEL = 4
CTX = 256
MAX_TOKENS_LIMIT = 4
MAX_BODY = 64 * 1024
RSS_FIRST, RSS_GROWTH = 200, 0.05
UNREAD_SECONDS = 3.0  # how long a never-reading client keeps its connection open
HI = [{"role": "user", "content": "Hi"}]

# One round of kinds; the requests cycle through it, so every kind runs from the start to the end.
ROUND = ["normal", "streamed", "malformed", "cancelled", "normal", "openai", "streamed", "malformed", "never-reading",
         "normal", "streamed", "malformed", "normal", "cancelled", "openai", "streamed", "malformed", "never-reading",
         "normal", "malformed"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory, "--parallel", str(PARALLEL), "-c", str(CTX * PARALLEL), "--max-tokens-limit", str(MAX_TOKENS_LIMIT),
                     "--max-body-bytes", str(MAX_BODY), "--stall-timeout", "2")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def json_post(client: httpx.Client, path: str, content: bytes | str, method: str = "POST") -> httpx.Response:
    return client.request(method, path, content=content, headers={"Content-Type": "application/json"})


class Soak:
    """The clients' shared state: which request comes next, what each got, and the parked sockets of
    never-reading clients."""

    def __init__(self, server, model_id: str):
        self.server, self.model_id = server, model_id
        self.next_index = itertools.count()
        self.lock = threading.Lock()
        self.done = 0
        self.statuses: collections.Counter[tuple[str, str]] = collections.Counter()
        self.kinds: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self.rss: dict[int, int] = {}
        self.parked: collections.deque[tuple[float, socket.socket]] = collections.deque()
        self.local = threading.local()
        self.conversation = server.post("/api/conversations", json={"title": "soak"}).json()["id"]

    # ---- bookkeeping ----

    def client(self) -> httpx.Client:
        if not hasattr(self.local, "client"):
            self.local.client = httpx.Client(base_url=self.server.url, timeout=120)
            self.local.openai = self.server.openai()
        return self.local.client

    def record(self, kind: str, status: str) -> None:
        with self.lock:
            self.kinds[kind] += 1
            self.statuses[(kind, status)] += 1
            self.done += 1
            done = self.done
        if done == RSS_FIRST or done == N_REQUESTS or done % 100 == 0:
            self.rss[done] = rss_bytes(self.server.process.pid)

    def expect(self, condition: bool, what: str) -> None:
        if not condition:
            with self.lock:
                self.failures.append(what)

    def close_parked(self, older_than: float) -> None:
        while True:
            with self.lock:
                if not self.parked or self.parked[0][0] > time.monotonic() - older_than:
                    return
                _, sock = self.parked.popleft()
            sock.close()

    # ---- the clients ----

    def run_client(self) -> None:
        while (i := next(self.next_index)) < N_REQUESTS:
            kind = ROUND[i % len(ROUND)]
            try:
                status = getattr(self, kind.replace("-", "_"))(i)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown, the soak goes on
                status = f"client error {type(exc).__name__}"
                self.expect(False, f"request {i} ({kind}): {type(exc).__name__}: {exc}")
            self.record(kind, str(status))
            self.close_parked(UNREAD_SECONDS)
        self.client().close()

    def normal(self, i: int) -> int:
        client = self.client()
        variant = (i // len(ROUND)) % 4
        if variant == 0:
            r = client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 1, "temperature": 0})
        elif variant == 1:
            r = client.post("/v1/completions", json={"prompt": f"Number {i % 7} is", "max_tokens": 1})
        elif variant == 2:  # no max_tokens: the server's --max-tokens-limit ends it
            r = client.post("/v1/chat/completions", json={"messages": HI, "ignore_eos": True})
            if r.status_code == 200:
                self.expect(r.json()["usage"]["completion_tokens"] <= MAX_TOKENS_LIMIT, f"request {i}: past --max-tokens-limit")
        else:
            r = client.put(f"/api/conversations/{self.conversation}/messages",
                           json={"start": 0, "messages": [{"role": "user", "content": f"soak {i} 你好 🦙"}]})
        self.expect(r.status_code in (200, 429), f"request {i} (normal {variant}): {r.status_code} {r.text[:200]}")
        return r.status_code

    def openai(self, i: int) -> int:
        self.client()
        try:
            reply = self.local.openai.chat.completions.create(model=self.model_id, messages=HI, max_tokens=1)
        except openai.RateLimitError:
            return 429
        self.expect(reply.choices[0].finish_reason in ("stop", "length"), f"request {i}: {reply}")
        return 200

    def streamed(self, i: int) -> int:
        body = {"messages": HI, "max_tokens": 2, "stream": True}
        with self.client().stream("POST", "/v1/chat/completions", json=body) as r:
            lines = [line for line in r.iter_lines() if line]
        if r.status_code == 200:
            self.expect(lines[-1] == "data: [DONE]", f"request {i}: stream ended with {lines[-1:]}")
        return r.status_code

    def cancelled(self, i: int) -> int:
        body = {"messages": HI, "max_tokens": MAX_TOKENS_LIMIT, "stream": True, "ignore_eos": True}
        with self.client().stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code == 200:  # the first generated text, then away
                next(line for line in r.iter_lines() if '"content": "' in line and '"content": ""' not in line)
        return r.status_code  # leaving the block unread closes the connection

    def never_reading(self, i: int) -> str:
        body = json.dumps({"messages": HI, "max_tokens": 2, "stream": True}).encode()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.connect(("127.0.0.1", self.server.port))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (self.server.port, len(body), body))
        with self.lock:
            self.parked.append((time.monotonic(), sock))
        return "never read"

    def malformed(self, i: int) -> int:
        client = self.client()
        variant = (i // len(ROUND)) % 12
        if variant == 0:
            r = json_post(client, "/v1/chat/completions", '{"messages": [')
        elif variant == 1:
            r = client.post("/v1/chat/completions", json={"messages": "Hi", "max_tokens": "many"})
        elif variant == 2:
            r = json_post(client, "/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "a\ud800b"}]}))
        elif variant == 3:
            r = json_post(client, "/v1/completions", b'{"prompt": "x\xed\xa0\x80y", "max_tokens": 1}')
        elif variant == 4:
            r = json_post(client, "/api/conversations", json.dumps({"title": "\udc00 title"}))
        elif variant == 5:
            r = json_post(client, f"/api/conversations/{self.conversation}/messages",
                          json.dumps({"start": 0, "messages": [{"role": "user", "content": "\ud83d"}]}), method="PUT")
        elif variant == 6:
            r = json_post(client, "/v1/completions", json.dumps({"prompt": "a" * MAX_BODY, "max_tokens": 1}))
        elif variant == 7:
            chunks = (b'{"prompt": "' + b"b" * 8192 for _ in range(MAX_BODY // 8192 + 1))  # no Content-Length
            r = client.post("/v1/completions", content=chunks, headers={"Content-Type": "application/json"})
        elif variant == 8:
            r = client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": MAX_TOKENS_LIMIT + 1})
        elif variant == 9:
            r = client.post("/v1/completions", json={"prompt": "tell me more " * CTX, "max_tokens": 1})
        elif variant == 10:
            bad_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}
            r = client.post("/v1/chat/completions", json={"messages": HI, "response_format": bad_schema})
        else:
            r = client.post("/v1/completions", content=b"prompt=x", headers={"Content-Type": "text/plain"})
        self.expect(400 <= r.status_code < 500 and set(r.json()) == {"error"}, f"request {i} (malformed {variant}): {r.status_code} {r.text[:200]}")
        return r.status_code


def test_soak(server):
    soak = Soak(server, smollm2_path().name)
    started = time.monotonic()
    clients = [threading.Thread(target=soak.run_client, name=f"soak-client-{n}") for n in range(N_CLIENTS)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    soak.close_parked(0)
    seconds = time.monotonic() - started
    metrics = poll(lambda: (m := server.metrics())["camelid_slots_busy"] == 0 and m["camelid_requests_waiting"] == 0 and m,
                   timeout=120)

    by_status = collections.Counter()
    for (_, status), n in soak.statuses.items():
        by_status[status] += n
    server_errors = sum(n for status, n in by_status.items() if status.startswith("5"))
    logged_5xx = sum(v for k, v in metrics.items() if k.startswith("camelid_errors_total{") and '"5' in k)
    first, last = soak.rss[RSS_FIRST], soak.rss[N_REQUESTS]
    growth = (last - first) / first
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(soak.kinds.items()))
    statuses = ", ".join(f"{status}: {n}" for status, n in sorted(by_status.items()))
    suite_report.report(f"server soak: {sum(soak.kinds.values())} requests from {N_CLIENTS} clients in {seconds:.0f} s "
                        f"({kinds})")
    suite_report.report(f"server soak: statuses {statuses}; 5xx: {server_errors} (server's count {logged_5xx:.0f}); "
                        f"slots busy after: {metrics['camelid_slots_busy']:.0f}; cancelled generations "
                        f"{metrics['camelid_requests_cancelled_total']:.0f}, stalled connections dropped "
                        f"{metrics['camelid_connections_stalled_total']:.0f}")
    suite_report.report(f"server soak: resident memory after request {RSS_FIRST} {first / 2**20:.1f} MiB, after request "
                        f"{N_REQUESTS} {last / 2**20:.1f} MiB ({growth:+.1%}); by hundred: "
                        + " ".join(f"{n}:{v / 2**20:.0f}" for n, v in sorted(soak.rss.items())))

    assert sum(soak.kinds.values()) == N_REQUESTS
    assert not soak.failures, soak.failures[:20]
    assert server_errors == 0 and logged_5xx == 0, by_status
    assert "Traceback" not in server.log()
    assert growth < RSS_GROWTH, soak.rss
    assert server.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1}).status_code == 200
