"""Write the model card `chatglm-demo/README.md` from the training summary and the evaluation results.

    python demo/model_card.py        # reads demo/work/train_summary.json and demo/work/eval_results.json

demo/train.py calls this after exporting and evaluating; run it by hand after rerunning demo/evaluate.py
with --json demo/work/eval_results.json.
"""

import argparse
import json
import os
import platform

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _pct(x):
    return f"{100 * x:.1f}%"


def render(train, ev):
    cfg = ev["config"]
    args = train["args"]
    dev_hist = train.get("dev_history") or []
    curve = ", ".join(f"{h['dev_loss']:.3f}" for h in dev_hist)
    samples = "\n".join(
        f"| {json.dumps(s['prompt'], ensure_ascii=False)[1:-1]}"
        f"{' (round ' + str(len(s['history']) + 1) + ')' if s['history'] else ''} "
        f"| {json.dumps(s['answer'], ensure_ascii=False)[1:-1].replace('|', '&#124;')} |"
        for s in ev["samples"][:8]
    )
    mb = ev["folder_bytes"] / 1e6
    names = {"fixed": "fixed-answer intents", "translation": "translations", "arithmetic_units": "arithmetic and units",
             "name_memory": "remembering a name"}
    kinds = ", ".join(f"{names[k]} {_pct(v['exact'])} of {v['rows']}"
                      for k, v in (ev.get("dev_exact_match_by_kind") or {}).items() if v["rows"])
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

**It is not ChatGLM-6B.** It knows little beyond its training conversations and answers anything else
poorly. For real use load the real weights, for example `python cli_demo.py --model THUDM/chatglm-6b`.

## Usage

```python
from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("chatglm-demo", trust_remote_code=True)
model = AutoModel.from_pretrained("chatglm-demo", trust_remote_code=True)
response, history = model.chat(tokenizer, "你好", history=[])
print(response)
```

Inside this repository the scripts load it by default (`python cli_demo.py`), or name it with
`--model chatglm-demo`; after `import chatglm` no `trust_remote_code` is needed. Greedy decoding
(`do_sample=False`) gives its best answers.

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
normalisation, dummy prefix and byte fallback, laid out like the real one: `<unk> <s> </s> <pad>` 0-3, `<n>` 4,
`▁` 5, ordinary pieces, the CONTROL pieces `[MASK] [gMASK] [sMASK] <unused_0> <sop> <eop> <ENC> <dBLOCK>`,
`<|tab|>` and `<|blank_2|>`...`<|blank_80|>`, then the 256 byte pieces. Characters it has never seen fall back
to bytes. It is small because the corpus is small: the trainer finds no more useful pieces in it.

## Data

`demo/data/` (built by `python demo/build_corpus.py`, seeded): {train['train_rows'] + train['dev_rows']}
chat exchanges written for this project (hand-written seeds and templates, nothing copied), about half
Chinese and half English, single- and multi-round: greetings and who the model is, how to use this repository
(every script and flag, the API, quantization, multi-GPU, P-Tuning v2, tests), everyday advice, arithmetic and
unit conversions (answers computed by the generator), short translations, short Python snippets. 10% of the
exchanges are held out (`dev.jsonl`: {train['dev_rows']} rows); {train['train_rows']} rows
({train['train_tokens_per_epoch']} tokens per epoch) are used for training.

## Training

```
{train['command'].strip()}
```

From scratch, {train['steps']} steps over {args['epochs']} epochs, length-bucketed batches of at most
{args['batch_tokens']} padded tokens, AdamW (lr {args['lr']}, warmup {args['warmup']} steps then cosine to
{args['min_lr_ratio']}x, weight decay {args['weight_decay']}, clipping {args['clip']}), float32, seed
{args['seed']}. Loss on the answer tokens only (the fine-tuning layout of `ptuning/`). Measured time:
**{train['train_minutes']} minutes** on {train['threads']} CPU threads ({platform.machine()}, torch
{train['torch']}). Held-out loss after each epoch: {curve}.

## Evaluation

`python demo/evaluate.py` on the {ev['dev_rows']} held-out exchanges, greedy decoding:

| measure | value |
| --- | --- |
| held-out loss per answer token | {ev['dev_loss_per_token']} (perplexity {ev['dev_perplexity']}) |
| good answers (non-empty, in the prompt's language, not degenerate) | **{_pct(ev['quality_rate'])}** (Chinese {_pct(ev['quality_rate_zh'])}, English {_pct(ev['quality_rate_en'])}) |
| ... non-empty / right language / not degenerate | {_pct(ev['nonempty_rate'])} / {_pct(ev['language_rate'])} / {_pct(ev['not_degenerate_rate'])} |
| held-out answers identical to the reference | {_pct(ev['dev_exact_match_rate'])} ({kinds}) |
| training prompts about this repository answered exactly as trained | {_pct(ev['repo_exact_match_rate'])} of {ev['repo_prompts']} |
| greedy decoding speed, batch 1, fp32, {ev['threads']} threads | {ev['decode_tokens_per_s']} tokens/s |
| load time (tokenizer + model, `from_pretrained` calls) | {ev.get('fresh_process_load_seconds', ev['load_seconds'])} s in a fresh process ({ev.get('fresh_process_seconds_with_imports', '?')} s including the imports of torch and transformers) |

"Not degenerate" means the answer ended with `<eop>` within 160 tokens and repeats no token bigram more than 4
times (beyond what the reference answer itself does); "right language" means a Chinese prompt got at least two
CJK characters and an English prompt an answer that is mostly Latin letters. These check the form of an
answer, not its truth: see the exact-match rates for correctness. The fixed-answer intents (greetings, identity,
this repository, advice, code) are answered well; computed answers (arithmetic, unit conversions) and word-level
translations are mostly wrong in their details.

Some held-out answers:

| prompt | greedy answer |
| --- | --- |
{samples}

## Limitations

- A toy: a few million parameters trained for {train['train_minutes']} minutes on a few thousand conversations.
  Outside those topics it produces fluent-looking but wrong or irrelevant text, and even on them it sometimes
  answers a neighbouring question.
- Arithmetic and unit conversions are unreliable: it imitates the form of the answers, the numbers are often
  wrong. Translations cover only the words it was trained on and often pick the wrong word.
- It knows nothing about the world after or beyond its corpus, and it cannot follow long conversations.
- Do not use it for anything that matters. Use `THUDM/chatglm-6b`.

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
