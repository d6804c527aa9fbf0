"""Write the model card `chatglm-demo/README.md` from the training summary and the evaluation results.

    python demo/model_card.py        # reads demo/work/train_summary.json and demo/work/eval_results.json

demo/train.py calls this after exporting and evaluating; run it by hand after rerunning demo/evaluate.py
with --json demo/work/eval_results.json.
"""

import argparse
import collections
import json
import os
import platform

from demo.evaluate import CLAIMED, format_table
from demo.skills import DEFLECT

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _pct(x):
    return f"{100 * x:.1f}%"


def _cell(text):
    return json.dumps(text, ensure_ascii=False)[1:-1].replace("|", "&#124;")


def examples(ev, per_category=1):
    """A few greedy held-out answers: the first of each category and language."""
    seen, rows = collections.Counter(), []
    for a in ev["answers"]:
        key = (a["category"], a["lang"])
        if seen[key] < per_category:
            seen[key] += 1
            rows.append(f"| {a['category'].replace('_', ' ')} | {_cell(a['prompt'])} | {_cell(a['answer'])} "
                        f"| {a['verdict']} |")
    return "\n".join(rows)


def weak_categories(ev):
    """The claimed categories that the held-out evaluation finds less than 90% right, with their rate."""
    weak = [f"{c.replace('_', ' ')} ({_pct(r.get('right', 0) / r['n'])} right)" for c, r in ev["heldout"].items()
            if c in CLAIMED and r.get("n") and r.get("right", 0) / r["n"] < 0.9]
    return ", ".join(weak) if weak else "none"


def reliability(ev):
    """One honest sentence on how far the claims hold, from the evaluation."""
    weak = weak_categories(ev)
    if weak == "none":
        return "Every item is at least 90% right there."
    return (f"**Not all of it is reliable yet:** {weak}. Do not trust those answers without checking them, or "
            "load the real weights.")


def render(train, ev):
    cfg = ev["config"]
    args = train["args"]
    s = ev["summary"]
    dev_hist = train.get("dev_history") or []
    curve = ", ".join(f"{h['dev_loss']:.3f}" for h in dev_hist)
    mb = ev["folder_bytes"] / 1e6
    wrong_numbers = len(ev["wrong_numbers"])
    return f"""---
license: apache-2.0
language:
- zh
- en
tags:
- chatglm
- glm
- demo
---

# chatglm-demo: a tiny bilingual demo checkpoint

A **very small** model with the ChatGLM-6B architecture (GLM blocks, 2-D rotary positions, the same
tokenizer layout and chat prompt format), trained from scratch by this repository on a small corpus that the
project wrote itself. It exists so that every script, test and tutorial of the repository runs in seconds on a
laptop CPU without downloading 13 GB.

**It is not ChatGLM-6B.** It does a few small things right and says so honestly for everything else. For
real use load the real weights: `python cli_demo.py --model THUDM/chatglm-6b`, or `--model` with a local
folder that holds them.

## What it can do

It was trained for exactly this, and the held-out evaluation below checks each item on prompts it never saw in
training. {reliability(ev)}

- **sums** of two whole numbers from 0 to 99. One-digit sums are answered directly (`3 + 4 = 7.`), the others
  in a worked format, ones then tens: `45 + 67: ones 5 + 7 = 12, tens 4 + 6 + 1 = 11, so 45 + 67 = 112.`;
- **products** of two one-digit numbers (the times table): `6 × 7 = 42.`;
- **metric conversions** of whole numbers by 10, 100 or 1000 between km, m, cm, mm, kg and g, L and mL
  (`5 km = 5000 m.`; the reverse only when it comes out whole), and 1 to 10 hours or minutes into minutes or
  seconds;
- **translations** of the about 130 common words and phrases of its word list (`demo/build_corpus.py`,
  `PAIRS`), Chinese to English and back;
- **this repository**: how to install it, run the scripts and their flags, the API, quantization, several
  GPUs, P-Tuning v2, the tests;
- **a handful of everyday topics**: sleep, studying, health, drinking water, a simple dish, cooking rice,
  travel, Beijing, a cold, a headache, stress, tired eyes, exercise, time, saving money, tea, a rainy day,
  interviews, reading, learning to program;
- **short Python snippets** for a fixed list of about twenty requests (add two numbers, reverse a string, a
  factorial, Fibonacci numbers, a prime test, reading and writing files, sorting, counting words, removing
  duplicates, Hello World, the largest number, squares, exceptions, a class, JSON, even numbers, FizzBuzz, an
  average, looping over a dict, loading ChatGLM); any other code request gets the honest line;
- greetings, thanks, goodbyes and questions about itself.

For everything else, subtraction, division, bigger numbers, other units, words outside its list, and any other
topic, it answers with one line in the language of the question:

> {DEFLECT['en']}

> {DEFLECT['zh']}

Greedy decoding (`do_sample=False`, or `--temperature 0` in the scripts) gives its best answers; the scripts'
default sampling (top-p {ev['sampling']['top_p']}, temperature {ev['sampling']['temperature']}) is measured below too.

## Usage

```python
from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("chatglm-demo", trust_remote_code=True)
model = AutoModel.from_pretrained("chatglm-demo", trust_remote_code=True)
response, history = model.chat(tokenizer, "你好", history=[])
print(response)
```

Inside this repository the scripts load it by default (`python cli_demo.py`), or name it with
`--model chatglm-demo`; after `import chatglm` no `trust_remote_code` is needed.

## Evaluation

```
python demo/evaluate.py --json demo/work/eval_results.json
```

{ev['summary']['prompts']} held-out prompts, half Chinese, half English, that the training corpus never contains
(`tests/test_demo_heldout.py` checks it): sums of number pairs and conversion values that training leaves out,
question templates and decorations that training never uses, words outside the word list, hand-written
questions on other topics and open everyday questions. An answer is *right* when it equals the answer the
generator computes (up to NFKC), an *honest deflection* when it is exactly the one-line answer above in the
question's language, and *wrong* otherwise. Greedy decoding; the last column scores
{len(ev['sampling']['seeds'])} answers per prompt sampled at the scripts' defaults (seeded per prompt).

{format_table(ev)}

- Greedy: **{_pct(s['right_or_deflect'])}** of the answers are right or honest deflections; the claimed
  categories are {_pct(s['claimed_right'])} right (the weakest {_pct(s['min_claimed_right'])}); outside the
  domain {_pct(s['outside_deflect'])} deflect.
- Claimed categories below 90% right: {weak_categories(ev)}.
- Arithmetic and conversion answers with a wrong number: **{wrong_numbers}**.
- Sampling at top-p {ev['sampling']['top_p']}, temperature {ev['sampling']['temperature']},
  {len(ev['sampling']['seeds'])} answers per prompt: **{_pct(s['sampled_right_or_deflect'])}** right or honest
  deflections.

Some greedy held-out answers (the first of each category and language):

| category | prompt | answer | scored |
| --- | --- | --- | --- |
{examples(ev)}

Also measured by `demo/evaluate.py`:

| measure | value |
| --- | --- |
| held-out loss per answer token (`demo/data/dev.jsonl`, {ev['dev_rows']} rows) | {ev['dev_loss_per_token']} (perplexity {ev['dev_perplexity']}) |
| greedy decoding speed, batch 1, fp32, {ev['threads']} threads | {ev['decode_tokens_per_s']} tokens/s (1-minute load average of the machine: {ev.get('load_average', '?')}) |
| load time (tokenizer + model, `from_pretrained` calls) | {ev['fresh_process_load_seconds']} s in a fresh process ({ev['fresh_process_seconds_with_imports']} s including the imports of torch and transformers) |
| folder size | {mb:.1f} MB |

## Model

| | |
| --- | --- |
| parameters | {ev['parameters'] / 1e6:.2f} M (embeddings tied with the LM head) |
| layers / hidden / heads | {cfg['num_layers']} / {cfg['hidden_size']} / {cfg['num_attention_heads']} (head dim {cfg['hidden_size'] // cfg['num_attention_heads']}) |
| inner (MLP) size | {cfg['inner_hidden_size']} |
| vocabulary | {cfg['vocab_size']} SentencePiece pieces, the real `ice_text.model` layout (see below) |
| max_sequence_length | {cfg['max_sequence_length']} |
| weights | `model.safetensors`, {mb:.1f} MB folder in all |

The tokenizer (`ice_text.model`) is a unigram SentencePiece model trained on the corpus with NFKC
normalisation, dummy prefix, byte fallback and digits split into single pieces, laid out like the real one:
`<unk> <s> </s> <pad>` 0-3, `<n>` 4, `▁` 5, ordinary pieces, the CONTROL pieces
`[MASK] [gMASK] [sMASK] <unused_0> <sop> <eop> <ENC> <dBLOCK>`, `<|tab|>` and
`<|blank_2|>`...`<|blank_80|>`, then the 256 byte pieces. Characters it has never seen fall back to bytes.

## Data

`demo/data/` (built by `python demo/build_corpus.py`, seeded): {train['train_rows'] + train['dev_rows']}
chat exchanges written for this project (hand-written seeds and templates, nothing copied), half Chinese and
half English, single- and multi-round: the fixed-answer intents above (several phrasings each, with
decorations), sums, products and conversions whose answers the generator computes (`demo/skills.py`),
translations of the word list, and many questions outside the domain, all answered with the one honest line
(`demo/offtopic.py`: facts, jokes, poems, stories, code, proofs, LaTeX, news, history, medicine, law, money,
opinions, chores; arithmetic, units and words outside the domain). {train['dev_rows']} exchanges are the dev
split for the loss; {train['train_rows']} rows ({train['train_tokens_per_epoch']} tokens per epoch) are used
for training.

## Training

```
{train['command'].strip()}
```

From scratch, {train['steps']} steps over {args['epochs']} epochs, length-bucketed batches of at most
{args['batch_tokens']} padded tokens, AdamW (lr {args['lr']}, warmup {args['warmup']} steps then cosine to
{args['min_lr_ratio']}x, weight decay {args['weight_decay']}, clipping {args['clip']}), float32, seed
{args['seed']}. Loss on the answer tokens only (the fine-tuning layout of `ptuning/`). Measured time:
**{train['train_minutes']} minutes** on {train['threads']} CPU thread(s) ({platform.machine()}, torch
{train['torch']}) on a machine shared with other work. Dev loss after each epoch: {curve}.
{train.get('note', '')}

## Limitations

- A toy: a few million parameters trained for {train['train_minutes']} minutes on a few thousand conversations.
- It recognises its topics by the look of the question. A question phrased far from its training may get the
  honest line although it is in the domain, and, more rarely, an answer to a neighbouring question.
- It has no follow-up skills: each answer depends on the last question only.
- It knows nothing about the world. Do not use it for anything that matters. Use `THUDM/chatglm-6b`.

## License

The demo weights, the tokenizer and the training data are released under the Apache-2.0 license, like the code
of this repository. The real ChatGLM-6B weights are not part of this checkpoint and have their own license.
"""


def write(out_dir, train_summary_path, eval_results_path):
    with open(train_summary_path, encoding="utf-8") as f:
        train = json.load(f)
    with open(eval_results_path, encoding="utf-8") as f:
        ev = json.load(f)
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(render(train, ev))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "chatglm-demo"))
    ap.add_argument("--train-summary", default=os.path.join(HERE, "work", "train_summary.json"))
    ap.add_argument("--eval-results", default=os.path.join(HERE, "work", "eval_results.json"))
    args = ap.parse_args()
    write(args.out, args.train_summary, args.eval_results)
    print(f"wrote {os.path.join(args.out, 'README.md')}")


if __name__ == "__main__":
    main()
