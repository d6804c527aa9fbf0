"""The engine's running batch between steps: left-padded rows, their KV cache and sampling settings."""

import torch
import torch.nn.functional as F

from ..kv_cache import cache_capacity


class BatchKVCache:
    """Keys and values of every layer for a batch of left-padded rows, [batch, heads, seq, head_dim] each.

    The model only calls ``update`` and ``get_seq_length``; the engine adds and removes rows between steps.
    Each layer's keys/values live in a buffer with spare columns (the model's ``cache_capacity`` policy), so
    that a decoding step writes one column instead of copying the whole cache.
    """

    def __init__(self):
        self.keys: list[torch.Tensor] = []  # buffers [batch, heads, capacity, head_dim]
        self.values: list[torch.Tensor] = []
        self.lengths: list[int] = []  # columns in use, per layer

    def update(self, key, value, layer_idx, *args, **kwargs):
        if layer_idx == len(self.keys):
            self.keys.append(key)
            self.values.append(value)
            self.lengths.append(key.shape[2])
            return key, value
        start = self.lengths[layer_idx]
        end = start + key.shape[2]
        if end > self.keys[layer_idx].shape[2]:
            grown = (0, 0, 0, cache_capacity(end) - start)
            self.keys[layer_idx] = F.pad(self.keys[layer_idx][:, :, :start], grown)
            self.values[layer_idx] = F.pad(self.values[layer_idx][:, :, :start], grown)
        self.keys[layer_idx][:, :, start:end] = key
        self.values[layer_idx][:, :, start:end] = value
        self.lengths[layer_idx] = end
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def get_seq_length(self, layer_idx=0):
        return self.lengths[layer_idx] if layer_idx < len(self.lengths) else 0

    def _map(self, fn):
        """Replace every layer's keys and values with ``fn`` of the columns in use."""
        self.keys = [fn(t[:, :, :n]) for t, n in zip(self.keys, self.lengths)]
        self.values = [fn(t[:, :, :n]) for t, n in zip(self.values, self.lengths)]
        self.lengths = [t.shape[2] for t in self.keys]

    def keep_rows(self, rows: torch.Tensor):
        self._map(lambda t: t.index_select(0, rows))

    def drop_columns(self, count: int):
        """Forget the first ``count`` positions (padding in every row)."""
        self._map(lambda t: t[:, :, count:])

    def pad_left(self, count: int):
        self._map(lambda t: F.pad(t, (0, 0, count, 0)))

    def append_rows(self, other: "BatchKVCache"):
        """Add ``other``'s rows below these; both must already have the same length."""
        self._map(lambda t: t)
        other._map(lambda t: t)
        self.keys = [torch.cat(pair) for pair in zip(self.keys, other.keys)]
        self.values = [torch.cat(pair) for pair in zip(self.values, other.values)]


class RunningBatch:
    """The engine's state between steps: row i belongs to ``sequences[i]``.

    ``padding`` [batch, cached]: 1 for a real token, 0 for left padding. ``next_tokens`` [batch]: the tokens
    sampled last, to be fed in at the next step, and ``positions`` [batch, 2, 1] (or [batch, 1] without 2-D
    encoding) their GLM positions, which do not depend on the padding.
    """

    def __init__(self, sequence, cache, padding, next_tokens, positions):
        self.sequences = [sequence]
        self.cache, self.padding = cache, padding
        self.next_tokens, self.positions = next_tokens, positions
        self.settings = sampling_settings(self.sequences, padding.device)

    def __len__(self):
        return len(self.sequences)

    def merge(self, other: "RunningBatch"):
        """Add ``other``'s rows; the shorter side is left-padded to the longer one."""
        difference = self.padding.shape[1] - other.padding.shape[1]
        shorter = other if difference > 0 else self
        shorter.cache.pad_left(abs(difference))
        shorter.padding = F.pad(shorter.padding, (abs(difference), 0))
        self.cache.append_rows(other.cache)
        self.padding = torch.cat((self.padding, other.padding))
        self.positions = torch.cat((self.positions, other.positions))
        self.next_tokens = torch.cat((self.next_tokens, other.next_tokens))
        self.sequences += other.sequences
        self.settings = sampling_settings(self.sequences, self.padding.device)

    def keep(self, keep: list[bool]):
        """Keep the rows marked True, then drop the leading columns that are padding in every row."""
        rows = torch.tensor([i for i, k in enumerate(keep) if k], device=self.padding.device)
        self.sequences = [s for s, k in zip(self.sequences, keep) if k]
        self.settings = sampling_settings(self.sequences, self.padding.device)
        self.cache.keep_rows(rows)
        self.padding = self.padding.index_select(0, rows)
        self.positions = self.positions.index_select(0, rows)
        self.next_tokens = self.next_tokens.index_select(0, rows)
        unused = int(self.padding.any(dim=0).int().argmax())  # first column holding a real token
        if unused:
            self.cache.drop_columns(unused)
            self.padding = self.padding[:, unused:]


def sampling_settings(sequences: list, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sampling settings of each row (engine.Sequence): temperature, top_p, top_k, each [batch]."""
    return (torch.tensor([s.temperature for s in sequences], device=device),
            torch.tensor([s.top_p for s in sequences], device=device),
            torch.tensor([s.top_k for s in sequences], device=device))
