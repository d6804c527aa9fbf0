"""Every script in examples/ runs and prints what it promises."""

import subprocess
import sys

import pytest

from _doors import REPO_ROOT, ServerProcess, free_port


def run_example(name, args, env, timeout=180):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / name), *args], capture_output=True,
                            text=True, encoding="utf-8", cwd=str(REPO_ROOT / "examples"), env=env,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_chat_with_history(door_checkpoint, door_model, script_env):
    out = run_example("chat_with_history.py", ["--model", door_checkpoint, "--max-length", "48"], script_env)
    tokenizer, model = door_model
    first, history = model.chat(tokenizer, "你好", history=[], max_length=48, do_sample=False)
    second, _ = model.chat(tokenizer, "晚上睡不着应该怎么办", history=history, max_length=48, do_sample=False)
    assert f"Q: 你好\nA: {first}\n" in out
    assert f"Q: 晚上睡不着应该怎么办\nA: {second}\n" in out
    assert "rounds in history: 2" in out


def test_streaming(door_checkpoint, script_env):
    out = run_example("streaming.py", ["--model", door_checkpoint, "--max-length", "48"], script_env)
    assert out.endswith("\n")


def test_batch_generate(door_checkpoint, door_model, script_env):
    out = run_example("batch_generate.py", ["--model", door_checkpoint, "--max-length", "40"], script_env)
    lines = [line for line in out.splitlines() if " -> " in line]
    prompts = ["你好", "晚上睡不着应该怎么办", "Write a haiku about the sea"]
    assert [line.split(" -> ")[0] for line in lines] == prompts
    # the left-padded batch gives each prompt the same greedy answer as generating it alone
    import torch

    tokenizer, model = door_model
    alone = tokenizer(["你好"], return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**alone, max_length=40 - (len(tokenizer(prompts, padding=True)["input_ids"][0])
                                                          - alone["input_ids"].shape[1]), do_sample=False)
    expected = tokenizer.decode(output[0, alone["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert lines[0] == f"你好 -> {expected}"


def test_api_client(door_checkpoint, script_env):
    with ServerProcess("api.py", ["--model", door_checkpoint, "--device", "cpu"], free_port(), script_env,
                       ready_path="/health") as server:
        out = run_example("api_client.py", ["--url", server.url, "--max-length", "48"], script_env)
    assert "Q: 你好\nA: " in out and "Q: 晚上睡不着应该怎么办\nA: " in out
