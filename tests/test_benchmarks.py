"""The benchmark scripts run and print their tables (their numbers are for people, not for assertions)."""

import json
import re
import subprocess
import sys

import pytest
from _doors import REPO_ROOT, free_port

pytestmark = pytest.mark.slow  # each run starts processes that load the model


def serve_bench(args, env):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "serve_bench.py"), "--clients", "1", "2",
                             "--requests", "1", "--max-tokens", "4", *args], capture_output=True, text=True,
                            env=env, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def table_rows(output):
    """{clients: [cells]} of the printed table."""
    rows = [line.strip("|").split("|") for line in output.splitlines() if re.match(r"\| \d", line)]
    return {int(cells[0]): [cell.strip() for cell in cells] for cells in rows}


def test_serve_bench_against_a_live_server(script_env):
    output = serve_bench(["--port", str(free_port())], script_env)
    rows = table_rows(output)
    assert sorted(rows) == [1, 2]
    assert rows[1][1] == "1" and rows[2][1] == "2"  # one request per client
    assert rows[1][4] == "1.0x" and float(rows[2][3]) > 0


def test_serve_bench_engine_only_with_interleaved_rounds(script_env):
    output = serve_bench(["--engine-only", "--rounds", "3"], script_env)
    assert "median of 3 interleaved rounds" in output
    rows = table_rows(output)
    assert sorted(rows) == [1, 2]
    low, high = (float(x) for x in rows[2][-1].split("-"))  # tokens/s over the rounds
    assert 0 < low <= float(rows[2][3]) <= high


def test_quantized_kernels_names_the_path_each_layer_takes(script_env):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "quantized_kernels.py"), "--shape", "256",
                             "256", "--tokens", "1,40", "--repeats", "1"], capture_output=True, text=True,
                            env=script_env, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in result.stdout.splitlines()
            if re.match(r"\| [48] \|", line)]
    paths = {(int(bits), int(tokens)): path for bits, tokens, _, path, *_ in rows}
    assert paths == {(8, 1): "C kernel", (8, 40): "expanded weight + F.linear",
                     (4, 1): "C kernel", (4, 40): "expanded weight + F.linear"}
    assert all(float(cell) > 0 for row in rows for cell in (row[2], row[4], row[5], row[6]))


@pytest.mark.parametrize("quantize", [[], ["--quantize", "4", "--dtype", "bfloat16"]])
def test_step_overhead_splits_a_generate_step(script_env, quantize):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "step_overhead.py"), "--new-tokens", "9",
                             "--threads", "1", *quantize], capture_output=True, text=True, env=script_env,
                            cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {cells[0].strip(): float(cells[1]) for cells in
            (line.strip("|").split("|") for line in result.stdout.splitlines() if line.startswith("| "))
            if re.fullmatch(r"\s*[\d.-]+\s*", cells[1])}
    step = next(ms for name, ms in rows.items() if name.startswith("generate() step"))
    assert rows["blocks: products (C kernels)"] > 0 and rows["LM head: product (C kernel)"] > 0
    parts = sum(ms for name, ms in rows.items() if not name.startswith("generate() step"))
    assert 0.9 * step < parts < 1.1 * step  # the parts cover the step


def test_benchmark_prints_the_perf_table_for_a_checkpoint(script_env, tmp_path):
    """The perf protocol end to end on a one-layer, 128-wide model in the real checkpoint layout: loading,
    prefill @512 and decode @16 / @1024 in alternating rounds, the read bandwidth around the run."""
    checkpoint = tmp_path / "tiny"
    subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "random_checkpoint.py"), str(checkpoint),
                    "--tokenizer", str(REPO_ROOT / "tests" / "goldens" / "tokenizer"), "--layers", "1", "--shards", "1",
                    "--hidden-size", "128"], check=True, capture_output=True, env=script_env, cwd=REPO_ROOT,
                   timeout=300)
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "benchmark.py"), "--model", str(checkpoint),
                             "--configs", "int4", "--rounds", "2", "--bandwidth-gib", "0.25",
                             "--json", str(tmp_path / "out.json")],
                            capture_output=True, text=True, env=script_env, cwd=REPO_ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best of 1 pass(es) of 2 decode round(s)" in result.stdout
    assert "--isa native: torch " in result.stdout and ", prompts in " in result.stdout  # the path it took
    row = next(line for line in result.stdout.splitlines() if line.startswith("| int4 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert all(float(cell.rstrip("%")) > 0 for cell in cells[1:])
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["results"]["int4"]["context_cost"] > 0  # @1024 / @16 within each round
    run = written["runs"]["int4"][0]
    assert [len(run["decode_rounds"][str(context)]) for context in (16, 1024)] == [2, 2]
    assert run["decode_16_ms"] == min(run["decode_rounds"]["16"])
    before, after = run["read_bandwidth_before_after"]
    assert run["read_bandwidth"] == (before + after) / 2 > 0
