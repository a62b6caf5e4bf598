"""The HTTP server: an OpenAI-compatible API on a loaded Model, plus the web chat page when present.

create_app(model) returns a FastAPI app with POST /v1/chat/completions and /v1/completions
(streamed as server-sent events or not), POST /v1/embeddings, GET /v1/models, /health, /tokenize,
/detokenize and /metrics. Generation runs in camelid.server.slots' worker thread; every error, including a body
that is not JSON or too large and a missing API key, is answered in OpenAI's error shape. The caps
of camelid.server.limits.Limits apply: body size and lone surrogates (camelid.server.guard), prompt
and generated tokens, the queue (429 with Retry-After), and the time limit of each request.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from camelid import __version__
from camelid import tool_calls
from camelid.constrained import GrammarMask, gbnf_grammar, json_schema_grammar, lark_grammar
from camelid.embeddings import file_pooling
from camelid.errors import CamelidError
from camelid.reasoning import ReasoningSplitter, prompt_opens_thinking, splits_reasoning
from camelid.sampling import SamplingParams
from camelid.server import openai_schema as oai
from camelid.server.guard import APIError, Guard, error_response
from camelid.server.host_check import HostCheck
from camelid.server.limits import RETRY_AFTER_SECONDS, Limits
from camelid.server.metrics import Metrics
from camelid.server.ollama import Serving, make_ollama_router
from camelid.server.openai_schema import (
    ChatCompletionRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest, InvalidParam, TokenizeRequest,
)
from camelid.server.slots import Failed, Finished, Job, Piece, QueueFull, Scheduler

log = logging.getLogger("camelid.server")

DISCONNECT_POLL_SECONDS = 0.5


def _validation_message(exc: RequestValidationError, request: Request) -> tuple[str, str | None]:
    """One line for a request body that does not fit the schema, and the field it names."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'decode error')}).", None
    if not loc and "json" not in request.headers.get("content-type", ""):
        return "the request body must be a JSON object sent with 'Content-Type: application/json'.", None
    param = ".".join(loc) or None
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{param or 'body'}: {first.get('msg', 'invalid value')}{more}.", param


def _install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return error_response(exc, metrics, request.url.path)

    @app.exception_handler(CamelidError)
    async def camelid_error(request: Request, exc: CamelidError):
        return error_response(APIError(400, str(exc), param=getattr(exc, "param", None)), metrics, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc, request)
        return error_response(APIError(400, message, param=param), metrics, request.url.path)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            message, code = f"there is no route {request.method} {request.url.path}.", "not_found"
        elif exc.status_code == 405:
            message, code = f"{request.method} is not allowed on {request.url.path}.", "method_not_allowed"
        elif exc.status_code == 400:
            message, code = f"the request body could not be read as JSON ({exc.detail}); send UTF-8 JSON.", None
        else:
            message, code = str(exc.detail), ("request_too_large" if exc.status_code == 413 else None)
        return error_response(APIError(exc.status_code, message, code=code), metrics, request.url.path)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return error_response(APIError(500, f"internal server error ({type(exc).__name__}); see the server log.", "server_error"), metrics,
                              request.url.path)


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(model, *, n_slots: int = 1, api_key: str | None = None, data_dir: str | os.PathLike | None = None,
               hosts: HostCheck | None = None, limits: Limits | None = None, worker_thread: bool = True,
               aliases: tuple[str, ...] = (), reasoning_format: str = "auto") -> FastAPI:
    """The FastAPI app serving `model` (a camelid Model) with n_slots parallel KV caches.

    api_key, when set, is required on the API routes; data_dir, when set, is where the web chat page
    (camelid.server.web, if installed) keeps its conversations. hosts says which Host headers are
    answered (default: the loopback names on any port; see HostCheck.for_address). limits caps each
    request (default: Limits()); its stall_timeout needs uvicorn to run with
    camelid.server.limits.stall_guarded(...) as its http protocol, as `camelid serve` does.
    With worker_thread the app's startup runs the generation worker on a thread of its own; without,
    the caller runs `app.state.scheduler.run()` itself (`camelid serve` does, on the main thread).
    A request may name any model (clients often send a fixed name such as gpt-4o-mini): the one model
    answers, under the name asked for; /v1/models lists the file's name and the aliases.
    reasoning_format (camelid.reasoning: auto, deepseek or none) says whether a chat reply's <think>
    text goes to reasoning_content.
    """
    limits = limits or Limits()
    limits.check()
    metrics = Metrics()
    scheduler = Scheduler(model, n_slots, metrics, max_queue=limits.max_queue)
    max_prompt = min(model.n_ctx - 1, limits.max_prompt_tokens or model.n_ctx)
    model_id = os.path.basename(model.path)
    model_names = [model_id, *(a for a in dict.fromkeys(aliases) if a != model_id)]  # what /v1/models lists
    known_names = {*model_names, Path(model_id).stem}
    created = int(os.path.getmtime(model.path))
    tok = model.tokenizer
    pooling = file_pooling(model.metadata)
    splits_reasoning(reasoning_format, "")  # an unknown name fails here
    max_token_bytes = max(1, max(len(tok.token_to_bytes(i, True)) for i in range(tok.n_vocab)))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if worker_thread:
            scheduler.start()
        yield
        await asyncio.to_thread(scheduler.stop)

    app = FastAPI(title="camelid", version=__version__, lifespan=lifespan,
                  description="An OpenAI-compatible API for a local LLaMA-family model.")
    app.state.scheduler, app.state.metrics, app.state.model = scheduler, metrics, model
    _install_error_handlers(app, metrics)
    app.add_middleware(Guard, api_key=api_key, max_body=limits.max_body_bytes, metrics=metrics,
                       hosts=hosts or HostCheck.for_address("127.0.0.1", None))

    def served_name(name: str | None) -> str:
        """The model name a response carries: the one the request gave, else the file's."""
        return name or model_id

    def model_card(name: str) -> dict:
        c = model.config
        return {"id": name, "object": "model", "created": created, "owned_by": "camelid",
                "meta": {"n_ctx": model.n_ctx, "n_ctx_train": c.n_ctx_train, "n_vocab": tok.n_vocab,
                         "name": model.metadata.get("general.name")}}

    def check_text_size(text: str, param: str) -> None:
        if len(text.encode("utf-8", "surrogatepass")) > max_token_bytes * model.n_ctx:
            raise APIError(400, f"the {param} is far longer than the context of {model.n_ctx} tokens; shorten it.",
                           param=param, code="context_length_exceeded")

    def tokenize_text(text: str, param: str, add_special: bool) -> list[int]:
        check_text_size(text, param)
        return tok.encode(text, add_special=add_special, parse_special=True)

    def chat_prompt(messages: list[dict[str, str]], variables: dict) -> tuple[list[int], str]:
        """The conversation rendered with the model's chat template, tokenized as ChatSession does, and the text."""
        text = model.template.render(messages, add_generation_prompt=True, **variables)
        check_text_size(text, "messages")
        return model.tokenize_chat(text), text

    def check_room(prompt: list[int], max_tokens: int | None, param: str) -> None:
        if not prompt:
            raise APIError(400, "the prompt is empty and this model adds no BOS token; give some text.", param=param)
        if len(prompt) >= model.n_ctx:
            raise APIError(400, f"the {param} is {len(prompt)} tokens but the context holds {model.n_ctx}; "
                                "shorten it (or start the server with a larger --ctx-size).", param=param, code="context_length_exceeded")
        if len(prompt) > max_prompt:
            raise APIError(400, f"the {param} is {len(prompt)} tokens; this server takes at most {max_prompt} "
                                "(--max-prompt-tokens); shorten it.", param=param, code="context_length_exceeded")
        if max_tokens is not None and len(prompt) + max_tokens > model.n_ctx:
            raise APIError(400, f"the {param} is {len(prompt)} tokens and max_tokens {max_tokens}, more than the context of "
                                f"{model.n_ctx} tokens; lower max_tokens to at most {model.n_ctx - len(prompt)}.",
                           param="max_tokens", code="context_length_exceeded")
        if max_tokens is not None and max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens {max_tokens} is more than this server generates for one request, "
                                f"{limits.max_tokens} (--max-tokens-limit); lower it.", param="max_tokens", code="max_tokens_exceeded")

    def busy(message: str, status: int) -> APIError:
        return APIError(status, message, "rate_limit_error" if status == 429 else "unavailable_error",
                        code="queue_full" if status == 429 else "server_busy", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    def output_mask(constraint: tuple[str, Any, str] | None) -> GrammarMask | None:
        """The token mask of a request's constrained output (see SamplingFields.output_constraint); a grammar
        that cannot be compiled is a 400 naming the field. Compiling takes up to a second: call it in a thread."""
        if constraint is None:
            return None
        kind, spec, param = constraint
        try:
            grammar = json_schema_grammar(spec) if kind == "json" else lark_grammar(spec) if kind == "lark" else gbnf_grammar(spec)
            return GrammarMask(grammar, tok, model.network.n_vocab, "JSON schema" if kind == "json" else "grammar")
        except CamelidError as exc:
            raise InvalidParam(param, str(exc)) from None

    def submit(prompt: list[int], sampling: SamplingParams, ignore_eos: bool, max_tokens: int | None, stops: list[str],
               top_logprobs: int | None, deadline: float, token_mask: GrammarMask | None = None) -> Job:
        job = Job(prompt, limits.max_tokens if max_tokens is None else max_tokens, sampling, stops,
                  asyncio.get_running_loop(), ignore_eos=ignore_eos, top_logprobs=top_logprobs, deadline=deadline,
                  token_mask=token_mask)
        try:
            scheduler.submit(job)
        except QueueFull as exc:
            raise busy(str(exc), 429) from None
        return job

    async def events(job: Job, request: Request, watch: bool) -> AsyncIterator[Piece | Finished | Failed]:
        """The job's events until it ends; the job is cancelled when the consumer stops early
        (a streaming client's disconnect cancels the response task) or, with watch, when the client is gone."""
        loop = asyncio.get_running_loop()
        checked = loop.time()
        try:
            while True:
                try:
                    event = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_SECONDS) if watch else await job.events.get()
                except TimeoutError:
                    event = None
                if watch and loop.time() - checked >= DISCONNECT_POLL_SECONDS:
                    checked = loop.time()
                    if await request.is_disconnected():
                        return
                if event is None:
                    continue
                yield event
                if not isinstance(event, Piece):
                    return
        finally:
            scheduler.cancel(job)

    def render_logprobs(chat: bool, entries, offset: int):
        if entries is None:
            return None
        return oai.chat_logprobs(entries) if chat else oai.completion_logprobs(entries, offset)

    async def respond(job: Job, request: Request, body: oai.SamplingFields, chat: bool, echo: str = "",
                      splitter: ReasoningSplitter | None = None, call_format: str | None = None):
        """The OpenAI response for a submitted job: an SSE stream or one JSON object. With a splitter
        (chat only), the reply's reasoning goes to reasoning_content; with a call_format (a request with
        tools), the reply's tool calls go to tool_calls: streamed, the content is held until the reply is
        complete, then sent with the calls (finish_reason "tool_calls")."""
        id_ = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        now = int(time.time())
        want_logprobs = job.top_logprobs is not None

        def choice(text, finish, logprobs, *, delta, role=False, reasoning=None):
            if chat:
                return oai.chat_choice(text, finish, logprobs, delta=delta, role=role, reasoning=reasoning)
            return oai.completion_choice(text or "", finish, logprobs)

        def split(text: str, last: bool = False) -> tuple[str | None, str]:
            """(reasoning, content) of new reply text (and, when last, of what the splitter held back)."""
            return (None, text) if splitter is None else splitter.feed(text, last)

        def wrap(choices, **extra):
            kind = ("chat.completion.chunk" if body.stream else "chat.completion") if chat else "text_completion"
            return oai.envelope(kind, id_, now, served_name(body.model), choices, **extra)

        def final_objects(done: Finished) -> tuple[dict, dict]:
            return (oai.usage(done.prompt_tokens, done.completion_tokens, done.cached_tokens),
                    oai.timings(done.prompt_tokens - done.cached_tokens, done.prompt_seconds, done.cached_tokens,
                                done.completion_tokens, done.generation_seconds))

        if not body.stream:
            pieces, entries, done = [echo], [], None
            async for event in events(job, request, watch=True):
                if isinstance(event, Failed):
                    if event.status == 503:
                        raise busy(event.message, 503)
                    raise APIError(event.status, event.message, "invalid_request_error" if event.status < 500 else "server_error")
                if isinstance(event, Piece):
                    pieces.append(event.text)
                    entries += event.logprobs or []
                else:
                    done = event
            if done is None:  # the client went away
                return JSONResponse({}, status_code=499)
            used, timed = final_objects(done)
            logprobs = render_logprobs(chat, entries if want_logprobs else None, 0)
            reasoning, content = split("".join(pieces), last=True)
            calls, finish = None, done.finish_reason
            if call_format is not None:
                content, found = tool_calls.parse_reply(content, call_format)
                calls, finish = [c.openai() for c in found] or None, ("tool_calls" if found else finish)
            return JSONResponse(wrap([oai.chat_choice(content, finish, logprobs, delta=False, reasoning=reasoning, tool_calls=calls)
                                      if chat else choice(content, finish, logprobs, delta=False)],
                                     usage=used, timings=timed))

        extra = {"usage": None} if body.include_usage else {}

        async def stream():
            offset = len(echo)
            if chat:
                yield _sse(wrap([choice("", None, None, delta=True, role=True)], **extra))
            elif echo:
                yield _sse(wrap([choice(echo, None, None, delta=True)], **extra))
            held: list[str] = []  # with tools: the content, parsed at the end
            async for event in events(job, request, watch=False):
                if isinstance(event, Piece):
                    reasoning, content = split(event.text)
                    logprobs = render_logprobs(chat, event.logprobs, offset)
                    if call_format is not None:
                        held.append(content)
                        content = ""
                    if reasoning or content or logprobs or (splitter is None and call_format is None):
                        yield _sse(wrap([choice(content, None, logprobs, delta=True, reasoning=reasoning)], **extra))
                    offset += len(event.text)
                elif isinstance(event, Failed):
                    metrics.count_error(event.status)
                    yield _sse(oai.error_body(event.message, "invalid_request_error" if event.status < 500 else "server_error"))
                    return
                else:
                    reasoning, content = split("", last=True)
                    finish, calls = event.finish_reason, []
                    if call_format is not None:
                        content, calls = tool_calls.parse_reply("".join(held) + content, call_format)
                        finish = "tool_calls" if calls else finish
                    if reasoning or content:
                        yield _sse(wrap([choice(content, None, None, delta=True, reasoning=reasoning)], **extra))
                    for i, call in enumerate(calls):
                        yield _sse(wrap([oai.chat_choice(None, None, None, delta=True, tool_calls=[call.openai(i)])], **extra))
                    used, timed = final_objects(event)
                    last = wrap([choice(None, finish, None, delta=True)], **extra)
                    if body.include_usage:
                        yield _sse(last)
                        last = wrap([], usage=used)
                    last["timings"] = timed
                    yield _sse(last)
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/health", tags=["server"])
    async def health():
        """{"status": "ok"} once the model is loaded (as llama.cpp's server)."""
        return {"status": "ok"}

    @app.get("/v1/models", tags=["openai"])
    async def list_models():
        return {"object": "list", "data": [model_card(name) for name in model_names]}

    @app.get("/v1/models/{name:path}", tags=["openai"])
    async def get_model(name: str):
        if name not in known_names:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {model_id!r} (GET /v1/models).",
                           param="model", code="model_not_found")
        return model_card(name)

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        """Reply to a conversation, rendered with the model's chat template."""
        deadline = time.monotonic() + limits.timeout
        body.sampling()
        top_logprobs = body.top_logprobs_count()
        messages, variables = body.plain_messages(), body.template_variables()
        constraint, call_format = body.output_constraint(), None
        if body.tools:
            messages, constraint, call_format = tool_calls.plan(body.tools, body.tool_choice, body.parallel_tool_calls, messages,
                                                                variables, constraint, model.template.source, special_token)
        prompt, text = await asyncio.to_thread(chat_prompt, messages, variables)
        check_room(prompt, body.token_limit(), "messages")
        try:
            split_replies = splits_reasoning(body.reasoning_format or reasoning_format, model.template.source)
        except CamelidError as exc:
            raise InvalidParam("reasoning_format", str(exc)) from None
        mask = await asyncio.to_thread(output_mask, constraint)
        metrics.count_request("/v1/chat/completions")
        job = submit(prompt, body.sampling(), body.ignore_eos, body.token_limit(), model.template.stop_strings + body.stop_strings(),
                     top_logprobs, deadline, mask)
        return await respond(job, request, body, chat=True, call_format=call_format,
                             splitter=ReasoningSplitter(prompt_opens_thinking(text)) if split_replies else None)

    def special_token(text: str) -> int | None:
        """The id of the control or user-defined token spelled text (<tool_call>), else None."""
        tid = tok.token_id(text)
        return tid if tid is not None and (tok.is_control(tid) or tok.is_user_defined(tid)) else None

    @app.post("/v1/completions", tags=["openai"])
    async def completions(body: CompletionRequest, request: Request):
        """Continue a prompt (text or token ids)."""
        deadline = time.monotonic() + limits.timeout
        body.sampling()
        prompt = body.single_prompt()
        if isinstance(prompt, str):
            tokens = await asyncio.to_thread(tokenize_text, prompt, "prompt", True)
            echo = prompt.encode("utf-8", "surrogatepass").decode("utf-8", "replace")  # JSON output must be UTF-8
        else:
            bad = [t for t in prompt if not 0 <= t < tok.n_vocab]
            if bad:
                raise InvalidParam("prompt", f"token id {bad[0]} is outside the vocabulary (0..{tok.n_vocab - 1}).")
            tokens, echo = list(prompt), tok.decode(prompt)
        check_room(tokens, body.max_tokens, "prompt")
        mask = await asyncio.to_thread(output_mask, body.output_constraint())
        metrics.count_request("/v1/completions")
        job = submit(tokens, body.sampling(), body.ignore_eos, body.max_tokens, body.stop_strings(), body.logprobs, deadline, mask)
        return await respond(job, request, body, chat=False, echo=echo if body.echo else "")

    def embedding_tokens(item: str | list[int], param: str) -> list[int]:
        if isinstance(item, str):
            tokens = tokenize_text(item, param, True)
        else:
            bad = [t for t in item if not 0 <= t < tok.n_vocab]
            if bad:
                raise InvalidParam(param, f"token id {bad[0]} is outside the vocabulary (0..{tok.n_vocab - 1}).")
            tokens = list(item)
        if not tokens:
            raise InvalidParam(param, f"{param} is empty and this model adds no BOS token; give some text.")
        if len(tokens) > model.n_ctx:
            raise APIError(400, f"{param} is {len(tokens)} tokens but the context holds {model.n_ctx}; shorten it "
                                "(or start the server with a larger --ctx-size).", param=param, code="context_length_exceeded")
        return tokens

    @app.post("/v1/embeddings", tags=["openai"])
    async def embeddings(body: EmbeddingRequest):
        """Embeddings of texts: the last layer's normalized hidden states, pooled as the model's file says
        (mean when it says nothing), as llama-server --embeddings."""
        if body.dimensions is not None and body.dimensions != model.config.n_embd:
            raise InvalidParam("dimensions", f"this model's embeddings have {model.config.n_embd} dimensions; "
                                             f"leave out dimensions or give {model.config.n_embd}.")
        if pooling == "none":
            raise InvalidParam("input", "this model's file asks for no pooling (one vector per token), which the OpenAI "
                                        "embeddings API cannot return.")
        items = body.inputs()
        inputs = await asyncio.to_thread(lambda: [embedding_tokens(item, f"input[{i}]" if len(items) > 1 else "input")
                                                  for i, item in enumerate(items)])
        metrics.count_request("/v1/embeddings")
        vectors = await scheduler.embed(inputs, pooling)
        if isinstance(vectors, Failed):
            raise APIError(vectors.status, vectors.message, "invalid_request_error" if vectors.status < 500 else "server_error")
        return JSONResponse(oai.embedding_list(vectors, served_name(body.model), sum(map(len, inputs)), body.encoding_format == "base64"))

    @app.post("/tokenize", tags=["server"])
    async def tokenize(body: TokenizeRequest):
        """Token ids of a text, as llama.cpp's server (add_special adds the BOS token)."""
        ids = await asyncio.to_thread(tok.encode, body.content, body.add_special, body.parse_special)
        if body.with_pieces:
            return {"tokens": [{"id": i, "piece": tok.token_to_bytes(i, True).decode("utf-8", "replace")} for i in ids]}
        return {"tokens": ids}

    @app.post("/detokenize", tags=["server"])
    async def detokenize(body: DetokenizeRequest):
        """The text of token ids, as llama.cpp's server."""
        bad = [t for t in body.tokens if not 0 <= t < tok.n_vocab]
        if bad:
            raise InvalidParam("tokens", f"token id {bad[0]} is outside the vocabulary (0..{tok.n_vocab - 1}).")
        return {"content": tok.decode(body.tokens)}

    @app.get("/metrics", tags=["server"], response_class=PlainTextResponse)
    async def prometheus_metrics():
        """Prometheus text: requests, tokens, tokens/s, busy slots, queue depth."""
        busy, waiting = scheduler.load()
        return PlainTextResponse(metrics.render(busy, len(scheduler.slots), waiting, scheduler.kv_usage()), media_type="text/plain; version=0.0.4")

    app.include_router(make_ollama_router(Serving(
        model=model, model_id=model_id, pooling=pooling, scheduler=scheduler, metrics=metrics, timeout=limits.timeout,
        reasoning_format=reasoning_format,
        max_tokens=limits.max_tokens, chat_prompt=chat_prompt, tokenize_text=tokenize_text, check_room=check_room,
        embedding_tokens=embedding_tokens, submit=submit, events=events, output_mask=output_mask, special_token=special_token)))
    if data_dir is not None and importlib.util.find_spec("camelid.server.web") is not None:
        from camelid.server.web import make_web_router

        app.include_router(make_web_router(Path(data_dir)))
    return app
