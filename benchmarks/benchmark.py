"""CPU speed and memory of ChatGLM in fp32, bf16, INT8 and INT4, with random weights.

Each (shape, precision) runs in its own process so that its peak memory (max RSS) is its own.

    python benchmarks/benchmark.py                       # mid-sized model, all precisions
    python benchmarks/benchmark.py --shape 6b --precisions bf16 int8 int4   # the real 6B shape
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

SHAPES = {
    "mid": dict(hidden_size=2048, inner_hidden_size=8192, num_layers=8, num_attention_heads=16),
    "6b": dict(hidden_size=4096, inner_hidden_size=16384, num_layers=28, num_attention_heads=32),
}
PRECISIONS = ("fp32", "bf16", "int8", "int4")


def build_model(shape, precision):
    """A random-weight model; quantized ones are built directly in packed form (no fp copy needed)."""
    from chatglm import ChatGLMConfig, ChatGLMForConditionalGeneration

    bits = {"int8": 8, "int4": 4}.get(precision, 0)
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    config = ChatGLMConfig(**SHAPES[shape], quantization_bit=bits)
    torch.set_default_dtype(dtype)
    with torch.device("meta"):
        model = ChatGLMForConditionalGeneration(config)
    torch.set_default_dtype(torch.float32)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.dtype == torch.int8:
                tensor.copy_(torch.randint(-128, 128, tensor.shape, dtype=torch.int8, generator=generator))
            elif name.endswith("weight_scale"):
                tensor.fill_(0.002)
            elif "layernorm" in name:
                tensor.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                tensor.normal_(0, 0.02, generator=generator)
    model.tie_weights()
    return model.eval()


def measure(shape, precision, prompt_tokens, new_tokens, threads):
    torch.set_num_threads(threads)
    start = time.perf_counter()
    model = build_model(shape, precision)
    build_s = time.perf_counter() - start
    config = model.config
    ids = torch.randint(100, 1000, (1, prompt_tokens))
    ids[0, -2:] = torch.tensor([config.gmask_token_id, config.bos_token_id])
    with torch.inference_mode():
        start = time.perf_counter()
        out = model(ids, use_cache=True)
        prefill_s = time.perf_counter() - start
        cache, token = out.cache, out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(new_tokens):
            ids = torch.cat((ids, token), dim=1)
            positions = model.transformer.get_position_ids(ids, past_length=ids.shape[1] - 1)
            out = model(token, position_ids=positions, cache=cache, use_cache=True)
            cache, token = out.cache, out.logits[:, -1:].argmax(-1)
        decode_s = time.perf_counter() - start
    params = sum(t.numel() * t.element_size() for t in model.state_dict().values()) - \
        model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    return {
        "shape": shape, "precision": precision, "threads": threads,
        "weights_GB": round(params / 1e9, 2),
        "peak_rss_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "build_s": round(build_s, 1),
        "prefill_tok_s": round(prompt_tokens / prefill_s, 1),
        "decode_tok_s": round(new_tokens / decode_s, 2),
        "decode_ms_per_token": round(1000 * decode_s / new_tokens, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="mid")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child-process mode
    args = parser.parse_args()

    if args.one:
        print(json.dumps(measure(args.shape, args.precisions[0], args.prompt_tokens, args.new_tokens, args.threads)))
        return
    print("| shape | precision | weights GB | peak RSS GB | prefill tok/s | decode tok/s | ms/token |")
    print("|---|---|---|---|---|---|---|")
    for precision in args.precisions:
        command = [sys.executable, __file__, "--one", "--shape", args.shape, "--precisions", precision,
                   "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
                   "--threads", str(args.threads)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"| {args.shape} | {precision} | failed: {result.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"| {r['shape']} | {r['precision']} | {r['weights_GB']} | {r['peak_rss_GB']} | {r['prefill_tok_s']} | "
              f"{r['decode_tok_s']} | {r['decode_ms_per_token']} |", flush=True)


if __name__ == "__main__":
    main()
