"""The loop behind `camelid run`: prompt, generation, user turns and context shifts, as llama.cpp's
`main` ran them in 2023, with the context policy that keeps long conversations on topic.

In interactive and instruct modes the cache is seen as the kept prompt followed by turns (a user
input and the reply to it). When the context fills, whole old turns go (at least half of what
follows the kept prompt, as llama.cpp drops), never part of a turn and never the current one, and
the cache is shifted rather than recomputed (camelid.context_shift). A reply that would need to push
out its own question stops instead. Plain completion drops the older half, as llama.cpp does.
In those modes the repetition penalty also looks only at the reply being written, not at the user's
question and the template before it (README: why the 2023 chat looped).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import numpy as np

import camelid
from camelid.cli import run_flags
from camelid.cli.line_input import COLOR_PROMPT, COLOR_RESET, read_user_input
from camelid.cli.options import sampling_from_args
from camelid.context_shift import halving_discard, shift_context, turn_discard
from camelid.errors import CamelidError
from camelid.sampling import Sampler, SamplingParams
from camelid.tokenizer.streaming import StreamingDetokenizer

MAX_BATCH = 512  # llama.cpp clamps -b to 512


def run_session(args: argparse.Namespace) -> int:
    """Run `camelid run` with parsed arguments; returns the exit status."""
    run_flags.validate(args)
    prompt = run_flags.read_prompt(args)
    sampling = sampling_from_args(args)
    if sampling["seed"] is None:
        sampling["seed"] = int(np.random.SeedSequence().entropy % 2**31)
    model = camelid.load(args.model, n_ctx=args.ctx_size, n_threads=args.threads)
    session = RunSession(model, args, prompt, SamplingParams(**sampling))
    return session.run()


class RunSession:
    """One `camelid run`: the model's cache, the sampler, and the turns in the context."""

    def __init__(self, model, args: argparse.Namespace, prompt: str, sampling: SamplingParams):
        self.model = model
        self.tok = model.tokenizer
        self.cache = model.cache
        self.args = args
        self.sampling = sampling
        self.sampler = Sampler(sampling)
        self.instruct = args.instruct
        self.interactive = args.interactive or args.interactive_first or args.instruct
        self.antiprompts = list(args.reverse_prompt) + ([run_flags.INSTRUCT_ANTIPROMPT] if self.instruct else [])
        self.n_batch = min(args.batch_size, MAX_BATCH)
        self.prompt = prompt
        self.prompt_tokens = model.tokenize(prompt, add_special=True, parse_special=True)
        n_ctx = self.cache.n_ctx
        if len(self.prompt_tokens) > n_ctx - 4:
            raise CamelidError(
                f"the prompt is {len(self.prompt_tokens)} tokens but the context holds {n_ctx} (at most {n_ctx - 4} for a prompt); "
                "use a larger context (-c) or a shorter prompt."
            )
        if not self.prompt_tokens and not self.interactive:
            raise CamelidError("the prompt is empty and this model adds no BOS token; give a prompt with -p or -f.")
        self.n_keep = self._n_keep(args.keep)
        self.instruct_prefix = self.tok.encode(run_flags.INSTRUCT_PREFIX, add_special=False)
        self.instruct_suffix = self.tok.encode(run_flags.INSTRUCT_SUFFIX, add_special=False)
        self.turn_starts: list[int] = []  # cache positions where a turn (user input + reply) begins
        self.logits: np.ndarray | None = None  # (n_vocab,) after the last token processed
        self.interrupted = False
        self.last_eos: int | None = None  # the end-of-generation token that ended the last reply
        self.n_shifts = 0
        self.prompt_time = self.gen_time = 0.0
        self.n_prompt = self.n_gen = 0

    def _n_keep(self, keep: int | None) -> int:
        n_prompt = len(self.prompt_tokens)
        if keep is None:
            keep = -1 if self.interactive else 0
        if keep < 0 or keep > n_prompt or self.instruct:
            keep = n_prompt
        if self.prompt_tokens and self.tok.add_bos and self.prompt_tokens[0] == self.tok.bos_id:
            keep = max(keep, 1)  # always keep the BOS token
        return keep

    # ---- output --------------------------------------------------------------------------------

    def out(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def notice(self, text: str) -> None:
        sys.stdout.flush()
        print(text, file=sys.stderr, flush=True)

    def banner(self) -> None:
        a, s = self.args, self.sampling
        lines = [f"seed = {s.seed}"]
        if self.interactive:
            lines.append("interactive mode on.")
            lines += [f"Reverse prompt: {p!r}" for p in self.antiprompts]
            if a.in_prefix:
                lines.append(f"Input prefix: {a.in_prefix!r}")
            if a.in_suffix:
                lines.append(f"Input suffix: {a.in_suffix!r}")
        lines.append(
            f"sampling: repeat_last_n = {s.repeat_last_n}, repeat_penalty = {s.repeat_penalty:g}, top_k = {s.top_k}, "
            f"top_p = {s.top_p:g}, min_p = {s.min_p:g}, temp = {s.temperature:g}; "
            f"penalized: {'the tokens of each reply' if self.interactive else 'the context'}"
        )
        lines.append(
            f"generate: n_ctx = {self.cache.n_ctx}, n_batch = {self.n_batch}, n_predict = {a.n_predict}, n_keep = {self.n_keep}, "
            f"context shift = {'off' if a.no_context_shift else 'whole turns' if self.interactive else 'half'}"
        )
        if self.interactive:
            if a.multiline_input:
                how = " - To send your input, end it with '\\'; Return starts a new line.\n"
            else:
                how = " - Press Return to return control to the model.\n - To submit another line, end your input with '\\'.\n"
            lines.append(
                "== Running in interactive mode. ==\n - Press Ctrl+C to interject at any time (twice to quit); Ctrl+D to quit.\n"
                + how + " - To return control without starting a new line, end your input with '/'.\n"
            )
        self.notice("\n".join(lines))

    # ---- the context ---------------------------------------------------------------------------

    def make_room(self, n_needed: int, current_turn: int) -> bool:
        """Ensure n_needed free positions, shifting the context if needed; False if impossible."""
        cache = self.cache
        if cache.n_free >= n_needed:
            return True
        if self.args.no_context_shift:
            return False
        missing = n_needed - cache.n_free
        if self.interactive:
            n_drop = turn_discard(self.n_keep, self.turn_starts, current_turn, cache.n_past, missing)
        else:
            n_drop = max(halving_discard(cache.n_past, self.n_keep), missing)
            n_drop = n_drop if self.n_keep + n_drop <= cache.n_past else 0
        if n_drop <= 0:
            return False
        n_turns = sum(1 for b in self.turn_starts if self.n_keep < b <= self.n_keep + n_drop)
        shift_context(self.model.network, cache, self.n_keep, self.n_keep + n_drop)
        self.turn_starts = [b - n_drop for b in self.turn_starts if b >= self.n_keep + n_drop]
        self.n_shifts += 1
        what = f"{n_turns} oldest turn{'s' if n_turns != 1 else ''}, " if self.interactive else ""
        self.notice(
            f"\n[context full ({cache.n_ctx} tokens): dropped {what}{n_drop} tokens after the first {self.n_keep}; "
            f"the remaining {cache.n_past} tokens were shifted, not recomputed]"
        )
        return True

    def feed(self, tokens: list[int], current_turn: int) -> bool:
        """Process input tokens (making room first); False if they cannot fit."""
        if not tokens:
            return True
        if not self.make_room(len(tokens), current_turn):
            return False
        t0 = time.perf_counter()
        for i in range(0, len(tokens), self.n_batch):
            self.logits = self.model.forward(tokens[i:i + self.n_batch], self.cache, last_only=True)[-1]
        self.prompt_time += time.perf_counter() - t0
        self.n_prompt += len(tokens)
        return True

    # ---- generation ----------------------------------------------------------------------------

    def generate(self, budget: int, current_turn: int) -> tuple[str, list[int]]:
        """Sample, print and process tokens until a stop; returns (reason, the reply's tokens).

        reason: "eos" (end-of-generation token, not processed), "antiprompt", "length" (budget),
        "context" (full and nothing may be dropped), "interrupted" (Ctrl+C).
        """
        detok = StreamingDetokenizer(self.tok, continuation=True)
        reply: list[int] = []
        text = ""
        reason = "length"
        slack = 0 if self.interactive else 2  # llama.cpp looks a little further back when not interactive
        t0 = time.perf_counter()
        while budget < 0 or len(reply) < budget:
            if self.interrupted:
                reason = "interrupted"
                break
            if self.logits is None:
                break
            if not self.make_room(1, current_turn):
                reason = "context"
                break
            logits = self.logits
            if self.args.ignore_eos:
                logits = logits.copy()
                logits[list(self.tok.eog_ids)] = -np.inf
            token = self.sampler(logits, reply if self.interactive else self.cache.tokens)
            if token in self.tok.eog_ids:
                reason = "eos"
                self.last_eos = token
                break
            self.logits = self.model.forward([token], self.cache, last_only=True)[-1]
            reply.append(token)
            piece = detok.add_token(token)
            self.out(piece)
            text += piece
            if any(a in text[-(len(a) + slack):] for a in self.antiprompts):
                reason = "antiprompt"
                break
        self.out(detok.finalize(drop_incomplete=True))
        self.gen_time += time.perf_counter() - t0
        self.n_gen += len(reply)
        return reason, reply

    def antiprompt_start(self, reply: list[int]) -> int:
        """Cache position where the reverse prompt that ended `reply` begins (a turn boundary)."""
        end = self.cache.n_past
        for k in range(1, len(reply) + 1):
            if any(a in self.tok.decode(reply[-k:]) for a in self.antiprompts):
                return end - k
        return end

    # ---- the session ---------------------------------------------------------------------------

    def run(self) -> int:
        a = self.args
        self.banner()
        if a.color:
            self.out(COLOR_PROMPT)
        if not a.no_display_prompt:
            self.out(self.prompt)
        if a.color:
            self.out(COLOR_RESET)
        self.feed(self.prompt_tokens, len(self.prompt_tokens))
        status = 0
        try:
            if self.interactive:
                self.converse()
            else:
                reason, _ = self.generate(a.n_predict, 0)
                self.out("\n")
                if reason == "eos":
                    self.notice(" [end of text]")
                elif reason == "context":
                    self.notice(f"[stopped: the context of {self.cache.n_ctx} tokens is full (--no-context-shift)]")
        except KeyboardInterrupt:
            self.out(COLOR_RESET + "\n" if a.color else "\n")
            status = 130
        self.print_timings()
        return status

    def converse(self) -> None:
        """The interactive loop: generate, hand over to the user, feed the input, repeat."""
        a = self.args
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            boundary = None  # where the current reply's reverse prompt began, if it ended with one
            user_first = a.interactive_first or self.instruct or not self.prompt_tokens
            current_turn = self.cache.n_past
            if not user_first:
                self.turn_starts.append(current_turn)  # the first reply answers the prompt alone
            while True:
                if not user_first:
                    reason, reply = self.generate(a.n_predict, current_turn)
                    if reason == "context" and a.no_context_shift:
                        self.notice(f"\n[the context of {self.cache.n_ctx} tokens is full: stopping (--no-context-shift)]")
                        return
                    boundary = self.after_reply(reason, reply)
                tokens = self.read_turn(boundary is not None)
                if tokens is None:
                    return
                current_turn = boundary if boundary is not None else self.cache.n_past
                self.turn_starts.append(current_turn)
                user_first = not self.feed(tokens, current_turn)
                if user_first:
                    self.turn_starts.pop()
                    if a.no_context_shift:
                        self.notice(f"[the context of {self.cache.n_ctx} tokens is full: stopping (--no-context-shift)]")
                        return
                    self.notice("[that input does not fit in what the context has left; please send something shorter]")
        finally:
            signal.signal(signal.SIGINT, previous)

    def after_reply(self, reason: str, reply: list[int]) -> int | None:
        """Tell the user why the reply ended, finish the turn in the cache; returns the reverse
        prompt's start position when the reply ended with one."""
        current = self.turn_starts[-1] if self.turn_starts else self.n_keep
        if reason == "antiprompt":
            return self.antiprompt_start(reply)
        if reason == "interrupted":
            self.interrupted = False
            self.out("\n")
        elif reason == "context":
            self.notice(f"\n[reply cut: the context of {self.cache.n_ctx} tokens is full and holds only this turn]")
        elif reason == "eos":
            if self.instruct:
                self.feed([self.last_eos], current)  # as llama.cpp: the reply's end stays in the context
            else:  # llama.cpp turns the end of text into a newline and, if any, the first reverse prompt
                start = self.cache.n_past
                text = "\n" + (self.antiprompts[0] if self.antiprompts else "")
                if self.feed(self.tok.encode(text, add_special=False), current):
                    self.out(text)
                    return start if self.antiprompts else None
        return None

    def read_turn(self, after_antiprompt: bool) -> list[int] | None:
        """Read the user's next input and return its tokens (instruct wrapping, prefix and
        suffix included); None when the user ends the session with Ctrl+D (Ctrl+C at the prompt
        raises KeyboardInterrupt, which quits)."""
        a = self.args
        n_room = self.cache.n_ctx - self.n_keep - 1
        while True:
            if self.instruct:
                self.out("\n")
            signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                text = read_user_input(("> " if self.instruct else "") + a.in_prefix, color=a.color,
                                       multiline=a.multiline_input, keep_newline=True)
            finally:
                signal.signal(signal.SIGINT, self._on_sigint)
            if text is None:
                return None
            if len(text) <= 1:  # an empty line: the model continues (instruct: ask again)
                if self.instruct:
                    continue
                return []
            buffer = a.in_prefix + text
            if a.in_suffix:
                buffer += a.in_suffix
                self.out(a.in_suffix)
            tokens = self.tok.encode(buffer, add_special=False)
            if self.instruct:
                tokens = ([] if after_antiprompt else self.instruct_prefix) + tokens + self.instruct_suffix
            if len(tokens) >= n_room:
                self.notice(
                    f"[that input is {len(tokens)} tokens; with the kept prompt at most {n_room - 1} fit in the "
                    f"context of {self.cache.n_ctx} (-c). Please send something shorter.]"
                )
                continue
            return tokens

    def _on_sigint(self, signum, frame) -> None:
        if self.interrupted:  # a second Ctrl+C before the model stopped: quit
            raise KeyboardInterrupt
        self.interrupted = True

    def print_timings(self) -> None:
        p = self.n_prompt / self.prompt_time if self.prompt_time > 0 else 0.0
        g = self.n_gen / self.gen_time if self.gen_time > 0 else 0.0
        shifts = f", {self.n_shifts} context shift{'s' if self.n_shifts != 1 else ''}" if self.n_shifts else ""
        self.notice(f"\n[{self.n_prompt} prompt tokens at {p:.1f} tok/s, {self.n_gen} generated at {g:.1f} tok/s{shifts}]")
