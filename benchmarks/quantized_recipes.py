"""Speed and memory of the README's CPU recipes on a checkpoint folder, per the perf protocol
(batch 1, greedy, 2 threads): prefill tokens/s over a 512-token prompt (median of 3), decode ms/token
(median of the 64 steps after the first, EOS suppressed) after a 16-token prompt, and peak RSS.
Each recipe runs in its own process, so its peak RSS is its own.

    python benchmarks/quantized_recipes.py ~/chatglm-bench/mid
    python benchmarks/quantized_recipes.py ~/chatglm-bench/mid --recipes float-int4 bf16-int4-qe

Recipes: DTYPE-BITS[-qe]: DTYPE float (`.float()`, what `--device cpu` picks), half (as loaded) or bf16;
BITS int4 / int8 (`.quantize(bits)`) or none; -qe adds `quantize_embeddings=True`.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from transformers import AutoModel, LogitsProcessor

import chatglm  # noqa: F401  (registers the ChatGLM classes with AutoModel)

RECIPES = ("float-int4", "float-int8", "half-int4", "bf16-int4", "bf16-int8", "float-int4-qe", "bf16-int4-qe",
           "bf16-none", "float-none")
DTYPES = {"float": torch.float32, "half": torch.float16, "bf16": torch.bfloat16}


class StepClock(LogitsProcessor):
    """Timestamps every generation step and keeps EOS from ending generation early."""

    def __init__(self, eos_token_id):
        self.eos_token_id, self.times = eos_token_id, []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        scores[:, self.eos_token_id] = -float("inf")
        return scores


def prompt_ids(config, length, seed=0):
    """Random ordinary tokens in [20, 9900) then [gMASK] <sop>: [1, length]."""
    body = torch.randint(20, 9900, (1, length - 2), generator=torch.Generator().manual_seed(seed))
    return torch.cat((body, torch.tensor([[config.gmask_token_id, config.bos_token_id]])), dim=1)


def load(folder, recipe):
    dtype_name, bits, *qe = recipe.split("-")
    # from_pretrained keeps the checkpoint's fp16 like the original; .float() / .bfloat16() as in the README
    model = AutoModel.from_pretrained(folder, dtype=torch.float16).to(DTYPES[dtype_name]).eval()
    if bits != "none":
        model.quantize(int(bits[3:]), quantize_embeddings=bool(qe))
    return model


def measure(folder, recipe, context):
    torch.set_num_threads(2)
    model = load(folder, recipe)
    with torch.no_grad():
        prompt = prompt_ids(model.config, 512)
        model(prompt)  # first use (INT4 re-packs to the kernel layout)
        prefill = []
        for _ in range(3):
            start = time.perf_counter()
            model(prompt)
            prefill.append(512 / (time.perf_counter() - start))
        clock = StepClock(model.config.eos_token_id)
        model.generate(prompt_ids(model.config, context, seed=1), max_new_tokens=65, do_sample=False,
                       logits_processor=[clock])
    steps = [b - a for a, b in zip(clock.times[1:], clock.times[2:])]
    return {"recipe": recipe, "prefill_tok_s": statistics.median(prefill),
            "decode_ms": 1e3 * statistics.median(steps),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="checkpoint folder")
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument("--context", type=int, default=16, help="prompt tokens before decoding")
    parser.add_argument("--one", choices=RECIPES, help=argparse.SUPPRESS)  # the per-recipe child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, args.one, args.context)))
        return
    print(f"| recipe | prefill @512 tok/s | decode @{args.context} ms/token | peak RSS GB |")
    print("|---|---|---|---|")
    for recipe in args.recipes:
        child = subprocess.run([sys.executable, __file__, args.model, "--one", recipe, "--context", str(args.context)],
                               capture_output=True, text=True)
        if child.returncode:
            print(f"| {recipe} | failed: {child.stderr.strip().splitlines()[-1]} | | |", flush=True)
            continue
        r = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"| {recipe} | {r['prefill_tok_s']:.1f} | {r['decode_ms']:.1f} | {r['peak_rss_gb']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
