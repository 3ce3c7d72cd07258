"""`cai serve` as a real server process on 127.0.0.1, and the `openai` backend against it:
the same completions and labels as in process on the same weights; auth, limits, streaming,
batching; retries, backoff and missing options on a scripted transport; the vLLM guard."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

TOKEN = "s3cret-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, body: dict | None = None, token: str | None = TOKEN, raw: bytes | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@contextlib.contextmanager
def serving(model, folder, *extra):
    """A `cai serve` process on a free port; yields its /v1 URL."""
    port = free_port()
    # the server's output goes to a file: an unread pipe fills up and blocks the server
    log = open(folder / "server.log", "w+")
    env = dict(os.environ, CAI_TEST_TOKEN=TOKEN, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "constitutional.cli", "serve", str(model),
                             "--port", str(port), "--dtype", "float32", "--device", "cpu",
                             "--token-env", "CAI_TEST_TOKEN", *extra],
                            env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(log.read())
        try:
            if call(url + "/models")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("server did not start")
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    with serving(tiny_llama, tmp_path_factory.mktemp("serve"), "--max-tokens", "64",
                 "--max-request-bytes", "20000", "--batch-window", "0.2",
                 "--max-logprobs", "512") as url:
        yield url


def http_backend(url: str, monkeypatch, top_logprobs: int = 512):
    from constitutional.config import ModelConfig
    from constitutional.backends import load_backend

    monkeypatch.setenv("CAI_KEY", TOKEN)
    cfg = ModelConfig(name="tiny", backend="openai",
                      server={"base_urls": [url], "api_key_env": "CAI_KEY", "concurrency": 4,
                              "top_logprobs": top_logprobs})
    return load_backend(cfg)


def local_backend(path):
    from constitutional.backends.transformers_backend import TransformersBackend
    from constitutional.config import ModelConfig

    return TransformersBackend.from_config(ModelConfig(name=str(path), dtype="float32",
                                                       device="cpu"), log=lambda m: None)


def test_auth_and_limits(server):
    assert call(server + "/models", token=None)[0] == 401
    assert call(server + "/models", token="wrong")[0] == 401
    status, text = call(server + "/models")
    assert status == 200 and json.loads(text)["data"][0]["object"] == "model"
    too_many = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 65}
    status, text = call(server + "/chat/completions", too_many)
    assert status == 400 and "max_tokens" in text
    big = {"messages": [{"role": "user", "content": "x" * 30000}], "max_tokens": 4}
    assert call(server + "/chat/completions", big)[0] == 413
    assert call(server + "/chat/completions", raw=b"{not json")[0] == 400
    assert call(server + "/completions", {"prompt": "", "max_tokens": 2})[0] == 400


def test_http_generation_equals_in_process(server, tiny_llama, monkeypatch):
    from constitutional.backends.base import Sampling

    remote, local = http_backend(server, monkeypatch), local_backend(tiny_llama)
    chats = [[{"role": "user", "content": "How do I bake bread?"}],
             [{"role": "user", "content": "Name a quick fox."}]]
    for s in (Sampling(n=2, temperature=0.9, top_p=0.95, max_tokens=12, seed=3),
              Sampling(temperature=0.0, max_tokens=10)):
        got = [[c.text for c in cs] for cs in remote.generate(chats, s)]
        want = [[c.text for c in cs] for cs in local.generate(chats, s)]
        assert got == want
    raw = ["Human: How do I bake bread?\n\nAssistant:"]
    s = Sampling(temperature=0.0, max_tokens=8)
    assert remote.generate(raw, s)[0][0].text == local.generate(raw, s)[0][0].text


def test_labels_over_http_agree_with_in_process(server, tiny_llama, monkeypatch):
    from constitutional.comparisons import Comparison
    from constitutional.constitution import load_constitution
    from constitutional.labeling import LabelConfig, Labeler

    _, c = load_constitution("bundled:harmless")
    labeler = Labeler(LabelConfig(principles=3, debias=True), c)
    pairs = [Comparison(f"p{i}", (("user", f"How do I do thing {i}?"),), "Mix flour and water.",
                        "I will not help you.") for i in range(3)]
    remote = http_backend(server, monkeypatch)
    got = labeler.label(remote, pairs)
    want = labeler.label(local_backend(tiny_llama), pairs)
    for g, w in zip(got, want):
        for vg, vw in zip(g["votes"], w["votes"]):
            assert vg["p_first"] == pytest.approx(vw["p_first"], abs=1e-3)
    assert remote.stats["missing_options"] == 0 and remote.stats["retries"] == 0
    # a top-k smaller than the vocabulary of this random model misses letters: counted
    few = http_backend(server, monkeypatch, top_logprobs=2)
    labeler.label(few, pairs[:1])
    assert few.stats["missing_options"] > 0


def test_streaming_and_batching(server):
    body = {"messages": [{"role": "user", "content": "Tell me about bread."}], "max_tokens": 12,
            "temperature": 0}
    _, plain = call(server + "/chat/completions", body)
    text = json.loads(plain)["choices"][0]["message"]["content"]
    _, stream = call(server + "/chat/completions", {**body, "stream": True})
    events = [line[6:] for line in stream.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    deltas = "".join(json.loads(e)["choices"][0]["delta"].get("content", "")
                     for e in events[:-1])
    assert deltas == text
    # eight concurrent requests with the same settings land in fewer engine calls
    before = len(json.loads(call(server + "/stats")[1])["batches"])
    threads = [threading.Thread(target=call, args=(server + "/chat/completions", {
        "messages": [{"role": "user", "content": f"Question {i}?"}], "max_tokens": 4,
        "temperature": 0})) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batches = json.loads(call(server + "/stats")[1])["batches"][before:]
    assert sum(batches) == 8 and max(batches) > 1


# -- the client on a scripted transport ----------------------------------------------------------

def scripted_backend(handler, retries=3, monkeypatch=None):
    import httpx

    from constitutional.backends.openai_compat import OpenAICompatBackend
    from constitutional.config import ServerConfig

    server = ServerConfig(base_urls=["http://a/v1", "http://b/v1"], retries=retries,
                          api_key_env="CAI_KEY")
    return OpenAICompatBackend("m", server, transport=httpx.MockTransport(handler))


def test_retries_backoff_and_round_robin(monkeypatch):
    import httpx

    from constitutional.backends.base import Sampling

    monkeypatch.setenv("CAI_KEY", TOKEN)
    monkeypatch.setattr("asyncio.sleep", _no_sleep)
    seen = []

    def handler(request: httpx.Request):
        seen.append((request.url.host, request.headers.get("authorization")))
        if len(seen) <= 2:
            return httpx.Response(429, json={"error": {"message": "slow down"}})
        return httpx.Response(200, json={"choices": [{"index": 0, "text": " ok",
                                                      "finish_reason": "stop"}]})

    b = scripted_backend(handler)
    assert b.generate(["Hello"], Sampling(max_tokens=4))[0][0].text == " ok"
    assert b.stats["retries"] == 2 and [h for h, _ in seen] == ["a", "b", "a"]
    assert all(auth == f"Bearer {TOKEN}" for _, auth in seen)


def test_persistent_errors_name_the_server_not_the_key(monkeypatch):
    import httpx

    from constitutional.backends.base import Sampling
    from constitutional.backends.openai_compat import ServerError

    monkeypatch.setenv("CAI_KEY", TOKEN)
    monkeypatch.setattr("asyncio.sleep", _no_sleep)
    b = scripted_backend(lambda r: httpx.Response(503), retries=2)
    with pytest.raises(ServerError) as e:
        b.generate(["Hello"], Sampling(max_tokens=4))
    assert "HTTP 503 after 3 attempts" in str(e.value) and TOKEN not in str(e.value)
    bad = scripted_backend(lambda r: httpx.Response(400, json={"error": {"message": "nope"}}))
    with pytest.raises(ServerError, match="HTTP 400: nope"):
        bad.generate(["Hello"], Sampling(max_tokens=4))
    assert bad.stats["retries"] == 0                 # a 4xx is not retried


def test_option_missing_from_top_k_is_counted_not_zero(monkeypatch):
    import httpx

    monkeypatch.setenv("CAI_KEY", TOKEN)
    bodies = []

    def handler(request: httpx.Request):
        bodies.append(json.loads(request.content))
        top = {"A": -0.1, "C": -3.0, "D": -4.0}
        return httpx.Response(200, json={"choices": [{"index": 0, "text": "A", "logprobs": {
            "top_logprobs": [top]}}]})

    b = scripted_backend(handler)
    (a, bb), = b.score_choices(["The answer is:"], [[" (A)", " (B)"]])
    assert bodies[0]["prompt"] == "The answer is: (" and bodies[0]["max_tokens"] == 1
    assert a == -0.1 and bb == -4.0 and b.stats["missing_options"] == 1
    from constitutional.errors import InputError
    with pytest.raises(InputError, match="raw-text prompts"):
        b.score_choices([[{"role": "user", "content": "q"}]], [[" (A)", " (B)"]])


def test_missing_api_key_and_urls_are_clear_errors(monkeypatch):
    from constitutional.backends import load_backend
    from constitutional.config import ModelConfig
    from constitutional.errors import InputError

    monkeypatch.delenv("NOPE_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(InputError, match="NOPE_KEY"):
        load_backend(ModelConfig(backend="openai", server={"base_urls": ["http://x/v1"],
                                                           "api_key_env": "NOPE_KEY"}))
    with pytest.raises(InputError, match="base_urls"):
        load_backend(ModelConfig(backend="openai"))


def test_vllm_backend_import_guard():
    from constitutional.backends import load_backend
    from constitutional.config import ModelConfig
    from constitutional.errors import InputError

    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    cfg = ModelConfig(backend="vllm", server={"tensor_parallel_size": 2})
    with pytest.raises(InputError, match="needs the vllm package"):
        load_backend(cfg)


async def _no_sleep(_seconds):
    return None


# -- client and server fidelity (issue 18) ------------------------------------------------------

def test_token_counts_are_the_servers_usage(server, tiny_llama, monkeypatch):
    from constitutional.backends.base import Sampling

    remote, local = http_backend(server, monkeypatch), local_backend(tiny_llama)
    chats = [[{"role": "user", "content": "How do I bake bread?"}],
             [{"role": "user", "content": "Name a quick fox, please."}]]
    greedy = Sampling(temperature=0.0, max_tokens=10)
    got, want = remote.generate(chats, greedy), local.generate(chats, greedy)
    local_greedy = want[0][0].tokens
    for g, w in zip(got, want):
        assert (g[0].tokens, g[0].prompt_tokens) == (w[0].tokens, w[0].prompt_tokens)
        assert g[0].prompt_tokens > 0 and g[0].tokens > 0
    # with n samples per request the server's total is shared out: the totals agree
    two = Sampling(n=2, temperature=0.9, max_tokens=12, seed=3)
    got, want = remote.generate(chats, two), local.generate(chats, two)
    assert [sum(c.tokens for c in g) for g in got] == [sum(c.tokens for c in w) for w in want]
    _, body = call(server + "/chat/completions", {"messages": chats[0], "max_tokens": 10,
                                                  "temperature": 0})
    assert json.loads(body)["usage"]["completion_tokens"] == local_greedy
    assert remote.stats["no_usage"] == 0


def test_a_busy_server_answers_429_with_retry_after_and_the_client_waits(tiny_llama, tmp_path,
                                                                        monkeypatch):
    from constitutional.backends.base import Sampling

    chats = [[{"role": "user", "content": f"Question {i}?"}] for i in range(4)]
    greedy = Sampling(temperature=0.0, max_tokens=6)
    with serving(tiny_llama, tmp_path, "--max-pending", "1", "--retry-after", "1",
                 "--batch-window", "0.3") as url:
        two = [threading.Thread(target=call, args=(url + "/chat/completions", {
            "messages": chats[0], "max_tokens": 4})) for _ in range(2)]
        statuses = []
        for t in two:
            t.start()
        time.sleep(0.1)      # the first two requests are pending: a third is turned away
        req = urllib.request.Request(url + "/chat/completions", method="POST", data=json.dumps(
            {"messages": chats[0], "max_tokens": 4}).encode(), headers={
            "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=30)
        except urllib.error.HTTPError as e:
            statuses.append((e.code, e.headers.get("Retry-After")))
        for t in two:
            t.join()
        assert statuses == [(429, "1")]
        remote = http_backend(url, monkeypatch)
        t0 = time.time()
        got = remote.generate(chats, greedy)
        elapsed = time.time() - t0
    assert remote.stats["retries"] >= 1
    assert remote.stats["retry_after_s"] == 1.0 * remote.stats["retries"]
    assert elapsed >= 1.0
    want = local_backend(tiny_llama).generate(chats, greedy)
    assert [g[0].text for g in got] == [w[0].text for w in want]


def test_requests_are_validated_top_k_works_and_health_needs_no_token(server):
    msgs = [{"role": "user", "content": "Tell me about bread."}]
    for body, where in (({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
                        ({"messages": msgs, "temperature": "hot"}, "temperature"),
                        ({"messages": msgs, "n": 0}, "n"),
                        ({"messages": []}, "messages"),
                        ({"messages": msgs, "stop": 5}, "stop")):
        status, text = call(server + "/chat/completions", body)
        assert status == 400, (body, text)
        assert json.loads(text)["error"]["message"].startswith(where), text
    # unknown OpenAI fields are ignored; top_k=1 samples the greedy answer
    greedy = json.loads(call(server + "/chat/completions", {
        "messages": msgs, "max_tokens": 8, "temperature": 0})[1])
    top1 = json.loads(call(server + "/chat/completions", {
        "messages": msgs, "max_tokens": 8, "temperature": 1.0, "top_k": 1, "seed": 7,
        "user": "someone", "presence_penalty": 0})[1])
    assert top1["choices"][0]["message"] == greedy["choices"][0]["message"]
    status, text = call(server.removesuffix("/v1") + "/health", token=None)
    assert status == 200 and json.loads(text)["status"] == "ok"
    assert call(server + "/models", token=None)[0] == 401


def test_completions_stream_with_usage(server):
    body = {"prompt": "Human: Tell me about bread.\n\nAssistant:", "max_tokens": 10,
            "temperature": 0}
    plain = json.loads(call(server + "/completions", body)[1])
    _, stream = call(server + "/completions", {**body, "stream": True,
                                               "stream_options": {"include_usage": True}})
    events = [line[6:] for line in stream.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == \
        plain["choices"][0]["text"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_openai_environment_variables_are_the_fallback(monkeypatch):
    import httpx

    from constitutional.backends.base import Sampling
    from constitutional.backends.openai_compat import OpenAICompatBackend
    from constitutional.config import ServerConfig

    seen = []

    def handler(request: httpx.Request):
        seen.append((str(request.url), request.headers.get("authorization")))
        return httpx.Response(200, json={
            "choices": [{"index": 0, "text": " ok then", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})

    monkeypatch.setenv("OPENAI_BASE_URL", "http://env-host:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", TOKEN)
    b = OpenAICompatBackend("m", ServerConfig(), transport=httpx.MockTransport(handler))
    (c,), = b.generate(["Hello"], Sampling(max_tokens=4))
    assert seen == [("http://env-host:9/v1/completions", f"Bearer {TOKEN}")]
    assert (c.tokens, c.prompt_tokens) == (2, 3)
    assert TOKEN not in repr(b.stats)


def test_nested_options_are_refused_over_http(monkeypatch):
    """One token is read per option, so " 1/10" would count the mass of " 10/10" too: the
    judge's ratings are refused before any request, with the way out."""
    from constitutional.errors import InputError
    from constitutional.train.judge_reward import OPTIONS

    monkeypatch.setenv("CAI_KEY", "k")
    sent = []
    b = scripted_backend(lambda r: sent.append(r))
    with pytest.raises(InputError, match="'1' and '10' cannot be told apart over HTTP"):
        b.score_choices(["Rating:"], [list(OPTIONS)])
    assert sent == []


def test_retry_after_and_token_sharing_helpers():
    import email.utils

    from constitutional.backends.openai_compat import retry_after, share

    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after": "100000"}) == 600.0
    assert retry_after({}) is None and retry_after({"retry-after": "soon"}) is None
    later = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.0 <= retry_after({"retry-after": later}) <= 5.0
    assert share(10, [30, 10]) == [8, 2] and share(7, [1, 1, 1]) in ([3, 2, 2], [2, 3, 2],
                                                                     [2, 2, 3])
    assert sum(share(11, [5, 0, 9])) == 11 and share(4, [123]) == [4]
