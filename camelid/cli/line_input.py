"""Reading what the user types at an interactive prompt: line editing, history, continued lines.

Python's readline gives the line editing and the arrow-key history (and counts the width of Chinese
characters and emoji when it redraws a line). On top of it come llama.cpp's conventions of 2023:
a line ending in `\\` continues on the next line; with multiline input the roles swap, Return starts
a new line and a line ending in `\\` sends the message; a line ending in `/` sends it without the
final newline.
"""

from __future__ import annotations

import sys

try:
    import readline  # noqa: F401  (importing it gives input() line editing and history)
except ImportError:  # pragma: no cover - Windows
    readline = None

# ANSI codes of llama.cpp's console_color_t: the prompt yellow, user input bold green, output default.
COLOR_PROMPT = "\x1b[33m"
COLOR_USER_INPUT = "\x1b[1m\x1b[32m"
COLOR_RESET = "\x1b[0m"


def _readline_safe(codes: str) -> str:
    """Escape codes wrapped so readline does not count them in the prompt's width."""
    return f"\001{codes}\002" if readline is not None else codes


def read_user_input(prompt: str = "> ", color: bool = False, multiline: bool = False, keep_newline: bool = False) -> str | None:
    """Read one message from the terminal; None at end of input (Ctrl+D on an empty line).

    Lines ending in `\\` are joined with the next one by a newline (with multiline=True, every
    Return continues and a final `\\` sends). With color the typed text is bold green. The text is
    returned without its final newline, unless keep_newline: then it ends with "\\n" as llama.cpp
    fed it to the model, except when the last line ended in `/`. Ctrl+C raises KeyboardInterrupt.
    """
    start = _readline_safe(COLOR_USER_INPUT) if color else ""
    lines: list[str] = []
    newline_at_end = True
    line_prompt = prompt
    try:
        while True:
            try:
                line = input(line_prompt + start)
            except EOFError:
                sys.stdout.write("\n")
                sys.stdout.flush()
                if not lines:
                    return None
                break
            line_prompt = ""
            if line.endswith("/") and keep_newline:
                lines.append(line[:-1])
                newline_at_end = False
                break
            if line.endswith("\\"):
                lines.append(line[:-1])
                if multiline:
                    break
                continue
            lines.append(line)
            if not multiline:
                break
    finally:
        if color:
            sys.stdout.write(COLOR_RESET)
            sys.stdout.flush()
    text = "\n".join(lines)
    return text + "\n" if keep_newline and newline_at_end else text
