"""The web chat page: `/`, its static files, and a JSON API for the conversations it keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict

from camelid.chat.store import ConversationNotFound, ConversationStore
from camelid.errors import CamelidError

STATIC_DIR = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
# Model output is sanitized before it reaches the DOM; this policy is the second line: no inline
# script or handler runs and nothing loads from anywhere but this server.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: str
    content: str
    stats: dict[str, Any] | None = None


class ConversationIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    title: str | None = None
    system_prompt: str | None = None
    settings: dict[str, Any] | None = None


class MessagesIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    start: int
    messages: list[Message]


def _error(status: int, message: str) -> JSONResponse:
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status_code=status)


def _answer(action, status: int = 200):
    try:
        result = action()
    except ConversationNotFound as e:
        return _error(404, str(e))
    except CamelidError as e:
        return _error(400, str(e))
    return JSONResponse(result, status_code=status)


def _static_files() -> dict[str, Path]:
    """Every file under static/, by its path relative to it: the only files the page can ask for."""
    return {p.relative_to(STATIC_DIR).as_posix(): p for p in sorted(STATIC_DIR.rglob("*")) if p.is_file()}


def make_web_router(data_dir: Path) -> APIRouter:
    """The chat page at `/`, its files under `/static/`, and `/api/conversations` backed by a
    ConversationStore in data_dir (created if missing; a CamelidError if it cannot be used)."""
    store = ConversationStore(data_dir)
    files = _static_files()
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def page() -> Response:
        return FileResponse(files["index.html"], media_type="text/html", headers=PAGE_HEADERS)

    @router.get("/static/{name:path}", include_in_schema=False)
    def static(name: str) -> Response:
        path = files.get(name)
        if path is None:
            return _error(404, f"no static file {name!r}.")
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix, "text/plain"), headers=PAGE_HEADERS)

    @router.get("/api/conversations", tags=["conversations"])
    def list_conversations():
        """All conversations, most recently updated first (without messages)."""
        return _answer(lambda: {"object": "list", "data": store.list_conversations()})

    @router.post("/api/conversations", tags=["conversations"], status_code=201)
    def create_conversation(body: ConversationIn | None = None):
        """A new empty conversation; title, system_prompt and settings are optional."""
        fields = body.model_dump(exclude_none=True) if body else {}
        return _answer(lambda: store.create(**fields), status=201)

    @router.get("/api/conversations/{conversation_id}", tags=["conversations"])
    def get_conversation(conversation_id: str):
        """A conversation with its messages."""
        return _answer(lambda: store.get(conversation_id))

    @router.patch("/api/conversations/{conversation_id}", tags=["conversations"])
    def update_conversation(conversation_id: str, body: ConversationIn):
        """Rename, or change the system prompt or sampling settings (temperature, top_p, max_tokens)."""
        return _answer(lambda: store.update(conversation_id, **body.model_dump(exclude_none=True)))

    @router.delete("/api/conversations/{conversation_id}", tags=["conversations"])
    def delete_conversation(conversation_id: str):
        """Delete a conversation and its messages."""
        return _answer(lambda: store.delete(conversation_id) or {"id": conversation_id, "deleted": True})

    @router.put("/api/conversations/{conversation_id}/messages", tags=["conversations"])
    def put_messages(conversation_id: str, body: MessagesIn):
        """Replace the messages from index `start` on (start = message count appends; [] truncates)."""
        messages = [m.model_dump() for m in body.messages]
        return _answer(lambda: store.put_messages(conversation_id, body.start, messages))

    return router
