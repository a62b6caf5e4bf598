"""The SQLite conversation store: CRUD, validation, and that it only ever touches its data directory.

The oracle for what is on disk is Python's sqlite3 module reading the file directly."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import suite_report
from camelid.chat.store import DB_NAME, ConversationNotFound, ConversationStore
from camelid.errors import CamelidError


@pytest.fixture
def store(tmp_path):
    s = ConversationStore(tmp_path / "data")
    yield s
    s.close()


def read_db(path):
    """The tables as plain rows, read by a separate connection."""
    with sqlite3.connect(path) as db:
        conversations = db.execute("SELECT id, title, system_prompt, settings FROM conversations ORDER BY created").fetchall()
        messages = db.execute("SELECT conversation_id, idx, role, content, stats FROM messages ORDER BY conversation_id, idx").fetchall()
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    return conversations, messages, mode


def test_crud_round_trip_is_on_disk(store, tmp_path):
    c = store.create(system_prompt="Be brief.", settings={"temperature": 0, "top_p": 0.9, "max_tokens": 64})
    assert c["title"] == "New chat" and c["messages"] == [] and len(c["id"]) == 32
    assert c["settings"] == {"temperature": 0.0, "top_p": 0.9, "max_tokens": 64}
    store.put_messages(c["id"], 0, [{"role": "user", "content": "你好，世界"}])
    stats = {"completion_tokens": 12, "tokens_per_second": 31.5, "finish_reason": "stop"}
    store.put_messages(c["id"], 1, [{"role": "assistant", "content": "Hello! 👋", "stats": stats}])
    store.update(c["id"], title="  Greetings \n in 中文 ")
    conversations, messages, mode = read_db(tmp_path / "data" / DB_NAME)
    assert mode == "wal"
    assert conversations == [(c["id"], "Greetings in 中文", "Be brief.", json.dumps(c["settings"]))]
    assert messages == [
        (c["id"], 0, "user", "你好，世界", None),
        (c["id"], 1, "assistant", "Hello! 👋", json.dumps(stats)),
    ]
    got = store.get(c["id"])
    assert [m["content"] for m in got["messages"]] == ["你好，世界", "Hello! 👋"]
    assert got["messages"][1]["stats"] == stats

    store.delete(c["id"])
    assert read_db(tmp_path / "data" / DB_NAME)[:2] == ([], [])
    with pytest.raises(ConversationNotFound):
        store.get(c["id"])


def test_put_messages_replaces_the_tail(store):
    c = store.create()
    msgs = [{"role": r, "content": f"m{i}"} for i, r in enumerate(["user", "assistant", "user", "assistant"])]
    store.put_messages(c["id"], 0, msgs)
    edited = store.put_messages(c["id"], 2, [{"role": "user", "content": "edited"}])  # edit-and-resend
    assert [m["content"] for m in edited["messages"]] == ["m0", "m1", "edited"]
    cut = store.put_messages(c["id"], 1, [])  # regenerate drops the old reply
    assert [m["content"] for m in cut["messages"]] == ["m0"]
    with pytest.raises(CamelidError, match="past the end"):
        store.put_messages(c["id"], 5, [{"role": "user", "content": "x"}])


def test_list_is_most_recent_first_and_survives_reopening(tmp_path):
    first = ConversationStore(tmp_path)
    a = first.create(title="a")
    b = first.create(title="b")
    first.put_messages(a["id"], 0, [{"role": "user", "content": "newer"}])
    first.close()
    again = ConversationStore(tmp_path)
    assert [c["title"] for c in again.list_conversations()] == ["a", "b"]
    assert again.get(a["id"])["messages"][0]["content"] == "newer"
    assert again.get(b["id"])["messages"] == []
    again.close()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s, i: s.create(title=""), "title"),
        (lambda s, i: s.create(title="x" * 201), "title"),
        (lambda s, i: s.create(title=5), "title"),
        (lambda s, i: s.create(system_prompt=None), "system prompt"),
        (lambda s, i: s.create(settings={"temperature": -1}), "temperature"),
        (lambda s, i: s.create(settings={"temperature": float("nan")}), "temperature"),
        (lambda s, i: s.create(settings={"top_p": "0.5"}), "top_p"),
        (lambda s, i: s.create(settings={"max_tokens": 0}), "max_tokens"),
        (lambda s, i: s.create(settings={"max_tokens": 1.5}), "max_tokens"),
        (lambda s, i: s.create(settings={"max_tokens": True}), "max_tokens"),
        (lambda s, i: s.create(settings={"seed": 1}), "unknown setting"),
        (lambda s, i: s.create(settings=[1]), "settings"),
        (lambda s, i: s.update(i, title=" \n "), "title"),
        (lambda s, i: s.put_messages(i, 0, [{"role": "system", "content": "x"}]), "role"),
        (lambda s, i: s.put_messages(i, 0, [{"role": "user", "content": 3}]), "content"),
        (lambda s, i: s.put_messages(i, 0, [{"role": "user", "content": "x", "extra": 1}]), "object"),
        (lambda s, i: s.put_messages(i, 0, [{"role": "user", "content": "x", "stats": [1]}]), "stats"),
        (lambda s, i: s.put_messages(i, 0, [{"role": "user", "content": "x", "stats": {"r": float("inf")}}]), "finite"),
        (lambda s, i: s.put_messages(i, 0, [{"role": "user", "content": "x", "stats": {"k": "v" * 5000}}]), "stats"),
        (lambda s, i: s.put_messages(i, -1, []), "start"),
        (lambda s, i: s.put_messages(i, 0, "not a list"), "list"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(store, call, message):
    c = store.create(title="keep")
    store.put_messages(c["id"], 0, [{"role": "user", "content": "kept"}])
    with pytest.raises(CamelidError, match=message):
        call(store, c["id"])
    assert store.list_conversations() == [{k: v for k, v in store.get(c["id"]).items() if k != "messages"}]
    assert store.get(c["id"])["messages"] == [{"role": "user", "content": "kept", "stats": None}]


@pytest.mark.parametrize(
    "bad_id", ["../../etc/passwd", "/etc/passwd", "0" * 31, "0" * 33, "A" * 32, "", None, 7, "x' OR '1'='1"]
)
def test_ids_never_name_anything_but_a_row(store, bad_id):
    store.create()
    for call in (store.get, store.delete, lambda i: store.update(i, title="t"), lambda i: store.put_messages(i, 0, [])):
        with pytest.raises(ConversationNotFound):
            call(bad_id)
    assert len(store.list_conversations()) == 1


def test_only_files_in_the_data_dir(tmp_path, monkeypatch):
    data, elsewhere = tmp_path / "nested" / "data", tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = ConversationStore(data)
    c = s.create(title="../../../escape/..\\x", system_prompt="/etc/passwd")
    s.put_messages(c["id"], 0, [{"role": "user", "content": "../" * 50}])
    s.close()
    assert {p.name for p in tmp_path.rglob("*") if p.is_file()} <= {DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"}
    assert all(p.parent == data for p in tmp_path.rglob("*") if p.is_file())


def test_unusable_data_dir_is_a_clear_error(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(CamelidError, match="is a file"):
        ConversationStore(a_file)
    with pytest.raises(CamelidError, match="data-dir"):
        ConversationStore(a_file / "below")


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb", "\ud83d"])
def test_lone_surrogates_are_refused(store, text):
    c = store.create(title="keep")
    for call in (lambda: store.create(title=text), lambda: store.create(system_prompt=text),
                 lambda: store.update(c["id"], title=text),
                 lambda: store.put_messages(c["id"], 0, [{"role": "user", "content": text}]),
                 lambda: store.put_messages(c["id"], 0, [{"role": "user", "content": "x", "stats": {text: 1}}]),
                 lambda: store.put_messages(c["id"], 0, [{"role": "user", "content": "x", "stats": {"k": [text]}}])):
        with pytest.raises(CamelidError, match="surrogate"):
            call()
    assert [x["title"] for x in store.list_conversations()] == ["keep"] and store.get(c["id"])["messages"] == []


@pytest.mark.parametrize("damage", ["random", "pages", "truncated"])
def test_corrupt_database_says_so_and_where(tmp_path, damage):
    s = ConversationStore(tmp_path)
    for i in range(100):
        c = s.create(title=f"t{i}")
        s.put_messages(c["id"], 0, [{"role": "user", "content": "x" * 2000}])
    s.close()
    path = tmp_path / DB_NAME
    data = bytearray(path.read_bytes())
    rng = random.Random(damage)
    if damage == "random":
        data = bytearray(rng.randbytes(len(data)))
    elif damage == "pages":
        data[4096 * 3:4096 * 6] = rng.randbytes(4096 * 3)
    else:
        data = data[:len(data) // 3]
    path.write_bytes(bytes(data))
    with pytest.raises(CamelidError) as caught:
        ConversationStore(tmp_path)
    message = str(caught.value)
    assert f"conversation store {path} is corrupt" in message and "delete it" in message and "\n" not in message
    assert "writable" not in message


WRITER = """
import itertools, sys, types
# The store needs nothing of the engine: skip camelid/__init__.py (its imports take a second per child).
package = types.ModuleType("camelid")
package.__path__ = [sys.argv[1]]
sys.modules["camelid"] = package
from camelid.chat.store import ConversationStore

store = ConversationStore(sys.argv[2])
print("ready", flush=True)
for i in itertools.count(int(sys.argv[3])):
    c = store.create(title=f"conversation {i}")
    print("created", i, c["id"], flush=True)
    store.put_messages(c["id"], 0, [{"role": "user", "content": f"question {i} " + "x" * (i % 40) * 100},
                                    {"role": "assistant", "content": f"answer {i} 你好", "stats": {"n": i}}])
    print("messages", i, c["id"], flush=True)
    store.update(c["id"], title=f"renamed {i}")
    print("renamed", i, c["id"], flush=True)
    if i % 4 == 3:
        store.delete(c["id"])
        print("deleted", i, c["id"], flush=True)
"""


def expected_messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"question {i} " + "x" * (i % 40) * 100, "stats": None},
            {"role": "assistant", "content": f"answer {i} 你好", "stats": {"n": i}}]


def test_kill_9_loses_no_acknowledged_write(tmp_path):
    """A writer process is killed with SIGKILL ten times at random moments: every write it reported
    done is on disk and whole, and a write it had not reported is either all there or not at all."""
    rng = random.Random(9)
    acks: list[tuple[str, int, str]] = []
    next_i = 0
    for _ in range(10):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(Path(camelid_package_dir())), str(tmp_path), str(next_i)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "ready\n"
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(child.stdout))
        reader.start()
        time.sleep(rng.uniform(0.05, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait()
        reader.join()
        assert child.returncode == -signal.SIGKILL
        done = [line.split() for line in lines if line.endswith("\n")]
        acks += [(op, int(i), cid) for op, i, cid in done]
        next_i = max([int(i) for _, i, _ in done], default=next_i) + 1

    store = ConversationStore(tmp_path)
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    present = {c["id"]: c for c in store.list_conversations()}
    by_id: dict[str, dict[str, int]] = {}
    for op, i, cid in acks:
        by_id.setdefault(cid, {})[op] = i
    assert sum(len(ops) for ops in by_id.values()) == len(acks) > 100
    for cid, ops in by_id.items():
        i = ops["created"]
        if "deleted" in ops:
            assert cid not in present
            continue
        if i % 4 == 3 and cid not in present:
            continue  # deleted, and killed before it said so
        conversation = store.get(cid)
        if "renamed" in ops:
            assert conversation["title"] == f"renamed {i}"
        else:
            assert conversation["title"] in (f"conversation {i}", f"renamed {i}")
        if "messages" in ops:
            assert conversation["messages"] == expected_messages(i)
        else:
            assert conversation["messages"] in ([], expected_messages(i))
    for cid in set(present) - set(by_id):  # created, and killed before it said so
        conversation = store.get(cid)
        i = int(conversation["title"].split()[-1])
        assert conversation["messages"] in ([], expected_messages(i))
    store.close()
    suite_report.report(f"conversation store: 10 kill -9s during {len(acks)} acknowledged writes; none lost or half-applied")


def camelid_package_dir() -> Path:
    import camelid

    return Path(camelid.__file__).parent
