"""Loading tensor by tensor and quantizing while loading (chatglm.streaming_load): the same weights as
transformers' loader and as load-then-quantize, from every checkpoint layout, with bounded memory."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT
from test_checkpoints import write_real_sharded_layout
from transformers import AutoModel, PreTrainedModel

from chatglm import ChatGLMForConditionalGeneration
from chatglm.quantization import QuantizedLinear

LAYOUTS = ("sharded-bin", "sharded-safetensors", "single-bin")


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint, tmp_path_factory):
    """The tiny model in fp16 (as the real weights are), written in each layout."""
    model = ChatGLMForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float16)
    folders = {name: tmp_path_factory.mktemp(name) for name in LAYOUTS}
    write_real_sharded_layout(model, folders["sharded-bin"])  # with lm_head, inv_freq and a stale total_size
    model.save_pretrained(folders["sharded-safetensors"], max_shard_size="200KB")
    torch.save(model.state_dict(), folders["single-bin"] / "pytorch_model.bin")
    model.config.save_pretrained(folders["single-bin"])
    return folders


def transformers_load(folder, dtype):
    return PreTrainedModel.from_pretrained.__func__(ChatGLMForConditionalGeneration, folder, dtype=dtype)


def assert_same_state(model, expected):
    state, expected_state = model.state_dict(), expected.state_dict()
    assert state.keys() == expected_state.keys()
    for name, tensor in expected_state.items():
        assert state[name].dtype == tensor.dtype, name
        assert torch.equal(state[name], tensor), name


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loads_what_transformers_loads(checkpoints, layout, dtype):
    model = ChatGLMForConditionalGeneration.from_pretrained(checkpoints[layout], dtype=dtype)
    assert_same_state(model, transformers_load(checkpoints[layout], dtype))
    assert model.lm_head.weight is model.transformer.word_embeddings.weight
    assert not model.training


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bits", [4, 8])
def test_quantize_while_loading_equals_load_then_quantize(checkpoints, layout, dtype, bits):
    model = ChatGLMForConditionalGeneration.from_pretrained(checkpoints[layout], dtype=dtype, quantization_bit=bits)
    expected = transformers_load(checkpoints[layout], dtype).quantize(bits)
    assert_same_state(model, expected)
    assert model.config.quantization_bit == bits
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert len(layers) == 4 * model.config.num_layers and all(layer.bits == bits for layer in layers)

    prompt = torch.tensor([[5, 6, 7, model.config.gmask_token_id, model.config.bos_token_id]])
    assert torch.equal(model.generate(prompt, max_new_tokens=4, do_sample=False),
                       expected.generate(prompt, max_new_tokens=4, do_sample=False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantized_embeddings_while_loading(checkpoints, dtype, tmp_path):
    model = ChatGLMForConditionalGeneration.from_pretrained(checkpoints["sharded-bin"], dtype=dtype, quantization_bit=4,
                                                            quantize_embeddings=True)
    expected = transformers_load(checkpoints["sharded-bin"], dtype).quantize(4, quantize_embeddings=True)
    assert_same_state(model, expected)
    assert model.lm_head.weight is model.transformer.word_embeddings.weight
    model.save_pretrained(tmp_path)
    assert_same_state(ChatGLMForConditionalGeneration.from_pretrained(tmp_path, dtype=dtype), model)


def test_quantized_embeddings_through_automodel_and_from_a_prequantized_folder(checkpoints, tmp_path):
    """AutoModel moves quantization_bit into the config, where it looks like a checkpoint stored quantized;
    quantize_embeddings must still be honoured there, and for a folder stored INT4 with float embeddings."""
    expected = ChatGLMForConditionalGeneration.from_pretrained(checkpoints["sharded-bin"], dtype=torch.float32,
                                                               quantization_bit=4, quantize_embeddings=True)
    auto = AutoModel.from_pretrained(checkpoints["sharded-bin"], dtype=torch.float32, quantization_bit=4,
                                     quantize_embeddings=True)
    assert isinstance(auto.lm_head, QuantizedLinear) and auto.config.quantization_embeddings
    assert_same_state(auto, expected)
    ChatGLMForConditionalGeneration.from_pretrained(checkpoints["sharded-bin"], dtype=torch.float32,
                                                    quantization_bit=4).save_pretrained(tmp_path)
    stored = ChatGLMForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32, quantize_embeddings=True)
    assert_same_state(stored, expected)


@pytest.mark.parametrize("bits", [4, 8])
def test_prequantized_folder_round_trips(checkpoints, tmp_path, bits, caplog):
    model = ChatGLMForConditionalGeneration.from_pretrained(checkpoints["sharded-bin"], dtype=torch.float32,
                                                            quantization_bit=bits)
    model.save_pretrained(tmp_path)
    for requested in (None, bits, 12 - bits):  # a stored quantization wins over another one asked for
        again = ChatGLMForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32,
                                                                quantization_bit=requested)
        assert_same_state(again, model)
    assert "loads as stored" in caplog.text


def test_checkpoint_missing_weights_is_a_clear_error(checkpoints, tmp_path):
    state = torch.load(checkpoints["single-bin"] / "pytorch_model.bin", weights_only=True)
    del state["transformer.layers.1.mlp.dense_4h_to_h.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((checkpoints["single-bin"] / "config.json").read_text())
    message = r"lacks \d weights of this model \(transformer.layers.1.mlp.dense_4h_to_h.weight[,)]"
    with pytest.raises(ValueError, match=message):
        ChatGLMForConditionalGeneration.from_pretrained(tmp_path, quantization_bit=4)


MEMORY_SCRIPT = """
import json, resource, sys, torch
import chatglm

def peak():  # VmHWM, not ru_maxrss: a child process inherits the parent's ru_maxrss across exec
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

# a first small load imports and sets up everything loading needs, so that the baseline leaves it out
chatglm.ChatGLMForConditionalGeneration.from_pretrained(sys.argv[2], dtype=torch.bfloat16, quantization_bit=4)
before = resident()
model = chatglm.ChatGLMForConditionalGeneration.from_pretrained(sys.argv[1], dtype=torch.bfloat16, quantization_bit=4)
loaded_peak, loaded = peak(), resident()
model.float()
print(json.dumps({"before": before, "loaded_peak": loaded_peak, "loaded": loaded, "float_peak": peak(),
                  "float": resident()}))
"""


def test_quantized_loading_memory_stays_bounded(tmp_path, tiny_checkpoint):
    """Loading a ~560 MB fp32 checkpoint to INT4 stays near the final model's size, far below the checkpoint;
    `.float()` afterwards only widens what is not quantized."""
    from chatglm import ChatGLMConfig

    config = ChatGLMConfig.from_pretrained(tiny_checkpoint)
    config.update({"hidden_size": 2048, "inner_hidden_size": 8192, "num_layers": 2, "num_attention_heads": 16})
    with torch.device("meta"):
        model = ChatGLMForConditionalGeneration(config)
    model.to_empty(device="cpu")
    for tensor in model.state_dict().values():
        tensor.normal_(0, 0.02)
    model.save_pretrained(tmp_path)
    checkpoint_bytes = sum(t.numel() * 4 for t in model.state_dict().values())
    del model

    # A fixed mmap threshold makes glibc hand every freed buffer of 1 MB or more back at once, so the
    # resident set shows what the loader holds rather than what the allocator keeps for later.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path), tiny_checkpoint],
                            capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rss = json.loads(result.stdout.strip().splitlines()[-1])
    final = rss["loaded"] - rss["before"]
    assert rss["loaded_peak"] - rss["before"] < 1.3 * final, rss
    assert rss["loaded_peak"] - rss["before"] < 0.25 * checkpoint_bytes, rss
    # .float(): the bf16 parts (embedding, LayerNorms, biases) double, the quantized weights stay as they are
    assert rss["float_peak"] - rss["before"] < 2 * final, rss
