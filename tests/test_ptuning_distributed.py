"""ptuning/ across processes and machines, on CPU: ds_train_finetune.sh under `deepspeed --num_gpus 2` (two CPU
processes over gloo) for P-Tuning v2, full fine-tuning (ZeRO-3) and LoRA, and two torchrun "nodes" on this
machine talking over 127.0.0.1.

Each run is tiny: 8 rows, batch 2 per process, so one epoch is 2 steps when the two ranks share the rows
and 4 when each reads them all; the epoch counter tells which happened."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
from _doors import free_port
from test_optional_installs import require
from test_ptuning_train import ADGEN, PTUNING, SHORT, adgen_args, read_json, script_env

pytestmark = pytest.mark.slow

ROWS, BATCH, STEPS = 8, 2, 6
SHARDED_EPOCHS = STEPS * BATCH * 2 / ROWS  # 3.0; 1.5 if each process read every row
QUERY = "类型#裙*颜色#红色"

MODES = {  # mode: (DeepSpeed config, main.py flags)
    "ptuning": ("deepspeed.json", ["--pre_seq_len", "4", "--learning_rate", "5e-1"]),
    "full": ("deepspeed_zero3.json", ["--learning_rate", "1e-3"]),
    "lora": ("deepspeed.json", ["--lora_rank", "4", "--learning_rate", "5e-2"]),
}


def cpu_flags():
    # ds_train_finetune.sh runs without --use_cpu (DeepSpeed picks its CPU accelerator itself)
    flags = list(SHORT)
    flags.remove("--use_cpu")
    return flags


def check_trained(out, log):
    assert "Process rank: 0 of 2" in log and "Process rank: 1 of 2" in log, log[-3000:]
    history = read_json(out / f"checkpoint-{STEPS}" / "trainer_state.json")["log_history"]
    assert history[-1]["epoch"] == pytest.approx(SHARDED_EPOCHS)  # the ranks read different rows
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == STEPS and sum(losses[-2:]) < sum(losses[:2]), losses


@pytest.mark.parametrize("mode", list(MODES))
def test_deepspeed_two_cpu_processes(door_checkpoint, tmp_path, mode):
    require("deepspeed")
    config, flags = MODES[mode]
    out = tmp_path / mode
    env = script_env({"MODEL": door_checkpoint, "TRAIN_FILE": ADGEN / "train.json", "TEST_FILE": ADGEN / "dev.json",
                      "OUTPUT_DIR": out, "NUM_GPUS": 2, "MAX_STEPS": STEPS, "SAVE_STEPS": STEPS, "BATCH_SIZE": BATCH,
                      "DS_CONFIG": PTUNING / config, "MASTER_PORT": free_port()})
    proc = subprocess.run(["bash", str(PTUNING / "ds_train_finetune.sh"), *cpu_flags(), "--max_train_samples",
                           str(ROWS), *flags], env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    check_trained(out, log)

    # the checkpoint reloads and answers
    from chatglm import ChatGLMTokenizer

    ck = out / f"checkpoint-{STEPS}"
    tokenizer = ChatGLMTokenizer.from_pretrained(door_checkpoint)
    if mode == "ptuning":
        from ptuning.prefix import load_for_ptuning

        args = SimpleNamespace(model_name_or_path=door_checkpoint, ptuning_checkpoint=str(ck), pre_seq_len=None,
                               prefix_projection=False, quantization_bit=None, config_name=None, tokenizer_name=None)
        model = load_for_ptuning(args)[2]
    elif mode == "lora":
        from transformers import AutoModel

        from chatglm.lora import apply_lora

        model = apply_lora(AutoModel.from_pretrained(door_checkpoint), [ck])
    else:  # ZeRO-3 gathered the sharded weights into a complete checkpoint
        from transformers import AutoModel

        model = AutoModel.from_pretrained(ck)
    answer, _ = model.eval().chat(tokenizer, QUERY, history=[], do_sample=False, max_length=48)
    assert isinstance(answer, str) and answer


def test_deepspeed_refuses_fp16_on_cpu(door_checkpoint, tmp_path):
    require("deepspeed")
    out = tmp_path / "fp16"
    env = script_env({"MODEL": door_checkpoint, "TRAIN_FILE": ADGEN / "train.json", "OUTPUT_DIR": out,
                      "NUM_GPUS": 1, "MAX_STEPS": 1, "PRECISION": "fp16", "MASTER_PORT": free_port()})
    proc = subprocess.run(["bash", str(PTUNING / "ds_train_finetune.sh"), *cpu_flags()], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "error: --fp16 needs a GPU" in proc.stdout + proc.stderr
    assert not out.exists()


def test_torchrun_two_nodes_over_localhost(door_checkpoint, tmp_path):
    """Two launchers, as on two machines: --nnodes 2, each its --node_rank, rank 0's address and port."""
    out = tmp_path / "nodes"
    port = free_port()
    args = adgen_args(door_checkpoint, out, "--do_train", "--pre_seq_len", "4", "--learning_rate", "5e-1",
                      "--max_steps", STEPS, "--save_steps", STEPS, "--per_device_train_batch_size", BATCH,
                      "--max_train_samples", ROWS, "--ddp_backend", "gloo")
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank",
                               str(rank), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
                               "--master_port", str(port), str(PTUNING / "main.py"), *map(str, args)],
                              env=script_env({}), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    logs = [node.communicate(timeout=900)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "Process rank: 1 of 2 (local rank 0)" in logs[1]  # the second node's only process
    check_trained(out, "".join(logs))
