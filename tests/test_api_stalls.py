"""api.py under hostile clients and restarts, over real sockets and real signals: a history so long that
its tokenizing takes a while, bodies and headers that stall, more connections than allowed, and SIGTERM
while answers are streaming."""

import json
import os
import signal
import socket
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.slow  # api.py as server processes

ROUNDS = 30_000  # enough prompt work that /health is asked many times meanwhile, however fast the workers
TIMEOUT = 1  # --request-timeout of these servers, seconds


def start(door_checkpoint, script_env, *extra):
    from _doors import ServerProcess, free_port

    return ServerProcess("api.py", ["--model", door_checkpoint, "--device", "cpu", *extra], free_port(), script_env,
                         ready_path="/health")


@pytest.fixture(scope="module")
def server(door_checkpoint, script_env):
    with start(door_checkpoint, script_env, "--request-timeout", str(TIMEOUT), "--max-connections", "600") as proc:
        yield proc


def address(server):
    host, port = server.url.rsplit("/", 1)[1].split(":")
    return host, int(port)


def read_until_closed(connection) -> bytes:
    """All the server sends until it closes the connection (a timeout of the socket fails the test)."""
    connection.settimeout(60)
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    return data


def test_a_long_history_does_not_stall_other_requests(server):
    """Tokenizing a 10,000-round history happens off the event loop: /health keeps answering meanwhile."""
    history = [[f"q{i}", f"a{i}"] for i in range(ROUNDS)]
    done = threading.Event()
    replies = []

    def long_request():
        replies.append(httpx.post(server.url + "/", json={"prompt": "hi", "history": history, "max_length": 2048},
                                  timeout=300))
        done.set()

    threading.Thread(target=long_request).start()
    answered_meanwhile = 0
    while not done.is_set():
        assert httpx.get(server.url + "/health", timeout=60).status_code == 200
        answered_meanwhile += not done.is_set()
    assert replies[0].status_code == 200, replies[0].text
    assert replies[0].json()["history"][-1][0] == "hi" and len(replies[0].json()["history"]) == ROUNDS + 1
    # a loop busy tokenizing would hold every /health until it is done: one or two would come back meanwhile
    assert answered_meanwhile >= 5


@pytest.mark.parametrize("sent", [
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{\"pr",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
    b"",
], ids=["stalled body", "stalled headers", "nothing sent"])
def test_a_stalled_request_gets_408_and_is_closed(server, sent):
    with socket.create_connection(address(server)) as connection:
        connection.sendall(sent)
        reply = read_until_closed(connection)
    assert reply.startswith(b"HTTP/1.1 408 "), reply


def test_stalled_connections_do_not_stop_health_or_flood_the_log(server):
    log_before = len(server.output())
    stalled = [socket.create_connection(address(server)) for _ in range(500)]
    try:
        for connection in stalled:
            connection.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
        assert httpx.get(server.url + "/health", timeout=60).status_code == 200
        for connection in stalled:
            assert read_until_closed(connection).startswith(b"HTTP/1.1 408 ")
    finally:
        for connection in stalled:
            connection.close()
    assert httpx.get(server.url + "/health", timeout=60).status_code == 200
    # stalled headers are not requests yet: nothing is logged for them
    assert len(server.output()) - log_before < 1000, server.output()[log_before:]


def test_a_refused_body_closes_the_connection(server):
    """A body over the limit is refused and its connection closed while the client is still sending (the
    close may reset the connection before the 413 can be read: the client's unread bytes are dropped)."""
    with socket.create_connection(address(server), timeout=60) as connection:  # a server that waits fails
        connection.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        try:
            for _ in range(64):  # 4 MB, over the default 1 MB limit
                connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            reply = read_until_closed(connection)
        except (BrokenPipeError, ConnectionResetError):
            reply = b""  # closed while we were sending: the server did not wait for the rest
    assert reply == b"" or reply.startswith(b"HTTP/1.1 413 "), reply[:200]


def test_connections_past_the_limit_get_503(door_checkpoint, script_env):
    with start(door_checkpoint, script_env, "--max-connections", "8", "--request-timeout", "30") as proc:
        idle = [socket.create_connection(address(proc)) for _ in range(8)]
        try:
            assert httpx.get(proc.url + "/health", timeout=60).status_code == 503
        finally:
            for connection in idle:
                connection.close()
        assert httpx.get(proc.url + "/health", timeout=60).status_code == 200


STREAMS = 32


def stream_to_the_end(url, index, results):
    """Stream an answer that would run for minutes; record the events as received, then the error if any."""
    payload = {"messages": [{"role": "user", "content": f"第{index}个问题"}], "stream": True, "max_tokens": 4000,
               "ignore_eos": True}
    events = []
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=payload, timeout=120) as reply:
            for line in reply.iter_lines():
                if line:
                    events.append(line)
        results[index] = events
    except httpx.HTTPError as exc:
        results[index] = exc


def test_sigterm_ends_every_stream_properly_and_exits_0(door_checkpoint, script_env):
    # a drain time of 0: every running answer is cut at the next decoding step, so that none (the POST / one
    # above all, which may sample its end at any step) can end on its own after the signal
    with start(door_checkpoint, script_env, "--drain-seconds", "0", "--max-batch-size", str(STREAMS + 1)) as proc:
        results = {}
        threads = [threading.Thread(target=stream_to_the_end, args=(proc.url, i, results)) for i in range(STREAMS)]
        for thread in threads:
            thread.start()
        cut = {}
        signalled = threading.Event()

        def plain_request():  # POST / answers with what was generated, marked as cut
            # a high temperature rarely samples the end of an answer; if it does, ask again
            while True:
                cut["reply"] = httpx.post(proc.url + "/", json={"prompt": "你好", "max_length": 4000,
                                                                "temperature": 50}, timeout=120)
                if signalled.is_set() or cut["reply"].json().get("cut"):
                    return

        plain = threading.Thread(target=plain_request)
        plain.start()
        for _ in range(1200):  # every request is generating
            if httpx.get(proc.url + "/health", timeout=60).json()["engine"]["running"] == STREAMS + 1:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the requests did not all start:\n{proc.output()}")
        signalled.set()
        os.killpg(proc.proc.pid, signal.SIGTERM)
        for thread in [*threads, plain]:
            thread.join()
        assert proc.proc.wait(timeout=60) == 0, proc.output()
        output = proc.output()

    for index in range(STREAMS):
        events = results[index]
        assert isinstance(events, list), events  # no connection error: the stream was ended properly
        assert events[-1] == "data: [DONE]"
        last = json.loads(events[-2][len("data: "):])
        assert last["choices"][0]["finish_reason"] == "length"
    reply = cut["reply"]
    assert reply.status_code == 200 and reply.json()["cut"] is True and reply.json()["response"]
    # one log line per request ended by the shutdown
    assert output.count("finish=shutdown") == STREAMS + 1, output
    assert "Traceback" not in output
