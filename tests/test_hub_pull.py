"""`camelid pull`, `list`, `rm` and -m names, with the real huggingface_hub client against a local Hub (tests/fake_hub.py)."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from camelid.errors import CamelidError
from fake_hub import FakeHub
from hub_env import (MAMBA_REPO, QWEN_FILE, QWEN_REPO, SPLIT_NAME, camelid, client_env, hf_repos, hf_storage, mamba_gguf,
                     record)
from model_files import smollm2_path
from split_gguf import write_split


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub-files")
    parts = write_split(smollm2_path(), folder / "smol.gguf", max_tensors=100)
    with FakeHub() as hub:
        for repo, files in hf_repos(smollm2_path(), parts, mamba_gguf(folder / "mamba.gguf")).items():
            hub.add_repo(repo, files)
        yield hub


@pytest.fixture
def env(hub, tmp_path):
    hub.reset()
    return client_env(tmp_path, HF_ENDPOINT=hub.endpoint)


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _blob_files(env) -> list[str]:
    blobs = hf_storage(env, QWEN_REPO) / "blobs"
    return sorted(p.name for p in blobs.iterdir()) if blobs.exists() else []


def _written(n_received: int) -> int:
    """Bytes huggingface_hub has written to the partial file after n_received: whole chunks only."""
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    return n_received // DOWNLOAD_CHUNK_SIZE * DOWNLOAD_CHUNK_SIZE


def test_pull_list_inspect_rm(hub, env):
    r = camelid(env, "pull", "qwen2.5:0.5b")
    assert r.returncode == 0, r.stderr
    assert f"pulling qwen2.5:0.5b from hf.co/{QWEN_REPO}: {QWEN_FILE} (" in r.stderr
    rec = record(env, "qwen2.5:0.5b")
    path = Path(rec["paths"][0])
    sha = hub.repos[QWEN_REPO][QWEN_FILE].sha256
    assert path == hf_storage(env, QWEN_REPO) / "snapshots" / hub.commits[QWEN_REPO] / QWEN_FILE
    assert path.is_symlink() and path.resolve() == hf_storage(env, QWEN_REPO) / "blobs" / sha
    assert _sha256(path) == sha and (hf_storage(env, QWEN_REPO) / "refs" / "main").read_text() == hub.commits[QWEN_REPO]
    assert (rec["repo"], rec["quant"], rec["architecture"], rec["revision"]) == (QWEN_REPO, "Q4_K_M", "llama", hub.commits[QWEN_REPO])

    listed = camelid(env, "list").stdout.splitlines()
    assert listed[0].split() == ["NAME", "FILE", "SIZE", "QUANT", "ARCH"]
    assert listed[1].split() == ["qwen2.5:0.5b", QWEN_FILE, "98.4", "MB", "Q4_K_M", "llama"]

    n_downloads = len(hub.ranges(QWEN_FILE))
    again = camelid(env, "pull", "qwen2.5:0.5b")
    assert again.returncode == 0 and "is up to date" in again.stderr and len(hub.ranges(QWEN_FILE)) == n_downloads

    shown = camelid(env, "inspect", "qwen2.5:0.5b", "--json", "--no-tensors")
    assert shown.returncode == 0 and '"llama"' in shown.stdout

    removed = camelid(env, "rm", "qwen2.5:0.5b")
    assert removed.returncode == 0 and removed.stdout.strip() == "removed qwen2.5:0.5b"
    assert camelid(env, "list").stdout.splitlines()[1:] == []
    assert not path.exists() and _blob_files(env) == []
    gone = camelid(env, "rm", "qwen2.5:0.5b")
    assert gone.returncode == 1 and "is not pulled" in gone.stderr


def test_a_cut_transfer_resumes_with_a_range_request(hub, env):
    hub.cut[QWEN_FILE] = 30_000_000
    r = camelid(env, "pull", f"hf.co/{QWEN_REPO}")
    assert r.returncode == 0, r.stderr
    ranges = hub.ranges(QWEN_FILE)
    assert ranges[-2:] == [None, f"bytes={_written(30_000_000)}-"], ranges
    assert _sha256(record(env, f"hf.co/{QWEN_REPO}")["paths"][0]) == hub.repos[QWEN_REPO][QWEN_FILE].sha256


def test_ctrl_c_then_pull_again_resumes_where_it_stopped(hub, env):
    sha = hub.repos[QWEN_REPO][QWEN_FILE].sha256
    hub.stall[QWEN_FILE] = 25_000_000
    child = subprocess.Popen([sys.executable, "-m", "camelid", "pull", "qwen2.5:0.5b"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**env, "HF_HUB_DOWNLOAD_TIMEOUT": "600"})
    partial = hf_storage(env, QWEN_REPO) / "blobs" / f"{sha}.incomplete"
    deadline = time.monotonic() + 300
    while not (partial.exists() and partial.stat().st_size == _written(25_000_000)) and time.monotonic() < deadline:
        assert child.poll() is None, child.communicate()
        time.sleep(0.1)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert record(env, "qwen2.5:0.5b") is None and _blob_files(env) == [f"{sha}.incomplete"]
    assert not (hf_storage(env, QWEN_REPO) / "snapshots" / hub.commits[QWEN_REPO] / QWEN_FILE).exists()

    del hub.stall[QWEN_FILE]
    hub.release()
    r = camelid(env, "pull", "qwen2.5:0.5b")
    assert r.returncode == 0, r.stderr
    assert hub.ranges(QWEN_FILE)[-1] == f"bytes={_written(25_000_000)}-"
    assert _sha256(record(env, "qwen2.5:0.5b")["paths"][0]) == sha and _blob_files(env) == [sha]


def test_a_corrupted_byte_is_caught_and_nothing_is_left_under_the_name(hub, env):
    sha = hub.repos[QWEN_REPO][QWEN_FILE].sha256
    hub.corrupt[QWEN_FILE] = 5_000_000
    r = camelid(env, "pull", "qwen2.5:0.5b")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith(f"camelid: error: {QWEN_FILE} from hf.co/{QWEN_REPO} arrived damaged: its SHA-256 is ")
    assert sha in r.stderr and "The download was deleted" in r.stderr
    assert record(env, "qwen2.5:0.5b") is None and _blob_files(env) == []
    assert not list((hf_storage(env, QWEN_REPO) / "snapshots").rglob("*.gguf"))
    assert camelid(env, "list").stdout.splitlines()[1:] == []

    del hub.corrupt[QWEN_FILE]
    assert camelid(env, "pull", "qwen2.5:0.5b").returncode == 0
    assert _sha256(record(env, "qwen2.5:0.5b")["paths"][0]) == sha


def test_a_pulled_name_loads_without_the_network(hub, env):
    assert camelid(env, "pull", "qwen2.5:0.5b").returncode == 0
    hub.requests.clear()
    show = ["inspect", "qwen2.5:0.5b", "--json", "--no-tensors"]
    online = camelid(env, *show)
    assert online.returncode == 0, online.stderr
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    assert camelid(offline, *show).stdout == online.stdout

    shutil.rmtree(Path(env["CAMELID_HOME"]) / "models")
    from_cache = camelid(offline, "run", "-m", "qwen2.5:0.5b", "-p", "The capital of France is", "-n", "4", "--temp", "0")
    assert from_cache.returncode == 0 and len(from_cache.stdout) > len("The capital of France is"), from_cache.stderr
    assert "qwen2.5:0.5b" in camelid(offline, "list").stdout
    assert hub.requests == []

    missing = camelid(offline, "run", "-m", SPLIT_NAME, "-p", "Hello", "-n", "4")
    assert missing.returncode == 1
    assert missing.stderr.strip() == (f"camelid: error: {SPLIT_NAME} is not downloaded, and the network is off "
                                      "(HF_HUB_OFFLINE or CAMELID_OFFLINE); unset it to pull.")


def test_a_split_model_pulls_whole_and_runs_like_the_unsplit_file(hub, env):
    r = camelid(env, "pull", SPLIT_NAME)
    assert r.returncode == 0, r.stderr
    assert "in 3 parts" in r.stderr
    rec = record(env, SPLIT_NAME)
    assert [Path(p).name for p in rec["paths"]] == [f"smollm2-135m-instruct-q4_1-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    assert "smollm2-135m-instruct-q4_1-00001-of-00003.gguf (+2 parts)" in camelid(env, "list").stdout
    run = ["-p", "The capital of France is", "-n", "16", "--temp", "0"]
    split = camelid(env, "run", "-m", SPLIT_NAME, *run)
    whole = camelid(env, "run", "-m", str(smollm2_path()), *run)
    assert split.returncode == 0 and split.stdout == whole.stdout and len(whole.stdout) > len("The capital of France is")


def test_errors_say_what_to_do(hub, env):
    no_network = camelid({**env, "HF_ENDPOINT": "http://127.0.0.1:9"}, "pull", "qwen2.5:0.5b")
    assert no_network.returncode == 1
    [line] = no_network.stderr.strip().splitlines()
    assert line.startswith("camelid: error: cannot reach http://127.0.0.1:9 (ConnectError")
    assert "HF_ENDPOINT=https://hf-mirror.com" in line and "modelscope.cn/USER/REPO" in line

    unknown = camelid(env, "pull", "hf.co/nobody/nothing-GGUF")
    assert unknown.stderr.strip() == (f"camelid: error: {hub.endpoint} has no repository nobody/nothing-GGUF (or it is private: "
                                      "set HF_TOKEN). Check the name; `camelid pull --list` shows the short names camelid knows.")

    no_quant = camelid(env, "chat", "-m", f"{QWEN_REPO}:Q8_0")
    assert no_quant.returncode == 1
    assert no_quant.stderr.strip() == (f"camelid: error: hf.co/{QWEN_REPO} has no Q8_0 GGUF file; it has Q4_K_M. "
                                       f"Pick one, e.g. `camelid pull hf.co/{QWEN_REPO}:Q4_K_M`.")

    hub.requests.clear()
    mamba = camelid(env, "pull", f"hf.co/{MAMBA_REPO}")
    assert mamba.returncode == 1
    assert f"hf.co/{MAMBA_REPO} holds a 'mamba' model, which camelid cannot run yet" in mamba.stderr
    assert "nothing was downloaded" in mamba.stderr
    assert hub.ranges("mamba-130m-q4_k_m.gguf") == ["bytes=0-65535"]
    assert not (hf_storage(env, MAMBA_REPO) / "blobs").exists()

    unknown_short = camelid(env, "chat", "-m", "qwen2.5:70b")
    assert unknown_short.returncode == 1 and "unknown model name 'qwen2.5:70b'; camelid knows qwen2.5:0.5b" in unknown_short.stderr


def test_free_disk_space_is_checked_before_the_first_byte(monkeypatch, tmp_path):
    import camelid.hub.pull as pull
    from camelid.hub.names import parse_name
    from camelid.hub.select import Choice, RemoteFile

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(pull.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 10**9, 10**9))
    choice = Choice("Q4_K_M", (RemoteFile("m-q4_k_m.gguf", 5 * 10**9, "0" * 64),))
    with pytest.raises(CamelidError, match=r"not enough disk space for qwen2.5:7b: it needs 5.00 GB in .*hf/hub, "
                                           r"which has 1.00 GB free\. Free some space, or set HF_HOME"):
        pull.check_disk_space(parse_name("qwen2.5:7b"), choice)
    pull.check_disk_space(parse_name("qwen2.5:7b"), Choice("Q4_K_M", (RemoteFile("m-q4_k_m.gguf", 10**8, "0" * 64),)))


def test_llama_cpp_hf_flag_is_a_hugging_face_name(env):
    r = camelid({**env, "HF_HUB_OFFLINE": "1"}, "run", "-hf", f"{QWEN_REPO}:Q4_K_M", "-p", "Hi")
    assert r.returncode == 1
    assert r.stderr.strip() == (f"camelid: error: hf.co/{QWEN_REPO}:Q4_K_M is not downloaded, and the network is off "
                                "(HF_HUB_OFFLINE or CAMELID_OFFLINE); unset it to pull.")
