"""GLM positions against the original's rules, written out here independently of chatglm/positions.py:
1-D rotary models (position_encoding_2d=False) in a mixed [MASK]/[gMASK] batch, through the forward pass,
cached and uncached generation and stream_generate (and the positions it moves on step by step); and the
private generate() hooks we still rely on.
(2-D positions are checked against the original's recorded outputs in test_reference_goldens.py.)"""

import pytest
import torch
from conftest import GMASK, GOLDENS_DIR, MASK, PAD, SOP, tiny_config

import chatglm


@pytest.fixture(scope="module")
def tokenizer():
    return chatglm.ChatGLMTokenizer.from_pretrained(str(GOLDENS_DIR / "tokenizer"))


def random_model(tokenizer, **overrides):
    config = tiny_config(vocab_size=tokenizer.vocab_size, max_sequence_length=256, **overrides)
    torch.manual_seed(0)
    model = chatglm.ChatGLMForConditionalGeneration(config).eval()
    with torch.no_grad():  # weights large enough for positions to move the logits clearly
        for name, param in model.named_parameters():
            if "layernorm" not in name:
                param.normal_(0, 0.4 if param.dim() > 1 else 0.1)
    return model


@pytest.fixture(scope="module")
def flat_model(tokenizer):
    return random_model(tokenizer, position_encoding_2d=False)


@pytest.fixture(scope="module")
def mixed_batch(tokenizer):
    """Three prompts of one length: [MASK] only, [gMASK] only, and both (the model then uses [gMASK])."""
    text = tokenizer.encode("Write a Python function that adds two numbers", add_special_tokens=False)[:6]
    rows = [text[:3] + [MASK] + text[3:5] + [SOP],
            text[:5] + [GMASK, SOP],
            text[:2] + [MASK] + text[2:4] + [GMASK, SOP]]
    assert len({len(row) for row in rows}) == 1
    return torch.tensor(rows)


def original_prompt_positions(row):
    """The original's 1-D prompt positions: 0, 1, 2, ...; a [MASK] row holds the mask position from <sop> on,
    a [gMASK] row keeps counting."""
    positions = list(range(len(row)))
    if GMASK not in row:
        context = row.index(SOP)
        positions[context:] = [row.index(MASK)] * (len(row) - context)
    return positions


def original_decode_position(row):
    """The original's 1-D position for every token decoded with a cache: the mask position."""
    return row.index(GMASK if GMASK in row else MASK)


def greedy_reference(model, ids, new_tokens, use_cache):
    """Greedy decoding step by step with the original's positions given explicitly."""
    rows = ids.tolist()
    prompt_positions = torch.tensor([original_prompt_positions(row) for row in rows])
    decode_positions = torch.tensor([[original_decode_position(row)] for row in rows])
    with torch.no_grad():
        out = model(ids, position_ids=prompt_positions, use_cache=use_cache)
        for _ in range(new_tokens):
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat((ids, token), dim=1)
            if use_cache:
                out = model(token, position_ids=decode_positions, cache=out.cache, use_cache=True)
            else:  # without a cache the original recomputes the prompt rule over the whole sequence
                positions = torch.tensor([original_prompt_positions(row) for row in ids.tolist()])
                out = model(ids, position_ids=positions, use_cache=False)
    return ids


def test_one_dimensional_prompt_positions_follow_the_mask_token_per_row(flat_model, mixed_batch):
    expected = [original_prompt_positions(row) for row in mixed_batch.tolist()]
    assert expected[1] == list(range(mixed_batch.shape[1]))  # the [gMASK] rows keep counting
    assert flat_model.transformer.get_position_ids(mixed_batch).tolist() == expected
    with torch.no_grad():
        own = flat_model(mixed_batch).logits
        given = flat_model(mixed_batch, position_ids=torch.tensor(expected)).logits
        # the 2-D rule (mask position from <sop> on, in every row) gives other numbers for the [gMASK] rows
        held = torch.tensor(expected)
        held[:, -1] = torch.tensor([original_decode_position(row) for row in mixed_batch.tolist()])
        other = flat_model(mixed_batch, position_ids=held).logits
    assert torch.allclose(own, given, atol=1e-5)
    assert torch.allclose(other[0, -1], own[0, -1], atol=1e-5)  # the [MASK] row holds the mask position anyway
    assert (other[1:, -1] - own[1:, -1]).abs().max() > 1e-2


@pytest.mark.parametrize("use_cache", [True, False])
def test_one_dimensional_generation_matches_the_original_rule(flat_model, mixed_batch, use_cache):
    expected = greedy_reference(flat_model, mixed_batch, 6, use_cache)
    got = flat_model.generate(mixed_batch, max_new_tokens=6, do_sample=False, use_cache=use_cache,
                              eos_token_id=None)
    assert got.tolist() == expected.tolist()


def test_one_dimensional_stream_generate_matches_generate(flat_model, mixed_batch):
    expected = greedy_reference(flat_model, mixed_batch, 6, use_cache=True)
    *_, last = flat_model.stream_generate(mixed_batch, max_length=mixed_batch.shape[1] + 6, do_sample=False,
                                          eos_token_id=-1)
    assert last.tolist() == expected.tolist()


def test_cached_decoding_positions(flat_model, tokenizer, mixed_batch):
    """The position of a token decoded after a cache: the mask position; in 2-D with the block position
    counting on from the prompt's last one."""
    grown = torch.cat((mixed_batch, torch.full((3, 2), 5)), dim=1)
    length = grown.shape[1]
    decode = [[original_decode_position(row)] for row in mixed_batch.tolist()]
    assert flat_model.transformer.get_position_ids(grown, past_length=length - 1).tolist() == decode
    two_d = random_model(tokenizer).transformer
    context = [row.index(SOP) for row in mixed_batch.tolist()]
    expected = [[[mask], [length - 1 - ctx + 1]] for [mask], ctx in zip(decode, context)]
    assert two_d.get_position_ids(grown, past_length=length - 1).tolist() == expected


@pytest.mark.parametrize("two_d", [False, True])
def test_next_position_ids_follow_the_decoded_tokens(tokenizer, mixed_batch, two_d):
    """stream_generate moves each decoded token's positions on with next_position_ids instead of reading the
    whole sequence again: the same positions, step after step, with left padding in the batch too."""
    transformer = random_model(tokenizer, position_encoding_2d=two_d).transformer
    ids = torch.cat((torch.full((3, 2), PAD), mixed_batch), dim=1)
    padding = (ids != PAD).long()
    padding[1, :2] = 1  # one row without padding: its two PAD ids are context
    positions = transformer.get_position_ids(ids, padding, ids.shape[1] - 1)
    for token in range(5):
        ids = torch.cat((ids, torch.full((3, 1), 20 + token)), dim=1)
        padding = torch.cat((padding, torch.ones(3, 1, dtype=torch.long)), dim=1)
        positions = transformer.next_position_ids(positions)
        assert torch.equal(positions, transformer.get_position_ids(ids, padding, ids.shape[1] - 1))


def test_two_dimensional_generation_moves_positions_on_as_the_ids_give_them(tokenizer):
    """generate() moves a 2-D model's positions on after each token without reading the ids again: the same
    greedy tokens as decoding step by step with every step's positions read from the whole sequence, in a
    left-padded batch."""
    model = random_model(tokenizer)
    batch = tokenizer(["你好", "晚上睡不着应该怎么办"], padding=True, return_tensors="pt")
    ids, padding = batch["input_ids"], batch["attention_mask"]
    got = model.generate(ids, attention_mask=padding, max_new_tokens=6, do_sample=False, eos_token_id=None)
    with torch.no_grad():
        out = model(ids, attention_mask=padding, use_cache=True)
        for _ in range(6):
            ids = torch.cat((ids, out.logits[:, -1].argmax(dim=-1, keepdim=True)), dim=1)
            padding = torch.cat((padding, torch.ones(2, 1, dtype=padding.dtype)), dim=1)
            positions = model.transformer.get_position_ids(ids, padding, ids.shape[1] - 1)
            out = model(ids[:, -1:], position_ids=positions, attention_mask=padding, cache=out.cache, use_cache=True)
    assert got.tolist() == ids.tolist()


def spy_on(monkeypatch, model, names):
    calls = []
    for name in names:
        method = getattr(model, name)

        def spy(*args, _method=method, _name=name, **kwargs):
            calls.append(_name)
            return _method(*args, **kwargs)

        monkeypatch.setattr(model, name, spy)
    return calls


def test_transformers_still_calls_our_private_generation_hooks(tokenizer, monkeypatch):
    """generate() must build the prompt's GLM positions with _prepare_position_ids_for_generation, expand
    given [batch, 2, seq] positions for beams with _expand_inputs_for_generation and move them on after each
    token with _update_model_kwargs_for_generation; if a transformers release stops calling one, the overrides
    in modeling_chatglm.py are dead and positions go wrong."""
    model = random_model(tokenizer)
    hooks = ("_prepare_position_ids_for_generation", "_expand_inputs_for_generation",
             "_update_model_kwargs_for_generation")
    calls = spy_on(monkeypatch, model, hooks)
    ids = torch.tensor([tokenizer.encode("你好")])
    model.generate(ids, max_new_tokens=2, do_sample=False, num_beams=2)
    assert set(calls) == set(hooks)


def test_position_ids_of_the_wrong_kind_are_refused(flat_model, tokenizer):
    batch = tokenizer(["你好", "晚上睡不着应该怎么办"], padding=True, return_tensors="pt")
    assert batch["position_ids"].dim() == 3  # the tokenizer's are 2-D, as the original's
    with pytest.raises(ValueError, match=r"takes \[batch, seq\] \(1-D positions"):
        flat_model(**batch)
    expected = greedy_reference(flat_model, batch["input_ids"][1:], 3, use_cache=True)
    without = {key: value for key, value in batch.items() if key != "position_ids"}
    got = flat_model.generate(**without, max_new_tokens=3, do_sample=False, eos_token_id=None)
    assert got[1].tolist() == expected[0].tolist()  # the unpadded row, positions built by the model
