"""Several clients at once on a real `camelid serve --parallel 4`: fairness, queueing, disconnects, shutdown.

No test measures time: progress is checked through the order of events and through /metrics,
polled with a generous timeout.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from model_files import smollm2_path
from server_process import ServerProcess, poll, serve

PARALLEL = 4
QUESTION = [{"role": "user", "content": "Write a haiku about the sea."}]
LONG = 400  # tokens for generations that are meant to be interrupted (context 512)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory, "--parallel", str(PARALLEL), "-c", str(512 * PARALLEL))


@pytest.fixture(scope="module")
def model_id():
    return smollm2_path().name


def test_eight_concurrent_streams_get_the_sequential_answer(server, model_id):
    client = server.openai()
    sequential = client.chat.completions.create(model=model_id, messages=QUESTION, max_tokens=12, temperature=0)
    expected = sequential.choices[0].message.content
    barrier = threading.Barrier(8)
    results: list[dict] = [{} for _ in range(8)]

    def run(i: int) -> None:
        own = server.openai()
        barrier.wait()
        pieces, first, finish = [], None, None
        for chunk in own.chat.completions.create(model=model_id, messages=QUESTION, max_tokens=12, temperature=0, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                first = first if first is not None else time.monotonic()
                pieces.append(chunk.choices[0].delta.content)
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        results[i] = {"text": "".join(pieces), "first": first, "done": time.monotonic(), "finish": finish}

    busy_seen = []
    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        busy_seen.append(server.metrics()["camelid_slots_busy"])
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert f"{PARALLEL} slots of 512 tokens" in server.log()  # -c is shared by the slots, as in llama-server
    assert [r["text"] for r in results] == [expected] * 8
    assert [r["finish"] for r in results] == [sequential.choices[0].finish_reason] * 8
    assert max(busy_seen) <= PARALLEL
    # Streams interleave: at some moment several of them had started and not finished.
    overlap = max(sum(r["first"] <= s["first"] < r["done"] for r in results) for s in results)
    assert overlap >= 2, results


def _long_stream(server, model_id):
    """A streaming request that would run for LONG tokens: the httpx response and its line iterator,
    after the first generated text arrived (the iterator must stay referenced: dropping it closes the stream)."""
    body = {"model": model_id, "messages": QUESTION, "max_tokens": LONG, "temperature": 0, "stream": True, "ignore_eos": True}
    request = server.client.build_request("POST", "/v1/chat/completions", json=body)
    response = server.client.send(request, stream=True)
    lines = response.iter_lines()
    assert next(line for line in lines if '"content": "' in line and '"content": ""' not in line)
    return response, lines


def test_queue_depth_and_closed_streams_free_their_slots(server, model_id):
    before = server.metrics()
    streams = [_long_stream(server, model_id) for _ in range(PARALLEL)]
    poll(lambda: server.metrics()["camelid_slots_busy"] == PARALLEL)
    result = {}
    waiting = threading.Thread(target=lambda: result.setdefault("reply", server.openai().completions.create(
        model=model_id, prompt="Hello", max_tokens=2, temperature=0)))
    waiting.start()
    poll(lambda: server.metrics()["camelid_requests_waiting"] == 1)
    for response, _ in streams:
        response.close()
    waiting.join(timeout=120)
    assert result["reply"].usage.completion_tokens == 2
    after = poll(lambda: (m := server.metrics())["camelid_slots_busy"] == 0 and m)
    assert after["camelid_requests_waiting"] == 0
    assert after["camelid_requests_cancelled_total"] - before["camelid_requests_cancelled_total"] == PARALLEL
    assert after["camelid_generated_tokens_total"] - before["camelid_generated_tokens_total"] < PARALLEL * LONG


CLIENT = textwrap.dedent("""
    import sys, openai
    client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
    kwargs = dict(model=sys.argv[2], messages=[{"role": "user", "content": "Write a long story."}], max_tokens=int(sys.argv[3]),
                  temperature=0, extra_body={"ignore_eos": True})
    if sys.argv[4] == "stream":
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            if chunk.choices and chunk.choices[0].delta.content:
                print("streaming", flush=True)
    else:
        client.chat.completions.create(**kwargs)
""")


@pytest.mark.parametrize("mode", ["stream", "whole"])
def test_killed_client_frees_its_slot(server, model_id, mode):
    before = server.metrics()
    process = subprocess.Popen([sys.executable, "-c", CLIENT, server.url, model_id, str(LONG), mode],
                               stdout=subprocess.PIPE, text=True)
    try:
        if mode == "stream":
            assert process.stdout.readline() == "streaming\n"
        else:
            poll(lambda: server.metrics()["camelid_slots_busy"] == 1)
    finally:
        process.kill()
        process.wait()
    after = poll(lambda: (m := server.metrics())["camelid_slots_busy"] == 0 and m)
    assert after["camelid_requests_cancelled_total"] - before["camelid_requests_cancelled_total"] == 1, (before, after)
    assert after["camelid_generated_tokens_total"] - before["camelid_generated_tokens_total"] < LONG
    reply = server.openai().completions.create(model=model_id, prompt="Hello", max_tokens=2, temperature=0)
    assert reply.usage.completion_tokens == 2


def test_shutdown_ends_running_streams_with_an_error(tmp_path, model_id):
    server = ServerProcess(tmp_path)
    try:
        response, lines = _long_stream(server, model_id)
        server.process.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line.startswith("data:")]
        assert "shutting down" in json.loads(rest[-1][len("data:"):])["error"]["message"]
        assert server.process.wait(timeout=60) is not None
    finally:
        server.close()
