"""LoRA end to end on the bundled demo model: ptuning/main.py --lora_rank trains and saves an adapter in
peft's layout (also over an INT4 base), plain peft loads it, the front doors' --lora applies it merged or live,
ptuning/merge_lora.py writes a merged checkpoint, and adapters or flags that do not fit fail with one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_optional_installs import require
from test_ptuning_train import ADGEN, PTUNING, SHORT, adgen_args, read_json, run_main, script_env

from chatglm.entrypoints.errors import UserError
from chatglm.quantization import QuantizedLinear

pytestmark = pytest.mark.slow  # training runs and scripts

REPO_ROOT = PTUNING.parent
QUERY = "类型#裙*颜色#红色"


@pytest.fixture(scope="module")
def lora_run(door_checkpoint, tmp_path_factory):
    """One LoRA run of train_lora.sh on the demo model (two kinds of layers targeted, 4 steps)."""
    require("peft")
    out = tmp_path_factory.mktemp("lora") / "run"
    env = script_env({"MODEL": door_checkpoint, "TRAIN_FILE": ADGEN / "train.json", "OUTPUT_DIR": out,
                      "LORA_RANK": 4, "LORA_TARGET": "query_key_value,dense_h_to_4h", "LR": "1e-2", "MAX_STEPS": 4,
                      "SAVE_STEPS": 4, "QUANTIZATION_BIT": "", "BATCH_SIZE": 2, "GRAD_ACCUM": 1,
                      "CUDA_VISIBLE_DEVICES": ""})
    proc = subprocess.run(["bash", str(PTUNING / "train_lora.sh"), *SHORT, "--max_train_samples", "8"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, out / "checkpoint-4"


def greedy(model, tokenizer):
    inputs = tokenizer([QUERY], return_tensors="pt")
    return model.generate(**inputs, max_new_tokens=12, do_sample=False)[0].tolist()


def load(path, **kwargs):
    from transformers import AutoModel

    return AutoModel.from_pretrained(path, **kwargs)


def test_adapter_saved_in_peft_layout(lora_run, door_checkpoint):
    out, ck = lora_run
    assert (ck / "adapter_config.json").is_file() and (ck / "adapter_model.safetensors").is_file()
    assert not (ck / "model.safetensors").exists() and not (ck / "pytorch_model.bin").exists()
    config = read_json(ck / "adapter_config.json")
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert set(config["target_modules"]) == {"query_key_value", "dense_h_to_4h"}
    from safetensors.torch import load_file

    state = load_file(str(ck / "adapter_model.safetensors"))
    assert state and all(".lora_A." in key or ".lora_B." in key for key in state)
    assert any(".lora_B." in key and value.abs().sum() > 0 for key, value in state.items())  # it trained
    base_size = (Path(door_checkpoint) / "model.safetensors").stat().st_size
    assert (ck / "adapter_model.safetensors").stat().st_size < 0.02 * base_size


def test_evaluate_script_applies_adapter_live_on_int4(lora_run, door_checkpoint):
    out, ck = lora_run
    env = script_env({"MODEL": door_checkpoint, "CHECKPOINT_DIR": ck, "OUTPUT_DIR": out / "eval",
                      "TEST_FILE": ADGEN / "dev.json", "QUANTIZATION_BIT": 4, "EVAL_BATCH_SIZE": 2,
                      "CUDA_VISIBLE_DEVICES": ""})
    proc = subprocess.run(["bash", str(PTUNING / "evaluate_lora.sh"), *SHORT, "--max_predict_samples", "2"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "predict_rouge-l" in read_json(out / "eval" / "predict_results.json")
    assert len((out / "eval" / "generated_predictions.txt").read_text(encoding="utf-8").splitlines()) == 2


def test_plain_peft_merged_and_live_answer_alike(lora_run, door_checkpoint, tmp_path):
    """plain peft.PeftModel.from_pretrained, our merged model, our live layers and the merged checkpoint
    written by merge_lora.py give the same greedy answer."""
    import peft

    from chatglm import ChatGLMTokenizer
    from chatglm.lora import apply_lora

    _, ck = lora_run
    tokenizer = ChatGLMTokenizer.from_pretrained(door_checkpoint)
    expected = greedy(peft.PeftModel.from_pretrained(load(door_checkpoint), str(ck)), tokenizer)
    merged = apply_lora(load(door_checkpoint), [ck], merge=True)
    assert type(merged).__name__ == "ChatGLMForConditionalGeneration"
    assert greedy(merged, tokenizer) == expected
    assert greedy(apply_lora(load(door_checkpoint), [ck], merge=False), tokenizer) == expected

    out = tmp_path / "merged"
    proc = subprocess.run([sys.executable, str(PTUNING / "merge_lora.py"), "--model", door_checkpoint, "--lora",
                           str(ck), "--output", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert greedy(load(out), tokenizer) == expected
    # ... and like any checkpoint it quantizes while loading
    assert isinstance(load(out, quantization_bit=8).transformer.layers[0].mlp.dense_h_to_4h, QuantizedLinear)


def test_front_door_loader_applies_adapters(lora_run, door_checkpoint):
    from chatglm.entrypoints.loader import load_model_and_tokenizer

    _, ck = lora_run
    tokenizer, merged = load_model_and_tokenizer(model=door_checkpoint, device="cpu", lora=[str(ck)])
    _, live = load_model_and_tokenizer(model=door_checkpoint, device="cpu", lora=[str(ck)], lora_live=True)
    assert greedy(merged, tokenizer) == greedy(live, tokenizer)
    # two adapters at once (here the same one twice: twice the update), and live on an INT4 model
    _, twice = load_model_and_tokenizer(model=door_checkpoint, device="cpu", lora=[str(ck), str(ck)])
    layer = "transformer.layers.0.attention.query_key_value.weight"
    base = load(door_checkpoint).state_dict()[layer]
    assert torch.allclose(twice.state_dict()[layer] - base, 2 * (merged.state_dict()[layer] - base), atol=1e-6)
    _, quantized = load_model_and_tokenizer(model=door_checkpoint, device="cpu", quantize=4, lora=[str(ck)])
    qkv = quantized.transformer.layers[0].attention.query_key_value
    assert isinstance(qkv.base_layer, QuantizedLinear)
    assert isinstance(quantized.chat(tokenizer, QUERY, history=[], do_sample=False)[0], str)


def test_lora_on_int4_base(door_checkpoint, tmp_path):
    require("peft")
    out = tmp_path / "int4"
    run_main(adgen_args(door_checkpoint, out, "--do_train", "--lora_rank", "2", "--quantization_bit", "4",
                        "--max_steps", "1", "--save_steps", "1", "--per_device_train_batch_size", "2",
                        "--max_train_samples", "2"))
    ck = out / "checkpoint-1"
    config = read_json(ck / "adapter_config.json")
    assert config["r"] == 2 and config["target_modules"] == ["query_key_value"]
    from safetensors.torch import load_file

    state = load_file(str(ck / "adapter_model.safetensors"))
    assert all(value.dtype == torch.float32 for value in state.values())  # the adapter trains in float32
    logs = read_json(ck / "trainer_state.json")["log_history"]
    assert all(entry["loss"] == entry["loss"] for entry in logs if "loss" in entry)


def run_script(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=600,
                          cwd=REPO_ROOT)


def one_error_line(proc):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[-1]


def test_adapters_that_do_not_fit(lora_run, door_checkpoint, tiny_checkpoint, tmp_path):
    require("peft")
    from chatglm.lora import add_lora

    _, ck = lora_run
    # an adapter made on another base model (the tiny random checkpoint: hidden 64, not 256)
    other = tmp_path / "other"
    add_lora(load(tiny_checkpoint), 4).save_pretrained(str(other))
    line = one_error_line(run_script("cli_demo.py", "--model", door_checkpoint, "--device", "cpu", "--lora", other))
    assert "made for another base model" in line
    from chatglm.entrypoints.loader import load_model_and_tokenizer
    from chatglm.lora import LoraError, check_adapter

    with pytest.raises(LoraError, match="no such folder"):
        load_model_and_tokenizer(model=door_checkpoint, device="cpu", lora=[str(tmp_path / "missing")])
    with pytest.raises(LoraError, match="not a LoRA adapter folder"):
        load_model_and_tokenizer(model=door_checkpoint, device="cpu", lora=[str(PTUNING)])
    # merge_lora.py with a bad adapter leaves no output folder
    out = tmp_path / "merged-bad"
    line = one_error_line(run_script(PTUNING / "merge_lora.py", "--model", door_checkpoint, "--lora", other,
                                     "--output", out))
    assert "made for another base model" in line and not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".merging")] == []
    # an adapter with a layer the model lacks
    config = json.loads((ck / "adapter_config.json").read_text())
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    (renamed / "adapter_config.json").write_text(json.dumps(config))
    from safetensors.torch import load_file, save_file

    state = {k.replace("query_key_value", "qkv_proj"): v for k, v in load_file(str(ck / "adapter_model.safetensors"))
             .items()}
    save_file(state, str(renamed / "adapter_model.safetensors"))
    with pytest.raises(LoraError, match="made for another model"):
        check_adapter(load(door_checkpoint), str(renamed))


def test_flags_that_do_not_fit(door_checkpoint, tmp_path):
    require("peft")
    out = tmp_path / "fp16"
    with pytest.raises(UserError, match="--fp16 needs a GPU"):
        run_main(adgen_args(door_checkpoint, out, "--do_train", "--fp16", "--max_steps", "1"))
    assert not out.exists()
    with pytest.raises(UserError, match="two ways of tuning"):
        run_main(adgen_args(door_checkpoint, out, "--do_train", "--lora_rank", "4", "--pre_seq_len", "4"))
    with pytest.raises(UserError, match="no layer named dense_x"):
        run_main(adgen_args(door_checkpoint, out, "--do_train", "--lora_rank", "4", "--lora_target", "dense_x",
                            "--max_steps", "1"))
    assert not out.exists()


@pytest.mark.parametrize("script", ["cli_demo", "web_demo", "api"])
def test_front_doors_take_lora_flags(script):
    import importlib

    parser = importlib.import_module(script).build_parser()
    args = parser.parse_args(["--lora", "a", "b", "--lora", "c", "--lora-live"])
    assert args.lora == ["a", "b", "c"] and args.lora_live
    assert parser.parse_args([]).lora == []
