"""`camelid chat -m qwen2.5:0.5b` in a real pseudo-terminal: it pulls from the local Hub, then chats."""

from __future__ import annotations

import sys

import pexpect
import pytest

from fake_hub import FakeHub
from hub_env import QWEN_FILE, QWEN_REPO, client_env, record
from model_files import smollm2_path

PROMPT = ">>> "


@pytest.fixture
def hub():
    with FakeHub() as hub:
        hub.add_repo(QWEN_REPO, {QWEN_FILE: smollm2_path(), "README.md": b"# stand-in\n"})
        yield hub


def test_chat_pulls_a_named_model_then_chats(hub, tmp_path):
    env = client_env(tmp_path, HF_ENDPOINT=hub.endpoint, TERM="xterm")
    child = pexpect.spawn(sys.executable, ["-m", "camelid", "chat", "-m", "qwen2.5:0.5b", "--temp", "0", "-n", "16"],
                          env=env, encoding="utf-8", codec_errors="replace", timeout=300, dimensions=(50, 200))
    try:
        child.expect_exact(f"pulling qwen2.5:0.5b from hf.co/{QWEN_REPO}: {QWEN_FILE}")
        child.expect(r"98\.4M/98\.4M")
        child.expect_exact(PROMPT)
        assert "camelid chat with" in child.before
        child.sendline("What is the capital of France?")
        child.expect_exact(PROMPT)
        reply = child.before.replace("\r\n", "\n").split("\n", 1)[1]
        assert "tokens," in reply and len(reply.split("[")[0].strip()) > 0
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert record(env, "qwen2.5:0.5b")["paths"][0].endswith(QWEN_FILE)
