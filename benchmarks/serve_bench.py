"""Throughput and latency of the HTTP server (api.py) under concurrent clients.

For each client count, that many clients each send --requests streamed chat completions one after another
(``POST /v1/chat/completions``, ``stream: true``) and the script reports requests/s, generated tokens/s, time
to first token and request latency (p50 / p99). Answers have a fixed length (``ignore_eos``) so that every
level generates the same work per request. ``--engine-only`` hands the same requests (same prompts and
sampling settings) straight to the batching engine in this process, without HTTP: the most the server
could reach with this model on this machine.

    python benchmarks/serve_bench.py                            # starts api.py on the demo model
    python benchmarks/serve_bench.py --clients 1 8 32 --requests 4 --max-tokens 128
    python benchmarks/serve_bench.py --url http://127.0.0.1:8000 --api-key KEY   # a server already running
    python benchmarks/serve_bench.py --engine-only              # no HTTP: the engine's own throughput
    python benchmarks/serve_bench.py --rounds 5                 # every level 5 times, interleaved: medians
    python benchmarks/serve_bench.py --engine-only --model SCRATCH/mid --quantize 4 --dtype bfloat16

``--long-history`` measures instead what one client's big request costs the others: while --streams answers
stream, --history-clients clients each send ``POST /`` with a history of --rounds-of-history rounds, and
the script reports the /health latency (p50 / p99 / max, polled back to back), the longest pause between
two chunks of a running stream, and the longest time the engine's decoding step count (read from each
/health reply) stood still, both while the long requests are in flight and before them. The stream pause
also counts runs of tokens that add no text; the decoding stall does not:

    python benchmarks/serve_bench.py --long-history                      # 1, then 4 clients of 10,000 rounds

On a shared host whose speed moves from minute to minute, one pass can put its levels in different
conditions; --rounds runs the levels in turn several times and reports, per level, the median round and the
median of the per-round ratios to the first level.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from chatglm.entrypoints.loader import load_model_and_tokenizer
from chatglm.generation import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, prompt_ids
from chatglm.serving import Engine, Sequence, default_engine_threads

PROMPTS = ["你好", "晚上睡不着应该怎么办", "Write a haiku about the sea", "介绍一下北京",
           "1+1等于几？请详细解释一下你的计算过程", "什么是机器学习", "讲个笑话", "如何学习编程"]


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def one_request(client, url, headers, prompt, max_tokens):
    """Stream one answer; return (seconds to the first text, total seconds, generated tokens)."""
    payload = {"messages": [{"role": "user", "content": prompt}], "stream": True, "max_tokens": max_tokens,
               "ignore_eos": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first, last_event = None, b""
    async with client.stream("POST", url + "/v1/chat/completions", json=payload, headers=headers) as reply:
        reply.raise_for_status()
        # the client shares the CPU with the server: look at the bytes, and parse only the last event
        async for data in reply.aiter_bytes():
            if first is None and b'"content": "' in data.replace(b'"content": ""', b""):
                first = time.perf_counter() - started
            last_event = (last_event + data)[-4096:]
    elapsed = time.perf_counter() - started
    events = [e for e in last_event.decode("utf-8", "replace").split("\n\n") if e.startswith("data: {")]
    final = json.loads(events[-1][6:])
    if "error" in final:
        raise RuntimeError(final["error"]["message"])
    return first, elapsed, final["usage"]["completion_tokens"]


async def run_level(url, headers, clients, requests, max_tokens):
    """``clients`` clients, each sending ``requests`` requests in a row; returns the row of the table."""
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def one_client(index):
            return [await one_request(client, url, headers, PROMPTS[(index + i) % len(PROMPTS)], max_tokens)
                    for i in range(requests)]

        started = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(one_client(i) for i in range(clients))) for r in rs]
        elapsed = time.perf_counter() - started
    return table_row(clients, results, elapsed)


def run_engine_level(engine, tokenizer, clients, requests, max_tokens):
    """The same requests as run_level, each client a thread submitting to ``engine`` and waiting for the end;
    sampling settings are the server's defaults for a request that names none."""
    model = engine.model
    results = []

    def one_client(index):
        for i in range(requests):
            started = time.perf_counter()
            ids = prompt_ids(tokenizer, PROMPTS[(index + i) % len(PROMPTS)], [], model.config.max_sequence_length)
            sequence = Sequence(ids, max_tokens, temperature=DEFAULT_TEMPERATURE, top_p=DEFAULT_TOP_P,
                                ignore_eos=True)
            engine.submit(sequence)
            sequence.done.wait()
            results.append((sequence.first_token_at - started, time.perf_counter() - started,
                            len(sequence.output_ids)))

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return table_row(clients, results, time.perf_counter() - started)


def table_row(clients, results, elapsed):
    """One level's figures from its (seconds to first token, seconds, generated tokens) per request."""
    firsts = [r[0] for r in results]
    latencies = [r[1] for r in results]
    return {"clients": clients, "requests": len(results), "seconds": elapsed,
            "requests_per_s": len(results) / elapsed, "tokens_per_s": sum(r[2] for r in results) / elapsed,
            "ttft_p50": statistics.median(firsts), "ttft_p99": percentile(firsts, 0.99),
            "latency_p50": statistics.median(latencies), "latency_p99": percentile(latencies, 0.99)}


async def timed_streams(client, url, headers, arrivals, stop):
    """Stream answers one after another until ``stop`` is set; for each, append to ``arrivals`` the list of
    its chunks' arrival times."""
    payload = {"messages": [{"role": "user", "content": "你好"}], "stream": True, "ignore_eos": True}
    while not stop.is_set():
        times = []
        arrivals.append(times)
        async with client.stream("POST", url + "/v1/chat/completions", json=payload, headers=headers) as reply:
            reply.raise_for_status()
            async for _ in reply.aiter_bytes():
                times.append(time.perf_counter())
                if stop.is_set():
                    return


async def run_long_history(url, headers, streams, history_clients, rounds):
    """/health latencies and stream pauses before and while ``history_clients`` long histories are sent."""
    body = json.dumps({"prompt": "hi", "history": [[f"q{i}", f"a{i}"] for i in range(rounds)]}).encode()
    health = []  # (sent at, seconds, the engine's decoding steps so far)
    arrivals = []  # per answer streamed, its chunks' arrival times
    stop = asyncio.Event()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=streams + 16)) as client:
        async def poll_health():
            while not stop.is_set():
                sent = time.perf_counter()
                reply = await client.get(url + "/health", headers=headers)
                reply.raise_for_status()
                health.append((sent, time.perf_counter() - sent, reply.json()["engine"]["steps"]))

        tasks = [asyncio.create_task(timed_streams(client, url, headers, arrivals, stop)) for _ in range(streams)]
        tasks.append(asyncio.create_task(poll_health()))
        await asyncio.sleep(3)  # the baseline, every stream running
        window_start = time.perf_counter()
        replies = await asyncio.gather(*(client.post(url + "/", content=body, headers={
            **headers, "Content-Type": "application/json"}) for _ in range(history_clients)))
        window_end = time.perf_counter()
        stop.set()
        await asyncio.gather(*tasks)
    for reply in replies:
        reply.raise_for_status()

    def pauses(start, end):
        return [b - a for times in arrivals for a, b in zip(times, times[1:]) if b > start and a < end] or [0.0]

    def latencies(start, end):
        return [seconds for sent, seconds, _ in health if start <= sent < end] or [0.0]

    def step_stalls(start, end):
        """Times between two /health replies that saw the step count move on: how long decoding stood
        still. Unlike a stream's pauses, not lengthened by tokens that add no text (the demo model's
        answers go on past their end-of-answer token here, and much of that adds nothing to the text)."""
        moves = [sent + seconds for (sent, seconds, steps), (_, _, before) in zip(health[1:], health) if steps > before]
        return [b - a for a, b in zip(moves, moves[1:]) if b > start and a < end] or [0.0]

    before = latencies(0, window_start), pauses(0, window_start), step_stalls(0, window_start)
    during = (latencies(window_start, window_end), pauses(window_start, window_end),
              step_stalls(window_start, window_end))
    return {"clients": history_clients, "seconds": window_end - window_start,
            "before": before, "during": during}


def print_long_history(rows, streams, rounds):
    print(f"{streams} streams running; each long request is POST / with a history of {rounds} rounds")
    print("| long requests | their time (s) | /health p50 / p99 / max (ms), before | during "
          "| longest stream pause (ms), before | during | longest decoding stall (ms), before | during |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        (health_before, pause_before, stall_before), (health_during, pause_during, stall_during) = (
            row["before"], row["during"])

        def ms(values):
            return (f"{statistics.median(values) * 1000:.0f} / {percentile(values, 0.99) * 1000:.0f} / "
                    f"{max(values) * 1000:.0f}")

        print(f"| {row['clients']} | {row['seconds']:.2f} | {ms(health_before)} | {ms(health_during)} "
              f"| {max(pause_before) * 1000:.0f} | {max(pause_during) * 1000:.0f} "
              f"| {max(stall_before) * 1000:.0f} | {max(stall_during) * 1000:.0f} |")


def start_server(args):
    """api.py as a subprocess on --port; returns (process, url) once /health answers."""
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, str(repo / "api.py"), "--port", str(args.port), "--device", "cpu",
               "--max-batch-size", str(max(args.clients))]
    if args.model:
        command += ["--model", args.model]
    if args.quantize:
        command += ["--quantize", str(args.quantize)]
    command += ["--dtype", args.dtype]
    server = subprocess.Popen(command, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ, HF_HUB_OFFLINE="1"))
    url = f"http://127.0.0.1:{args.port}"
    for _ in range(600):
        if server.poll() is not None:
            sys.exit(f"error: api.py exited with status {server.returncode}; run it by hand to see why")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    sys.exit("error: api.py did not answer /health within 2 minutes")


def run_all_levels(args):
    """The table's rows for every round: a warm-up request, then every client count in turn, --rounds times."""
    if args.engine_only:
        tokenizer, model = load_model_and_tokenizer(model=args.model, device="cpu", dtype=args.dtype,
                                                    quantize=args.quantize)
        engine = Engine(model, max_batch_size=max(args.clients), threads=default_engine_threads()).start()
        try:
            run_engine_level(engine, tokenizer, 1, 1, 8)  # warm-up
            return [[run_engine_level(engine, tokenizer, clients, args.requests, args.max_tokens)
                     for clients in args.clients] for _ in range(args.rounds)]
        finally:
            engine.stop()
    server, url = (None, args.url.rstrip("/")) if args.url else start_server(args)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        asyncio.run(run_level(url, headers, 1, 1, 8))  # warm-up
        return [[asyncio.run(run_level(url, headers, clients, args.requests, args.max_tokens))
                 for clients in args.clients] for _ in range(args.rounds)]
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


def summarize(rounds):
    """One row per level: the round with the median tokens/s, with the median of the per-round ratios to the
    first level and the range of tokens/s over the rounds."""
    rows = []
    for level in zip(*rounds):
        row = dict(sorted(level, key=lambda r: r["tokens_per_s"])[len(level) // 2])
        row["vs_first"] = statistics.median(r["tokens_per_s"] / first["tokens_per_s"]
                                            for r, first in zip(level, (rows[0] for rows in rounds)))
        row["tokens_per_s_range"] = (min(r["tokens_per_s"] for r in level), max(r["tokens_per_s"] for r in level))
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="benchmark this running server instead of starting api.py")
    parser.add_argument("--engine-only", action="store_true",
                        help="no HTTP: send the requests straight to a batching engine in this process (CPU)")
    parser.add_argument("--api-key", default=os.environ.get("CHATGLM_API_KEY"), help="the server's key, if any")
    parser.add_argument("--model", help="model for the started api.py (default: the bundled demo checkpoint)")
    parser.add_argument("--port", type=int, default=8765, help="port of the started api.py (default: 8765)")
    parser.add_argument("--quantize", type=int, choices=(4, 8), help="quantize while loading, as api.py --quantize")
    parser.add_argument("--dtype", default="auto", help="model dtype, as api.py --dtype (default: auto)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="client counts (default: 1 8 32)")
    parser.add_argument("--requests", type=int, default=4, help="requests per client (default: 4)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per answer (default: 128)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every level this many times, interleaved, and report medians (default: 1)")
    parser.add_argument("--json", action="store_true", help="also print every round's rows as JSON lines")
    parser.add_argument("--long-history", action="store_true",
                        help="measure /health latency and stream pauses while clients send long histories")
    parser.add_argument("--streams", type=int, default=4, help="with --long-history: streams running (default: 4)")
    parser.add_argument("--history-clients", type=int, nargs="+", default=[1, 4],
                        help="with --long-history: clients sending a long history at once (default: 1 4)")
    parser.add_argument("--rounds-of-history", type=int, default=10_000,
                        help="with --long-history: rounds in each long history (default: 10000)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.engine_only and args.url:
        parser.error("--engine-only measures the engine in this process; leave out --url")

    if args.long_history:
        if args.engine_only:
            parser.error("--long-history measures the HTTP server; leave out --engine-only")
        args.clients = [args.streams + max(args.history_clients)]  # the started server's batch size
        server, url = (None, args.url.rstrip("/")) if args.url else start_server(args)
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        try:
            rows = [asyncio.run(run_long_history(url, headers, args.streams, clients, args.rounds_of_history))
                    for clients in args.history_clients]
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=60)
        print_long_history(rows, args.streams, args.rounds_of_history)
        return

    rounds = run_all_levels(args)
    rows = summarize(rounds)
    how = "straight to the engine, no HTTP" if args.engine_only else "streamed"
    print(f"{args.requests} requests per client, {args.max_tokens} tokens per answer, {how}"
          + (f"; median of {args.rounds} interleaved rounds" if args.rounds > 1 else ""))
    print("| clients | requests | requests/s | generated tokens/s | vs first row | TTFT p50 / p99 (ms) "
          "| latency p50 / p99 (s) |" + (" tokens/s over the rounds |" if args.rounds > 1 else ""))
    print("| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if args.rounds > 1 else ""))
    for row in rows:
        low, high = row["tokens_per_s_range"]
        print(f"| {row['clients']} | {row['requests']} | {row['requests_per_s']:.2f} | {row['tokens_per_s']:.0f} "
              f"| {row['vs_first']:.1f}x | {row['ttft_p50'] * 1000:.0f} / {row['ttft_p99'] * 1000:.0f} "
              f"| {row['latency_p50']:.2f} / {row['latency_p99']:.2f} |"
              + (f" {low:.0f}-{high:.0f} |" if args.rounds > 1 else ""))
    if args.json:
        for rows_of_a_round in rounds:
            for row in rows_of_a_round:
                print(json.dumps(row))


if __name__ == "__main__":
    main()
