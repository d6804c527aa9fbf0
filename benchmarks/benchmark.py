"""CPU speed and memory of ChatGLM, side by side with chatglm.cpp, by the protocol of the perf README.

Every configuration runs in its own process (so that its peak memory is its own), configurations alternate
over the passes and each figure keeps its best pass, and the read bandwidth is measured right before and right
after each run. Within a run the decode contexts alternate over --rounds rounds (16, 1024, 16, 1024, ...):
each decode figure keeps its best round, and @1024 / @16 is the median of that ratio within each round, so
that a drift of the host's bandwidth does not show as a cost of context. Protocol: batch 1, greedy; prefill
@512 = one forward over a 512-token prompt (random ids, then [gMASK] <sop>; tokens/s, median of 3); decode @N
= generate(max_new_tokens=65) after an N-token prompt, the median of the 64 step intervals after the first
(EOS masked); peak RSS = the process's peak resident set (load included); weights read per token = the bytes
of every weight a decoding step reads (all of them but the embedding rows; the LM head reads the tied
embedding matrix).

    python benchmarks/benchmark.py --model CHECKPOINT                        # ours, all configurations
    python benchmarks/benchmark.py --model CHECKPOINT --cpp-python CPP_VENV/bin/python --passes 2
    python benchmarks/benchmark.py --model CHECKPOINT --configs int4 cli-int4 --load-only   # memory only
    python benchmarks/benchmark.py --model CHECKPOINT --configs bf16 bf16-torch   # C kernels on and off

A configuration ending in -torch is the same with chatglm/cpu_kernels.py turned off (CHATGLM_CPU_KERNELS=0).

--isa avx2 (or avx512) runs our configurations as on a CPU with AVX2 only (or AVX-512 without bfloat16 dot
products), on any newer x86-64 machine: it sets ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA (torch's and oneDNN's
kernels) and CHATGLM_CPU_KERNELS_MARCH (our C kernels) in each configuration's process; chatglm.cpp must be built
for the same ISA (docs/cpu.md). The header shows the path each process took.

CHECKPOINT is a ChatGLM-6B-shaped folder (the perf README's "mid" model, or one written by
benchmarks/random_checkpoint.py). chatglm.cpp runs when --cpp-python names a python where chatglm_cpp
0.4.2 imports; its q4_0/q8_0 files are converted from the same checkpoint once, into --work-dir, with
chatglm.cpp's own converter (which also needs numpy, tqdm and transformers in that environment).
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

# configuration: (how it is loaded: what the user writes)
OURS = {
    "fp32": "from_pretrained(path, dtype=torch.float32)",
    "bf16": "from_pretrained(path, dtype=torch.bfloat16)",
    "int8": "from_pretrained(path, dtype=torch.bfloat16, quantization_bit=8)",
    "int4": "from_pretrained(path, dtype=torch.bfloat16, quantization_bit=4)",
    "int4-qe": "from_pretrained(path, dtype=torch.bfloat16, quantization_bit=4, quantize_embeddings=True)",
    "int8-qe": "from_pretrained(path, dtype=torch.bfloat16, quantization_bit=8, quantize_embeddings=True)",
    "recipe-int4": "AutoModel.from_pretrained(path).float().quantize(4) (the original README's CPU recipe)",
    "cli-int4": "--quantize 4 --device cpu (cli_demo.py defaults: float32, quantized while loading)",
    "cli-int8": "--quantize 8 --device cpu",
}
# the same, with chatglm/cpu_kernels.py turned off (CHATGLM_CPU_KERNELS=0): torch's kernels only
TORCH_ONLY = "-torch"
OURS.update({name + TORCH_ONLY: f"{how}, CHATGLM_CPU_KERNELS=0" for name, how in list(OURS.items())})
CPP = {"cpp-q4_0": "chatglm.cpp 0.4.2, q4_0", "cpp-q8_0": "chatglm.cpp 0.4.2, q8_0"}
DEFAULT_CONFIGS = ["fp32", "bf16", "int8", "int4", "int4-qe", "recipe-int4", "cli-int4", "cpp-q4_0", "cpp-q8_0"]
PREFILL_TOKENS, DECODE_CONTEXTS, NEW_TOKENS = 512, (16, 1024), 65
# what each --isa sets in our configurations' processes (native: nothing)
ISA_ENVIRONMENT = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "CHATGLM_CPU_KERNELS_MARCH": "haswell"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI",
               "CHATGLM_CPU_KERNELS_MARCH": "skylake-avx512"},
}


# --- measured in the child processes -------------------------------------------------------------


def memory_now():
    """(resident, peak resident) bytes of this process. VmHWM rather than ru_maxrss: a child process
    inherits its parent's ru_maxrss across exec."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def prompt_ids(config, length, rng):
    """Random ids in [20, 9900), then [gMASK] <sop>."""
    return [rng.randrange(20, 9900) for _ in range(length - 2)] + [config["gmask_token_id"], config["bos_token_id"]]


def load_ours(name, path):
    import torch

    from chatglm import ChatGLMForConditionalGeneration as Model

    name = name.removesuffix(TORCH_ONLY)  # the parent turned the C kernels off in this process's environment

    if name == "fp32":
        return Model.from_pretrained(path, dtype=torch.float32)
    if name == "bf16":
        return Model.from_pretrained(path, dtype=torch.bfloat16)
    if name in ("int8", "int4"):
        return Model.from_pretrained(path, dtype=torch.bfloat16, quantization_bit=int(name[3:]))
    if name in ("int4-qe", "int8-qe"):
        bits = int(name[3])
        return Model.from_pretrained(path, dtype=torch.bfloat16, quantization_bit=bits, quantize_embeddings=True)
    if name == "recipe-int4":
        from transformers import AutoModel

        return AutoModel.from_pretrained(path).float().quantize(4)
    if name in ("cli-int4", "cli-int8"):
        from chatglm.entrypoints.loader import load_model_and_tokenizer

        return load_model_and_tokenizer(model=path, device="cpu", quantize=int(name[-1]))[1]
    raise ValueError(f"unknown configuration {name}")


def weights_read_per_token(model):
    """Bytes of the (deduplicated) parameters: a decoding step reads them all, the tied embedding
    matrix through the LM head."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def cpu_path_description():
    """The path this process takes: torch's capability, our kernels' build and the prompts' compute dtype."""
    import torch

    from chatglm import cpu_features, cpu_kernels

    kernels = os.environ.get(cpu_kernels.MARCH_VARIABLE, "native") if cpu_kernels.library() else "off"
    return (f"torch {torch.backends.cpu.get_cpu_capability()}, oneDNN cap "
            f"{os.environ.get('ONEDNN_MAX_CPU_ISA', 'none')}, C kernels {kernels}, prompts in "
            f"{cpu_features.cpu_path()}")


def measure_ours(name, path, threads, load_only, rounds):
    import torch
    from transformers.generation.logits_process import LogitsProcessor, LogitsProcessorList

    torch.set_num_threads(threads)
    start = time.perf_counter()
    model = load_ours(name, path).eval()
    result = {"load_s": time.perf_counter() - start, "weights_read_bytes": weights_read_per_token(model),
              "cpu_path": cpu_path_description()}
    result["resident_after_load"], result["peak_after_load"] = memory_now()
    if load_only:
        return result
    config = model.config.to_dict()
    rng = random.Random(0)

    class StepClock(LogitsProcessor):
        def __init__(self):
            self.stamps = []

        def __call__(self, input_ids, scores):
            self.stamps.append(time.perf_counter())
            scores[:, model.config.eos_token_id] = -float("inf")
            return scores

    with torch.inference_mode():
        prefill = []
        for _ in range(3):
            ids = torch.tensor([prompt_ids(config, PREFILL_TOKENS, rng)])
            start = time.perf_counter()
            model(ids, use_cache=True, logits_to_keep=1)  # what generate() runs for a prompt
            prefill.append(time.perf_counter() - start)
        result["prefill_tok_s"] = PREFILL_TOKENS / statistics.median(prefill)

        def decode_ms(context):
            clock = StepClock()
            ids = torch.tensor([prompt_ids(config, context, rng)])
            model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False,
                           logits_processor=LogitsProcessorList([clock]))
            return 1e3 * statistics.median(b - a for a, b in zip(clock.stamps, clock.stamps[1:]))

        result.update(decode_rounds(decode_ms, rounds))
    result["resident"], result["peak_rss"] = memory_now()
    return result


def decode_rounds(decode_ms, rounds):
    """decode_{N}_ms: the best of `rounds` rounds that alternate the contexts; decode_rounds: every round."""
    times = {context: [] for context in DECODE_CONTEXTS}
    for _ in range(rounds):
        for context in DECODE_CONTEXTS:
            times[context].append(decode_ms(context))
    return {**{f"decode_{context}_ms": min(ms) for context, ms in times.items()}, "decode_rounds": times}


def measure_cpp(checkpoint, model_file, load_only, rounds):
    """chatglm.cpp's own generate() loop, one step at a time (its Pipeline uses every core: 2 here)."""
    import chatglm_cpp

    start = time.perf_counter()
    model = chatglm_cpp.Pipeline(str(model_file)).model
    result = {"load_s": time.perf_counter() - start, "weights_read_bytes": os.path.getsize(model_file)}
    result["resident_after_load"], result["peak_after_load"] = memory_now()
    if load_only:
        return result
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    gen_config = chatglm_cpp._C.GenerationConfig(max_length=2048, max_context_length=2048, do_sample=False)
    rng = random.Random(0)
    prefill = []
    for _ in range(3):
        ids = prompt_ids(config, PREFILL_TOKENS, rng)
        start = time.perf_counter()
        model.generate_next_token(ids, None, gen_config, 0, len(ids))
        prefill.append(time.perf_counter() - start)
    result["prefill_tok_s"] = PREFILL_TOKENS / statistics.median(prefill)

    def decode_ms(context):
        ids = prompt_ids(config, context, rng)
        n_past, stamps = 0, []
        for _ in range(NEW_TOKENS):
            token = model.generate_next_token(ids, None, gen_config, n_past, context)
            stamps.append(time.perf_counter())
            n_past = len(ids)
            ids.append(token)
        return 1e3 * statistics.median(b - a for a, b in zip(stamps, stamps[1:]))

    result.update(decode_rounds(decode_ms, rounds))
    result["resident"], result["peak_rss"] = memory_now()
    return result


def convert_for_cpp(checkpoint, ggml_type, out_path):
    """Write chatglm.cpp's model file for `checkpoint` with chatglm.cpp's own converter, handing it the
    two things it reads: a model (config + state_dict with the real names) and the SentencePiece proto."""
    from types import SimpleNamespace

    import sentencepiece
    import torch
    from chatglm_cpp.convert import ChatGLMConverter, GGMLType

    checkpoint = Path(checkpoint)
    index = json.loads((checkpoint / "pytorch_model.bin.index.json").read_text())
    state = {}
    for shard in dict.fromkeys(index["weight_map"].values()):
        state.update(torch.load(checkpoint / shard, mmap=True, weights_only=True))
    config = {"pre_seq_len": None, "quantization_bit": 0, **json.loads((checkpoint / "config.json").read_text())}
    model = SimpleNamespace(config=SimpleNamespace(**config), state_dict=lambda: state)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(checkpoint / "ice_text.model"))
    tokenizer = SimpleNamespace(sp_tokenizer=SimpleNamespace(text_tokenizer=SimpleNamespace(sp=processor)))
    with open(out_path, "wb") as file:
        ChatGLMConverter.convert(file, model, tokenizer, GGMLType[ggml_type.upper()])


def read_bandwidth(threads, gib=2.0):
    """GB/s reading a ``gib`` GiB float32 tensor (best of 5), two ways: torch summing it (the perf protocol's
    measure) and the SIMD kernel of chatglm.cpu_kernels multiplying it, as a [2^17, 4096] matrix, with a
    vector (torch's sum is compute-bound on some CPUs, so it can understate what the memory delivers);
    both again after moving the tensor into 2 MB pages, as the model's weights are (see huge_pages)."""
    import torch

    from chatglm import cpu_kernels, huge_pages

    torch.set_num_threads(threads)
    data = torch.ones(max(1, int(gib * 2**16)) * 4096)  # whole rows of 4096 float32 values, 2^16 per GiB
    matrix, vector = data.view(-1, 4096), torch.ones(4096)
    reads = {"torch_sum": data.sum}
    if cpu_kernels.takes_matmul(vector, matrix):
        reads["simd_read"] = lambda: cpu_kernels.matmul(vector, matrix)
    measured = {}
    for pages in ("", "_2mb_pages"):  # the model's weights are in 2 MB pages where the system allows
        if pages and not huge_pages.collapse([data]):
            break
        for name, read in reads.items():
            read()
            times = []
            for _ in range(5):
                start = time.perf_counter()
                read()
                times.append(time.perf_counter() - start)
            measured[name + pages] = data.numel() * 4 / min(times) / 1e9
    return measured


# --- the driver -----------------------------------------------------------------------------------


def read_bandwidth_now(args):
    """GB/s: the best of read_bandwidth's reads, in a process of its own (0 with --load-only)."""
    if args.load_only:
        return 0
    bandwidth = run_child(sys.executable, ["--bandwidth", "--threads", str(args.threads), "--bandwidth-gib",
                                           str(args.bandwidth_gib)], args.threads,
                          **ISA_ENVIRONMENT[args.isa])
    return max(bandwidth.values())


def run_child(python, arguments, threads, timeout=1800, **environment):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), **environment)
    result = subprocess.run([python, __file__, *arguments], capture_output=True, text=True, env=env,
                            timeout=timeout)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["(no output)"]
        raise RuntimeError(lines[-1])
    return json.loads(result.stdout.strip().splitlines()[-1])


def cpp_model_file(args, name):
    ggml_type = name.split("-", 1)[1]
    work_dir = Path(args.work_dir) if args.work_dir else Path(args.model).resolve().parent
    path = work_dir / f"{Path(args.model).resolve().name}-{ggml_type}.bin"
    if not path.is_file():
        print(f"converting {args.model} to chatglm.cpp {ggml_type} ({path}) ...", file=sys.stderr, flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        run_child(args.cpp_python, ["--convert", ggml_type, "--model", args.model, "--out", str(path)], args.threads)
    return path


def measure(args, name):
    if name in CPP:
        arguments = ["--child", name, "--model", args.model, "--out", str(cpp_model_file(args, name))]
        python = args.cpp_python
    else:
        arguments = ["--child", name, "--model", args.model, "--threads", str(args.threads)]
        python = sys.executable
    arguments += ["--rounds", str(args.rounds)]
    environment = {} if name in CPP else dict(ISA_ENVIRONMENT[args.isa])
    if name.endswith(TORCH_ONLY):
        environment["CHATGLM_CPU_KERNELS"] = "0"
    return run_child(python, arguments + (["--load-only"] if args.load_only else []), args.threads, **environment)


def best(results):
    """Per figure, the best of the passes; the read bandwidth is the one measured around the fastest
    decode @16, which the bandwidth use refers to. The cost of context, @1024 / @16, is the median over
    every round of the ratio within the round (its two contexts ran one after the other), not the ratio of
    two best figures that may come from minutes apart."""
    merged = dict(min(results, key=lambda r: r.get("decode_16_ms", 0)))
    for result in results:
        for key, value in result.items():
            if key == "prefill_tok_s":
                merged[key] = max(merged[key], value)
            elif key.startswith(("decode_1", "peak", "resident", "load_s")):
                merged[key] = min(merged[key], value)
    short, long = (str(context) for context in DECODE_CONTEXTS)  # the children's JSON keys
    ratios = [b / a for r in results if "decode_rounds" in r
              for a, b in zip(r["decode_rounds"][short], r["decode_rounds"][long])]
    if ratios:
        merged["context_cost"] = statistics.median(ratios)
        merged["decode_16_median_of_rounds_ms"] = statistics.median(
            ms for r in results if "decode_rounds" in r for ms in r["decode_rounds"][short])
    return merged


def print_table(args, results):
    gb = 1e9
    if args.load_only:
        print("| configuration | load s | weights GB | resident after load GB | peak RSS GB | peak / resident |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, r in results.items():
            if "error" in r:
                print(f"| {name} | failed: {r['error']} |")
                continue
            resident, peak = r["resident_after_load"], r["peak_after_load"]
            print(f"| {name} | {r['load_s']:.0f} | {r['weights_read_bytes'] / gb:.2f} | {resident / gb:.2f} "
                  f"| {peak / gb:.2f} | {peak / resident:.2f} |")
        return
    paths = sorted({r["cpu_path"] for r in results.values() if "cpu_path" in r})
    print(f"--isa {args.isa}: {'; '.join(paths) or 'chatglm.cpp only'}")
    print(f"{args.threads} threads, best of {args.passes} pass(es) of {args.rounds} decode round(s); read bandwidth = "
          f"the best of torch's sum and the SIMD read over {args.bandwidth_gib:g} GiB, the mean of its figures right "
          "before and right after the run whose decode @16 is shown")
    print("| configuration | weights read / token GB | prefill @512 tok/s | decode @16 ms/tok | decode @16, median "
          "of rounds | decode @1024 ms/tok | @1024 / @16 | peak RSS GB | read bandwidth GB/s | bandwidth use @16 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | failed: {r['error']} |")
            continue
        use = r["weights_read_bytes"] / (r["decode_16_ms"] / 1e3) / (r["read_bandwidth"] * gb)
        print(f"| {name} | {r['weights_read_bytes'] / gb:.2f} | {r['prefill_tok_s']:.1f} | {r['decode_16_ms']:.1f} | "
              f"{r['decode_16_median_of_rounds_ms']:.1f} | {r['decode_1024_ms']:.1f} | {r['context_cost']:.2f} | "
              f"{r['peak_rss'] / gb:.2f} | {r['read_bandwidth']:.1f} | {use:.0%} |")
    print()
    for name in results:
        print(f"- {name}: {OURS.get(name) or CPP.get(name)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder (ChatGLM-6B layout)")
    parser.add_argument("--configs", nargs="+", default=None, choices=[*OURS, *CPP],
                        help="default: " + " ".join(DEFAULT_CONFIGS) + " (chatglm.cpp only with --cpp-python)")
    parser.add_argument("--cpp-python", help="a python where chatglm_cpp imports (e.g. CPP_VENV/bin/python)")
    parser.add_argument("--work-dir", help="where chatglm.cpp's converted model files are kept (default: beside "
                        "the checkpoint folder)")
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="decode rounds per run, alternating the contexts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--isa", choices=list(ISA_ENVIRONMENT), default="native",
                        help="run our configurations as on a CPU with this instruction set (see above)")
    parser.add_argument("--load-only", action="store_true", help="only load: load time, resident and peak memory")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # measure one configuration in this process
    parser.add_argument("--convert", help=argparse.SUPPRESS)  # write a chatglm.cpp model file
    parser.add_argument("--bandwidth", action="store_true",
                        help="only measure the read bandwidth (GB/s; in 4 KB and in 2 MB pages) and exit")
    parser.add_argument("--bandwidth-gib", type=float, default=2.0,
                        help="size of the read-bandwidth probe in GiB (default 2: well past the CPU's caches)")
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        measured = measure_cpp(args.model, args.out, args.load_only, args.rounds) if args.child in CPP else \
            measure_ours(args.child, args.model, args.threads, args.load_only, args.rounds)
        print(json.dumps(measured))
        return
    if args.convert:
        convert_for_cpp(args.model, args.convert, args.out)
        print(json.dumps({"converted": args.out}))
        return
    if args.bandwidth:
        print(json.dumps(read_bandwidth(args.threads, args.bandwidth_gib)))
        return
    if not args.model:
        parser.error("--model is required")

    configs = args.configs or [c for c in DEFAULT_CONFIGS if c in OURS or args.cpp_python]
    if any(c in CPP for c in configs) and not args.cpp_python:
        parser.error("chatglm.cpp configurations need --cpp-python")
    runs = {name: [] for name in configs}
    for number in range(args.passes):
        for name in configs if number % 2 == 0 else reversed(configs):  # alternate the order
            try:
                # the read bandwidth right before and after each run: on a shared host it moves from minute
                # to minute; the run is compared with the mean of the two
                before = read_bandwidth_now(args)
                measured = measure(args, name)
                after = read_bandwidth_now(args)
                runs[name].append({**measured, "read_bandwidth": (before + after) / 2,
                                   "read_bandwidth_before_after": [before, after]})
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"{name}: failed ({exc})", file=sys.stderr, flush=True)
            print(f"pass {number + 1}: {name} done", file=sys.stderr, flush=True)
    results = {name: best(r) if r else {"error": "see stderr"} for name, r in runs.items()}
    print_table(args, results)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
