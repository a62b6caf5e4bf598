"""Tests for camelid.chat.template: a real GGUF template against hand-written expected text, the
built-in fallbacks, template selection, the sandbox, and message checking."""

from datetime import datetime

import pytest
from model_files import smollm2_path

from camelid.chat.template import ALPACA_SYSTEM, BUILTIN_TEMPLATES, ChatTemplate, builtin_template, template_for
from camelid.errors import CamelidError

SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"

CONVERSATION = [
    {"role": "system", "content": "Be nice."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
]


@pytest.fixture(scope="module")
def smollm2_metadata():
    from camelid.formats.gguf import read_metadata

    return read_metadata(smollm2_path())


@pytest.fixture(scope="module")
def smollm2(smollm2_metadata):
    return template_for(smollm2_metadata)


# ---- SmolLM2's own template, expected text written out from its definition ---------------------------


def test_smollm2_user_only_gets_default_system_prompt(smollm2):
    text = smollm2.render([{"role": "user", "content": "What is the capital of France?"}])
    assert text == (
        SMOL_SYSTEM
        + "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        + "<|im_start|>assistant\n"
    )


def test_smollm2_multi_turn_with_system(smollm2):
    messages = [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Arr, hello!"},
        {"role": "user", "content": "Where is the treasure?"},
    ]
    assert smollm2.render(messages, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a pirate.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nArr, hello!<|im_end|>\n"
        "<|im_start|>user\nWhere is the treasure?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_smollm2_chinese_content(smollm2):
    messages = [{"role": "user", "content": "你好，请用一句话介绍北京。"}, {"role": "assistant", "content": "北京是中国的首都。"}]
    assert smollm2.render(messages, add_generation_prompt=False) == (
        SMOL_SYSTEM
        + "<|im_start|>user\n你好，请用一句话介绍北京。<|im_end|>\n"
        + "<|im_start|>assistant\n北京是中国的首都。<|im_end|>\n"
    )


def test_smollm2_tokens_and_stop_strings(smollm2, smollm2_metadata):
    assert (smollm2.bos_token, smollm2.eos_token) == ("<|im_start|>", "<|im_end|>")  # ids 1 and 2 of its vocabulary
    assert smollm2.name == smollm2_metadata["general.name"]
    assert smollm2.stop_strings == ["<|im_end|>"]


# ---- built-in fallbacks ----------------------------------------------------------------------------------


def test_chatml_fallback():
    t = builtin_template("chatml")
    assert t.render(CONVERSATION) == (
        "<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert t.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False) == "<|im_start|>user\nHi<|im_end|>\n"
    assert t.stop_strings == ["<|im_end|>"]


def test_llama2_fallback_follows_meta_format():
    t = builtin_template("llama2")
    assert t.render(CONVERSATION) == (
        "<s>[INST] <<SYS>>\nBe nice.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] 2+2? [/INST]"
    )
    assert t.render([{"role": "user", "content": "  Hi  "}]) == "<s>[INST] Hi [/INST]"
    assert t.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], add_generation_prompt=False) == (
        "<s>[INST] Hi [/INST] Yo </s>"
    )
    assert t.stop_strings == ["</s>", "[INST]"]


@pytest.mark.parametrize("name", ["llama2", "alpaca"])
@pytest.mark.parametrize("messages", [
    [{"role": "assistant", "content": "first"}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    [{"role": "user", "content": "a"}, {"role": "system", "content": "late system"}],
])
def test_alternating_formats_reject_bad_order(name, messages):
    with pytest.raises(CamelidError, match="alternating"):
        builtin_template(name).render(messages)


def test_alpaca_fallback_follows_chinese_llama_alpaca_and_llama_cpp():
    t = builtin_template("alpaca")
    assert t.render([{"role": "user", "content": "为什么要减少污染，保护环境？"}]) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n\n为什么要减少污染，保护环境？\n\n### Response:\n\n"
    )
    assert t.render(CONVERSATION) == (
        "Be nice.\n\n### Instruction:\n\nHi\n\n### Response:\n\nHello!\n\n### Instruction:\n\n2+2?\n\n### Response:\n\n"
    )
    assert t.render([{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}]) == (
        "### Instruction:\n\nHi\n\n### Response:\n\n"
    )
    assert t.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False) == (
        ALPACA_SYSTEM + "\n\n### Instruction:\n\nHi\n\n"
    )
    assert t.stop_strings == ["### Instruction:"]


def test_builtin_takes_model_bos_eos():
    t = builtin_template("llama2", bos_token="<BOS>", eos_token="<EOS>")
    assert t.render([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == "<BOS>[INST] a [/INST] b <EOS>"


# ---- choosing the template -----------------------------------------------------------------------------


LLAMA_VOCAB = ["<unk>", "<s>", "</s>", "▁the", "▁a"]
META = {"tokenizer.ggml.tokens": LLAMA_VOCAB, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}
LLAMA_SHAPE = {"general.architecture": "llama", "tokenizer.ggml.model": "llama"}


def test_file_template_used_with_bos_eos_from_vocabulary():
    meta = dict(META, **{"tokenizer.chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"})
    t = template_for(meta)
    assert t.render([{"role": "user", "content": "x"}]) == "<s>x</s>"
    assert template_for(meta, tokens=["a", "B", "E"]).render([{"role": "user", "content": "x"}]) == "BxE"


@pytest.mark.parametrize("override", ["chatml", "llama2", "alpaca", "ChatML"])
def test_override_by_builtin_name_beats_the_file(override):
    meta = dict(META, **{"tokenizer.chat_template": "{{ 'file' }}"})
    t = template_for(meta, override=override)
    assert t.name == override.lower()
    assert "file" not in t.render([{"role": "user", "content": "x"}])


def test_override_by_jinja_source():
    t = template_for(META, override="{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}")
    assert t.render([{"role": "user", "content": "x"}]) == "[user]x"


def test_unknown_override_lists_the_names():
    with pytest.raises(CamelidError) as e:
        template_for(META, override="vicuna")
    assert all(name in str(e.value) for name in BUILTIN_TEMPLATES)


@pytest.mark.parametrize("meta, expected", [
    (dict(META, **{"tokenizer.ggml.tokens": LLAMA_VOCAB + ["<|im_start|>", "<|im_end|>"]}), "chatml"),
    (dict(META, **{"tokenizer.ggml.tokens": LLAMA_VOCAB + ["[INST]", "[/INST]"]}), "llama2"),
    (dict(META, **{"general.name": "LLaMA v2"}), "llama2"),  # what llama.cpp's converter wrote for Meta's Llama 2
    (dict(META, **{"general.name": "Llama-2-7b-chat-hf"}), "llama2"),
    (dict(META, **{"general.name": "Llama 2 7B Chat"}), "llama2"),
    (dict(META, **{"general.name": "chinese-alpaca-7b"}), "alpaca"),
    (dict(META, **LLAMA_SHAPE, **{"llama.context_length": 4096}), "llama2"),  # e.g. Chinese-Alpaca-2
    (dict(META, **LLAMA_SHAPE, **{"llama.context_length": 2048}), "alpaca"),  # LLaMA 1, Chinese-Alpaca v1
    (dict(META, **{"general.architecture": "llama", "tokenizer.ggml.model": "gpt2", "llama.context_length": 4096}), "alpaca"),
    (META, "alpaca"),
    ({}, "alpaca"),
])
def test_fallback_guessed_from_vocabulary_and_name(meta, expected):
    assert template_for(meta).name == expected


def test_fallback_llama2_uses_file_bos():
    t = template_for(dict(META, **{"general.name": "Llama-2-13b-chat"}))
    assert t.render([{"role": "user", "content": "hi"}]) == "<s>[INST] hi [/INST]"


def test_broken_file_template_names_the_template():
    meta = dict(META, **{"tokenizer.chat_template": "{% for m in messages %}", "general.name": "Broken 7B"})
    with pytest.raises(CamelidError, match="Broken 7B.*syntax error"):
        template_for(meta)


# ---- the environment, like transformers' apply_chat_template ---------------------------------------


def test_trim_and_lstrip_blocks():
    source = "{% for m in messages %}\n    {% if m.role == 'user' %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}"
    t = ChatTemplate(source)
    assert t.render([{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}, {"role": "user", "content": "b"}]) == "a\nb\n"


def test_globals_and_filters():
    source = (
        "{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ tools is none }}|"
        "{{ messages[0].content | tojson }}|{{ {'k': [1, 2]} | tojson }}|{{ strftime_now('%Y') }}|"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}|"
        "{% generation %}gen{% endgeneration %}"
    )
    t = ChatTemplate(source, bos_token="<s>", eos_token="</s>")
    messages = [{"role": "user", "content": "中文 <b>\"q\""}, {"role": "assistant", "content": "x"}]
    year = datetime.now().strftime("%Y")
    assert t.render(messages, add_generation_prompt=False) == (
        f'<s>|</s>|False|True|"中文 <b>\\"q\\""|{{"k": [1, 2]}}|{year}|user|gen'
    )


def test_raise_exception_becomes_camelid_error():
    t = ChatTemplate("{% if messages[0].role != 'system' %}{{ raise_exception('need a system message') }}{% endif %}", name="strict")
    with pytest.raises(CamelidError, match="strict.*need a system message"):
        t.render([{"role": "user", "content": "x"}])
    assert t.render([{"role": "system", "content": "s"}]) == ""


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('echo pwned') }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{% set _ = messages.append({'role': 'user', 'content': 'x'}) %}",
    "{{ messages[0].update({'role': 'system'}) }}",
])
def test_sandbox_blocks_escapes(source):
    with pytest.raises(CamelidError, match="unsafe"):
        ChatTemplate(source, name="evil").render([{"role": "user", "content": "x"}])


def test_sandbox_hides_dunder_attributes():
    assert ChatTemplate("[{{ ''.__class__ }}]").render([]) == "[]"


def test_render_errors_become_camelid_errors():
    with pytest.raises(CamelidError, match="'bad'.*ZeroDivisionError"):
        ChatTemplate("{{ 1 / 0 }}", name="bad").render([])
    with pytest.raises(CamelidError):
        ChatTemplate("   ")


def test_render_does_not_mutate_messages():
    messages = [{"role": "user", "content": "x", "name": "bob"}]
    ChatTemplate("{{ messages[0].name }}").render(messages)
    assert messages == [{"role": "user", "content": "x", "name": "bob"}]


# ---- message checking ------------------------------------------------------------------------------------


@pytest.mark.parametrize("messages", [
    "hello",
    {"role": "user", "content": "x"},
    [("user", "x")],
    [{"role": "bot", "content": "x"}],
    [{"content": "x"}],
    [{"role": "user"}],
    [{"role": "user", "content": None}],
    [{"role": "user", "content": 42}],
    [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
    None,
])
def test_malformed_messages_rejected(messages):
    with pytest.raises(CamelidError, match="message"):
        builtin_template("chatml").render(messages)


def test_custom_template_stop_strings_heuristic():
    gemma = "{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}"
    llama3 = "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endfor %}"
    assert ChatTemplate(gemma).stop_strings == ["<end_of_turn>"]
    assert ChatTemplate(llama3).stop_strings == ["<|eot_id|>"]
    assert ChatTemplate("{% for m in messages %}{{ m.content + eos_token }}{% endfor %}", eos_token="<|end_of_text|>").stop_strings == [
        "<|end_of_text|>"
    ]
    assert ChatTemplate("{{ messages[0].content }}").stop_strings == []
