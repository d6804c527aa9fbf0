"""chatglm.entrypoints.loader and chatglm.entrypoints.cli: the model flags every script shares, and what
users see when loading fails."""

import argparse

import pytest
import torch
from conftest import greedy_answer
from transformers import AutoModel

from chatglm.entrypoints import loader
from chatglm.entrypoints.cli import add_model_args, bounded, run_script
from chatglm.entrypoints.errors import ModelLoadError
from chatglm.entrypoints.loader import load_model_and_tokenizer


def parse(*argv):
    return add_model_args(argparse.ArgumentParser()).parse_args(list(argv))


def test_flags_and_defaults():
    args = parse()
    assert (args.model, args.device, args.dtype, args.quantize, args.num_gpus) == (None, "auto", "auto", None, 1)
    args = parse("--model", "THUDM/chatglm-6b", "--device", "cuda:1", "--dtype", "fp16", "--quantize", "4",
                 "--num-gpus", "2")
    assert (args.model, args.device, args.dtype, args.quantize, args.num_gpus) == (
        "THUDM/chatglm-6b", "cuda:1", "float16", 4, 2)
    for bad in (["--quantize", "3"], ["--dtype", "int3"], ["--device", "tpu"], ["--num-gpus", "0"]):
        with pytest.raises(SystemExit):
            parse(*bad)


def test_loads_a_folder_in_eval_mode(tiny_checkpoint):
    tokenizer, model = load_model_and_tokenizer(parse("--model", tiny_checkpoint, "--device", "cpu"))
    assert not model.training
    assert model.device.type == "cpu" and model.dtype == torch.float32
    response, history = model.chat(tokenizer, "你好", max_length=24, do_sample=False)
    assert history == [("你好", response)]


def test_dtype_and_quantize(tiny_checkpoint):
    _, model = load_model_and_tokenizer(model=tiny_checkpoint, device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    for bits in (8, 4):
        tokenizer, model = load_model_and_tokenizer(parse("--model", tiny_checkpoint, "--device", "cpu",
                                                          "--quantize", str(bits)))
        assert model.config.quantization_bit == bits
        response, _ = model.chat(tokenizer, "你好", max_length=24, do_sample=False)
        # --quantize gives the model that quantizing the loaded fp32 model gives
        expected = AutoModel.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval().quantize(bits)
        assert response == greedy_answer(expected, tokenizer, "你好", max_length=24)


def test_bundled_checkpoint_is_the_default(capsys):
    tokenizer, model = load_model_and_tokenizer(parse("--device", "cpu"))
    err = capsys.readouterr().err
    hint = [line for line in err.splitlines() if "--model THUDM/chatglm-6b" in line]
    assert len(hint) == 1 and "demo" in hint[0]
    assert not model.training


@pytest.mark.parametrize("make_args,words", [
    (lambda tmp: {"model": str(tmp / "does-not-exist")}, ["no such folder", "--model"]),
    (lambda tmp: {"model": "./also/missing"}, ["no such folder"]),
    (lambda tmp: {"model": str(tmp)}, ["config.json", "--model"]),
    (lambda tmp: {"model": "THUDM/chatglm-6b-not-downloaded"}, ["HF_HUB_OFFLINE", "hf download",
                                                                 "--model"]),
])
def test_clear_one_line_errors(tmp_path, monkeypatch, make_args, words):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as caught:
        load_model_and_tokenizer(**make_args(tmp_path))
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    # a plain exception for library callers; a script's run_script turns it into "error: ..." and status 1
    assert not isinstance(caught.value, SystemExit)

    def main():
        load_model_and_tokenizer(**make_args(tmp_path))

    with pytest.raises(SystemExit) as exited:
        run_script(main)
    assert exited.value.code == "error: " + message


def test_broken_checkpoint_is_reported_not_raised(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "chatglm", "num_layers": 2}')
    with pytest.raises(ModelLoadError, match="could not load"):
        load_model_and_tokenizer(model=str(tmp_path), device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_missing_gpu_is_a_clear_error(tiny_checkpoint):
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        load_model_and_tokenizer(model=tiny_checkpoint, device="cuda")
    with pytest.raises(ModelLoadError, match="CUDA device"):
        load_model_and_tokenizer(model=tiny_checkpoint, num_gpus=2)


def test_auto_device_order():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert loader.pick_device("auto") == expected
    assert loader.pick_device("cpu") == "cpu"


def test_bounded_numbers():
    parse_length = bounded(int, 1, 10)
    assert parse_length("10") == 10
    for bad, words in (("0", "from 1 to 10"), ("1.5", "whole number"), ("x", "whole number")):
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            parse_length(bad)
    at_least_one = bounded(int, 1)
    assert at_least_one("1000000") == 1000000
    with pytest.raises(argparse.ArgumentTypeError, match="at least 1"):
        at_least_one("0")
    with pytest.raises(argparse.ArgumentTypeError, match="a number"):
        bounded(float, 0.0, 1.0)("high")


def test_run_script_passes_other_errors_through():
    def main():
        raise KeyError("a bug, not a user error")

    with pytest.raises(KeyError):
        run_script(main)
    assert run_script(lambda: 7) == 7



@pytest.mark.slow
def test_unknown_hub_id_fails_with_one_line(tmp_path, script_env):
    """Online, a hub id that is not cached is asked for once; the hub's answer (here from a real local HTTP
    server that knows no repository) ends the script with one line saying what to do, and status 1."""
    import http.server
    import subprocess
    import sys
    import threading

    from conftest import REPO_ROOT

    class NoRepositories(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoRepositories)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in script_env.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}", HF_HUB_CACHE=str(tmp_path))
    try:
        result = subprocess.run([sys.executable, str(REPO_ROOT / "cli_demo.py"), "--model", "THUDM/not-a-repo"],
                                cwd=str(REPO_ROOT), env=env, input="", capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not load THUDM/not-a-repo from the Hugging Face hub (RepositoryNotFoundError")
    assert "hf download THUDM/not-a-repo" in last
    assert "Traceback" not in result.stderr
