"""The held-out evaluation of the demo checkpoint: is every answer right, or an honest deflection?

    python demo/evaluate.py [--model chatglm-demo] [--json demo/work/eval_results.json]

The prompts are built here and are never in the training corpus (tests/test_demo_heldout.py checks it):
  * sums of number pairs that training never shows (skills.heldout_pair), in question templates it never uses;
  * the times table, conversion values training never shows (skills.heldout_value) and the word list, in
    question templates training never uses;
  * the questions of the fixed-answer intents (this repository, everyday tips, code snippets, chat) wrapped in
    decorations training never uses (build_corpus.EVAL_PREFIX / EVAL_SUFFIX);
  * arithmetic, conversions and words outside the domain, with templates, units and words of their own;
  * hand-written questions on other topics and open everyday questions (offtopic.EVAL).

Every answer is scored against what the generator computes: "right" (equal to the expected answer, up to
NFKC), "deflect" (exactly the honest one-line answer in the question's language) or "wrong". For the
categories outside the domain the deflection is the expected answer. Greedy decoding first, then 3 answers
sampled at the scripts' defaults (top_p 0.7, temperature 0.95), seeded per prompt.

It also measures the held-out loss on demo/data/dev.jsonl, the greedy decoding speed at batch 1 (fp32,
2 threads), the load time in a fresh process and the folder size.
"""

import argparse
import collections
import json
import os
import random
import sys
import time
import unicodedata

import torch
from transformers import AutoModel, AutoTokenizer

from chatglm.generation import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, chat_inputs, generation_kwargs, process_response
from demo import build_corpus, offtopic, skills
from demo.rows import encode_rows, evaluate_loss, load_rows

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Categories in the order of the table; CLAIMED ones are what the model card says the demo does.
CLAIMED = ["sum", "product", "unit", "translation", "repository", "everyday", "code", "chat"]
OUTSIDE = ["arith_beyond", "unit_beyond", "unknown_word", "off_topic", "open_everyday"]
NUMERIC = {"sum", "product", "unit", "arith_beyond", "unit_beyond"}
# Prompts per category and language.
SIZES = {"sum": 12, "product": 8, "unit": 10, "translation": 10, "repository": 10, "everyday": 8, "code": 5, "chat": 6,
         "arith_beyond": 8, "unit_beyond": 6, "unknown_word": 6, "off_topic": 12, "open_everyday": 6}
SAMPLING_SEEDS = (0, 1, 2)


def intent_prompts(rng, lang, intents, count):
    """`count` held-out prompts of fixed-answer intents: a question wrapped in evaluation-only decorations."""
    questions = [(q, a) for qs, a in intents for q in qs if q not in build_corpus.NO_DECOR]
    out = []
    for q, a in rng.sample(questions, min(count, len(questions))):
        prompt = rng.choice(build_corpus.EVAL_PREFIX[lang]) + q + rng.choice(build_corpus.EVAL_SUFFIX[lang])
        out.append((prompt, a))
    return out


def heldout_items(seed=7):
    """[{"category", "lang", "prompt", "expected"}]: expected is the right answer, or DEFLECT."""
    rng = random.Random(seed)
    items = []

    def add(category, lang, prompt, expected):
        items.append({"category": category, "lang": lang, "prompt": prompt, "expected": expected})

    for lang in ("zh", "en"):
        deflect = skills.DEFLECT[lang]
        n = 0
        while n < SIZES["sum"]:
            a, b = skills.draw_sum_operands(rng)
            if skills.heldout_pair(a, b):
                add("sum", lang, rng.choice(skills.SUM_Q[lang]["eval"]).format(a=a, b=b), skills.sum_answer(lang, a, b))
                n += 1
        for _ in range(SIZES["product"]):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            add("product", lang, rng.choice(skills.PRODUCT_Q[lang]["eval"]).format(a=a, b=b),
                skills.product_answer(lang, a, b))
        for _ in range(SIZES["unit"]):
            f, t, v, result = skills.draw_unit(rng, "eval")
            add("unit", lang, skills.unit_question(lang, rng.choice(skills.UNIT_Q[lang]["eval"]), f, t, v),
                skills.unit_answer(lang, f, t, v, result))
        for zh, en in rng.sample(build_corpus.PAIRS, SIZES["translation"]):
            direction = rng.choice(["zh2en", "en2zh"])
            add("translation", lang, skills.translation_question(rng, lang, direction, zh, en, "eval"),
                skills.translation_answer(lang, direction, zh, en))
        intents = {"zh": (build_corpus.ZH_REPO, build_corpus.ZH_EVERYDAY, build_corpus.ZH_CODE, build_corpus.ZH_CHAT),
                   "en": (build_corpus.EN_REPO, build_corpus.EN_EVERYDAY, build_corpus.EN_CODE, build_corpus.EN_CHAT)}
        for category, table in zip(("repository", "everyday", "code", "chat"), intents[lang]):
            for prompt, answer in intent_prompts(rng, lang, table, SIZES[category]):
                add(category, lang, prompt, answer)
        for i in range(SIZES["arith_beyond"]):
            if i % 3 == 0:
                a, b = skills.big_sum_operands(rng)
                prompt = rng.choice(skills.SUM_Q[lang]["eval"]).format(a=a, b=b)
            elif i % 3 == 1:
                a, b = skills.big_product_operands(rng)
                prompt = rng.choice(skills.PRODUCT_Q[lang]["eval"]).format(a=a, b=b)
            else:
                a, b, c = skills.draw_beyond_operands(rng)
                prompt = rng.choice(skills.BEYOND_ARITH_Q[lang]["eval"]).format(a=a, b=b, c=c)
            add("arith_beyond", lang, prompt, deflect)
        for _ in range(SIZES["unit_beyond"]):
            add("unit_beyond", lang, skills.draw_beyond_unit(rng, lang, "eval"), deflect)
        for zh, en in rng.sample(skills.UNKNOWN_WORDS_EVAL, SIZES["unknown_word"]):
            direction = rng.choice(["zh2en", "en2zh"])
            add("unknown_word", lang, skills.translation_question(rng, lang, direction, zh, en, "eval"), deflect)
        for q in offtopic.EVAL[lang]["off_topic"][: SIZES["off_topic"]]:
            add("off_topic", lang, q, deflect)
        for q in offtopic.EVAL[lang]["open"][: SIZES["open_everyday"]]:
            add("open_everyday", lang, q, deflect)
    return items


def norm(text):
    return unicodedata.normalize("NFKC", text.strip())


def score(item, answer):
    """'right', 'deflect' or 'wrong'. Outside the domain the deflection is the right answer, but it is
    counted as a deflection; a deflection in the other language is wrong."""
    if norm(answer) == norm(skills.DEFLECT[item["lang"]]):
        return "deflect"
    if item["expected"] != skills.DEFLECT[item["lang"]] and norm(answer) == norm(item["expected"]):
        return "right"
    return "wrong"


def has_digit(text):
    return any(c.isdigit() for c in text)


def load(folder, threads=2):
    torch.set_num_threads(threads)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    return tokenizer, model, time.perf_counter() - start


def answer(model, tokenizer, prompt):
    """The greedy answer, as model.chat gives it (cli_demo.py and web_demo.py at temperature 0)."""
    return model.chat(tokenizer, prompt, history=[], do_sample=False, max_length=256)[0]


@torch.inference_mode()
def sampled_answers(model, tokenizer, prompt, seed, n):
    """`n` answers sampled at the scripts' defaults, exactly as model.chat samples one, from one generate call
    with n sequences (a third of the time of n calls; seeded per prompt, so independent of the prompt order)."""
    torch.manual_seed(seed)
    inputs = chat_inputs(model, tokenizer, prompt, [], 256)
    kwargs = generation_kwargs(256, True, DEFAULT_TOP_P, DEFAULT_TEMPERATURE, None, {})
    out = model.generate(**inputs, num_return_sequences=n, **kwargs)
    answers = []
    for row in out[:, inputs["input_ids"].shape[1]:].tolist():
        if model.config.eos_token_id in row:  # finished rows are padded after their <eop>
            row = row[: row.index(model.config.eos_token_id) + 1]
        answers.append(process_response(tokenizer.decode(row)))
    return answers


def run_heldout(model, tokenizer, items, seeds=SAMPLING_SEEDS, verbose=False):
    """Greedy and sampled answers of every held-out item; the counts per category."""
    table = {c: collections.Counter() for c in CLAIMED + OUTSIDE}
    wrong_numbers, greedy_answers = [], []
    for i, item in enumerate(items):
        reply = answer(model, tokenizer, item["prompt"])
        verdict = score(item, reply)
        row = table[item["category"]]
        row["n"] += 1
        row[verdict] += 1
        if verdict == "wrong" and item["category"] in NUMERIC and has_digit(reply):
            wrong_numbers.append({"prompt": item["prompt"], "answer": reply})
        if seeds:
            for sampled in sampled_answers(model, tokenizer, item["prompt"], seed=1000 * seeds[0] + i, n=len(seeds)):
                row["sampled_n"] += 1
                row["sampled_ok"] += score(item, sampled) != "wrong"
        greedy_answers.append({**item, "answer": reply, "verdict": verdict})
        if verbose:
            print(json.dumps(greedy_answers[-1], ensure_ascii=False), flush=True)
    return table, wrong_numbers, greedy_answers


def summarize(table):
    def total(cats, key):
        return sum(table[c][key] for c in cats)

    cats = CLAIMED + OUTSIDE
    n = total(cats, "n")
    return {
        "prompts": n,
        "right_or_deflect": round((total(cats, "right") + total(cats, "deflect")) / n, 4),
        "claimed_right": round(total(CLAIMED, "right") / max(1, total(CLAIMED, "n")), 4),
        "outside_deflect": round(total(OUTSIDE, "deflect") / max(1, total(OUTSIDE, "n")), 4),
        "sampled_right_or_deflect": round(total(cats, "sampled_ok") / max(1, total(cats, "sampled_n")), 4),
        "min_claimed_right": min(round(table[c]["right"] / max(1, table[c]["n"]), 4) for c in CLAIMED),
    }


@torch.inference_mode()
def decode_speed(model, tokenizer, new_tokens=100, repeats=3):
    inputs = tokenizer(["你好，请介绍一下这个项目。"], return_tensors="pt")
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        elapsed = time.perf_counter() - start
        best = max(best, (out.shape[1] - inputs["input_ids"].shape[1]) / elapsed)
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
            total, load_s = line.split()[1:]
            return float(total), float(load_s)
    raise RuntimeError(out.stderr[-2000:])


def folder_size(folder):
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
               if os.path.isfile(os.path.join(folder, f)))


def run(folder, dev_path, threads=2, seeds=SAMPLING_SEEDS, verbose=False):
    tokenizer, model, load_s = load(folder, threads)
    dev_rows = load_rows(dev_path)
    examples = encode_rows(tokenizer, dev_rows, max_source=256, max_target=160)  # demo/train.py's defaults
    dev_loss = evaluate_loss(model, examples, tokenizer.pad_token_id)

    items = heldout_items()
    table, wrong_numbers, greedy_answers = run_heldout(model, tokenizer, items, seeds, verbose)
    speed = decode_speed(model, tokenizer)
    load_average = os.getloadavg()[0]  # the speed is only comparable on an otherwise idle machine
    fresh_total, fresh_load = fresh_process_load_seconds(folder, threads)
    config = model.config
    return {
        "folder": os.path.relpath(os.path.abspath(folder), ROOT),
        "config": {k: getattr(config, k) for k in ("vocab_size", "hidden_size", "inner_hidden_size", "num_layers",
                                                  "num_attention_heads", "max_sequence_length")},
        "parameters": sum(p.numel() for p in model.parameters()),
        "dev_rows": len(dev_rows),
        "dev_loss_per_token": round(dev_loss, 4),
        "dev_perplexity": round(float(torch.tensor(dev_loss).exp()), 3),
        "heldout": {c: dict(table[c]) for c in CLAIMED + OUTSIDE},
        "summary": summarize(table),
        "sampling": {"top_p": DEFAULT_TOP_P, "temperature": DEFAULT_TEMPERATURE, "seeds": list(seeds)},
        "wrong_numbers": wrong_numbers,
        "answers": greedy_answers,
        "load_seconds": round(load_s, 2),
        "fresh_process_load_seconds": round(fresh_load, 2),
        "fresh_process_seconds_with_imports": round(fresh_total, 2),
        "decode_tokens_per_s": round(speed, 1),
        "load_average": round(load_average, 1),
        "threads": threads,
        "folder_bytes": folder_size(folder),
    }


def format_table(results):
    """The held-out table as markdown (the model card prints it)."""
    lines = ["| category | claimed | prompts | right | honest deflection | wrong | sampled: right or deflection |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in CLAIMED + OUTSIDE:
        r = results["heldout"][c]
        n = r.get("n", 0)
        right, deflect, wrong = (f"{100 * r.get(k, 0) / max(1, n):.0f}%" for k in ("right", "deflect", "wrong"))
        sampled = f"{100 * r.get('sampled_ok', 0) / max(1, r.get('sampled_n', 0)):.0f}%"
        claimed = "yes" if c in CLAIMED else "no: deflects"
        lines.append(f"| {c.replace('_', ' ')} | {claimed} | {n} | {right} | {deflect} | {wrong} | {sampled} |")
    s = results["summary"]
    lines.append(f"| **all** | | {s['prompts']} | | | | {100 * s['sampled_right_or_deflect']:.1f}% |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "chatglm-demo"))
    ap.add_argument("--dev", default=os.path.join(HERE, "data", "dev.jsonl"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=len(SAMPLING_SEEDS), help="sampled answers per prompt (0: none)")
    ap.add_argument("--verbose", action="store_true", help="print every greedy answer")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    results = run(args.model, args.dev, args.threads, tuple(range(args.seeds)), args.verbose)
    print(format_table(results))
    shown = {k: v for k, v in results.items() if k not in ("answers", "heldout")}
    print(json.dumps(shown, indent=1, ensure_ascii=False))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
