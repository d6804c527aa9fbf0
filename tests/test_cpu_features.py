"""Which CPU path this machine takes (chatglm/cpu_features.py), and whether the C kernels build where they can."""

import platform
import shutil

import pytest
import torch

from chatglm import cpu_features, cpu_kernels

AVX2_FLAGS = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})
AVX512_FLAGS = AVX2_FLAGS | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
AVX512_BF16_FLAGS = AVX512_FLAGS | {"avx512_bf16"}
AMX_FLAGS = AVX512_BF16_FLAGS | {"amx_tile", "amx_bf16", "amx_int8"}


def test_the_kernels_build_where_they_can():
    """Without a compiler (or off x86-64, or turned off) every product falls back to torch; with one, a
    build that fails is a bug."""
    reason = cpu_kernels.unavailable_reason()
    if reason is not None:
        assert cpu_kernels.library() is None
        pytest.skip(f"no C kernels here: {reason}")
    assert cpu_kernels.library() is not None


def test_the_kernels_are_not_built_where_they_cannot_be(monkeypatch):
    monkeypatch.setenv("CHATGLM_CPU_KERNELS", "0")
    assert cpu_kernels.unavailable_reason() == "turned off by CHATGLM_CPU_KERNELS=0"
    monkeypatch.delenv("CHATGLM_CPU_KERNELS")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert "not an x86-64 CPU" in cpu_kernels.unavailable_reason()
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "no C compiler" in cpu_kernels.unavailable_reason()


@pytest.mark.parametrize("flags, path", [
    (AVX2_FLAGS, "fp32"),  # AMD Zen 1-3, Intel desktop chips since Alder Lake: bfloat16 is emulated
    (AVX512_FLAGS, "fp32"),  # Skylake-SP to Cascade Lake: AVX-512 without bfloat16 dot products
    (AVX512_BF16_FLAGS, "bf16"),  # Cooper Lake, AMD Zen 4 and 5
    (AMX_FLAGS, "bf16"),  # Sapphire Rapids and later
    (frozenset(), "fp32"),  # not Linux, or not x86
])
def test_the_cpu_features_choose_the_path(flags, path):
    assert cpu_features.choose_path(flags, environment={}) == path


@pytest.mark.parametrize("environment", [{"ATEN_CPU_CAPABILITY": "avx2"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"},
                                         {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}])
def test_a_cpu_capped_below_bf16_takes_the_float32_path(environment):
    """The switches that make an AVX-512 machine behave like an AVX2 one make it choose like one too."""
    assert cpu_features.choose_path(AMX_FLAGS, environment) == "fp32"
    assert cpu_features.choose_path(AMX_FLAGS, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}) == "bf16"


def test_an_environment_variable_forces_the_path():
    assert cpu_features.choose_path(AVX2_FLAGS, {"CHATGLM_CPU_PATH": "bf16"}) == "bf16"
    assert cpu_features.choose_path(AMX_FLAGS, {"CHATGLM_CPU_PATH": "fp32"}) == "fp32"
    with pytest.raises(ValueError, match="CHATGLM_CPU_PATH"):
        cpu_features.choose_path(AVX2_FLAGS, {"CHATGLM_CPU_PATH": "fp16"})


@pytest.mark.parametrize("path, model_dtype, expected", [
    ("fp32", torch.float32, torch.float32), ("fp32", torch.bfloat16, torch.float32),
    ("fp32", torch.float16, torch.float32), ("bf16", torch.float32, torch.float32),
    ("bf16", torch.bfloat16, torch.bfloat16), ("bf16", torch.float16, torch.bfloat16),
])
def test_prompts_compute_in_float32_unless_the_cpu_has_bf16_dot_products(path, model_dtype, expected,
                                                                           monkeypatch):
    """A float32 model's products stay float32 everywhere."""
    monkeypatch.setattr(cpu_features, "cpu_path", lambda: path)
    assert cpu_features.prompt_dtype(model_dtype) == expected


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
def test_a_half_precision_prompt_multiplies_in_float32_on_the_float32_path(dtype, bias, monkeypatch):
    """The float32 product of the half-precision values, rounded once; a weight bigger than the scratch
    buffer (the LM head over every position) gives the same numbers a slice of rows at a time."""
    from chatglm import linear

    monkeypatch.setattr(cpu_features, "cpu_path", lambda: "fp32")
    generator = torch.Generator().manual_seed(0)
    layer = linear.Linear(256, 300, bias=bias).to(dtype)
    x = torch.randn(2, 40, 256, generator=generator).to(dtype)
    expected = torch.nn.functional.linear(x.float(), layer.weight.float(),
                                          None if layer.bias is None else layer.bias.float()).to(dtype)
    with torch.no_grad():
        assert torch.equal(layer(x), expected)
        monkeypatch.setattr(linear, "SCRATCH_MAX_VALUES", 256 * 64)
        assert torch.equal(layer(x), expected)
