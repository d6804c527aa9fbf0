"""Time one quantized layer of ChatGLM-6B's width on CPU, per path and number of tokens.

For each width (INT8, INT4) and token count: the kernel path (torch's weight-only kernel with bfloat16
activations; for INT8 at one token, the C kernel of chatglm/cpu_kernels.py, as decoding runs it), the
integer weight expanded to bfloat16 + F.linear (what long prompts use), and, for a few tokens, the
kernel with float32 activations (the slow path a float32 model used to take). The fastest of the first
two decides `DEQUANTIZED_MATMUL_MIN_TOKENS` in chatglm/quantization.py.

    python benchmarks/quantized_kernels.py            # 16384x4096 (dense_h_to_4h)
    python benchmarks/quantized_kernels.py --shape 4096 16384 --tokens 1,16,128
"""

import argparse
import time
from functools import partial

import torch

from chatglm import quantization
from chatglm.quantization import QuantizedLinear

NEVER = 1 << 30


def best_ms(function, repeats):
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def time_path(layer, x, min_tokens, repeats):
    """ms per forward with the kernel/F.linear switch set at min_tokens."""
    saved = quantization.DEQUANTIZED_MATMUL_MIN_TOKENS[layer.bits]
    quantization.DEQUANTIZED_MATMUL_MIN_TOKENS[layer.bits] = min_tokens
    try:
        with torch.no_grad():
            return best_ms(lambda: layer(x), repeats)
    finally:
        quantization.DEQUANTIZED_MATMUL_MIN_TOKENS[layer.bits] = saved


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=2, default=(16384, 4096), metavar=("OUT", "IN"))
    parser.add_argument("--tokens", default="1,2,4,8,16,32,64,128,256,512")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out_features, in_features = args.shape
    weight = torch.randn(out_features, in_features) * 0.02

    print(f"one {out_features}x{in_features} layer, {args.threads} threads, best of {args.repeats}, ms; "
          f"CPU kernels: {torch.backends.cpu.get_cpu_capability()}")
    print("| bits | tokens | kernel, bf16 | bf16 weight + F.linear | kernel, fp32 activations | chosen |")
    print("|---|---|---|---|---|---|")
    for bits in (8, 4):
        layer = QuantizedLinear.from_weight(weight, bits)
        values, scale = layer.integer_values(), layer.weight_scale.float()
        for tokens in (int(t) for t in args.tokens.split(",")):
            x = torch.randn(tokens, in_features, dtype=torch.bfloat16)
            kernel = time_path(layer, x, NEVER, args.repeats)
            expanded = time_path(layer, x, 0, args.repeats)
            slow = f"{best_ms(partial(fp32_kernel, x.float(), values, scale), 1):.1f}" if tokens <= 4 else ""
            chosen = "F.linear" if tokens >= quantization.DEQUANTIZED_MATMUL_MIN_TOKENS[bits] else "kernel"
            print(f"| {bits} | {tokens} | {kernel:.1f} | {expanded:.1f} | {slow} | {chosen} |", flush=True)


def fp32_kernel(x, values, scale):
    """What float32 models ran before: torch's int8 weight-only kernel on float32 activations (INT4
    values unpacked to one int8 each)."""
    return torch._weight_int8pack_mm(x, values, scale)


if __name__ == "__main__":
    main()
