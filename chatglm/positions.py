"""GLM position ids, written once: the tokenizer, the model and generation all build them here.

A ChatGLM prompt is a context followed by `[gMASK] <sop>` (or `[MASK] ... <sop>`); the answer is generated
after `<sop>`. Each token has two positions (2-D rotary):
    absolute: 0, 1, ... over the context (the tokens before `<sop>`), then the mask token's position for
              `<sop>` and every token after it;
    block:    0 over the context, then 1, 2, ... from `<sop>` on.
A 1-D model (``position_encoding_2d=False``) uses the absolute row only. There, as in the original, a prompt
whose mask token is `[gMASK]` keeps counting 0, 1, 2, ... past the context (decided per row), while tokens
decoded with a cache take the mask position whatever the mask token.
Left padding (known from a padding mask) gets position 0 and does not count.
"""

import torch


def glm_position_ids(seq_length, context_lengths, mask_positions, *, counting=None, pads=None, start=0, two_d=True):
    """Positions of the tokens ``start .. seq_length - 1`` of a batch: [batch, 2, seq_length - start], or
    [batch, seq_length - start] when not ``two_d``.

    context_lengths: [batch] index of `<sop>` (tokens from there on are past the context)
    mask_positions:  [batch] index of the mask token
    counting:        [batch] bool, rows whose absolute positions keep counting past the context
    pads:            [batch] number of left padding tokens
    """
    index = torch.arange(start, seq_length, device=context_lengths.device)[None, :]  # [1, seq]
    if pads is None:
        pads = torch.zeros_like(context_lengths)
    past_context = index >= context_lengths[:, None]  # [batch, seq]
    holds_mask_position = past_context if counting is None else past_context & ~counting[:, None]
    absolute = torch.where(holds_mask_position, (mask_positions - pads)[:, None], (index - pads[:, None]).clamp(min=0))
    if not two_d:
        return absolute
    block = torch.where(past_context, index - context_lengths[:, None] + 1, 0)
    return torch.stack((absolute, block), dim=1)  # [batch, 2, seq]
