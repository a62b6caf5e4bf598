"""Ollama's API through the official `ollama` Python client against a real `camelid serve` on SmolLM2:
the same greedy text as the OpenAI routes, NDJSON streaming, embeddings equal to Model.embed, the
model listings, tools, and clear errors for what is not supported. (format is tested in
test_structured_output.py, think in test_reasoning.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from dependencies import require_module
from model_files import smollm2_path
from server_process import serve

try:
    import ollama
except ImportError:  # the client fixture reports it (a failure under CI)
    ollama = None

GREEDY = {"temperature": 0, "num_predict": 12}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory, "-m", str(smollm2_path()), "-c", "1024", "--parallel", "2")


@pytest.fixture(scope="module")
def client(server):
    return require_module("ollama").Client(host=server.url, timeout=120)


@pytest.fixture(scope="module")
def smollm2():
    import camelid

    return camelid.load(smollm2_path(), n_ctx=512, show_progress=False)


def openai_chat(server, messages, n):
    reply = server.openai().chat.completions.create(model="x", messages=messages, max_tokens=n, temperature=0)
    return reply.choices[0]


def test_chat_equals_the_openai_route_streamed_or_not(server, client):
    expected = openai_chat(server, QUESTION, GREEDY["num_predict"])
    reply = client.chat(model="llama3", messages=QUESTION, options=GREEDY, stream=False)
    assert reply.message.role == "assistant"
    assert reply.message.content == expected.message.content
    assert reply.model == "llama3" and reply.done and reply.done_reason == expected.finish_reason
    assert reply.eval_count == 12 and reply.prompt_eval_count > 5
    assert isinstance(reply.total_duration, int) and reply.eval_duration > 0
    parts = list(client.chat(model="llama3", messages=QUESTION, options=GREEDY, stream=True))
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.message.content for p in parts) == expected.message.content
    assert parts[-1].eval_count == 12


def test_generate_uses_the_chat_template_unless_raw(server, client):
    chat = client.chat(model="m", messages=QUESTION, options=GREEDY)
    generated = client.generate(model="m", prompt=QUESTION[0]["content"], options=GREEDY)
    assert generated.response == chat.message.content
    raw = client.generate(model="m", prompt="The capital of France is", raw=True, options=GREEDY)
    completion = server.openai().completions.create(model="m", prompt="The capital of France is", max_tokens=12, temperature=0)
    assert raw.response == completion.choices[0].text


def test_generate_context_continues_the_conversation(client, smollm2):
    first = client.generate(model="m", prompt="Name a colour.", options={"temperature": 0, "num_predict": 6})
    assert first.context[:len(first.context) - first.eval_count] != []
    follow = client.generate(model="m", prompt="And another one?", context=first.context, options={"temperature": 0, "num_predict": 6})
    assert follow.prompt_eval_count > len(first.context)
    assert follow.context[:len(first.context)] == first.context


def test_streamed_lines_are_ndjson(server):
    with server.client.stream("POST", "/api/generate", json={"model": "m", "prompt": "羊驼是", "options": GREEDY}) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] is True and "context" in lines[-1]
    assert all(not line["done"] for line in lines[:-1])


def test_embed_equals_model_embed(client, smollm2):
    texts = ["Hello world", "羊驼是一种南美洲的动物。"]
    reply = client.embed(model="nomic-embed-text", input=texts)
    assert np.array_equal(np.array(reply.embeddings, np.float32), smollm2.embed(texts))
    assert reply.prompt_eval_count == sum(len(smollm2.tokenize(t, parse_special=True)) for t in texts)
    legacy = client.embeddings(model="m", prompt="Hello world")
    assert np.array_equal(np.array(legacy.embedding, np.float32), smollm2.embed("Hello world"))


def test_embed_truncates_long_input_unless_asked_not_to(client):
    long_text = "word " * 3000
    assert len(client.embed(model="m", input=long_text).embeddings[0]) == 576
    with pytest.raises(ollama.ResponseError) as caught:
        client.embed(model="m", input=long_text, truncate=False)
    assert caught.value.status_code == 400 and "context" in caught.value.error


def test_listings(server, client):
    name = smollm2_path().name
    assert [m.model for m in client.list().models] == [name]
    assert [m.model for m in client.ps().models] == [name]
    shown = client.show(name)
    assert shown.details.format == "gguf" and shown.details.family == "llama"
    assert "im_start" in shown.template
    assert server.get("/api/version").json()["version"]


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather of a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"]}}}


def test_tools_are_offered_and_the_reply_parsed(client):
    """SmolLM2 answers in the generic JSON form (camelid.tool_calls): a text response comes back as plain
    content, a call as message.tool_calls; a history with a call and its result renders."""
    options = {"temperature": 0, "num_predict": 120}
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    reply = client.chat(model="m", messages=ask, tools=[WEATHER], options=options)
    assert reply.done_reason == "stop"
    assert reply.message.tool_calls or (reply.message.content and not reply.message.content.lstrip().startswith("{"))
    for call in reply.message.tool_calls or []:
        assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
               {"role": "tool", "content": '{"temperature": 21}', "tool_name": "get_weather"}]
    after = client.chat(model="m", messages=history, tools=[WEATHER], options=options)
    assert after.done and (after.message.content or after.message.tool_calls)
    streamed = list(client.chat(model="m", messages=ask, tools=[WEATHER], options=options, stream=True))
    assert "".join(p.message.content for p in streamed) == reply.message.content


def test_empty_requests_load_the_model(client):
    assert client.chat(model="m", messages=[]).done_reason == "load"
    assert client.generate(model="m", prompt="").done_reason == "load"


@pytest.mark.parametrize("call, words", [
    (lambda c: c.chat(model="m", messages=[{"role": "user", "content": "hi", "images": ["aGVsbG8="]}]), "images"),
    (lambda c: c.generate(model="m", prompt="hi", images=["aGVsbG8="]), "images"),
    (lambda c: c.chat(model="m", messages=QUESTION, think=True), "think"),
    (lambda c: c.chat(model="m", messages=QUESTION, tools=[{"type": "function", "function": {"name": "bad name"}}]), "tools"),
    (lambda c: c.generate(model="m", prompt="hi", options={"num_predict": 0}), "num_predict"),
    (lambda c: c.generate(model="m", prompt="hi", options={"temperature": "hot"}), "options"),
])
def test_unsupported_or_wrong_input_is_a_clear_400(client, call, words):
    with pytest.raises(ollama.ResponseError) as caught:
        call(client)
    assert caught.value.status_code == 400
    assert words in caught.value.error
    assert client.generate(model="m", prompt="still serving", options={"num_predict": 2}).done


def test_errors_have_ollamas_shape(server):
    r = server.post("/api/chat", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    assert isinstance(server.post("/v1/chat/completions", json={}).json()["error"], dict)  # OpenAI's shape stays
    r = server.post("/api/chat", json={"model": "m", "messages": QUESTION, "format": "yaml"})  # the client refuses it itself
    assert r.status_code == 400 and "format" in r.json()["error"]
