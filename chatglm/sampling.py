"""The one sampler: how every decoding loop (``stream_generate`` behind chat/stream_chat, and the serving
engine) turns a step's logits into the next tokens, with the invalid-score rule and the repetition penalty.

A flat module with no imports from this package: exported checkpoint folders carry it (export.CODE_FILES).
"""

import torch
import torch.nn.functional as F

# the token a row with NaN/inf scores picks, as the original's InvalidScoreLogitsProcessor does
INVALID_SCORE_TOKEN = 5


def replace_invalid_scores(scores: torch.Tensor, each_row: bool = False) -> torch.Tensor:
    """The invalid-score rule, in place on ``scores`` [batch, vocab]: where a score is NaN or inf, every score
    becomes 0 except INVALID_SCORE_TOKEN's, 5e4. The original applies it to the whole batch when any row is
    invalid; a server batching independent requests applies it to each row alone (``each_row``)."""
    # 0 * score is 0 when the score is finite and NaN otherwise: one sum per row finds both NaN and inf
    # without the boolean tensors of isfinite()
    invalid = (scores * 0).sum(dim=-1).isnan()
    if not invalid.any():
        return scores
    if not each_row:
        invalid[:] = True
    scores[invalid] = 0.0
    scores[invalid, INVALID_SCORE_TOKEN] = 5e4
    return scores


def apply_repetition_penalty(scores: torch.Tensor, ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make every token already in ``ids`` [batch, seq] less likely: its score is divided by ``penalty`` when
    positive and multiplied when negative (the CTRL rule transformers also applies)."""
    if penalty == 1.0:
        return scores
    seen = scores.gather(-1, ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(-1, ids, seen)


def sample_next_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                       top_k: torch.Tensor) -> torch.Tensor:
    """One token per row of ``logits`` [batch, vocab] (fp32), each row with its own settings [batch]:
    temperature 0 = greedy (argmax), else temperature, then top-k (0 = off), then top-p (nucleus) sampling."""
    sampled = temperature > 0
    if not sampled.any():
        return logits.argmax(dim=-1)
    every_row = bool(sampled.all())  # then neither the argmax nor the row selections are needed
    scores = logits
    if not every_row:
        scores, temperature, top_p, top_k = logits[sampled], temperature[sampled], top_p[sampled], top_k[sampled]
    vocab = logits.shape[-1]
    top_k = torch.where(top_k > 0, top_k.clamp(max=vocab), vocab)
    values, indices = (scores / temperature[:, None]).topk(int(top_k.max()), dim=-1)  # sorted, highest first
    rank = torch.arange(values.shape[-1], device=values.device)
    keep = rank < top_k[:, None]
    probs = F.softmax(values.masked_fill(~keep, float("-inf")), dim=-1)
    # nucleus: keep a token while the mass of the tokens ranked above it is below top_p (the first always)
    keep &= (probs.cumsum(dim=-1) - probs < top_p[:, None]) | (rank == 0)
    probs = probs.masked_fill(~keep, 0.0)
    chosen = indices.gather(-1, torch.multinomial(probs, num_samples=1)).squeeze(-1)
    if every_row:
        return chosen
    tokens = logits.argmax(dim=-1)
    tokens[sampled] = chosen
    return tokens

