"""Chat templates: turn a list of messages into the prompt text a model was trained on.

A model's own template is the Jinja2 source in its GGUF (`tokenizer.chat_template`), rendered the
way transformers' `apply_chat_template` does: a sandboxed, immutable environment with trim_blocks
and lstrip_blocks, loop controls, and the globals HF templates expect (`messages`,
`add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`, `strftime_now`, `tools`, and a
`tojson` filter that keeps non-ASCII text). Files without a template get a built-in fallback:
ChatML, Meta's Llama 2 chat format, or the Alpaca instruction format of Chinese-LLaMA-Alpaca and
llama.cpp's `-ins` mode.

Every render is bounded, because a template from a file is a program from a stranger. Each render
gets a `_Budget`: steps (MAX_STEPS), characters built (MAX_CHARS) and time (MAX_SECONDS, checked at
every step). Everything a template can repeat costs steps: every loop iteration (`_BoundLoops`
rewrites `{% for x in xs %}` to iterate `xs|__counted`, and the sandbox's `call` counts the items
of a recursive `loop(...)`), every call (macros included), filter, test and attribute lookup.
Everything that builds text or lists is charged before it is built, from its operands: `*`, `+`,
`%` and `**` (the sandbox's intercepted binary operators), `~` and slices (rewritten into the
`__concat` and `__sliced` filters), width-taking and text-growing filters and str methods (`center`,
`indent`, `join`, `replace`, `format`, `tojson(indent=...)`, `ljust`, `translate`...), `{{ value }}`
output (the finalize hook, which measures containers item by item) and every joined output,
macro and `{% set %}` block (`concat`). Every other filter and method is charged for what it returns;
methods of types other than str, bytes, list, tuple and dict are refused, as are the filters
`striptags` and `urlize` (slow regex work no chat template needs) and the `lipsum` global. Going
over budget stops the render with a one-line CamelidError naming the template's origin;
`template_for` renders a file's template on sample conversations, so an overrun shows at load.
An ordinary template uses a few dozen steps per message, far inside the budget.
"""

from __future__ import annotations

import contextvars
import json
import numbers
import operator
import re
import string
import time
import types
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from functools import wraps
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg
from jinja2.visitor import NodeTransformer

from camelid.errors import CamelidError

__all__ = ["ChatTemplate", "template_for", "builtin_template", "BUILTIN_TEMPLATES", "ROLES", "ALPACA_SYSTEM"]

ROLES = ("system", "user", "assistant")

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


# ---- the render budget ----------------------------------------------------------------------------------

MAX_STEPS = 500_000  # loop iterations, calls, filters, tests and attribute lookups in one render
MAX_SECONDS = 1.0
MAX_CHARS = 32 << 20  # characters (8 per list or dict item) of all strings and containers a render builds


class _OverBudget(BaseException):
    """A render went over its budget (a BaseException, so no `except Exception` in Jinja swallows it)."""


class _Budget:
    """What one render may still spend: steps, characters built, and time."""

    def __init__(self):
        self.steps = MAX_STEPS
        self.chars = MAX_CHARS
        self.deadline = time.monotonic() + MAX_SECONDS

    def step(self, n: int = 1):
        self.steps -= n
        if self.steps < 0:
            raise _OverBudget(f"more than {MAX_STEPS} steps (loop iterations, calls, filters)")
        if time.monotonic() > self.deadline:
            raise _OverBudget(f"more than {MAX_SECONDS:g} s")

    def charge(self, chars: float):
        self.chars -= chars
        if self.chars < 0:
            raise _OverBudget(f"more than {MAX_CHARS} characters of text")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("camelid_template_budget", default=None)


def _budget() -> _Budget:
    budget = _BUDGET.get()
    if budget is None:  # compile-time constant folding: Jinja catches this and leaves the work to render time
        raise nodes.Impossible()
    return budget


def _size(value: Any) -> int:
    """Characters charged for a value just built: its length, 8 per item for containers."""
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, (list, tuple, dict)):
        return 8 * len(value)
    return 0


def _text_size(value: Any, budget: _Budget, indent: int = 0) -> int:
    """An upper bound on len(str(value)) (or its JSON with `indent`), walking containers one step per item."""
    total, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        budget.step()
        if isinstance(item, (str, bytes)):
            total += 6 * len(item) + 2  # repr and JSON escapes: at most 6 characters per character
        elif isinstance(item, Mapping):
            stack.extend((x, depth + 1) for pair in item.items() for x in pair)
        elif isinstance(item, (list, tuple)):
            stack.extend((x, depth + 1) for x in item)
        else:
            total += 32 if isinstance(item, (numbers.Number, type(None))) else len(str(item))
        total += 4 + indent * depth
        if total > MAX_CHARS:
            break
    return total


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _format_size(fmt: str, args: Any, budget: _Budget, percent: bool) -> int:
    """An upper bound on the length of `fmt % args` (percent) or `fmt.format(*args)`: text, arguments and widths."""
    if percent:
        widths = [w for spec in _PERCENT_SPEC.findall(fmt) for w in spec if w]
    else:
        specs = [spec for _, field, spec, _ in string.Formatter().parse(fmt) if field is not None and spec]
        widths = [w for spec in specs for w in re.findall(r"\d+|\{", spec)]
    if "*" in widths or "{" in widths:
        raise _OverBudget("a format width taken from the arguments")
    return len(fmt) + sum(int(w) for w in widths) + _text_size(args, budget)


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _count_of(n: Any) -> int:
    return n if isinstance(n, int) and not isinstance(n, bool) else 0


# filter name -> upper bound on its result's size, from (value, *args, **kwargs), for filters that can grow text
_FILTER_SIZES = {
    "center": lambda b, v, a, k: max(len(str(v)), _count_of(_arg(a, k, 0, "width", 80))),
    "indent": lambda b, v, a, k: (len(str(v)) + 1) * (1 + len(str(_arg(a, k, 0, "width", 4)))
                                                      + _count_of(_arg(a, k, 0, "width", 4))),
    "wordwrap": lambda b, v, a, k: (len(str(v)) + 1) * (2 + len(str(_arg(a, k, 2, "wrapstring", "") or ""))),
    "replace": lambda b, v, a, k: (len(str(v)) + 1) * (1 + len(str(_arg(a, k, 1, "new", "")))),
    "batch": lambda b, v, a, k: 8 * _count_of(_arg(a, k, 0, "linecount")) + _text_size(v, b),
    "slice": lambda b, v, a, k: 8 * _count_of(_arg(a, k, 0, "slices")) + _text_size(v, b),
    "join": lambda b, v, a, k: _text_size(v, b) * (1 + len(str(_arg(a, k, 0, "d", "")))),
    "format": lambda b, v, a, k: _format_size(str(v), (a, k), b, percent=True),
    "tojson": lambda b, v, a, k: _text_size(v, b, indent=_count_of(_arg(a, k, 1, "indent", 0))),
    "string": lambda b, v, a, k: _text_size(v, b),
    "pprint": lambda b, v, a, k: _text_size(v, b, indent=4),
    "sum": lambda b, v, a, k: 0 if isinstance(_arg(a, k, 1, "start", 0), numbers.Number) else MAX_CHARS + 1,
}
_MATERIALIZED = frozenset({"batch", "slice", "join", "tojson", "string", "pprint", "sum"})
# filters that spend Python-level work on every character or item: charged 2 steps per character, 16 per item
_SLOW_FILTERS = frozenset({"sort", "unique", "groupby", "dictsort", "wordwrap", "title", "wordcount", "urlencode", "xmlattr"})
_UNAVAILABLE_FILTERS = ("striptags", "urlize")  # regex work of ~10 µs a character; no chat template uses them

# str/bytes method name -> upper bound on its result's size, from (self, *args, **kwargs)
_METHOD_SIZES = {
    "center": lambda b, s, a, k: max(len(s), _count_of(_arg(a, k, 0, "width"))),
    "ljust": lambda b, s, a, k: max(len(s), _count_of(_arg(a, k, 0, "width"))),
    "rjust": lambda b, s, a, k: max(len(s), _count_of(_arg(a, k, 0, "width"))),
    "zfill": lambda b, s, a, k: max(len(s), _count_of(_arg(a, k, 0, "width"))),
    "expandtabs": lambda b, s, a, k: len(s) * (1 + max(8, _count_of(_arg(a, k, 0, "tabsize", 8)))),
    "replace": lambda b, s, a, k: (len(s) + 1) * (1 + len(_arg(a, k, 1, "new", ""))),
    "join": lambda b, s, a, k: _text_size(_arg(a, k, 0, "iterable", ()), b) * (1 + len(s)),
    "translate": lambda b, s, a, k: len(s) * (1 + _text_size(_arg(a, k, 0, "table", ()), b)),
}


def _bounded_filter(name: str, func):
    """`func` (a filter or test) charged one step, checked before it runs when it can grow text, and after it returns."""
    pass_arg = _PassArg.from_obj(func)
    estimate = _FILTER_SIZES.get(name)

    @wraps(func)
    def bounded(*args, **kwargs):
        budget = _budget()
        budget.step()
        head, value, rest = (args[:1], args[1], args[2:]) if pass_arg is not None else ((), args[0], args[1:])
        if isinstance(value, Iterator):
            value = list(_counted(value)) if name in _MATERIALIZED else _counted(value)
        budget.step(_size(value) * 2 if name in _SLOW_FILTERS else _size(value) // 16)
        if estimate is not None:
            budget.charge(estimate(budget, value, rest, kwargs))
        result = func(*head, value, *rest, **kwargs)
        budget.charge(_size(result))
        return result

    return bounded


def _counted(iterable: Any):
    """Iterate `iterable`, one step per item."""
    budget = _budget()
    for item in iterable:
        budget.step()
        yield item


def _sliced(value: Any, start: Any, stop: Any, step: Any) -> Any:
    """`value[start:stop:step]`, charged for the copy it makes."""
    budget = _budget()
    budget.step()
    result = value[start:stop:step]
    budget.charge(_size(result))
    return result


def _concat(parts: Any) -> str:
    """`~`: the parts as text, checked before they are joined."""
    budget = _budget()
    budget.charge(sum(len(p) if isinstance(p, str) else _text_size(p, budget) for p in parts))
    return "".join(str(p) for p in parts)


def _check_output(value: Any) -> Any:
    """finalize: each `{{ value }}` is charged for the text it becomes."""
    budget = _BUDGET.get()
    if budget is not None:
        budget.charge(len(value) if isinstance(value, str) else _text_size(value, budget))
    return value


_BINOPS = {"+": operator.add, "*": operator.mul, "%": operator.mod, "**": operator.pow, "//": operator.floordiv}


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with every way a template can repeat work or grow text charged to the render's `_Budget`."""

    intercepted_binops = frozenset(_BINOPS)

    def call_binop(self, context, op: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.step()
        if op == "*" and isinstance(right, (str, bytes, list, tuple)):
            left, right = right, left
        if op == "*" and isinstance(left, (str, bytes, list, tuple)) and isinstance(right, int):
            budget.charge(max(0, right) * _size(left))
        elif op == "+" and isinstance(left, (str, bytes, list, tuple)):
            budget.charge(_size(left) + _size(right))
        elif op == "%" and isinstance(left, str):
            budget.charge(_format_size(left, right, budget, percent=True))
        elif op in ("*", "**") and isinstance(left, int) and isinstance(right, int):
            bits = left.bit_length() * (right if op == "**" else 1) + (0 if op == "**" else right.bit_length())
            if bits > 1 << 16:
                raise _OverBudget(f"a number of more than {1 << 16} bits")
        return _BINOPS[op](left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
        budget = _budget()
        budget.step()
        if isinstance(__obj, LoopContext) and args:  # a recursive loop's next level
            args = (_counted(args[0]),) + args[1:]
        if isinstance(__obj, (types.BuiltinMethodType, types.MethodType)):
            owner = __obj.__self__  # str methods of Markup are Python-level wrappers of str's: check them too
            if isinstance(owner, (str, bytes)):
                estimate = _METHOD_SIZES.get(__obj.__name__)
                if estimate is not None:
                    budget.charge(estimate(budget, owner, args, kwargs))
            elif isinstance(__obj, types.BuiltinMethodType) and not isinstance(owner, (list, tuple, dict)):
                raise jinja2.exceptions.SecurityError(f"{type(owner).__name__}.{__obj.__name__}() is not available to chat templates")
        result = super().call(__context, __obj, *args, **kwargs)
        budget.charge(_size(result))
        return result

    def getitem(self, obj: Any, argument: Any) -> Any:
        budget = _BUDGET.get()
        result = super().getitem(obj, argument)
        if budget is not None:
            budget.step()
            if isinstance(argument, slice):
                budget.charge(_size(result))
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget.step()
        return super().getattr(obj, attribute)

    def wrap_str_format(self, value: Any):
        sandboxed = super().wrap_str_format(value)
        if sandboxed is None:
            return None
        fmt = value.__self__

        @wraps(sandboxed)
        def bounded(*args, **kwargs):
            budget = _budget()
            budget.charge(_format_size(fmt, (args, kwargs), budget, percent=False))
            return sandboxed(*args, **kwargs)

        return bounded

    def concat(self, parts) -> str:  # joins the output of the template, a macro, a {% set %} or {% filter %} block
        budget = _BUDGET.get()
        chunks = []
        for part in parts:
            if budget is not None:
                budget.charge(len(part))
            chunks.append(part)
        return "".join(chunks)


class _BoundLoops(NodeTransformer):
    """Rewrites what Jinja compiles to plain Python, out of the sandbox's reach, into calls of our bounded filters:
    `{% for x in xs %}` iterates `xs|__counted`, `a ~ b` becomes `[a, b]|__concat`, `s[i:j]` `s|__sliced(i, j, none)`."""

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "__counted", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Filter:
        self.generic_visit(node)
        return nodes.Filter(nodes.List(node.nodes, lineno=node.lineno), "__concat", [], [], None, None, lineno=node.lineno)

    def visit_Getitem(self, node: nodes.Getitem) -> nodes.Node:
        self.generic_visit(node)
        if not isinstance(node.arg, nodes.Slice):
            return node
        bounds = [x if x is not None else nodes.Const(None) for x in (node.arg.start, node.arg.stop, node.arg.step)]
        return nodes.Filter(node.node, "__sliced", bounds, [], None, None, lineno=node.lineno)


def _environment() -> _BoundedEnvironment:
    env = _BoundedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols", _GenerationTag],
        keep_trailing_newline=False, finalize=_check_output,
    )
    env.filters["tojson"] = _tojson
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    env.filters["__counted"] = _counted
    env.filters["__concat"] = _concat
    env.filters["__sliced"] = _sliced
    for name in _UNAVAILABLE_FILTERS:
        del env.filters[name]
    env.tests = {name: _bounded_filter(name, f) for name, f in env.tests.items()}
    env.globals.pop("lipsum", None)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_ENV = _environment()


def _compile(source: str):
    """The template for `source`, with its loops and `~` joins bounded (see `_BoundLoops`)."""
    return _ENV.from_string(_BoundLoops().visit(_ENV.parse(source)))


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


class ChatTemplate:
    """A compiled chat template: `render(messages)` gives the prompt text for a conversation.

    source is Jinja2 in the Hugging Face chat-template dialect; bos_token and eos_token are the token
    strings the template may insert; name says where it came from in error messages, origin (e.g.
    "the chat template in model.gguf") in the message of a render stopped for overrunning its budget.
    A syntax error raises CamelidError at construction, a render error (including the template's own
    raise_exception, sandbox violations and budget overruns) at render.
    """

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", name: str = "custom",
                 stop_strings: Sequence[str] | None = None, origin: str | None = None):
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

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text for messages ([{"role": "system"|"user"|"assistant", "content": str}, ...]).

        With add_generation_prompt the text ends where the assistant's reply begins.
        """
        checked = _check_messages(messages)
        token = _BUDGET.set(_Budget())
        try:
            return self._template.render(
                messages=checked, add_generation_prompt=bool(add_generation_prompt),
                bos_token=self.bos_token, eos_token=self.eos_token, tools=None, documents=None,
            )
        except _OverBudget as e:
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
        finally:
            _BUDGET.reset(token)

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
    names = " ".join(str(metadata.get(k, "")) for k in ("general.name", "general.basename", "general.finetune"))
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
        tokens = metadata.get("tokenizer.ggml.tokens")
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
        name = str(metadata.get("general.name") or "tokenizer.chat_template")
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
