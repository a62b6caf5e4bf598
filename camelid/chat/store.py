"""Conversations of the web chat page, kept in one SQLite file under the data directory."""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from camelid.errors import CamelidError

DB_NAME = "conversations.sqlite3"
DEFAULT_TITLE = "New chat"
MAX_TITLE = 200  # characters
MAX_SYSTEM_PROMPT = 100_000  # characters
MAX_CONTENT = 1_000_000  # characters of one message
MAX_MESSAGES = 10_000  # messages in one conversation
MAX_STATS_JSON = 4_000  # characters of a message's stats, serialized
ROLES = ("user", "assistant")
# setting name -> (type, lowest, highest): the sampling settings a conversation remembers
SETTINGS = {
    "temperature": (float, 0.0, 2.0),
    "top_p": (float, 0.0, 1.0),
    "max_tokens": (int, 1, 1_000_000),
}
ID_PATTERN = re.compile(r"[0-9a-f]{32}")
_SURROGATE = re.compile("[\ud800-\udfff]")  # lone UTF-16 surrogates: not Unicode text, SQLite cannot store them

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    system_prompt TEXT NOT NULL,
    settings TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    stats TEXT,
    PRIMARY KEY (conversation_id, idx)
);
"""


class ConversationNotFound(CamelidError):
    """No conversation has the id a request named."""


def _check_text(text: str, what: str) -> str:
    if _SURROGATE.search(text):
        raise CamelidError(f"{what} holds a lone UTF-16 surrogate, which is not valid Unicode; send UTF-8 text.")
    return text


def validate_title(title: Any) -> str:
    if not isinstance(title, str):
        raise CamelidError("a conversation title must be a string.")
    _check_text(title, "a conversation title")
    title = " ".join(title.split())
    if not title or len(title) > MAX_TITLE:
        raise CamelidError(f"a conversation title must have 1 to {MAX_TITLE} characters.")
    return title


def validate_system_prompt(text: Any) -> str:
    if not isinstance(text, str) or len(text) > MAX_SYSTEM_PROMPT:
        raise CamelidError(f"a system prompt must be a string of at most {MAX_SYSTEM_PROMPT} characters.")
    return _check_text(text, "a system prompt")


def validate_settings(settings: Any) -> dict[str, float | int]:
    """Sampling settings: a dict with some of temperature [0, 2], top_p [0, 1], max_tokens >= 1."""
    if not isinstance(settings, dict):
        raise CamelidError("settings must be a JSON object.")
    clean: dict[str, float | int] = {}
    for name, value in settings.items():
        if name not in SETTINGS:
            raise CamelidError(f"unknown setting {name!r}; the settings are {', '.join(SETTINGS)}.")
        kind, low, high = SETTINGS[name]
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            ok_type = ok_type and float(value).is_integer()
        if not ok_type or not math.isfinite(value) or not low <= value <= high:
            raise CamelidError(f"setting {name} must be a {kind.__name__} from {low} to {high}, not {value!r}.")
        clean[name] = kind(value)
    return clean


def validate_message(message: Any) -> tuple[str, str, str | None]:
    """A message as (role, content, stats as JSON or None)."""
    if not isinstance(message, dict) or set(message) - {"role", "content", "stats"}:
        raise CamelidError("a message must be an object with role, content and optional stats.")
    role, content, stats = message.get("role"), message.get("content"), message.get("stats")
    if role not in ROLES:
        raise CamelidError(f"a message role must be one of {', '.join(ROLES)}, not {role!r}.")
    if not isinstance(content, str) or len(content) > MAX_CONTENT:
        raise CamelidError(f"a message content must be a string of at most {MAX_CONTENT} characters.")
    _check_text(content, "a message content")
    if stats is None:
        return role, content, None
    if not isinstance(stats, dict):
        raise CamelidError("message stats must be a JSON object or null.")
    try:
        stats_json = json.dumps(stats, allow_nan=False)
    except ValueError:
        raise CamelidError("message stats must hold finite numbers.") from None
    _check_text(json.dumps(stats, ensure_ascii=False), "message stats")
    if len(stats_json) > MAX_STATS_JSON:
        raise CamelidError(f"message stats must be at most {MAX_STATS_JSON} characters of JSON.")
    return role, content, stats_json


def check_id(conversation_id: Any) -> str:
    if not isinstance(conversation_id, str) or not ID_PATTERN.fullmatch(conversation_id):
        raise ConversationNotFound(f"no conversation {conversation_id!r}; list them with GET /api/conversations.")
    return conversation_id


class ConversationStore:
    """CRUD on conversations and their messages in `data_dir/conversations.sqlite3` (WAL mode).

    Ids are made here (random hex), every input is validated, and the only file touched is the
    database in data_dir (with SQLite's -wal and -shm files beside it). Safe to share across threads.
    """

    def __init__(self, data_dir: str | os.PathLike):
        data_dir = Path(data_dir).expanduser()
        if data_dir.exists() and not data_dir.is_dir():
            raise CamelidError(f"the data directory {data_dir} is a file; give a directory (--data-dir).")
        self.path = data_dir / DB_NAME
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise CamelidError(f"cannot open the conversation store in {data_dir}: {e}; choose a writable --data-dir.") from None
        try:
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check(1)")]
            if problems != ["ok"]:
                raise _Corrupt(" ".join(problems).replace("*** in database main ***", "").strip())
            self._db.executescript(SCHEMA)
        except sqlite3.Error as e:
            self._db.close()
            if isinstance(e, _Corrupt) or (getattr(e, "sqlite_errorcode", 0) & 0xFF) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                raise CamelidError(f"the conversation store {self.path} is corrupt ({' '.join(str(e).split())}); "
                                   "move it away or delete it to start fresh.") from None
            raise CamelidError(f"cannot open the conversation store in {data_dir}: {e}; choose a writable --data-dir.") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self):
        return _Transaction(self._db, self._lock)

    def _row(self, conversation_id: str) -> sqlite3.Row:
        row = self._db.execute(
            "SELECT id, title, system_prompt, settings, created, updated FROM conversations WHERE id = ?",
            (check_id(conversation_id),),
        ).fetchone()
        if row is None:
            raise ConversationNotFound(f"no conversation {conversation_id!r}; it may have been deleted.")
        return row

    @staticmethod
    def _summary(row) -> dict[str, Any]:
        id_, title, system_prompt, settings, created, updated = row
        return {"id": id_, "title": title, "system_prompt": system_prompt, "settings": json.loads(settings),
                "created": created, "updated": updated}

    def list_conversations(self) -> list[dict[str, Any]]:
        """All conversations, most recently updated first, without their messages."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, title, system_prompt, settings, created, updated FROM conversations ORDER BY updated DESC, created DESC"
            ).fetchall()
        return [self._summary(r) for r in rows]

    def create(self, title: str = DEFAULT_TITLE, system_prompt: str = "", settings: dict | None = None) -> dict[str, Any]:
        """A new, empty conversation; returns it as `get` would."""
        title = validate_title(title)
        system_prompt = validate_system_prompt(system_prompt)
        settings = validate_settings(settings or {})
        conversation_id = uuid.uuid4().hex
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?)",
                (conversation_id, title, system_prompt, json.dumps(settings), now, now),
            )
        return self.get(conversation_id)

    def get(self, conversation_id: str) -> dict[str, Any]:
        """A conversation with its messages [{role, content, stats}] in order."""
        with self._lock:
            conversation = self._summary(self._row(conversation_id))
            rows = self._db.execute(
                "SELECT role, content, stats FROM messages WHERE conversation_id = ? ORDER BY idx", (conversation_id,)
            ).fetchall()
        conversation["messages"] = [
            {"role": role, "content": content, "stats": json.loads(stats) if stats else None} for role, content, stats in rows
        ]
        return conversation

    def update(self, conversation_id: str, *, title: str | None = None, system_prompt: str | None = None,
               settings: dict | None = None) -> dict[str, Any]:
        """Change the title, system prompt or settings (those given); returns the conversation."""
        changes: dict[str, str] = {}
        if title is not None:
            changes["title"] = validate_title(title)
        if system_prompt is not None:
            changes["system_prompt"] = validate_system_prompt(system_prompt)
        if settings is not None:
            changes["settings"] = json.dumps(validate_settings(settings))
        with self._transaction() as db:
            self._row(conversation_id)
            for column, value in changes.items():
                db.execute(f"UPDATE conversations SET {column} = ? WHERE id = ?", (value, conversation_id))
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (time.time(), conversation_id))
        return self.get(conversation_id)

    def delete(self, conversation_id: str) -> None:
        """Remove a conversation and its messages."""
        with self._transaction() as db:
            self._row(conversation_id)
            db.execute("DELETE FROM messages WHERE conversation_id = ?", (conversation_id,))
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def put_messages(self, conversation_id: str, start: int, messages: list) -> dict[str, Any]:
        """Replace the messages from index `start` on with `messages` (start = the message count appends;
        an empty list truncates); returns the conversation."""
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise CamelidError("start must be a message index, an integer >= 0.")
        if not isinstance(messages, list):
            raise CamelidError("messages must be a list.")
        rows = [validate_message(m) for m in messages]
        with self._transaction() as db:
            self._row(conversation_id)
            (count,) = db.execute("SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (conversation_id,)).fetchone()
            if start > count:
                raise CamelidError(f"start {start} is past the end of the conversation's {count} messages.")
            if start + len(rows) > MAX_MESSAGES:
                raise CamelidError(f"a conversation holds at most {MAX_MESSAGES} messages; start a new one.")
            db.execute("DELETE FROM messages WHERE conversation_id = ? AND idx >= ?", (conversation_id, start))
            db.executemany(
                "INSERT INTO messages VALUES (?, ?, ?, ?, ?)",
                [(conversation_id, start + i, role, content, stats) for i, (role, content, stats) in enumerate(rows)],
            )
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (time.time(), conversation_id))
        return self.get(conversation_id)


class _Corrupt(sqlite3.DatabaseError):
    """PRAGMA quick_check found damage (its findings are the message)."""


class _Transaction:
    """Holds the store's lock for one BEGIN IMMEDIATE .. COMMIT (ROLLBACK on an exception)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock):
        self.db, self.lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.lock.release()
