"""A conversation: messages, the template that renders them, and what to do when the context fills."""

from __future__ import annotations

from typing import Iterator

from camelid.errors import CamelidError
from camelid.generate import GenerationChunk, GenerationStats
from camelid.reasoning import prompt_opens_thinking
from camelid.sampling import SamplingParams

MIN_REPLY_ROOM = 64  # tokens always left free for the reply when old turns must be dropped


class ChatSession:
    """Messages of one conversation on a Model, rendered through the model's chat template.

    The session owns a KV cache of n_ctx positions (default: the model's context size). Each turn
    re-renders the whole conversation and the cache keeps its longest unchanged prefix, so a new turn
    only processes its own tokens (a reply joins the history exactly as generated, so it re-tokenizes
    to what the cache holds). When the conversation would not leave room for a reply, the oldest
    whole turns (user + assistant) are dropped, never the system prompt: enough of them that a further
    quarter of the context is free, because every drop moves the kept turns to new positions and they
    must be processed once more. `last_dropped` and `dropped_turns` say how many turns went. A
    message that does not fit even after dropping every earlier turn is refused with a CamelidError
    and the conversation is left as it was.
    """

    def __init__(self, model, system: str | None = None, max_tokens: int = 1024, n_ctx: int | None = None, **sampling):
        SamplingParams(**sampling)
        self.model = model
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.cache = model.new_cache(n_ctx)
        self.last_stats: GenerationStats | None = None
        self.last_dropped = 0  # turns dropped to fit the latest reply
        self.dropped_turns = 0  # turns dropped since the conversation began
        self.reply_starts_thinking = False  # the latest prompt ended inside <think> (camelid.reasoning)
        self.show_thinking = True  # a front end's choice: show a thinking model's reasoning (/thinking)
        self._retries = 0

    @property
    def n_ctx(self) -> int:
        return self.cache.n_ctx

    def _with_system(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + messages

    def _tokens(self, messages: list[dict[str, str]]) -> list[int]:
        return self.model.tokenize_chat(self.model.template.render(self._with_system(messages), add_generation_prompt=True))

    def prompt_tokens(self) -> list[int]:
        """The conversation so far, rendered with a generation prompt and tokenized."""
        return self._tokens(self.messages)

    def context_used(self) -> int:
        """Tokens the conversation takes in the context (system prompt and every kept turn)."""
        return len(self.prompt_tokens())

    def _reply_room(self) -> int:
        quarter = self.n_ctx // 4
        room = min(self.max_tokens if self.max_tokens > 0 else MIN_REPLY_ROOM, quarter)
        return max(room, min(MIN_REPLY_ROOM, quarter))

    def _fit(self, messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], int, list[int]]:
        """(kept messages, turns dropped, prompt tokens) for a conversation ending in a user message."""
        limit = self.n_ctx - self._reply_room()
        tokens = self._tokens(messages)
        if len(tokens) <= limit:
            return messages, 0, tokens
        target = limit - self.n_ctx // 4
        kept, dropped = list(messages), 0
        while len(kept) > 1 and len(tokens) > target:
            n = 2 if len(kept) > 2 and kept[0]["role"] == "user" and kept[1]["role"] == "assistant" else 1
            kept, dropped = kept[n:], dropped + 1
            tokens = self._tokens(kept)
        if len(tokens) > limit:
            what = "the system prompt and this message are" if self.system else "this message is"
            raise CamelidError(
                f"{what} {len(tokens)} tokens with the chat template; with {self._reply_room()} tokens kept for the reply "
                f"they do not fit in the context of {self.n_ctx}. Shorten the message or use a larger context (-c)."
            )
        return kept, dropped, tokens

    def send(self, text: str) -> Iterator[GenerationChunk]:
        """Add a user message and stream the assistant's reply.

        Nothing changes until the stream is started. The reply joins the history when the stream ends,
        also when it is interrupted (Ctrl+C, close()): then with the text generated so far.
        """
        if not isinstance(text, str):
            raise CamelidError("a chat message must be a string.")
        return self._respond(self.messages + [{"role": "user", "content": text}], self.sampling)

    def retry(self) -> Iterator[GenerationChunk]:
        """Stream a new reply to the last user message, replacing the last reply.

        Sampling draws anew: with a fixed seed each retry uses the next seed (a greedy reply repeats).
        """
        if not self.messages or self.messages[-1]["role"] != "assistant":
            raise CamelidError("there is no reply to retry yet; send a message first.")
        self._retries += 1
        sampling = dict(self.sampling)
        if sampling.get("seed") is not None:
            sampling["seed"] = (sampling["seed"] + self._retries) % 2**32
        return self._respond(self.messages[:-1], sampling)

    def _respond(self, messages: list[dict[str, str]], sampling: dict) -> Iterator[GenerationChunk]:
        messages, dropped, prompt = self._fit(messages)
        self.reply_starts_thinking = prompt_opens_thinking(
            self.model.template.render(self._with_system(messages), add_generation_prompt=True))
        self.messages = messages
        self.last_dropped = dropped
        self.dropped_turns += dropped
        reply, failed = [], False
        try:
            for chunk in self.model.stream_tokens(
                prompt, max_tokens=self.max_tokens, stop=self.model.template.stop_strings, cache=self.cache, **sampling
            ):
                reply.append(chunk.text)
                if chunk.stats is not None:
                    self.last_stats = chunk.stats
                yield chunk
        except CamelidError:
            failed = True
            self.messages.pop()
            raise
        finally:
            if not failed:
                self.messages.append({"role": "assistant", "content": "".join(reply)})

    def reply(self, text: str) -> str:
        """Send a user message and return the whole reply."""
        return "".join(chunk.text for chunk in self.send(text)).strip()

    def undo(self) -> bool:
        """Remove the last exchange (user message and reply); False if there is none."""
        if not self.messages:
            return False
        n = 2 if len(self.messages) >= 2 and self.messages[-1]["role"] == "assistant" else 1
        del self.messages[-n:]
        return True

    def clear(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.messages.clear()
        self.last_dropped = 0
        self.dropped_turns = 0
