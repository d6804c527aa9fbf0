"""Every script in examples/ runs and prints what it promises."""

import subprocess
import sys

import pytest
from _doors import REPO_ROOT

pytestmark = pytest.mark.slow  # each example is a process that loads the model


MODEL_EXAMPLES = {
    "chat_with_history.py": ["--max-length", "48"],
    "streaming.py": ["--max-length", "48"],
    "batch_generate.py": ["--max-length", "40"],
}


def _start(name, args, env):
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "examples" / name), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, encoding="utf-8", cwd=str(REPO_ROOT / "examples"),
                            env=env)


def _finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def run_example(name, args, env):
    return _finish(_start(name, args, env))


@pytest.fixture(scope="module")
def outputs(door_checkpoint, script_env):
    """Run the examples that load the model side by side (most of their time is start-up)."""
    procs = {name: _start(name, ["--model", door_checkpoint, *args], script_env)
             for name, args in MODEL_EXAMPLES.items()}
    return {name: _finish(proc) for name, proc in procs.items()}


def test_chat_with_history(outputs, door_model):
    out = outputs["chat_with_history.py"]
    tokenizer, model = door_model
    first, history = model.chat(tokenizer, "你好", history=[], max_length=48, do_sample=False)
    second, _ = model.chat(tokenizer, "晚上睡不着应该怎么办", history=history, max_length=48, do_sample=False)
    assert f"Q: 你好\nA: {first}\n" in out
    assert f"Q: 晚上睡不着应该怎么办\nA: {second}\n" in out
    assert "rounds in history: 2" in out


def test_streaming(outputs, door_model):
    # the pieces printed while streaming add up to the whole greedy answer
    tokenizer, model = door_model
    answer, _ = model.chat(tokenizer, "用三句话介绍一下北京", history=[], max_length=48, do_sample=False)
    assert answer
    assert outputs["streaming.py"] == answer + "\n"


def test_batch_generate(outputs, door_model):
    out = outputs["batch_generate.py"]
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
    from chatglm.generation import process_response

    expected = process_response(tokenizer.decode(output[0, alone["input_ids"].shape[1]:], skip_special_tokens=True))
    assert lines[0] == f"你好 -> {expected}"


def test_api_client(api_server, script_env, door_model):
    out = run_example("api_client.py", ["--url", api_server.url, "--max-length", "48", "--temperature", "0"],
                      script_env)
    tokenizer, model = door_model
    first, history = model.chat(tokenizer, "你好", history=[], max_length=48, do_sample=False)
    second, _ = model.chat(tokenizer, "晚上睡不着应该怎么办", history=history, max_length=48, do_sample=False)
    assert f"Q: 你好\nA: {first}\n" in out
    assert f"Q: 晚上睡不着应该怎么办\nA: {second}\n" in out
