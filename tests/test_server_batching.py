"""Continuous batching on a real `camelid serve --parallel 8`, through the official openai client.

Eight concurrent streams get, token for token, what each request gets alone and what `camelid run`
prints for the same prompt; a client that goes away frees its slot at once; a system prompt shared
with a request that is still generating is not recomputed; the KV pool keeps the conversations of
more clients than there are slots.

The model is Gemma 3 270M Q4_K_M: among its products are K-quants, whose kernels round a batch of
rows differently from a single row, so the batched decoding step must compute each row as a
one-token batch for the streams to agree. No test measures time.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from model_files import gemma_path
from server_process import ROOT, poll, serve

MODEL = "gemma-3-270m-q4_k_m"  # the file's name without .gguf
PARALLEL = 8
N_TOKENS = 16
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "List three colours: red,",
    "羊驼是一种",
    "def fibonacci(n):",
    "The best way to learn a language is",
    "In 1969, the first person to walk on the moon",
    "Water boils at",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory, "-m", str(gemma_path()), "--parallel", str(PARALLEL), "-c", str(256 * PARALLEL))


def complete(client, prompt: str, stream: bool) -> str:
    kwargs = dict(model=MODEL, prompt=prompt, max_tokens=N_TOKENS, temperature=0, extra_body={"ignore_eos": True})
    if not stream:
        return client.completions.create(**kwargs).choices[0].text
    return "".join(chunk.choices[0].text for chunk in client.completions.create(**kwargs, stream=True) if chunk.choices)


def camelid_run(prompt: str) -> str:
    """What `camelid run` prints after the prompt it echoes: greedy, N_TOKENS tokens, no repeat penalty
    (the OpenAI API has none by default)."""
    result = subprocess.run([sys.executable, "-m", "camelid", "run", "-m", str(gemma_path()), "-p", prompt, "-n", str(N_TOKENS),
                             "--temp", "0", "--repeat-penalty", "1.0", "--ignore-eos", "-c", "256", "-t", "1"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(prompt), result.stdout
    return result.stdout[len(prompt):]


def test_eight_concurrent_streams_equal_each_alone_and_camelid_run(server):
    client = server.openai()
    alone = [complete(client, p, stream=False) for p in PROMPTS]
    barrier = threading.Barrier(PARALLEL)
    together: list[str | None] = [None] * PARALLEL

    def run(i: int) -> None:
        own = server.openai()
        barrier.wait()
        together[i] = complete(own, PROMPTS[i], stream=True)

    busy_seen = []
    threads = [threading.Thread(target=run, args=(i,)) for i in range(PARALLEL)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        busy_seen.append(server.metrics()["camelid_slots_busy"])
    for t in threads:
        t.join()
    assert together == alone
    assert max(busy_seen) >= 2  # the streams did run side by side
    metrics = server.metrics()
    assert metrics["camelid_first_tokens_total"] >= 2 * PARALLEL and metrics["camelid_time_to_first_token_seconds_total"] > 0
    assert metrics["camelid_requests_started_total"] >= 2 * PARALLEL
    for prompt, text in zip(PROMPTS, alone):
        assert camelid_run(prompt).rstrip("\n") == text.rstrip("\n"), prompt


def test_a_client_that_leaves_frees_its_slot(server):
    before = server.metrics()
    body = {"model": MODEL, "prompt": PROMPTS[1], "max_tokens": 200, "temperature": 0, "stream": True, "ignore_eos": True}
    with server.client.stream("POST", "/v1/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if '"text": "' in line)
    poll(lambda: server.metrics()["camelid_requests_cancelled_total"] == before["camelid_requests_cancelled_total"] + 1)
    after = poll(lambda: (m := server.metrics())["camelid_slots_busy"] == 0 and m)
    assert after["camelid_generated_tokens_total"] - before["camelid_generated_tokens_total"] < 200


def test_a_shared_system_prompt_is_computed_once(server):
    system = {"role": "system", "content": "You are a patient teacher. " * 12}
    client = server.openai()
    first = {"model": MODEL, "max_tokens": 150, "temperature": 0, "stream": True, "extra_body": {"ignore_eos": True},
             "messages": [system, {"role": "user", "content": "What is a llama?"}]}
    stream = client.chat.completions.create(**first)
    next(c for c in stream if c.choices and c.choices[0].delta.content)  # the first request holds its slot, generating
    second = client.chat.completions.create(model=MODEL, max_tokens=4, temperature=0,
                                            messages=[system, {"role": "user", "content": "What is an alpaca?"}])
    stream.close()
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= 12 * 5, second.usage  # at least the system prompt's tokens
    assert cached < second.usage.prompt_tokens


def test_the_kv_pool_keeps_more_conversations_than_slots(server):
    """-c is one pool: finished conversations stay in it, not one per slot, so the second turn of the
    first of 12 conversations (on 8 slots) still finds its first turn."""
    client = server.openai()
    animals = ["llama", "alpaca", "vicuña", "guanaco", "camel", "dromedary", "yak", "horse", "donkey", "zebra", "goat", "sheep"]
    firsts = []
    for animal in animals:
        messages = [{"role": "user", "content": f"Tell me one fact about the {animal}."}]
        reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
        firsts.append((messages + [{"role": "assistant", "content": reply.choices[0].message.content}], reply.usage))
    history, usage = firsts[0]
    second = client.chat.completions.create(model=MODEL, max_tokens=4, temperature=0, messages=history + [
        {"role": "user", "content": "And where does it live? Answer in one short sentence, please."}])
    assert second.usage.prompt_tokens_details.cached_tokens >= usage.prompt_tokens - 4, (second.usage, usage)
    metrics = poll(lambda: (m := server.metrics())["camelid_kv_cells_used"] == 0 and m)
    assert metrics["camelid_kv_cells_total"] == 256 * PARALLEL
    assert 0 < metrics["camelid_kv_cells_cached"] <= metrics["camelid_kv_cells_total"]
