"""`camelid bench`: llama-bench-style speed report, as a table and as JSON for scripts."""

import json
import subprocess
import sys

import numba
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


def test_thread_list_measures_each_count_and_its_scaling():
    r = _bench("-p", "8", "-n", "2", "-r", "1", "-t", "1,2", "-o", "json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["threads"] == [1, 2] and [run["threads"] for run in report["by_threads"]] == [1, 2]
    assert all(run["prompt_tokens_per_s"] > 0 and run["gen_tokens_per_s"] > 0 for run in report["by_threads"])
    table = _bench("-p", "8", "-n", "0", "-r", "1", "-t", "2,1")
    assert table.returncode == 0, table.stderr
    rows = [line.split("|") for line in table.stdout.splitlines() if "| pp8 |" in line]
    assert [row[3].strip() for row in rows] == ["2", "1"] and "vs 2 |" in table.stdout
    assert rows[0][7].strip() == "1.00x" and rows[1][7].strip().endswith("x")


def test_threads_sweep_goes_up_to_the_cores():
    from camelid.cli.bench import thread_counts
    from camelid.threads import physical_cores

    counts = thread_counts(None, True)
    assert counts[0] == 1 and counts[-1] == min(physical_cores(), numba.config.NUMBA_NUM_THREADS)
    assert counts == sorted(set(counts)) and all(c == counts[-1] or c & (c - 1) == 0 for c in counts)


@pytest.mark.parametrize("args, message", [
    (["-r", "0"], "repetitions"),
    (["-p", "-5"], "prompt length"),
    (["-t", "0"], "threads"),
    (["-t", "1,x"], "comma-separated"),
    (["-t", "1,1"], "twice"),
    (["-t", "100000"], "at most"),
    (["-t", "1", "--threads-sweep"], "not both"),
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
