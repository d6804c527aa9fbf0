"""utils.auto_configure_device_map against the original project's rule, and load_model_on_gpus on CPU (the
device map goes to from_pretrained, which dispatches the model as it would over GPUs)."""

from collections import Counter

import pytest

import utils

PINNED = ("transformer.word_embeddings", "transformer.final_layernorm", "lm_head")


def original_rule(num_gpus, num_layers=28):
    """The original rule, written out literally: 30 units for 28 layers, GPU 0 starts with 2 used."""
    per_gpu_layers = (num_layers + 2) / num_gpus
    device_map = {name: 0 for name in PINNED}
    used, gpu_target = 2, 0
    for i in range(num_layers):
        if used >= per_gpu_layers:
            gpu_target += 1
            used = 0
        assert gpu_target < num_gpus
        device_map[f"transformer.layers.{i}"] = gpu_target
        used += 1
    return device_map


@pytest.mark.parametrize("num_gpus", range(1, 9))
def test_matches_original_rule(num_gpus):
    device_map = utils.auto_configure_device_map(num_gpus)
    assert device_map == original_rule(num_gpus)
    assert set(device_map) == set(PINNED) | {f"transformer.layers.{i}" for i in range(28)}
    assert all(device_map[name] == 0 for name in PINNED)
    # layers are assigned in order, each GPU a contiguous block, none past the last GPU
    layer_gpus = [device_map[f"transformer.layers.{i}"] for i in range(28)]
    assert layer_gpus == sorted(layer_gpus)
    assert max(layer_gpus) < num_gpus
    # every GPU's unit count (the three pinned modules count as two units) stays near 30 / num_gpus
    units = Counter(layer_gpus)
    units[0] += 2
    assert max(units.values()) <= 30 / num_gpus + 1


def test_known_splits():
    two = utils.auto_configure_device_map(2)
    assert [i for i in range(28) if two[f"transformer.layers.{i}"] == 0] == list(range(13))
    assert [i for i in range(28) if two[f"transformer.layers.{i}"] == 1] == list(range(13, 28))
    four = Counter(utils.auto_configure_device_map(4).values())
    assert four == {0: 9, 1: 8, 2: 8, 3: 6}  # GPU 0: 6 layers + 3 pinned modules
    one = utils.auto_configure_device_map(1)
    assert set(one.values()) == {0}


def test_other_layer_counts():
    for num_layers in (2, 3, 40):
        for num_gpus in (1, 2, 3):
            device_map = utils.auto_configure_device_map(num_gpus, num_layers=num_layers)
            assert device_map == original_rule(num_gpus, num_layers)
    with pytest.raises(ValueError):
        utils.auto_configure_device_map(0)


def test_too_few_gpus_is_a_clear_error(tiny_checkpoint):
    import torch

    from chatglm.entrypoints.errors import ModelLoadError

    wanted = torch.cuda.device_count() + 1
    with pytest.raises(ModelLoadError, match="CUDA device"):
        utils.load_model_on_gpus(tiny_checkpoint, num_gpus=max(wanted, 2))


def test_cpu_device_map_gives_the_same_logits(tiny_checkpoint, tmp_path):
    import torch

    import chatglm

    tokenizer = chatglm.ChatGLMTokenizer.from_pretrained(tiny_checkpoint)
    reference = chatglm.ChatGLMForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    num_layers = reference.config.num_layers
    # the GPUs become the CPU, and the last layer is offloaded to disk so that the model is really dispatched
    device_map = {name: "cpu" for name in utils.auto_configure_device_map(2, num_layers=num_layers)}
    device_map[f"transformer.layers.{num_layers - 1}"] = "disk"
    split = utils.load_model_on_gpus(tiny_checkpoint, num_gpus=2, device_map=device_map, dtype=torch.float32,
                                     offload_folder=str(tmp_path))
    split.eval()
    assert split.hf_device_map == device_map
    inputs = tokenizer(["你好", "晚上睡不着应该怎么办"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference(**inputs).logits
        got = split(**inputs).logits
    assert got.dtype == torch.float32
    mask = inputs["attention_mask"].bool()
    assert torch.allclose(got[mask], expected[mask], atol=1e-5)


def test_a_prefix_encoder_goes_with_the_embeddings(tiny_checkpoint, tmp_path):
    import torch

    import chatglm

    config = chatglm.ChatGLMConfig.from_pretrained(tiny_checkpoint)
    config.pre_seq_len = 4
    device_map = {name: "cpu" for name in utils.auto_configure_device_map(2, num_layers=config.num_layers)}
    device_map["transformer.layers.0"] = "disk"
    model = utils.load_model_on_gpus(tiny_checkpoint, num_gpus=2, device_map=device_map, config=config,
                                     offload_folder=str(tmp_path))
    assert model.hf_device_map == {"transformer.prefix_encoder": "cpu", **device_map}
    assert model.transformer.prefix_encoder.embedding.weight.device.type == "cpu"
    assert model.dtype == torch.float16
