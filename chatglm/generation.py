"""Chat on top of ``generate``: the prompt format, the answer clean-up, and ``chat`` / ``stream_chat`` /
``stream_generate``, which the model class exposes as its methods (``model.chat(tokenizer, ...)``)."""

import copy
import re

import torch
from transformers.generation.logits_process import LogitsProcessor, LogitsProcessorList

from .sampling import apply_repetition_penalty, replace_invalid_scores, sample_next_tokens

# the original's generation settings for chat, used by every front door too
DEFAULT_MAX_LENGTH = 2048
DEFAULT_TOP_P = 0.7
DEFAULT_TEMPERATURE = 0.95


class InvalidScoreLogitsProcessor(LogitsProcessor):
    """If any score is NaN or inf, replace all scores so that token 5 is chosen (as the original)."""

    def __call__(self, input_ids, scores):
        return replace_invalid_scores(scores)


# a date placeholder the original model writes; process_response fills it in
TRAINING_DATE = "[[训练时间]]"
# a half-width mark with a CJK character right before or after it becomes full-width
_FULL_WIDTH = {",": "，", "!": "！", ":": "：", ";": "；", "?": "？"}
_MARK_BESIDE_CJK = re.compile(r"(?<=[\u4e00-\u9fff])[,!:;?]|[,!:;?](?=[\u4e00-\u9fff])")


def process_response(response):
    """Clean a decoded answer like the original: strip, fill the training-date placeholder, and make
    `, ! : ; ?` next to a CJK character full-width. The original does that with two substitutions per mark;
    one pass that looks around each mark gives the same text (a substitution never creates or removes a CJK
    character) in a quarter of the time, which matters to servers cleaning every streamed token."""
    return clean_inside(response.strip())


def clean_inside(text):
    """process_response without the strip. It never looks across a newline (the placeholder holds none, and a
    mark changes only beside a CJK character), so text split at newlines can be cleaned piece by piece; and
    it commutes with the strip (it neither adds nor removes whitespace)."""
    return _MARK_BESIDE_CJK.sub(lambda mark: _FULL_WIDTH[mark.group()], text.replace(TRAINING_DATE, "2023年"))


def format_rounds(query, history):
    """`[Round i]\\n问：q\\n答：a\\n` for every past round, then the current round awaiting its answer."""
    prompt = "".join(f"[Round {i}]\n问：{q}\n答：{a}\n" for i, (q, a) in enumerate(history))
    return prompt + f"[Round {len(history)}]\n问：{query}\n答："


def build_prompt(query, history):
    """The chat prompt: the bare query when there is no history, else the rounds."""
    return format_rounds(query, history) if history else query


def generation_options(max_length, top_p, temperature):
    """A front door's settings as keyword arguments of ``chat``/``stream_chat``.
    Temperature 0 means greedy decoding (sampling at temperature 0 is undefined)."""
    options = {"max_length": max(1, int(max_length))}
    if float(temperature) <= 0:
        options["do_sample"] = False
    else:
        options.update(top_p=float(top_p), temperature=float(temperature))
    return options


class PromptTooLong(ValueError):
    """The question alone leaves no room for an answer within max_length."""

    def __init__(self, length, limit):
        super().__init__(f"the question alone is {length} tokens, which leaves no room to answer within "
                         f"max_length={limit}: raise max_length or shorten the question")
        self.length = length
        self.limit = limit

    def __reduce__(self):  # raised in a worker process too (chatglm.serving.prompts)
        return PromptTooLong, (self.length, self.limit)


def prompt_ids(tokenizer, query, history, max_length):
    """Token ids of the chat prompt for ``query`` after ``history``. Like ``model.chat``, the oldest rounds
    are left out while the prompt would leave no room to answer within ``max_length``; the fewest rounds to
    leave out are found by bisection (a prompt only gets shorter as rounds are dropped), so a long history
    costs O(log rounds) tokenizations, not one per dropped round. Raises PromptTooLong."""
    history = list(history)

    def encode(dropped):
        return tokenizer(build_prompt(query, history[dropped:]))["input_ids"]

    ids = encode(0)
    if len(ids) < max_length:
        return ids
    fits, ids = len(history), encode(len(history))
    if len(ids) >= max_length:
        raise PromptTooLong(len(ids), max_length)
    too_few = 0  # dropping this many rounds is known not to be enough
    while fits - too_few > 1:
        middle = (too_few + fits) // 2
        candidate = encode(middle)
        if len(candidate) < max_length:
            fits, ids = middle, candidate
        else:
            too_few = middle
    return ids


def chat_inputs(model, tokenizer, query, history, max_length):
    """Tokenized prompt ``{"input_ids": [1, length]}`` on the model's device (see ``prompt_ids``)."""
    ids = prompt_ids(tokenizer, query, history or [], max_length)
    return {"input_ids": torch.tensor([ids], device=model.device)}


def generation_kwargs(max_length, do_sample, top_p, temperature, logits_processor, kwargs):
    processors = LogitsProcessorList(logits_processor or [])
    processors.append(InvalidScoreLogitsProcessor())
    sampling = {"top_p": top_p, "temperature": temperature} if do_sample else {}
    return {"max_length": max_length, "do_sample": do_sample, "logits_processor": processors, **sampling, **kwargs}


@torch.inference_mode()
def chat(model, tokenizer, query, history=None, max_length=DEFAULT_MAX_LENGTH, num_beams=1, do_sample=True,
         top_p=DEFAULT_TOP_P, temperature=DEFAULT_TEMPERATURE, logits_processor=None, **kwargs):
    """Answer `query` given `history` [(question, answer), ...]; returns (response, new history).

    When the prompt with the whole history would not fit `max_length`, the oldest rounds are
    left out of the prompt (they stay in the returned history). Beam search (num_beams > 1) runs
    transformers' generate(); otherwise the answer is the last step of stream_generate.
    """
    history = list(history or [])
    inputs = chat_inputs(model, tokenizer, query, history, max_length)
    gen_kwargs = generation_kwargs(max_length, do_sample, top_p, temperature, logits_processor, kwargs)
    if num_beams > 1:
        outputs = model.generate(**inputs, num_beams=num_beams, **gen_kwargs)
    else:
        *_, outputs = stream_generate(model, **inputs, **gen_kwargs)
    response = process_response(tokenizer.decode(outputs[0, inputs["input_ids"].shape[1] :].tolist()))
    return response, history + [(query, response)]


@torch.inference_mode()
def stream_chat(model, tokenizer, query, history=None, max_length=DEFAULT_MAX_LENGTH, do_sample=True,
                top_p=DEFAULT_TOP_P, temperature=DEFAULT_TEMPERATURE, logits_processor=None, **kwargs):
    """Like `chat`, yielding (partial response, new history) after every token, the last one
    included. Closing the generator stops generation."""
    history = list(history or [])
    inputs = chat_inputs(model, tokenizer, query, history, max_length)
    gen_kwargs = generation_kwargs(max_length, do_sample, top_p, temperature, logits_processor, kwargs)
    prompt_length = inputs["input_ids"].shape[1]
    for ids in stream_generate(model, **inputs, **gen_kwargs):
        response = process_response(tokenizer.decode(ids[0, prompt_length:].tolist()))
        yield response, history + [(query, response)]


def next_token_scores(config, input_ids, logits, processors):
    """A step's scores [batch, vocab] after the repetition penalty and the caller's logits processors."""
    scores = apply_repetition_penalty(logits, input_ids, config.repetition_penalty or 1.0)
    return processors(input_ids, scores)


def sample(config, scores):
    """The next token of every row with the generation config's settings (chatglm.sampling's sampler)."""
    if not config.do_sample:
        return scores.argmax(dim=-1)
    batch, device = scores.shape[0], scores.device
    return sample_next_tokens(scores, torch.full((batch,), float(config.temperature or 1.0), device=device),
                              torch.full((batch,), float(config.top_p or 1.0), device=device),
                              torch.full((batch,), int(config.top_k or 0), device=device))


@torch.inference_mode()
def stream_generate(model, input_ids, attention_mask=None, position_ids=None, generation_config=None,
                    logits_processor=None, stopping_criteria=None, **kwargs):
    """Greedy or sampled decoding that yields the whole sequence [batch, seq] after every new token.
    Sampling honours temperature, top_k, top_p and repetition_penalty of the generation config (updated with
    ``kwargs``), after the caller's ``logits_processor``."""
    config = copy.deepcopy(generation_config or model.generation_config)
    config.update(**kwargs)
    eos_ids = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    processors = LogitsProcessorList(logits_processor or [])
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    step_ids, cache, decoded = input_ids, None, False
    max_length = config.max_length
    if config.max_new_tokens is not None:
        max_length = input_ids.shape[1] + config.max_new_tokens
    while input_ids.shape[1] < max_length:
        if decoded:  # the newest token, after the one decoded last
            position_ids = model.transformer.next_position_ids(position_ids)
        elif cache is not None:  # the first token after the prompt: its positions come from the prompt's ids
            position_ids = model.transformer.get_position_ids(input_ids, attention_mask, input_ids.shape[1] - 1)
            decoded = True
        outputs = model(step_ids, position_ids=position_ids, attention_mask=attention_mask, cache=cache,
                        use_cache=True)
        cache = outputs.cache
        scores = next_token_scores(config, input_ids, outputs.logits[:, -1, :].float(), processors)
        next_tokens = sample(config, scores)
        next_tokens = torch.where(finished, config.pad_token_id, next_tokens)
        input_ids = torch.cat((input_ids, next_tokens[:, None]), dim=-1)
        attention_mask = torch.cat((attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)), dim=-1)
        step_ids = next_tokens[:, None]
        finished |= torch.isin(next_tokens, torch.tensor(eos_ids, device=next_tokens.device))
        yield input_ids
        if finished.all() or (stopping_criteria is not None and stopping_criteria(input_ids, scores).all()):
            break
