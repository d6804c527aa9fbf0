"""Our implementation against golden outputs of the original ChatGLM-6B code (tests/goldens)."""

import json
import math

import pytest
import torch
from conftest import GOLDENS_DIR
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

import chatglm  # noqa: F401  (registers the model type with the Auto classes)
from chatglm.generation import InvalidScoreLogitsProcessor, build_prompt, process_response

PROMPTS = ["你好", "晚上睡不着应该怎么办？", "Write a Python function:\ndef add(a, b):\n    return"]
ATOL = 2e-3


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(GOLDENS_DIR / "tokenizer"))


@pytest.fixture(scope="module")
def tok_golden():
    return json.loads((GOLDENS_DIR / "tokenizer_golden.json").read_text())


def load_reference(name):
    """(name, model, golden.json, golden tensors) of one golden model folder."""
    folder = GOLDENS_DIR / name
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    golden = json.loads((folder / "golden.json").read_text())
    tensors = load_file(str(folder / "golden_tensors.safetensors"))
    return name, model, golden, tensors


@pytest.fixture(scope="module", params=["model_A", "model_B"])
def reference(request):
    return load_reference(request.param)


# --- tokenizer ---------------------------------------------------------------------------------------


def test_tokenizer_layout(tokenizer, tok_golden):
    assert tokenizer.vocab_size == len(tokenizer) == len(tokenizer.get_vocab()) == tok_golden["vocab_size"]
    assert tokenizer.all_special_tokens == tok_golden["all_special_tokens"]
    assert tokenizer.all_special_ids == tok_golden["all_special_ids"]
    for name, info in tok_golden["special_token_ids"].items():
        if name.endswith("_id"):
            assert getattr(tokenizer, name) == info, name
    for piece, index in tok_golden["piece_ids"].items():
        assert tokenizer.convert_tokens_to_ids(piece) == index


@pytest.mark.parametrize("index", range(35))
def test_tokenizer_strings(tokenizer, tok_golden, index):
    case = tok_golden["strings"][index]
    encoded = tokenizer(case["text"])
    assert sorted(encoded.keys()) == case["call_keys"]
    ids = encoded["input_ids"]
    assert ids == case["input_ids"]
    assert tokenizer.tokenize(case["text"]) == case["tokens"]
    assert tokenizer.convert_ids_to_tokens(ids) == case["convert_ids_to_tokens"]
    assert tokenizer.decode(ids) == case["decode"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == case["decode_skip_special"]
    assert tokenizer.decode(ids, clean_up_tokenization_spaces=False) == case["decode_no_cleanup"]


def test_tokenizer_padding(tokenizer, tok_golden):
    for case in tok_golden["single_padding_true"]:
        encoded = tokenizer(case["text"], padding=True)
        assert encoded["input_ids"] == case["input_ids"]
        assert encoded["position_ids"] == case["position_ids"]
        assert encoded["attention_mask"] == [1] * len(case["input_ids"])
    for key, kwargs in [("batch", {"padding": True}), ("batch_with_MASK", {"padding": True}),
                        ("batch_max_length_24", {"padding": "max_length", "max_length": 24}),
                        ("batch_pad_to_multiple_of_8", {"padding": True, "pad_to_multiple_of": 8})]:
        prompts = tok_golden[key].get("prompts", tok_golden["batch"]["prompts"])
        encoded = tokenizer(prompts, **kwargs)
        assert encoded["input_ids"] == tok_golden[key]["input_ids"], key
        assert encoded["position_ids"] == tok_golden[key]["position_ids"], key
        assert encoded["attention_mask"] == [[int(i != 3) for i in row] for row in encoded["input_ids"]]


def test_tokenizer_pair_truncation_and_decoding(tokenizer, tok_golden):
    pair = tok_golden["pair"]
    assert tokenizer(pair["text"], pair["text_pair"])["input_ids"] == pair["input_ids"]
    assert tokenizer.build_inputs_with_special_tokens([10, 11], [12, 13]) == pair["build_inputs_with_special_tokens"]
    for case in tok_golden["encode_add_special_tokens_false"]:
        assert tokenizer.encode(case["text"], add_special_tokens=False) == case["ids"]
    trunc = tok_golden["truncation"]
    assert tokenizer(trunc["text"], truncation=True, max_length=trunc["max_length"])["input_ids"] == trunc["input_ids"]
    for case in tok_golden["decode_id_lists"]:
        assert tokenizer.decode(case["ids"]) == case["decode"]
        assert tokenizer.decode(case["ids"], skip_special_tokens=True) == case["decode_skip_special"]
    with pytest.raises(IndexError, match="out of range"):
        tokenizer.decode(tok_golden["decode_out_of_range"]["ids"])
    assert tokenizer.convert_tokens_to_ids(list(tok_golden["convert_tokens_to_ids"])) == list(
        tok_golden["convert_tokens_to_ids"].values())
    ids = [int(i) for i in tok_golden["convert_ids_to_tokens"]]
    assert tokenizer.convert_ids_to_tokens(ids) == list(tok_golden["convert_ids_to_tokens"].values())


def test_chat_prompts(tokenizer, tok_golden):
    for case in tok_golden["chat_prompts"]:
        prompt = build_prompt(case["query"], case["history"])
        assert prompt == case["prompt"]
        assert tokenizer(prompt)["input_ids"] == case["prompt_input_ids"]


def test_process_response_and_invalid_scores(reference, tok_golden):
    model = reference[1]
    for case in tok_golden["process_response"]:
        assert process_response(case["in"]) == case["out"]
        assert model.process_response(case["in"]) == case["out"]  # the original's method, which scripts call
    for case in tok_golden["invalid_score_logits_processor"]:
        scores = torch.tensor([[float(x) for x in row] for row in case["in"]])
        out = InvalidScoreLogitsProcessor()(torch.zeros(1, 1, dtype=torch.long), scores)
        assert out.tolist() == case["out"]


# --- model -------------------------------------------------------------------------------------------


def _batch(tokenizer, golden):
    inputs = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    assert inputs["input_ids"].tolist() == golden["batch_inputs"]["input_ids"]
    assert inputs["position_ids"].tolist() == golden["batch_inputs"]["position_ids"]
    return inputs


def test_batch_logits_hidden_states_attentions(reference, tokenizer):
    name, model, golden, tensors = reference
    inputs = _batch(tokenizer, golden)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        fast = model(**inputs)
        eager = model(**inputs, output_hidden_states=True, output_attentions=True)
    for out in (fast, eager):
        assert (out.logits - tensors["batch_logits"])[real].abs().max() < ATOL
    for i, hidden in enumerate(eager.hidden_states):
        expected = tensors[f"batch_hidden_states_{i}"].transpose(0, 1)  # golden is [seq, batch, hidden]
        assert (hidden - expected)[real].abs().max() < ATOL, i
    batch, heads = real.shape[0], model.config.num_attention_heads
    for i, probs in enumerate(eager.attentions):
        expected = tensors[f"batch_attention_probs_{i}"].view(batch, heads, *probs.shape[-2:])
        assert (probs - expected).abs()[real[:, None, :, None].expand_as(probs)].max() < 1e-4, i


def test_original_four_dimensional_mask_is_accepted(reference, tokenizer):
    name, model, golden, tensors = reference
    inputs = _batch(tokenizer, golden)
    blocked = torch.tensor(golden["batch_inputs"]["attention_mask"])  # the original tokenizer's [batch, 1, seq, seq]
    with torch.no_grad():
        logits = model(inputs["input_ids"], position_ids=inputs["position_ids"], attention_mask=blocked).logits
    real = inputs["attention_mask"].bool()
    assert (logits - tensors["batch_logits"])[real].abs().max() < ATOL


def test_cache_contents(reference, tokenizer):
    name, model, golden, tensors = reference
    inputs = _batch(tokenizer, golden)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        cache = model(**inputs, use_cache=True).cache
    prefix = model.config.pre_seq_len or 0
    for i in range(model.config.num_layers):
        layer = cache.layers[i]
        for ours, key in ((layer.keys, "key"), (layer.values, "value")):
            expected = tensors[f"batch_present_{key}_{i}"][prefix:].permute(1, 2, 0, 3)  # -> [batch, heads, seq, d]
            assert (ours - expected)[real[:, None, :, None].expand_as(ours)].abs().max() < ATOL


def test_last_logits_without_padding_information(reference, tokenizer):
    name, model, golden, tensors = reference
    inputs = _batch(tokenizer, golden)
    with torch.no_grad():
        ids_only = model(inputs["input_ids"]).logits[:, -1]
    assert (ids_only - tensors["batch_logits_ids_only_last"]).abs().max() < ATOL
    for k, prompt in enumerate(PROMPTS):
        with torch.no_grad():
            logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1]
        assert (logits - tensors[f"single_{k}_last_logits"]).abs().max() < ATOL


def test_mask_token_preference():
    """[MASK] in a prompt takes precedence over [gMASK] (only model_A has these goldens)."""
    name, model, golden, tensors = load_reference("model_A")
    case = golden["model_position_ids_for_batch_with_MASK"]
    ids = torch.tensor(case["input_ids"])
    assert model.transformer.get_position_ids(ids).tolist() == case["model_get_position_ids"]
    with torch.no_grad():
        given = model(ids, position_ids=torch.tensor(case["tokenizer_position_ids"]),
                      attention_mask=(ids != 3).long()).logits[:, -1]
        own = model(ids).logits[:, -1]
    assert (given - tensors["batch_with_MASK_logits_last_tokenizer_inputs"]).abs().max() < ATOL
    assert (own - tensors["batch_with_MASK_logits_last_ids_only"]).abs().max() < ATOL


@pytest.mark.slow
def test_generate_greedy_and_beam(reference, tokenizer):
    name, model, golden, tensors = reference
    for case in golden["single_prompts"]:
        ids = torch.tensor(case["input_ids"])
        for key in ("greedy_max_length_40", "beam2_max_length_30"):
            assert model.generate(ids, **case[key]["kwargs"]).tolist() == case[key]["sequences"], (case["prompt"], key)
    inputs = _batch(tokenizer, golden)
    for key in ("batch_greedy_max_length_40", "batch_beam2_max_length_30"):
        assert model.generate(**inputs, **golden[key]["kwargs"]).tolist() == golden[key]["sequences"], key
        assert tokenizer.batch_decode(golden[key]["new_tokens"], skip_special_tokens=True) == \
            golden[key]["decoded_new_skip_special"]


def test_cached_steps(reference, tokenizer):
    """Five cached decoding steps give the original's per-step logits, for one prompt and the padded batch."""
    name, model, golden, tensors = reference
    for key, inputs in (("single_prompt_1", tokenizer(PROMPTS[1], return_tensors="pt")),
                        ("padded_batch", _batch(tokenizer, golden))):
        steps = golden["kv_cache_steps"][key]["steps"]
        ids, mask = inputs["input_ids"], inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
        positions = inputs.get("position_ids", model.transformer.get_position_ids(ids))
        cache, step_ids = None, ids
        for n, step in enumerate(steps):
            assert step_ids.tolist() == step["input_ids"]
            assert positions.tolist() == step["position_ids"]
            with torch.no_grad():
                out = model(step_ids, position_ids=positions, attention_mask=mask, cache=cache, use_cache=True)
            expected = tensors[f"cache_steps_{key}_logits"][n]
            assert (out.logits[:, -1] - expected).abs().max() < ATOL
            step_ids = out.logits[:, -1].argmax(-1, keepdim=True)
            assert step_ids[:, 0].tolist() == step["next_token"]
            mask = torch.cat((mask, torch.ones_like(step_ids)), dim=1)
            ids = torch.cat((ids, step_ids), dim=1)
            cache, positions = out.cache, model.transformer.get_position_ids(ids, mask, past_length=ids.shape[1] - 1)


@pytest.mark.slow
def test_chat_and_stream_chat(reference, tokenizer):
    name, model, golden, tensors = reference
    chat = golden["chat"]
    response, history = model.chat(tokenizer, "你好", history=[], do_sample=False, max_length=64)
    assert response == chat["round1"]["response"]
    assert [list(h) for h in history] == chat["round1"]["history"]
    round2 = chat["round2_max_length_256"]
    response, history = model.chat(tokenizer, round2["query"], history=history, do_sample=False, max_length=256)
    assert response == round2["response"]
    assert [list(h) for h in history] == round2["history"]

    streamed = [r for r, _ in model.stream_chat(tokenizer, "你好", history=[], do_sample=False, max_length=64)]
    # The original never yields its last step; ours yields it too.
    assert streamed[:-1] == chat["stream_chat_round1"]["responses"]
    assert streamed[-1] == chat["round1"]["response"]


@pytest.mark.slow
def test_chat_drops_oldest_rounds_when_history_does_not_fit(reference, tokenizer):
    name, model, golden, tensors = reference
    round2 = golden["chat"]["round2_max_length_64"]
    history = [tuple(h) for h in round2["history_in"]]
    response, new_history = model.chat(tokenizer, round2["query"], history=history, do_sample=False, max_length=64)
    alone, _ = model.chat(tokenizer, round2["query"], history=[], do_sample=False, max_length=64)
    assert response == alone  # the only past round did not fit, so it was left out of the prompt
    assert new_history == history + [(round2["query"], response)]
    with pytest.raises(ValueError, match="max_length"):
        model.chat(tokenizer, "很长的问题" * 50, history=[], max_length=16)


def test_loss_and_model_side_masks(reference, tokenizer):
    name, model, golden, tensors = reference
    train = golden["train_style_right_padded_batch"]
    with torch.no_grad():
        out = model(torch.tensor(train["input_ids"]), labels=torch.tensor(train["labels"]))
    assert math.isclose(out.loss.item(), train["loss"], abs_tol=1e-3)
    assert out.logits.argmax(-1).tolist() == train["logits_argmax"]
    # golden["loss_with_labels"] is left out: it puts labels on tokens predicted from padding rows, whose
    # outputs are an implementation detail (the original attends uniformly there).
    ids = torch.tensor(golden["batch_inputs"]["input_ids"])
    assert model.transformer.get_position_ids(ids).tolist() == golden["model_get_position_ids_for_batch"]
    blocked = ~model.transformer.get_attention_mask(ids, 0, None, 0)[:, 0]
    expected = torch.tensor(golden["model_get_masks_for_batch"])[:, 0]
    assert blocked.tolist() == expected.tolist()


def test_forward_errors_name_the_missing_token(reference):
    name, model, golden, tensors = reference
    errors = golden.get("forward_errors") or json.loads((GOLDENS_DIR / "model_A/golden.json").read_text())[
        "forward_errors"]
    with pytest.raises(ValueError, match="<sop>"):
        model(torch.tensor(errors["no_sop"]["input_ids"]))
    with pytest.raises(ValueError, match="MASK"):
        model(torch.tensor(errors["no_mask"]["input_ids"]))


def test_goldens_hold_in_reduced_precision(reference, tokenizer):
    """bf16 and fp16 runs stay close to fp32 and agree on the next token of every prompt."""
    name, model, golden, tensors = reference
    inputs = _batch(tokenizer, golden)
    reference_last = tensors["batch_logits"][:, -1]
    for dtype in (torch.bfloat16, torch.float16):
        low = AutoModel.from_pretrained(str(GOLDENS_DIR / name), dtype=dtype).eval()
        with torch.no_grad():
            logits = low(**inputs).logits[:, -1].float()
        assert logits.argmax(-1).tolist() == reference_last.argmax(-1).tolist(), dtype
