"""The command line, driven as a user would: a real pseudo-terminal for `chat`, subprocesses for `run`."""

from __future__ import annotations

import os
import subprocess
import sys

import pexpect
import pytest

from model_files import smollm2_path

CAMELID = [sys.executable, "-m", "camelid"]


@pytest.fixture(scope="module")
def default_model():
    return smollm2_path()


def run_cli(*args, timeout=300):
    return subprocess.run([*CAMELID, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONIOENCODING": "utf-8"})


def test_chat_two_turns_in_a_pty(default_model):
    child = pexpect.spawn(
        sys.executable, ["-m", "camelid", "chat", "--temp", "0", "-n", "40"],
        encoding="utf-8", timeout=300, dimensions=(40, 120), env={**os.environ, "TERM": "xterm"},
    )
    try:
        child.expect_exact(">>> ")
        child.sendline("What is the capital of France? Answer in one sentence.")
        child.expect_exact(">>> ")
        first = child.before
        child.sendline("And what is the capital of Italy? Answer in one sentence.")
        child.expect_exact(">>> ")
        second = child.before
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert "Paris" in first
    assert "tok/s" in first
    assert "Rome" in second
    assert child.exitstatus == 0


def test_run_prints_a_completion(default_model):
    result = run_cli("run", "-p", "The capital of France is", "-n", "8", "--temp", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The capital of France is")
    assert len(result.stdout.strip()) > len("The capital of France is")
    assert "Traceback" not in result.stderr


def test_run_chinese_prompt_streams_valid_text(default_model):
    result = run_cli("run", "-p", "<|im_start|>user\n你好！请介绍一下你自己。<|im_end|>\n<|im_start|>assistant\n", "-n", "24", "--temp", "0")
    assert result.returncode == 0, result.stderr
    assert "\ufffd" not in result.stdout
    assert "<0x" not in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "-m", "/nonexistent/model.gguf", "-p", "hi"], "model file not found"),
        (["run", "-f", "/nonexistent/prompt.txt"], "cannot read prompt file"),
        (["run", "-c", "16", "-p", "word " * 100], "context"),
    ],
)
def test_user_errors_are_one_clear_line(default_model, args, message):
    result = run_cli(*args)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
