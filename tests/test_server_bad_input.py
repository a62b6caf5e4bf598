"""Bad requests to a real `camelid serve --api-key`: each gets a 4xx error in OpenAI's shape, and the
server keeps answering good requests after every one of them."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import httpx
import openai
import pytest

from model_files import smollm2_path
from server_process import ROOT, serve

KEY = "test-key-123"
CTX = 256


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory, "--parallel", "1", "-c", str(CTX), api_key=KEY)


@pytest.fixture(scope="module")
def model_id():
    return smollm2_path().name


def assert_error(response: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"] and "\n" not in error["message"]
    assert error["type"] in ("invalid_request_error", "authentication_error")
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error["message"]


@pytest.fixture
def still_serving(server, model_id):
    """After the test: a good request still gets a complete answer."""
    yield
    reply = server.post("/v1/completions", json={"model": model_id, "prompt": "Hi", "max_tokens": 1, "temperature": 0})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 1


def chat(server, **fields) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **fields}
    return server.post("/v1/chat/completions", json=body)


@pytest.mark.parametrize("path, text", [
    *[(path, text) for path in ("/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize")
      for text in ('{"messages": [', "\xff\xfe")],
    ("/v1/completions", "not json at all"), ("/v1/completions", '{"prompt": "x",}'),
])
def test_malformed_json(server, still_serving, path, text):
    response = server.post(path, content=text.encode("latin-1"), headers={"Content-Type": "application/json"})
    assert "JSON" in assert_error(response, 400)


def test_body_not_sent_as_json(server, still_serving):
    response = server.post("/v1/completions", content=b"prompt=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert "Content-Type: application/json" in assert_error(response, 400)


@pytest.mark.parametrize("fields, param", [
    ({"messages": "Hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "Hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": 3}]}, None),
    ({"messages": [{"role": "user"}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages.0.content"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"temperature": 7}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"stop": 5}, None),
    ({"stream": "sometimes"}, "stream"),
    ({"seed": 1.5}, "seed"),
    ({"n": 2}, "n"),
    ({"logprobs": True, "top_logprobs": 99}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "not a name"}}]}, "tools"),
    ({"tools": "get_weather"}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "always"}, "tool_choice"),
    ({"logit_bias": {"5": 10}}, "logit_bias"),
    ({"top_k": "x"}, "top_k"),
    ({"repeat_penalty": 0}, "repeat_penalty"),
])
def test_wrong_fields(server, still_serving, fields, param):
    assert_error(chat(server, **fields), 400, param)


@pytest.mark.parametrize("field", ["temperature", "top_p", "presence_penalty", "min_p"])
def test_nan_and_infinity(server, still_serving, field):
    for value in ("NaN", "Infinity", "-Infinity"):
        body = '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "%s": %s}' % (field, value)
        assert_error(server.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}), 400, field)


@pytest.mark.parametrize("text", ["nul \x00 byte", "🦙 emoji, 中文", "<|im_end|><|im_start|>system"])
def test_odd_text_is_served(server, text):
    def post(path, body):  # JSON with \u escapes, which can carry a lone surrogate
        return server.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})

    assert post("/tokenize", {"content": text}).status_code == 200
    for stream in (False, True):
        reply = post("/v1/completions", {"prompt": text, "max_tokens": 1, "temperature": 0, "echo": True, "stream": stream})
        assert reply.status_code == 200, reply.text
        assert reply.text.endswith("data: [DONE]\n\n") if stream else reply.json()["choices"][0]["text"]
    reply = post("/v1/chat/completions", {"messages": [{"role": "user", "content": text}], "max_tokens": 1})
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("method, path, body, param", [
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "a\ud800b"}], "max_tokens": 1}, "messages.0.content"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "stop": ["\udc00"]}, "stop.0"),
    ("POST", "/v1/completions", {"prompt": "\udbff", "max_tokens": 1, "stream": True}, "prompt"),
    ("POST", "/v1/completions", {"prompt": "x", "max_tokens": 1, "user\ud800": 1}, None),
    ("POST", "/tokenize", {"content": "\ud83d"}, "content"),
    ("POST", "/api/conversations", {"title": "\ud800"}, "title"),
    ("POST", "/api/conversations", {"system_prompt": "be \udfff"}, "system_prompt"),
    ("PATCH", "/api/conversations/{id}", {"title": "x\ud800"}, "title"),
    ("PUT", "/api/conversations/{id}/messages", {"start": 0, "messages": [{"role": "user", "content": "\ud800"}]},
     "messages.0.content"),
    ("PUT", "/api/conversations/{id}/messages",
     {"start": 0, "messages": [{"role": "user", "content": "x", "stats": {"\ud800": 1}}]}, "messages.0.stats"),
])
def test_lone_surrogates_are_400(server, still_serving, method, path, body, param):
    """A lone surrogate ("\\ud800" in JSON) is no Unicode text: 400 wherever it is, and the same
    connection serves the next request."""
    conversation = server.post("/api/conversations", json={"title": "keep"}).json()["id"]
    content = json.dumps(body)  # escapes the surrogate as \uXXXX, as a client in another language may
    response = server.client.request(method, path.format(id=conversation), content=content,
                                     headers={"Content-Type": "application/json"})
    assert "Unicode" in assert_error(response, 400, param, "invalid_unicode")
    raw = content.encode("ascii").decode("unicode_escape").encode("utf-8", "surrogatepass")  # the surrogate as raw bytes
    response = server.client.request(method, path.format(id=conversation), content=raw,
                                     headers={"Content-Type": "application/json"})
    assert_error(response, 400, param, "invalid_unicode")
    stored = server.get(f"/api/conversations/{conversation}").json()
    assert (stored["title"], stored["messages"]) == ("keep", [])
    assert server.get("/api/conversations").status_code == 200


@pytest.mark.parametrize("body, param", [
    ({"prompt": 5}, None),
    ({"prompt": "x", "max_tokens": 2, "echo": True, "logprobs": 1}, "echo"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": [1, 2, 10_000_000]}, "prompt"),
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({}, "prompt"),
])
def test_wrong_completion_fields(server, still_serving, body, param):
    assert_error(server.post("/v1/completions", json=body), 400, param)


@pytest.mark.parametrize("path, body, param", [
    ("/tokenize", {"content": 5}, "content"),
    ("/tokenize", {}, "content"),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
    ("/detokenize", {"tokens": [10_000_000]}, "tokens"),
])
def test_tokenizer_endpoints(server, still_serving, path, body, param):
    assert_error(server.post(path, json=body), 400, param)


def test_unknown_model_name_is_answered_by_the_served_model(server, still_serving, model_id):
    assert chat(server, model="gpt-4o").json()["model"] == "gpt-4o"
    assert chat(server, model="../../../../etc/passwd").status_code == 200  # only a name, echoed back
    assert_error(server.get("/v1/models/gpt-4o"), 404, "model", "model_not_found")
    client = server.openai()
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert "no-such-model" in caught.value.message
    assert chat(server, model=model_id).status_code == 200
    assert chat(server, model=model_id.removesuffix(".gguf")).json()["model"] == model_id.removesuffix(".gguf")


@pytest.mark.parametrize("max_tokens", [0, -5])
def test_max_tokens_below_one(server, still_serving, max_tokens):
    assert_error(chat(server, max_tokens=max_tokens), 400, "max_tokens")
    assert_error(chat(server, max_tokens=None, max_completion_tokens=max_tokens), 400, "max_completion_tokens")
    assert_error(server.post("/v1/completions", json={"prompt": "x", "max_tokens": max_tokens}), 400, "max_tokens")


@pytest.mark.parametrize("max_tokens", [CTX, CTX * 100])
def test_max_tokens_beyond_the_context(server, still_serving, max_tokens):
    assert_error(chat(server, max_tokens=max_tokens), 400, "max_tokens", "context_length_exceeded")
    assert_error(server.post("/v1/completions", json={"prompt": "x", "max_tokens": max_tokens}), 400, "max_tokens", "context_length_exceeded")


def test_prompt_longer_than_the_context(server, still_serving):
    long_text = "tell me more " * CTX
    assert_error(server.post("/v1/completions", json={"prompt": long_text, "max_tokens": 2}), 400, "prompt", "context_length_exceeded")
    assert_error(chat(server, messages=[{"role": "user", "content": long_text}]), 400, "messages", "context_length_exceeded")
    # Far too long for any tokenization: refused before tokenizing.
    assert_error(chat(server, messages=[{"role": "user", "content": "x" * 1_000_000}]), 400, "messages", "context_length_exceeded")
    client = server.openai()
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=smollm2_path().name, prompt=long_text, max_tokens=2)


def test_ten_megabyte_body(server, still_serving):
    body = json.dumps({"prompt": "a" * (10 * 1024 * 1024), "max_tokens": 2}).encode()
    assert_error(server.post("/v1/completions", content=body, headers={"Content-Type": "application/json"}), 413, code="request_too_large")

    def chunks():  # no Content-Length: the limit applies while reading
        for i in range(0, len(body), 1 << 20):
            yield body[i:i + (1 << 20)]

    assert_error(server.post("/v1/completions", content=chunks(), headers={"Content-Type": "application/json"}), 413)


@pytest.mark.parametrize("path, method", [
    ("/v1/chat/completions", "POST"), ("/v1/completions", "POST"), ("/v1/models", "GET"),
    ("/tokenize", "POST"), ("/detokenize", "POST"), ("/metrics", "GET"),
])
def test_missing_or_wrong_api_key(server, still_serving, path, method):
    body = {"messages": [{"role": "user", "content": "Hi"}], "prompt": "Hi", "content": "Hi", "tokens": [1], "max_tokens": 1}
    kw = {"json": body} if method == "POST" else {}
    assert_error(httpx.request(method, server.url + path, **kw), 401, code="invalid_api_key")
    assert_error(httpx.request(method, server.url + path, headers={"Authorization": "Bearer wrong"}, **kw), 401, code="invalid_api_key")
    assert_error(httpx.request(method, server.url + path, headers={"Authorization": KEY}, **kw), 401, code="invalid_api_key")
    assert httpx.request(method, server.url + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=60, **kw).status_code == 200
    assert httpx.get(server.url + "/health").status_code == 200  # open without the key


def test_openai_client_with_wrong_key(server, still_serving, model_id):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_unknown_route_and_method(server, still_serving):
    assert_error(server.get("/v1/nothing-here"), 404)
    assert_error(server.get("/v1/chat/completions"), 405)
    assert_error(server.client.delete("/health"), 405)


@pytest.mark.parametrize("path", [
    "/static/../../../../etc/passwd", "/static/..%2f..%2f..%2f..%2fetc%2fpasswd", "/static/%2e%2e/%2e%2e/pyproject.toml",
    "/static//etc/passwd", "/..%2f..%2fetc/passwd", "/api/conversations/..%2f..%2f..%2fetc%2fpasswd",
    "/v1/models/..%2f..%2fetc%2fpasswd",
])
def test_no_file_outside_the_data_directory(server, still_serving, path):
    response = server.client.get(path)
    assert 400 <= response.status_code < 500
    assert "root:" not in response.text and "[project]" not in response.text


def test_stream_error_on_a_streaming_request_is_a_status_not_a_broken_stream(server, still_serving):
    response = server.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x " * 2 * CTX}], "stream": True})
    assert_error(response, 400, "messages", "context_length_exceeded")


def test_no_server_errors_in_the_log(server):
    metrics = server.metrics()
    assert not any(k.startswith("camelid_errors_total") and '"5' in k for k in metrics), metrics
    assert "Traceback" not in server.log()
    assert server.process.poll() is None


@pytest.mark.parametrize("args, message", [
    (["--port", "{port}"], "already in use"),
    (["--parallel", "0"], "--parallel"),
    (["--parallel", "4", "-c", "200"], "give at least 256 (-c is the total"),
    (["--port", "70000"], "--port"),
    (["--data-dir", "{file}"], "data directory"),
    (["-m", "{missing}"], "missing.gguf"),
    (["--data-dir", "{corrupt}"], "is corrupt"),
    (["--max-queue", "-1"], "--max-queue"),
    (["--timeout", "0"], "--timeout"),
    (["--max-body-bytes", "0"], "--max-body-bytes"),
])
def test_serve_command_line_errors(server, tmp_path, args, message):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "conversations.sqlite3").write_bytes(random.Random(0).randbytes(64 * 1024))
    fill = {"port": str(server.port), "file": str(tmp_path / "a-file"), "missing": str(tmp_path / "missing.gguf"),
            "corrupt": str(tmp_path / "corrupt")}
    args = [a.format(**fill) for a in args]
    port = [] if "--port" in args else ["--port", "0"]
    result = subprocess.run([sys.executable, "-m", "camelid", "serve", *port, *args], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("camelid: error: ") and message in lines[0], result.stderr
    if message == "is corrupt":
        assert str(tmp_path / "corrupt" / "conversations.sqlite3") in lines[0] and "delete it" in lines[0]
