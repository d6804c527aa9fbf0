"""The model's default KV cache (KVCache, growing in place): the same numbers as transformers' DynamicCache
and as an uncached pass, in generate() (greedy, sampling, beam search) and step by step across growths."""

import pytest
import torch
from transformers import AutoModel, AutoTokenizer
from transformers.cache_utils import DynamicCache

import chatglm.kv_cache as kv_cache
from chatglm.kv_cache import KVCache
from chatglm.serving.prefill import prefill_in_pieces


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return AutoModel.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    return AutoTokenizer.from_pretrained(tiny_checkpoint)


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(kv_cache, "CACHE_CHUNK", 4)  # grow often


def decode_steps(model, ids, cache, steps):
    """(prompt + `steps` greedy tokens, the logits after the prompt and after each of those tokens), decoding
    one token at a time with `cache`."""
    with torch.no_grad():
        logits = [model(ids, cache=cache, use_cache=True).logits[:, -1]]
        for _ in range(steps):
            ids = torch.cat((ids, logits[-1].argmax(-1, keepdim=True)), dim=1)
            positions = model.transformer.get_position_ids(ids, None, ids.shape[1] - 1)
            logits.append(model(ids[:, -1:], position_ids=positions, cache=cache, use_cache=True).logits[:, -1])
    return ids, torch.stack(logits, dim=1)


def test_steps_match_dynamic_cache_and_an_uncached_pass(model, tokenizer, small_chunks):
    ids = torch.tensor([tokenizer.encode("晚上睡不着应该怎么办")])
    cache = KVCache()
    sequence, logits = decode_steps(model, ids, cache, steps=12)
    _, expected = decode_steps(model, ids, DynamicCache(), steps=12)
    assert torch.equal(logits, expected)
    assert cache.get_seq_length() == sequence.shape[1]
    layer = cache.layers[0]
    assert layer.keys.data_ptr() == layer.key_buffer.data_ptr()  # the keys are the front of the buffer
    with torch.no_grad():
        uncached = model(sequence).logits[:, ids.shape[1] - 1 :]
    assert torch.allclose(logits, uncached, atol=1e-5)


def test_generate_uses_the_growing_cache(model, tokenizer):
    inputs = tokenizer(["你好"], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    assert isinstance(out.cache, KVCache)
    explicit = model.generate(**inputs, max_new_tokens=6, do_sample=False, cache=DynamicCache())
    assert torch.equal(out.sequences, explicit)


@pytest.mark.parametrize("options", [
    {"do_sample": False, "num_beams": 3, "num_return_sequences": 2},
    {"do_sample": True, "top_p": 0.7, "temperature": 0.95, "num_return_sequences": 2},
])
def test_batched_generation_matches_dynamic_cache(model, tokenizer, small_chunks, options):
    """Left-padded batch; beam search reorders the cache in place at every step."""
    inputs = tokenizer(["你好", "晚上睡不着应该怎么办"], padding=True, return_tensors="pt")
    outputs = []
    for cache in (None, DynamicCache()):
        torch.manual_seed(0)
        outputs.append(model.generate(**inputs, max_new_tokens=10, cache=cache, **options))
    assert torch.equal(*outputs)


def test_crop_and_batch_selection_keep_working(model, small_chunks):
    """DynamicLayer's own crop and batch methods act on the buffer views; decoding goes on from there."""
    gmask, sop = model.config.gmask_token_id, model.config.bos_token_id
    ids = torch.tensor([[5, 6, 7, gmask, sop], [8, 9, 10, gmask, sop]])
    cache = KVCache()
    sequence, logits = decode_steps(model, ids, cache, steps=6)  # caches tokens 0..10
    cache.crop(-3)  # keeps tokens 0..7
    cache.batch_select_indices(torch.tensor([1]))
    with torch.no_grad():
        positions = model.transformer.get_position_ids(sequence[1:, :9], None, 8)
        resumed = model(sequence[1:, 8:9], position_ids=positions, cache=cache, use_cache=True).logits[:, -1]
    assert cache.get_seq_length() == 9
    assert torch.allclose(resumed, logits[1:, 8 - 4], atol=1e-5)  # logits[:, k] follow token 4 + k


@pytest.mark.parametrize("chunk_tokens", [1, 3, 100])
def test_prefill_in_pieces_gives_forwards_cache_and_last_hidden_state(model, tokenizer, chunk_tokens):
    """The serving engine's chunked prefill: the context before <sop> attends both ways, so the pieces must
    still give every token the whole context (a chunk-by-chunk causal pass would not)."""
    ids = torch.tensor([tokenizer.encode("晚上睡不着应该怎么办")])
    with torch.no_grad():
        cache, pieces_cache = KVCache(), KVCache()
        expected = model.transformer(ids, cache=cache, use_cache=True).last_hidden_state[:, -1:]
        pieces = prefill_in_pieces(model.transformer, ids, pieces_cache, chunk_tokens)
        costs = []
        while True:
            try:
                costs.append(next(pieces))
            except StopIteration as end:
                hidden = end.value
                break
    assert sum(costs) == pytest.approx(ids.shape[1])
    assert len(costs) == 2 * model.config.num_layers * -(-ids.shape[1] // chunk_tokens)
    assert torch.allclose(hidden, expected, atol=1e-5)
    for layer, pieces_layer in zip(cache.layers, pieces_cache.layers):
        assert torch.allclose(layer.keys, pieces_layer.keys, atol=1e-5)
        assert torch.allclose(layer.values, pieces_layer.values, atol=1e-5)
