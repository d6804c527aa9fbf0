"""ADGEN metrics as the original ChatGLM-6B ptuning/ computes them.

For every (prediction, label) pair:
  ROUGE-1/2/L: F1 x 100 from rouge_chinese on jieba-segmented words joined by spaces;
  BLEU-4:      nltk sentence_bleu on characters with SmoothingFunction().method3, x 100;
each rounded to 4 decimals, then averaged over all pairs. An empty prediction or label scores 0 for ROUGE
(rouge_chinese cannot score empty text).
"""

import logging

import numpy as np

KEYS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")

_jieba = None


def _cut(text):
    global _jieba
    if _jieba is None:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        _jieba = jieba
    return list(_jieba.cut(text))


def score_pair(pred, label):
    """Scores of one prediction against one label (dict with KEYS, values x 100, 4 decimals)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    hyp = " ".join(_cut(pred))
    ref = " ".join(_cut(label))
    out = {}
    if hyp.split() and ref.split():
        result = Rouge().get_scores(hyp, ref)[0]
        for key in ("rouge-1", "rouge-2", "rouge-l"):
            out[key] = round(result[key]["f"] * 100, 4)
    else:
        out.update({"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0})
    if pred and label:
        bleu = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
    else:
        bleu = 0.0
    out["bleu-4"] = float(round(bleu * 100, 4))
    return out


def score_texts(preds, labels):
    """Average scores over pairs of texts."""
    per_key = {k: [] for k in KEYS}
    for pred, label in zip(preds, labels):
        for k, v in score_pair(pred, label).items():
            per_key[k].append(v)
    return {k: float(np.mean(v)) if v else 0.0 for k, v in per_key.items()}


def decode_ids(tokenizer, rows):
    """Decode generated ids / label ids (-100 and padding dropped, special tokens skipped), stripped."""
    pad = tokenizer.pad_token_id
    rows = np.asarray(rows) if not isinstance(rows, list) else rows
    cleaned = [[int(t) for t in row if int(t) != -100 and int(t) != pad] for row in rows]
    texts = tokenizer.batch_decode(cleaned, skip_special_tokens=True, clean_up_tokenization_spaces=True)
    return [t.strip() for t in texts]


def make_compute_metrics(tokenizer):
    def compute_metrics(eval_preds):
        preds, labels = eval_preds.predictions, eval_preds.label_ids
        if isinstance(preds, tuple):
            preds = preds[0]
        return score_texts(decode_ids(tokenizer, preds), decode_ids(tokenizer, labels))

    return compute_metrics
