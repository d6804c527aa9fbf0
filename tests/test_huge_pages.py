"""CPU weights in 2 MB pages (chatglm/huge_pages.py): a decoding step streams them all."""

import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from chatglm import ChatGLMForConditionalGeneration, huge_pages

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
pytestmark = pytest.mark.skipif(not THP_SETTING.exists() or "[never]" in THP_SETTING.read_text(),
                                reason="this system has no transparent huge pages")


def huge_bytes_at(address):
    """AnonHugePages of the mapping of this process that holds `address`."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        span = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if span:
            inside = int(span[1], 16) <= address < int(span[2], 16)
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no mapping holds that address")


def test_collapse_moves_a_tensor_into_huge_pages_in_place():
    tensor = torch.randn(4 << 20)  # 16 MB: at least seven whole 2 MB pages inside
    values = tensor.clone()
    address = tensor.data_ptr()
    moved = huge_pages.collapse([tensor, tensor])  # a tensor met twice (tied weights) moves once
    assert 14 << 20 <= moved <= 16 << 20
    assert tensor.data_ptr() == address and torch.equal(tensor, values)
    assert huge_bytes_at(address + (8 << 20)) >= 14 << 20


def test_small_tensors_stay_and_the_switch_turns_it_off(monkeypatch):
    assert huge_pages.collapse([torch.randn(1000)]) == 0  # no whole 2 MB page inside
    monkeypatch.setenv("CHATGLM_HUGE_PAGES", "0")
    assert huge_pages.collapse([torch.randn(4 << 20)]) == 0


def wide_checkpoint(tmp_path):
    config = tiny_config(vocab_size=4096, hidden_size=1024, num_layers=1, num_attention_heads=8,
                         max_sequence_length=64, bos_token_id=4003, eos_token_id=4004, mask_token_id=4000,
                         gmask_token_id=4001)
    torch.manual_seed(0)
    ChatGLMForConditionalGeneration(config).save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("quantization_bit", [None, 4])
def test_loaded_and_quantized_weights_are_in_huge_pages(tmp_path, quantization_bit):
    model = ChatGLMForConditionalGeneration.from_pretrained(wide_checkpoint(tmp_path), dtype=torch.float32,
                                                            quantization_bit=quantization_bit)
    weight = model.transformer.layers[0].mlp.dense_h_to_4h.weight  # 16 MB in float32, 2 MB in INT4
    embedding = model.transformer.word_embeddings.weight  # 16 MB
    assert huge_bytes_at(embedding.data_ptr() + embedding.nbytes // 2) > 0
    if quantization_bit is None:
        assert huge_bytes_at(weight.data_ptr() + weight.nbytes // 2) > 0
    model = ChatGLMForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).quantize(8)
    weight = model.transformer.layers[0].mlp.dense_h_to_4h.weight  # 4 MB of int8, quantized after loading
    assert huge_bytes_at(weight.data_ptr() + weight.nbytes // 2) > 0
