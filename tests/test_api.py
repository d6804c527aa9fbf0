"""api.py started as a real server process and called over HTTP."""

import datetime
import re
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.slow  # api.py as a server process


MAX_LENGTH = 40


@pytest.fixture
def server(api_server):
    return api_server


def post(server, payload, **kwargs):
    return httpx.post(server.url + "/", json=payload, timeout=120, **kwargs)


def test_contract_and_second_round(server, door_model):
    tokenizer, model = door_model
    logged_before = server.output().count("prompt='晚上睡不着应该怎么办'")
    before = datetime.datetime.now().replace(microsecond=0)
    reply = post(server, {"prompt": "你好", "history": [], "max_length": MAX_LENGTH, "temperature": 0})
    after = datetime.datetime.now()
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"response", "history", "status", "time"}
    expected, expected_history = model.chat(tokenizer, "你好", history=[], max_length=MAX_LENGTH, do_sample=False)
    assert body["response"] == expected
    assert isinstance(body["response"], str)
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

    # one log line per request
    log = server.output()
    assert log.count("prompt='晚上睡不着应该怎么办'") == logged_before + 1


BAD_REQUESTS = [
    ("not json", b"{prompt: hi", "JSON"),
    ("empty body", b"", "JSON"),
    ("not an object", b'["hi"]', "object"),
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
    ("top_p a string", {"prompt": "hi", "top_p": "high"}, "top_p"),
    ("top_p above 1", {"prompt": "hi", "top_p": 1.5}, "top_p"),
    ("top_p negative", {"prompt": "hi", "top_p": -0.1}, "top_p"),
    ("temperature a list", {"prompt": "hi", "temperature": [1]}, "temperature"),
    ("temperature negative", {"prompt": "hi", "temperature": -1}, "temperature"),
    ("temperature NaN", b'{"prompt": "hi", "temperature": NaN}', "temperature"),
    ("prompt too long for max_length", {"prompt": "你好" * 20, "max_length": 3}, "max_length"),
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
    assert word.lower() in body["detail"].lower()
    assert body["status"] == reply.status_code


def test_concurrent_chats_queue_while_other_requests_stay_fast(server):
    results = {}

    def chat(index):
        reply = httpx.post(server.url + "/", json={"prompt": f"第{index}个问题：你好", "history": [],
                                                   "max_length": 64}, timeout=300)
        results[index] = reply

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    latencies, busy_seen = [], 0
    docs_ok = False
    while any(thread.is_alive() for thread in threads):
        started = time.perf_counter()
        health = httpx.get(server.url + "/health", timeout=30)
        latencies.append(time.perf_counter() - started)
        assert health.status_code == 200
        if health.json()["queued_requests"] > 0:
            busy_seen += 1
            if not docs_ok:
                docs_ok = httpx.get(server.url + "/docs", timeout=30).status_code == 200
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(8))
    for index, reply in results.items():
        assert reply.status_code == 200, reply.text
        assert reply.json()["history"][0][0] == f"第{index}个问题：你好"
    assert busy_seen >= 1, "no GET was answered while answers were being generated"
    assert docs_ok
    assert max(latencies) < 2.0, f"GET /health took {max(latencies):.2f}s during generation"
