"""Counters and gauges of the server, rendered for GET /metrics in Prometheus' text format (0.0.4)."""

from __future__ import annotations

import threading
from collections import Counter


class Metrics:
    """Thread-safe counters: requests, errors, prompt tokens (processed and reused from a slot's cache),
    generated tokens and the time spent on each; the slots' load is passed in at render time."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # endpoint -> accepted generation requests
        self.errors: Counter[int] = Counter()  # HTTP status -> error responses
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.generated_tokens = 0
        self.prompt_seconds = 0.0
        self.generation_seconds = 0.0
        self.cancelled = 0
        self.timed_out = 0
        self.stalled = 0
        self.started = 0  # requests that left the queue for a slot
        self.queue_seconds = 0.0
        self.first_tokens = 0  # requests that got their first output
        self.first_token_seconds = 0.0  # from arrival to that first output, summed

    def count_request(self, endpoint: str) -> None:
        with self._lock:
            self.requests[endpoint] += 1

    def count_error(self, status: int) -> None:
        with self._lock:
            self.errors[status] += 1

    def count_timeout(self) -> None:
        """A request that reached --timeout (queued, or cut short while generating)."""
        with self._lock:
            self.timed_out += 1

    def count_stalled(self) -> None:
        """A connection dropped because its client left the response unread (--stall-timeout)."""
        with self._lock:
            self.stalled += 1

    def record_queue_time(self, seconds: float) -> None:
        """A request left the queue for a slot after `seconds`."""
        with self._lock:
            self.started += 1
            self.queue_seconds += seconds

    def record_first_token(self, seconds: float) -> None:
        """A request's first output (text or its end) left the worker `seconds` after it arrived."""
        with self._lock:
            self.first_tokens += 1
            self.first_token_seconds += seconds

    def record_generation(self, prompt: int, cached: int, generated: int, prompt_seconds: float, generation_seconds: float) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.cached_tokens += cached
            self.generated_tokens += generated
            self.prompt_seconds += prompt_seconds
            self.generation_seconds += generation_seconds

    def record_cancelled(self, prompt: int, cached: int, generated: int) -> None:
        """A generation whose client went away: its tokens count, its time does not."""
        with self._lock:
            self.cancelled += 1
            self.prompt_tokens += prompt
            self.cached_tokens += cached
            self.generated_tokens += generated

    def render(self, busy_slots: int, n_slots: int, waiting: int, kv: dict[str, int] | None = None) -> str:
        """The Prometheus text exposition of every metric; kv: the KV pool's cells (Scheduler.kv_usage)."""
        kv = kv or {"total": 0, "used": 0, "cached": 0, "evicted": 0}
        with self._lock:
            processed = self.prompt_tokens - self.cached_tokens
            rows = [
                ("camelid_requests_total", "counter", "generation requests accepted, by endpoint",
                 [(f'{{endpoint="{e}"}}', n) for e, n in sorted(self.requests.items())] or [("", 0)]),
                ("camelid_errors_total", "counter", "error responses, by HTTP status",
                 [(f'{{status="{s}"}}', n) for s, n in sorted(self.errors.items())] or [("", 0)]),
                ("camelid_requests_cancelled_total", "counter", "generations stopped because the client went away", [("", self.cancelled)]),
                ("camelid_requests_timed_out_total", "counter", "requests that reached --timeout", [("", self.timed_out)]),
                ("camelid_connections_stalled_total", "counter", "connections dropped for leaving a response unread (--stall-timeout)",
                 [("", self.stalled)]),
                ("camelid_prompt_tokens_total", "counter", "prompt tokens of finished generations", [("", self.prompt_tokens)]),
                ("camelid_prompt_tokens_processed_total", "counter", "prompt tokens computed (not reused from the KV cache)", [("", processed)]),
                ("camelid_prompt_tokens_cached_total", "counter", "prompt tokens reused from the KV cache", [("", self.cached_tokens)]),
                ("camelid_generated_tokens_total", "counter", "tokens generated", [("", self.generated_tokens)]),
                ("camelid_prompt_seconds_total", "counter", "time spent processing prompts", [("", self.prompt_seconds)]),
                ("camelid_generation_seconds_total", "counter", "time spent generating, per request, summed", [("", self.generation_seconds)]),
                ("camelid_prompt_tokens_per_second", "gauge", "average prompt processing speed per request",
                 [("", processed / self.prompt_seconds if self.prompt_seconds else 0.0)]),
                ("camelid_generated_tokens_per_second", "gauge", "average generation speed per request",
                 [("", self.generated_tokens / self.generation_seconds if self.generation_seconds else 0.0)]),
                ("camelid_queue_seconds_total", "counter", "time requests waited for a slot, summed", [("", self.queue_seconds)]),
                ("camelid_requests_started_total", "counter", "requests that got a slot", [("", self.started)]),
                ("camelid_time_to_first_token_seconds_total", "counter", "time from a request's arrival to its first output, summed",
                 [("", self.first_token_seconds)]),
                ("camelid_first_tokens_total", "counter", "requests that got their first output", [("", self.first_tokens)]),
                ("camelid_slots_busy", "gauge", "slots generating now", [("", busy_slots)]),
                ("camelid_slots_total", "gauge", "slots (--parallel)", [("", n_slots)]),
                ("camelid_requests_waiting", "gauge", "requests queued for a free slot", [("", waiting)]),
                ("camelid_kv_cells_total", "gauge", "positions the KV pool holds (-c)", [("", kv["total"])]),
                ("camelid_kv_cells_used", "gauge", "KV pool positions held by running generations", [("", kv["used"])]),
                ("camelid_kv_cells_cached", "gauge", "KV pool positions kept as prefix cache, freed when needed",
                 [("", kv["cached"])]),
                ("camelid_kv_cells_evicted_total", "counter", "cached KV positions dropped to make room, least recently used first",
                 [("", kv["evicted"])]),
            ]
        lines = []
        for name, kind, help_, samples in rows:
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
            lines += [f"{name}{labels} {value}" for labels, value in samples]
        return "\n".join(lines) + "\n"
