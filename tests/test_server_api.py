"""`camelid serve` driven by the official `openai` client and httpx, against a real server process.

Greedy answers are checked against independent routes to the same result: `camelid run` in a
subprocess, the Python API's ChatSession, llama.cpp (llama-cpp-python) on the same GGUF, and
llama.cpp's tokenizer for /tokenize.
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

import oracle
from model_files import smollm2_path
from oracle.mode import assert_greedy_matches, camelid_greedy
from server_process import ROOT, serve

PROMPT = "The history of the Roman Empire began when"
CHAT_QUESTION = "What is the capital of France? Answer in one sentence."
N = 16


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory, "--parallel", "2", "-c", "2048")


@pytest.fixture(scope="module")
def client(server):
    return server.openai()


@pytest.fixture(scope="module")
def model_id():
    return smollm2_path().name


@pytest.fixture(scope="module")
def api_model():
    import camelid

    return camelid.load(smollm2_path(), n_ctx=1024, show_progress=False)


def api_complete(model, prompt: str, **kwargs) -> str:
    """The Python API's completion in a fresh KV cache (no prefix computed in an earlier call)."""
    tokens = model.tokenize(prompt, add_special=True, parse_special=True)
    return "".join(chunk.text for chunk in model.stream_tokens(tokens, cache=model.new_cache(), **kwargs))


def camelid_run(prompt: str, n: int) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "camelid", "run", "-p", prompt, "-n", str(n), "--temp", "0", "--repeat-penalty", "1",
         "--no-display-prompt"], capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    return result.stdout[:-1]


def test_chat_greedy_equals_python_api(server, client, model_id, api_model):
    reply = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": CHAT_QUESTION}], max_tokens=24, temperature=0,
    )
    expected = api_model.chat(temperature=0, max_tokens=24).reply(CHAT_QUESTION)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.strip() == expected
    assert choice.finish_reason in ("stop", "length")
    assert reply.object == "chat.completion" and reply.model == model_id
    prompt_text = api_model.template.render([{"role": "user", "content": CHAT_QUESTION}])
    assert reply.usage.prompt_tokens == len(api_model.tokenize(prompt_text, add_special=True, parse_special=True))
    assert 1 <= reply.usage.completion_tokens <= 24
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_stream_with_system_prompt_equals_python_api(server, client, model_id, api_model):
    system = "You are a pirate. Answer briefly."
    stream = client.chat.completions.create(
        model=model_id, messages=[{"role": "system", "content": system}, {"role": "user", "content": "Who are you?"}],
        max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    expected = api_model.chat(system=system, temperature=0, max_tokens=20).reply("Who are you?")
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content.strip() == expected
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens >= 1
    assert all(c.usage is None for c in chunks[:-1])
    timings = last.model_extra["timings"]
    assert timings["predicted_n"] == last.usage.completion_tokens
    assert timings["prompt_n"] + timings["cache_n"] == last.usage.prompt_tokens
    assert timings["predicted_per_second"] > 0


def test_completion_greedy_equals_camelid_run(server, client, model_id):
    expected = camelid_run(PROMPT, N)
    reply = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=N, temperature=0)
    assert reply.choices[0].text == expected
    assert reply.object == "text_completion"
    if reply.choices[0].finish_reason == "length":
        assert reply.usage.completion_tokens == N
    streamed = list(client.completions.create(model=model_id, prompt=PROMPT, max_tokens=N, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == reply.choices[0].finish_reason
    assert "timings" in streamed[-1].model_extra


def test_completion_greedy_equals_llama_cpp(server, client, model_id, api_model):
    # the tokens camelid chooses are llama.cpp's greedy ones (within the oracle's mode), and the
    # server's text is those tokens as llama.cpp detokenizes them
    llm = oracle.Llama(smollm2_path())
    prompt = "Once upon a time, in a small village by the sea,"
    tokens = llm.tokenize(prompt)
    ref, ref_logits = llm.greedy(tokens, N, stop_at_eog=True)
    generated = camelid_greedy(api_model, tokens, N, stop_at_eog=True)
    assert_greedy_matches(generated, ref, ref_logits)
    expected = llm.detokenize(generated).decode("utf-8")
    reply = client.completions.create(model=model_id, prompt=prompt, max_tokens=N, temperature=0)
    assert reply.choices[0].text == expected
    assert reply.usage.prompt_tokens == len(tokens)


def test_stop_strings(server, client, model_id):
    full = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=N, temperature=0).choices[0].text
    words = full.split()
    assert len(words) >= 3, full
    stop = " " + words[2]
    cut = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=N, temperature=0, stop=[stop, "never-there"])
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    single = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=N, temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in single) == full[: full.index(stop)]


def test_sampling_parameters_reach_the_sampler(server, client, model_id, api_model):
    """Penalties and seeds are applied as camelid's own sampler applies them (Python API as oracle)."""
    kwargs = dict(max_tokens=N, temperature=0, presence_penalty=0.5, frequency_penalty=1.5)
    reply = client.completions.create(model=model_id, prompt=PROMPT, **kwargs)
    expected = api_complete(api_model, PROMPT, max_tokens=N, temperature=0, presence_penalty=0.5, frequency_penalty=1.5)
    assert reply.choices[0].text == expected
    seeded = dict(model=model_id, prompt=PROMPT, max_tokens=N, temperature=1.0, top_p=0.9, seed=1234)
    first = client.completions.create(**seeded).choices[0].text
    assert client.completions.create(**seeded).choices[0].text == first
    expected = api_complete(api_model, PROMPT, max_tokens=N, temperature=1.0, top_p=0.9, seed=1234)
    assert first == expected
    extra = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=N, temperature=0,
                                      extra_body={"repeat_penalty": 1.3, "top_k": 1})
    assert extra.choices[0].text == api_complete(api_model, PROMPT, max_tokens=N, temperature=0, repeat_penalty=1.3)


def test_max_completion_tokens_and_length(server, client, model_id):
    reply = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Count from one to fifty."}],
                                           max_completion_tokens=3, temperature=0)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 3


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def test_chat_logprobs(server, client, model_id, api_model):
    messages = [{"role": "user", "content": "Name a colour."}]
    reply = client.chat.completions.create(model=model_id, messages=messages, max_tokens=6, temperature=0,
                                           logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert content and "".join(t.token for t in content) == reply.choices[0].message.content
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token  # greedy takes the most likely token
        assert entry.logprob <= 0 and bytes(entry.bytes) == entry.token.encode()
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
    text = api_model.template.render(messages)
    tokens = api_model.tokenize(text, add_special=True, parse_special=True)
    expected = log_softmax(api_model.forward(tokens, api_model.new_cache(), last_only=True)[-1])
    top = np.argsort(-expected)[:3]
    assert [t.token for t in content[0].top_logprobs] == [api_model.tokenizer.token_to_bytes(int(i)).decode() for i in top]
    assert np.allclose([t.logprob for t in content[0].top_logprobs], expected[top], atol=1e-3)


def test_completion_logprobs_stream_and_not(server, client, model_id):
    reply = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2)
    lp = reply.choices[0].logprobs
    assert "".join(lp.tokens) == reply.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert all(len(top) == 2 and max(top.values()) == top[tok] for top, tok in zip(lp.top_logprobs, lp.tokens))
    streamed = list(client.completions.create(model=model_id, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2, stream=True))
    tokens = [t for c in streamed if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == lp.tokens


def test_message_content_parts_and_developer_role(server, client, model_id):
    plain = client.chat.completions.create(model=model_id, max_tokens=4, temperature=0, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}])
    parts = client.chat.completions.create(model=model_id, max_tokens=4, temperature=0, messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Say "}, {"type": "text", "text": "hello."}]}])
    assert parts.choices[0].message.content == plain.choices[0].message.content
    assert parts.usage.prompt_tokens == plain.usage.prompt_tokens


def test_second_turn_processes_only_new_tokens(server, client, model_id):
    first = [{"role": "user", "content": "Tell me one fact about the Moon."}]
    turn1 = client.chat.completions.create(model=model_id, messages=first, max_tokens=12, temperature=0)
    before = server.metrics()
    second = first + [{"role": "assistant", "content": turn1.choices[0].message.content},
                      {"role": "user", "content": "And one about Mars?"}]
    turn2 = client.chat.completions.create(model=model_id, messages=second, max_tokens=4, temperature=0)
    after = server.metrics()
    cached = turn2.usage.prompt_tokens_details.cached_tokens
    assert cached >= turn1.usage.prompt_tokens
    processed = after["camelid_prompt_tokens_processed_total"] - before["camelid_prompt_tokens_processed_total"]
    assert processed == turn2.usage.prompt_tokens - cached
    assert after["camelid_prompt_tokens_cached_total"] - before["camelid_prompt_tokens_cached_total"] == cached


def test_models_health_and_openapi(server, client, model_id):
    assert server.get("/health").json() == {"status": "ok"}
    models = client.models.list().data
    assert [m.id for m in models] == [model_id]
    assert client.models.retrieve(model_id).id == model_id
    schema = server.get("/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/tokenize", "/detokenize", "/metrics", "/health"):
        assert path in schema["paths"], path
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/ChatCompletionRequest")
    assert "messages" in schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]


def test_tokenize_and_detokenize_match_llama_cpp(server):
    vocab = oracle.Llama(smollm2_path(), vocab_only=True)
    text = "Hello, world! 你好，世界 <|im_start|>"
    tokens = server.post("/tokenize", json={"content": text}).json()["tokens"]
    assert tokens == vocab.tokenize(text, add_bos=False)
    with_bos = server.post("/tokenize", json={"content": text, "add_special": True}).json()["tokens"]
    assert with_bos == vocab.tokenize(text, add_bos=True)
    pieces = server.post("/tokenize", json={"content": "Hello world", "with_pieces": True}).json()["tokens"]
    assert "".join(p["piece"] for p in pieces) == "Hello world"
    plain = [t for t in tokens if t != vocab.tokenize("<|im_start|>", add_bos=False)[0]]
    assert server.post("/detokenize", json={"tokens": plain}).json() == {"content": "Hello, world! 你好，世界 "}


def test_metrics_text(server, client, model_id):
    before = server.metrics()
    reply = client.completions.create(model=model_id, prompt="One, two,", max_tokens=3, temperature=0)
    after = server.metrics()
    assert after['camelid_requests_total{endpoint="/v1/completions"}'] == before.get('camelid_requests_total{endpoint="/v1/completions"}', 0) + 1
    assert after["camelid_generated_tokens_total"] - before["camelid_generated_tokens_total"] == reply.usage.completion_tokens
    assert after["camelid_prompt_tokens_total"] - before["camelid_prompt_tokens_total"] == reply.usage.prompt_tokens
    assert after["camelid_generated_tokens_per_second"] > 0
    assert after["camelid_slots_busy"] == 0 and after["camelid_slots_total"] == 2 and after["camelid_requests_waiting"] == 0
    text = server.get("/metrics").text
    assert "# TYPE camelid_generated_tokens_total counter" in text
    assert server.get("/metrics").headers["content-type"].startswith("text/plain")


def test_readme_client_example_runs(server):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```py\n(.*?)```", readme, flags=re.S) if "OpenAI(" in b]
    assert "http://127.0.0.1:8080/v1" in block
    block = block.replace("http://127.0.0.1:8080", server.url)
    result = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) >= 2
