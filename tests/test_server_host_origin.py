"""DNS rebinding and cross-site requests: the server answers only its own Host, and changes nothing
for a foreign page's Origin.

A web page on evil.example whose name is made to resolve to 127.0.0.1 reaches the server with
`Host: evil.example:PORT`; every route must refuse it (421) before doing anything. A page on any
other origin can still send a POST (a form, a no-cors fetch): with a foreign `Origin` header it must
be refused (403). Same-origin requests from the web page, and clients that send no Origin (curl,
the openai client), keep working. The routes are read from the app's router, so a new route is
covered without editing this file.
"""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest
from fastapi.testclient import TestClient
from server_process import ROOT, ServerProcess
from tiny_gguf import write_tiny_model

import camelid
from camelid.server.app import create_app
from camelid.server.guard import OLLAMA_PATHS
from camelid.server.host_check import HostCheck

PORT = 8080
OURS = f"http://127.0.0.1:{PORT}"
FOREIGN_HOSTS = ["evil.example", f"evil.example:{PORT}", f"127.0.0.1.evil.example:{PORT}", f"127.0.0.1:{PORT + 1}",
                 f"localhost.:{PORT}", "", "[::1", f"::1:{PORT}"]
FOREIGN_ORIGINS = ["http://evil.example", f"http://evil.example:{PORT}", "https://evil.example", "null",
                   f"http://127.0.0.1:{PORT + 1}", f"http://localhost.evil.example:{PORT}"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    write_tiny_model(path, "llama")
    return path


@pytest.fixture(scope="module")
def app(tiny, tmp_path_factory):
    model = camelid.load(tiny, show_progress=False)
    return create_app(model, data_dir=tmp_path_factory.mktemp("data"), hosts=HostCheck.for_address("127.0.0.1", PORT))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url=OURS, raise_server_exceptions=False) as c:
        yield c


def every_route(app) -> list[tuple[str, str]]:
    """(method, concrete path) for each route of the app, path parameters filled with a made-up id."""
    out = []

    def walk(routes, prefix: str) -> None:
        for route in routes:
            if hasattr(route, "original_router"):  # a router included with app.include_router
                walk(route.original_router.routes, prefix + route.include_context.prefix)
                continue
            path = re.sub(r"\{[^}]+\}", "x", prefix + route.path)
            for method in sorted(route.methods):
                out.append((method, path))

    walk(app.routes, "")
    return out


def assert_error_shape(response: httpx.Response, status: int) -> dict:
    """OpenAI's error object; on Ollama's routes, Ollama's {"error": "message"} (returned as {"message", "code": None})."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    error = response.json()["error"]
    if response.request.url.path in OLLAMA_PATHS:
        assert isinstance(error, str) and error
        return {"message": error, "code": None}
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def test_the_router_has_the_routes_this_test_is_about(app):
    routes = every_route(app)
    for expected in [("GET", "/"), ("GET", "/static/x"), ("GET", "/health"), ("GET", "/v1/models"),
                     ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/api/conversations"),
                     ("POST", "/api/conversations"), ("DELETE", "/api/conversations/x"), ("GET", "/openapi.json")]:
        assert expected in routes


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_foreign_host_is_refused_on_every_route(app, client, host):
    for method, path in every_route(app):
        response = client.request(method, path, headers={"Host": host}, json={} if method != "GET" else None)
        if method == "HEAD":
            assert response.status_code == 421, path
            continue
        error = assert_error_shape(response, 421)
        assert error["code"] in ("host_not_allowed", None) and "--allowed-host" in error["message"], path


def test_own_host_names_reach_every_route(app, client):
    for host in [f"127.0.0.1:{PORT}", f"localhost:{PORT}", f"LocalHost:{PORT}", f"[::1]:{PORT}"]:
        for method, path in every_route(app):
            if method == "GET":
                response = client.request(method, path, headers={"Host": host})
                assert response.status_code not in (403, 421), (host, path, response.text[:200])
    assert client.get("/health", headers={"Host": f"localhost:{PORT}"}).json() == {"status": "ok"}


@pytest.mark.parametrize("origin", FOREIGN_ORIGINS)
def test_foreign_origin_changes_nothing(app, client, origin):
    before = client.get("/api/conversations").json()["data"]
    cid = client.post("/api/conversations", json={"title": "mine"}).json()["id"]
    headers = {"Origin": origin}
    attempts = [
        client.post("/api/conversations", json={"title": "theirs"}, headers=headers),
        client.patch(f"/api/conversations/{cid}", json={"title": "theirs"}, headers=headers),
        client.put(f"/api/conversations/{cid}/messages", json={"start": 0, "messages": [{"role": "user", "content": "x"}]},
                   headers=headers),
        client.delete(f"/api/conversations/{cid}", headers=headers),
        client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1}, headers=headers),
        client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, headers=headers),
        client.post("/tokenize", json={"content": "hi"}, headers=headers),
        client.post("/api/chat", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, headers=headers),
    ]
    for response in attempts:
        error = assert_error_shape(response, 403)
        assert error["code"] in ("origin_not_allowed", None) and "only this server's own page" in error["message"]
    after = client.get(f"/api/conversations/{cid}").json()
    assert after["title"] == "mine" and after["messages"] == []
    assert len(client.get("/api/conversations").json()["data"]) == len(before) + 1
    assert client.delete(f"/api/conversations/{cid}").status_code == 200


def test_same_origin_and_no_origin_still_work(client):
    for headers in [{}, {"Origin": OURS}, {"Origin": f"http://localhost:{PORT}"}, {"Origin": f"http://[::1]:{PORT}"}]:
        created = client.post("/api/conversations", json={"title": "ok"}, headers=headers)
        assert created.status_code == 201, created.text
        cid = created.json()["id"]
        assert client.put(f"/api/conversations/{cid}/messages", headers=headers,
                          json={"start": 0, "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
        assert client.delete(f"/api/conversations/{cid}", headers=headers).status_code == 200
        reply = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1, "temperature": 0}, headers=headers)
        assert reply.status_code == 200, reply.text


def test_no_cors_headers_for_a_foreign_page(client):
    response = client.get("/v1/models", headers={"Origin": "http://evil.example"})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    preflight = client.options("/v1/completions", headers={"Origin": "http://evil.example",
                                                           "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_host_check_for_each_bind_address():
    everywhere = HostCheck.for_address("0.0.0.0", PORT, ["myserver.lan", "other.lan:9000"])
    assert everywhere.allows_host(f"192.168.1.5:{PORT}") and everywhere.allows_host(f"localhost:{PORT}")
    assert everywhere.allows_host("myserver.lan") and everywhere.allows_host(f"myserver.lan:{PORT}")
    assert everywhere.allows_host("other.lan:9000") and not everywhere.allows_host(f"other.lan:{PORT}")
    assert not everywhere.allows_host(f"evil.example:{PORT}") and not everywhere.allows_host("192.168.1.5:1")
    assert everywhere.allows_origin("http://myserver.lan", "myserver.lan")
    assert not everywhere.allows_origin("http://evil.example", "myserver.lan")
    one = HostCheck.for_address("192.168.1.5", PORT)
    assert one.allows_host(f"192.168.1.5:{PORT}") and not one.allows_host(f"10.0.0.1:{PORT}")
    assert not one.allows_host(f"localhost:{PORT}")
    v6 = HostCheck.for_address("::1", PORT)
    assert v6.allows_host(f"[::1]:{PORT}") and v6.allows_host(f"127.0.0.1:{PORT}")
    off = HostCheck.for_address("127.0.0.1", PORT, ["*"])
    assert off.disabled and off.allows_host(f"evil.example:{PORT}")
    assert not off.allows_origin("http://evil.example", f"127.0.0.1:{PORT}")


def test_default_app_answers_only_loopback_names(tiny, tmp_path):
    model = camelid.load(tiny, show_progress=False)
    with TestClient(create_app(model), base_url="http://localhost:5000") as c:
        assert c.get("/health").status_code == 200
        assert c.get("/health", headers={"Host": "evil.example:5000"}).status_code == 421


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("serve"), "-m", str(tiny))
    yield s
    s.close()


def test_real_server_refuses_rebinding_and_foreign_posts(server):
    port = server.port
    assert httpx.get(server.url + "/api/conversations", headers={"Host": f"evil.example:{port}"}).status_code == 421
    assert httpx.get(server.url + "/", headers={"Host": f"evil.example:{port}"}).status_code == 421
    before = server.get("/api/conversations").json()["data"]
    refused = httpx.post(server.url + "/api/conversations", json={}, headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403
    assert server.get("/api/conversations").json()["data"] == before
    assert server.post("/api/conversations", json={}, headers={"Origin": server.url}).status_code == 201
    assert server.get("/", headers={"Host": f"localhost:{port}"}).status_code == 200


def test_real_server_serves_the_openai_client(server):
    client = server.openai()
    model_id = client.models.list().data[0].id
    reply = client.completions.create(model=model_id, prompt="hi", max_tokens=2, temperature=0)
    assert reply.choices[0].text is not None and reply.usage.completion_tokens >= 1


def test_server_on_every_address_allows_named_hosts(tiny, tmp_path):
    s = ServerProcess(tmp_path, "-m", str(tiny), "--host", "0.0.0.0", "--allowed-host", "myserver.lan")
    try:
        assert httpx.get(s.url + "/health", headers={"Host": f"myserver.lan:{s.port}"}).status_code == 200
        assert httpx.get(s.url + "/health", headers={"Host": f"evil.example:{s.port}"}).status_code == 421
        assert s.get("/v1/models").status_code == 200  # by number: 127.0.0.1
    finally:
        s.close()


def test_malformed_allowed_host_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "camelid", "serve", "--port", "0", "--data-dir", str(tmp_path),
                             "--allowed-host", "http://evil.example/"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("camelid: error: --allowed-host"), result.stderr
