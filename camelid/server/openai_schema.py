"""The OpenAI API's request bodies (pydantic, so /openapi.json documents them) and response objects.

Requests accept what the official `openai` client sends for chat and legacy completions, plus
llama.cpp server's sampling extensions (top_k, min_p, repeat_penalty, repeat_last_n, ignore_eos).
Unknown fields are ignored, as OpenAI-compatible servers do; fields that would change the meaning
of a request but are not supported (tools, n > 1, logit_bias) are refused.
Responses are plain dicts in OpenAI's shapes, built by the functions at the bottom.
"""

from __future__ import annotations

import base64
from typing import Any, Literal, Sequence

import numpy as np

from pydantic import BaseModel, ConfigDict, Field

from camelid.chat.template import check_template_variables
from camelid.errors import CamelidError
from camelid.sampling import SamplingParams

MAX_TOP_LOGPROBS = 20


class InvalidParam(CamelidError):
    """A request field with an unsupported or inconsistent value (answered with 400 and `param`)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


# ---- requests ------------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="the served model's id (GET /v1/models); may be omitted")
    max_tokens: int | None = Field(None, ge=1, description="most tokens to generate (default: until the context is full)")
    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy (default 0.8)")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling (default 0.95)")
    n: int = Field(1, description="number of choices; only 1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, description="up to 16 strings that end the generation")
    seed: int | None = Field(None, description="a non-negative seed makes sampling repeatable")
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # llama.cpp server extensions
    top_k: int | None = Field(None, description="keep the k most likely tokens, 0 = all (default 40)")
    min_p: float | None = Field(None, ge=0, le=1, description="default 0.05")
    repeat_penalty: float | None = Field(None, gt=0, description="1.0 = off (default)")
    repeat_last_n: int | None = Field(None, ge=-1, description="penalty window; -1 = the whole context (default 64)")
    ignore_eos: bool = Field(False, description="never sample the end-of-text tokens (as llama.cpp): generate max_tokens tokens")
    response_format: dict[str, Any] | None = Field(
        None, description='{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": ...}}')
    json_schema: dict[str, Any] | None = Field(None, description="llama.cpp's: output that validates against this JSON schema")
    grammar: str | None = Field(None, description="llama.cpp's: output in this GBNF grammar")

    def output_constraint(self) -> tuple[str, Any, str] | None:
        """(kind, spec, param) of the constrained output asked for: ("json", schema or True for any JSON
        object, ...) or ("gbnf", grammar text, ...); None for free text. More than one is refused."""
        given = []
        fmt = self.response_format
        if fmt is not None:
            kind = fmt.get("type", "text")
            if kind == "json_object":
                given.append(("json", fmt.get("schema") or True, "response_format"))
            elif kind == "json_schema":
                spec = fmt.get("json_schema")
                schema = spec.get("schema") if isinstance(spec, dict) else None
                if not isinstance(schema, dict):
                    raise InvalidParam("response_format", 'a json_schema response format needs {"json_schema": {"name": ..., '
                                                          '"schema": {...}}}.')
                given.append(("json", schema, "response_format"))
            elif kind != "text":
                raise InvalidParam("response_format", f"unknown response format type {kind!r}; use text, json_object or json_schema.")
        if self.json_schema is not None:
            given.append(("json", self.json_schema, "json_schema"))
        if self.grammar is not None:
            given.append(("gbnf", self.grammar, "grammar"))
        if len(given) > 1:
            raise InvalidParam(given[1][2], f"give one of response_format, json_schema and grammar, not {given[0][2]} and {given[1][2]}.")
        return given[0] if given else None

    def sampling(self) -> SamplingParams:
        """The SamplingParams of this request (camelid's defaults for fields not given)."""
        if self.n != 1:
            raise InvalidParam("n", f"n={self.n} is not supported; camelid generates one choice per request (n=1).")
        if self.logit_bias:
            raise InvalidParam("logit_bias", "logit_bias is not supported by camelid; leave it out.")
        given = dict(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
            repeat_penalty=self.repeat_penalty, repeat_last_n=self.repeat_last_n,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            seed=self.seed if self.seed is None or self.seed >= 0 else None,
        )
        return SamplingParams(**{k: v for k, v in given.items() if v is not None})

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 16:
            raise InvalidParam("stop", f"{len(stops)} stop strings given; at most 16 are supported.")
        return [s for s in stops if s]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="the newer name of max_tokens")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description='extra chat-template variables for this request, as llama-server\'s: {"enable_thinking": false}')
    reasoning_format: str | None = Field(
        None, description="auto, deepseek (a thinking model's <think> text in reasoning_content) or none (left in content); "
                          "default: the server's --reasoning-format")

    def template_variables(self) -> dict[str, Any]:
        try:
            return check_template_variables(self.chat_template_kwargs or {}, "chat_template_kwargs")
        except CamelidError as e:
            raise InvalidParam("chat_template_kwargs", str(e)) from None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def plain_messages(self) -> list[dict[str, Any]]:
        """The messages as {"role", "content"} dicts for the chat template (developer -> system), with
        an assistant's tool_calls and a tool result's tool_call_id where given."""
        out = []
        for i, m in enumerate(self.messages):
            content = m.content
            if content is None and m.role == "assistant" and m.tool_calls:
                content = ""
            if content is None:
                raise InvalidParam(f"messages.{i}.content", f"message {i} ({m.role}) has no content.")
            if not isinstance(content, str):
                for part in content:
                    if part.type != "text" or part.text is None:
                        raise InvalidParam(f"messages.{i}.content", f"message {i} has a {part.type!r} part; only text is supported.")
                content = "".join(part.text for part in content)
            message = {"role": "system" if m.role == "developer" else m.role, "content": content}
            if m.tool_calls:
                message["tool_calls"] = m.tool_calls
            if m.role == "tool":
                message["tool_call_id"] = m.tool_call_id
            out.append(message)
        return out

    def top_logprobs_count(self) -> int | None:
        """None when no log-probabilities are asked for, else how many alternatives per token."""
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidParam("top_logprobs", "top_logprobs needs logprobs=true.")
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(SamplingFields):
    """POST /v1/completions (the legacy text completion)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = None

    def single_prompt(self) -> str | list[int]:
        """The one prompt of this request: text, or token ids."""
        if self.suffix:
            raise InvalidParam("suffix", "suffix (fill-in-the-middle) is not supported by camelid.")
        if self.best_of not in (None, 1):
            raise InvalidParam("best_of", "best_of > 1 is not supported by camelid.")
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise InvalidParam("prompt", f"{len(prompt)} prompts given; camelid takes one prompt per request.")
            prompt = prompt[0]
        if self.echo and self.logprobs is not None:
            raise InvalidParam("echo", "echo together with logprobs is not supported.")
        return prompt


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings: one or several texts (or token-id lists), pooled as the model's file says."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    def inputs(self) -> list[str | list[int]]:
        """The texts or token-id lists to embed, in order."""
        given = self.input
        if isinstance(given, str):
            return [given]
        if given and all(isinstance(t, int) for t in given):
            return [list(given)]
        if not given:
            raise InvalidParam("input", "input is empty; give a text or a list of texts.")
        return list(given)


class TokenizeRequest(BaseModel):
    """POST /tokenize, as llama.cpp's server."""

    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(BaseModel):
    """POST /detokenize, as llama.cpp's server."""

    tokens: list[int]


# ---- responses ----------------------------------------------------------------------------------


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def timings(processed: int, prompt_seconds: float, cached: int, generated: int, generation_seconds: float) -> dict:
    """llama.cpp server's `timings` object (prompt_n counts the prompt tokens actually processed)."""
    def per_second(n: int, s: float) -> float:
        return n / s if s > 0 else 0.0

    return {
        "cache_n": cached,
        "prompt_n": processed,
        "prompt_ms": prompt_seconds * 1000,
        "prompt_per_second": per_second(processed, prompt_seconds),
        "predicted_n": generated,
        "predicted_ms": generation_seconds * 1000,
        "predicted_per_second": per_second(generated, generation_seconds),
    }


def chat_logprobs(entries: Sequence[tuple[bytes, float, list[tuple[bytes, float]]]]) -> dict:
    """choices[].logprobs of a chat completion from (token bytes, logprob, [(alternative bytes, logprob)])."""
    def item(piece: bytes, lp: float) -> dict:
        return {"token": piece.decode("utf-8", "replace"), "logprob": lp, "bytes": list(piece)}

    return {"content": [{**item(p, lp), "top_logprobs": [item(q, l) for q, l in top]} for p, lp, top in entries], "refusal": None}


def completion_logprobs(entries: Sequence[tuple[bytes, float, list[tuple[bytes, float]]]], offset: int) -> dict:
    """choices[].logprobs of a legacy completion; offset is the character offset of the first token."""
    tokens, offsets = [], []
    for piece, _, _ in entries:
        text = piece.decode("utf-8", "replace")
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [lp for _, lp, _ in entries],
        "top_logprobs": [{q.decode("utf-8", "replace"): l for q, l in top} for _, _, top in entries],
        "text_offset": offsets,
    }


def chat_choice(content: str | None, finish_reason: str | None, logprobs: dict | None, *, delta: bool, role: bool = False,
                reasoning: str | None = None, tool_calls: list[dict] | None = None) -> dict:
    """One choice of a chat completion (delta=False) or of a streamed chunk (delta=True); reasoning, when
    given, goes in `reasoning_content` (llama-server's field for a thinking model's reasoning), tool_calls
    in `tool_calls`."""
    if delta:
        message = {"role": "assistant"} if role else {}
        if content is not None:
            message["content"] = content
        if reasoning:
            message["reasoning_content"] = reasoning
        if tool_calls:
            message["tool_calls"] = tool_calls
        return {"index": 0, "delta": message, "logprobs": logprobs, "finish_reason": finish_reason}
    message = {"role": "assistant", "content": content, "refusal": None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}


def completion_choice(text: str, finish_reason: str | None, logprobs: dict | None) -> dict:
    return {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def embedding_list(vectors: Sequence, model: str, n_tokens: int, base64_floats: bool) -> dict:
    """OpenAI's embeddings response: float lists, or base64 of little-endian float32 bytes (what the
    official client asks for by default)."""
    def encode(v):
        return base64.b64encode(np.asarray(v, "<f4").tobytes()).decode("ascii") if base64_floats else [float(x) for x in v]

    data = [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


def envelope(object_: str, id_: str, created: int, model: str, choices: list[dict], **extra) -> dict:
    """A completion, chat.completion or chat.completion.chunk object around its choices."""
    return {"id": id_, "object": object_, "created": created, "model": model, "system_fingerprint": "camelid",
            "choices": choices, **extra}
