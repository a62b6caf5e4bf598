"""Tool calls: through a real `camelid serve` on SmolLM2 (whose template has no tool syntax: the generic
JSON form) with the official openai client, and the native syntaxes of real templates from llama.cpp."""

from __future__ import annotations

import json

import pytest

from camelid.chat.template import ChatTemplate
from camelid.tool_calls import native_lark, parse_reply, tool_format
from dependencies import require_module
from model_files import smollm2_path
from server_process import serve

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}}, "required": ["zone"],
                   "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]
QUESTIONS = ["What is the weather in Paris?", "北京现在天气怎么样？", "What time is it in Tokyo?"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory, "-m", str(smollm2_path()), "-c", "4096", "--parallel", "2")


def check_call(call, tools=TOOLS):
    jsonschema = require_module("jsonschema")
    schema = next(t["function"]["parameters"] for t in tools if t["function"]["name"] == call.function.name)
    jsonschema.validate(json.loads(call.function.arguments), schema)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_calls_parse_and_match_the_schema_streamed_or_not(server, choice):
    client = server.openai()
    for question in QUESTIONS:
        ask = dict(model="m", messages=[{"role": "user", "content": question}], tools=TOOLS, tool_choice=choice,
                   parallel_tool_calls=False, max_tokens=120, temperature=0)
        reply = client.chat.completions.create(**ask).choices[0]
        assert reply.finish_reason == "tool_calls" and reply.message.tool_calls, reply
        for call in reply.message.tool_calls:
            check_call(call)
            if isinstance(choice, dict):
                assert call.function.name == "get_time"
        chunks = [c.choices[0] for c in client.chat.completions.create(**ask, stream=True) if c.choices]
        streamed = [d for c in chunks for d in (c.delta.tool_calls or [])]
        assert [(d.function.name, d.function.arguments) for d in streamed] == \
               [(c.function.name, c.function.arguments) for c in reply.message.tool_calls]
        assert [d.index for d in streamed] == list(range(len(streamed))) and chunks[-1].finish_reason == "tool_calls"


def test_parallel_calls_are_bounded_and_each_matches(server):
    from camelid.tool_calls import MAX_PARALLEL_CALLS

    reply = server.openai().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Weather in Paris, Oslo and Rome?"}], tools=TOOLS, tool_choice="required",
        max_tokens=250, temperature=0).choices[0]
    assert reply.finish_reason == "tool_calls" and 1 <= len(reply.message.tool_calls) <= MAX_PARALLEL_CALLS
    for call in reply.message.tool_calls:
        check_call(call)
    assert len({c.id for c in reply.message.tool_calls}) == len(reply.message.tool_calls)


def get_weather(city: str, unit: str) -> str:
    return json.dumps({"city": city, "temperature": 21 if unit == "C" else 70, "unit": unit, "sky": "clear"})


def test_two_step_agent_loop_completes(server):
    client = server.openai()
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER], tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=120, temperature=0).choices[0].message
    call = first.tool_calls[0]
    check_call(call, [WEATHER])
    result = get_weather(**json.loads(call.function.arguments))
    messages += [first.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": result}]
    answer = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER], tool_choice="none",
                                            max_tokens=60, temperature=0).choices[0]
    assert answer.finish_reason in ("stop", "length") and answer.message.content and not answer.message.tool_calls
    auto = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER], max_tokens=120, temperature=0).choices[0]
    assert auto.message.content or auto.message.tool_calls  # auto: a text response or another call, parsed either way


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
])
def test_bad_tool_requests_are_a_clear_400(server, body, param):
    r = server.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


NATIVE = [  # (template in llama.cpp's models/templates, format, a reply in that format)
    ("Qwen-Qwen2.5-7B-Instruct.jinja", "hermes",
     'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>'),
    ("meta-llama-Llama-3.1-8B-Instruct.jinja", "llama3", '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}'),
    ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "mistral",
     '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}]'),
]


@pytest.mark.parametrize("template_file, fmt, reply", NATIVE)
def test_native_formats_are_recognised_rendered_and_parsed(template_file, fmt, reply):
    from oracle.source import llama_cpp_text

    source = llama_cpp_text(f"models/templates/{template_file}")
    assert tool_format(source) == fmt
    rendered = ChatTemplate(source, bos_token="<s>", eos_token="</s>").render(
        [{"role": "user", "content": "What is the weather in Paris?"}], tools=[WEATHER])
    assert "get_weather" in rendered and "The current weather of a city" in rendered
    content, calls = parse_reply(reply, fmt)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris", "unit": "C"})]
    assert content == ("Let me check." if fmt == "hermes" else None)
    assert parse_reply("Just text.", fmt) == ("Just text.", [])


@pytest.mark.parametrize("fmt", ["hermes", "llama3", "mistral"])
def test_forced_native_grammars_compile(fmt):
    import camelid
    from camelid.constrained import GrammarMask, lark_grammar

    model = camelid.load(smollm2_path(), show_progress=False)
    mask = GrammarMask(lark_grammar(native_lark(fmt, TOOLS, True, lambda text: None)), model.tokenizer, model.network.n_vocab)
    allowed = mask([])
    first = {model.tokenizer.decode([t]) for t in allowed.nonzero()[0][:50]}
    assert allowed.any() and all({"hermes": "<", "llama3": "{", "mistral": "["}[fmt].startswith(p) or p.startswith(
        {"hermes": "<", "llama3": "{", "mistral": "["}[fmt]) for p in first if p)
