"""camelid replicas on Ray Serve (`camelid serve --ray`): one OpenAI-compatible endpoint in front of
many camelid servers, on one machine or a Ray cluster of several.

Ray Serve's HTTP proxy hands every request to the `Gateway` deployment, which reads what decides
where the request should run (the text of the conversation so far) and passes the HTTP request on,
through a deployment handle, to a `Replica`: a whole camelid server (camelid.server.app: the OpenAI
and Ollama APIs, the web page) with a model, KV pool and engine of its own, called in-process over
ASGI. The handle's request router, `PrefixAffinityRouter` (Ray Serve's request-router API), sends a
request to the replica that already served the longest prefix of its text, whose KV pool probably
still holds it, unless that replica is full or much busier than the least loaded one; other requests
go to the least loaded replica. Ray restarts a replica that dies; the requests it was serving end
with an error (a 503, or an error event in a stream), never a hang.

Ray is an optional extra (`pip install camelid[ray]`); nothing else in camelid imports this module
or Ray.
"""


import asyncio
import json
import logging
import os
import random
import signal
import sys
import threading
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import AsyncIterator, Sequence

try:
    import ray
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from ray import serve
    from ray.serve.config import AutoscalingConfig, RequestRouterConfig
    from ray.serve.request_router import LocalityMixin, MultiplexMixin, PendingRequest, ReplicaID, RequestRouter, RunningReplica
except ImportError as exc:  # pragma: no cover - depends on the extra
    from camelid.errors import CamelidError

    raise CamelidError("serving on Ray needs Ray Serve: pip install 'camelid[ray]'.") from exc

log = logging.getLogger("camelid.ray")

APP_NAME = "camelid"
REPLICA_HEADER = "x-camelid-replica"  # the process id of the replica that answered
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]


# ---- what a request's place depends on ----

def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def routing_text(path: str, body: bytes) -> str:
    """The text whose prefix decides a request's replica: a chat's messages in order, or a prompt
    (with Ollama's system text before it); "" for other requests."""
    if not body:
        return ""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(data, dict):
        return ""
    messages = data.get("messages")
    if isinstance(messages, list):
        return "".join(f"{m.get('role', '')}\x1f{_text_of(m.get('content'))}\x1e" for m in messages if isinstance(m, dict))
    prompt = data.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompt = prompt[0]
    if isinstance(prompt, str):
        system = data.get("system") if path.startswith("/api/") and isinstance(data.get("system"), str) else ""
        return system + prompt
    return ""


def _common_length(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


class PrefixAffinityRouter(LocalityMixin, MultiplexMixin, RequestRouter):
    """Routes a request to the replica that served the longest prefix of its routing text (at least
    min_match characters, or a whole earlier text: the previous turn of the conversation), unless
    that replica has `imbalance` more requests in flight than the least loaded one; then, and when
    nothing matches, to the least loaded replica. A replica that is full (max_ongoing_requests)
    passes the request on to the next in that order.

    Each router (one per gateway replica) counts the requests it has in flight on each replica and
    remembers the last `history` texts it sent to each.
    """

    def initialize_state(self, min_match: int = 32, imbalance: int = 4, history: int = 1024):
        self.min_match, self.imbalance, self.history = min_match, imbalance, history
        self.sent: dict[ReplicaID, deque[str]] = {}
        self.in_flight: Counter[ReplicaID] = Counter()

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        text = _pending_text(pending_request)
        best, best_n = None, 0
        if text:
            for replica in candidate_replicas:
                n = max((m for m in (self._match(text, seen) for seen in self.sent.get(replica.replica_id, ())) if m), default=0)
                if n > best_n:
                    best, best_n = replica, n
        loads = {r.replica_id: self.in_flight[r.replica_id] for r in candidate_replicas}
        by_load = [[r] for r in sorted(candidate_replicas, key=lambda r: (loads[r.replica_id], random.random()))]
        if best is None or loads[best.replica_id] - min(loads.values()) > self.imbalance:
            return by_load
        return [[best]] + [rank for rank in by_load if rank[0] is not best]

    def _match(self, text: str, seen: str) -> int:
        n = _common_length(text, seen)
        return n if n >= self.min_match or n == len(seen) else 0

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        self.in_flight[replica_id] += 1
        text = _pending_text(pending_request)
        if text:
            self.sent.setdefault(replica_id, deque(maxlen=self.history)).appendleft(text)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        if self.in_flight[replica_id] > 0:
            self.in_flight[replica_id] -= 1

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.sent.pop(replica_id, None)
        self.in_flight.pop(replica_id, None)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        alive = {r.replica_id for r in replicas}
        for gone in [rid for rid in {*self.sent, *self.in_flight} if rid not in alive]:
            self.sent.pop(gone, None)
            self.in_flight.pop(gone, None)


def _pending_text(pending_request: PendingRequest | None) -> str:
    if pending_request is None:
        return ""
    text = pending_request.kwargs.get("routing_text")
    return text if isinstance(text, str) else ""


# ---- a replica: a camelid server called over ASGI ----

@dataclass
class ReplicaOptions:
    """What each replica loads and how it serves: `camelid serve`'s options."""

    model: str | None
    n_ctx: int | None = None  # per sequence
    parallel: int = 4
    threads: int = 1
    api_key: str | None = None
    data_dir: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    allowed_hosts: Sequence[str] = ()
    chat_template: str | None = None
    template_variables: dict = field(default_factory=dict)
    aliases: Sequence[str] = ()
    reasoning_format: str = "auto"
    limits: dict = field(default_factory=dict)  # camelid.server.limits.Limits fields


class Replica:
    """One camelid server. Its model loads, and its engine runs, on a thread of its own (the one
    that loads the model runs the kernels: see camelid.server.slots); requests reach its FastAPI app
    in-process."""

    def __init__(self, options: dict):
        self.options = ReplicaOptions(**options)
        self.app = None
        self._error: BaseException | None = None
        ready = threading.Event()
        threading.Thread(target=self._run_engine, args=(ready,), name="camelid-engine", daemon=True).start()
        ready.wait()
        if self._error is not None:
            raise self._error

    def _run_engine(self, ready: threading.Event) -> None:
        try:
            self.app = _create_app(self.options)
        except BaseException as exc:  # noqa: BLE001 - raised again in __init__
            self._error = exc
            return
        finally:
            ready.set()
        self.app.state.scheduler.run()

    async def __call__(self, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes,
                       client: tuple[str, int] | None = None, routing_text: str = "") -> AsyncIterator:
        """The response to one HTTP request: first (status, headers), then the body's pieces as they come.
        routing_text is for PrefixAffinityRouter, which reads it from the call."""
        async for message in call_asgi(self.app, method, path, query, headers, body, client):
            yield message

    def __del__(self):
        if self.app is not None:
            self.app.state.scheduler.drain()


def _create_app(o: ReplicaOptions):
    from pathlib import Path

    import camelid
    from camelid.server.app import create_app
    from camelid.server.host_check import HostCheck
    from camelid.server.limits import Limits

    model = camelid.load(o.model, n_ctx=o.n_ctx, chat_template=o.chat_template, n_threads=o.threads, show_progress=False)
    model.template.variables.update(o.template_variables)
    hosts = HostCheck.for_address(o.host, o.port, list(o.allowed_hosts))
    return create_app(model, n_slots=o.parallel, api_key=o.api_key, data_dir=Path(o.data_dir) if o.data_dir else None,
                      hosts=hosts, limits=Limits(**o.limits), worker_thread=False, aliases=tuple(o.aliases),
                      reasoning_format=o.reasoning_format)


async def call_asgi(app, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes,
                    client: tuple[str, int] | None = None) -> AsyncIterator:
    """Run one HTTP request through an ASGI app: yields (status, headers), then each body piece as the
    app sends it. Closing the generator early tells the app its client went away."""
    sent: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    request_sent = False

    async def receive():
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode("utf-8"), "query_string": query.encode("latin-1"),
             "root_path": "", "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
             "client": client, "server": None, "state": {}}
    task = asyncio.ensure_future(app(scope, receive, sent.put))
    task.add_done_callback(lambda _: sent.put_nowait(None))
    try:
        while (message := await sent.get()) is not None:
            if message["type"] == "http.response.start":
                yield (message["status"], [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
                       + [(REPLICA_HEADER, str(os.getpid()))])
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    break
        if task.done() and task.exception() is not None:
            raise task.exception()
    finally:
        gone.set()
        if not task.done():
            try:
                await asyncio.wait_for(task, timeout=10)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the client is gone either way
                task.cancel()


# ---- the gateway ----

REPLICA_STOPPED = "the camelid replica serving this request stopped; retry."


async def rest_of_answer(answer, content_type: str) -> AsyncIterator[bytes]:
    """The rest of a replica's answer; if the replica dies midway, a stream ends with an error in its
    own format (an OpenAI error event, or an Ollama error line)."""
    try:
        async for piece in answer:
            yield piece
    except Exception as exc:  # noqa: BLE001
        log.warning("a replica stopped while answering: %r", exc)
        if content_type.startswith("text/event-stream"):
            error = {"error": {"message": REPLICA_STOPPED, "type": "server_error", "code": 503}}
            yield f"data: {json.dumps(error)}\n\n".encode()
        elif content_type.startswith("application/x-ndjson"):
            yield (json.dumps({"error": REPLICA_STOPPED}) + "\n").encode()


gateway_api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


def error_response(status: int, message: str, kind: str = "server_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers={"Retry-After": "1"} if status == 503 else None)


@serve.ingress(gateway_api)
class Gateway:
    """Passes each HTTP request to a replica chosen by PrefixAffinityRouter and streams its answer back."""

    def __init__(self, replicas, max_body_bytes: int):
        self.replicas = replicas.options(stream=True)
        self.max_body_bytes = max_body_bytes

    @gateway_api.api_route("/{path:path}", methods=METHODS)
    async def forward(self, path: str, request: Request):
        # Ray pickles this class by value (serve.ingress subclasses it): the module's names are
        # looked up through an import, not through the pickled function's globals
        from camelid.ray_serve import REPLICA_STOPPED, error_response, rest_of_answer, routing_text

        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > self.max_body_bytes:
                return error_response(413, f"the request body is larger than {self.max_body_bytes} bytes (--max-body-bytes).",
                                      "invalid_request_error")
        body = bytes(body)
        client = (request.client.host, request.client.port) if request.client else None
        answer = self.replicas.remote(request.method, request.url.path, request.url.query, list(request.headers.items()),
                                      body, client, routing_text=routing_text(request.url.path, body))
        try:
            status, headers = await answer.__anext__()
        except Exception as exc:  # noqa: BLE001 - the replica died or could not be reached
            log.warning("request failed before its answer started: %r", exc)
            return error_response(503, REPLICA_STOPPED)
        content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
        return StreamingResponse(rest_of_answer(answer, content_type), status_code=status, media_type=content_type or None,
                                 headers={k: v for k, v in headers if k.lower() not in ("content-length", "content-type")})


# ---- deploying ----

@dataclass
class Scaling:
    """How many replicas: a fixed number, or autoscaled between min and max on requests in flight."""

    min_replicas: int = 1
    max_replicas: int = 1

    def check(self) -> None:
        from camelid.errors import CamelidError

        if self.min_replicas < 1 or self.max_replicas < self.min_replicas:
            raise CamelidError(f"replicas: give 1 <= --min-replicas <= --max-replicas, got {self.min_replicas} and "
                               f"{self.max_replicas}.")


def build_app(options: ReplicaOptions, scaling: Scaling, max_queue: int = 64):
    """The Ray Serve application: Gateway in front of the Replica deployment."""
    scaling.check()
    per_replica = options.parallel + max_queue  # beyond that, a replica refuses (429) as `camelid serve` does
    replica_options = dict(ray_actor_options={"num_cpus": options.threads}, max_ongoing_requests=per_replica,
                           request_router_config=RequestRouterConfig(request_router_class=PrefixAffinityRouter),
                           health_check_period_s=2, health_check_timeout_s=30, graceful_shutdown_timeout_s=10)
    if scaling.min_replicas == scaling.max_replicas:
        replica_options["num_replicas"] = scaling.min_replicas
    else:
        replica_options["autoscaling_config"] = AutoscalingConfig(
            min_replicas=scaling.min_replicas, max_replicas=scaling.max_replicas, target_ongoing_requests=options.parallel,
            upscale_delay_s=5, downscale_delay_s=60)
    replica = serve.deployment(Replica, name="camelid-replica", **replica_options)
    gateway = serve.deployment(Gateway, name="camelid-gateway", ray_actor_options={"num_cpus": 0},
                               max_ongoing_requests=10_000)
    return gateway.bind(replica.bind(asdict(options)), options.limits.get("max_body_bytes", 4 << 20))


def app_builder(args: dict):
    """A Ray Serve application builder (`import_path: camelid.ray_serve:app_builder` in a Serve config,
    as deploy/kuberay.yaml uses): args holds ReplicaOptions' fields, min_replicas, max_replicas and
    max_queue."""
    args = dict(args)
    low = int(args.pop("min_replicas", 1))
    scaling = Scaling(low, int(args.pop("max_replicas", low)))
    max_queue = int(args.pop("max_queue", 64))
    options = ReplicaOptions(**args)
    options.limits = {"max_queue": max_queue, **options.limits}
    return build_app(options, scaling, max_queue)


def serve_on_ray(options: ReplicaOptions, scaling: Scaling, address: str | None = None, max_queue: int = 64) -> None:
    """Start (or join, given its address) a Ray cluster, deploy the app with its HTTP proxy on
    options.host:options.port, and serve until SIGINT or SIGTERM."""
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        serve.start(http_options={"host": options.host, "port": options.port})
        serve.run(build_app(options, scaling, max_queue), name=APP_NAME, route_prefix="/", blocking=False)
        shown = f"[{options.host}]" if ":" in options.host else options.host
        replicas = (str(scaling.min_replicas) if scaling.min_replicas == scaling.max_replicas
                    else f"{scaling.min_replicas}-{scaling.max_replicas}")
        print(f"camelid: serving on Ray at http://{shown}:{options.port}/ ({replicas} replicas of {options.parallel} slots, "
              f"{options.threads} threads each)", file=sys.stderr, flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1):
            pass
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
