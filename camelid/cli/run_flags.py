"""`camelid run`'s command line: llama.cpp `main`'s classic flags, their meanings and May 2023 defaults.

As in llama.cpp's gpt_params_parse, `--` flags may be written with `_` or `-` (`--top_k`, `--top-k`),
an unknown flag prints the usage and exits with status 1, and `-e` processes the escapes \\n \\r \\t
\\' \\" \\\\ in the prompt. The prompt file of `-f` loses one trailing newline; a name that does not exist
relative to the current directory is looked up among the prompts shipped with camelid
(`-f prompts/alpaca.txt` works anywhere).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from camelid.cli.options import add_model_options, add_sampling_options
from camelid.errors import CamelidError

# llama.cpp main's defaults of May 2023 (examples/common.h, gpt_params)
DEFAULT_CTX = 512
DEFAULT_BATCH = 512  # llama.cpp clamps -b to 512
INSTRUCT_PREFIX = "\n\n### Instruction:\n\n"
INSTRUCT_SUFFIX = "\n\n### Response:\n\n"
INSTRUCT_ANTIPROMPT = "### Instruction:\n\n"
PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "'": "'", '"': '"', "\\": "\\"}


class LlamaArgumentParser(argparse.ArgumentParser):
    """argparse with llama.cpp's conventions: `_` = `-` in long flags, unknown flags are errors
    reported as `error: unknown argument: X` followed by the usage, exit status 1."""

    def parse_known_args(self, args=None, namespace=None):
        args = [_normalize(a) for a in (sys.argv[1:] if args is None else args)]
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unknown argument: {extras[0]}")
        return namespace, extras

    def error(self, message: str):
        sys.stderr.write(f"error: {message}\n\n")
        self.print_help(sys.stderr)
        sys.exit(1)


def _normalize(arg: str) -> str:
    if not arg.startswith("--"):
        return arg
    name, eq, value = arg.partition("=")
    return name.replace("_", "-") + eq + value


def add_run_parser(sub) -> argparse.ArgumentParser:
    """The `run` subparser with every flag; its handler is set by the caller."""
    default_class = sub._parser_class
    sub._parser_class = LlamaArgumentParser
    try:
        p = sub.add_parser(
            "run", help="llama.cpp main-compatible completion and interactive/instruct chat",
            description="Complete a prompt, or chat interactively (-i, -ins), with llama.cpp main's flags of 2023.",
            allow_abbrev=False,
        )
    finally:
        sub._parser_class = default_class
    add_model_options(p, DEFAULT_CTX)
    p.add_argument("-p", "--prompt", help="prompt to start generation with (default: empty)")
    p.add_argument("-f", "--file", metavar="FNAME", help="prompt file to start generation (packaged: prompts/alpaca.txt, prompts/chat-with-bob.txt, ...)")
    p.add_argument("-e", "--escape", action="store_true", help="process prompt escape sequences (\\n, \\r, \\t, \\', \\\", \\\\)")
    p.add_argument("-n", "--n-predict", dest="n_predict", type=int, default=-1, metavar="N",
                   help="number of tokens to predict (default: %(default)s, -1 = infinity; interactive: per reply)")
    p.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=DEFAULT_BATCH, metavar="N",
                   help="batch size for prompt processing (default: %(default)s)")
    p.add_argument("-t", "--threads", type=int, default=None, metavar="N", help="number of threads (default: the physical cores)")
    p.add_argument("--keep", type=int, default=None, metavar="N",
                   help="number of tokens to keep from the initial prompt when the context fills "
                        "(default: 0, -1 = all; interactive and instruct modes: all)")
    p.add_argument("--no-context-shift", action="store_true", help="stop when the context is full instead of dropping old tokens")
    p.add_argument("-i", "--interactive", action="store_true", help="run in interactive mode")
    p.add_argument("--interactive-first", action="store_true", help="run in interactive mode and wait for input right away")
    p.add_argument("-ins", "--instruct", action="store_true", help="run in instruction mode (use with Alpaca models)")
    p.add_argument("-r", "--reverse-prompt", dest="reverse_prompt", action="append", default=[], metavar="PROMPT",
                   help="halt generation at PROMPT, return control in interactive mode (can be given more than once)")
    p.add_argument("--in-prefix", default="", metavar="STRING", help="string to prefix user inputs with (default: empty)")
    p.add_argument("--in-suffix", default="", metavar="STRING", help="string to suffix after user inputs with (default: empty)")
    p.add_argument("--color", action="store_true", help="colorise output to distinguish prompt and user input from generations")
    p.add_argument("--multiline-input", action="store_true", help="write or paste multiple lines without ending each in '\\'")
    p.add_argument("--ignore-eos", action="store_true", help="ignore end of stream token and continue generating")
    p.add_argument("--no-display-prompt", action="store_true", help="don't echo the prompt")
    add_sampling_options(p, repeat_penalty=1.1, min_p=0.0)
    return p


def process_escapes(text: str) -> str:
    """llama.cpp's process_escapes of 2023: \\n \\r \\t \\' \\" \\\\; other backslashes stay as written."""
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def packaged_prompts() -> list[str]:
    """Names of the prompt files shipped with camelid."""
    return sorted(p.name for p in PROMPTS_DIR.glob("*.txt"))


def resolve_prompt_file(name: str) -> Path:
    """The path of a prompt file: as given if it exists, else the packaged prompt of that name
    (for `prompts/NAME.txt` or `NAME.txt`)."""
    path = Path(name)
    if path.exists() or path.parent not in (Path("."), Path("prompts")):
        return path
    packaged = PROMPTS_DIR / path.name
    return packaged if packaged.is_file() else path


def read_prompt(args: argparse.Namespace) -> str:
    """The prompt text from -p and -f (-f's text after -p's, one trailing newline dropped), with -e applied."""
    text = args.prompt or ""
    if args.file:
        path = resolve_prompt_file(args.file)
        try:
            data = path.read_bytes()
        except OSError as exc:
            shipped = ", ".join(f"prompts/{n}" for n in packaged_prompts())
            raise CamelidError(
                f"cannot read prompt file {args.file}: {exc.strerror or exc}; give an existing file (shipped with camelid: {shipped})."
            ) from None
        try:
            file_text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CamelidError(f"prompt file {args.file} is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8.") from None
        if file_text.endswith("\n"):
            file_text = file_text[:-1]
        text += file_text
    return process_escapes(text) if args.escape else text


def validate(args: argparse.Namespace) -> None:
    """Check the numbers a user can get wrong before anything is loaded (CamelidError if not)."""
    if args.ctx_size is not None and args.ctx_size < 8:
        raise CamelidError(f"a context of {args.ctx_size} tokens is too small; use at least a few hundred (-c 512).")
    if args.batch_size < 1:
        raise CamelidError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.threads is not None and args.threads < 1:
        raise CamelidError(f"--threads must be at least 1, got {args.threads}.")
    if args.n_predict < -1:
        raise CamelidError(f"--n-predict must be -1 (no limit) or a number of tokens, got {args.n_predict}.")
    if args.keep is not None and args.keep < -1:
        raise CamelidError(f"--keep must be -1 (the whole prompt) or a number of tokens, got {args.keep}.")
    if args.keep is not None and args.ctx_size and args.keep >= args.ctx_size:
        raise CamelidError(
            f"--keep {args.keep} is not smaller than the context of {args.ctx_size} tokens; keep fewer tokens or use a larger context (-c)."
        )
