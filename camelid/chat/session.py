"""A conversation: messages, the template that renders them, and what to do when the context fills."""

from __future__ import annotations

from typing import Iterator

from camelid.errors import CamelidError
from camelid.generate import GenerationChunk, GenerationStats

MIN_REPLY_ROOM = 64  # tokens always left free for the reply when old turns must be dropped


class ChatSession:
    """Messages of one conversation on a Model, rendered through the model's chat template.

    Each turn re-renders the whole conversation; the model's KV cache keeps the unchanged prefix,
    so only the new turn's tokens are processed. When the prompt would not leave room for a reply,
    the oldest whole turns are dropped (never the system prompt).
    """

    def __init__(self, model, system: str | None = None, max_tokens: int = 1024, **sampling):
        self.model = model
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.cache = model.new_cache()
        self.last_stats: GenerationStats | None = None
        self.dropped_turns = 0

    def _all_messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def prompt_tokens(self) -> list[int]:
        """The conversation so far, rendered with a generation prompt and tokenized."""
        tok = self.model.tokenizer
        text = self.model.template.render(self._all_messages(), add_generation_prompt=True)
        bos_text = tok.tokens[tok.bos_id] if tok.bos_id is not None and 0 <= tok.bos_id < tok.n_vocab else None
        add_special = not (bos_text and text.startswith(bos_text))
        return tok.encode(text, add_special=add_special, parse_special=True)

    def _fit_prompt(self) -> list[int]:
        room = min(self.max_tokens if self.max_tokens > 0 else MIN_REPLY_ROOM, self.cache.n_ctx // 4)
        room = max(room, min(MIN_REPLY_ROOM, self.cache.n_ctx // 4))
        while True:
            tokens = self.prompt_tokens()
            if len(tokens) + room <= self.cache.n_ctx:
                return tokens
            if len(self.messages) <= 1:
                raise CamelidError(
                    f"the message is {len(tokens)} tokens with the chat template, too long for the context of {self.cache.n_ctx}; "
                    "shorten it or use a larger context (-c)."
                )
            drop = 2 if len(self.messages) > 2 and self.messages[1]["role"] == "assistant" else 1
            del self.messages[:drop]
            self.dropped_turns += 1

    def send(self, text: str) -> Iterator[GenerationChunk]:
        """Add a user message and stream the assistant's reply; the reply joins the history when the
        stream ends (also when it is interrupted, with what was generated so far)."""
        if not isinstance(text, str):
            raise CamelidError("a chat message must be a string.")
        self.messages.append({"role": "user", "content": text})
        try:
            prompt = self._fit_prompt()
        except CamelidError:
            self.messages.pop()
            raise
        reply = []
        try:
            for chunk in self.model.stream_tokens(
                prompt, max_tokens=self.max_tokens, stop=self.model.template.stop_strings, cache=self.cache, **self.sampling
            ):
                reply.append(chunk.text)
                if chunk.stats is not None:
                    self.last_stats = chunk.stats
                yield chunk
        finally:
            self.messages.append({"role": "assistant", "content": "".join(reply).strip()})

    def reply(self, text: str) -> str:
        """Send a user message and return the whole reply."""
        return "".join(chunk.text for chunk in self.send(text)).strip()

    def clear(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.messages.clear()
