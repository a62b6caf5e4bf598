"""`camelid pull modelscope.cn/USER/REPO` with the real modelscope-hub client against a local ModelScope (tests/fake_hub.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dependencies import require_module
from fake_hub import FakeModelScope
from hub_env import QWEN_FILE, QWEN_REPO, camelid, client_env, record
from model_files import smollm2_path

NAME = f"modelscope.cn/{QWEN_REPO}"


@pytest.fixture(scope="module")
def hub():
    require_module("modelscope_hub", "pip install -e '.[test]' (or pip install modelscope-hub)")
    with FakeModelScope() as hub:
        hub.add_repo(QWEN_REPO, {QWEN_FILE: smollm2_path(), "README.md": b"# stand-in\n"})
        yield hub


@pytest.fixture
def env(hub, tmp_path):
    hub.reset()
    return client_env(tmp_path, MODELSCOPE_ENDPOINT=hub.endpoint)


def test_pull_from_modelscope_resumes_a_cut_transfer_and_lists(hub, env):
    hub.cut[QWEN_FILE] = 5_000_000
    r = camelid(env, "pull", NAME)
    assert r.returncode == 0, r.stderr
    assert hub.ranges(QWEN_FILE)[-1] == "bytes=5000000-"
    path = Path(record(env, NAME)["paths"][0])
    assert path.is_relative_to(Path(env["MODELSCOPE_CACHE"]))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hub.repos[QWEN_REPO][QWEN_FILE].sha256
    listed = camelid(env, "list").stdout.splitlines()[1].split()
    assert listed == [NAME, QWEN_FILE, "98.4", "MB", "Q4_K_M", "llama"]
    hub.requests.clear()
    shown = camelid(env, "inspect", NAME, "--json", "--no-tensors")
    assert shown.returncode == 0 and '"llama"' in shown.stdout and hub.requests == []
    assert camelid(env, "rm", NAME).returncode == 0 and not path.exists()


def test_a_corrupted_byte_from_modelscope_leaves_nothing(hub, env):
    hub.corrupt[QWEN_FILE] = 1_000_000
    r = camelid(env, "pull", NAME)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith(f"camelid: error: a file of {NAME} kept arriving damaged")
    assert record(env, NAME) is None
    assert not [p for p in Path(env["MODELSCOPE_CACHE"]).rglob("*.gguf*")]


def test_modelscope_errors(hub, env):
    unknown = camelid(env, "pull", "modelscope.cn/nobody/nothing-GGUF")
    assert unknown.returncode == 1 and "has no repository nobody/nothing-GGUF" in unknown.stderr
    no_quant = camelid(env, "pull", f"{NAME}:Q8_0")
    assert f"{NAME} has no Q8_0 GGUF file; it has Q4_K_M" in no_quant.stderr


def test_without_the_client_the_error_says_how_to_install_it(monkeypatch):
    import sys

    from camelid.errors import CamelidError
    from camelid.hub import modelscope

    monkeypatch.setitem(sys.modules, "modelscope_hub", None)
    with pytest.raises(CamelidError, match=r"pulling from ModelScope needs its client: pip install 'camelid\[modelscope\]'"):
        modelscope.listing("Qwen/Qwen2.5-0.5B-Instruct-GGUF")
