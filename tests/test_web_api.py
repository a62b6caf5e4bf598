"""The web page's router on its own: the page, its static files, and the conversations API over HTTP
(Starlette's test client against a bare FastAPI app holding only make_web_router)."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from camelid.chat.store import DB_NAME
from camelid.server.web import STATIC_DIR, make_web_router


@pytest.fixture
def client(tmp_path):
    app = FastAPI()
    app.include_router(make_web_router(tmp_path / "data"))
    with TestClient(app) as c:
        yield c


def test_page_and_assets_are_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    for src in ["/static/app.js", "/static/style.css", "/static/vendor/marked/marked.umd.js", "/static/vendor/dompurify/purify.min.js"]:
        assert f'"{src}"' in page.text
        asset = client.get(src)
        assert asset.status_code == 200 and asset.content == (STATIC_DIR / src.removeprefix("/static/")).read_bytes()
    app_js = client.get("/static/app.js")
    assert app_js.headers["content-type"].startswith("text/javascript")
    for module in re.findall(r'from "\./([\w.]+)"', app_js.text):
        assert client.get(f"/static/{module}").status_code == 200
    assert client.get("/static/vendor/marked/LICENSE").status_code == 200
    assert client.get("/static/vendor/dompurify/LICENSE").status_code == 200


@pytest.mark.parametrize(
    "path",
    ["/static/nope.js", "/static/../web.py", "/static/..%2Fweb.py", "/static/%2e%2e/%2e%2e/chat/store.py",
     "/static//etc/passwd", "/static/vendor", "/static/" + DB_NAME],
)
def test_static_serves_only_its_own_files(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert "import" not in response.text and "root:" not in response.text


def test_conversation_lifecycle(client, tmp_path):
    created = client.post("/api/conversations", json={"settings": {"temperature": 0, "max_tokens": 32}})
    assert created.status_code == 201
    c = created.json()
    assert c["title"] == "New chat" and c["settings"] == {"temperature": 0.0, "max_tokens": 32}
    cid = c["id"]

    r = client.put(f"/api/conversations/{cid}/messages", json={"start": 0, "messages": [{"role": "user", "content": "你好"}]})
    assert r.status_code == 200 and r.json()["messages"] == [{"role": "user", "content": "你好", "stats": None}]
    stats = {"completion_tokens": 3, "tokens_per_second": 12.5, "finish_reason": "stop"}
    r = client.put(f"/api/conversations/{cid}/messages",
                   json={"start": 1, "messages": [{"role": "assistant", "content": "<b>hi</b>", "stats": stats}]})
    assert r.json()["messages"][1] == {"role": "assistant", "content": "<b>hi</b>", "stats": stats}

    r = client.patch(f"/api/conversations/{cid}", json={"title": "问候", "system_prompt": "Be brief.", "settings": {"top_p": 0.5}})
    assert r.status_code == 200
    assert (r.json()["title"], r.json()["system_prompt"], r.json()["settings"]) == ("问候", "Be brief.", {"top_p": 0.5})

    listed = client.get("/api/conversations").json()["data"]
    assert [(x["id"], x["title"]) for x in listed] == [(cid, "问候")] and "messages" not in listed[0]
    assert client.get(f"/api/conversations/{cid}").json()["messages"][0]["content"] == "你好"

    with sqlite3.connect(tmp_path / "data" / DB_NAME) as db:  # what is on disk, read independently
        assert db.execute("SELECT title, system_prompt FROM conversations").fetchall() == [("问候", "Be brief.")]
        assert db.execute("SELECT idx, role, content FROM messages").fetchall() == [(0, "user", "你好"), (1, "assistant", "<b>hi</b>")]

    assert client.delete(f"/api/conversations/{cid}").json() == {"id": cid, "deleted": True}
    assert client.get("/api/conversations").json()["data"] == []
    assert client.get(f"/api/conversations/{cid}").status_code == 404


@pytest.mark.parametrize(
    "method, path, body, status, words",
    [
        ("get", "/api/conversations/0123456789abcdef0123456789abcdef", None, 404, "no conversation"),
        ("get", "/api/conversations/..%2F..%2Fetc%2Fpasswd", None, 404, None),
        ("delete", "/api/conversations/nope", None, 404, "no conversation"),
        ("patch", "/api/conversations/{id}", {"title": ""}, 400, "title"),
        ("patch", "/api/conversations/{id}", {"settings": {"temperature": 9}}, 400, "temperature"),
        ("patch", "/api/conversations/{id}", {"settings": {"stop": ["x"]}}, 400, "unknown setting"),
        ("put", "/api/conversations/{id}/messages", {"start": 3, "messages": []}, 400, "past the end"),
        ("put", "/api/conversations/{id}/messages", {"start": 0, "messages": [{"role": "tool", "content": "x"}]}, 400, "role"),
    ],
)
def test_bad_requests_get_an_error_object(client, method, path, body, status, words):
    cid = client.post("/api/conversations").json()["id"]
    kwargs = {"json": body} if body is not None else {}
    response = getattr(client, method)(path.format(id=cid), **kwargs)
    assert response.status_code == status
    if words:
        assert words in response.json()["error"]["message"]
    assert client.get(f"/api/conversations/{cid}").json()["title"] == "New chat"


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("post", "/api/conversations", {"title": "\ud800"}),
        ("post", "/api/conversations", {"system_prompt": "x\udc00"}),
        ("patch", "/api/conversations/{id}", {"title": "a\udbffb"}),
        ("put", "/api/conversations/{id}/messages", {"start": 0, "messages": [{"role": "user", "content": "\ud83d"}]}),
        ("put", "/api/conversations/{id}/messages",
         {"start": 0, "messages": [{"role": "user", "content": "x", "stats": {"note": "\ud800"}}]}),
    ],
)
def test_lone_surrogates_are_400_and_the_next_request_is_served(client, method, path, body):
    cid = client.post("/api/conversations", json={"title": "keep"}).json()["id"]
    response = client.request(method.upper(), path.format(id=cid), content=json.dumps(body),
                              headers={"content-type": "application/json"})
    assert response.status_code == 400 and "surrogate" in response.json()["error"]["message"]
    assert client.get(f"/api/conversations/{cid}").json()["title"] == "keep"
    assert [c["title"] for c in client.get("/api/conversations").json()["data"]] == ["keep"]


@pytest.mark.parametrize(
    "body",
    [{"start": "0", "messages": []}, {"start": 0}, {"start": 0, "messages": [{"role": "user"}]}, {"start": 0, "messages": [], "x": 1}],
)
def test_malformed_bodies_are_4xx(client, body):
    cid = client.post("/api/conversations").json()["id"]
    assert 400 <= client.put(f"/api/conversations/{cid}/messages", json=body).status_code < 500
    assert 400 <= client.post("/api/conversations", content=b"{not json", headers={"content-type": "application/json"}).status_code < 500
    assert client.get(f"/api/conversations/{cid}").json()["messages"] == []
