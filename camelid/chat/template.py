"""Chat templates: turn a list of messages into the prompt text a model was trained on.

A model's own template is the Jinja2 source in its GGUF (`tokenizer.chat_template`), rendered the
way transformers' `apply_chat_template` does: a sandboxed, immutable environment with trim_blocks
and lstrip_blocks, loop controls, and the globals HF templates expect (`messages`,
`add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`, `strftime_now`, `tools`, and a
`tojson` filter that keeps non-ASCII text). Files without a template get a built-in fallback:
ChatML, Meta's Llama 2 chat format, or the Alpaca instruction format of Chinese-LLaMA-Alpaca and
llama.cpp's `-ins` mode.

Every render is bounded by a budget of steps, characters built and time (MAX_STEPS, MAX_CHARS,
MAX_SECONDS), because a template from a file is a program from a stranger; camelid.chat.template_budget
holds that machinery and explains its design. Going over budget stops the render with a one-line
CamelidError naming the template's origin; `template_for` renders a file's template on sample
conversations, so an overrun shows at load.
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension

from camelid.chat.template_budget import MAX_CHARS, MAX_SECONDS, MAX_STEPS  # noqa: F401  (kept importable from here)
from camelid.chat.template_budget import OverBudget, bounded_environment, compile_bounded, render_budget
from camelid.errors import CamelidError
from camelid.formats.metadata import MetadataReader

__all__ = ["ChatTemplate", "template_for", "builtin_template", "BUILTIN_TEMPLATES", "ROLES", "ALPACA_SYSTEM"]

ROLES = ("system", "user", "assistant", "tool")

# ---- built-in fallbacks ------------------------------------------------------------------------------

# ChatML (Qwen, SmolLM, OpenHermes...): <|im_start|>role\ncontent<|im_end|>\n per message.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Meta's Llama 2 chat format: the system prompt is folded into the first user turn between
# <<SYS>> markers; each user/assistant exchange is "<s>[INST] user [/INST] assistant </s>"; contents
# are stripped. The prompt ends after "[/INST]", so there is no separate generation prompt.
LLAMA2 = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = none %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% if message['role'] not in ['user', 'assistant'] or (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('the llama2 chat format needs an optional system message, then user and assistant "
    "messages alternating, starting with user') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first and system is not none %}"
    "{{ bos_token + '[INST] <<SYS>>\\n' + system | trim + '\\n<</SYS>>\\n\\n' + message['content'] | trim + ' [/INST]' }}"
    "{% else %}{{ bos_token + '[INST] ' + message['content'] | trim + ' [/INST]' }}{% endif %}"
    "{% else %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# Alpaca, as Chinese-LLaMA-Alpaca's inference scripts and llama.cpp's `-ins` mode lay it out: the
# preamble of prompts/alpaca.txt (or the system message), then "### Instruction:\n\n{user}\n\n" and
# "### Response:\n\n{assistant}\n\n" per turn. An empty system message drops the preamble.
ALPACA_SYSTEM = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
ALPACA = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '" + ALPACA_SYSTEM + "' %}{% set turns = messages %}{% endif %}"
    "{% if system %}{{ system + '\\n\\n' }}{% endif %}"
    "{% for message in turns %}"
    "{% if message['role'] not in ['user', 'assistant'] or (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('the alpaca format needs an optional system message, then user and assistant "
    "messages alternating, starting with user') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '### Instruction:\\n\\n' + message['content'] + '\\n\\n' }}"
    "{% else %}{{ '### Response:\\n\\n' + message['content'] + '\\n\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt and (not turns or turns[-1]['role'] == 'user') %}{{ '### Response:\\n\\n' }}{% endif %}"
)

# name: (source, bos_token, eos_token, stop strings)
BUILTIN_TEMPLATES: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "chatml": (CHATML, "", "<|im_end|>", ("<|im_end|>",)),
    "llama2": (LLAMA2, "<s>", "</s>", ("</s>", "[INST]")),
    "alpaca": (ALPACA, "", "", ("### Instruction:",)),
}

# End-of-turn markers looked for in a custom template's source, as stop strings.
_TURN_END_MARKERS = (
    "<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<|END_OF_TURN_TOKEN|>",
    "</s>", "[INST]", "### Instruction:",
)


# ---- the environment ------------------------------------------------------------------------------------


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}`: transformers marks assistant text with it; render the body as is."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    # transformers' filter: plain json.dumps, keeping non-ASCII text (Jinja's own escapes HTML).
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateRefused(Exception):
    """raise_exception() was called by the template."""


def _raise_exception(message: str):
    raise _TemplateRefused(message)


def _environment():
    env = bounded_environment(
        {"tojson": _tojson},
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols", _GenerationTag],
        keep_trailing_newline=False,
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_ENV = _environment()


def _compile(source: str):
    """The template for `source`, bounded (see camelid.chat.template_budget)."""
    return compile_bounded(_ENV, source)


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    """Plain-dict copies of messages after checking each has a known role and string content."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise CamelidError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {type(messages).__name__}.")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise CamelidError(f"message {i} must be a dict with 'role' and 'content', got {type(message).__name__}.")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise CamelidError(f"message {i} has role {role!r}; use one of {', '.join(ROLES)}.")
        if not isinstance(content, str):
            what = "no content" if content is None else f"content of type {type(content).__name__}"
            raise CamelidError(f"message {i} ({role}) has {what}; content must be a string.")
        checked.append(dict(message))
    return checked


# ---- ChatTemplate -------------------------------------------------------------------------------------


class _OverBudgetError(CamelidError):
    """A render was stopped for going over its budget."""


_SAMPLE_CONVERSATIONS = (
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Say something."}],
)


_RENDER_ARGUMENTS = ("messages", "add_generation_prompt", "bos_token", "eos_token")


def check_template_variables(value: Any, what: str = "the chat template kwargs") -> dict[str, Any]:
    """value as extra chat-template variables: a mapping of names to JSON values, none of them one
    that render() sets itself. CamelidError otherwise."""
    if not isinstance(value, Mapping):
        raise CamelidError(f"{what} must be a JSON object such as {{\"enable_thinking\": false}}, not {type(value).__name__}.")
    for key in value:
        if not isinstance(key, str) or not key.isidentifier():
            raise CamelidError(f"{what}: {key!r} is not a template variable name.")
        if key in _RENDER_ARGUMENTS:
            raise CamelidError(f"{what}: {key!r} is set by camelid itself and cannot be given.")
    return dict(value)


class ChatTemplate:
    """A compiled chat template: `render(messages)` gives the prompt text for a conversation.

    source is Jinja2 in the Hugging Face chat-template dialect; bos_token and eos_token are the token
    strings the template may insert; name says where it came from in error messages, origin (e.g.
    "the chat template in model.gguf") in the message of a render stopped for overrunning its budget.
    A syntax error raises CamelidError at construction, a render error (including the template's own
    raise_exception, sandbox violations and budget overruns) at render. `variables` are passed to every
    render (llama.cpp's --chat-template-kwargs, e.g. {"enable_thinking": False} for Qwen3).
    """

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", name: str = "custom",
                 stop_strings: Sequence[str] | None = None, origin: str | None = None):
        self.variables: dict[str, Any] = {}
        if not isinstance(source, str) or not source.strip():
            raise CamelidError(f"chat template {name!r} is empty; give Jinja source or one of {', '.join(BUILTIN_TEMPLATES)}.")
        self.source = source
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""
        self.name = name
        self._origin = origin or f"chat template {name!r}"
        self._stop_strings = list(stop_strings) if stop_strings is not None else None
        try:
            self._template = _compile(source)
        except jinja2.TemplateSyntaxError as e:
            raise CamelidError(
                f"chat template {name!r} has a Jinja syntax error at line {e.lineno}: {e.message}. "
                "Fix the template or override it (--chat-template chatml|llama2|alpaca)."
            ) from None

    def __repr__(self) -> str:
        return f"ChatTemplate(name={self.name!r})"

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **variables: Any) -> str:
        """The prompt text for messages ([{"role": "system"|"user"|"assistant", "content": str}, ...]).

        With add_generation_prompt the text ends where the assistant's reply begins. `variables` are
        passed to the template as they are, e.g. enable_thinking=False for Qwen3's template, over
        the template's own `self.variables`.
        """
        checked = _check_messages(messages)
        with render_budget():
            try:
                return self._template.render(
                    messages=checked, add_generation_prompt=bool(add_generation_prompt),
                    **{"tools": None, "documents": None, **self.variables, **variables},
                    bos_token=self.bos_token, eos_token=self.eos_token,
                )
            except OverBudget as e:
                raise _OverBudgetError(
                    f"{self._origin} needs {e} to render and was stopped; the template is broken or hostile. "
                    "Override it with --chat-template chatml|llama2|alpaca."
                ) from None
            except _TemplateRefused as e:
                raise CamelidError(f"chat template {self.name!r} refused the messages: {e}") from None
            except jinja2.exceptions.SecurityError as e:
                raise CamelidError(f"chat template {self.name!r} tried an unsafe operation and was stopped: {e}") from None
            except CamelidError:
                raise
            except Exception as e:  # anything a template expression can raise (TypeError, UndefinedError, ...)
                raise CamelidError(
                    f"chat template {self.name!r} failed to render: {type(e).__name__}: {e}. "
                    "Override it with --chat-template chatml|llama2|alpaca if the file's template is broken."
                ) from None

    def check_bounded(self):
        """Render sample conversations, so a template that overruns its budget is refused now (CamelidError).

        The template may refuse the samples (some reject a system message); only an overrun counts.
        """
        for messages in _SAMPLE_CONVERSATIONS:
            try:
                self.render(messages)
            except _OverBudgetError:
                raise
            except CamelidError:
                pass

    @property
    def stop_strings(self) -> list[str]:
        """Text that ends an assistant turn when the model does not emit an end-of-generation token.

        Built-ins know theirs; for other templates the source is searched for common end-of-turn markers.
        """
        if self._stop_strings is not None:
            return list(self._stop_strings)
        found = [m for m in _TURN_END_MARKERS if m in self.source]
        if self.eos_token and "eos_token" in self.source and self.eos_token not in found:
            found.append(self.eos_token)
        return found


def builtin_template(name: str, bos_token: str | None = None, eos_token: str | None = None) -> ChatTemplate:
    """The built-in template `name` ("chatml", "llama2", "alpaca"), optionally with the model's BOS/EOS strings."""
    if name not in BUILTIN_TEMPLATES:
        raise CamelidError(f"unknown chat template {name!r}; the built-in ones are {', '.join(BUILTIN_TEMPLATES)}, or pass Jinja source.")
    source, bos, eos, stops = BUILTIN_TEMPLATES[name]
    return ChatTemplate(source, bos_token if bos_token else bos, eos_token if eos_token else eos, name=name, stop_strings=stops)


# ---- choosing a model's template --------------------------------------------------------------------


def _token_text(tokens: Sequence[str] | None, token_id: Any) -> str:
    if tokens is None or not isinstance(token_id, numbers.Integral) or not 0 <= token_id < len(tokens):
        return ""
    return str(tokens[int(token_id)] or "")


_LLAMA2_NAME = re.compile(r"llama[-_ ]?v?2", re.IGNORECASE)


def _looks_like_llama2_chat(metadata: Mapping[str, Any]) -> bool:
    """Llama 2 era files carry no template; recognize them by name, or by LLaMA-2 shape.

    A name like "Llama-2-7b-chat" or "LLaMA v2", or a SentencePiece LLaMA with a 4096-token training
    context (LLaMA 1 and Chinese-LLaMA-Alpaca v1 have 2048), is taken as a Llama 2 chat model.
    """
    read = MetadataReader(metadata)
    names = " ".join(read.peek(k, "text") or "" for k in ("general.name", "general.basename", "general.finetune"))
    if _LLAMA2_NAME.search(names):
        return True
    return (
        metadata.get("general.architecture") == "llama"
        and metadata.get("tokenizer.ggml.model") == "llama"
        and metadata.get("llama.context_length") == 4096
    )


def template_for(metadata: Mapping[str, Any], tokens: Sequence[str] | None = None, override: str | None = None,
                 origin: str | None = None) -> ChatTemplate:
    """The chat template for a model: override, else the file's own, else a guess from the vocabulary.

    override is a built-in name ("chatml", "llama2", "alpaca") or Jinja source. Without it the GGUF
    key tokenizer.chat_template is used, with BOS/EOS strings from the vocabulary (`tokens`, default
    tokenizer.ggml.tokens). Without that: ChatML if the vocabulary has <|im_start|>, Llama 2 if it has
    [INST] or the model is named like a Llama 2 chat model, else Alpaca. A template from the file or
    the override is rendered once on sample conversations, so one that overruns its time or size
    budget is refused (CamelidError) here, naming origin (the model file's name) when given.
    """
    if tokens is None:
        tokens = MetadataReader(metadata).array("tokenizer.ggml.tokens", "text", None)
    bos = _token_text(tokens, metadata.get("tokenizer.ggml.bos_token_id"))
    eos = _token_text(tokens, metadata.get("tokenizer.ggml.eos_token_id"))

    if override is not None:
        if not isinstance(override, str) or not override.strip():
            raise CamelidError(f"the chat template override is empty; use one of {', '.join(BUILTIN_TEMPLATES)} or Jinja source.")
        name = override.strip().lower()
        if name in BUILTIN_TEMPLATES:
            return builtin_template(name, bos, eos)
        if "{{" in override or "{%" in override:
            template = ChatTemplate(override, bos, eos, name="override", origin="the chat template override")
            template.check_bounded()
            return template
        raise CamelidError(
            f"unknown chat template {override!r}; use one of {', '.join(BUILTIN_TEMPLATES)}, or give Jinja source."
        )

    source = metadata.get("tokenizer.chat_template")
    if isinstance(source, str) and source.strip():
        name = (MetadataReader(metadata).peek("general.name", "text") or "tokenizer.chat_template")[:80]
        where = f"the chat template in {origin}" if origin else f"the chat template of {name!r} (tokenizer.chat_template)"
        template = ChatTemplate(source, bos, eos, name=name, origin=where)
        template.check_bounded()
        return template

    vocab = set(tokens) if tokens is not None else set()
    if "<|im_start|>" in vocab:
        return builtin_template("chatml", bos, eos)
    if "[INST]" in vocab or _looks_like_llama2_chat(metadata):
        return builtin_template("llama2", bos, eos)
    return builtin_template("alpaca", bos, eos)
