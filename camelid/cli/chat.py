"""`camelid chat`: an interactive chat in the terminal, streaming replies, with slash commands."""

from __future__ import annotations

import argparse
import sys

from camelid.cli.options import add_model_options, add_sampling_options, add_template_options, sampling_from_args
from camelid.reasoning import ReasoningSplitter, template_thinks

PROMPT = ">>> "


def register(sub) -> None:
    p = sub.add_parser(
        "chat", help="chat with a model in the terminal",
        description="Chat with a model through its chat template. /help lists the commands (/save, /load, /undo, "
                    "/retry, /system, /stats, ...); Ctrl+C stops a reply, Ctrl+D or /exit quits.",
    )
    add_model_options(p, None)
    p.add_argument("--system", "-sys", help="system prompt")
    add_template_options(p)
    p.add_argument("--load", metavar="FILE", help="continue a chat saved with /save")
    p.add_argument("-n", "--n-predict", dest="n_predict", type=int, default=1024, help="most tokens per reply (default: %(default)s)")
    add_sampling_options(p)
    p.set_defaults(handler=chat)


def _note(text: str) -> None:
    sys.stdout.flush()
    print(text, file=sys.stderr, flush=True)


DIM, RESET = "\x1b[2m", "\x1b[0m"


class ReplyWriter:
    """Writes a streamed reply to the terminal; a thinking model's reasoning (camelid.reasoning) dimmed,
    or, when the session hides it, as one dimmed "thinking..." line that the answer replaces."""

    def __init__(self, session, out=sys.stdout):
        self.out = out
        self.session = session
        self.show = session.show_thinking
        self.splitter: ReasoningSplitter | None = None
        self.started = False
        self.thinking = False  # inside dimmed (or hidden) reasoning on the screen

    def write(self, text: str, last: bool = False) -> None:
        if not self.started:  # the session renders the prompt when its stream starts
            self.started = True
            if template_thinks(self.session.model.template.source):
                self.splitter = ReasoningSplitter(self.session.reply_starts_thinking)
        if self.splitter is None:
            self.out.write(text)
            return
        reasoning, content = self.splitter.feed(text, last)
        if reasoning:
            if not self.thinking:
                self.out.write(DIM + ("" if self.show else "thinking..."))
                self.thinking = True
            if self.show:
                self.out.write(reasoning)
        if content or (last and self.thinking):
            self.end_thinking()
            self.out.write(content)

    def end_thinking(self) -> None:
        if self.thinking:
            self.out.write(RESET + ("\n\n" if self.show else "\r\x1b[K"))
            self.thinking = False


def _stream_reply(session, stream) -> None:
    """Print a reply as it streams; Ctrl+C stops it (the part written so far stays in the chat)."""
    finished = None
    writer = ReplyWriter(session)
    try:
        for chunk in stream:
            if finished is None:
                finished = False
                if session.last_dropped:
                    s = "s" if session.last_dropped > 1 else ""
                    _note(f"[the context of {session.n_ctx} tokens is full: dropped the oldest {session.last_dropped} turn{s} "
                          f"({session.dropped_turns} so far); the system prompt stays]")
            writer.write(chunk.text, last=chunk.finish_reason is not None)
            sys.stdout.flush()
            if chunk.finish_reason is not None:
                finished = True
    except KeyboardInterrupt:
        stream.close()
        writer.end_thinking()
        sys.stdout.write(" [stopped]")
    sys.stdout.write("\n")
    stats = session.last_stats
    if finished and stats is not None:
        _note(f"[{stats.generated_tokens} tokens, {stats.generation_tokens_per_s:.1f} tok/s]")
    sys.stdout.flush()


def chat(args: argparse.Namespace) -> int:
    import camelid
    from camelid.chat.commands import is_command, message_text, run_command
    from camelid.chat.transcript import read_chat
    from camelid.cli.line_input import read_user_input
    from camelid.errors import CamelidError
    from camelid.formats.metadata import MetadataReader

    if hasattr(sys.stdout, "reconfigure"):  # a terminal that cannot show a character gets "?", not a crash
        sys.stdout.reconfigure(errors="replace")
    sampling = sampling_from_args(args)
    if args.load:
        read_chat(args.load)  # a wrong file fails before the model loads
    model = camelid.load(args.model, n_ctx=args.ctx_size, chat_template=args.chat_template)
    model.template.variables.update(args.chat_template_kwargs)
    session = model.chat(system=args.system, max_tokens=args.n_predict, **sampling)
    if args.load:
        print(run_command(session, "/load " + args.load).text)
    name = (MetadataReader(model.metadata).peek("general.name", "text") or model.path)[:80]
    print(f"camelid chat with {name} ({session.n_ctx}-token context). /help lists the commands; "
          "Ctrl+C stops a reply; Ctrl+D or /exit quits.")
    interrupted = False
    while True:
        try:
            line = read_user_input(PROMPT)
        except KeyboardInterrupt:
            if interrupted:
                print()
                return 0
            interrupted = True
            print("\n(Ctrl+C again, Ctrl+D or /exit quits)")
            continue
        interrupted = False
        if line is None:  # Ctrl+D
            return 0
        text = line.strip()
        if not text:
            continue
        try:
            if is_command(text):
                outcome = run_command(session, text)
                if outcome.text:
                    print(outcome.text)
                if outcome.quit:
                    return 0
                if outcome.reply is not None:
                    _stream_reply(session, outcome.reply)
            else:
                _stream_reply(session, session.send(message_text(text)))
        except CamelidError as exc:
            sys.stdout.flush()
            print(f"camelid: error: {exc}", file=sys.stderr, flush=True)
