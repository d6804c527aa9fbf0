"""The demo corpus as training rows, and the held-out loss: shared by demo/train.py and demo/evaluate.py."""

import json

import torch

from chatglm.generation import build_prompt
from ptuning.data_utils import IGNORE_INDEX, build_training_row, pad_training_rows


def load_rows(path):
    """The rows of a demo/data/*.jsonl file: {"prompt", "response", "history": [[q, a], ...]}."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def encode_rows(tokenizer, rows, max_source, max_target):
    """(input_ids, labels) of each row in the chat fine-tuning layout; a long history loses its start, since
    the current question matters most."""
    return [build_training_row(tokenizer, build_prompt(row["prompt"], row.get("history") or []), row["response"],
                               max_source, max_target, keep_prompt_tail=True)
            for row in rows]


@torch.no_grad()
def evaluate_loss(model, examples, pad_id, batch_tokens=4096, max_batch=64):
    """Mean cross-entropy per label token (the <sop>-onward ids) over `examples`."""
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    total, count = 0.0, 0
    batch = []
    for i in order + [None]:
        if i is not None:
            width = len(examples[i][0])
            if not batch or (width * (len(batch) + 1) <= batch_tokens and len(batch) < max_batch):
                batch.append(i)
                continue
        if not batch:
            break
        input_ids, labels = pad_training_rows([examples[j] for j in batch], pad_id)
        n = int((labels[:, 1:] != IGNORE_INDEX).sum())
        loss = model(input_ids=input_ids, labels=labels, use_cache=False).loss
        total += float(loss) * n
        count += n
        batch = [i] if i is not None else []
    model.train()
    return total / max(1, count)
