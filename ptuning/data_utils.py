"""Reading, checking and tokenizing fine-tuning data (the layout of the original ChatGLM-6B ptuning/main.py).

Training row (single turn or chat):
    prompt     = source_prefix + (query | "[Round i]\\n问：q\\n答：a\\n" ... "[Round n]\\n问：query\\n答：")
    a          = encode(prompt)[: max_source_length - 1]
    b          = encode(answer)[: max_target_length - 2]
    input_ids  = a + [gMASK] + [<sop>] + b + [<eop>]     then right-padded with <pad>
    labels     = -100 for every position before <sop>, the ids from <sop> on, pads -> -100
    length     = max_source_length + max_target_length

Evaluation/prediction row:
    input_ids  = encode(prompt)[: max_source_length - 2] + [gMASK, <sop>]    (left-padded per batch)
    labels     = encode(answer)[: val_max_target_length - 2] + [gMASK, <sop>] (decoded with special tokens
                 skipped, so only the answer text is compared)

Like the original, rows whose prompt or answer is empty are skipped, a training prompt uses the "[Round i]"
layout whenever --history_column is given (even with an empty history), and an evaluation prompt uses it only
when the history is non-empty.
"""

import csv
import json
import os

import torch

from chatglm.entrypoints.errors import UserError
from chatglm.generation import format_rounds


class DataFileError(UserError, ValueError):
    """A data file that cannot be used; the message names the file, the line and the problem."""


# ---------------------------------------------------------------------------------------------------------
# Reading and checking files
# ---------------------------------------------------------------------------------------------------------


def _check_row(row, where, prompt_column, response_column, history_column):
    if not isinstance(row, dict):
        raise DataFileError(f"{where}: expected a JSON object like "
                            f"{{\"{prompt_column}\": ..., \"{response_column}\": ...}}, got {type(row).__name__}")
    for col in (prompt_column, response_column):
        if col not in row:
            raise DataFileError(f"{where}: missing column \"{col}\" "
                                f"(columns present: {', '.join(map(str, row)) or 'none'})")
        value = row[col]
        if value is not None and not isinstance(value, str):
            raise DataFileError(f"{where}: column \"{col}\" must be a string, got {type(value).__name__} "
                                f"{json.dumps(value, ensure_ascii=False)[:60]}")
    if history_column is not None:
        if history_column not in row:
            raise DataFileError(f"{where}: missing column \"{history_column}\" "
                                f"(columns present: {', '.join(map(str, row))})")
        hist = row[history_column]
        if hist is None:
            row[history_column] = []
            return row
        if not isinstance(hist, list):
            raise DataFileError(f"{where}: column \"{history_column}\" must be a list of [question, answer] "
                                f"pairs, got {type(hist).__name__}")
        for i, turn in enumerate(hist):
            if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
                raise DataFileError(f"{where}: column \"{history_column}\" item {i} must be a [question, answer] "
                                    f"pair of strings, got {json.dumps(turn, ensure_ascii=False)[:80]}")
        row[history_column] = [list(t) for t in hist]
    return row


def read_data_file(path, prompt_column, response_column, history_column=None):
    """Read a JSON-lines / JSON-array / CSV file and check every row. Returns a list of dicts holding only the
    columns we use. Raises DataFileError("<file>:<line>: <problem>") on the first bad row."""
    if not os.path.isfile(path):
        raise DataFileError(f"{path}: file not found")
    columns = [c for c in (prompt_column, response_column, history_column) if c is not None]
    rows = []
    ext = path.rsplit(".", 1)[-1].lower()
    if ext == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for col in columns:
                if reader.fieldnames is None or col not in reader.fieldnames:
                    raise DataFileError(f"{path}:1: missing column \"{col}\" in the CSV header "
                                        f"(columns: {', '.join(reader.fieldnames or [])})")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if history_column is not None:
                    try:
                        row[history_column] = json.loads(row[history_column]) if row[history_column] else []
                    except json.JSONDecodeError as e:
                        raise DataFileError(
                            f"{where}: column \"{history_column}\" is not valid JSON ({e.msg})") from None
                row = _check_row(row, where, prompt_column, response_column, history_column)
                rows.append({c: row[c] for c in columns})
        return rows

    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        # a single JSON array of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFileError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
        for i, item in enumerate(items):
            row = _check_row(item, f"{path}: item {i}", prompt_column, response_column, history_column)
            rows.append({c: row[c] for c in columns})
        return rows
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFileError(f"{path}:{lineno}: invalid JSON ({e.msg}, column {e.colno}): {line[:80]}") from None
        row = _check_row(item, f"{path}:{lineno}", prompt_column, response_column, history_column)
        rows.append({c: row[c] for c in columns})
    if not rows:
        raise DataFileError(f"{path}: no data rows")
    return rows


# ---------------------------------------------------------------------------------------------------------
# Prompts and token layout
# ---------------------------------------------------------------------------------------------------------


def chat_prompt(query, history):
    """The chat prompt with history rounds; training uses it even when the history is empty (as the original)."""
    return format_rounds(query, history)


def special_ids(tokenizer):
    gmask = tokenizer.convert_tokens_to_ids("[gMASK]")
    return gmask, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id


IGNORE_INDEX = -100  # label of positions without loss


def build_training_row(tokenizer, prompt, answer, max_source_length, max_target_length, keep_prompt_tail=False):
    """Unpadded input_ids and labels of one training row: prompt + [gMASK, <sop>] + answer + [<eop>], labels
    from <sop> on. The prompt keeps max_source_length - 1 tokens (its start, as the original, or its end with
    keep_prompt_tail), the answer max_target_length - 2."""
    gmask, sop, eop, _ = special_ids(tokenizer)
    a_ids = tokenizer.encode(prompt, add_special_tokens=False)
    a_ids = a_ids[-(max_source_length - 1):] if keep_prompt_tail else a_ids[: max_source_length - 1]
    b_ids = tokenizer.encode(answer, add_special_tokens=False)[: max_target_length - 2]
    input_ids = a_ids + [gmask, sop] + b_ids + [eop]
    context_length = len(a_ids) + 1  # index of <sop>
    labels = [IGNORE_INDEX] * context_length + input_ids[context_length:]
    return input_ids, labels


def pad_training_rows(rows, pad_id):
    """[(input_ids, labels)] -> input_ids, labels tensors [B, longest]: right-padded with <pad> and IGNORE_INDEX."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, lab) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
    return input_ids, labels


def build_train_features(tokenizer, prompt, answer, max_source_length, max_target_length,
                         ignore_pad_token_for_loss=True):
    """input_ids and labels of one training row (fixed length max_source_length + max_target_length)."""
    pad = tokenizer.pad_token_id
    input_ids, labels = build_training_row(tokenizer, prompt, answer, max_source_length, max_target_length)
    pad_len = max_source_length + max_target_length - len(input_ids)
    input_ids = input_ids + [pad] * pad_len
    labels = labels + [pad] * pad_len
    if ignore_pad_token_for_loss:
        labels = [(t if t != pad else IGNORE_INDEX) for t in labels]
    return input_ids, labels


def build_eval_features(tokenizer, prompt, answer, max_source_length, max_target_length,
                        ignore_pad_token_for_loss=True):
    """Unpadded prompt ids (ending in [gMASK] <sop>) and label ids of one evaluation row."""
    gmask, sop, eop, pad = special_ids(tokenizer)
    src = tokenizer.encode(prompt, add_special_tokens=False)[: max(max_source_length - 2, 0)] + [gmask, sop]
    tgt = tokenizer.encode(answer, add_special_tokens=False)[: max(max_target_length - 2, 0)] + [gmask, sop]
    if ignore_pad_token_for_loss:
        tgt = [(t if t != pad else IGNORE_INDEX) for t in tgt]
    return src, tgt


def make_preprocessors(tokenizer, data_args):
    """Batched functions for datasets.map: (train_fn, eval_fn)."""
    prompt_col, response_col, history_col = data_args.prompt_column, data_args.response_column, data_args.history_column
    prefix = data_args.source_prefix or ""

    def rows(examples, training):
        for i in range(len(examples[prompt_col])):
            query, answer = examples[prompt_col][i], examples[response_col][i]
            if not query or not answer:
                continue
            history = examples[history_col][i] if history_col is not None else None
            if history_col is None or (not training and not history):
                prompt = query
            else:
                prompt = chat_prompt(query, history or [])
            yield prefix + prompt, answer

    def make_features_fn(training):
        build = build_train_features if training else build_eval_features
        max_target = data_args.max_target_length if training else data_args.val_max_target_length

        def features(examples):
            out = {"input_ids": [], "labels": []}
            for prompt, answer in rows(examples, training):
                ids, labels = build(tokenizer, prompt, answer, data_args.max_source_length, max_target,
                                    data_args.ignore_pad_token_for_loss)
                out["input_ids"].append(ids)
                out["labels"].append(labels)
            return out

        return features

    train_fn, eval_fn = make_features_fn(True), make_features_fn(False)
    return train_fn, eval_fn


def print_dataset_example(tokenizer, example):
    pad = tokenizer.pad_token_id
    print("input_ids", example["input_ids"])
    print("inputs", tokenizer.decode(example["input_ids"]))
    print("label_ids", example["labels"])
    print("labels", tokenizer.decode([t if t != -100 else pad for t in example["labels"]]))


# ---------------------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------------------


class ChatGLMCollator:
    """Training rows (all the same length): stacked ids and labels; the model builds the GLM mask itself.
    Evaluation rows (prompt lengths differ): prompts left-padded by the tokenizer, which also returns the 2-D
    attention mask and [B, 2, L] position ids; labels padded with -100."""

    def __init__(self, tokenizer, label_pad_token_id=IGNORE_INDEX):
        self.tokenizer = tokenizer
        self.label_pad_token_id = label_pad_token_id

    def __call__(self, features):
        ids = [list(f["input_ids"]) for f in features]
        labels = [list(f["labels"]) for f in features] if "labels" in features[0] else None
        same_len = len({len(x) for x in ids}) == 1
        is_train = (labels is not None and same_len and len({len(x) for x in labels}) == 1
                    and len(labels[0]) == len(ids[0]))
        if is_train:
            input_ids, labels = pad_training_rows(list(zip(ids, labels)), self.tokenizer.pad_token_id)
            return {"input_ids": input_ids, "labels": labels}
        # the ChatGLM tokenizer pads on the left and adds the GLM position ids
        batch = dict(self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt"))
        if labels is not None:
            width = max(len(x) for x in labels)
            batch["labels"] = torch.tensor([x + [self.label_pad_token_id] * (width - len(x)) for x in labels],
                                           dtype=torch.long)
        return batch
