"""The model's plain (unquantized) linear layer, which picks the CPU path of each product: the C kernels for
decoding steps, float32 for half-precision prompts on CPUs that emulate half-precision products, else
nn.Linear."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_features import SCRATCH_MAX_VALUES, prompt_dtype, scratch
from .cpu_kernels import matmul, takes_matmul


class Linear(nn.Linear):
    """nn.Linear whose decoding steps on CPU (one token per sequence, up to cpu_kernels.MOST_TOKENS) run the
    kernels of cpu_kernels, which read the weight once for all of them. A half-precision prompt on a CPU
    that emulates half-precision products (see cpu_features) multiplies a float32 copy of the weight;
    everything else is nn.Linear's."""

    def forward(self, x):
        if takes_matmul(x, self.weight):
            return matmul(x, self.weight, bias=self.bias)  # the bias added in float32, then rounded once, like F.linear
        if not self._in_float32(x):
            return super().forward(x)
        # summed in float32 and rounded once, as F.linear; a weight bigger than the scratch buffer (the LM
        # head over every position) a slice of rows at a time
        dtype, x, rows = x.dtype, x.float(), max(1, SCRATCH_MAX_VALUES // self.in_features)
        biases = [None] * math.ceil(self.out_features / rows) if self.bias is None else self.bias.float().split(rows)
        return torch.cat([F.linear(x, scratch(*part.shape, torch.float32).copy_(part), bias).to(dtype)
                          for part, bias in zip(self.weight.split(rows), biases)], dim=-1)

    def _in_float32(self, x):
        return (x.device.type == "cpu" and x.dtype != torch.float32 and prompt_dtype(x.dtype) == torch.float32
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)))
