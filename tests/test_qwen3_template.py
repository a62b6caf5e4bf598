"""Qwen3's real chat template (llama.cpp's models/templates/Qwen-Qwen3-0.6B.jinja, read from the
oracle's source) with its `enable_thinking` switch: camelid renders what transformers' own chat-template
renderer renders, and `--chat-template-kwargs` / a request's `chat_template_kwargs` reach the prompt
of a real server (SmolLM2 speaks ChatML, so Qwen3's template suits its tokens)."""

from __future__ import annotations

import json

import pytest

from model_files import smollm2_path
from oracle.source import llama_cpp_text
from server_process import serve

QWEN3_TEMPLATE = "models/templates/Qwen-Qwen3-0.6B.jinja"
QUESTION = [{"role": "user", "content": "用一句话介绍羊驼。"}]
CONVERSATIONS = [
    QUESTION,
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4"}, {"role": "user", "content": "And 3+3?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "🦙?"}],
]


@pytest.fixture(scope="module")
def source() -> str:
    return llama_cpp_text(QWEN3_TEMPLATE)


def transformers_render(source: str, messages: list[dict], **variables) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], chat_template=source, add_generation_prompt=True, **variables)
    return rendered[0]


@pytest.mark.parametrize("variables", [{}, {"enable_thinking": False}, {"enable_thinking": True}])
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_renders_as_transformers(source, conversation, variables):
    from camelid.chat.template import ChatTemplate

    messages = CONVERSATIONS[conversation]
    ours = ChatTemplate(source, name="qwen3").render(messages, **variables)
    assert ours == transformers_render(source, messages, **variables)
    empty_think = ours.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert empty_think == (variables.get("enable_thinking") is False)


def test_template_variables_apply_to_every_render(source):
    from camelid.chat.template import ChatTemplate

    t = ChatTemplate(source, name="qwen3")
    t.variables.update(enable_thinking=False)
    assert t.render(QUESTION) == transformers_render(source, QUESTION, enable_thinking=False)
    assert t.render(QUESTION, enable_thinking=True) == transformers_render(source, QUESTION, enable_thinking=True)


@pytest.mark.parametrize("bad, message", [([1], "JSON object"), ({"messages": []}, "set by camelid"), ({"1x": 1}, "not a template variable")])
def test_bad_template_variables_are_clear_errors(bad, message):
    from camelid.chat.template import check_template_variables
    from camelid.errors import CamelidError

    with pytest.raises(CamelidError, match=message):
        check_template_variables(bad)


@pytest.fixture(scope="module")
def server(tmp_path_factory, source):
    yield from serve(tmp_path_factory, "-c", "512", "--chat-template", source,
                     "--chat-template-kwargs", json.dumps({"enable_thinking": False}))


def test_server_passes_template_variables(server, source):
    import camelid

    model = camelid.load(str(smollm2_path()), n_ctx=512, show_progress=False)
    client = server.openai()

    def prompt_tokens(**extra) -> int:
        reply = client.chat.completions.create(model=smollm2_path().name, messages=QUESTION, max_tokens=1, temperature=0, **extra)
        return reply.usage.prompt_tokens

    def expected(enable_thinking: bool) -> int:
        return len(model.tokenize_chat(transformers_render(source, QUESTION, enable_thinking=enable_thinking)))

    assert expected(False) > expected(True)
    assert prompt_tokens() == expected(False)  # the server's --chat-template-kwargs
    assert prompt_tokens(extra_body={"chat_template_kwargs": {"enable_thinking": True}}) == expected(True)
    bad = server.post("/v1/chat/completions", json={"messages": QUESTION, "chat_template_kwargs": {"add_generation_prompt": False}})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "chat_template_kwargs" and "set by camelid" in bad.json()["error"]["message"]
