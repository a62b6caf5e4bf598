"""Constrained output through a real `camelid serve` on SmolLM2 (135M): JSON schemas validated by
`jsonschema`, any-JSON-object mode, llama.cpp's own GBNF grammars, Ollama's format, and clear 400s."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from dependencies import require_module
from model_files import smollm2_path
from server_process import serve

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                     "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["city", "zip"], "additionalProperties": False},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "address", "tags", "active"],
    "additionalProperties": False,
}
INVENTORY = {
    "type": "object",
    "properties": {"items": {"type": "array", "maxItems": 4, "items": {
        "type": "object", "properties": {"sku": {"type": "string", "maxLength": 10}, "count": {"type": "integer"},
                                         "unit": {"enum": ["kg", "piece", "litre"]}},
        "required": ["sku", "count", "unit"], "additionalProperties": False}}},
    "required": ["items"], "additionalProperties": False,
}
TOPICS = ["a librarian", "a pilot", "a farmer in Yunnan", "a child", "a chef", "a robot", "a cat owner", "a student",
          "a doctor", "a painter"]
PROMPTS = ([(f"Describe {t} as JSON.", PERSON) for t in TOPICS]
           + [(f"List what {t} keeps in stock, as JSON.", INVENTORY) for t in TOPICS])  # 20 prompts


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory, "-m", str(smollm2_path()), "-c", "4096", "--parallel", "4")


def test_twenty_prompts_with_json_schemas_all_validate(server):
    jsonschema = require_module("jsonschema")
    client = server.openai()

    def ask(prompt_schema):
        prompt, schema = prompt_schema
        fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
        return client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}], max_tokens=300,
                                              temperature=0.8, seed=7, response_format=fmt).choices[0]

    with ThreadPoolExecutor(4) as pool:
        choices = list(pool.map(ask, PROMPTS))
    for (prompt, schema), choice in zip(PROMPTS, choices):
        assert choice.finish_reason == "stop", (prompt, choice.message.content)
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_json_object_streamed_and_completions_json_schema(server):
    client = server.openai()
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Return a JSON object with keys city and country for Paris."}],
                                            max_tokens=200, temperature=0, response_format={"type": "json_object"}, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert isinstance(json.loads(text), dict)
    completion = client.completions.create(model="m", prompt="A person:", max_tokens=300, temperature=0,
                                           extra_body={"json_schema": PERSON})
    require_module("jsonschema").validate(json.loads(completion.choices[0].text), PERSON)


def gbnf(name: str) -> str:
    from oracle.source import llama_cpp_text

    return llama_cpp_text(f"grammars/{name}.gbnf")


def test_llama_cpp_grammars_constrain_the_output(server):
    client = server.openai()

    def complete(prompt, grammar, n):
        return client.completions.create(model="m", prompt=prompt, max_tokens=n, temperature=0, extra_body={"grammar": grammar}).choices[0]

    listed = complete("Three fruits:\n", gbnf("list"), 48)
    lines = listed.text.split("\n")
    assert all(line.startswith("- ") and len(line) > 2 for line in lines[:-1]) and lines[0]
    assert listed.finish_reason == "stop" or lines[-1] == "" or lines[-1].startswith("- ")
    sums = complete("Sums:\n1+1=2\n2+2=4\n", gbnf("arithmetic"), 40).text
    term = r"(?:[a-z][a-z0-9_]*|[0-9]+|\([^\n]*\))[ \t\n]*"  # the grammar's ws includes new lines
    whole_lines = rf"(?:{term}(?:[-+*/]{term})*=[ \t\n]*{term}\n)+"
    assert re.match(whole_lines, sums), repr(sums)
    assert re.fullmatch(rf"{whole_lines}(?:{term}(?:[-+*/]{term})*[-+*/]?(?:=[ \t]*[a-z0-9_(]*)?)?", sums), repr(sums)
    obj = complete("A JSON object describing a dog: ", gbnf("json"), 200)
    assert obj.finish_reason == "stop", obj.text
    assert isinstance(json.loads(obj.text), dict)


def test_ollama_format(server):
    ollama = require_module("ollama")
    client = ollama.Client(host=server.url, timeout=120)
    reply = client.chat(model="m", messages=[{"role": "user", "content": "Describe a pilot as JSON."}], format=PERSON,
                        options={"temperature": 0, "num_predict": 300})
    require_module("jsonschema").validate(json.loads(reply.message.content), PERSON)
    anything = client.generate(model="m", prompt="Return a JSON object with keys city and country for Paris.", format="json",
                               options={"temperature": 0, "num_predict": 200})
    assert isinstance(json.loads(anything.response), dict)


@pytest.mark.parametrize("body, param, words", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}, "response_format", "schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema"),
    ({"response_format": {"type": "yaml"}}, "response_format", "yaml"),
    ({"grammar": "root ::= ("}, "grammar", "grammar"),
    ({"grammar": "   "}, "grammar", "empty"),
    ({"grammar": 'root ::= "a"', "json_schema": {"type": "object"}}, "grammar", "one of"),
])
def test_bad_constraints_are_a_clear_400(server, body, param, words):
    r = server.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert server.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).status_code == 200
