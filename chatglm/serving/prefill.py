"""Prefilling a joining prompt in pieces, so that the engine can decode its running batch in between."""

import torch


def prefill_in_pieces(transformer, input_ids, cache, chunk_tokens):
    """A generator that runs a prompt ``input_ids`` [1, seq] into the empty ``cache`` as the ChatGLMModel
    ``transformer`` does in its ``forward``, in pieces, so that the caller can do other work between them
    (the serving engine decodes its running batch). Each piece takes at most ``chunk_tokens`` tokens
    through one half of one layer, and the generator yields its cost in prompt tokens: a piece of n tokens
    costs n / (2 * layers). It returns the last token's final hidden state [1, 1, hidden].

    Tokens cannot simply be fed a chunk at a time through the whole model: the context before <sop>
    attends both ways, so a token's keys at one layer depend on the LATER tokens at the layer below.
    Instead every layer goes in two passes over the chunks: first the queries, keys and values of every
    chunk (the whole layer's keys must exist before any token attends), then each chunk's attention and
    MLP. The numbers are forward's, up to rounding in products of a different shape."""
    batch, seq = input_ids.shape
    hidden_states = transformer.word_embeddings(input_ids).to(transformer.final_layernorm.weight.dtype)
    prefix_length = transformer.pre_seq_len or 0
    prefix = transformer.prefix_key_values(batch, input_ids.device, hidden_states.dtype) if prefix_length else None
    mask = transformer.get_attention_mask(input_ids, 0, None, prefix_length)  # [1, 1, seq, keys] or None
    position_ids = transformer.get_position_ids(input_ids)
    chunks = [slice(start, min(start + chunk_tokens, seq)) for start in range(0, seq, chunk_tokens)]
    # rotary tables per chunk: the C rotary kernel reads them as contiguous [batch, chunk, head_dim]
    rotaries = [transformer.rotary_tables(position_ids[..., chunk], hidden_states.dtype) for chunk in chunks]
    piece_cost = 1 / (2 * len(transformer.layers))
    for i, layer in enumerate(transformer.layers):
        normed, queries, keys, values = [], [], [], []
        for chunk, rotary in zip(chunks, rotaries):
            normed.append(layer.input_layernorm(hidden_states[:, chunk]))
            q, k, v = layer.attention.project(normed[-1], rotary)
            queries.append(q)
            keys.append(k)
            values.append(v)
            yield (chunk.stop - chunk.start) * piece_cost
        k, v = cache.update(torch.cat(keys, dim=2), torch.cat(values, dim=2), i)
        if prefix is not None:
            k, v = torch.cat((prefix[2 * i], k), dim=2), torch.cat((prefix[2 * i + 1], v), dim=2)
        outputs = []
        for chunk, chunk_normed, q in zip(chunks, normed, queries):
            chunk_mask = mask[:, :, chunk] if mask is not None else None
            attention_output, _ = layer.attention.attend_keys(q, k, v, chunk_mask)
            outputs.append(layer.after_attention(chunk_normed, attention_output))
            yield (chunk.stop - chunk.start) * piece_cost
        hidden_states = torch.cat(outputs, dim=1)
    return transformer.final_layernorm(hidden_states[:, -1:])
