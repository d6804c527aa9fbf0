"""Weight-only INT8/INT4 quantization of the ChatGLM block Linear layers.

Same scheme and checkpoint format as the original (and the `THUDM/chatglm-6b-int4`/`-int8` checkpoints):
symmetric, one fp16 scale per output row, `weight` stored as int8 [out, in * bits / 8], INT4 packed
two per byte with byte j = (w[2j] << 4) | (w[2j+1] & 0xF).

On CPU, decoding steps (and prompts of up to 32 tokens for INT4, 16 for INT8) run the C kernels of
cpu_kernels with float32 activations, whatever the model's dtype, the row scales applied inside. They read
the integer bytes (INT4 at half a byte per weight) re-arranged in row tiles (`cpu_kernels.to_row_tiles`),
once, at loading or quantizing (or at first use). Longer prompts expand the weight into a reusable buffer
and multiply it with `F.linear` (INT8 prompts of 17 to 31 tokens: the kernels 16 tokens at a time), in the
dtype `cpu_features.prompt_dtype` chooses: float32, or bfloat16 on a CPU with bfloat16 dot products.
Without the C kernels, short prompts and decoding steps run torch's weight-only kernels with bfloat16
activations (with float32 ones the same kernels are many times slower) and apply the fp16 row scales to
their output; INT4 weights are then re-packed once into the layout of torch's CPU int4 kernel instead.
Either way `state_dict()` writes the original layout. On other devices the weight is dequantized just in time.
"""

import enum
import threading

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_features import SCRATCH_MAX_VALUES, prompt_dtype, scratch
from .cpu_kernels import (
    expand,
    from_row_tiles,
    library,
    matmul,
    most_tokens,
    row_tiles_rows,
    takes_matmul,
    takes_row_tiles,
    to_row_tiles,
)
from .torch_fallback import (
    aligned,
    from_int4_cpu_layout,
    int4_cpu_layout,
    int4_cpu_layout_rows,
    int4_cpu_layout_values,
    int4_kernel_group_size,
    int4_matmul,
    int8_matmul,
    is_aligned,
    to_int4_cpu_layout,
    unit_row_scales,
)

SUPPORTED_BITS = (4, 8)
BLOCK_LINEARS = ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
# From this many tokens on, expanding the weight and calling F.linear is faster on CPU than the weight-only
# kernels (benchmarks/quantized_kernels.py shows where the two cross).
DEQUANTIZED_MATMUL_MIN_TOKENS = {8: 32, 4: 128}


def _check_bits(bits):
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"quantization to {bits} bits is not supported: use 4 or 8")


def pack_int4(values):
    """The original's packed bytes, int8 [out, in / 2], of signed 4-bit values [out, in]."""
    high, low = values[:, 0::2].to(torch.int16), values[:, 1::2].to(torch.int16)
    return ((high << 4) | (low & 0xF)).to(torch.uint8).view(torch.int8)


def unpack_int4(packed):
    """Signed 4-bit values [out, 2 * n] from packed bytes [out, n]."""
    packed = packed.to(torch.int16)
    high = packed >> 4  # arithmetic shift keeps the sign of the high nibble
    low = ((packed & 0xF) ^ 8) - 8
    return torch.stack((high, low), dim=-1).flatten(-2).to(torch.int8)


def quantize_weight(weight, bits):
    """(int8 weight [out, in * bits / 8], fp16 scale [out]) of a float weight [out, in].

    As in the original, the scale is computed in the weight's own dtype and stored as fp16, and
    `weight / scale` is rounded in the dtype torch promotes the two to (fp16 for an fp16 weight, fp32
    for an fp32 one), so the same weights give bit-identical integers."""
    _check_bits(bits)
    weight = weight.detach()
    scale = (weight.abs().amax(dim=-1) / (2 ** (bits - 1) - 1)).to(torch.float16)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # an all-zero row stays zero
    quantized = torch.round(weight / scale[:, None]).to(torch.int8)
    return (pack_int4(quantized) if bits == 4 else quantized), scale


_repack_lock = threading.Lock()


class Layout(enum.Enum):
    """How the bytes of a quantized weight are arranged."""

    CHECKPOINT = "checkpoint"  # int8 [rows, columns * bits / 8], as the checkpoints store it (any device)
    ROW_TILES = "row tiles"  # uint8, the C kernels' row tiles (cpu_kernels.to_row_tiles)
    TORCH_INT4 = "torch int4"  # uint8, the layout of torch's CPU int4 kernel (torch_fallback.to_int4_cpu_layout)


class Packing:
    """The layout of one quantized matrix, held by every module that holds its bytes (the quantized word
    embeddings and the LM head share one), so that re-packing the shared Parameter updates them all."""

    def __init__(self):
        self.layout = Layout.CHECKPOINT


class QuantizedWeight(nn.Module):
    """Storage of a quantized matrix [rows, columns]: `weight` int8 [rows, columns * bits / 8] in the
    checkpoint layout and fp16 `weight_scale` [rows]. A CPU weight is re-packed for this machine's kernels
    (row tiles for the C kernels; without them, torch's int4 layout): `layout` says which arrangement the
    bytes are in. state_dict() and load_state_dict() always use the checkpoint layout."""

    def __init__(self, rows, columns, bits, device=None):
        super().__init__()
        _check_bits(bits)
        self.bits = bits
        self.weight = nn.Parameter(torch.empty(rows, columns * bits // 8, dtype=torch.int8, device=device),
                                   requires_grad=False)
        self.weight_scale = nn.Parameter(torch.empty(rows, dtype=torch.float16, device=device), requires_grad=False)
        self.packing = Packing()
        self.register_state_dict_post_hook(_save_original_layout)
        self.register_load_state_dict_pre_hook(_load_original_layout)

    @property
    def layout(self) -> Layout:
        return self.packing.layout

    @property
    def in_cpu_kernel_layout(self):
        return self.layout is not Layout.CHECKPOINT

    def original_weight(self):
        """`weight` in the checkpoint layout (int8 [rows, columns * bits / 8])."""
        if self.layout is Layout.ROW_TILES:
            return from_row_tiles(self.weight)
        if self.layout is Layout.TORCH_INT4:
            return from_int4_cpu_layout(self.weight, int4_cpu_layout())
        return self.weight

    def _set_bytes(self, weight, layout):
        # in place: quantized word embeddings hold the same Parameter (and Packing) as the LM head
        self.weight.data = weight
        self.packing.layout = layout

    def to_cpu_kernel_layout(self):
        """Re-pack a CPU weight, once, into the layout this machine's kernels read, keeping no second copy;
        a weight they cannot take stays as it is (as does INT8 without the C kernels)."""
        if self.in_cpu_kernel_layout or self.weight.device.type != "cpu" or self.weight.is_meta:
            return
        with _repack_lock:  # two threads' first forwards must not both re-pack
            if not self.in_cpu_kernel_layout:
                repacked = self._repacked_for_cpu()
                if repacked is not None:
                    self._set_bytes(*repacked)

    def _repacked_for_cpu(self):
        """(bytes, layout) for this machine's kernels, or None where they do not take this weight."""
        if library() is not None:
            takes = takes_row_tiles(self.weight, self.bits == 4)
            return (to_row_tiles(self.weight), Layout.ROW_TILES) if takes else None
        layout = int4_cpu_layout()
        rows, columns = self.weight.shape[0], self.weight.shape[1] * 2
        # rows past the last full block must fill a block of 16, 32 or 48 rows
        if self.bits != 4 or layout is None or rows % 16 or int4_kernel_group_size(columns) is None:
            return None
        return to_int4_cpu_layout(self.weight, layout), Layout.TORCH_INT4


class QuantizedLinear(QuantizedWeight):
    """A Linear layer whose weight is stored as int8/int4 with per-row fp16 scales. On CPU the weight is
    re-packed for the kernels (see `to_cpu_kernel_layout`), at the latest on first use."""

    def __init__(self, in_features, out_features, bits, bias=True, device=None, dtype=None):
        super().__init__(out_features, in_features, bits, device)
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) \
            if bias else None

    @classmethod
    def from_weight(cls, weight, bits, bias=None):
        """Quantize a float weight [out, in] (and keep an optional bias [out]) without an nn.Linear."""
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, bits, bias is not None, weight.device,
                    weight.dtype if bias is None else bias.dtype)
        layer.weight.data, layer.weight_scale.data = quantize_weight(weight, bits)
        if bias is not None:
            layer.bias.data.copy_(bias.detach())
        return layer

    @classmethod
    def from_linear(cls, linear, bits):
        return cls.from_weight(linear.weight, bits, linear.bias)

    def integer_values(self):
        """The weight as signed integers, int8 [out, in]."""
        weight = self.original_weight()
        return unpack_int4(weight) if self.bits == 4 else weight

    def dequantize(self, dtype=torch.float32):
        """The float weight [out, in] that the original computes with."""
        return self.integer_values().to(dtype) * self.weight_scale.to(dtype)[:, None]

    def forward(self, x):
        bias = None if self.bias is None else self.bias.to(x.dtype)
        # torch's weight-only kernels have no backward: while autograd records (P-Tuning on a quantized
        # model needs the input gradient), and off the CPU, the dequantized weight is used instead.
        if x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
            return F.linear(x, self.dequantize(x.dtype), bias)
        self.to_cpu_kernel_layout()
        if takes_matmul(x, self.weight, int4=self.bits == 4):  # a decoding step (or a short prompt)
            return matmul(x, self.weight, self.weight_scale, int4=self.bits == 4, bias=bias, round_before_bias=True)
        tokens = x.reshape(-1, self.in_features).to(prompt_dtype(x.dtype))  # [tokens, in]
        # one op: the product is computed in the wider of the two dtypes, then rounded to the model's
        out = (self.cpu_integer_matmul(tokens) * self.weight_scale).to(x.dtype)
        out = out.view(*x.shape[:-1], self.out_features)
        return out if bias is None else out + bias

    def cpu_integer_matmul(self, tokens):
        """tokens [n, in] (float32 or bfloat16) times the integer weight, unscaled: [n, out] in their dtype."""
        if self.layout is Layout.ROW_TILES:
            return self._row_tiles_matmul(tokens)
        if tokens.shape[0] >= DEQUANTIZED_MATMUL_MIN_TOKENS[self.bits] and self.fits_scratch:
            return F.linear(tokens, self._integer_values(tokens.dtype))
        if self.bits == 8:
            if not is_aligned(self.weight):  # e.g. a memory-mapped checkpoint: one copy, in place
                self.weight.data = aligned(self.weight)
            return int8_matmul(tokens, self.weight)
        if self.layout is Layout.CHECKPOINT:  # a shape or CPU the int4 kernel does not take
            return F.linear(tokens, self._integer_values(tokens.dtype))
        return int4_matmul(tokens, self.weight)

    def _row_tiles_matmul(self, tokens):
        """More tokens than the C kernels take at once (a prompt), with the weight in their row tiles: the
        weight expanded to the tokens' dtype and F.linear, or the kernels a few tokens at a time, for INT8
        prompts too short to repay the expansion and for a weight too big for the scratch buffer (a quantized
        LM head)."""
        int4 = self.bits == 4
        if self.fits_scratch and (int4 or tokens.shape[0] >= DEQUANTIZED_MATMUL_MIN_TOKENS[8]):
            return F.linear(tokens, self._integer_values(tokens.dtype))
        ones = unit_row_scales(self.out_features, tokens.dtype)  # the products come out in the tokens' dtype
        parts = tokens.split(most_tokens(self.weight.dtype, int4=int4))
        return torch.cat([matmul(part, self.weight, ones, int4=int4) for part in parts])

    @property
    def fits_scratch(self):
        return self.out_features * self.in_features <= SCRATCH_MAX_VALUES

    def _integer_values(self, dtype):
        """The integer weight [out, in] as `dtype` (float32 or bfloat16: exact), in this thread's scratch buffer
        if it fits."""
        if not self.fits_scratch:
            return self.integer_values().to(dtype)
        values = scratch(self.out_features, self.in_features, dtype)
        if self.layout is Layout.ROW_TILES:
            return expand(self.weight, values, int4=self.bits == 4)
        if self.layout is Layout.CHECKPOINT or self.out_features % int4_cpu_layout().rows:
            return values.copy_(self.integer_values())
        return int4_cpu_layout_values(self.weight, int4_cpu_layout(), values)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"layout={self.layout.value!r}")


class QuantizedEmbedding(QuantizedWeight):
    """Word embeddings stored like a quantized layer (int rows + fp16 row scales), as in THUDM's
    `chatglm-6b-int4-qe`. `weight` and `weight_scale` are the very Parameters of the tied LM head (a
    QuantizedLinear over the same matrix), so the pair is held once. Returns float32 rows."""

    def __init__(self, num_embeddings, embedding_dim, bits, device=None):
        super().__init__(num_embeddings, embedding_dim, bits, device)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim

    def forward(self, input_ids):
        ids = input_ids.flatten()
        if self.layout is Layout.TORCH_INT4:
            values = int4_cpu_layout_rows(self.weight, int4_cpu_layout(), ids)
        else:
            tiled = self.layout is Layout.ROW_TILES
            rows = row_tiles_rows(self.weight, ids) if tiled else self.weight.index_select(0, ids)
            values = unpack_int4(rows) if self.bits == 4 else rows
        rows = values.float() * self.weight_scale.index_select(0, ids).float()[:, None]  # [tokens, hidden]
        return rows.view(*input_ids.shape, self.embedding_dim)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, layout={self.layout.value!r}"


def _save_original_layout(module, state_dict, prefix, local_metadata):
    """state_dict() of a layer holding kernel bytes gives the checkpoint's layout, so save_pretrained
    writes files the original (and any other machine) reads."""
    if module.in_cpu_kernel_layout:
        state_dict[prefix + "weight"] = module.original_weight()


def _load_original_layout(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                          error_msgs):
    """Checkpoints carry the original layout: a layer holding kernel bytes goes back to it before loading."""
    if module.in_cpu_kernel_layout and prefix + "weight" in state_dict:
        module._set_bytes(module.original_weight(), Layout.CHECKPOINT)


def to_cpu_kernel_layout(model):
    """Re-pack every quantized CPU weight of `model` for this machine's kernels (after loading or
    quantizing, so that the first token does not wait for it)."""
    for module in model.modules():
        if isinstance(module, QuantizedWeight):
            module.to_cpu_kernel_layout()


def quantize_model(transformer, bits, empty=False):
    """Replace the four Linear layers of every block of `transformer` (a ChatGLMModel) in place.

    `empty=True` only allocates the quantized layers (for loading an `-int4`/`-int8` checkpoint)."""
    _check_bits(bits)
    for block in transformer.layers:
        for path in BLOCK_LINEARS:
            parent_name, name = path.split(".")
            parent = getattr(block, parent_name)
            linear = getattr(parent, name)
            if isinstance(linear, QuantizedLinear):
                raise ValueError(f"the model is already quantized to {linear.bits} bits")
            if empty:
                layer = QuantizedLinear(linear.in_features, linear.out_features, bits, linear.bias is not None,
                                        linear.weight.device, linear.weight.dtype)
            else:
                layer = QuantizedLinear.from_linear(linear, bits)
            setattr(parent, name, layer)
    return transformer


def quantize_word_embeddings(model, bits, empty=False):
    """Quantize the word embeddings of `model` (a ChatGLMForConditionalGeneration) and the LM head tied to
    them, in place, as one shared integer matrix. `empty=True` only allocates them (for loading)."""
    _check_bits(bits)
    embeddings = model.transformer.word_embeddings
    if isinstance(embeddings, QuantizedEmbedding):
        raise ValueError(f"the embeddings are already quantized to {embeddings.bits} bits")
    vocab_size, hidden_size = embeddings.weight.shape
    quantized = QuantizedEmbedding(vocab_size, hidden_size, bits, embeddings.weight.device)
    if not empty:
        quantized.weight.data, quantized.weight_scale.data = quantize_weight(embeddings.weight, bits)
    head = QuantizedLinear(hidden_size, vocab_size, bits, bias=False, device=embeddings.weight.device)
    head.weight, head.weight_scale, head.packing = quantized.weight, quantized.weight_scale, quantized.packing
    model.transformer.word_embeddings, model.lm_head = quantized, head
    return model
