"""Ollama's API on the same server: /api/chat, /api/generate, /api/embed (and the older /api/embeddings),
/api/tags, /api/show, /api/ps and /api/version, for the desktop apps and libraries that speak it.

Replies follow Ollama's docs/api.md: newline-delimited JSON when streaming (the default), Ollama's
field names, durations in nanoseconds, errors as {"error": "..."}. Generation goes through the same
scheduler as the OpenAI routes. The model is always loaded: any model name is answered by it,
keep_alive is accepted and changes nothing, and options.num_ctx cannot grow the context the server
started with (a request that does not fit ends with done_reason "length", as Ollama's does).
A thinking model's reasoning (<think>...</think>, camelid.reasoning) comes in `thinking`; think=false
sets the template's enable_thinking to false (Qwen3). Not supported yet, refused with a 400 that
says so: images. format ("json" or a JSON schema) constrains the reply as the OpenAI routes' response_format;
tools are offered and parsed as there (camelid.tool_calls), the calls in message.tool_calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from camelid import __version__
from camelid.chat.template import check_template_variables
from camelid.errors import CamelidError
from camelid.reasoning import ReasoningSplitter, prompt_opens_thinking, splits_reasoning, template_thinks
from camelid import tool_calls
from camelid.sampling import SamplingParams
from camelid.server.guard import APIError
from camelid.server.openai_schema import InvalidParam
from camelid.server.slots import Failed, Finished, Job, Piece

NDJSON = "application/x-ndjson"
_SAMPLING_OPTIONS = {  # Ollama's option -> SamplingParams field
    "temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p", "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n", "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
    "seed": "seed",
}


@dataclass
class Serving:
    """What the Ollama routes use of the app (camelid.server.app.create_app builds it)."""

    model: Any  # camelid Model
    model_id: str
    pooling: str
    scheduler: Any  # camelid.server.slots.Scheduler
    metrics: Any
    timeout: float
    max_tokens: int  # the server's cap on generated tokens
    reasoning_format: str  # camelid.reasoning: auto, deepseek or none
    chat_prompt: Callable[[list[dict], dict], tuple[list[int], str]]
    tokenize_text: Callable[[str, str, bool], list[int]]
    check_room: Callable[[list[int], int | None, str], None]
    embedding_tokens: Callable[[str | list[int], str], list[int]]
    submit: Callable[..., Job]
    output_mask: Callable[[tuple | None], Any]
    special_token: Callable[[str], int | None]
    events: Callable[..., AsyncIterator]


class OllamaMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[Any] | None = None
    thinking: str | None = None
    tool_name: str | None = None

    def template_message(self) -> dict:
        """The message as the chat template (and camelid.tool_calls) takes it."""
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [{"type": "function", **c} for c in self.tool_calls if isinstance(c, dict)]
        if self.role == "tool":
            message["tool_call_id"] = self.tool_name
        return message


class _Generation(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    stream: bool = True
    options: dict[str, Any] | None = None
    format: Any = None
    keep_alive: Any = None
    think: Any = None

    def output_constraint(self) -> tuple[str, Any, str] | None:
        """format: "json" (any JSON object) or a JSON schema, as camelid.server.app's output_mask takes it."""
        if self.format in (None, ""):
            return None
        if self.format == "json":
            return "json", True, "format"
        if isinstance(self.format, dict):
            return "json", self.format, "format"
        raise InvalidParam("format", f'format must be "json" or a JSON schema object, not {self.format!r}.')

    def sampling(self) -> SamplingParams:
        options = self.options or {}
        given = {field: options[name] for name, field in _SAMPLING_OPTIONS.items() if options.get(name) is not None}
        if isinstance(given.get("seed"), int) and given["seed"] < 0:  # Ollama's -1: a random seed
            del given["seed"]
        try:
            return SamplingParams(**given)
        except (TypeError, ValueError, CamelidError) as exc:
            raise InvalidParam("options", f"options: {exc}") from None

    def token_limit(self) -> int | None:
        """options.num_predict: None for -1 (until the context is full) and -2 (fill the context)."""
        n = (self.options or {}).get("num_predict")
        if n is None or n in (-1, -2):
            return None
        if not isinstance(n, int) or n < 1:
            raise InvalidParam("options.num_predict", f"options.num_predict must be a positive integer, -1 or -2, not {n!r}.")
        return n

    def stops(self) -> list[str]:
        stop = (self.options or {}).get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not all(isinstance(s, str) for s in stop):
            raise InvalidParam("options.stop", "options.stop must be a list of strings.")
        return list(stop)


class ChatRequest(_Generation):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class GenerateRequest(_Generation):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool = False
    images: list[str] | None = None
    context: list[int] | None = None


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    input: str | list[str] = ""
    truncate: bool = True
    keep_alive: Any = None
    dimensions: int | None = None
    options: dict[str, Any] | None = None


class LegacyEmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    prompt: str = ""


class ModelRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    name: str = ""  # the older spelling of model


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def make_ollama_router(s: Serving) -> APIRouter:
    """The Ollama routes, on the app's scheduler and helpers."""
    router = APIRouter(tags=["ollama"])
    model = s.model
    tok = model.tokenizer

    def details() -> dict:
        meta = model.metadata
        arch = meta.get("general.architecture", "llama")
        return {"parent_model": "", "format": "gguf", "family": arch, "families": [arch],
                "parameter_size": meta.get("general.size_label", ""), "quantization_level": _file_type_name(meta.get("general.file_type"))}

    def model_entry(name: str) -> dict:
        stat = os.stat(model.path)
        return {"name": name, "model": name, "modified_at": datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(),
                "size": stat.st_size, "digest": "", "details": details()}

    def final_fields(done: Finished, started: float) -> dict:
        return {"done": True, "done_reason": done.finish_reason, "total_duration": _ns(time.monotonic() - started),
                "load_duration": 0, "prompt_eval_count": done.prompt_tokens, "prompt_eval_duration": _ns(done.prompt_seconds),
                "eval_count": done.completion_tokens, "eval_duration": _ns(done.generation_seconds)}

    async def start(prompt: list[int], body: _Generation, stops: list[str], deadline: float, constraint: tuple | None) -> Job:
        max_tokens = body.token_limit()
        s.check_room(prompt, max_tokens, "prompt")
        if max_tokens is None:
            max_tokens = min(s.max_tokens, model.n_ctx - len(prompt))
        mask = await asyncio.to_thread(s.output_mask, constraint)
        return s.submit(prompt, body.sampling(), False, max_tokens, stops, None, deadline, mask)

    async def reply(job: Job, request: Request, body: _Generation, started: float, piece: Callable[..., dict],
                    last: Callable[[Finished, str], dict], splitter: ReasoningSplitter | None, call_format: str | None = None):
        """Ollama's reply to a job: NDJSON lines (stream) or one object that holds all the text. piece(content,
        thinking, calls) shapes the text, last(done, whole raw reply) adds to the final object; with a splitter,
        the reasoning goes to `thinking`; with a call_format (tools given), the content is held to the
        end and its calls go to message.tool_calls."""
        raw: list[str] = []
        held: list[str] = []

        def calls_of(content: str) -> tuple[str, dict]:
            """(the reply's text, {"tool_calls": [...]} or {}) of content in the call format."""
            text, calls = tool_calls.parse_reply(content, call_format)
            found = [{"function": {"name": c.name, "arguments": json.loads(c.arguments)}} for c in calls]
            return text or "", ({"tool_calls": found} if found else {})

        def split(text: str, end: bool = False) -> tuple[str, str]:
            raw.append(text)
            if splitter is None:
                return text, ""
            thinking, content = splitter.feed(text, end)
            return content, thinking

        if not body.stream:
            text, done = [], None
            async for event in s.events(job, request, watch=True):
                if isinstance(event, Failed):
                    raise APIError(event.status, event.message)
                if isinstance(event, Piece):
                    text.append(event.text)
                else:
                    done = event
            if done is None:
                return JSONResponse({}, status_code=499)
            content, thinking = split("".join(text), end=True)
            calls: dict = {}
            if call_format is not None:
                content, calls = calls_of(content)
            return JSONResponse({**piece(content, thinking, calls), **final_fields(done, started), **last(done, "".join(raw))})

        async def lines():
            async for event in s.events(job, request, watch=False):
                if isinstance(event, Piece):
                    content, thinking = split(event.text)
                    if call_format is not None:
                        held.append(content)
                        content = ""
                    if content or thinking:
                        yield json.dumps({**piece(content, thinking), "done": False}, ensure_ascii=False) + "\n"
                elif isinstance(event, Failed):
                    s.metrics.count_error(event.status)
                    yield json.dumps({"error": event.message}, ensure_ascii=False) + "\n"
                    return
                else:
                    content, thinking = split("", end=True)
                    calls: dict = {}
                    if call_format is not None:
                        content, calls = calls_of("".join(held) + content)
                    final = {**piece(content, thinking, calls), **final_fields(event, started), **last(event, "".join(raw))}
                    yield json.dumps(final, ensure_ascii=False) + "\n"

        return StreamingResponse(lines(), media_type=NDJSON)

    def thinking(body: _Generation, variables: dict, name: str) -> bool:
        """Whether to split the reply's reasoning into `thinking`, from the request's think (true, a level such
        as "high", false, or none: the server's --reasoning-format); sets Qwen3's enable_thinking to match."""
        if body.think is None:
            return splits_reasoning(s.reasoning_format, model.template.source)
        if not body.think:
            variables.setdefault("enable_thinking", False)
            return False
        if not template_thinks(model.template.source):
            raise InvalidParam("think", f"{name!r} does not support thinking: its chat template has no <think> tags.")
        variables.setdefault("enable_thinking", True)
        return True

    def with_thinking(fields: dict, thinking_text: str, calls: dict | None = None) -> dict:
        return {**fields, **({"thinking": thinking_text} if thinking_text else {}), **(calls or {})}

    def loaded_reply(name: str, body: _Generation, chat: bool) -> JSONResponse:
        """Ollama's answer to a request with nothing to generate: it loads (or, keep_alive 0, unloads) the model."""
        reason = "unload" if body.keep_alive in (0, "0", "0s", "0m") else "load"
        out = {"model": name, "created_at": _now(), "done": True, "done_reason": reason}
        out.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
        return JSONResponse(out)

    @router.post("/api/chat")
    async def chat(body: ChatRequest, request: Request):
        """Reply to a conversation (Ollama's /api/chat)."""
        started = time.monotonic()
        deadline = started + s.timeout
        if not body.messages:
            return loaded_reply(body.model, body, chat=True)
        for i, m in enumerate(body.messages):
            if m.images:
                raise InvalidParam(f"messages.{i}.images", "images are not supported: camelid runs text-only models.")
        try:
            variables = check_template_variables(body.chat_template_kwargs or {}, "chat_template_kwargs")
        except CamelidError as exc:
            raise InvalidParam("chat_template_kwargs", str(exc)) from None
        name = body.model or s.model_id
        split = thinking(body, variables, name)
        messages = [m.template_message() for m in body.messages]
        constraint, call_format = body.output_constraint(), None
        if body.tools:
            messages, constraint, call_format = tool_calls.plan(body.tools, "auto", True, messages, variables, constraint,
                                                                model.template.source, s.special_token)
        prompt, text = await asyncio.to_thread(s.chat_prompt, messages, variables)
        s.metrics.count_request("/api/chat")
        job = await start(prompt, body, model.template.stop_strings + body.stops(), deadline, constraint)
        return await reply(job, request, body, started,
                           lambda content, thought, calls=None: {
                               "model": name, "created_at": _now(),
                               "message": with_thinking({"role": "assistant", "content": content}, thought, calls)},
                           lambda done, whole: {}, ReasoningSplitter(prompt_opens_thinking(text)) if split else None, call_format)

    @router.post("/api/generate")
    async def generate(body: GenerateRequest, request: Request):
        """Complete a prompt (Ollama's /api/generate): through the chat template unless raw."""
        started = time.monotonic()
        deadline = started + s.timeout
        if body.images:
            raise InvalidParam("images", "images are not supported: camelid runs text-only models.")
        if body.suffix:
            raise InvalidParam("suffix", "suffix (fill-in-the-middle) is not supported by camelid.")
        if body.template:
            raise InvalidParam("template", "a template per request is not supported; start the server with --chat-template.")
        if not body.prompt and not body.context:
            return loaded_reply(body.model, body, chat=False)
        name = body.model or s.model_id
        splitter = None
        if body.raw:
            tokens = await asyncio.to_thread(s.tokenize_text, body.prompt, "prompt", not body.context)
        else:
            variables: dict = {}
            split = thinking(body, variables, name)
            messages = ([{"role": "system", "content": body.system}] if body.system else []) + [{"role": "user", "content": body.prompt}]
            tokens, text = await asyncio.to_thread(s.chat_prompt, messages, variables)
            splitter = ReasoningSplitter(prompt_opens_thinking(text)) if split else None
        context = list(body.context or [])
        bad = [t for t in context if not 0 <= t < tok.n_vocab]
        if bad:
            raise InvalidParam("context", f"context holds token id {bad[0]}, outside the vocabulary (0..{tok.n_vocab - 1}).")
        if context and tokens and tok.bos_id is not None and tokens[0] == tok.bos_id:
            tokens = tokens[1:]  # the earlier context already starts with BOS
        prompt = context + tokens
        s.metrics.count_request("/api/generate")
        job = await start(prompt, body, (model.template.stop_strings if not body.raw else []) + body.stops(), deadline,
                          body.output_constraint())
        return await reply(job, request, body, started,
                           lambda content, thought, calls=None: with_thinking({"model": name, "created_at": _now(), "response": content},
                                                                              thought),
                           lambda done, whole: {"context": prompt + tok.encode(whole, add_special=False, parse_special=True)},
                           splitter)

    async def embed_texts(texts: list[str], param: str) -> tuple[list, int]:
        inputs = await asyncio.to_thread(lambda: [s.embedding_tokens(t, param if len(texts) == 1 else f"{param}[{i}]")
                                                  for i, t in enumerate(texts)])
        vectors = await s.scheduler.embed(inputs, s.pooling)
        if isinstance(vectors, Failed):
            raise APIError(vectors.status, vectors.message)
        return [[float(x) for x in v] for v in vectors], sum(map(len, inputs))

    @router.post("/api/embed")
    async def embed(body: EmbedRequest):
        """Embeddings of one text or several (Ollama's /api/embed), normalized as Ollama's."""
        started = time.monotonic()
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts or not all(texts):
            raise InvalidParam("input", "input is empty; give a text or a list of texts.")
        if body.dimensions is not None and body.dimensions != model.config.n_embd:
            raise InvalidParam("dimensions", f"this model's embeddings have {model.config.n_embd} dimensions; leave out dimensions.")
        if body.truncate:
            texts = [_truncated(tok, t, model.n_ctx) for t in texts]
        s.metrics.count_request("/api/embed")
        vectors, n_tokens = await embed_texts(texts, "input")
        return {"model": body.model or s.model_id, "embeddings": vectors, "total_duration": _ns(time.monotonic() - started),
                "load_duration": 0, "prompt_eval_count": n_tokens}

    @router.post("/api/embeddings")
    async def legacy_embeddings(body: LegacyEmbeddingsRequest):
        """The older single-text endpoint: {"embedding": [...]}."""
        if not body.prompt:
            return {"embedding": []}
        s.metrics.count_request("/api/embeddings")
        vectors, _ = await embed_texts([body.prompt], "prompt")
        return {"embedding": vectors[0]}

    @router.get("/api/tags")
    async def tags():
        """The models this server has: its one model."""
        return {"models": [model_entry(s.model_id)]}

    @router.get("/api/ps")
    async def running():
        """The loaded models: its one model, always loaded."""
        entry = model_entry(s.model_id)
        return {"models": [{**entry, "expires_at": "0001-01-01T00:00:00Z", "size_vram": 0}]}

    @router.post("/api/show")
    async def show(body: ModelRequest):
        """Details of the model: its chat template, parameters and metadata."""
        meta = model.metadata
        info = {k: v for k, v in meta.items() if not isinstance(v, (list, tuple)) or len(v) <= 64}
        return {"modelfile": f"FROM {model.path}\n", "parameters": "", "template": model.template.source or "",
                "details": details(), "model_info": info, "capabilities": ["completion", "embedding"],
                "modified_at": model_entry(s.model_id)["modified_at"]}

    @router.get("/api/version")
    async def version():
        return {"version": __version__}

    return router


def _truncated(tok, text: str, n_ctx: int) -> str:
    """text cut to what fits in n_ctx tokens (Ollama's truncate: true), BOS and EOS included."""
    ids = tok.encode(text, add_special=True, parse_special=True)
    if len(ids) <= n_ctx:
        return text
    body = tok.encode(text, add_special=False, parse_special=True)
    extra = len(ids) - len(body)
    return tok.decode(body[:max(1, n_ctx - extra)])


def _file_type_name(code) -> str:
    """general.file_type as llama.cpp names it (Q4_K_M, ...)."""
    if code is None:
        return ""
    try:
        from gguf import LlamaFileType

        return LlamaFileType(int(code)).name.removeprefix("MOSTLY_")
    except (ValueError, ImportError):
        return str(code)
