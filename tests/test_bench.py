"""`camelid bench`: llama-bench-style speed report, as a table and as JSON for scripts."""

import json
import subprocess
import sys

import pytest

from model_files import smollm2_path


def _bench(*args):
    return subprocess.run([sys.executable, "-m", "camelid", "bench", "-m", str(smollm2_path()), *args],
                          capture_output=True, text=True, timeout=600)


def test_json_report_has_medians_of_every_run():
    r = _bench("-p", "16", "-n", "4", "-r", "3", "-t", "1", "-o", "json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["threads"] == 1
    assert len(report["runs"]["pp16"]) == 3 and len(report["runs"]["tg4"]) == 3
    assert report["prompt_tokens_per_s"] == sorted(report["runs"]["pp16"])[1]
    assert report["gen_tokens_per_s"] == sorted(report["runs"]["tg4"])[1]
    assert all(v > 0 for v in report["runs"]["pp16"] + report["runs"]["tg4"])


def test_parallel_generation_is_reported_in_total():
    r = _bench("-p", "0", "-n", "4", "-r", "2", "-t", "1", "-np", "3", "-o", "json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["parallel"] == 3 and len(report["runs"]["tg4 x3"]) == 2
    assert report["batched_gen_tokens_per_s"] == sum(report["runs"]["tg4 x3"]) / 2  # the median of two
    assert all(v > 0 for v in report["runs"]["tg4 x3"])


def test_table_names_the_tests_and_skips_a_zero_length():
    r = _bench("-p", "8", "-n", "0", "-r", "1")
    assert r.returncode == 0, r.stderr
    assert "| pp8 |" in r.stdout and "tg" not in r.stdout.split("| test |")[1]


@pytest.mark.parametrize("args, message", [
    (["-r", "0"], "repetitions"),
    (["-p", "-5"], "prompt length"),
    (["-t", "0"], "threads"),
    (["-p", "100000"], "trained for"),
    (["-np", "0"], "parallel"),
])
def test_bad_settings_are_explained(args, message):
    r = _bench(*args, "-n", "1")
    assert r.returncode == 1
    assert message in r.stderr and "Traceback" not in r.stderr


def test_profile_shows_kernels_and_interpreter_cost_per_token():
    r = _bench("-p", "0", "-n", "8", "-r", "1", "--profile")
    assert r.returncode == 0, r.stderr
    profile = r.stdout.split("generation profile:")[1]
    assert "compiled" in profile  # the matmul kernels, by name
    interpreter = [line for line in profile.splitlines() if line.startswith("| python (interpreter")]
    assert len(interpreter) == 1 and float(interpreter[0].split("|")[2]) > 0
