"""Slash commands of the terminal chat: parsing a line and acting on a ChatSession.

A line starting with "/" is a command, never sent to the model; "//text" sends "/text". Each command
returns an Outcome: text to print, a reply to stream (/retry), or the request to quit. Nothing here
reads the terminal or prints, so the commands work the same from any front end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from camelid.chat.transcript import load_chat, save_chat
from camelid.errors import CamelidError
from camelid.generate import GenerationChunk


@dataclass
class Outcome:
    """What a command did: `text` to show, a `reply` stream to print as a model reply, or `quit`."""

    text: str = ""
    reply: Iterator[GenerationChunk] | None = None
    quit: bool = False


def is_command(line: str) -> bool:
    """Whether a (stripped) input line is a slash command rather than a message."""
    return line.startswith("/") and not line.startswith("//")


def message_text(line: str) -> str:
    """The message a non-command line sends: "//text" becomes "/text"."""
    return line[1:] if line.startswith("//") else line


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _help(session, arg: str) -> Outcome:
    width = max(len(usage) for usage, _ in _HELP)
    lines = [f"  {usage.ljust(width)}  {text}" for usage, text in _HELP]
    lines.append("  Ctrl+C stops a reply (the part written so far stays in the chat); Ctrl+D quits.")
    lines.append("  A line ending in \\ continues on the next line; start a message with // to send text beginning with /.")
    return Outcome("\n".join(lines))


def _clear(session, arg: str) -> Outcome:
    session.clear()
    return Outcome("Conversation cleared" + (" (the system prompt stays)." if session.system else "."))


def _system(session, arg: str) -> Outcome:
    if not arg:
        return Outcome(f"System prompt: {session.system}" if session.system else "No system prompt is set (/system TEXT sets one).")
    if arg == "-":
        session.system = None
        return Outcome("System prompt removed.")
    session.system = arg
    return Outcome("System prompt set; it applies from the next reply on.")


def _save(session, arg: str) -> Outcome:
    if not arg:
        raise CamelidError("/save needs a file name, e.g. /save chat.json")
    path = save_chat(session, arg)
    return Outcome(f"Saved {_plural(len(session.messages) // 2, 'exchange')} to {path}.")


def _load(session, arg: str) -> Outcome:
    if not arg:
        raise CamelidError("/load needs a file name, e.g. /load chat.json")
    warning = load_chat(session, arg)
    text = f"Loaded {_plural(len(session.messages) // 2, 'exchange')} from {arg}; the chat continues from there."
    return Outcome(text + (f"\nNote: {warning}" if warning else ""))


def _undo(session, arg: str) -> Outcome:
    if not session.undo():
        return Outcome("Nothing to undo.")
    return Outcome(f"Removed the last exchange; {_plural(len(session.messages) // 2, 'exchange')} left.")


def _retry(session, arg: str) -> Outcome:
    return Outcome(reply=session.retry())


def _stats(session, arg: str) -> Outcome:
    used, n_ctx = session.context_used(), session.n_ctx
    lines = [f"context: {used} / {n_ctx} tokens used ({100 * used / n_ctx:.0f}%)"]
    stats = session.last_stats
    if stats is not None:
        lines.append(
            f"last reply: {stats.generated_tokens} tokens, {stats.generation_tokens_per_s:.1f} tokens/s; "
            f"its prompt: {stats.prompt_tokens - stats.cached_tokens} tokens processed, {stats.cached_tokens} reused from the cache"
        )
    else:
        lines.append("last reply: none yet")
    lines.append(f"turns dropped so far: {session.dropped_turns}")
    return Outcome("\n".join(lines))


def _thinking(session, arg: str) -> Outcome:
    choice = arg.lower()
    if choice not in ("", "show", "hide"):
        raise CamelidError(f"/thinking takes show or hide, not {arg!r}.")
    session.show_thinking = (not session.show_thinking) if not choice else choice == "show"
    return Outcome("A thinking model's reasoning is " + ("shown (dimmed)." if session.show_thinking else "hidden."))


def _exit(session, arg: str) -> Outcome:
    return Outcome(quit=True)


_COMMANDS: dict[str, Callable[[object, str], Outcome]] = {
    "help": _help, "clear": _clear, "system": _system, "save": _save, "load": _load,
    "undo": _undo, "retry": _retry, "stats": _stats, "thinking": _thinking, "exit": _exit, "quit": _exit, "bye": _exit,
}

_HELP = (
    ("/help", "show this help"),
    ("/clear", "forget the conversation (the system prompt stays)"),
    ("/system [TEXT]", "show the system prompt, or set it to TEXT (/system - removes it)"),
    ("/save FILE", "save the conversation and settings as JSON"),
    ("/load FILE", "continue a saved conversation"),
    ("/undo", "remove the last exchange"),
    ("/retry", "write the last reply again (a new sample; the same one with --temp 0)"),
    ("/stats", "context use, speed of the last reply, turns dropped"),
    ("/thinking [show|hide]", "show or hide a thinking model's reasoning (dimmed); alone, switch"),
    ("/exit", "quit (also /quit, /bye)"),
)


def run_command(session, line: str) -> Outcome:
    """Carry out one command line ("/name [argument]") on a ChatSession.

    An unknown command gives a one-line hint; a command that fails raises CamelidError and leaves the
    session as it was.
    """
    name, arg = (line[1:].split(None, 1) + ["", ""])[:2]
    handler = _COMMANDS.get(name.lower())
    if handler is None:
        return Outcome(f"Unknown command /{name}; /help lists the commands (start with // to send a message beginning with /).")
    return handler(session, arg.strip())
