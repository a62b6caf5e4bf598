"""The caps of `camelid serve` (camelid.server.limits): body size, prompt and generated tokens, the
queue, the time limit of a request, and clients that stop reading. Each refusal is an OpenAI-shaped
4xx the official client maps to its own exception type; nothing here measures time: a short limit
is configured, and its effect is awaited with a generous timeout.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from tiny_gguf import write_tiny_model

import camelid
from camelid.errors import CamelidError
from camelid.sampling import SamplingParams
from camelid.server.app import create_app
from camelid.server.limits import Limits, lone_surrogate_path
from camelid.server.metrics import Metrics
from camelid.server.slots import Failed, Finished, Job, Scheduler
from model_files import smollm2_path
from server_process import poll, serve

MAX_BODY = 64 * 1024
MAX_PROMPT = 64
MAX_TOKENS = 1500
QUESTION = [{"role": "user", "content": "Write a long story about the sea."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory, "--parallel", "1", "-c", "2048", "--max-queue", "1", "--max-body-bytes", str(MAX_BODY),
                     "--max-prompt-tokens", str(MAX_PROMPT), "--max-tokens-limit", str(MAX_TOKENS), "--stall-timeout", "1")


@pytest.fixture(scope="module")
def model_id():
    return smollm2_path().name


def error_of(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "\n" not in error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def test_body_over_the_limit_is_413(server):
    body = json.dumps({"prompt": "a" * MAX_BODY, "max_tokens": 1}).encode()
    error = error_of(server.post("/v1/completions", content=body, headers={"Content-Type": "application/json"}),
                     413, "request_too_large")
    assert "64 KB" in error["message"] and "--max-body-bytes" in error["message"]
    chunks = (body[i:i + 4096] for i in range(0, len(body), 4096))  # no Content-Length: counted while reading
    error_of(server.post("/v1/completions", content=chunks, headers={"Content-Type": "application/json"}), 413)
    below = json.dumps({"prompt": "a" * (MAX_BODY // 2), "max_tokens": 1}).encode()
    error_of(server.post("/v1/completions", content=below, headers={"Content-Type": "application/json"}),
             400, "context_length_exceeded")


def test_prompt_over_max_prompt_tokens_is_400(server, model_id):
    long = "tell me more " * MAX_PROMPT
    error = error_of(server.post("/v1/completions", json={"prompt": long, "max_tokens": 1}), 400, "context_length_exceeded")
    assert "--max-prompt-tokens" in error["message"] and error["param"] == "prompt"
    error_of(server.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": long}], "max_tokens": 1}),
             400, "context_length_exceeded")
    with pytest.raises(openai.BadRequestError):
        server.openai().completions.create(model=model_id, prompt=long, max_tokens=1)
    assert server.post("/v1/completions", json={"prompt": "tell me more", "max_tokens": 1}).status_code == 200


def test_max_tokens_over_the_limit_is_400(server, model_id):
    for field in ("max_tokens", "max_completion_tokens"):
        body = {"messages": [{"role": "user", "content": "Hi"}], field: MAX_TOKENS + 1}
        error = error_of(server.post("/v1/chat/completions", json=body), 400, "max_tokens_exceeded")
        assert "--max-tokens-limit" in error["message"] and error["param"] == "max_tokens"
    error_of(server.post("/v1/completions", json={"prompt": "x", "max_tokens": MAX_TOKENS + 1}), 400, "max_tokens_exceeded")
    with pytest.raises(openai.BadRequestError):
        server.openai().chat.completions.create(model=model_id, messages=QUESTION, max_tokens=MAX_TOKENS + 1)


def long_stream(server):
    """A streamed generation of MAX_TOKENS tokens, after its first generated text: (response, lines)."""
    body = {"messages": QUESTION, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True, "ignore_eos": True}
    response = server.client.send(server.client.build_request("POST", "/v1/chat/completions", json=body), stream=True)
    lines = response.iter_lines()
    assert next(line for line in lines if '"content": "' in line and '"content": ""' not in line)
    return response, lines


def test_full_queue_is_429_with_retry_after(server, model_id):
    holder = long_stream(server)
    queued = httpx.Client(base_url=server.url, timeout=120)
    try:
        waiting = queued.send(queued.build_request("POST", "/v1/completions", json={"prompt": "Hello", "max_tokens": 1, "stream": True}),
                              stream=True)
        poll(lambda: server.metrics()["camelid_requests_waiting"] == 1)
        refused = server.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 1})
        error = error_of(refused, 429, "queue_full")
        assert "--max-queue" in error["message"] and int(refused.headers["Retry-After"]) >= 1
        with pytest.raises(openai.RateLimitError):
            server.openai().completions.create(model=model_id, prompt="Hello", max_tokens=1)
        holder[0].close()
        assert [line for line in waiting.iter_lines() if line][-1] == "data: [DONE]"
        waiting.close()
    finally:
        holder[0].close()
        queued.close()
    poll(lambda: server.metrics()["camelid_slots_busy"] == 0)
    assert server.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 1}).status_code == 200


def test_client_that_never_reads_its_stream_is_dropped(server):
    before = server.metrics()
    body = json.dumps({"messages": QUESTION, "max_tokens": MAX_TOKENS, "stream": True, "ignore_eos": True,
                       "logprobs": True, "top_logprobs": 20}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", server.port))
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (server.port, len(body), body))
        after = poll(lambda: (m := server.metrics())["camelid_connections_stalled_total"] > before["camelid_connections_stalled_total"]
                     and m["camelid_slots_busy"] == 0 and m, timeout=300)
    finally:
        sock.close()
    assert after["camelid_requests_cancelled_total"] == before["camelid_requests_cancelled_total"] + 1
    assert after["camelid_generated_tokens_total"] - before["camelid_generated_tokens_total"] < MAX_TOKENS
    assert "--stall-timeout" in server.log()
    assert server.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 1}).status_code == 200


@pytest.fixture(scope="module")
def timeout_server(tmp_path_factory):
    yield from serve(tmp_path_factory, "--parallel", "1", "-c", "4096", "--timeout", "3")


def test_timeout_ends_a_generation_with_length(timeout_server):
    body = {"messages": QUESTION, "ignore_eos": True}  # no max_tokens: it would fill the context
    reply = timeout_server.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    usage = reply.json()["usage"]
    assert reply.json()["choices"][0]["finish_reason"] == "length"
    assert usage["completion_tokens"] < 4096 - usage["prompt_tokens"]
    with timeout_server.client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as stream:
        events = [line[len("data: "):] for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
    assert timeout_server.metrics()["camelid_requests_timed_out_total"] == 2


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    write_tiny_model(path, "llama")
    return camelid.load(path, show_progress=False)


def test_a_request_still_queued_at_its_deadline_gets_503(tiny_model):
    loop = asyncio.new_event_loop()
    scheduler = Scheduler(tiny_model, 1, Metrics())
    running = Job([1, 2, 3], 4, SamplingParams(temperature=0), [], loop, ignore_eos=True)
    late = Job([1, 2, 3], 4, SamplingParams(temperature=0), [], loop, deadline=time.monotonic())
    scheduler.submit(running)
    scheduler.submit(late)  # both wait; the worker's first turn expires `late` before it assigns a slot
    scheduler.start()

    async def last_event(job):
        while not isinstance(event := await job.events.get(), (Finished, Failed)):
            pass
        return event

    async def both():
        return await asyncio.wait_for(asyncio.gather(last_event(running), last_event(late)), 60)

    try:
        ends = loop.run_until_complete(both())
    finally:
        scheduler.stop()
        loop.close()
    assert isinstance(ends[0], Finished) and ends[0].completion_tokens == 4
    assert isinstance(ends[1], Failed) and ends[1].status == 503 and "--timeout" in ends[1].message


def test_an_exception_in_a_route_is_a_500_in_openai_shape(tiny_model, monkeypatch):
    app = create_app(tiny_model)
    with TestClient(app, base_url="http://localhost:5000") as client:  # raise_server_exceptions: an exception that escaped would fail here
        monkeypatch.setattr(tiny_model.tokenizer, "encode", lambda *a, **k: 1 / 0)
        reply = client.post("/tokenize", json={"content": "x"})
        assert reply.status_code == 500 and reply.json()["error"]["type"] == "server_error"
        assert "ZeroDivisionError" in reply.json()["error"]["message"]
        monkeypatch.undo()
        assert client.post("/tokenize", json={"content": "x"}).status_code == 200


@pytest.mark.parametrize("body, path", [
    (b'{"a": "\\ud800"}', "a"),
    (b'{"messages": [{"content": "ok"}, {"content": "x\\udfffy"}]}', "messages.1.content"),
    (b'{"\\ud83d": 1}', "body"),
    ('{"prompt": "x\udc80"}'.encode("utf-8", "surrogatepass"), "prompt"),
    ('{"title": "\ud800"}'.encode("utf-16-le", "surrogatepass"), "title"),
    (b'"\\udbff"', "body"),
    (b'{"a": "\\ud83d\\ude00 \\\\ud800 is text"}', None),
    (b'{"a": "\xf0\x9f\xa6\x99"}', None),
    (b'{"a": "\\ud800', None),
])
def test_lone_surrogates_are_found(body, path):
    assert lone_surrogate_path(body) == path


@pytest.mark.parametrize("limits, flag", [
    (Limits(max_body_bytes=0), "--max-body-bytes"), (Limits(max_tokens=0), "--max-tokens-limit"),
    (Limits(max_queue=-1), "--max-queue"), (Limits(max_prompt_tokens=0), "--max-prompt-tokens"),
    (Limits(timeout=0), "--timeout"), (Limits(stall_timeout=float("nan")), "--stall-timeout"),
])
def test_impossible_limits_name_their_flag(limits, flag):
    with pytest.raises(CamelidError, match=flag):
        limits.check()
