"""The SQLite conversation store: CRUD, validation, and that it only ever touches its data directory.

The oracle for what is on disk is Python's sqlite3 module reading the file directly."""

from __future__ import annotations

import json
import sqlite3

import pytest

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
