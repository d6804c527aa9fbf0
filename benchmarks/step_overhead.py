"""Where one decoding step's time goes: generate()'s own machinery, the model's per-step preparation
(embedding, masks, positions, rotary tables), the blocks, the final LayerNorm and the LM head.

Each part is timed on its own, many times, at the cache state of a real decode, and the medians are
reported; the bundled demo model (3.9 M parameters) shows the fixed per-step costs best.

    python benchmarks/step_overhead.py                      # bundled demo model, 2 threads
    python benchmarks/step_overhead.py --model FOLDER --dtype bfloat16 --threads 1
"""

import argparse
import statistics
import time

import torch
from transformers.generation.logits_process import LogitsProcessor, LogitsProcessorList

from chatglm import DEMO_MODEL_PATH, ChatGLMForConditionalGeneration


class StepClock(LogitsProcessor):
    """Timestamps every decoding step (generate() calls the processors once per step)."""

    def __init__(self):
        self.stamps = []

    def __call__(self, input_ids, scores):
        self.stamps.append(time.perf_counter())
        return scores

    def step_times(self):
        return [b - a for a, b in zip(self.stamps[1:], self.stamps[2:])]


def median_ms(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def prompt_ids(config, length):
    ids = torch.randint(20, min(config.vocab_size, 9900) - 1, (1, length))
    ids[0, -2:] = torch.tensor([config.gmask_token_id, config.bos_token_id])
    return ids


@torch.inference_mode()
def breakdown(model, prompt_length, new_tokens, repeats):
    config = model.config
    ids = prompt_ids(config, prompt_length)
    clock = StepClock()
    sequence = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              logits_processor=LogitsProcessorList([clock]))
    generate_ms = 1e3 * statistics.median(clock.step_times())

    # The model's own decoding step at the same point, with a cache of the generated sequence.
    context = sequence[:, :-1]
    output = model(context, use_cache=True)
    cache, token = output.cache, sequence[:, -1:]
    positions = model.transformer.get_position_ids(sequence, None, sequence.shape[1] - 1)
    parts = {}

    def step():  # crop back after each step so that every repeat sees the same cache length
        model(token, position_ids=positions, cache=cache, use_cache=True)
        cache.crop(-1)

    parts["model forward (all below)"] = median_ms(step, repeats)
    transformer = model.transformer
    hidden = transformer.word_embeddings(token).to(transformer.final_layernorm.weight.dtype)
    rotary = transformer.rotary_tables(positions, hidden.dtype) if hasattr(transformer, "rotary_tables") else None
    if rotary is not None:
        def block_step(block):
            block(hidden, rotary, None, cache=cache)
            cache.layers[block.attention.layer_id].crop(-1)

        parts["blocks"] = sum(median_ms(lambda b=block: block_step(b), repeats) for block in transformer.layers)
    parts["final LayerNorm"] = median_ms(lambda: transformer.final_layernorm(hidden), repeats)
    parts["LM head"] = median_ms(lambda: model.lm_head(hidden), repeats)
    return generate_ms, parts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEMO_MODEL_PATH)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = ChatGLMForConditionalGeneration.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    breakdown(model, args.prompt_tokens, 8, 10)  # warm up
    generate_ms, parts = breakdown(model, args.prompt_tokens, args.new_tokens, args.repeats)
    forward = parts["model forward (all below)"]
    print(f"{args.model} ({args.dtype}, {args.threads} threads), median ms per decoding step:")
    print("| part | ms | share of a generate() step |\n|---|---|---|")
    print(f"| generate() step | {generate_ms:.3f} | 100% |")
    print(f"| generate()'s own machinery (step - model forward) | {generate_ms - forward:.3f} | "
          f"{(generate_ms - forward) / generate_ms:.0%} |")
    for name, ms in parts.items():
        print(f"| {name} | {ms:.3f} | {ms / generate_ms:.0%} |")
    if "blocks" in parts:
        rest = forward - parts["blocks"] - parts["final LayerNorm"] - parts["LM head"]
        print(f"| model preparation (embedding, mask, positions, rotary; forward - parts) | {rest:.3f} | "
              f"{rest / generate_ms:.0%} |")


if __name__ == "__main__":
    main()
