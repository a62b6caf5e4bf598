"""`camelid serve --ray`: two replicas (one thread each) on a local Ray cluster that the server starts,
behind one endpoint, driven with the official openai client.

Sixteen concurrent requests all answer what a plain `camelid serve` answers; a conversation's second
turn reaches the replica that holds its first (cached_tokens > 0); a replica killed midway ends the
requests it was serving with an error, never a hang, later requests succeed, and Ray starts a new
replica. The model is Gemma 3 270M Q4_K_M. No test measures time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from model_files import gemma_path
from server_process import poll, serve

MODEL = "gemma-3-270m-q4_k_m"
N_TOKENS = 12
SUBJECTS = ["llamas", "alpacas", "the moon", "volcanoes", "rivers", "bread", "chess", "music",
            "羊驼", "长城", "the sea", "bees", "trains", "winter", "paper", "clocks"]
REPLICA = "x-camelid-replica"


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory):
    yield from serve(tmp_path_factory, "--ray", "--replicas", "2", "-m", str(gemma_path()), "-c", "2048", "-np", "4")


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory):
    yield from serve(tmp_path_factory, "-m", str(gemma_path()), "-c", "2048", "-np", "4")


def ask(client, subject: str) -> tuple[str, str]:
    """A greedy chat reply about subject, and the replica that gave it."""
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=N_TOKENS, temperature=0, extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": f"Tell me one thing about {subject}."}])
    return raw.parse().choices[0].message.content, raw.headers.get(REPLICA, "")


def test_sixteen_concurrent_requests_equal_one_plain_server(ray_server, plain_server):
    with ThreadPoolExecutor(16) as pool:
        on_ray = list(pool.map(lambda s: ask(ray_server.openai(), s), SUBJECTS))
    plain = [ask(plain_server.openai(), s)[0] for s in SUBJECTS]
    assert [text for text, _ in on_ray] == plain
    assert len({replica for _, replica in on_ray}) == 2  # both replicas served some


def test_a_conversation_returns_to_the_replica_that_holds_it(ray_server):
    client = ray_server.openai()
    for subject in SUBJECTS[:4]:
        history = [{"role": "user", "content": f"Tell me one thing about {subject}."}]
        first = client.chat.completions.with_raw_response.create(model=MODEL, max_tokens=N_TOKENS, temperature=0, messages=history)
        history.append({"role": "assistant", "content": first.parse().choices[0].message.content})
        history.append({"role": "user", "content": "And one more thing, in a short sentence of your own words?"})
        second = client.chat.completions.with_raw_response.create(model=MODEL, max_tokens=4, temperature=0, messages=history)
        assert second.headers[REPLICA] == first.headers[REPLICA], subject
        assert second.parse().usage.prompt_tokens_details.cached_tokens > 0, subject


def stream_completion(url: str, prompt: str, started: threading.Event, out: dict) -> None:
    """One streamed completion of 200 tokens: its replica, its events, and how it ended."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 200, "temperature": 0, "stream": True, "ignore_eos": True}
    try:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as response:
            out["replica"] = response.headers.get(REPLICA)
            events = []
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    started.set()
            out["events"] = events
    except httpx.HTTPError as exc:  # a dropped connection is a clean end too; a hang is not
        out["error"] = exc
    finally:
        started.set()


def test_a_killed_replica_fails_its_requests_cleanly_and_ray_replaces_it(ray_server):
    outs = [{} for _ in range(4)]
    started = [threading.Event() for _ in outs]
    threads = [threading.Thread(target=stream_completion, args=(ray_server.url, f"Once upon a time, {s} said", e, o))
               for s, e, o in zip(SUBJECTS, started, outs)]
    for t in threads:
        t.start()
    for e in started:
        assert e.wait(120)
    victim = next(o["replica"] for o in outs if o.get("replica"))
    os.kill(int(victim), signal.SIGKILL)
    for t in threads:
        t.join(150)
        assert not t.is_alive(), "a request hung after its replica was killed"
    for out in outs:
        if out.get("replica") == victim:
            assert "error" in out or any('"error"' in e for e in out["events"]), out
            assert "[DONE]" not in out.get("events", [])
        else:
            assert out["events"][-1] == "[DONE]", out

    client = ray_server.openai()
    for subject in SUBJECTS[:4]:  # later requests succeed (on the surviving replica, or on a new one)
        assert ask(client, subject)[0]

    def two_live_replicas():
        with ThreadPoolExecutor(8) as pool:
            replicas = {r for _, r in pool.map(lambda s: ask(ray_server.openai(), s), SUBJECTS[:8])}
        return len(replicas - {victim}) == 2

    poll(two_live_replicas, timeout=240, interval=2)


def test_only_the_ray_module_imports_ray():
    root = os.path.join(os.path.dirname(__file__), "..", "camelid")
    importers = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    text = f.read()
                if "import ray" in text or "from ray" in text:
                    importers.append(os.path.relpath(os.path.join(folder, name), root))
    assert importers == ["ray_serve.py"]


def test_the_routing_text_is_the_conversation_so_far():
    from camelid.ray_serve import routing_text

    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    second = first + [{"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "How are you?"}]
    text_1 = routing_text("/v1/chat/completions", json.dumps({"messages": first}).encode())
    text_2 = routing_text("/api/chat", json.dumps({"messages": second}).encode())
    assert text_1 and text_2.startswith(text_1) and "Hi" in text_1
    assert routing_text("/v1/completions", json.dumps({"prompt": ["Once upon"]}).encode()) == "Once upon"
    assert routing_text("/api/generate", json.dumps({"prompt": "Why?", "system": "Be kind."}).encode()) == "Be kind.Why?"
    assert routing_text("/v1/completions", b"{not json") == routing_text("/health", b"") == ""


def test_the_kuberay_manifest_builds_the_application():
    import yaml

    from camelid.ray_serve import app_builder

    with open(os.path.join(os.path.dirname(__file__), "..", "deploy", "kuberay.yaml"), encoding="utf-8") as f:
        manifest = yaml.safe_load(f)
    [application] = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"]
    assert application["import_path"] == "camelid.ray_serve:app_builder"
    gateway = app_builder(application["args"])._bound_deployment
    replica = gateway.init_args[0]._bound_deployment
    assert replica.ray_actor_options["num_cpus"] == application["args"]["threads"]
    scaling = replica._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (application["args"]["min_replicas"], application["args"]["max_replicas"])


@pytest.mark.parametrize("flags, message", [
    (["--replicas", "2"], "need --ray"),
    (["--ray", "--min-replicas", "3", "--max-replicas", "2"], "--min-replicas <= --max-replicas"),
    (["--ray", "--replicas", "2", "--max-replicas", "3"], "either --replicas or"),
])
def test_replica_flags_that_cannot_work_are_refused(tmp_path, flags, message):
    result = subprocess.run([sys.executable, "-m", "camelid", "serve", "--data-dir", str(tmp_path), *flags],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_autoscaling_adds_a_replica_under_load(tmp_path_factory):
    """--min-replicas 1 --max-replicas 2 with one slot each: six long streams keep five requests
    waiting on the one replica, more than its target of one in flight, and Ray starts the second,
    which then gets the requests (here /metrics) that do not follow a conversation."""
    server_gen = serve(tmp_path_factory, "--ray", "--min-replicas", "1", "--max-replicas", "2", "-m", str(gemma_path()),
                       "-c", "512", "-np", "1")
    server = next(server_gen)
    try:
        outs = [{} for _ in range(6)]
        threads = [threading.Thread(target=stream_completion, args=(server.url, f"Once upon a time, {s} said", threading.Event(), o))
                   for s, o in zip(SUBJECTS, outs)]
        for t in threads:
            t.start()
        replicas = set()

        def second_replica():  # /metrics goes to the least loaded replica: the new one, once it runs
            replicas.add(httpx.get(server.url + "/metrics", timeout=60).headers[REPLICA])
            return len(replicas) == 2

        poll(second_replica, timeout=240, interval=1)
        for t in threads:
            t.join(300)
        assert all(o["events"][-1] == "[DONE]" for o in outs), outs
    finally:
        server_gen.close()
