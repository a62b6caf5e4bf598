"""The server's outermost check on every request, before any route reads it, and its error type.

Guard refuses what no route should see: a foreign Host (421), a foreign Origin on a state-changing
request (403), a body over the size limit (413), a JSON body holding a lone UTF-16 surrogate (400),
and a missing API key (401). It reads the whole body (bounded by the limit) before the app does, and
turns an exception that escapes a route into a 500 in OpenAI's shape without closing the connection,
so the client's next request on it is served.
"""

from __future__ import annotations

import hmac
import logging

from fastapi.responses import JSONResponse

from camelid.server import openai_schema as oai
from camelid.server.host_check import HostCheck
from camelid.server.limits import describe_bytes, lone_surrogate_path
from camelid.server.metrics import Metrics

log = logging.getLogger("camelid.server")

# With --api-key, these paths need "Authorization: Bearer KEY"; /health, /openapi.json, /docs and the
# page's own files stay open.
PROTECTED_PREFIXES = ("/v1/", "/api/", "/tokenize", "/detokenize", "/metrics")
STATE_CHANGING_METHODS = ("POST", "PUT", "PATCH", "DELETE")


class APIError(Exception):
    """An error answered with `status`, OpenAI's error object and, when given, extra headers (Retry-After)."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers


# Ollama's API (camelid.server.ollama): its errors are {"error": "message"}
OLLAMA_PATHS = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/tags", "/api/show", "/api/ps",
                "/api/version")


def error_response(error: APIError, metrics: Metrics, path: str = "") -> JSONResponse:
    """The JSON response of an APIError, counted in the metrics: OpenAI's error object, or Ollama's on its paths."""
    metrics.count_error(error.status)
    body = {"error": error.message} if path in OLLAMA_PATHS else oai.error_body(error.message, error.type, error.param, error.code)
    return JSONResponse(body, status_code=error.status, headers=error.headers)


class Guard:
    """ASGI middleware: the checks above, then the app with the body read once and replayed."""

    def __init__(self, app, api_key: str | None, max_body: int, metrics: Metrics, hosts: HostCheck):
        self.app, self.api_key, self.max_body, self.metrics, self.hosts = app, api_key, max_body, metrics, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        error = self._refusal(scope["method"], scope["path"], headers)
        message = None
        if error is None:
            message, error = await self._read_body(receive)
        if error is not None:
            return await error_response(error, self.metrics, scope["path"])(scope, receive, send)
        pending = [message]

        async def replay():
            return pending.pop() if pending else await receive()

        started = False

        async def tracked_send(event):
            nonlocal started
            started = started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, replay, tracked_send)
        except Exception as exc:
            if started:
                raise
            log.exception("unexpected error in %s %s", scope["method"], scope["path"])
            error = APIError(500, f"internal server error ({type(exc).__name__}); see the server log.", "server_error")
            await error_response(error, self.metrics, scope["path"])(scope, receive, send)

    async def _read_body(self, receive) -> tuple[dict, APIError | None]:
        """The request body as one ASGI message (or the disconnect that cut it short), or the error
        that refuses it: over max_body bytes, or a lone surrogate in its JSON."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message, None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return message, APIError(413, self._too_large(), code="request_too_large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        path = lone_surrogate_path(body) if body else None
        if path is not None:
            return message, APIError(400, f"{path} holds a lone UTF-16 surrogate, which is not valid Unicode; send UTF-8 "
                                          "text (a \\ud800-\\udbff escape must be followed by its \\udc00-\\udfff pair).",
                                     param=None if path == "body" else path, code="invalid_unicode")
        return {"type": "http.request", "body": body, "more_body": False}, None

    def _too_large(self) -> str:
        return (f"the request body is larger than {describe_bytes(self.max_body)}; send a shorter prompt "
                "(or start the server with a larger --max-body-bytes).")

    def _refusal(self, method: str, path: str, headers: dict[str, str]) -> APIError | None:
        host = headers.get("host", "")
        if not self.hosts.allows_host(host):
            return APIError(421, f"this server does not answer to the host {host!r}; it answers {self.hosts.names()} "
                                 "(start it with --allowed-host NAME to add a name).", code="host_not_allowed")
        origin = headers.get("origin")
        if origin is not None and method in STATE_CHANGING_METHODS and not self.hosts.allows_origin(origin, host):
            return APIError(403, f"requests from pages of {origin!r} are refused; only this server's own page may "
                                 "change anything (start it with --allowed-host NAME to add a name).",
                            "permission_error", code="origin_not_allowed")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return APIError(413, self._too_large(), code="request_too_large")
        if self.api_key and path.startswith(PROTECTED_PREFIXES):
            auth = headers.get("authorization", "")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
            if not given:
                return APIError(401, "no API key given; send 'Authorization: Bearer KEY' with the key the server was started with (--api-key).",
                                "authentication_error", code="invalid_api_key")
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return APIError(401, "the API key is wrong; use the key the server was started with (--api-key).",
                                "authentication_error", code="invalid_api_key")
        return None
