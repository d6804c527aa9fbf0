"""Checkpoint layouts (real names and shapes, sharded .bin, safetensors, -int4/-int8), quantization,
P-Tuning, gradient checkpointing and self-contained export (1-D positions: test_positions.py)."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import GOLDENS_DIR, greedy_answer, tiny_config
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

import chatglm
from chatglm import ChatGLMConfig, ChatGLMForConditionalGeneration, cpu_kernels
from chatglm.export import export_checkpoint
from chatglm.quantization import QuantizedLinear, quantize_weight, unpack_int4


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    return AutoTokenizer.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return AutoModel.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_real_config_has_the_real_parameter_names_and_shapes():
    real = json.loads((GOLDENS_DIR / "real_6b_keys.json").read_text())
    config = ChatGLMConfig(**{k: v for k, v in real["config"].items() if not k.startswith("_")})
    with torch.device("meta"):
        model = ChatGLMForConditionalGeneration(config)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = {k: v["shape"] for k, v in real["keys"].items() if v["kind"] == "parameter"}
    assert ours == expected
    assert sum(p.numel() for p in model.parameters()) == real["num_parameters"] - 130528 * 4096  # lm_head is tied


def write_real_sharded_layout(model, folder, shards=3):
    """The layout of THUDM/chatglm-6b: pytorch_model-0000N-of-0000M.bin + index (with a stale total_size),
    lm_head.weight and rotary inv_freq buffers included."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(model.config.num_layers):
        state[f"transformer.layers.{i}.attention.rotary_emb.inv_freq"] = torch.ones(4, dtype=torch.float16)
    keys = list(state)
    weight_map = {}
    for n in range(shards):
        name = f"pytorch_model-{n + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[n::shards]}
        torch.save(part, folder / name)
        weight_map.update({k: name for k in part})
    index = {"metadata": {"total_size": 123}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    model.config.save_pretrained(folder)


def test_real_sharded_layout_loads(model, tmp_path):
    write_real_sharded_layout(model, tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert same_state(model, loaded)
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.word_embeddings.weight.data_ptr()


def test_sharded_safetensors_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    assert "model.safetensors.index.json" in os.listdir(tmp_path)
    assert same_state(model, AutoModel.from_pretrained(tmp_path, dtype=torch.float32))


def test_checkpoint_inv_freq_and_stale_lm_head_are_ignored(model, tmp_path):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(model.config.num_layers):
        state[f"transformer.layers.{i}.attention.rotary_emb.inv_freq"] = torch.zeros(8, dtype=torch.float16)
    model.config.save_pretrained(tmp_path)
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = AutoModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert same_state(model, loaded)


def original_int8(weight):
    """The original's INT8 integers and scales: the scale is computed in the weight's dtype and stored as
    fp16, then `weight / scale` is rounded in the promoted dtype (fp16 for fp16 weights, fp32 for fp32)."""
    scale = (weight.abs().max(dim=-1).values / 127).half()
    return torch.round(weight / scale[:, None]).to(torch.int8), scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_quantize_matches_the_original_scheme_bit_for_bit(dtype):
    """int8 weights and scales of model_A's first layer, computed the original way in the model's dtype."""
    model = AutoModel.from_pretrained(GOLDENS_DIR / "model_A", dtype=dtype)
    weights = {name: getattr(model.transformer.layers[0].attention, name).weight.detach().clone()
               for name in ("query_key_value", "dense")}
    model.quantize(8)
    for name, w in weights.items():
        layer = getattr(model.transformer.layers[0].attention, name)
        expected, scale = original_int8(w)
        assert torch.equal(layer.weight_scale.data, scale)
        assert torch.equal(layer.weight.data, expected)
        if dtype == torch.float32:  # the fp16 rounding of fp16 models gives other integers here
            assert not torch.equal(original_int8(w.half())[0], expected)


def pack_int4_original(values):
    """The original's INT4 byte layout, written independently: byte j = (w[2j] << 4) | (w[2j+1] & 0xF)."""
    rows = []
    for row in values.tolist():
        rows.append([((row[2 * j] << 4) | (row[2 * j + 1] & 0xF)) & 0xFF for j in range(len(row) // 2)])
    return torch.tensor(rows, dtype=torch.uint8).view(torch.int8)


def test_int4_packing_matches_the_original_layout():
    w = torch.randn(6, 8)
    packed, scale = quantize_weight(w, 4)
    values = torch.round(w.half() / scale[:, None]).to(torch.int8)
    assert values.abs().max() <= 7
    assert torch.equal(packed, pack_int4_original(values))
    assert torch.equal(unpack_int4(packed), values)


@pytest.mark.parametrize("bits", [4, 8])
def test_prequantized_checkpoint_loads_the_original_dequantized_weights(model, tmp_path, bits):
    """A folder in the -int4/-int8 layout (int8 `weight` [out, in*bits/8] + fp16 `weight_scale`)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    expected = {}
    for key in [k for k in state if k.endswith(".weight") and ("attention." in k or "mlp." in k)]:
        w = state.pop(key).half()
        scale = w.abs().max(dim=-1).values / (2 ** (bits - 1) - 1)
        values = torch.round(w / scale[:, None]).to(torch.int8)
        state[key] = pack_int4_original(values) if bits == 4 else values
        state[key + "_scale"] = scale
        expected[key] = values.float() * scale.float()[:, None]
    config = model.config.to_dict()
    config["quantization_bit"] = bits
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.save(state, tmp_path / "pytorch_model.bin")

    loaded = AutoModel.from_pretrained(tmp_path, dtype=torch.float32)
    modules = dict(loaded.named_modules())
    for key, weight in expected.items():
        layer = modules[key[: -len(".weight")]]
        assert isinstance(layer, QuantizedLinear) and layer.bits == bits
        assert torch.equal(layer.dequantize(torch.float32), weight)

    # it generates (on CPU INT4 layers re-pack to the kernel's layout), and save_pretrained still writes
    # the original bytes, which load back
    prompt = torch.tensor([[5, 6, model.config.gmask_token_id, model.config.bos_token_id]])
    generated = loaded.generate(prompt, max_length=10, do_sample=False)
    assert generated.shape[1] > 4
    loaded.save_pretrained(tmp_path / "again")
    saved = load_file(tmp_path / "again" / "model.safetensors")
    for key in expected:
        assert torch.equal(saved[key], state[key]) and torch.equal(saved[key + "_scale"], state[key + "_scale"])
    again = AutoModel.from_pretrained(tmp_path / "again", dtype=torch.float32)
    assert same_state(loaded, again)
    assert torch.equal(again.generate(prompt, max_length=10, do_sample=False), generated)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_model_stays_close_to_fp32(model, tokenizer, bits):
    quantized = ChatGLMForConditionalGeneration(copy.deepcopy(model.config)).eval()
    quantized.load_state_dict(model.state_dict())
    quantized.quantize(bits)
    inputs = tokenizer(["你好", "Hello world"], padding=True, return_tensors="pt")
    with torch.no_grad():
        full, low = model(**inputs).logits[:, -1], quantized(**inputs).logits[:, -1]
    relative = ((full - low).norm() / full.norm()).item()
    assert relative < (0.02 if bits == 8 else 0.25), relative
    response, _ = quantized.chat(tokenizer, "你好", history=[], max_length=20, do_sample=False)
    assert response == greedy_answer(quantized, tokenizer, "你好", max_length=20)


def test_unsupported_quantization_bits_are_refused(model):
    with pytest.raises(ValueError, match="4 or 8"):
        ChatGLMForConditionalGeneration(copy.deepcopy(model.config)).quantize(3)


def test_clear_errors_for_wrong_folders(tmp_path, tiny_checkpoint):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not a ChatGLM-6B checkpoint"):
        ChatGLMForConditionalGeneration.from_pretrained(tmp_path)
    no_vocab = tmp_path / "no-vocab"
    no_vocab.mkdir()
    (no_vocab / "tokenizer_config.json").write_text(open(os.path.join(tiny_checkpoint, "tokenizer_config.json")).read())
    with pytest.raises(ValueError, match="ice_text.model"):
        chatglm.ChatGLMTokenizer.from_pretrained(no_vocab)


def test_ptuning_prefix_trains_alone_with_gradient_checkpointing(model, tokenizer):
    for projection in (False, True):
        config = tiny_config(max_sequence_length=256, pre_seq_len=4, prefix_projection=projection)
        tuned = ChatGLMForConditionalGeneration(config)
        tuned.load_state_dict(model.state_dict(), strict=False)
        trainable = {n for n, p in tuned.named_parameters() if p.requires_grad}
        assert trainable and all(n.startswith("transformer.prefix_encoder.") for n in trainable)
        tuned.gradient_checkpointing_enable()
        tuned.train()
        ids = torch.tensor([tokenizer.encode("你好") + [5, 6, config.eos_token_id]])
        labels = ids.clone()
        labels[:, :3] = -100
        loss = tuned(ids, labels=labels).loss
        loss.backward()
        grads = {n for n, p in tuned.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert grads == trainable
        tuned.eval()
        response, _ = tuned.chat(tokenizer, "你好", history=[], max_length=16, do_sample=False)
        assert response == greedy_answer(tuned, tokenizer, "你好", max_length=16)


def test_loading_with_a_prefix_keeps_the_base_frozen(tiny_checkpoint):
    config = ChatGLMConfig.from_pretrained(tiny_checkpoint)
    config.pre_seq_len = 4
    loaded = AutoModel.from_pretrained(tiny_checkpoint, config=config)
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable == {"transformer.prefix_encoder.embedding.weight"}


@pytest.mark.slow
def test_export_is_self_contained(model, tokenizer, tmp_path):
    folder = export_checkpoint(model, tokenizer, tmp_path / "exported")
    script = (
        "import sys\n"
        "from transformers import AutoModel, AutoTokenizer\n"
        f"t = AutoTokenizer.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
        f"m = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
        "r, h = m.chat(t, '你好', history=[], max_length=12, do_sample=False)\n"
        "kernels = sys.modules[type(m).__module__.replace('modeling_chatglm', 'cpu_kernels')]\n"
        "print('kernels', kernels.library() is not None)\n"
        "print(type(m).__module__, repr(r))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    # the C kernels build from the folder's copy of their source, where they can be built here
    assert result.stdout.startswith(f"kernels {cpu_kernels.unavailable_reason() is None}\ntransformers_modules.")
    expected, _ = model.chat(tokenizer, "你好", history=[], max_length=12, do_sample=False)
    assert result.stdout.strip().endswith(repr(expected))


def test_a_non_editable_install_carries_every_subpackage():
    """`pip install .` (not -e) installs only the packages pyproject.toml lists."""
    from conftest import REPO_ROOT

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    listed = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    for top in ("chatglm", "ptuning", "demo"):
        for init in (REPO_ROOT / top).rglob("__init__.py"):
            package = ".".join(init.parent.relative_to(REPO_ROOT).parts)
            assert package in listed, f"{package} is missing from [tool.setuptools] packages"
