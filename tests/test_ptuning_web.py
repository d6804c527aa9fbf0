"""ptuning/web_demo.py: a base model plus a P-Tuning checkpoint answers through the chat page."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow  # a training run and the web demo as a server process

PTUNING = REPO_ROOT / "ptuning"
ADGEN = PTUNING / "data" / "AdvertiseGen_sample"


@pytest.fixture(scope="module")
def base_model(door_checkpoint):
    return door_checkpoint  # the bundled demo checkpoint


@pytest.fixture(scope="module")
def prefix_checkpoint(base_model, tmp_path_factory):
    from ptuning import main as ptuning_main

    out = tmp_path_factory.mktemp("webpt") / "run"
    ptuning_main.main(["--model_name_or_path", base_model, "--output_dir", str(out), "--do_train",
                       "--train_file", str(ADGEN / "train.json"), "--prompt_column", "content",
                       "--response_column", "summary", "--pre_seq_len", "4", "--max_steps", "2",
                       "--learning_rate", "5e-1", "--max_train_samples", "8", "--per_device_train_batch_size", "4",
                       "--max_source_length", "32", "--max_target_length", "16", "--use_cpu", "--report_to", "none"])
    return str(out / "checkpoint-2")


def load(base_model, checkpoint):
    from ptuning import web_demo
    from ptuning.arguments import ModelArguments

    args = ModelArguments(model_name_or_path=base_model, ptuning_checkpoint=checkpoint)
    return web_demo.load_model(args, "cpu")


def page_answer(tokenizer, model, query):
    from chatglm.entrypoints.webui import build_demo

    demo = build_demo(tokenizer, model)
    predict = next(f.fn for f in demo.fns.values() if f.name == "predict")
    *_, (messages, history) = predict(query, 64, 0.7, 0.0, [])  # temperature 0: greedy; the last update
    return messages[-1]["content"], history


def test_page_answers_with_prefix(base_model, prefix_checkpoint):
    tokenizer, model = load(base_model, prefix_checkpoint)
    assert model.config.pre_seq_len == 4
    saved = torch.load(Path(prefix_checkpoint) / "pytorch_model.bin", weights_only=True)
    assert torch.equal(model.transformer.prefix_encoder.embedding.weight.detach(),
                       saved["transformer.prefix_encoder.embedding.weight"])
    answer, history = page_answer(tokenizer, model, "类型#上衣*颜色#白色")
    expected, _ = model.chat(tokenizer, "类型#上衣*颜色#白色", history=[], max_length=64, do_sample=False)
    assert answer == expected
    assert history == [("类型#上衣*颜色#白色", expected)]
    # the prefix is really used: same prompt, different next-token scores without it
    from transformers import AutoModel

    plain = AutoModel.from_pretrained(base_model, dtype=torch.float32).eval()
    ids = tokenizer("类型#上衣*颜色#白色", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = model(input_ids=ids).logits[0, -1]
        b = plain(input_ids=ids).logits[0, -1]
    assert not torch.allclose(a, b, atol=1e-4)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_web_demo_script_serves_prefix_model(base_model, prefix_checkpoint):
    pytest.importorskip("gradio_client")
    from gradio_client import Client

    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(PTUNING / "web_demo.py"), "--model_name_or_path", base_model,
                             "--ptuning_checkpoint", prefix_checkpoint, "--device", "cpu", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 180
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail("web_demo.py exited: " + proc.stdout.read()[-3000:])
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(1)
        client = Client(url, verbose=False)
        client.predict("类型#上衣*颜色#白色", api_name="/take_input")
        messages = client.predict(64, 0.7, 0.0, api_name="/predict")
        assert messages[0]["role"] == "user" and messages[-1]["role"] == "assistant"
        content = messages[-1]["content"]
        text = "".join(part.get("text", "") for part in content) if isinstance(content, list) else content
        tokenizer, model = load(base_model, prefix_checkpoint)
        expected, _ = model.chat(tokenizer, "类型#上衣*颜色#白色", history=[], max_length=64, do_sample=False)
        assert text == expected
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
