"""`camelid run` as llama.cpp's `main` of 2023: its flags, and interactive sessions in a real pseudo-terminal.

Flag meanings and defaults are checked against llama.cpp's documentation of them (examples/common.h
gpt_params and gpt_print_usage at commit 248367605, May 2023). The sessions run the default SmolLM2
model in a pty through pexpect; content is asserted only under greedy decoding, where an answer is
compared with the Python API fed the token sequence llama.cpp's instruct mode builds.
"""

from __future__ import annotations

import ast
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from camelid.cli.main import build_parser
from model_files import smollm2_path

REPO = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
INSTRUCT_PROMPT = re.compile(r"\n(?:\x1b\[\?2004h)?> ")  # instruct mode's "\n> " (readline may enable bracketed paste)
ALPACA = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


def env() -> dict:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "TERM": "xterm", "PYTHONPATH": path, "PYTHONIOENCODING": "utf-8"}


def run_cli(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "camelid", "run", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env())


def spawn(*args, cwd) -> pexpect.spawn:
    return pexpect.spawn(sys.executable, ["-m", "camelid", "run", *args], cwd=str(cwd), encoding="utf-8",
                         timeout=300, dimensions=(50, 200), env=env())


def ask(child: pexpect.spawn, question: str) -> str:
    """Send a question at the instruct prompt; return the reply (and notices) shown before the next prompt."""
    child.sendline(question)
    child.expect_exact(question)
    child.expect(INSTRUCT_PROMPT)
    return ANSI.sub("", child.before).replace("\r\n", "\n").strip("\n")


def finish(child: pexpect.spawn) -> None:
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()


@pytest.fixture(scope="module")
def model_path() -> str:
    return str(smollm2_path())


# ---- flags: parsed as llama.cpp documented them, no model needed -------------------------------------


def parse(*argv):
    return build_parser().parse_args(["run", *argv])


def test_defaults_are_llama_cpp_main_of_may_2023():
    a = parse()
    # gpt_params: n_ctx 512, n_predict -1, n_batch 512, n_keep 0, seed -1, top_k 40, top_p 0.95,
    # temp 0.80, repeat_penalty 1.10, repeat_last_n 64; no min-p in 2023
    assert (a.ctx_size, a.n_predict, a.batch_size, a.seed) == (512, -1, 512, None)
    assert (a.top_k, a.top_p, a.temp, a.repeat_penalty, a.repeat_last_n, a.min_p) == (40, 0.95, 0.8, 1.1, 64, 0.0)
    assert a.keep is None  # 0 in plain completion, the whole prompt in interactive and instruct modes
    assert not (a.interactive or a.instruct or a.interactive_first or a.color or a.multiline_input or a.ignore_eos or a.escape)
    assert a.reverse_prompt == [] and a.in_prefix == "" and a.in_suffix == ""


def test_the_2023_command_line():
    a = parse("-m", "zh-models/7B/ggml-model-q4_0.bin", "--color", "-f", "prompts/alpaca.txt", "-ins", "-c", "200",
              "--temp", "0.2", "-n", "256", "--repeat_penalty", "1.3")
    assert (a.model, a.file, a.ctx_size, a.temp, a.n_predict, a.repeat_penalty) == (
        "zh-models/7B/ggml-model-q4_0.bin", "prompts/alpaca.txt", 200, 0.2, 256, 1.3)
    assert a.color and a.instruct


@pytest.mark.parametrize("spellings, dest, value, expected", [
    (["-n", "--n-predict", "--n_predict"], "n_predict", "7", 7),
    (["-c", "--ctx-size", "--ctx_size"], "ctx_size", "300", 300),
    (["-b", "--batch-size", "--batch_size"], "batch_size", "64", 64),
    (["-t", "--threads"], "threads", "3", 3),
    (["-s", "--seed"], "seed", "42", 42),
    (["--top-k", "--top_k"], "top_k", "5", 5),
    (["--top-p", "--top_p"], "top_p", "0.5", 0.5),
    (["--repeat-penalty", "--repeat_penalty"], "repeat_penalty", "1.3", 1.3),
    (["--repeat-last-n", "--repeat_last_n"], "repeat_last_n", "-1", -1),
    (["--keep"], "keep", "-1", -1),
    (["--in-prefix", "--in_prefix"], "in_prefix", " ", " "),
    (["--in-suffix", "--in_suffix"], "in_suffix", "Assistant:", "Assistant:"),
    (["-p", "--prompt"], "prompt", "Hello", "Hello"),
    (["-f", "--file"], "file", "x.txt", "x.txt"),
    (["-m", "--model"], "model", "m.gguf", "m.gguf"),
    (["--temp"], "temp", "0", 0.0),
])
def test_every_spelling_of_a_valued_flag(spellings, dest, value, expected):
    for flag in spellings:
        assert getattr(parse(flag, value), dest) == expected, flag


@pytest.mark.parametrize("spellings, dest", [
    (["-i", "--interactive"], "interactive"),
    (["-ins", "--instruct"], "instruct"),
    (["--interactive-first", "--interactive_first"], "interactive_first"),
    (["--multiline-input", "--multiline_input"], "multiline_input"),
    (["--ignore-eos", "--ignore_eos"], "ignore_eos"),
    (["--color"], "color"),
    (["-e", "--escape"], "escape"),
    (["--no-display-prompt", "--no_display_prompt"], "no_display_prompt"),
    (["--no-context-shift", "--no_context_shift"], "no_context_shift"),
])
def test_every_spelling_of_a_switch(spellings, dest):
    for flag in spellings:
        assert getattr(parse(flag), dest) is True, flag


def test_reverse_prompt_is_repeatable():
    a = parse("-r", "User:", "--reverse-prompt", "Q:", "--reverse_prompt", "用户：")
    assert a.reverse_prompt == ["User:", "Q:", "用户："]


def test_escapes_as_llama_cpp_process_escapes():
    from camelid.cli.run_flags import process_escapes

    # \n \r \t \' \" \\ are replaced; any other backslash pair stays as written
    assert process_escapes(r"a\nb\tc\rd\'e\"f\\g\qh\\") == "a\nb\tc\rd'e\"f\\g\\qh\\"
    assert process_escapes("trailing\\") == "trailing\\"


def test_packaged_prompt_files_resolve_from_anywhere(tmp_path, monkeypatch):
    from camelid.cli.run_flags import packaged_prompts, resolve_prompt_file

    assert {"alpaca.txt", "chat-with-bob.txt"} <= set(packaged_prompts())
    monkeypatch.chdir(tmp_path)
    path = resolve_prompt_file("prompts/alpaca.txt")
    assert path.read_text(encoding="utf-8") == ALPACA + "\n"
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "alpaca.txt").write_text("mine\n")
    assert resolve_prompt_file("prompts/alpaca.txt").read_text() == "mine\n"  # a local file wins


def test_unknown_flag_prints_llama_cpp_style_usage():
    result = run_cli("--frobnicate", "3")
    assert result.returncode == 1
    assert result.stderr.startswith("error: unknown argument: --frobnicate\n")
    assert "usage:" in result.stderr and "-ins, --instruct" in result.stderr and "--reverse-prompt" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_flag_value_prints_usage():
    result = run_cli("-n", "many")
    assert result.returncode == 1
    assert "error: argument -n/--n-predict: invalid int value: 'many'" in result.stderr
    assert "usage:" in result.stderr and "Traceback" not in result.stderr


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("camelid: error: "), result.stderr
    return lines[0]


def test_missing_prompt_file(tmp_path):
    line = one_line_error(run_cli("-f", "prompts/no-such-prompt.txt", "-ins", cwd=tmp_path))
    assert "cannot read prompt file prompts/no-such-prompt.txt" in line and "prompts/alpaca.txt" in line


def test_keep_larger_than_the_context(tmp_path):
    line = one_line_error(run_cli("--keep", "300", "-c", "200", "-p", "hi", cwd=tmp_path))
    assert "--keep 300" in line and "200" in line


# ---- line input in a pty, no model ------------------------------------------------------------------

READER = """
import sys
from camelid.cli.line_input import read_user_input
for _ in range(int(sys.argv[1])):
    print("GOT", repr(read_user_input("> ", multiline=sys.argv[2] == "1", keep_newline=sys.argv[3] == "1")), flush=True)
"""


def read_inputs(keystrokes: list[tuple[str, str]], n_reads: int, multiline=False, keep_newline=False) -> list:
    """In a real pty, wait for each (text shown, keys) pair's text and type its keys, then Return;
    returns what read_user_input returned each time."""
    child = pexpect.spawn(sys.executable, ["-c", READER, str(n_reads), str(int(multiline)), str(int(keep_newline))],
                          encoding="utf-8", timeout=60, env=env())
    child.logfile_read = log = io.StringIO()
    try:
        for shown, keys in keystrokes:
            child.expect_exact(shown)
            if keys == "<EOF>":
                child.sendcontrol("d")
            else:
                child.send(keys + "\r")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    return [ast.literal_eval(line[4:]) for line in log.getvalue().replace("\r\n", "\n").splitlines() if line.startswith("GOT ")]


def test_backslash_joins_lines_and_ctrl_d_ends():
    keys = [("> ", "first line\\"), ("first line\\", "second line"), ("GOT", "<EOF>")]
    assert read_inputs(keys, 2) == ["first line\nsecond line", None]


def test_llama_cpp_newline_conventions():
    # keep_newline: as fed to the model, with its newline, except after a final "/"
    assert read_inputs([("> ", "hello"), ("GOT", "no newline/")], 2, keep_newline=True) == ["hello\n", "no newline"]
    # --multiline-input: Return continues, a final backslash sends
    keys = [("> ", "one"), ("one", "two"), ("two", "three\\")]
    assert read_inputs(keys, 1, multiline=True) == ["one\ntwo\nthree"]


def test_arrow_up_recalls_history():
    assert read_inputs([("> ", "what is 2+2?"), ("GOT", "\x1b[A")], 2) == ["what is 2+2?", "what is 2+2?"]


# ---- with the model ----------------------------------------------------------------------------------


def test_context_smaller_than_the_prompt(model_path, tmp_path):
    line = one_line_error(run_cli("-m", model_path, "-c", "32", "-f", "prompts/chat-with-bob.txt", "-i", cwd=tmp_path))
    assert "context" in line and "-c" in line


def test_non_utf8_prompt_file(model_path, tmp_path):
    (tmp_path / "gbk.txt").write_bytes("你好，世界".encode("gbk"))
    line = one_line_error(run_cli("-m", model_path, "-f", "gbk.txt", "-ins", cwd=tmp_path))
    assert "not UTF-8" in line


def test_plain_completion_shifts_or_stops_at_a_full_context(model_path, tmp_path):
    args = ("-m", model_path, "-p", "Once upon a time", "-c", "40", "-n", "60", "--ignore-eos", "--temp", "0")
    shifted = run_cli(*args, cwd=tmp_path)
    assert shifted.returncode == 0, shifted.stderr
    assert "[context full (40 tokens): dropped" in shifted.stderr
    assert "60 generated" in shifted.stderr
    stopped = run_cli(*args, "--no-context-shift", cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert "context full (40 tokens): dropped" not in stopped.stderr
    assert "[stopped: the context of 40 tokens is full" in stopped.stderr
    assert len(stopped.stdout) < len(shifted.stdout)


def test_the_2023_flag_line_runs_and_answers(model_path, tmp_path):
    child = spawn("-m", model_path, "--color", "-f", "prompts/alpaca.txt", "-ins", "-c", "200", "--temp", "0.2",
                  "-n", "256", "--repeat_penalty", "1.3", "-s", "7", cwd=tmp_path)
    try:
        child.expect(INSTRUCT_PROMPT)
        shown = child.before
        reply = ask(child, "What is the capital of France?")
        finish(child)
    finally:
        child.close(force=True)
    assert "\x1b[33m" + ALPACA in shown  # the packaged prompt, in llama.cpp's prompt colour (yellow)
    assert "Traceback" not in reply
    assert len(re.findall(r"[A-Za-z]{2,}", reply)) >= 3, reply
    assert child.exitstatus == 0


def test_ctrl_c_interrupts_the_reply_and_twice_at_the_prompt_quits(model_path, tmp_path):
    child = spawn("-m", model_path, "-f", "prompts/alpaca.txt", "-ins", "-c", "1024", "--temp", "0", "-n", "400",
                  "--ignore-eos", cwd=tmp_path)
    try:
        child.expect(INSTRUCT_PROMPT)
        question = "Write a long story about a dragon who learns to fly."
        child.sendline(question)
        child.expect_exact(question)
        child.expect(r"[A-Za-z]{2,}\W+[A-Za-z]{2,}\W+[A-Za-z]{2,}")  # the model is writing
        child.sendintr()
        child.expect(INSTRUCT_PROMPT, timeout=120)
        interrupted_reply = ANSI.sub("", child.after + child.before)
        child.sendintr()
        child.expect(pexpect.EOF, timeout=60)
        child.close()
    finally:
        child.close(force=True)
    # without the interrupt the reply would run to 400 tokens
    assert len(interrupted_reply.split()) < 150, interrupted_reply
    assert "Traceback" not in interrupted_reply
    assert child.exitstatus == 130


def test_backslash_continues_a_message_over_two_lines(model_path, tmp_path):
    import camelid

    child = spawn("-m", model_path, "-f", "prompts/alpaca.txt", "-ins", "--temp", "0", "-n", "16", "--repeat_penalty", "1",
                  cwd=tmp_path)
    try:
        child.expect(INSTRUCT_PROMPT)
        child.sendline("Repeat the following sentence:\\")
        child.expect_exact("Repeat the following sentence:\\")
        reply = ask(child, "the sky is green and the grass is blue")
        finish(child)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0

    # llama.cpp's instruct mode feeds: prompt, "\n\n### Instruction:\n\n", the input with its newline,
    # "\n\n### Response:\n\n"; greedy decoding of that sequence (no penalty) must give the reply shown
    model = camelid.load(model_path, n_ctx=512, show_progress=False)
    tokens = (model.tokenize(ALPACA, add_special=True, parse_special=True)
              + model.tokenize("\n\n### Instruction:\n\n", add_special=False)
              + model.tokenize("Repeat the following sentence:\nthe sky is green and the grass is blue\n", add_special=False)
              + model.tokenize("\n\n### Response:\n\n", add_special=False))
    expected = "".join(c.text for c in model.stream_tokens(
        tokens, max_tokens=16, temperature=0, repeat_penalty=1.0, min_p=0.0))
    assert expected.strip()
    assert reply.strip() == expected.strip()


QUESTIONS = [
    "Hello! What is your name?",
    "What is the capital of France?",
    "Name three colors.",
    "What is two plus two?",
    "Tell me a fact about cats.",
    "What is the largest ocean on Earth?",
    "Give me a word that rhymes with cat.",
    "What do bees make?",
    "Which planet is closest to the Sun?",
    "What language is spoken in Brazil?",
    "How many legs does a spider have?",
    "What is the boiling point of water in Celsius?",
]


def test_twelve_instruct_turns_in_a_200_token_context(model_path, tmp_path):
    child = spawn("-m", model_path, "-f", "prompts/alpaca.txt", "-ins", "-c", "200", "--temp", "0", "-n", "24",
                  "--repeat_penalty", "1.3", cwd=tmp_path)
    replies = []
    try:
        child.expect(INSTRUCT_PROMPT)
        for question in QUESTIONS:
            replies.append(ask(child, question))
        finish(child)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    transcript = "\n".join(replies)
    assert "Traceback" not in transcript
    assert transcript.count("[context full (200 tokens): dropped") >= 2
    answers = [re.sub(r"\n?\[context full[^\]]*\]\n?", "", r).strip() for r in replies]
    assert all(answers), answers
    last = answers[-4:]
    assert len(set(last)) == len(last), last  # each of the last answers is new ...
    assert answers[0] not in last  # ... and none repeats the first


def test_chinese_and_emoji_stream_without_broken_characters(model_path, tmp_path):
    child = spawn("-m", model_path, "-f", "prompts/alpaca.txt", "-ins", "--temp", "0", "-n", "40", cwd=tmp_path)
    try:
        child.expect(INSTRUCT_PROMPT)
        first = ask(child, "请用中文介绍一下长城。")
        second = ask(child, "用三个表情符号描述快乐 😀")
        finish(child)
    finally:
        child.close(force=True)
    for reply in (first, second):
        assert "\ufffd" not in reply and "<0x" not in reply, reply
    assert re.search(r"[\u4e00-\u9fff]", first), first
