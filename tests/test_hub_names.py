"""Model names, the choice of GGUF file(s) in a repository listing, and the header probe (no network)."""

from __future__ import annotations

import io

import pytest

from camelid.errors import CamelidError
from camelid.hub.gguf_probe import NotGGUF, architecture_from_prefix, probe_architecture
from camelid.hub.names import CATALOG, HUGGINGFACE, MODELSCOPE, parse_name
from camelid.hub.select import RemoteFile, choose_gguf, quant_of
from model_files import smollm2_path


@pytest.mark.parametrize("value, name, source, repo, quant", [
    ("qwen2.5:0.5b", "qwen2.5:0.5b", HUGGINGFACE, "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "Q4_K_M"),
    ("Qwen2.5:0.5B", "qwen2.5:0.5b", HUGGINGFACE, "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "Q4_K_M"),
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:q8_0", "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q8_0", HUGGINGFACE,
     "bartowski/Llama-3.2-1B-Instruct-GGUF", "Q8_0"),
    ("https://huggingface.co/Qwen/Qwen2.5-1.5B-Instruct-GGUF", "hf.co/Qwen/Qwen2.5-1.5B-Instruct-GGUF", HUGGINGFACE,
     "Qwen/Qwen2.5-1.5B-Instruct-GGUF", None),
    ("Qwen/Qwen2.5-1.5B-Instruct-GGUF:Q4_K_M", "hf.co/Qwen/Qwen2.5-1.5B-Instruct-GGUF:Q4_K_M", HUGGINGFACE,
     "Qwen/Qwen2.5-1.5B-Instruct-GGUF", "Q4_K_M"),
    ("modelscope.cn/Qwen/Qwen2.5-0.5B-Instruct-GGUF", "modelscope.cn/Qwen/Qwen2.5-0.5B-Instruct-GGUF", MODELSCOPE,
     "Qwen/Qwen2.5-0.5B-Instruct-GGUF", None),
    ("https://www.modelscope.cn/models/Qwen/Qwen3-8B-GGUF:Q5_K_M", "modelscope.cn/Qwen/Qwen3-8B-GGUF:Q5_K_M", MODELSCOPE,
     "Qwen/Qwen3-8B-GGUF", "Q5_K_M"),
])
def test_names(value, name, source, repo, quant):
    ref = parse_name(value)
    assert (ref.name, ref.source, ref.repo, ref.quant) == (name, source, repo, quant)


@pytest.mark.parametrize("value", ["model.gguf", "models/x.gguf", "zh-models/7B/ggml-model-q4_0.bin", "a/b/c", "./x", "tests/y"])
def test_paths_are_not_names(value):
    assert parse_name(value) is None


def test_name_errors():
    with pytest.raises(CamelidError, match="qwen2.5:0.5b"):
        parse_name("qwen2.5:70b")
    with pytest.raises(CamelidError, match="needs a size.*qwen2.5:1.5b"):
        parse_name("qwen2.5")
    with pytest.raises(CamelidError, match="quantization"):
        parse_name("hf.co/a/b:Q4-K")
    with pytest.raises(CamelidError, match="repository name"):
        parse_name("hf.co/justone")


def test_catalog_defaults_to_q4_k_m_and_covers_the_issue():
    for name in ("qwen2.5:0.5b", "qwen2.5:1.5b", "qwen3:0.6b", "qwen3:1.7b", "gemma3:270m", "llama3.2:1b", "deepseek-r1:1.5b"):
        assert CATALOG[name][2] == "Q4_K_M" and CATALOG[name][1].endswith("-GGUF")


def _files(*names):
    return [RemoteFile(n, 100, "0" * 64) for n in names]


def test_quant_of():
    assert quant_of("qwen2.5-0.5b-instruct-q4_k_m.gguf") == "Q4_K_M"
    assert quant_of("Qwen2.5-7B-Instruct-Q5_K_M-00002-of-00003.gguf") == "Q5_K_M"
    assert quant_of("tinyllama-1.1b-chat-v1.0.Q4_0.gguf") == "Q4_0"
    assert quant_of("gemma-3-1b-it-UD-Q4_K_XL.gguf") == "Q4_K_XL"
    assert quant_of("Llama-3.2-1B-Instruct-IQ4_XS.gguf") == "IQ4_XS"
    assert quant_of("model-bf16.gguf") == "BF16"
    assert quant_of("model.gguf") is None


def test_choose_default_quant_and_split_parts():
    files = _files("README.md", "m-q8_0.gguf", "m-q4_k_m-00002-of-00002.gguf", "m-q4_k_m-00001-of-00002.gguf", "mmproj-m-f16.gguf")
    choice = choose_gguf(files, None, "hf.co/u/m")
    assert choice.quant == "Q4_K_M"
    assert [f.path for f in choice.files] == ["m-q4_k_m-00001-of-00002.gguf", "m-q4_k_m-00002-of-00002.gguf"]
    assert choice.size == 200
    assert [f.path for f in choose_gguf(files, "Q8_0", "hf.co/u/m").files] == ["m-q8_0.gguf"]


def test_choose_lists_what_there_is():
    files = _files("m-Q8_0.gguf", "m-Q6_K.gguf", "mmproj-f16.gguf")
    with pytest.raises(CamelidError, match=r"has no Q4_K_M GGUF file; it has Q6_K, Q8_0\. .*camelid pull hf\.co/u/m:Q6_K"):
        choose_gguf(files, None, "hf.co/u/m")
    assert choose_gguf(_files("only.gguf"), None, "hf.co/u/m").files[0].path == "only.gguf"
    with pytest.raises(CamelidError, match="no GGUF model file"):
        choose_gguf(_files("model.safetensors", "config.json"), None, "hf.co/u/m")
    with pytest.raises(CamelidError, match="3 parts"):
        choose_gguf(_files("m-q4_k_m-00001-of-00003.gguf", "m-q4_k_m-00003-of-00003.gguf"), None, "hf.co/u/m")


def test_probe_reads_the_architecture_from_the_first_bytes():
    data = smollm2_path().read_bytes()[: 1 << 20]
    asked = []

    def read_prefix(n):
        asked.append(n)
        return data[:n]

    assert probe_architecture(read_prefix) == "llama"
    assert asked == [1 << 16]
    assert architecture_from_prefix(data[:4096]) == "llama"
    with pytest.raises(NotGGUF):
        probe_architecture(lambda n: b"PK\x03\x04" + bytes(60))
    with pytest.raises(NotGGUF):
        probe_architecture(lambda n: data[:40])


def test_probe_asks_for_more_when_the_key_comes_late():
    from gguf import GGUFWriter

    buf = io.BytesIO()
    w = GGUFWriter(None, "qwen3")
    w.kv_data[0].clear()
    w.add_array("tokenizer.ggml.tokens", ["x" * 100] * 1000)
    w.add_architecture()
    w.fout = [buf]
    from gguf.gguf_writer import WriterState

    w.state = WriterState.EMPTY
    w.write_header_to_file()
    w.write_kv_data_to_file()
    data = buf.getvalue()
    asked = []
    assert probe_architecture(lambda n: (asked.append(n), data[:n])[1]) == "qwen3"
    assert asked == [1 << 16, 1 << 20]
