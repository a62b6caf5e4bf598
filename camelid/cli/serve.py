"""`camelid serve`: the OpenAI-compatible HTTP API and the web chat page on one model."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from camelid.cli.options import add_template_options, hf_repo
from camelid.errors import CamelidError
from camelid.reasoning import REASONING_FORMATS
from camelid.server.limits import Limits

DEFAULT_PARALLEL = 4
MIN_SLOT_CONTEXT = 64  # tokens in each slot, at the least


def default_data_dir() -> Path:
    """Where the web page keeps its conversations: $XDG_DATA_HOME/camelid, else ~/.local/share/camelid."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "camelid"


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve an OpenAI-compatible API and a web chat page",
                       description="Serve the model over HTTP: the OpenAI API under /v1 and a chat page at /.")
    p.add_argument("-m", "--model", metavar="FILE", help="GGUF model file, or a name to pull: qwen2.5:0.5b, hf.co/USER/REPO:Q4_K_M (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("-hf", "--hf-repo", dest="model", type=hf_repo, metavar="USER/REPO[:QUANT]",
                   help="as llama.cpp's -hf: same as -m hf.co/USER/REPO[:QUANT]")
    p.add_argument("-a", "--alias", metavar="NAME", action="append", default=[],
                   help="also list the model under this name in /v1/models (repeatable); requests may name any model "
                        "and this one answers")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    p.add_argument("--api-key", metavar="KEY", default=os.environ.get("CAMELID_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on the API (default: $CAMELID_API_KEY, or none)")
    p.add_argument("--allowed-host", metavar="NAME", action="append", default=[],
                   help="also answer requests for this host name (NAME or NAME:PORT; repeatable); the server answers "
                        "only its own address otherwise, against DNS rebinding. '*' turns the check off (unsafe)")
    p.add_argument("-c", "--ctx-size", "--ctx_size", dest="ctx_size", type=int, default=None, metavar="N",
                   help="context size in tokens, shared by the slots: each of the --parallel slots gets N / parallel, as "
                        "in llama-server (default: min(4096, the model's) for each slot)")
    p.add_argument("-np", "--parallel", type=int, default=DEFAULT_PARALLEL, metavar="N",
                   help="requests generated at once, each with its own KV cache; more wait in a queue (default: %(default)s)")
    p.add_argument("-t", "--threads", type=int, default=None, metavar="N", help="kernel threads (default: the physical cores)")
    add_template_options(p)
    p.add_argument("--reasoning-format", choices=REASONING_FORMATS, default="auto",
                   help="where a thinking model's <think> text goes: deepseek puts it in reasoning_content (Ollama's API: "
                        "thinking), none leaves it in the reply, auto (default) is deepseek for chat templates with <think> tags")
    p.add_argument("--data-dir", metavar="DIR", type=Path, default=None,
                   help=f"where the web page stores its conversations (default: {default_data_dir()})")
    limits = p.add_argument_group("limits on each request")
    limits.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes, metavar="N",
                        help="largest request body; a larger one is answered 413 (default: %(default)s)")
    limits.add_argument("--max-prompt-tokens", type=int, default=None, metavar="N",
                        help="longest prompt; a longer one is answered 400 (default: the context size)")
    limits.add_argument("--max-tokens-limit", type=int, default=Limits.max_tokens, metavar="N",
                        help="most tokens one request may generate: a larger max_tokens is answered 400, and a "
                             "request without max_tokens stops there (default: %(default)s)")
    limits.add_argument("--max-queue", type=int, default=Limits.max_queue, metavar="N",
                        help="requests that may wait for a free slot; one more is answered 429 with Retry-After "
                             "(default: %(default)s)")
    limits.add_argument("-to", "--timeout", type=float, default=Limits.timeout, metavar="SECONDS",
                        help="time limit of a request from its arrival: generation then ends with finish_reason "
                             "'length'; a request still waiting for a slot gets 503 (default: %(default)g)")
    limits.add_argument("--stall-timeout", type=float, default=Limits.stall_timeout, metavar="SECONDS",
                        help="a client that leaves a response unread this long is disconnected and its generation "
                             "stopped (default: %(default)g)")
    ray = p.add_argument_group("replicas on Ray Serve (pip install 'camelid[ray]')")
    ray.add_argument("--ray", action="store_true",
                     help="serve with replicas of this server on a Ray cluster, behind one endpoint at --host:--port; "
                          "a conversation goes back to the replica that holds its prefix")
    ray.add_argument("--replicas", type=int, default=None, metavar="N", help="replicas (default: 2)")
    ray.add_argument("--min-replicas", type=int, default=None, metavar="N",
                     help="autoscale on requests in flight, from N replicas (with --max-replicas)")
    ray.add_argument("--max-replicas", type=int, default=None, metavar="N", help="autoscale up to N replicas")
    ray.add_argument("--ray-address", metavar="ADDRESS", default=None,
                     help="join this Ray cluster (ray start --head printed it; default: $RAY_ADDRESS, else a new "
                          "cluster on this machine)")
    p.set_defaults(handler=serve)


def limits_from_args(args: argparse.Namespace) -> Limits:
    """The Limits of the command line, checked (CamelidError naming the flag)."""
    limits = Limits(max_body_bytes=args.max_body_bytes, max_prompt_tokens=args.max_prompt_tokens,
                    max_tokens=args.max_tokens_limit, max_queue=args.max_queue, timeout=args.timeout,
                    stall_timeout=args.stall_timeout)
    limits.check()
    return limits


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the model loads so a taken port fails at once."""
    if not 0 <= port <= 65535:
        raise CamelidError(f"--port must be between 0 and 65535, got {port}.")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CamelidError(f"cannot listen on {host!r}: {exc.strerror}; use an address like 127.0.0.1 or 0.0.0.0.") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CamelidError(f"port {port} on {host} is already in use; stop the other server or choose another --port.") from None
        raise CamelidError(f"cannot listen on {host}:{port}: {exc.strerror}.") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(args: argparse.Namespace) -> int:
    if args.parallel < 1:
        raise CamelidError(f"--parallel must be at least 1, got {args.parallel}.")
    slot_ctx = None if args.ctx_size is None else args.ctx_size // args.parallel
    if slot_ctx is not None and slot_ctx < MIN_SLOT_CONTEXT:
        raise CamelidError(f"-c {args.ctx_size} shared by {args.parallel} slots (--parallel) leaves {slot_ctx} tokens for each; "
                           f"give at least {MIN_SLOT_CONTEXT * args.parallel} (-c is the total, as in llama-server).")
    limits = limits_from_args(args)
    if not args.ray and (args.replicas, args.min_replicas, args.max_replicas, args.ray_address) != (None,) * 4:
        raise CamelidError("--replicas, --min-replicas, --max-replicas and --ray-address need --ray.")
    data_dir = args.data_dir or default_data_dir()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CamelidError(f"cannot create the data directory {data_dir}: {exc.strerror}; choose another with --data-dir.") from None
    from camelid.chat.store import ConversationStore

    ConversationStore(data_dir).close()  # a corrupt or unwritable store stops here, before the model loads
    if args.ray:
        return _serve_on_ray(args, slot_ctx, limits, data_dir)
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]

    import uvicorn

    import camelid
    from camelid.server.app import create_app
    from camelid.server.host_check import HostCheck
    from camelid.server.limits import stall_guarded
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    hosts = HostCheck.for_address(host, port, args.allowed_host)
    model = camelid.load(args.model, n_ctx=slot_ctx, chat_template=args.chat_template, n_threads=args.threads)
    model.template.variables.update(args.chat_template_kwargs)
    app = create_app(model, n_slots=args.parallel, api_key=args.api_key or None, data_dir=data_dir, hosts=hosts, limits=limits,
                     worker_thread=False, aliases=tuple(args.alias),
                     reasoning_format=args.reasoning_format)
    shown = f"[{host}]" if ":" in host else host
    print(f"camelid: serving {os.path.basename(model.path)} at http://{shown}:{port}/ "
          f"(OpenAI API at http://{shown}:{port}/v1, {args.parallel} slots of {model.n_ctx} tokens, data in {data_dir})",
          file=sys.stderr, flush=True)
    if not args.api_key and host not in ("127.0.0.1", "::1", "localhost"):
        print(f"camelid: warning: listening on {host} without --api-key: anyone who can reach this machine can use the model.",
              file=sys.stderr, flush=True)
    if hosts.disabled:
        print("camelid: warning: --allowed-host '*' answers any Host header: a web page can reach this server through "
              "DNS rebinding and read the conversations.", file=sys.stderr, flush=True)
    protocol = stall_guarded(AutoHTTPProtocol, limits.stall_timeout, app.state.metrics.count_stalled)
    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5, http=protocol)
    _serve_with_worker_on_main_thread(uvicorn.Server(config), sock, app.state.scheduler)
    return 0


def _serve_on_ray(args: argparse.Namespace, slot_ctx: int | None, limits: Limits, data_dir: Path) -> int:
    from dataclasses import asdict

    from camelid.ray_serve import ReplicaOptions, Scaling, serve_on_ray
    from camelid.server.host_check import HostCheck

    if args.replicas is not None and (args.min_replicas is not None or args.max_replicas is not None):
        raise CamelidError("give either --replicas or --min-replicas/--max-replicas, not both.")
    low = args.min_replicas or args.replicas or 2
    scaling = Scaling(low, args.max_replicas or max(low, args.replicas or 2))
    scaling.check()
    if not 0 < args.port <= 65535:
        raise CamelidError(f"--port must be between 1 and 65535 with --ray, got {args.port}.")
    HostCheck.for_address(args.host, args.port, args.allowed_host)  # a malformed --allowed-host fails here
    threads = args.threads or max(1, (os.cpu_count() or 1) // scaling.max_replicas)
    options = ReplicaOptions(model=args.model, n_ctx=slot_ctx, parallel=args.parallel, threads=threads, api_key=args.api_key or None,
                             data_dir=str(data_dir), host=args.host, port=args.port, allowed_hosts=list(args.allowed_host),
                             chat_template=args.chat_template, template_variables=dict(args.chat_template_kwargs),
                             aliases=list(args.alias), reasoning_format=args.reasoning_format, limits=asdict(limits))
    serve_on_ray(options, scaling, address=args.ray_address or os.environ.get("RAY_ADDRESS"), max_queue=limits.max_queue)
    return 0


def _serve_with_worker_on_main_thread(server, sock, scheduler) -> None:
    """HTTP on a background thread, generation on this (main) thread, which loaded the model (see
    camelid.server.slots). Ctrl+C / SIGTERM ends running generations first, so their streams close
    with an error message instead of waiting out the graceful-shutdown timeout, then stops uvicorn."""

    def http() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            scheduler.drain()  # uvicorn ended (or failed to start): the worker loop returns

    def on_signal(sig, frame) -> None:
        scheduler.drain()
        server.handle_exit(sig, frame)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    thread = threading.Thread(target=http, name="camelid-http", daemon=True)
    thread.start()
    scheduler.run()
    thread.join()
