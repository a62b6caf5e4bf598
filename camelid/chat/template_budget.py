"""The render budget of chat templates: every render of a template is bounded.

A template from a file is a program from a stranger, so each render gets a `_Budget`: steps
(MAX_STEPS), characters built (MAX_CHARS) and time (MAX_SECONDS, checked at every step). Everything
a template can repeat costs steps: every loop iteration (`_BoundLoops` rewrites `{% for x in xs %}`
to iterate `xs|__counted`, and the sandbox's `call` counts the items of a recursive `loop(...)`),
every call (macros included), filter, test and attribute lookup. Everything that builds text or
lists is charged before it is built, from its operands: `*`, `+`, `%` and `**` (the sandbox's
intercepted binary operators), `~` and slices (rewritten into the `__concat` and `__sliced`
filters), width-taking and text-growing filters and str methods (`center`, `indent`, `join`,
`replace`, `format`, `tojson(indent=...)`, `ljust`, `translate`...), `{{ value }}` output (the
finalize hook, which measures containers item by item) and every joined output, macro and
`{% set %}` block (`concat`). Every other filter and method is charged for what it returns; methods
of types other than str, bytes, list, tuple and dict are refused, as are the filters `striptags` and
`urlize` (slow regex work no chat template needs) and the `lipsum` global. Going over budget raises
`OverBudget`, which camelid.chat.template turns into a one-line CamelidError naming the template's
origin. An ordinary template uses a few dozen steps per message, far inside the budget.

`bounded_environment` makes the sandbox, `compile_bounded` compiles a template in it with its loops,
joins and slices rewritten, and `render_budget` gives the renders inside it a fresh budget.
"""

from __future__ import annotations

import contextvars
import numbers
import operator
import re
import string
import time
import types
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import wraps
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg
from jinja2.visitor import NodeTransformer

__all__ = ["MAX_STEPS", "MAX_SECONDS", "MAX_CHARS", "OverBudget", "bounded_environment", "compile_bounded", "render_budget"]

MAX_STEPS = 500_000  # loop iterations, calls, filters, tests and attribute lookups in one render
MAX_SECONDS = 1.0
MAX_CHARS = 32 << 20  # characters (8 per list or dict item) of all strings and containers a render builds


class OverBudget(BaseException):
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
            raise OverBudget(f"more than {MAX_STEPS} steps (loop iterations, calls, filters)")
        if time.monotonic() > self.deadline:
            raise OverBudget(f"more than {MAX_SECONDS:g} s")

    def charge(self, chars: float):
        self.chars -= chars
        if self.chars < 0:
            raise OverBudget(f"more than {MAX_CHARS} characters of text")


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
        raise OverBudget("a format width taken from the arguments")
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
                raise OverBudget(f"a number of more than {1 << 16} bits")
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



def bounded_environment(filters: Mapping[str, Callable] | None = None, **options: Any) -> _BoundedEnvironment:
    """A bounded sandbox made with Jinja `options`, `filters` added to Jinja's, and every filter and test charged."""
    env = _BoundedEnvironment(finalize=_check_output, **options)
    env.filters.update(filters or {})
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    env.filters["__counted"] = _counted
    env.filters["__concat"] = _concat
    env.filters["__sliced"] = _sliced
    for name in _UNAVAILABLE_FILTERS:
        del env.filters[name]
    env.tests = {name: _bounded_filter(name, f) for name, f in env.tests.items()}
    env.globals.pop("lipsum", None)
    return env


def compile_bounded(env: _BoundedEnvironment, source: str) -> jinja2.Template:
    """The template for `source` in `env`, with its loops, `~` joins and slices bounded (see `_BoundLoops`)."""
    return env.from_string(_BoundLoops().visit(env.parse(source)))


@contextmanager
def render_budget():
    """Renders inside this block share one fresh `_Budget`; going over it raises `OverBudget`."""
    token = _BUDGET.set(_Budget())
    try:
        yield
    finally:
        _BUDGET.reset(token)
