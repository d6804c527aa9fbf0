"""Measure the demo checkpoint: held-out loss, answer quality, speed and size.

    python demo/evaluate.py [--model chatglm-demo] [--limit N]

On the held-out split (demo/data/dev.jsonl):
  * per-token loss: mean cross-entropy over the answer tokens (the `<sop>`-onward ids of the fine-tuning
    layout, the same rows as training);
  * quality rate: the share of held-out prompts whose greedy answer
    (`model.chat(tok, prompt, history, do_sample=False)`) is
      - non-empty,
      - in the prompt's language (a prompt is Chinese when at least 30% of its letters are CJK
        characters; a Chinese prompt needs an answer with at least 2 CJK characters, an English prompt an
        answer whose letters are at most 50% CJK and that has some Latin letters: an English question may
        ask for a Chinese word), and
      - not degenerate: it ended with `<eop>` before the length limit, and no token bigram occurs more than
        4 times unless the reference answer repeats it as often (code answers legitimately repeat
        indentation);
  * exact-match rate against the reference answer, up to NFKC (for information);
and on the training prompts about this repository (scripts, flags, API, quantization, fine-tuning), the rate of
greedy answers equal to the trained answer.

It also measures load time, greedy decoding speed at batch 1 (fp32, 2 threads) and the folder size. Results go
to stdout and, with --json, to a file.
"""

import argparse
import collections
import json
import os
import sys
import time
import unicodedata

import torch
from transformers import AutoModel, AutoTokenizer

from chatglm.generation import build_prompt, process_response
from demo import build_corpus
from demo.rows import encode_rows, evaluate_loss, load_rows

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Markers of the corpus answers that explain this repository.
REPO_MARKERS = ["cli_demo", "web_demo", "api.py", "--", "ptuning", "pytest", "quantize", "requirements",
                "8000", "13GB", "13 GB", "chatglm-demo", "AutoModel", "train.sh", "evaluate.sh", "JSON"]


def cjk_count(text):
    return sum(1 for c in text if "\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf")


def latin_count(text):
    return sum(1 for c in text if c.isascii() and c.isalpha())


def is_chinese(text):
    cjk, latin = cjk_count(text), latin_count(text)
    return cjk > 0 and cjk >= 0.3 * (cjk + latin)


def language_ok(prompt, answer):
    if is_chinese(prompt):
        return cjk_count(answer) >= 2
    cjk, latin = cjk_count(answer), latin_count(answer)
    return latin >= 2 and cjk <= 0.5 * (cjk + latin)


FIXED_ANSWERS = ({a for _, a in build_corpus.ZH_INTENTS + build_corpus.EN_INTENTS}
                 | {intro.format(code=code) for _, _, code in build_corpus.CODE
                    for intro in (build_corpus.ZH_CODE_INTRO, build_corpus.EN_CODE_INTRO)})


def category(reference):
    """Which kind of exchange a reference answer belongs to."""
    if reference in FIXED_ANSWERS:
        return "fixed"  # greetings, identity, this repository, advice, code: one answer per intent
    if any(m in reference for m in ("的英文是", "的中文意思是", "in Chinese is", "in English.")):
        return "translation"
    if reference.startswith(("你叫", "Your name is")):
        return "name_memory"
    return "arithmetic_units"


def same_text(answer, reference):
    """Equal up to NFKC (the tokenizer normalises its input, so e.g. a full-width comma between two Latin
    characters can only come back half-width)."""
    return unicodedata.normalize("NFKC", answer.strip()) == unicodedata.normalize("NFKC", reference.strip())


def bigram_counts(ids):
    return collections.Counter(zip(ids, ids[1:]))


def degenerate(answer_ids, reference_ids, finished):
    """Ran to the length limit, or a bigram repeated > 4 times beyond what the reference does."""
    if not finished:
        return True
    ref = bigram_counts(reference_ids)
    return any(n > 4 and n > ref.get(bg, 0) for bg, n in bigram_counts(answer_ids).items())


def load(folder, threads=2):
    torch.set_num_threads(threads)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    return tokenizer, model, time.perf_counter() - start


@torch.inference_mode()
def greedy(model, tokenizer, prompt, history, max_new=160):
    """Greedy chat answer plus its raw ids and whether it ended with <eop>."""
    text = build_prompt(prompt, history)
    inputs = tokenizer([text], return_tensors="pt")
    max_length = min(model.config.max_sequence_length, inputs["input_ids"].shape[1] + max_new)
    out = model.generate(**inputs, max_length=max_length, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    eop = model.config.eos_token_id
    finished = eop in new
    if finished:
        new = new[: new.index(eop)]
    # Exactly what model.chat(tokenizer, prompt, history, do_sample=False, max_length=max_length) returns,
    # without generating twice.
    response = process_response(tokenizer.decode(new))
    return response, new, finished


@torch.inference_mode()
def decode_speed(model, tokenizer, new_tokens=100, repeats=3):
    inputs = tokenizer(["你好，请介绍一下这个项目。"], return_tensors="pt")
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        elapsed = time.perf_counter() - start
        n = out.shape[1] - inputs["input_ids"].shape[1]
        best = max(best, n / elapsed)
    return best


def fresh_process_load_seconds(folder, threads=2):
    """Wall time of a new interpreter that imports torch, transformers and this package and loads the
    checkpoint (imports included), and of the from_pretrained calls alone."""
    import subprocess

    code = (
        "import time; t0 = time.perf_counter()\n"
        "import torch\n"
        f"torch.set_num_threads({threads})\n"
        "import chatglm\n"
        "from transformers import AutoModel, AutoTokenizer\n"
        "t1 = time.perf_counter()\n"
        f"tok = AutoTokenizer.from_pretrained({os.path.abspath(folder)!r})\n"
        f"model = AutoModel.from_pretrained({os.path.abspath(folder)!r})\n"
        "t2 = time.perf_counter()\n"
        "print(f'LOAD {t2 - t0:.3f} {t2 - t1:.3f}')\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    for line in out.stdout.splitlines():
        if line.startswith("LOAD "):
            total, load = line.split()[1:]
            return float(total), float(load)
    raise RuntimeError(out.stderr[-2000:])


def folder_size(folder):
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
               if os.path.isfile(os.path.join(folder, f)))


def repo_prompts(train_rows, per_intent=3):
    """Distinct single-round training prompts whose answer explains this repository (at most
    `per_intent` prompts per distinct answer)."""
    seen, per_answer, out = set(), collections.Counter(), []
    for row in train_rows:
        if row["history"] or row["prompt"] in seen or per_answer[row["response"]] >= per_intent:
            continue
        if any(m in row["response"] for m in REPO_MARKERS) and "```" not in row["response"]:
            seen.add(row["prompt"])
            per_answer[row["response"]] += 1
            out.append(row)
    return out


def run(folder, dev_path, train_path, threads=2, limit=None, verbose=False):
    tokenizer, model, load_s = load(folder, threads)
    dev_rows = load_rows(dev_path)
    train_rows = load_rows(train_path)
    if limit:
        dev_rows = dev_rows[:limit]

    examples = encode_rows(tokenizer, dev_rows, max_source=256, max_target=160)  # demo/train.py's defaults
    dev_loss = evaluate_loss(model, examples, tokenizer.pad_token_id)

    checks = collections.Counter()
    samples = []
    for row in dev_rows:
        response, ids, finished = greedy(model, tokenizer, row["prompt"], row["history"])
        ref_ids = tokenizer.encode(row["response"], add_special_tokens=False)
        ok_nonempty = bool(response.strip())
        ok_lang = language_ok(row["prompt"], response)
        ok_degen = not degenerate(ids, ref_ids, finished)
        exact = same_text(response, row["response"])
        checks["nonempty"] += ok_nonempty
        checks["language"] += ok_lang
        checks["not_degenerate"] += ok_degen
        checks["good"] += ok_nonempty and ok_lang and ok_degen
        checks["exact"] += exact
        cat = category(row["response"])
        checks[f"n_cat_{cat}"] += 1
        checks[f"exact_cat_{cat}"] += exact
        lang = "zh" if is_chinese(row["prompt"]) else "en"
        checks[f"n_{lang}"] += 1
        checks[f"good_{lang}"] += ok_nonempty and ok_lang and ok_degen
        if len(samples) < 12 or verbose:
            samples.append({"prompt": row["prompt"], "history": row["history"], "answer": response,
                            "reference": row["response"], "good": ok_nonempty and ok_lang and ok_degen})
        if verbose:
            print(json.dumps(samples[-1], ensure_ascii=False))
    n = len(dev_rows)

    repo = repo_prompts(train_rows)
    if limit:
        repo = repo[:limit]
    repo_exact, repo_fail = 0, []
    for row in repo:
        response, _, _ = greedy(model, tokenizer, row["prompt"], [])
        if same_text(response, row["response"]):
            repo_exact += 1
        elif len(repo_fail) < 8:
            repo_fail.append({"prompt": row["prompt"], "answer": response, "reference": row["response"]})

    speed = decode_speed(model, tokenizer)
    fresh_total, fresh_load = fresh_process_load_seconds(folder, threads)
    config = model.config
    return {
        "folder": os.path.relpath(os.path.abspath(folder), ROOT),
        "config": {k: getattr(config, k) for k in ("vocab_size", "hidden_size", "inner_hidden_size", "num_layers",
                                                  "num_attention_heads", "max_sequence_length")},
        "parameters": sum(p.numel() for p in model.parameters()),
        "dev_rows": n,
        "dev_loss_per_token": round(dev_loss, 4),
        "dev_perplexity": round(float(torch.tensor(dev_loss).exp()), 3),
        "quality_rate": round(checks["good"] / n, 4),
        "quality_rate_zh": round(checks["good_zh"] / max(1, checks["n_zh"]), 4),
        "quality_rate_en": round(checks["good_en"] / max(1, checks["n_en"]), 4),
        "nonempty_rate": round(checks["nonempty"] / n, 4),
        "language_rate": round(checks["language"] / n, 4),
        "not_degenerate_rate": round(checks["not_degenerate"] / n, 4),
        "dev_exact_match_rate": round(checks["exact"] / n, 4),
        "dev_exact_match_by_kind": {
            cat: {"rows": checks[f"n_cat_{cat}"],
                  "exact": round(checks[f"exact_cat_{cat}"] / max(1, checks[f"n_cat_{cat}"]), 4)}
            for cat in ("fixed", "translation", "arithmetic_units", "name_memory")},
        "repo_prompts": len(repo),
        "repo_exact_match_rate": round(repo_exact / max(1, len(repo)), 4),
        "repo_failures": repo_fail,
        "samples": samples[:12],
        "load_seconds": round(load_s, 2),
        "fresh_process_load_seconds": round(fresh_load, 2),
        "fresh_process_seconds_with_imports": round(fresh_total, 2),
        "decode_tokens_per_s": round(speed, 1),
        "threads": threads,
        "folder_bytes": folder_size(folder),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "chatglm-demo"))
    ap.add_argument("--dev", default=os.path.join(HERE, "data", "dev.jsonl"))
    ap.add_argument("--train", default=os.path.join(HERE, "data", "train.jsonl"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="only the first N held-out rows (and N repository prompts)")
    ap.add_argument("--verbose", action="store_true", help="print every held-out answer")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    results = run(args.model, args.dev, args.train, args.threads, args.limit, args.verbose)
    shown = {k: v for k, v in results.items() if k not in ("samples", "repo_failures")}
    print(json.dumps(shown, indent=1, ensure_ascii=False))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
