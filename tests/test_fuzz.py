"""Mutation fuzzing of every file format camelid reads (tests/fuzz/): each case ends as a one-line error or a load.

- The seeds are valid, and the structural images write them back byte for byte.
- A bounded, seeded campaign (CAMELID_FUZZ_CASES, default 2,000 cases over GGUF, legacy ggml/ggjt,
  safetensors, PyTorch zip and /load chat files) runs in forked workers under RLIMIT_AS and a CPU budget;
  its counts are printed in the run's closing report. Any traceback, multi-line error, memory blow-up,
  overrun or crash fails the test with the case's seed and description.
- A few of its cases go through the real CLI (`camelid inspect`, `camelid run`): exit status 0, or 1 with
  one `camelid: error:` line.
- The held-out corpus (tests/data/fuzz_regressions/): files that gave tracebacks before the typed
  metadata checks; each now loads or is refused with one line, in-process and through the CLI.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import suite_report

from fuzz import gguf_image, legacy_image
from fuzz.runner import FAILING
from fuzz.seeds import EXTENSIONS, build_seeds

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
CORPUS = TESTS / "data" / "fuzz_regressions"
N_CASES = int(os.environ.get("CAMELID_FUZZ_CASES", "2000"))
CAMPAIGN_SEED = int(os.environ.get("CAMELID_FUZZ_SEED", "0"))


@pytest.fixture(scope="module")
def seeds():
    return build_seeds()


def test_images_write_their_seeds_back(seeds):
    """The mutators edit parsed images: an unedited image must be the seed file itself."""
    for seed in seeds:
        if seed.format == "gguf":
            assert gguf_image.parse(seed.data).to_bytes() == seed.data, seed.name
        elif seed.format == "legacy":
            assert legacy_image.parse(seed.data).to_bytes() == seed.data, seed.name
    assert {s.format for s in seeds} == set(EXTENSIONS), "a format has no seed (PyTorch needs torch: pip install -e '.[test]')"


def _runner(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "fuzz.runner", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


def replay(paths: list[Path], out: Path) -> dict[str, dict]:
    """Each file's report, run as a campaign runs a case (forked from a warmed-up runner process)."""
    result = _runner("--replay", *map(str, paths), "--json", str(out), timeout=1800)
    assert out.exists(), result.stdout[-3000:] + result.stderr[-5000:]
    return {Path(k).name: v for k, v in json.loads(out.read_text()).items()}


def test_every_seed_loads(seeds, tmp_path):
    """A seed that is refused would make every case of it an error: the harness would test nothing."""
    paths = []
    for seed in seeds:
        paths.append(tmp_path / f"{seed.name}{EXTENSIONS[seed.format]}")
        paths[-1].write_bytes(seed.data)
    reports = replay(paths, tmp_path / "reports.json")
    assert {name: r["outcome"] for name, r in reports.items()} == {p.name: "ok" for p in paths}, reports


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """The seeded campaign's summary (JSON) and the directory of its example cases."""
    out = tmp_path_factory.mktemp("fuzz")
    result = _runner("--cases", str(N_CASES), "--seed", str(CAMPAIGN_SEED), "--json", str(out / "summary.json"),
                     "--save-examples", str(out / "examples"), "--examples-per-kind", "5",
                     timeout=max(1800, N_CASES))
    assert (out / "summary.json").exists(), result.stdout[-3000:] + result.stderr[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    for line in result.stdout.splitlines():
        if line.startswith(("fuzz:", "  ", "machine:")) and not line.startswith("  File"):
            suite_report.report(line)
    return summary, out / "examples", result


def test_fuzz_campaign_ends_every_case_cleanly(campaign):
    summary, _, result = campaign
    assert summary["cases"] == N_CASES, result.stderr[-3000:]
    assert set(summary["by_format"]) == set(EXTENSIONS)
    failures = summary["failures"]
    shown = "\n\n".join(f"case {f['index']} ({f['format']}/{f['seed']}, {f['size']} bytes: {f['description']}): "
                        f"{f['outcome']}\n{f['message'][-2500:]}" for f in failures[:5])
    assert not failures, f"{len(failures)} of {summary['cases']} fuzz cases failed (rerun one with " \
                         f"`PYTHONPATH=tests python -m fuzz.runner --seed {CAMPAIGN_SEED} ...`):\n\n{shown}"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "camelid", *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def assert_clean_exit(result: subprocess.CompletedProcess, what: str) -> str:
    """Exit 0, or exit 1 with exactly one `camelid: error:` line (after any `camelid: warning:` lines)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, (what, result.stderr[-3000:])
    if result.returncode == 0:
        return "ok"
    errors = [line for line in lines if not line.startswith("camelid: warning: ")]
    assert result.returncode == 1 and len(errors) == 1 and errors[0].startswith("camelid: error: "), \
        (what, result.returncode, result.stderr[-3000:])
    return "error"


def test_fuzz_cases_through_the_cli(campaign):
    """20 of the campaign's GGUF and legacy cases: 14 (loads and refusals) through `camelid inspect`, 6 refused
    ones through `camelid run`."""
    _, examples, _ = campaign
    files = sorted(p for p in examples.iterdir() if _is_model_file(p))
    refused = [p for p in files if "-error." in p.name]
    assert len(files) >= 12 and refused, sorted(p.name for p in examples.iterdir())
    outcomes = [assert_clean_exit(_cli("inspect", str(path)), f"inspect {path.name}") for path in files[:14]]
    outcomes += [assert_clean_exit(_cli("run", "-m", str(path), "-p", "hi", "-n", "1"), f"run {path.name}")
                 for path in refused[:6]]
    assert "error" in outcomes and "ok" in outcomes, outcomes


def _is_model_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in (b"GGUF", *legacy_image.MAGICS.values())


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.gz"))


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """The corpus decompressed, and each file's report."""
    directory = tmp_path_factory.mktemp("held-out")
    paths = []
    for gz in corpus_files():
        paths.append(directory / gz.name.removesuffix(".gz"))
        paths[-1].write_bytes(gzip.decompress(gz.read_bytes()))
    return directory, replay(paths, directory / "reports.json")


def test_held_out_corpus_is_there():
    manifest = json.loads((CORPUS / "MANIFEST.json").read_text())
    assert sorted(manifest) == [p.name for p in corpus_files()]
    assert len(manifest) >= 24


@pytest.mark.parametrize("name", [p.name for p in corpus_files()])
def test_held_out_file_loads_or_is_refused_in_one_line(name, held_out):
    report = held_out[1][name.removesuffix(".gz")]
    assert report["outcome"] not in FAILING, (name, report)


def test_held_out_model_files_through_the_cli(held_out):
    """Every third of the corpus's GGUF and legacy files through `camelid inspect`, two through `camelid run`."""
    paths = sorted(p for p in held_out[0].iterdir() if _is_model_file(p))
    assert paths
    for path in paths[::3]:
        assert_clean_exit(_cli("inspect", str(path)), f"inspect {path.name}")
    for path in paths[:2]:
        assert_clean_exit(_cli("run", "-m", str(path), "-p", "hi", "-n", "1"), f"run {path.name}")
