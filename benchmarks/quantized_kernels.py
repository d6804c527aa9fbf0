"""Time one quantized layer of ChatGLM-6B's width on CPU, per path and number of tokens.

For each width (INT8, INT4) and token count: what the layer runs (`layer(x)`: the C kernel of
chatglm/cpu_kernels.py for decoding steps and short prompts, else torch's weight-only kernel or the
integer weight expanded + F.linear), and beside it torch's weight-only kernel with bfloat16 activations and
the weight expanded to bfloat16 and to float32 + F.linear, timed alone: the faster of the last two is the
prompt path this CPU should take (chatglm/cpu_features.py: float32 without bfloat16 dot products; the
header shows the choice). The crossing of the weight-only kernel and the expanded weight decides
`DEQUANTIZED_MATMUL_MIN_TOKENS` in chatglm/quantization.py; `cpu_kernels.MOST_TOKENS` where the C kernel
stops. Eight copies of the weight are used in turn, so that none stays in the L3 cache. They are in 2 MB
pages, as a loaded model's weights are (chatglm/huge_pages.py); --pages 4k keeps them in 4 KB pages.

    python benchmarks/quantized_kernels.py            # 16384x4096 (dense_h_to_4h)
    python benchmarks/quantized_kernels.py --shape 4096 16384 --tokens 1,16,128
    python benchmarks/quantized_kernels.py --tokens 1 --pages 4k     # what 2 MB pages buy
"""

import argparse
import itertools
import time
from functools import partial

import torch
import torch.nn.functional as F

from chatglm import cpu_features, cpu_kernels, huge_pages, quantization, torch_fallback
from chatglm.quantization import QuantizedLinear

COPIES = 8


def best_ms(function, repeats):
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def best_ms_over(layers, function, repeats):
    """Best time of function(layer), each call with the next of the layers."""
    turn = itertools.cycle(layers)
    return best_ms(lambda: function(next(turn)), repeats)


def run_layer(x, layer):
    return layer(x)


def expanded_linear(x, layer):
    """The integer weight expanded to x's dtype (float32 or bfloat16) and F.linear: a prompt's product."""
    return F.linear(x, layer._integer_values(x.dtype))


def path_taken(layer, tokens):
    x = torch.empty(tokens, layer.in_features)
    if cpu_kernels.takes_matmul(x, layer.weight, int4=layer.bits == 4):
        return "C kernel"
    if layer.in_cpu_kernel_layout and cpu_kernels.library() is not None:  # row tiles
        if layer.bits == 4 or tokens >= quantization.DEQUANTIZED_MATMUL_MIN_TOKENS[8]:
            return "expanded weight + F.linear"
        return f"C kernel, {cpu_kernels.most_tokens(layer.weight.dtype)} tokens at a time"
    return "expanded weight + F.linear" if tokens >= quantization.DEQUANTIZED_MATMUL_MIN_TOKENS[layer.bits] else \
        "torch kernel"


def torch_kernel(bits, layers):
    """torch's weight-only kernel on each layer's integers (INT4 re-packed into its layout), unscaled."""
    if bits == 8:
        original = {id(layer): layer.original_weight() for layer in layers}
        return lambda x, layer: torch._weight_int8pack_mm(x, original[id(layer)], torch_fallback.unit_row_scales(
            layer.out_features))
    layout = torch_fallback.int4_cpu_layout()
    packed = {id(layer): torch_fallback.to_int4_cpu_layout(layer.original_weight(), layout) for layer in layers}
    group = torch_fallback.int4_kernel_group_size(layers[0].in_features)
    scales = torch_fallback._unit_group_scales(layers[0].in_features, layers[0].out_features, group)
    return lambda x, layer: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed[id(layer)], group, scales)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=2, default=(16384, 4096), metavar=("OUT", "IN"))
    parser.add_argument("--tokens", default="1,2,4,8,16,32,64,128,256,512")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pages", choices=("2m", "4k"), default="2m", help="page size of the weights")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out_features, in_features = args.shape
    weight = torch.randn(out_features, in_features) * 0.02

    print(f"one {out_features}x{in_features} layer, {args.threads} threads, best of {args.repeats}, ms; "
          f"C kernels: {'built' if cpu_kernels.library() is not None else 'not available'}; weights in "
          f"{'2 MB pages where the system allows' if args.pages == '2m' else '4 KB pages'}; "
          f"x bfloat16; prompts in {cpu_features.cpu_path()} (torch {torch.backends.cpu.get_cpu_capability()})")
    print("| bits | tokens | layer(x) | path | torch kernel, bf16 | bf16 weight + F.linear | fp32 weight + F.linear |")
    print("|---|---|---|---|---|---|---|")
    for bits in (8, 4):
        layers = [QuantizedLinear.from_weight(weight + 1e-3 * i, bits) for i in range(COPIES)]
        for layer in layers:
            layer.to_cpu_kernel_layout()  # as loading and quantizing leave it
            if args.pages == "2m":
                huge_pages.collapse_weights(layer)
        kernel = torch_kernel(bits, layers)
        for tokens in (int(t) for t in args.tokens.split(",")):
            x = torch.randn(tokens, in_features, dtype=torch.bfloat16)
            with torch.no_grad():
                layer_ms, torch_ms, bf16_ms, fp32_ms = (
                    best_ms_over(layers, partial(function, inputs), args.repeats)
                    for function, inputs in ((run_layer, x), (kernel, x), (expanded_linear, x),
                                             (expanded_linear, x.float())))
            print(f"| {bits} | {tokens} | {layer_ms:.2f} | {path_taken(layers[0], tokens)} | {torch_ms:.2f} | "
                  f"{bf16_ms:.2f} | {fp32_ms:.2f} |", flush=True)


if __name__ == "__main__":
    main()
