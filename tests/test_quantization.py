"""Quantized layers on CPU: the int4 kernel layout, which kernel each input dtype reaches (with the C kernels
of cpu_kernels and with torch's alone), agreement with the dequantized weight, bytes held per weight, and
the original checkpoint layout through save/load."""

import copy
import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModel

from chatglm import ChatGLMForConditionalGeneration, cpu_features, cpu_kernels, quantization
from chatglm.quantization import (
    DEQUANTIZED_MATMUL_MIN_TOKENS,
    Layout,
    QuantizedEmbedding,
    QuantizedLinear,
    pack_int4,
    quantize_weight,
    unpack_int4,
)
from chatglm.torch_fallback import (
    CANDIDATE_INT4_LAYOUTS,
    from_int4_cpu_layout,
    int4_cpu_layout,
    int4_cpu_layout_rows,
    to_int4_cpu_layout,
)

WEIGHT_KERNELS = {8: "aten._weight_int8pack_mm.default", 4: "aten._weight_int4pack_mm_for_cpu.default"}
TORCH_PRODUCTS = ("aten.mm", "aten.addmm", "aten.linear", "aten.bmm")


@pytest.fixture
def torch_kernels_only(monkeypatch):
    """As on a machine without a C compiler: no cpu_kernels library, so every product is torch's."""
    no_library = lambda: None  # noqa: E731
    monkeypatch.setattr(cpu_kernels, "library", no_library)
    monkeypatch.setattr(quantization, "library", no_library)


@pytest.fixture(params=[pytest.param("c-kernels", marks=pytest.mark.requires_cpu_kernels), "torch-only"])
def kernels(request):
    """Each test runs with the C kernels (where they can be built) and with torch's alone."""
    if request.param == "torch-only":
        request.getfixturevalue("torch_kernels_only")
    return request.param


def random_int4(rows, columns, seed=0):
    return torch.randint(-8, 8, (rows, columns), generator=torch.Generator().manual_seed(seed), dtype=torch.int8)


def activation_tolerance(bits, kernels):
    """Relative error of a quantized layer against its dequantized weight in float32. bfloat16 activations
    round each input by up to 2^-9; the C INT4 kernel rounds x to int8 in groups of 32, by up to half of
    1/127 of the group's largest |value|: about 0.5% on random inputs, where rounding a random weight to
    4 bits costs 17%."""
    return 1e-2 if bits == 4 and kernels == "c-kernels" else 5e-3


def layer_with_bias(bits, out_features=192, in_features=256, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator) * 0.02
    return QuantizedLinear.from_weight(weight, bits, torch.randn(out_features, generator=generator) * 0.02)


@pytest.mark.parametrize("layout", CANDIDATE_INT4_LAYOUTS)
def test_int4_kernel_layout_round_trips_the_original_bytes(layout):
    packed = pack_int4(random_int4(256, 96))
    kernel_bytes = to_int4_cpu_layout(packed, layout)
    assert kernel_bytes.dtype == torch.uint8 and kernel_bytes.shape == packed.shape
    assert not torch.equal(kernel_bytes.view(torch.int8), packed)
    assert torch.equal(from_int4_cpu_layout(kernel_bytes, layout), packed)


def test_int4_kernel_layout_matches_torchs_converter():
    values = random_int4(192, 512, seed=1)
    layout = int4_cpu_layout()
    assert layout is not None, "torch's CPU int4 kernel packs in a layout we do not know"
    expected = torch.ops.aten._convert_weight_to_int4pack_for_cpu((values + 8).to(torch.int32), 1)
    assert torch.equal(to_int4_cpu_layout(pack_int4(values), layout), expected)


@pytest.mark.slow  # a fresh interpreter per CPU capability
@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_int4_layout_is_detected_for_other_cpu_kernels(capability):
    """torch picks its kernels (and int4 layout) by CPU capability; ATEN_CPU_CAPABILITY forces another."""
    code = ("import torch; from chatglm.quantization import QuantizedLinear\n"
            "from chatglm.torch_fallback import int4_cpu_layout\n"
            "w = torch.randn(64, 128); layer = QuantizedLinear.from_weight(w, 4); x = torch.randn(3, 128)\n"
            "with torch.no_grad(): y = layer(x)\n"
            "ref = x @ layer.dequantize().T\n"
            "assert layer.in_cpu_kernel_layout and ((y - ref).norm() / ref.norm()) < 1e-2\n"
            "print(tuple(int4_cpu_layout()))")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability, CHATGLM_CPU_KERNELS="0")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == {"avx2": "(32, False)", "default": "(32, True)"}[capability]


class OpRecorder(TorchDispatchMode):
    """Records every aten op a forward runs, with the dtypes of its tensor arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((str(func), [a.dtype for a in args if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))


def recorded_ops(layer, x):
    with torch.no_grad(), OpRecorder() as recorder:
        layer(x)
    return recorder.calls


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_without_c_kernels_torchs_weight_only_kernel_runs_on_bfloat16(bits, dtype, torch_kernels_only):
    """Decoding (one token) and short prompts reach torch's weight-only kernel with bfloat16 activations
    whatever the model dtype: with float32 ones the same kernel is about 20x slower."""
    layer = layer_with_bias(bits).to(dtype)
    for tokens in (1, DEQUANTIZED_MATMUL_MIN_TOKENS[bits] - 1):
        calls = recorded_ops(layer, torch.randn(1, tokens, 256, dtype=dtype))
        kernel_calls = [dtypes for op, dtypes in calls if op == WEIGHT_KERNELS[bits]]
        assert len(kernel_calls) == 1, calls
        assert kernel_calls[0][0] == torch.bfloat16
        assert not [op for op, _ in calls if op.startswith(TORCH_PRODUCTS)]


class CountingMatmul:
    """Stands in for quantization.matmul and counts the C kernel products by kind, then computes them."""

    def __init__(self):
        self.kinds = []

    def __call__(self, x, weight, scale=None, int4=False, **options):
        self.kinds.append("i4" if int4 else str(weight.dtype))
        return cpu_kernels.matmul(x, weight, scale, int4=int4, **options)


@pytest.mark.requires_cpu_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("out_features, in_features", [(192, 256), (4096, 4096)])
def test_int4_decoding_and_short_prompts_run_the_c_kernel_in_any_dtype(dtype, out_features, in_features,
                                                                      monkeypatch):
    """The dispatch that issue 9 pins: whatever the model's dtype (`.float()` is the original README's CPU
    recipe), INT4 layers take the C kernel for up to `most_tokens` tokens, at every size, and nothing of
    torch's; beyond, one product with the expanded weight, in the dtype of this CPU's path. torch's int4
    kernel never runs."""
    layer = layer_with_bias(4, out_features, in_features).to(dtype)
    most = cpu_kernels.most_tokens(torch.uint8, int4=True)
    for tokens in (1, 2, most):
        counting = CountingMatmul()
        monkeypatch.setattr(quantization, "matmul", counting)
        calls = recorded_ops(layer, torch.randn(1, tokens, in_features, dtype=dtype))
        assert counting.kinds == ["i4"], (tokens, calls)
        assert not [op for op, _ in calls if op.startswith(TORCH_PRODUCTS) or op in WEIGHT_KERNELS.values()]
    counting = CountingMatmul()
    monkeypatch.setattr(quantization, "matmul", counting)
    calls = recorded_ops(layer, torch.randn(1, most + 1, in_features, dtype=dtype))
    matmuls = [dtypes for op, dtypes in calls if op.startswith(TORCH_PRODUCTS)]
    assert not counting.kinds and len(matmuls) == 1 and set(matmuls[0]) == {cpu_features.prompt_dtype(dtype)}, calls
    assert not [op for op, _ in calls if op in WEIGHT_KERNELS.values()]
    assert layer.in_cpu_kernel_layout  # in the C kernels' row tiles


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("path, expected", [("fp32", {}), ("bf16", {torch.float16: torch.bfloat16,
                                                                    torch.bfloat16: torch.bfloat16})])
def test_cpu_forward_on_long_prompts_multiplies_in_the_dtype_of_the_cpu_path(bits, dtype, path, expected, kernels,
                                                                           monkeypatch):
    """float32 where the CPU emulates bfloat16 products, and for a float32 model everywhere (exact for the
    integer weights, as the original's CPU path); bfloat16 for a half-precision model where the CPU has
    bfloat16 dot products."""
    monkeypatch.setattr(cpu_features, "cpu_path", lambda: path)
    layer = layer_with_bias(bits).to(dtype)
    calls = recorded_ops(layer, torch.randn(1, DEQUANTIZED_MATMUL_MIN_TOKENS[bits], 256, dtype=dtype))
    matmuls = [dtypes for op, dtypes in calls if op.startswith(("aten.mm", "aten.addmm"))]
    assert len(matmuls) == 1 and set(matmuls[0]) == {expected.get(dtype, torch.float32)}, calls
    assert not [op for op, _ in calls if op in WEIGHT_KERNELS.values()]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens", [1, 7, 40, 200])
def test_cpu_forward_agrees_with_the_dequantized_weight(bits, dtype, tokens, kernels):
    layer = layer_with_bias(bits)
    x = torch.randn(2, tokens, 256, generator=torch.Generator().manual_seed(2))
    expected = x @ layer.dequantize(torch.float32).T + layer.bias
    with torch.no_grad():
        out = layer.to(dtype)(x.to(dtype))
    assert out.dtype == dtype and out.shape == expected.shape
    assert ((out.float() - expected).norm() / expected.norm()) < activation_tolerance(bits, kernels)


def test_an_int4_weight_too_big_for_the_scratch_buffer_takes_long_prompts_in_kernel_chunks(monkeypatch):
    """A quantized LM head is too big to expand to bfloat16: a long prompt goes through the C kernel 32
    tokens at a time, with the same result as a weight that fits (up to the kernel's int8 activations)."""
    layer = layer_with_bias(4)
    x = torch.randn(1, 70, 256, generator=torch.Generator().manual_seed(2)).bfloat16()
    expected = x.float() @ layer.dequantize(torch.float32).T + layer.bias
    with torch.no_grad():
        layer = layer.bfloat16()
        fitting = layer(x)
        monkeypatch.setattr(quantization, "SCRATCH_MAX_VALUES", 256 * 191)
        assert not layer.fits_scratch
        chunked = layer(x)
    assert chunked.dtype == torch.bfloat16 and chunked.shape == fitting.shape
    for out in (fitting, chunked):
        assert ((out.float() - expected).norm() / expected.norm()) < activation_tolerance(4, "c-kernels")


def test_gradients_flow_through_a_quantized_layer():
    """P-Tuning on a quantized model back-propagates through its frozen layers."""
    layer = layer_with_bias(4)
    x = torch.randn(3, 256, requires_grad=True)
    layer(x).sum().backward()
    assert torch.allclose(x.grad, layer.dequantize().sum(dim=0).expand(3, -1), atol=1e-5)


def tensor_bytes(module):
    """Bytes of every tensor a module holds: parameters, buffers and any tensor attribute."""
    held = list(module._parameters.values()) + list(module._buffers.values())
    held += [value for value in vars(module).values() if isinstance(value, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in held if t is not None)


@pytest.mark.parametrize("bits", [4, 8])
def test_cpu_layer_keeps_one_copy_of_its_weight(bits, kernels):
    out_features, in_features = 192, 256
    layer = layer_with_bias(bits, out_features, in_features)
    scales_and_bias = out_features * 2 + out_features * 4
    for tokens in (1, 300):
        with torch.no_grad():
            layer(torch.randn(tokens, in_features))
        assert tensor_bytes(layer) == out_features * in_features * bits // 8 + scales_and_bias
    # the C kernels read row tiles, torch's int4 kernel its own layout, its int8 kernel the original one
    expected = Layout.ROW_TILES if kernels == "c-kernels" else Layout.TORCH_INT4 if bits == 4 else Layout.CHECKPOINT
    assert layer.layout is expected and f"layout={expected.value!r}" in repr(layer)


@pytest.mark.parametrize("bits", [4, 8])
def test_state_dict_gives_the_original_layout_and_loads_back(bits, kernels):
    weight = torch.randn(192, 256) * 0.02
    original, scale = quantize_weight(weight, bits)
    layer = QuantizedLinear.from_weight(weight, bits)
    with torch.no_grad():
        layer(torch.randn(4, 256))  # INT4: re-packs to the kernel layout
    state = layer.state_dict()
    assert state["weight"].dtype == torch.int8 and torch.equal(state["weight"], original)
    assert torch.equal(state["weight_scale"], scale)

    other = QuantizedLinear.from_weight(torch.randn(192, 256), bits)
    with torch.no_grad():
        other(torch.randn(1, 256))  # INT4: re-packed before the load
    other.load_state_dict(state)
    assert torch.equal(other.state_dict()["weight"], original)
    assert torch.equal(other.dequantize(), layer.dequantize())


def test_int4_values_survive_the_kernel_layout(torch_kernels_only):
    values = random_int4(128, 64, seed=3)
    layer = QuantizedLinear(64, 128, 4, bias=False)
    layer.weight.data, layer.weight_scale.data = pack_int4(values), torch.ones(128, dtype=torch.float16)
    with torch.no_grad():
        layer(torch.randn(1, 64))
    assert layer.layout is Layout.TORCH_INT4
    assert torch.equal(layer.integer_values(), values)
    assert torch.equal(unpack_int4(layer.original_weight()), values)


def test_quantize_accepts_empty_init_and_rejects_unknown_arguments(tiny_checkpoint):
    model = AutoModel.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    with pytest.raises(TypeError, match="unexpected arguments \\['use_cache_folder'\\]"):
        model.quantize(4, use_cache_folder=True)
    assert model.config.quantization_bit == 0
    layer = model.transformer.layers[0].attention.dense
    empty = ChatGLMForConditionalGeneration(copy.deepcopy(model.config)).quantize(8, empty_init=True)
    built = model.quantize(8)
    assert built.transformer.layers[0].attention.dense.weight.shape == (64, 64)
    assert isinstance(empty.transformer.layers[0].attention.dense, QuantizedLinear)
    assert empty.config.quantization_bit == 8
    expected, _ = quantize_weight(layer.weight, 8)
    assert torch.equal(built.transformer.layers[0].attention.dense.original_weight(), expected)


@pytest.mark.parametrize("rows", [192, 144])  # 144: a last block of 16 rows, packed in pairs
def test_int4_kernel_layout_handles_a_partial_last_block(rows):
    values = random_int4(rows, 64, seed=4)
    layout = int4_cpu_layout()
    kernel_bytes = to_int4_cpu_layout(pack_int4(values), layout)
    expected = torch.ops.aten._convert_weight_to_int4pack_for_cpu((values + 8).to(torch.int32), 1)
    assert torch.equal(kernel_bytes, expected)
    assert torch.equal(from_int4_cpu_layout(kernel_bytes, layout), pack_int4(values))
    ids = torch.tensor([[0, 1, 31, 32, 63], [64, 100, 127, 128, rows - 1]])
    assert torch.equal(int4_cpu_layout_rows(kernel_bytes, layout, ids), values[ids])


def qe_config(vocab_size=1040, hidden_size=64):
    """A small model whose vocabulary (65 blocks of 16 rows) takes the int4 kernel with a partial block."""
    return tiny_config(vocab_size=vocab_size, hidden_size=hidden_size, inner_hidden_size=256, max_sequence_length=64,
                       bos_token_id=1003, eos_token_id=1004, mask_token_id=1000, gmask_token_id=1001)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("vocab_size, hidden_size", [(1040, 64), (1042, 128)])  # the C kernels take K = 128
def test_quantized_embeddings_share_one_matrix_with_the_lm_head(bits, vocab_size, hidden_size, tmp_path, kernels):
    torch.manual_seed(0)
    model = ChatGLMForConditionalGeneration(qe_config(vocab_size, hidden_size)).eval()
    embedding_weight = model.transformer.word_embeddings.weight.detach().clone()
    assert not model.config.quantization_embeddings  # off unless asked for
    model.quantize(bits, quantize_embeddings=True)
    embeddings, head = model.transformer.word_embeddings, model.lm_head
    assert isinstance(embeddings, QuantizedEmbedding) and isinstance(head, QuantizedLinear)
    assert head.weight is embeddings.weight and head.weight_scale is embeddings.weight_scale
    packed, scale = quantize_weight(embedding_weight, bits)
    assert torch.equal(embeddings.original_weight(), packed) and torch.equal(embeddings.weight_scale, scale)
    # quantize() re-packed the shared weight for this machine's kernels, where they take its shape: the C
    # kernels' row tiles (two rows after the last tile of 1042); torch's int4 layout (blocks of 16 rows)
    c_kernels_take, torch_takes = hidden_size % 128 == 0, bits == 4 and vocab_size % 16 == 0
    takes = c_kernels_take if kernels == "c-kernels" else torch_takes
    kernel_layout = Layout.ROW_TILES if kernels == "c-kernels" else Layout.TORCH_INT4
    assert embeddings.layout is head.layout is (kernel_layout if takes else Layout.CHECKPOINT)
    # a copy keeps the two sharing one matrix and one stated layout
    copied = copy.deepcopy(model)
    assert copied.lm_head.weight is copied.transformer.word_embeddings.weight
    assert copied.lm_head.packing is copied.transformer.word_embeddings.packing is not embeddings.packing
    assert torch.equal(copied.lm_head.original_weight(), packed)

    ids = torch.tensor([[5, vocab_size - 1, 1030, 64, 1001, 1003]])
    with torch.no_grad():
        logits = model(ids).logits
    dequantized = head.dequantize()
    with torch.no_grad():
        rows = embeddings(ids)
        hidden = model.transformer(ids).last_hidden_state
    assert torch.equal(rows, dequantized[ids])
    expected = hidden @ dequantized.T
    assert ((logits - expected).norm() / expected.norm()) < 5e-3

    model.save_pretrained(tmp_path)
    again = AutoModel.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert again.config.quantization_embeddings and again.config.quantization_bit == bits
    assert again.lm_head.weight is again.transformer.word_embeddings.weight
    assert again.lm_head.weight_scale is again.transformer.word_embeddings.weight_scale
    assert torch.equal(again.transformer.word_embeddings.original_weight(), packed)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, logits)


@pytest.mark.parametrize("bits", [4, 8])
def test_cpu_kernels_take_operands_off_a_64_byte_boundary(bits, kernels):
    """Tensors memory-mapped from safetensors can start anywhere; torch's int8 kernel crashes on them."""
    layer = QuantizedLinear.from_weight(torch.randn(192, 256), bits)
    shifted = torch.empty(layer.weight.numel() + 1, dtype=torch.int8)[1:].view(layer.weight.shape)
    layer.weight.data = shifted.copy_(layer.weight)
    x = torch.empty(3 * 256 + 1, dtype=torch.bfloat16)[1:].view(3, 256).copy_(torch.randn(3, 256))
    assert layer.weight.data_ptr() % 64 and x.data_ptr() % 64
    with torch.no_grad():
        out = layer(x)
    expected = x.float() @ layer.dequantize().T
    assert ((out.float() - expected).norm() / expected.norm()) < activation_tolerance(bits, kernels)
