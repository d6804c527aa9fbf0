"""An installed peft or DeepSpeed changes nothing about loading: with peft importable, transformers' Auto
classes pass extra keyword arguments (adapter_kwargs, config, trust_remote_code, ...) to from_pretrained,
and every way of loading must still stream (and quantize while loading) exactly as without peft."""

import importlib.util
import os

import pytest
import torch
import transformers.models.auto.auto_factory as auto_factory
from transformers import AutoModel, AutoModelForCausalLM

import chatglm.modeling_chatglm as modeling
from chatglm import ChatGLMForConditionalGeneration
from chatglm.quantization import QuantizedEmbedding, QuantizedLinear


def require(module):
    """CI installs peft and DeepSpeed (.ci/run): there a missing one fails; elsewhere its tests skip."""
    if os.environ.get("CI") or importlib.util.find_spec(module) is not None:
        return importlib.import_module(module)
    pytest.skip(f"{module} is not installed (CI installs it)")


LOADERS = {
    "auto": lambda path: AutoModel.from_pretrained(path),
    "auto-int4": lambda path: AutoModel.from_pretrained(path, quantization_bit=4),
    "auto-bf16-int4-qe": lambda path: AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16, quantization_bit=4, quantize_embeddings=True),
    "class-int8": lambda path: ChatGLMForConditionalGeneration.from_pretrained(path, quantization_bit=8),
}


@pytest.fixture
def streamed(monkeypatch):
    """The list of checkpoints load_streaming read during the test."""
    calls = []
    real = modeling.load_streaming

    def spy(model_class, path, **kwargs):
        calls.append(str(path))
        return real(model_class, path, **kwargs)

    monkeypatch.setattr(modeling, "load_streaming", spy)
    return calls


@pytest.mark.parametrize("how", list(LOADERS))
def test_peft_installed_changes_no_loading_path(tiny_checkpoint, streamed, monkeypatch, how):
    require("peft")
    assert auto_factory.is_peft_available()
    with_peft = LOADERS[how](tiny_checkpoint)
    monkeypatch.setattr(auto_factory, "is_peft_available", lambda: False)  # as in an install without peft
    without_peft = LOADERS[how](tiny_checkpoint)
    assert streamed == [tiny_checkpoint, tiny_checkpoint]  # both through our streaming loader
    state, expected = with_peft.state_dict(), without_peft.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name
    if "int" in how:
        assert isinstance(with_peft.transformer.layers[0].attention.query_key_value, QuantizedLinear)
    if how.endswith("-qe"):
        assert isinstance(with_peft.transformer.word_embeddings, QuantizedEmbedding)


def test_deepspeed_installed_changes_no_loading_path(tiny_checkpoint, streamed):
    require("deepspeed")
    import deepspeed  # noqa: F401  (imported as a training script would, before loading)

    model = AutoModel.from_pretrained(tiny_checkpoint, quantization_bit=4)
    assert streamed == [tiny_checkpoint]
    assert isinstance(model.transformer.layers[0].mlp.dense_h_to_4h, QuantizedLinear)
