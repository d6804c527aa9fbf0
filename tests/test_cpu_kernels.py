"""The C kernels of one CPU decoding step (chatglm/cpu_kernels.py) against torch's arithmetic. Skipped where the
kernels cannot be built; tests/test_quantization.py checks torch's fallback there."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from chatglm import ChatGLMConfig, ChatGLMForConditionalGeneration, cpu_kernels, linear, modeling_chatglm
from chatglm.cpu_features import cpu_flags
from chatglm.quantization import QuantizedLinear, pack_int4

pytestmark = pytest.mark.requires_cpu_kernels


def assert_rounded_product(out, expected):
    """out is the float32 sum of the product, rounded once to out's dtype: within 1e-4 of the exact product
    in float32, within half a step of bfloat16 (and 1e-4) in bfloat16."""
    relative = 0 if out.dtype == torch.float32 else 2**-8
    assert ((out.double() - expected).abs() <= expected.abs() * relative + 1e-4).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [260, 263])  # the last rows outside the tiles of four
def test_one_token_matmul_equals_the_float64_product(dtype, x_dtype, rows):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(rows, 4096, generator=generator).to(dtype)
    x = torch.randn(1, 1, 4096, generator=generator).to(x_dtype)
    if dtype == torch.bfloat16:  # a bfloat16 weight may round x to bfloat16 (as in a bfloat16 model)
        x = x.to(torch.bfloat16)
    assert cpu_kernels.takes_matmul(x, weight)
    out = cpu_kernels.matmul(x, weight)
    expected = x.double() @ weight.double().T
    assert out.dtype == x.dtype and out.shape == (1, 1, rows)
    assert_rounded_product(out, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens", [2, 3, 5, 8, 13, 32])  # whole tiles of tokens and a remainder
def test_a_batch_of_tokens_matmul_equals_the_float64_product(dtype, tokens):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(258, 256, generator=generator).to(dtype)  # small: a batch takes every size
    x = torch.randn(tokens, 1, 256, generator=generator)
    if dtype == torch.bfloat16:
        x = x.bfloat16()  # the kernel multiplies x rounded to bfloat16
    if tokens > cpu_kernels.most_tokens(dtype):  # e.g. bfloat16 on a CPU without bfloat16 dot products
        assert not cpu_kernels.takes_matmul(x, weight)
        return
    assert cpu_kernels.takes_matmul(x, weight)
    out = cpu_kernels.matmul(x, weight)
    assert out.shape == (tokens, 1, 258) and out.dtype == x.dtype
    assert_rounded_product(out, x.double() @ weight.double().T)


def kernel_layer(weight, bits, bias=None):
    """A quantized layer with its weight in the kernels' row tiles, as loading or quantizing leaves it."""
    layer = QuantizedLinear.from_weight(weight, bits, bias)
    layer.to_cpu_kernel_layout()
    assert layer.weight.dtype == torch.uint8
    return layer


def test_how_many_tokens_the_kernels_take():
    assert cpu_kernels.most_tokens(torch.float32) == cpu_kernels.most_tokens(torch.float16) == 32
    assert cpu_kernels.most_tokens(torch.uint8) == 16
    assert cpu_kernels.most_tokens(torch.bfloat16) == (8 if cpu_kernels.library().bf16_batches() else 1)
    assert cpu_kernels.most_tokens(torch.uint8, int4=True) == 32


def relative_error(out, expected):
    return ((out.double() - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("tokens", [1, 2, 3, 8, 16])
def test_int8_matmul_applies_the_fp16_row_scales(tokens):
    layer = kernel_layer(torch.randn(514, 2048, generator=torch.Generator().manual_seed(1)), 8)
    x = torch.randn(tokens, 2048, generator=torch.Generator().manual_seed(2))
    assert cpu_kernels.takes_matmul(x, layer.weight)
    out = cpu_kernels.matmul(x, layer.weight, layer.weight_scale)
    # x meets the integers as int16 (steps of 2^-15 of each block's largest value): about 3e-5 relative,
    # where the bfloat16 activations of torch's weight-only kernel give about 1e-3
    assert relative_error(out, x.double() @ layer.dequantize(torch.float64).T) < 1e-4


def test_int8_matmul_keeps_an_outlier_and_propagates_nan():
    layer = kernel_layer(torch.randn(256, 4096, generator=torch.Generator().manual_seed(1)), 8)
    x = torch.randn(4096, generator=torch.Generator().manual_seed(2))
    x[7] = 300.0  # an outlier feature sets the int16 step of its block of 128
    weight = layer.dequantize(torch.float64)
    expected = x.double() @ weight.T
    bfloat16_error = relative_error(x.bfloat16().double() @ weight.T, expected)
    assert relative_error(cpu_kernels.matmul(x, layer.weight, layer.weight_scale), expected) < bfloat16_error / 2
    x[9] = float("nan")
    assert cpu_kernels.matmul(x, layer.weight, layer.weight_scale).isnan().all()


@pytest.mark.parametrize("model_dtype", [None, torch.float32])
def test_int8_layer_decodes_with_the_kernel(model_dtype):
    layer = kernel_layer(torch.randn(512, 2048, generator=torch.Generator().manual_seed(1)), 8,
                                        bias=torch.randn(512))
    if model_dtype is not None:  # model.float() after quantizing also turns the fp16 row scales float32
        layer.to(model_dtype)
    x = torch.randn(1, 1, 2048, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = layer(x)
    expected = x.double() @ layer.dequantize(torch.float64).T + layer.bias.double()
    assert relative_error(out, expected) < 1e-4


@pytest.mark.parametrize("int4", [False, True])
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16])
def test_row_scales_are_read_in_the_dtype_they_are_stored_in(int4, scale_dtype):
    """fp16 as in the checkpoints, bfloat16 after model.bfloat16(): the same products as with the same
    values in float32, in the tiles and in the last rows outside them (514 = 128 tiles of 4 + 2)."""
    layer = kernel_layer(torch.randn(514, 2048, generator=torch.Generator().manual_seed(1)),
                                        4 if int4 else 8)
    scale = layer.weight_scale.to(scale_dtype)
    x = torch.randn(3, 2048, generator=torch.Generator().manual_seed(2))
    out = cpu_kernels.matmul(x, layer.weight, scale, int4=int4)
    assert torch.equal(out, cpu_kernels.matmul(x, layer.weight, scale.float(), int4=int4))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("weight_kind", ["float", "int8", "int4"])
@pytest.mark.parametrize("round_before_bias", [False, True])
@pytest.mark.parametrize("tokens", [1, 3])
def test_outputs_and_bias_are_rounded_as_torch_rounds_them(dtype, weight_kind, round_before_bias, tokens):
    """In a bfloat16/float16 model the kernels write the output in the model's dtype and add the bias
    themselves: the same bits as torch rounding the float32 product (once, as F.linear; or before a
    bias added in the model's dtype, as the original's quantized layers). 514 rows: the last two lie
    outside the vectors of the rounding loop."""
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(514, 2048, generator=generator)
    weight[5] *= 1e4  # outputs beyond float16's range become inf in both
    x = torch.randn(tokens, 2048, generator=generator).to(dtype)
    bias = torch.randn(514, generator=generator).to(dtype)
    if weight_kind == "float":
        weight, scale, int4 = weight.to(dtype), None, False
    else:
        layer = kernel_layer(weight, 4 if weight_kind == "int4" else 8)
        weight, scale, int4 = layer.weight, layer.weight_scale, weight_kind == "int4"
    product = cpu_kernels.matmul(x.float(), weight, scale, int4=int4)  # float32
    if round_before_bias:
        expected = product.to(dtype) + bias
    else:
        expected = (product + bias.float()).to(dtype)
    out = cpu_kernels.matmul(x, weight, scale, int4=int4, bias=bias, round_before_bias=round_before_bias)
    assert out.dtype == dtype and torch.equal(out, expected)


def int4_layer(rows, columns, seed=1):
    return kernel_layer(torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed)), 4)


def int4_error(out, x, layer):
    """The largest error of any output against the float64 product with the dequantized weight, in units
    of the outputs' spread: about 0.01 from the int8 activations, about 1 for a wrong row or token."""
    expected = x.double() @ layer.dequantize(torch.float64).T
    return ((out.double() - expected).abs().max() / expected.std()).item()


@pytest.mark.parametrize("tokens", [1, 2, 3, 5, 8, 32])  # whole tiles of two tokens and a remainder
@pytest.mark.parametrize("rows, columns", [(514, 2048), (131, 384)])  # last rows outside the tiles; a short span
def test_int4_matmul_reads_row_tiles_and_applies_the_row_scales(tokens, rows, columns):
    layer = int4_layer(rows, columns)
    x = torch.randn(tokens, columns, generator=torch.Generator().manual_seed(2))
    assert cpu_kernels.takes_matmul(x, layer.weight, int4=True)
    out = cpu_kernels.matmul(x, layer.weight, layer.weight_scale, int4=True)
    assert out.shape == (tokens, rows) and out.dtype == torch.float32
    # x meets the nibbles as int8 (steps of 1/127 of each group of 32 values' largest)
    assert int4_error(out, x, layer) < 0.03


def test_int4_matmul_keeps_an_outlier_to_its_group_and_propagates_nan():
    layer = int4_layer(256, 4096)
    x = torch.randn(4096, generator=torch.Generator().manual_seed(2))
    x[7] = 300.0  # an outlier feature coarsens the int8 step of its group of 32 only (as in chatglm.cpp's q8_0)
    expected = x.double() @ layer.dequantize(torch.float64).T
    out = cpu_kernels.matmul(x, layer.weight, layer.weight_scale, int4=True)
    assert relative_error(out, expected) < 0.03  # 0.015 here; rounding a random weight to 4 bits costs 0.17
    x[9] = float("nan")
    assert cpu_kernels.matmul(x, layer.weight, layer.weight_scale, int4=True).isnan().all()


@pytest.mark.parametrize("rows", [96, 99])  # 99: three rows after the last tile
@pytest.mark.parametrize("int4", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_integer_tiles_expand_to_their_exact_values(rows, int4, dtype):
    low, high = (-8, 8) if int4 else (-128, 128)
    values = torch.randint(low, high, (rows, 256), generator=torch.Generator().manual_seed(3), dtype=torch.int8)
    tiles = cpu_kernels.to_row_tiles(pack_int4(values) if int4 else values.clone())
    out = cpu_kernels.expand(tiles, torch.empty(rows, 256, dtype=dtype), int4=int4)
    assert torch.equal(out, values.to(dtype))


@pytest.mark.parametrize("rows", [8, 11, 3001])  # 3001: tiles re-arranged over several steps
def test_row_tiles_interleave_four_rows_64_bytes_at_a_time_and_round_trip(rows):
    weight = torch.randint(-128, 128, (rows, 192), generator=torch.Generator().manual_seed(4), dtype=torch.int8)
    rearranged = weight.clone()
    tiles = cpu_kernels.to_row_tiles(rearranged)
    assert tiles.dtype == torch.uint8 and tiles.shape == weight.shape
    assert tiles.data_ptr() == rearranged.data_ptr()  # in place: no second copy of the weight
    flat = tiles.view(torch.int8).flatten()
    # the first tile: bytes 0..63 of rows 0, 1, 2, 3, then bytes 64..127 of rows 0..3, ...
    assert torch.equal(flat[:256], weight[:4, :64].flatten())
    assert torch.equal(flat[256:320], weight[0, 64:128])
    assert torch.equal(flat[4 * 192 : 4 * 192 + 64], weight[4, :64])  # the second tile
    last = rows - rows % 4
    assert torch.equal(tiles[last:].view(torch.int8), weight[last:])  # the last rows as they are
    assert torch.equal(cpu_kernels.from_row_tiles(tiles), weight)
    ids = torch.tensor([rows - 1, 0, 5, 3, rows - 1])
    assert torch.equal(cpu_kernels.row_tiles_rows(tiles, ids), weight[ids])


def test_products_the_kernels_do_not_take():
    weight = torch.randn(256, 4096)
    assert cpu_kernels.takes_matmul(torch.randn(32, 4096), weight)
    assert not cpu_kernels.takes_matmul(torch.randn(33, 4096), weight)  # more tokens than the kernels take
    int8 = kernel_layer(weight, 8).weight
    assert cpu_kernels.takes_matmul(torch.randn(4096), int8)
    assert cpu_kernels.takes_matmul(torch.randn(16, 4096), int8)
    assert not cpu_kernels.takes_matmul(torch.randn(17, 4096), int8)
    small = torch.randn(64, 512)
    assert not cpu_kernels.takes_matmul(torch.randn(512), small)  # one token, cache-resident weight
    assert cpu_kernels.takes_matmul(torch.randn(2, 512), small)  # a batch takes every size
    assert not cpu_kernels.takes_matmul(torch.randn(4000), torch.randn(256, 4000))  # K not in blocks of 128
    assert not cpu_kernels.takes_matmul(torch.randn(4096), weight.T.contiguous().T)  # not contiguous
    assert not cpu_kernels.takes_matmul(torch.randn(4096, requires_grad=True), weight)  # autograd records
    with torch.no_grad():
        assert cpu_kernels.takes_matmul(torch.randn(4096, requires_grad=True), weight)
    packed = kernel_layer(small, 4).weight  # int8 [64, 256]: two values a byte
    assert cpu_kernels.takes_matmul(torch.randn(512), packed, int4=True)  # INT4 at every size
    assert cpu_kernels.takes_matmul(torch.randn(32, 512), packed, int4=True)
    assert not cpu_kernels.takes_matmul(torch.randn(33, 512), packed, int4=True)
    assert not cpu_kernels.takes_matmul(torch.randn(256), packed, int4=True)  # K is twice the bytes
    assert not cpu_kernels.takes_matmul(torch.randn(512), packed.view(torch.int8), int4=True)  # not row tiles


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [32, 128])
@pytest.mark.parametrize("padded", [False, True])
def test_one_query_attention_over_a_cache_buffer_view(dtype, head_dim, padded):
    generator = torch.Generator().manual_seed(3)
    batch, heads, length = 3, 16, 301  # not a whole number of 4 or 16 positions
    buffer = torch.randn(2, batch, heads, 512, head_dim, generator=generator).to(dtype)
    k, v = buffer[0, :, :, :length], buffer[1, :, :, :length]  # like the KV cache: a view with room to grow
    # q as the model passes it: a view of the fused projection [batch, 1, heads, 3, head_dim], transposed
    qkv = torch.randn(batch, 1, heads, 3, head_dim, generator=generator).to(dtype)
    q = qkv[:, :, :, 0].transpose(1, 2)  # [batch, heads, 1, head_dim]
    mask = None
    if padded:  # rows of a batch left-padded by 0, 1 and 200 positions, whose keys/values are garbage
        mask = (torch.arange(length) >= torch.tensor([0, 1, 200])[:, None])[:, None, None, :]
        k[2, :, :200], v[2, :, :200] = float("nan"), float("inf")
    assert cpu_kernels.takes_attention(q, k, v, mask)
    out = cpu_kernels.attend(q, k, v, head_dim**-0.5, mask)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask,
                                              scale=head_dim**-0.5)
    if padded:  # torch's NaN keys give NaN even where masked; the kernel weighs them 0
        expected[2] = F.scaled_dot_product_attention(q[2:].double(), k[2:, :, 200:].double(),
                                                     v[2:, :, 200:].double(), scale=head_dim**-0.5)[0]
    assert out.dtype == dtype and out.shape == expected.shape
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # the output is rounded to the cache's dtype
    torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("two_d", [True, False])
@pytest.mark.parametrize("head_dim", [128, 32])  # halves of 32 (two AVX-512 vectors) and of 8 (a scalar tail)
def test_rotary_kernel_gives_torchs_numbers_exactly(dtype, two_d, head_dim):
    heads = 4
    config = ChatGLMConfig(vocab_size=64, hidden_size=heads * head_dim, num_layers=1, num_attention_heads=heads,
                           max_sequence_length=2048, position_encoding_2d=two_d)
    transformer = ChatGLMForConditionalGeneration(config).transformer
    generator = torch.Generator().manual_seed(6)
    batch, seq = 2, 37
    shape = (batch, 2, seq) if two_d else (batch, seq)
    positions = torch.randint(0, 2047, shape, generator=generator)  # every angle, up to the longest sequence
    rotary = transformer.rotary_tables(positions, dtype)
    qkv = (torch.randn(batch, seq, heads, 3, head_dim, generator=generator) * 4).to(dtype)
    expected_q, expected_k = modeling_chatglm.apply_rotary(qkv[:, :, :, :2], rotary).unbind(3)
    expected_v = qkv[:, :, :, 2].clone()
    assert cpu_kernels.takes_rotary(qkv, *rotary[:2])
    q, k = modeling_chatglm.rotate_queries_and_keys(qkv, rotary)  # in place, in qkv
    assert q.data_ptr() == qkv.data_ptr()
    assert torch.equal(q, expected_q) and torch.equal(k, expected_k) and torch.equal(qkv[:, :, :, 2], expected_v)


def test_rotary_the_kernel_does_not_take():
    cos = sin = torch.randn(1, 3, 1, 1, 128)
    assert cpu_kernels.takes_rotary(torch.randn(1, 3, 4, 3, 128), cos, sin)
    assert not cpu_kernels.takes_rotary(torch.randn(1, 3, 4, 3, 128).bfloat16(), cos, sin)  # tables of another dtype
    assert not cpu_kernels.takes_rotary(torch.randn(1, 3, 8, 3, 128)[:, :, ::2], cos, sin)  # not contiguous
    assert not cpu_kernels.takes_rotary(torch.randn(1, 3, 4, 3, 128, requires_grad=True), cos, sin)  # training


def test_attention_the_kernels_do_not_take():
    k = v = torch.randn(1, 8, 300, 128)
    assert not cpu_kernels.takes_attention(torch.randn(1, 8, 2, 128), k, v, None)  # two queries
    # a mask per head or per query is not the padding of a batch
    assert not cpu_kernels.takes_attention(torch.randn(1, 8, 1, 128), k, v, torch.ones(1, 8, 1, 300, dtype=bool))
    assert not cpu_kernels.takes_attention(torch.randn(1, 8, 1, 128), k, v, torch.zeros(1, 1, 1, 300))  # additive
    short = torch.randn(1, 8, 16, 128)
    assert not cpu_kernels.takes_attention(torch.randn(1, 8, 1, 128), short, short, None)  # cache-resident
    half = short.bfloat16()  # torch's attention over a short bfloat16 cache is several times slower
    assert cpu_kernels.takes_attention(torch.randn(1, 8, 1, 128, dtype=torch.bfloat16), half, half, None)
    assert not cpu_kernels.takes_attention(torch.randn(1, 8, 1, 128), half, half, None)  # q of another dtype
    assert cpu_kernels.takes_attention(torch.randn(1, 8, 1, 128), short, short, torch.ones(1, 1, 1, 16, dtype=bool))


def wide_model():
    """One block at a width the kernels take (1024 hidden, heads of 128), random weights."""
    config = ChatGLMConfig(vocab_size=1024, hidden_size=1024, inner_hidden_size=4096, num_layers=1,
                           num_attention_heads=8, max_sequence_length=512, bos_token_id=1003, eos_token_id=1004,
                           mask_token_id=1000, gmask_token_id=1001, pad_token_id=3)
    torch.manual_seed(0)
    return ChatGLMForConditionalGeneration(config).eval()


def greedy_scores(model, prompt, attention_mask=None):
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=attention_mask, max_new_tokens=6, min_new_tokens=6,
                             do_sample=False, output_scores=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.scores)


def count_kernel_calls(monkeypatch):
    calls = []
    for module, name in ((linear, "matmul"), (modeling_chatglm, "attend")):
        real = getattr(module, name)
        counted = lambda *args, _real=real, _name=name, **kwargs: calls.append(_name) or _real(*args, **kwargs)  # noqa: E731
        monkeypatch.setattr(module, name, counted)
    return calls


def test_decoding_with_the_kernels_gives_torchs_logits(monkeypatch):
    model = wide_model()
    prompt = torch.cat((torch.randint(5, 1000, (1, 300), generator=torch.Generator().manual_seed(4)),
                        torch.tensor([[1001, 1003]])), dim=1)  # long enough for the attention kernel
    calls = count_kernel_calls(monkeypatch)
    sequences, scores = greedy_scores(model, prompt)
    # five decoding steps, each with the block's four products, the LM head and one attention; and the
    # prompt's LM head, which computes the last position's logits only
    assert calls.count("matmul") == 5 * 5 + 1 and calls.count("attend") == 5

    monkeypatch.setattr(cpu_kernels, "library", lambda: None)
    torch_sequences, torch_scores = greedy_scores(model, prompt)
    assert torch.equal(sequences, torch_sequences)
    torch.testing.assert_close(scores, torch_scores, rtol=1e-4, atol=1e-4)


def test_a_padded_batch_decodes_with_the_kernels_to_torchs_logits(monkeypatch):
    model = wide_model()
    ids = torch.randint(5, 1000, (2, 40), generator=torch.Generator().manual_seed(5))
    ids[:, -2:] = torch.tensor([1001, 1003])
    padding = torch.ones_like(ids)
    ids[1, :15], padding[1, :15] = 3, 0  # the second prompt is 15 tokens shorter, left-padded
    calls = count_kernel_calls(monkeypatch)
    sequences, scores = greedy_scores(model, ids, padding)
    # five decoding steps of two tokens: the block's four products and the LM head, and the masked attention
    assert calls.count("matmul") == 5 * 5 + 1 and calls.count("attend") == 5

    monkeypatch.setattr(cpu_kernels, "library", lambda: None)
    torch_sequences, torch_scores = greedy_scores(model, ids, padding)
    assert torch.equal(sequences, torch_sequences)
    torch.testing.assert_close(scores, torch_scores, rtol=1e-4, atol=1e-4)


# the CPU flags (as /proc/cpuinfo names them) that code built with -march=NAME may use
MARCH_FLAGS = {
    "haswell": {"avx2", "fma", "f16c", "bmi1", "bmi2", "movbe", "abm"},
    "skylake-avx512": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
    "cooperlake": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl",
                   "avx512_vnni", "avx512_bf16"},
}


@pytest.mark.slow  # a fresh interpreter and a build per CPU
@pytest.mark.parametrize("march", list(MARCH_FLAGS))
def test_the_builds_for_other_cpus_compute_the_same(march, tmp_path):
    """CPUs with AVX2 only (haswell), AVX-512 without bfloat16 (skylake-avx512) and with it (cooperlake) get
    other code paths than this machine's native build, checked here in a fresh process, where this CPU can
    execute them (an AVX-512 build dies of SIGILL on an AVX2 CPU)."""
    missing = MARCH_FLAGS[march] - cpu_flags()
    if missing:
        pytest.skip(f"this CPU cannot run a {march} build (no {', '.join(sorted(missing))})")
    env = {**os.environ, "CHATGLM_CPU_KERNELS_MARCH": march, "XDG_CACHE_HOME": str(tmp_path)}
    tests = [f"{__file__}::{name}" for name in ("test_one_token_matmul_equals_the_float64_product",
                                                "test_a_batch_of_tokens_matmul_equals_the_float64_product",
                                                "test_int8_matmul_applies_the_fp16_row_scales",
                                                "test_int4_matmul_reads_row_tiles_and_applies_the_row_scales",
                                                "test_integer_tiles_expand_to_their_exact_values",
                                                "test_outputs_and_bias_are_rounded_as_torch_rounds_them",
                                                "test_one_query_attention_over_a_cache_buffer_view",
                                                "test_rotary_kernel_gives_torchs_numbers_exactly")]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert list((tmp_path / "chatglm" / "cpu_kernels").glob("*.so"))  # built for `march`, not taken from a cache
