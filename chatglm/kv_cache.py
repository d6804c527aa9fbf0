"""The KV cache: the buffer growth policy shared by the model's cache and the serving engine's batches,
and the model's default cache, whose layers grow in place."""

from transformers.cache_utils import Cache, DynamicLayer

# Positions added at a time when a cache layer runs out of room.
CACHE_CHUNK = 256


def cache_capacity(length):
    """The KV-buffer growth policy of every cache here (this model's and the serving engine's batches): room
    for ``length`` positions and the rest of its CACHE_CHUNK, so that a buffer is copied once per chunk."""
    return (length // CACHE_CHUNK + 1) * CACHE_CHUNK


class GrowingLayer(DynamicLayer):
    """One layer's keys and values [batch, heads, seq, head_dim], kept at the front of a buffer with room
    to grow. A new token is written into the buffer, where DynamicLayer's torch.cat would copy the whole
    cache at every step (a cost that grows with the context); the buffer grows CACHE_CHUNK positions at a
    time. `keys`/`values` are views of the buffer, so DynamicLayer's crop and batch methods still work:
    a method that replaces them with new tensors makes the next update copy them into a new buffer."""

    def lazy_initialization(self, key_states, value_states):
        super().lazy_initialization(key_states, value_states)
        self.key_buffer = self.value_buffer = None

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        new_length = length + key_states.shape[-2]
        if not self._holds_cache(key_states) or new_length > self.key_buffer.shape[-2]:
            self._reallocate(key_states, value_states, length, new_length)
        self.key_buffer[:, :, length:new_length] = key_states
        self.value_buffer[:, :, length:new_length] = value_states
        self.keys, self.values = self.key_buffer[:, :, :new_length], self.value_buffer[:, :, :new_length]
        return self.keys, self.values

    def reorder_cache(self, beam_idx):
        """Beam search: reorder the batch in place, inside the buffer."""
        if self.get_seq_length() > 0:
            self.keys.copy_(self.keys.index_select(0, beam_idx.to(self.keys.device)))
            self.values.copy_(self.values.index_select(0, beam_idx.to(self.values.device)))

    def _holds_cache(self, key_states):
        """Whether `keys` still lies at the front of the buffer (and the new states fit its layout)."""
        buffer = self.key_buffer
        return (buffer is not None and self.keys.data_ptr() == buffer.data_ptr() and buffer.dtype == key_states.dtype
                and buffer.shape[:2] == key_states.shape[:2] and buffer.shape[-1] == key_states.shape[-1])

    def _reallocate(self, key_states, value_states, length, new_length):
        capacity = cache_capacity(new_length)
        batch, heads, _, head_dim = key_states.shape
        self.key_buffer = key_states.new_empty(batch, heads, capacity, head_dim)
        self.value_buffer = value_states.new_empty(batch, heads, capacity, value_states.shape[-1])
        if length:
            self.key_buffer[:, :, :length] = self.keys
            self.value_buffer[:, :, :length] = self.values


class KVCache(Cache):
    """The model's default KV cache: a DynamicCache whose layers grow in place (see GrowingLayer).
    The model accepts any cache object with `update(key, value, layer_idx)` and `get_seq_length()`."""

    def __init__(self):
        super().__init__(layer_class_to_replicate=GrowingLayer)
