"""Weight-only INT8/INT4 quantization of the ChatGLM block Linear layers, in pure torch.

Same scheme and storage as the original (and the `THUDM/chatglm-6b-int4`/`-int8` checkpoints):
symmetric, one fp16 scale per output row, `weight` stored as int8 [out, in * bits / 8], INT4 packed
two per byte with byte j = (w[2j] << 4) | (w[2j+1] & 0xF). Runs on any device: on CPU matmuls use
torch's int8 weight-only kernel (INT4 weights are unpacked to int8 for it on first use, so an INT4
model takes 1.5 bytes per weight there); elsewhere the weight is dequantized just in time.
"""

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_BITS = (4, 8)
BLOCK_LINEARS = ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")


def _check_bits(bits):
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"quantization to {bits} bits is not supported: use 4 or 8")


def quantize_weight(weight, bits):
    """(int8 weight [out, in * bits / 8], fp16 scale [out]) of a float weight [out, in].

    Computed in fp16 like the original, so the same checkpoint gives bit-identical integers."""
    _check_bits(bits)
    weight = weight.detach().to(torch.float16)
    scale = weight.abs().amax(dim=-1) / (2 ** (bits - 1) - 1)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    quantized = torch.round(weight / scale[:, None]).to(torch.int8)
    if bits == 4:
        high, low = quantized[:, 0::2].to(torch.int16), quantized[:, 1::2].to(torch.int16)
        quantized = ((high << 4) | (low & 0xF)).to(torch.uint8).view(torch.int8)
    return quantized, scale


def unpack_int4(packed):
    """Signed 4-bit values [out, 2 * n] from packed bytes [out, n]."""
    packed = packed.to(torch.int16)
    high = packed >> 4  # arithmetic shift keeps the sign of the high nibble
    low = ((packed & 0xF) ^ 8) - 8
    return torch.stack((high, low), dim=-1).flatten(-2).to(torch.int8)


class QuantizedLinear(nn.Module):
    """A Linear layer whose weight is stored as int8/int4 with per-row scales."""

    def __init__(self, in_features, out_features, bits, bias=True, device=None, dtype=None):
        super().__init__()
        _check_bits(bits)
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features * bits // 8, dtype=torch.int8, device=device), requires_grad=False
        )
        self.weight_scale = nn.Parameter(torch.empty(out_features, dtype=torch.float16, device=device),
                                         requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) \
            if bias else None

    @classmethod
    def from_linear(cls, linear, bits):
        layer = cls(linear.in_features, linear.out_features, bits, linear.bias is not None,
                    linear.weight.device, linear.weight.dtype)
        weight, scale = quantize_weight(linear.weight, bits)
        layer.weight.data.copy_(weight)
        layer.weight_scale.data.copy_(scale)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer

    def dequantize(self, dtype=torch.float32):
        """The float weight [out, in] that the original computes with."""
        values = unpack_int4(self.weight) if self.bits == 4 else self.weight
        return values.to(dtype) * self.weight_scale.to(dtype)[:, None]

    def int8_values(self):
        """The weight as one int8 per value [out, in]; unpacked once and kept for INT4 on CPU."""
        if self.bits == 8:
            return self.weight
        cached = getattr(self, "_unpacked", None)
        if cached is None or cached[0] != self.weight._version:
            cached = (self.weight._version, unpack_int4(self.weight))
            self._unpacked = cached
        return cached[1]

    def forward(self, x):
        bias = None if self.bias is None else self.bias.to(x.dtype)
        # torch's CPU int8 weight-only kernel serves both widths (INT4 values are unpacked to int8 once,
        # same numbers). It has no backward: while autograd records (P-Tuning on a quantized model
        # needs the input gradient) the dequantized path is used instead.
        recording = torch.is_grad_enabled() and x.requires_grad
        if x.device.type == "cpu" and not recording and hasattr(torch, "_weight_int8pack_mm"):
            shape = x.shape
            out = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]), self.int8_values(),
                                            self.weight_scale.to(x.dtype))
            out = out.view(*shape[:-1], self.out_features)
            return out if bias is None else out + bias
        return F.linear(x, self.dequantize(x.dtype), bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"


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
