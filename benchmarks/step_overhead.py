"""Where one decoding step's time goes, measured inside real generate() steps: the C kernels (products and
attention), the rest of the blocks (norms, rotary, GELU, residuals, cache writes, Python), the model's
per-step preparation (embedding, mask, positions, rotary tables), the LM head and generate()'s own machinery
(logits processors, stopping criteria, input preparation).

Parts are timed where they run, during a greedy generate(), by wrapping them: on a large model the weights
streamed by the products evict everything else from the caches, so the small ops cost several times what
they cost timed alone. Each wrapper adds about a microsecond per call.

    python benchmarks/step_overhead.py                                  # bundled demo model, float32, 2 threads
    python benchmarks/step_overhead.py --model ~/chatglm-bench/mid --dtype bfloat16 --quantize 4 --quantize-embeddings
"""

import argparse
import collections
import functools
import statistics
import time

import torch
from transformers.generation.logits_process import LogitsProcessor, LogitsProcessorList

from chatglm import DEMO_MODEL_PATH, ChatGLMForConditionalGeneration, cpu_kernels, modeling_chatglm


class StepClock(LogitsProcessor):
    """Timestamps every decoding step (generate() calls the processors once per step) and keeps EOS out,
    so that every run generates the same number of tokens. The timers start at the first step: the
    prompt's forward is not counted."""

    def __init__(self, eos_token_id, timers):
        self.eos_token_id, self.timers = eos_token_id, timers
        self.stamps = []

    def __call__(self, input_ids, scores):
        if not self.stamps:
            self.timers.spent.clear()
        self.stamps.append(time.perf_counter())
        scores[:, self.eos_token_id] = -float("inf")
        return scores


class Timers:
    """Seconds spent in each wrapped part; `where` names the part a C kernel call belongs to."""

    def __init__(self):
        self.spent = collections.defaultdict(float)
        self.where = "blocks"

    def wrap(self, owner, name, label, where=None):
        function = getattr(owner, name)

        @functools.wraps(function)
        def timed(*args, **kwargs):
            outer, self.where = self.where, where or self.where
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.spent[label] += time.perf_counter() - start
                self.where = outer

        setattr(owner, name, timed)


class TimedKernels:
    """Stands in for cpu_kernels.library(): every kernel call is timed under the part it is made from."""

    def __init__(self, library, timers):
        self.library, self.timers = library, timers

    def __getattr__(self, name):
        kernel = getattr(self.library, name)

        def timed(*args):
            start = time.perf_counter()
            try:
                return kernel(*args)
            finally:
                if name.startswith("attend"):
                    label = "attention kernel"
                elif name == "rotate_qk":
                    label = "rotary kernel"  # inside the "rotary" part
                else:
                    label = f"products ({self.timers.where})"
                self.timers.spent[label] += time.perf_counter() - start

        return timed


def instrument(model):
    timers = Timers()
    library = cpu_kernels.library()
    if library is not None:
        kernels = TimedKernels(library, timers)
        cpu_kernels.library = lambda: kernels
    transformer = model.transformer
    timers.wrap(model, "forward", "model forward")
    timers.wrap(transformer, "forward", "transformer")
    timers.wrap(model.lm_head, "forward", "LM head", where="LM head")
    for block in transformer.layers:
        timers.wrap(block, "forward", "blocks", where="blocks")
    timers.wrap(modeling_chatglm, "rotate_queries_and_keys", "rotary")
    timers.wrap(modeling_chatglm.F, "gelu", "GELU")
    timers.wrap(modeling_chatglm.F, "scaled_dot_product_attention", "torch attention")
    return timers


def measure(model, timers, prompt_tokens, new_tokens):
    """(mean ms per step, median ms per step, ms per step of each part) over the steps after the prompt."""
    config = model.config
    ids = torch.randint(20, min(config.vocab_size, 9900) - 1, (1, prompt_tokens))
    ids[0, -2:] = torch.tensor([config.gmask_token_id, config.bos_token_id])
    clock = StepClock(config.eos_token_id, timers)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=new_tokens, do_sample=False, logits_processor=LogitsProcessorList([clock]))
        end = time.perf_counter()
    steps = new_tokens - 1  # forwards after the first stamp
    per_step = {name: seconds * 1e3 / steps for name, seconds in timers.spent.items()}
    intervals = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]
    return 1e3 * (end - clock.stamps[0]) / steps, 1e3 * statistics.median(intervals), per_step


def table(step_ms, median_ms, spent):
    def get(name):
        return spent.get(name, 0.0)

    return [
        (f"generate() step (mean; median {median_ms:.2f} ms)", step_ms),
        ("generate()'s own machinery (step - model forward)", step_ms - get("model forward")),
        ("model preparation (embedding, mask, positions, rotary tables, final LayerNorm)",
         get("transformer") - get("blocks")),
        ("blocks: products (C kernels)", get("products (blocks)")),
        ("blocks: attention kernel", get("attention kernel")),
        ("blocks: torch attention (prompts, float32 caches below the kernel's size)", get("torch attention")),
        ("blocks: rotary", get("rotary")),
        ("blocks: GELU", get("GELU")),
        ("blocks: LayerNorms, residuals, cache writes, Python", get("blocks") - get("products (blocks)")
         - get("attention kernel") - get("torch attention") - get("rotary") - get("GELU")),
        ("LM head: product (C kernel)", get("products (LM head)")),
        ("LM head: the rest", get("LM head") - get("products (LM head)")),
        ("the model's output (last position, output object)", get("model forward") - get("transformer")
         - get("LM head")),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEMO_MODEL_PATH, help="checkpoint folder (default: the bundled demo)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--quantize", type=int, choices=(4, 8), help="quantize the blocks while loading")
    parser.add_argument("--quantize-embeddings", action="store_true", help="and the embedding / LM head")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=65)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = ChatGLMForConditionalGeneration.from_pretrained(
        args.model, dtype=getattr(torch, args.dtype), quantization_bit=args.quantize,
        quantize_embeddings=args.quantize_embeddings).eval()
    timers = instrument(model)
    measure(model, timers, args.prompt_tokens, 8)  # warm-up
    step_ms, median_ms, spent = measure(model, timers, args.prompt_tokens, args.new_tokens)
    what = f"{args.dtype}" + (f", INT{args.quantize}" if args.quantize else "") + (
        " + embeddings" if args.quantize_embeddings else "")
    print(f"{args.model} ({what}, {args.threads} threads), ms per decoding step inside generate():")
    print("| part | ms | share |\n|---|---|---|")
    for name, ms in table(step_ms, median_ms, spent):
        print(f"| {name} | {ms:.3f} | {ms / step_ms:.0%} |")


if __name__ == "__main__":
    main()
