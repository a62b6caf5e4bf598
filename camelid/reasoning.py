"""The reasoning of thinking models kept apart from the answer: text inside <think>...</think>.

Qwen3 and the DeepSeek-R1 distills write their reasoning between <think> and </think> before the
answer; DeepSeek-R1's template even opens the tag in the prompt, so the reply starts inside it.
`ReasoningSplitter` takes the reply as it streams and returns each piece as (reasoning, content),
holding back only what could still be the start of a tag, as llama-server's `--reasoning-format
deepseek` does: the first <think> block (when the reply starts with it, or the prompt opened it) is
reasoning, the rest is content; whitespace around the reasoning and before the answer is dropped.
A reply that ends while still thinking is all reasoning.
"""

from __future__ import annotations

from camelid.errors import CamelidError

OPEN, CLOSE = "<think>", "</think>"
REASONING_FORMATS = ("auto", "deepseek", "none")  # llama-server's --reasoning-format names


def template_thinks(template_source: str) -> bool:
    """Whether a chat template knows thinking tags (Qwen3, DeepSeek-R1): where `auto` splits replies."""
    return OPEN in template_source


def prompt_opens_thinking(prompt_text: str) -> bool:
    """Whether the rendered prompt ends inside an open <think> (the reply starts as reasoning)."""
    return prompt_text.rstrip().endswith(OPEN)


def splits_reasoning(reasoning_format: str, template_source: str) -> bool:
    """Whether replies are split for this --reasoning-format and chat template."""
    if reasoning_format not in REASONING_FORMATS:
        raise CamelidError(f"unknown reasoning format {reasoning_format!r}; use one of {', '.join(REASONING_FORMATS)}.")
    return reasoning_format == "deepseek" or (reasoning_format == "auto" and template_thinks(template_source))


def _partial_tag(text: str, tag: str) -> int:
    """The length of the longest end of text that is a proper start of tag."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ReasoningSplitter:
    """Splits a streamed reply into reasoning and content; feed() each piece, flush() at the end."""

    def __init__(self, opened: bool = False):
        self._state = "thinking" if opened else "start"  # start -> thinking -> after -> content, or start -> content
        self._pending = ""  # text held back: a possible tag start, or whitespace whose place is not known yet
        self._reasoning_started = False

    def feed(self, text: str, last: bool = False) -> tuple[str, str]:
        """(reasoning, content) that this piece completes; with last (the reply's end), all that is left."""
        if last:
            r1, c1 = self.feed(text)
            r2, c2 = self.flush()
            return r1 + r2, c1 + c2
        self._pending += text
        reasoning, content = [], []
        while self._pending:
            if self._state == "start":
                body = self._pending.lstrip()
                if body.startswith(OPEN):
                    self._pending, self._state = body[len(OPEN):], "thinking"
                elif not body or OPEN.startswith(body):
                    break
                else:
                    self._state = "content"
            elif self._state == "thinking":
                if not self._reasoning_started:
                    self._pending = self._pending.lstrip()
                    self._reasoning_started = bool(self._pending)
                    if not self._pending:
                        break
                end = self._pending.find(CLOSE)
                if end >= 0:
                    reasoning.append(self._pending[:end].rstrip())
                    self._pending, self._state = self._pending[end + len(CLOSE):], "after"
                    continue
                # a possible start of </think> waits, and so does the whitespace before it: it may end the reasoning
                emit = self._pending[:len(self._pending) - _partial_tag(self._pending, CLOSE)].rstrip()
                reasoning.append(emit)
                self._pending = self._pending[len(emit):]
                break
            elif self._state == "after":
                self._pending = self._pending.lstrip()
                if self._pending:
                    self._state = "content"
            else:
                content.append(self._pending)
                self._pending = ""
        return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        """(reasoning, content) still held back when the reply ends."""
        rest, self._pending = self._pending, ""
        if self._state == "thinking":
            return rest.rstrip(), ""
        return "", ("" if self._state == "after" else rest)


def split_reasoning(text: str, opened: bool = False) -> tuple[str, str]:
    """A whole reply as (reasoning, content)."""
    return ReasoningSplitter(opened).feed(text, last=True)
