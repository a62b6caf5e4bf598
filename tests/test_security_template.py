"""Chat templates from files are bounded: hostile ones are refused at load with one line naming the file,
quickly and in little memory; ordinary ones (ChatML, Llama 3, Gemma, Qwen, Mistral, with tools) render
exactly as an unbounded Jinja sandbox renders them."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from model_files import smollm2_path

from camelid.chat.template import BUILTIN_TEMPLATES, ChatTemplate, template_for
from camelid.errors import CamelidError

# ---- hostile templates ---------------------------------------------------------------------------------

FROM_THE_ISSUE = {
    "nested range loops": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "string repetition": "{{ 'x' * 300000000 }}",
}
HOSTILE = dict(FROM_THE_ISSUE, **{
    "list repetition": "{{ [1] * 1000000000 }}",
    "doubling with ~": "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "doubling with +": "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    "doubling with replace": "{% set ns = namespace(s='xx') %}{% for i in range(60) %}{% set ns.s = ns.s.replace('x', 'xx') %}{% endfor %}",
    "squaring a number": "{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}{{ ns.n }}",
    "power": "{{ 2 ** 1000000000 }}",
    "center filter": "{{ 'x'|center(1000000000) }}",
    "indent filter": "{{ ('x\n' * 100000)|indent(100000) }}",
    "wordwrap filter": "{{ ('x' * 100000)|wordwrap(1, true, 'y' * 100000) }}",
    "batch filter": "{{ [1]|batch(1000000000, 0)|list }}",
    "format filter width": "{{ '%999999999s'|format(1) }}",
    "% width": "{{ '%999999999d' % 1 }}",
    "str.format width": "{{ '{:>999999999}'.format(1) }}",
    "str.format width argument": "{{ '{:>{}}'.format(1, 999999999) }}",
    "str.ljust": "{{ 'x'.ljust(1000000000) }}",
    "Markup.center": "{{ ('x'|safe).center(1000000000) }}",
    "Markup.replace": "{% set ns = namespace(s='xx'|safe) %}{% for i in range(60) %}{% set ns.s = ns.s.replace('x', 'xx') %}{% endfor %}",
    "str.translate": "{{ ('x' * 100000).translate({120: 'y' * 100000}) }}",
    "join of shared strings": "{{ (['x' * 1000000] * 1000)|join }}",
    "str.join of shared strings": "{{ ''.join(['x' * 1000000] * 1000) }}",
    "printing shared strings": "{% set a = ['x' * 1000000] * 1000 %}{{ a }}",
    "tojson with a huge indent": "{{ (range(100000)|list)|tojson(indent=100000) }}",
    "sum of lists": "{{ (range(100000)|batch(1)|list)|sum(start=[]) }}",
    "slices kept in a list": "{% set s = 'x' * 4000000 %}{% set ns = namespace(l=[]) %}"
                             "{% for i in range(10000) %}{% set ns.l = ns.l + [s[i:]] %}{% endfor %}",
    "output in a set block": "{% set big = 'x' * 1000000 %}{% set out %}{% for i in range(100000) %}{{ big }}{% endfor %}{% endset %}",
    "literal output": "{% for a in range(100000) %}{% for b in range(1000) %}" + "y" * 1000 + "{% endfor %}{% endfor %}",
    "exponential macro": "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    "recursive loop": "{% for x in ['a'] * 100000 recursive %}{% if x == 'a' %}{{ loop(range(100000)) }}{% endif %}{% endfor %}",
    "loops over a string": "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "bomb after the third message": "{% if messages|length > 3 %}{{ 'x' * 1000000000 }}{% endif %}",
    "int.to_bytes": "{{ (1).to_bytes(1000000000, 'big') }}",
    "lipsum": "{{ lipsum(1000000) }}",
    "urlize": "{{ ('a.co ' * 1000000)|urlize }}",
})

_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    open("/proc/self/clear_refs", "w").write("5")  # a forked child starts with its parent's peak resident memory
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a regression fails here, not on the machine
    from camelid.chat.template import template_for
    from camelid.errors import CamelidError
    results = {}
    for name, source in json.loads(sys.stdin.read()).items():
        start = time.monotonic()
        try:
            template = template_for({"tokenizer.chat_template": source, "general.name": "Evil 7B"}, ["<s>"], origin="evil.gguf")
            template.render([{"role": "user", "content": "hi"}])
            outcome = None
        except CamelidError as e:
            outcome = str(e)
        except BaseException as e:
            outcome = "escaped: " + type(e).__name__ + ": " + str(e)[:200]
        results[name] = {"seconds": time.monotonic() - start, "error": outcome}
    results["peak_rss_mb"] = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def refusals() -> dict:
    """Each hostile template loaded (and rendered) in one child process under a 3 GB address-space limit."""
    out = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(HOSTILE), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("name", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_template_is_refused_quickly(refusals, name):
    result = refusals[name]
    error = result["error"]
    assert error is not None, f"{name} rendered"
    assert not error.startswith("escaped"), error
    assert "\n" not in error
    assert result["seconds"] < 10  # the budget is 1 s; this margin only catches a template that was not bounded


@pytest.mark.parametrize("name", list(FROM_THE_ISSUE), ids=list(FROM_THE_ISSUE))
def test_issue_templates_are_refused_at_load_naming_the_file(name):
    with pytest.raises(CamelidError, match=r"^the chat template in model\.gguf needs more than .* to render") as e:
        template_for({"tokenizer.chat_template": FROM_THE_ISSUE[name]}, ["<s>"], origin="model.gguf")
    assert "--chat-template" in str(e.value)


def test_hostile_templates_stay_small_in_memory(refusals):
    assert refusals["peak_rss_mb"] < 1000


def test_every_render_is_bounded_not_only_the_first():
    source = "{% if messages|length > 6 %}{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}{% endif %}ok"
    template = template_for({"tokenizer.chat_template": source, "general.name": "Sleeper"}, ["<s>"])
    assert template.render([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(CamelidError, match="Sleeper.*steps"):
        template.render([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}] * 4)


def test_load_ignores_a_template_refusing_the_sample_conversation():
    source = "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}ok"
    template = template_for({"tokenizer.chat_template": source}, ["<s>"])
    assert template.render([{"role": "user", "content": "x"}]) == "ok"


# ---- ordinary templates render as before ----------------------------------------------------------------

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "城市, e.g. 北京"}}, "required": ["city"]},
}}]

LLAMA3 = """{{- bos_token }}
{%- if not tools_in_user_message is defined %}{%- set tools_in_user_message = true %}{%- endif %}
{%- if not date_string is defined %}{%- set date_string = strftime_now("%d %b %Y") %}{%- endif %}
{%- if not tools is defined %}{%- set tools = none %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}{{- "Environment: ipython\\n" }}{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- if tools_in_user_message and not tools is none %}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

GEMMA = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}{%- set role = "model" -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{'<start_of_turn>model\\n'}}{%- endif -%}
"""

QWEN = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}{%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

MISTRAL = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}{%- set tools = none %}{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}
{%- for message in loop_messages | rejectattr("role", "equalto", "tool") | selectattr("tool_calls", "undefined") %}
    {%- if (message["role"] == "user") != (loop.index0 % 2 == 0) %}
        {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}{{- '"' + key + '": "' + val + '"' }}{%- else %}{{- '"' + key + '": ' + val|tojson }}{%- endif %}
                    {%- if not loop.last %}{{- ", " }}{%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}{{- ", " }}{%- else %}{{- "]" }}{%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
        {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- endif %}
{%- endfor %}
"""

CONVERSATIONS = [
    [{"role": "user", "content": "What's the weather in 北京?"}],
    [{"role": "system", "content": "  Be brief.  "}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! 😀"},
     {"role": "user", "content": "Weather in Paris, \"quoted\" <b>tags</b>?"}],
]


def _with_tools(source: str) -> str:
    return "{%- set tools = " + json.dumps(TOOLS, ensure_ascii=False) + " %}" + source


@functools.lru_cache(maxsize=1)
def _templates() -> dict[str, str]:
    from camelid.formats.gguf import read_metadata

    found = {name: source for name, (source, *_rest) in BUILTIN_TEMPLATES.items()}
    found.update(llama3=LLAMA3, gemma=GEMMA, qwen=QWEN, mistral=MISTRAL, llama3_tools=_with_tools(LLAMA3),
                 qwen_tools=_with_tools(QWEN), mistral_tools=_with_tools(MISTRAL))
    found["smollm2"] = read_metadata(smollm2_path())["tokenizer.chat_template"]
    return found


def _unbounded_render(source: str, messages: list, add_generation_prompt: bool) -> str:
    """The same template in a plain Jinja sandbox with transformers' settings: the reference text."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda v, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        v, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = lambda message: (_ for _ in ()).throw(ValueError(message))
    env.globals["strftime_now"] = lambda fmt: __import__("datetime").datetime.now().strftime(fmt)
    return env.from_string(source).render(messages=messages, add_generation_prompt=add_generation_prompt, bos_token="<s>",
                                          eos_token="</s>", tools=None, documents=None)


@pytest.mark.parametrize("name", ["chatml", "llama2", "alpaca", "smollm2", "llama3", "llama3_tools", "gemma", "qwen",
                                  "qwen_tools", "mistral", "mistral_tools"])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_ordinary_templates_render_as_an_unbounded_sandbox_does(name, generation_prompt):
    source = _templates()[name]
    template = ChatTemplate(source, "<s>", "</s>", name=name)
    for messages in CONVERSATIONS:
        want = _unbounded_render(source, messages, generation_prompt)
        assert template.render(messages, add_generation_prompt=generation_prompt) == want
    if name.endswith("_tools"):
        assert "get_weather" in want and "城市" in want


def test_long_conversation_fits_the_budget():
    # 2000 messages of 200 characters through the tool-calling Llama 3 template: well inside the step budget.
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "词" * 190} for i in range(2000)]
    template = ChatTemplate(_with_tools(LLAMA3), "<s>", "</s>", name="llama3")
    assert template.render(messages) == _unbounded_render(_with_tools(LLAMA3), messages, True)
