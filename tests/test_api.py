"""api.py started as a real server process and called over HTTP: the original POST / contract, bad input,
security and limits. The OpenAI routes are in test_api_openai.py."""

import datetime
import json
import os
import re
import socket
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.slow  # api.py as server processes

MAX_LENGTH = 40
API_KEY = "test-key-123"
BODY_LIMIT = 4000
ALLOWED_ORIGIN = "http://allowed.example"


@pytest.fixture
def server(api_server):
    return api_server


@pytest.fixture(scope="module")
def locked_server(door_checkpoint, script_env):
    """A server with a key (from the environment), CORS for one origin, content logging, one request
    generated at a time, one waiting, and a small body limit."""
    from _doors import ServerProcess, free_port

    env = dict(script_env, CHATGLM_API_KEY=API_KEY)
    args = ["--model", door_checkpoint, "--device", "cpu", "--cors-origin", ALLOWED_ORIGIN, "--log-content",
            "--max-batch-size", "1", "--max-queue", "1", "--max-body-bytes", str(BODY_LIMIT)]
    with ServerProcess("api.py", args, free_port(), env, ready_path="/health") as proc:
        yield proc


def post(server, payload, **kwargs):
    return httpx.post(server.url + "/", json=payload, timeout=120, **kwargs)


def engine_stats(server, **kwargs):
    return httpx.get(server.url + "/health", timeout=30, **kwargs).json()["engine"]


def open_request(server, payload, headers=None, path="/v1/chat/completions"):
    """Send a POST on a raw socket and return the socket: closing it is the client going away."""
    body = json.dumps(payload).encode()
    head = {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": str(len(body)),
            **(headers or {})}
    host, port = server.url.rsplit("/", 1)[1].split(":")
    connection = socket.create_connection((host, int(port)))
    connection.sendall(f"POST {path} HTTP/1.1\r\n".encode() + "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode()
                       + b"\r\n" + body)
    return connection


# runs to the end of the model's context (hundreds of tokens, a second or more) unless cancelled
LONG_REQUEST = {"messages": [{"role": "user", "content": "你好"}], "ignore_eos": True}


def wait_for(condition, timeout=10.0):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_contract_and_second_round(server, door_model):
    tokenizer, model = door_model
    before = datetime.datetime.now().replace(microsecond=0)
    reply = post(server, {"prompt": "你好", "history": [], "max_length": MAX_LENGTH, "temperature": 0})
    after = datetime.datetime.now()
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"response", "history", "status", "time"}
    expected, expected_history = model.chat(tokenizer, "你好", history=[], max_length=MAX_LENGTH, do_sample=False)
    assert body["response"] == expected
    assert body["history"] == [["你好", expected]]
    assert body["status"] == 200
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", body["time"])
    stamp = datetime.datetime.strptime(body["time"], "%Y-%m-%d %H:%M:%S")
    assert before - datetime.timedelta(seconds=1) <= stamp <= after + datetime.timedelta(seconds=1)

    # second round: the history sent back is used and extended
    reply = post(server, {"prompt": "晚上睡不着应该怎么办", "history": body["history"], "max_length": 2 * MAX_LENGTH,
                          "temperature": 0})
    assert reply.status_code == 200
    second = reply.json()
    expected2, _ = model.chat(tokenizer, "晚上睡不着应该怎么办", history=expected_history,
                              max_length=2 * MAX_LENGTH, do_sample=False)
    assert second["response"] == expected2
    assert second["history"] == [["你好", expected], ["晚上睡不着应该怎么办", expected2]]

    # defaults: no history, no sampling settings (a short prompt; the answer is sampled)
    reply = post(server, {"prompt": "hi", "max_length": MAX_LENGTH})
    assert reply.status_code == 200 and reply.json()["history"][0][0] == "hi"


def test_history_longer_than_max_length_drops_the_oldest_rounds(server, door_model):
    tokenizer, model = door_model
    history = [[f"第{i}个问题：今天天气怎么样", f"第{i}个回答：今天晴"] for i in range(200)]
    reply = post(server, {"prompt": "你好", "history": history, "max_length": 120, "temperature": 0})
    assert reply.status_code == 200, reply.text
    expected, _ = model.chat(tokenizer, "你好", history=[tuple(t) for t in history], max_length=120, do_sample=False)
    assert reply.json()["response"] == expected
    assert reply.json()["history"][:200] == history  # the dropped rounds stay in the returned history


def test_logs_hold_no_prompts_unless_asked(server, locked_server):
    marker = "秘密问题一二三"
    assert post(server, {"prompt": marker, "max_length": 24}).status_code == 200
    assert post(locked_server, {"prompt": marker, "max_length": 24},
                headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    # the line is written once the answer has been sent
    assert wait_for(lambda: locked_server.output().count(f"prompt={marker!r}") == 1, 5)
    assert server.output().count("POST / 200") >= 1  # one line per request, without the content
    assert marker not in server.output()


HUGE = "1" + "0" * 400
HUGER = "1" + "0" * 5000
DEEP = "[" * 5000 + "]" * 5000

BAD_REQUESTS = [
    ("not json", b"{prompt: hi", "JSON"),
    ("empty body", b"", "JSON"),
    ("not an object", b'["hi"]', "object"),
    ("null body", b"null", "object"),
    ("missing prompt", {"history": []}, "prompt"),
    ("null prompt", {"prompt": None}, "prompt"),
    ("number prompt", {"prompt": 5}, "prompt"),
    ("history not a list", {"prompt": "hi", "history": "abc"}, "history"),
    ("history item not a pair", {"prompt": "hi", "history": [["q"]]}, "history"),
    ("history item with three parts", {"prompt": "hi", "history": [["q", "a", "b"]]}, "history"),
    ("history item not strings", {"prompt": "hi", "history": [["q", 1]]}, "history"),
    ("history item a string", {"prompt": "hi", "history": ["qa"]}, "history"),
    ("max_length a string", {"prompt": "hi", "max_length": "100"}, "max_length"),
    ("max_length a fraction", {"prompt": "hi", "max_length": 10.5}, "max_length"),
    ("max_length zero", {"prompt": "hi", "max_length": 0}, "max_length"),
    ("max_length negative", {"prompt": "hi", "max_length": -5}, "max_length"),
    ("max_length huge", {"prompt": "hi", "max_length": 10 ** 9}, "max_length"),
    ("max_length boolean", {"prompt": "hi", "max_length": True}, "max_length"),
    ("max_length 400 digits", b'{"prompt": "hi", "max_length": ' + HUGE.encode() + b"}", "max_length"),
    ("max_length 5000 digits", b'{"prompt": "hi", "max_length": ' + HUGER.encode() + b"}", "max_length"),
    ("max_length minus 5000 digits", b'{"prompt": "hi", "max_length": -' + HUGER.encode() + b"}", "max_length"),
    ("top_p a string", {"prompt": "hi", "top_p": "high"}, "top_p"),
    ("top_p above 1", {"prompt": "hi", "top_p": 1.5}, "top_p"),
    ("top_p negative", {"prompt": "hi", "top_p": -0.1}, "top_p"),
    ("top_p 400 digits", b'{"prompt": "hi", "top_p": ' + HUGE.encode() + b"}", "top_p"),
    ("top_p 1e999", b'{"prompt": "hi", "top_p": 1e999}', "top_p"),
    ("temperature a list", {"prompt": "hi", "temperature": [1]}, "temperature"),
    ("temperature negative", {"prompt": "hi", "temperature": -1}, "temperature"),
    ("temperature NaN", b'{"prompt": "hi", "temperature": NaN}', "temperature"),
    ("temperature 5000 digits", b'{"prompt": "hi", "temperature": ' + HUGER.encode() + b"}", "temperature"),
    ("prompt too long for max_length", {"prompt": "你好" * 20, "max_length": 3}, "max_length"),
    ("nested 5000 deep", b'{"prompt": "hi", "history": ' + DEEP.encode() + b"}", "nested"),
    ("nested 40 deep", b'{"prompt": "hi", "history": ' + b"[" * 40 + b"]" * 40 + b"}", "nested"),
    ("lone surrogate in prompt", b'{"prompt": "\\ud800"}', "prompt"),
    ("lone surrogate in history", b'{"prompt": "hi", "history": [["q", "a\\udfff"]]}', "history[0][1]"),
    ("lone surrogate in a key", b'{"prompt": "hi", "\\ud800": 1}', "surrogate"),
    ("invalid UTF-8", b'{"prompt": "\xff\xfe"}', "JSON"),
]


@pytest.mark.parametrize("name,payload,word", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_input_is_a_clear_4xx(server, name, payload, word):
    if isinstance(payload, bytes):
        reply = httpx.post(server.url + "/", content=payload, headers={"Content-Type": "application/json"},
                           timeout=60)
    else:
        reply = post(server, payload)
    assert 400 <= reply.status_code < 500, (reply.status_code, reply.text)
    body = reply.json()
    assert set(body) == {"detail", "status"}
    assert word.lower() in body["detail"].lower()
    assert body["status"] == reply.status_code


def test_content_type_must_be_json(server):
    # what a web page on another site can send without a CORS preflight: it must not make the server generate
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": content_type} if content_type else {}
        before = engine_stats(server)["submitted"]
        reply = httpx.post(server.url + "/", content=b'{"prompt": "hi"}', headers=headers, timeout=30)
        assert reply.status_code == 415 and "application/json" in reply.json()["detail"]
        assert engine_stats(server)["submitted"] == before
    reply = httpx.post(server.url + "/", content=b'{"prompt": "hi", "max_length": 20}',
                       headers={"Content-Type": "application/json; charset=utf-8"}, timeout=60)
    assert reply.status_code == 200


def test_openapi_documents_every_field(server):
    schemas = httpx.get(server.url + "/openapi.json", timeout=30).json()["components"]["schemas"]
    assert set(schemas["ChatRequest"]["properties"]) == {"prompt", "history", "max_length", "top_p", "temperature"}
    assert {"messages", "temperature", "top_p", "max_tokens", "stop", "stream", "n", "tools", "logprobs"} <= \
        set(schemas["ChatCompletionRequest"]["properties"])
    assert set(schemas["ChatResponse"]["properties"]) == {"response", "history", "status", "time", "cut"}


def test_health_reveals_no_paths(server, door_checkpoint):
    body = httpx.get(server.url + "/health", timeout=30).json()
    assert body["status"] == "ok"
    assert os.sep not in json.dumps(body) and door_checkpoint not in json.dumps(body)


def test_no_cors_unless_asked(server):
    preflight = httpx.options(server.url + "/", headers={"Origin": "http://evil.example",
                                                         "Access-Control-Request-Method": "POST"}, timeout=30)
    assert "access-control-allow-origin" not in preflight.headers
    reply = post(server, {"prompt": "hi", "max_length": 20}, headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in reply.headers


# the same concurrent load through each door: POST / and the OpenAI route (that a batched answer equals
# model.chat alone is test_serving.py's test_batched_greedy_answers_equal_chat_alone)
DOORS = {
    "original": ("/", lambda q: {"prompt": q, "history": [], "max_length": 128, "temperature": 5.0},
                 lambda body, q: body["history"][0][0] == q and body["response"] == body["history"][0][1]),
    "openai": ("/v1/chat/completions",
               lambda q: {"messages": [{"role": "user", "content": q}], "max_tokens": 100, "ignore_eos": True},
               lambda body, q: body["choices"][0]["finish_reason"] in ("stop", "length")
               and body["usage"]["completion_tokens"] > 0),
}


@pytest.mark.parametrize("door", sorted(DOORS))
def test_concurrent_chats_are_batched_while_other_requests_are_answered(server, door):
    path, payload, check = DOORS[door]
    results = {}
    before = engine_stats(server)

    def chat(index):
        # answers that run long: a high temperature rarely samples the end-of-answer token (POST /), or
        # ignore_eos (the OpenAI route, whose temperature stops at 2)
        results[index] = httpx.post(server.url + path, json=payload(f"第{index}个问题：你好"), timeout=300)

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    docs_ok = False
    while any(thread.is_alive() for thread in threads):
        health = httpx.get(server.url + "/health", timeout=30)
        assert health.status_code == 200
        if health.json()["queued_requests"] > 0 and not docs_ok:
            docs_ok = httpx.get(server.url + "/docs", timeout=30).status_code == 200
        time.sleep(0.01)
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(8))
    for index, reply in results.items():
        assert reply.status_code == 200, reply.text
        assert check(reply.json(), f"第{index}个问题：你好"), reply.text
    after = engine_stats(server)
    # generated together: one decoding step gave several requests a token each
    steps, tokens = after["steps"] - before["steps"], after["generated_tokens"] - before["generated_tokens"]
    assert steps < tokens / 2, (steps, tokens)


def test_stream_disconnect_cancels_the_request(server):
    before = engine_stats(server)
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**LONG_REQUEST, "stream": True},
                      timeout=60) as reply:
        assert reply.status_code == 200
        lines = reply.iter_lines()
        while next(lines) != "":  # the role chunk
            pass
        next(lines)  # the first text
    # the connection is closed: the engine drops the request at its next step
    assert wait_for(lambda: engine_stats(server)["running"] == 0, 5)
    after = engine_stats(server)
    assert after["finished_cancelled"] == before["finished_cancelled"] + 1


def test_api_key(locked_server):
    url = locked_server.url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY},
                    {"Authorization": b"Bearer " + API_KEY[:-1].encode() + b"\xe9"}):
        for method, path in (("POST", "/"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                             ("GET", "/openapi.json"), ("GET", "/docs")):
            reply = httpx.request(method, url + path, json={"prompt": "hi"}, headers=headers, timeout=30)
            assert reply.status_code == 401, (headers, path)
            assert reply.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in httpx.post(url + "/", json={"prompt": "hi"}, timeout=30).json()["detail"]
    assert httpx.get(url + "/health", timeout=30).status_code == 200
    reply = post(locked_server, {"prompt": "hi", "max_length": 20}, headers={"Authorization": f"Bearer {API_KEY}"})
    assert reply.status_code == 200


def test_cors_for_the_allowed_origin_only(locked_server):
    for origin, allowed in ((ALLOWED_ORIGIN, True), ("http://evil.example", False)):
        preflight = httpx.options(locked_server.url + "/v1/chat/completions", timeout=30, headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert (preflight.headers.get("access-control-allow-origin") == origin) == allowed


def test_body_size_limit(locked_server):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    big = {"prompt": "你好", "history": [["问" * 500, "答" * 500]] * 3}
    reply = post(locked_server, big, headers=auth)
    assert reply.status_code == 413 and str(BODY_LIMIT) in reply.json()["detail"]

    def chunks():  # no Content-Length: the limit holds while reading
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    reply = httpx.post(locked_server.url + "/", content=chunks(), timeout=30,
                       headers={**auth, "Content-Type": "application/json"})
    assert reply.status_code == 413


def test_full_queue_is_503_and_a_queued_client_that_leaves_is_dropped(locked_server):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    stats = lambda: engine_stats(locked_server)  # noqa: E731
    before = stats()
    running = open_request(locked_server, LONG_REQUEST, auth)
    assert wait_for(lambda: stats()["running"] == 1)
    waiting = open_request(locked_server, LONG_REQUEST, auth)  # batch size 1: this one waits
    assert wait_for(lambda: stats()["waiting"] == 1)
    # the queue (1) is full: more are turned away at once
    reply = post(locked_server, {"prompt": "hi"}, headers=auth)
    assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
    assert "busy" in reply.json()["detail"]
    reply = httpx.post(locked_server.url + "/v1/chat/completions", headers=auth, timeout=30,
                       json={"messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 503 and reply.json()["error"]["code"] == 503
    # the waiting client gives up: it leaves the queue, the running one goes on
    waiting.close()
    assert wait_for(lambda: stats()["waiting"] == 0, 5)
    assert stats()["running"] == 1
    running.close()
    assert wait_for(lambda: stats()["running"] == 0, 5)
    assert stats()["finished_cancelled"] == before["finished_cancelled"] + 2
