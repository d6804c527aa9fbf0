"""The batching engine (chatglm.serving) in this process, on the real demo (or tiny) checkpoint."""

import asyncio
import contextlib
import random
import time

import pytest
import torch

from chatglm.generation import PromptTooLong, build_prompt, process_response, prompt_ids
from chatglm.sampling import replace_invalid_scores, sample_next_tokens
from chatglm.serving import (
    CANCELLED,
    ERROR,
    LENGTH,
    SHUTDOWN,
    STOP,
    Engine,
    QueueFull,
    Sequence,
    TextStream,
    follow,
)

PROMPTS = ["你好", "晚上睡不着应该怎么办", "Write a haiku about the sea", "hi",
           "1+1等于几？请详细解释一下你的计算过程，然后再举三个例子", "介绍一下北京"]
MAX_LENGTH = 96


@pytest.fixture(scope="module")
def engine(door_model):
    _, model = door_model
    engine = Engine(model, max_batch_size=8, max_queue=8).start()
    yield engine
    engine.stop()


def wait_all(sequences, timeout=120):
    deadline = time.time() + timeout
    for sequence in sequences:
        assert sequence.done.wait(max(0.0, deadline - time.time())), "a sequence did not finish"


def answer(tokenizer, sequence):
    text = TextStream(tokenizer)
    text.finish(sequence.output_ids)
    return text.text


@pytest.mark.slow  # generates with the demo model
def test_batched_greedy_answers_equal_chat_alone(engine, door_model):
    tokenizer, model = door_model
    history = [("你好", "你好！有什么可以帮你的吗？")]
    cases = [(p, []) for p in PROMPTS] + [("晚上睡不着应该怎么办", history)]
    sequences = []
    for i, (query, past) in enumerate(cases):
        ids = prompt_ids(tokenizer, query, past, MAX_LENGTH)
        sequences.append(Sequence(ids, MAX_LENGTH - len(ids), temperature=0))
        engine.submit(sequences[-1])
        if i == 2:  # the rest join a batch that is already decoding
            time.sleep(0.05)
    wait_all(sequences)
    assert len({len(s.prompt_ids) for s in sequences}) >= 5, "the prompts should differ in length"
    for (query, past), sequence in zip(cases, sequences):
        expected, _ = model.chat(tokenizer, query, history=past, max_length=MAX_LENGTH, do_sample=False)
        assert answer(tokenizer, sequence) == expected, query
        assert sequence.finish_reason in (STOP, LENGTH)
        if sequence.finish_reason == LENGTH:
            assert len(sequence.prompt_ids) + len(sequence.output_ids) == MAX_LENGTH
    assert engine.stats()["running"] == 0


@pytest.mark.slow  # generates with the demo model
def test_sampling_settings_are_per_request(engine, door_model):
    tokenizer, _ = door_model
    ids = prompt_ids(tokenizer, "你好", [], MAX_LENGTH)
    greedy = [Sequence(ids, 30, temperature=0) for _ in range(2)]
    sampled = [Sequence(ids, 30, temperature=100.0, top_p=1.0, top_k=0) for _ in range(3)]
    for sequence in greedy + sampled:
        engine.submit(sequence)
    wait_all(greedy + sampled)
    assert greedy[0].output_ids == greedy[1].output_ids
    # at temperature 100 over the whole vocabulary the answers are noise, and differ
    assert len({tuple(s.output_ids) for s in sampled}) == 3


@pytest.mark.slow  # generates with the demo model
def test_a_failing_request_fails_alone(engine, door_model):
    tokenizer, model = door_model
    good_ids = prompt_ids(tokenizer, "你好", [], MAX_LENGTH)
    good = Sequence(good_ids, 20, temperature=0)
    # an id past the embedding table makes this request's forward pass fail
    bad = Sequence(good_ids[:-2] + [model.config.vocab_size + 5] + good_ids[-2:], 20, temperature=0)
    engine.submit(good)
    engine.submit(bad)
    wait_all([good, bad])
    assert bad.finish_reason == ERROR and "IndexError" in bad.error
    assert good.finish_reason in (STOP, LENGTH) and good.output_ids
    again = Sequence(good_ids, 20, temperature=0)
    engine.submit(again)
    wait_all([again])
    assert again.output_ids == good.output_ids


@pytest.mark.slow  # generates with the demo model
def test_prompts_prefilled_in_small_chunks_give_chat_answers(door_model):
    """Chunks of 2 tokens: every prompt takes several steps to join, several join while others decode."""
    tokenizer, model = door_model
    engine = Engine(model, max_batch_size=8, max_queue=8, prefill_chunk_tokens=2).start()
    try:
        history = [("你好", "你好！有什么可以帮你的吗？")]
        cases = [(p, []) for p in PROMPTS] + [("晚上睡不着应该怎么办", history)]
        sequences = []
        for i, (query, past) in enumerate(cases):
            sequences.append(Sequence(prompt_ids(tokenizer, query, past, MAX_LENGTH), MAX_LENGTH, temperature=0))
            sequences[-1].max_new_tokens -= len(sequences[-1].prompt_ids)
            engine.submit(sequences[-1])
            if i == 1:  # the rest join a batch that is already decoding
                while not sequences[0].output_ids:
                    time.sleep(0.01)
        wait_all(sequences)
    finally:
        engine.stop()
    assert all(len(s.prompt_ids) > 2 for s in sequences), "every prompt should take several chunks"
    for (query, past), sequence in zip(cases, sequences):
        expected, _ = model.chat(tokenizer, query, history=past, max_length=MAX_LENGTH, do_sample=False)
        assert answer(tokenizer, sequence) == expected, query


@pytest.mark.slow  # generates with the demo model
def test_a_long_prompt_joins_while_the_batch_decodes_and_can_be_cancelled_midway(door_model):
    tokenizer, model = door_model
    engine = Engine(model, max_batch_size=4, max_queue=4, prefill_chunk_tokens=1).start()
    try:
        running = Sequence(prompt_ids(tokenizer, "你好", [], 4096), 4000, ignore_eos=True)
        engine.submit(running)
        history = [(f"问题{i}", f"回答{i}") for i in range(40)]
        long = Sequence(prompt_ids(tokenizer, "你好", history, 4096), 10, temperature=0)
        assert len(long.prompt_ids) > 200  # a token a step: hundreds of steps to join
        engine.submit(long)
        while engine.prefilling is None or engine.prefilling.sequence is not long:
            time.sleep(0.001)
        before = len(running.output_ids)
        while len(running.output_ids) < before + 3:  # the running answer goes on meanwhile
            assert engine.prefilling is not None, "the long prompt joined too fast to be cancelled midway"
            time.sleep(0.001)
        engine.cancel(long)
        assert long.done.wait(5)
        assert long.finish_reason == CANCELLED and not long.output_ids
        assert engine.prefilling is None and engine.stats()["running"] == 1
        # the engine goes on as before: a new request gets chat's answer
        ids = prompt_ids(tokenizer, "介绍一下北京", [], MAX_LENGTH)
        after = Sequence(ids, MAX_LENGTH - len(ids), temperature=0)
        engine.submit(after)
        wait_all([after])
        expected, _ = model.chat(tokenizer, "介绍一下北京", history=[], max_length=MAX_LENGTH, do_sample=False)
        assert answer(tokenizer, after) == expected
        assert not running.done.is_set()
    finally:
        engine.stop()


@contextlib.contextmanager
def one_long_answer_running(door_model, max_queue):
    """An engine that decodes one row at a time, already generating a long answer: (engine, ids, running)."""
    tokenizer, model = door_model
    engine = Engine(model, max_batch_size=1, max_queue=max_queue).start()
    try:
        ids = prompt_ids(tokenizer, "你好", [], 4096)
        running = Sequence(ids, 4000, ignore_eos=True)  # long: would take many seconds
        engine.submit(running)
        while not running.output_ids:
            time.sleep(0.01)
        yield engine, ids, running
    finally:
        engine.stop()


@pytest.mark.slow  # generates with the demo model
def test_cancel_stops_a_running_and_a_waiting_request(door_model):
    with one_long_answer_running(door_model, max_queue=1) as (engine, ids, running):
        waiting = Sequence(ids, 10, temperature=0)
        engine.submit(waiting)
        with pytest.raises(QueueFull):
            engine.submit(Sequence(ids, 10))  # the queue holds one
        engine.cancel(waiting)
        assert waiting.finish_reason == CANCELLED and not waiting.output_ids
        engine.cancel(running)
        assert running.done.wait(5)
        assert running.finish_reason == CANCELLED
        generated = len(running.output_ids)
        time.sleep(0.2)
        assert len(running.output_ids) == generated and engine.stats()["running"] == 0


@pytest.mark.slow  # generates with the demo model
def test_drain_refuses_new_requests_and_cuts_the_running_ones_at_the_deadline(door_model):
    with one_long_answer_running(door_model, max_queue=2) as (engine, ids, running):
        waiting = Sequence(ids, 4000, ignore_eos=True)
        engine.submit(waiting)
        engine.drain(0.5)
        with pytest.raises(QueueFull, match="shutting down"):
            engine.submit(Sequence(ids, 10))
        assert running.done.wait(30) and waiting.done.wait(30)
        assert running.finish_reason == waiting.finish_reason == SHUTDOWN
        assert 0 < len(running.output_ids) < 4000 and engine.idle()


def test_text_stream_pieces_add_up_to_the_cleaned_answer(door_model):
    tokenizer, _ = door_model
    texts = ["你好,世界!今天:晴;明天?", "He said , you do n't know", "版本[[训练时间]],发布", "a ,你",
             "代码：\n    x = 1\n\n", "价格是 3.5 元 ,对吗 ?"]
    for raw in texts:
        ids = tokenizer(raw, add_special_tokens=False)["input_ids"]
        expected = process_response(tokenizer.decode(ids))
        text, pieces = TextStream(tokenizer), []
        for end in range(1, len(ids) + 1):
            pieces.append(text.update(ids[:end]))
            assert expected.startswith("".join(pieces)), (raw, pieces)
        pieces.append(text.finish(ids))
        assert "".join(pieces) == expected == text.text, raw


def test_text_stream_decodes_line_by_line_as_a_whole(door_model):
    # the lines before the last newline token are decoded once; random answers full of newline tokens, raw
    # bytes, blanks and punctuation must still come out as the whole answer decoded at once
    tokenizer, _ = door_model
    newline = tokenizer.convert_tokens_to_ids("<n>")
    rng = random.Random(0)
    for _ in range(200):
        length = rng.randint(1, 40)
        ids = [newline if rng.random() < 0.2 else rng.randrange(tokenizer.vocab_size) for _ in range(length)]
        text = TextStream(tokenizer)
        for end in range(1, len(ids) + 1):
            text.update(ids[:end])
        text.finish(ids)
        assert text.text == process_response(tokenizer.decode(ids)), ids


def test_text_stream_holds_back_what_may_still_change(door_model):
    tokenizer, _ = door_model
    ids = tokenizer("你好,", add_special_tokens=False)["input_ids"]
    assert process_response(tokenizer.decode(ids)) == "你好，"  # a mark after CJK is decided at once
    ids = tokenizer("abc,", add_special_tokens=False)["input_ids"]
    assert TextStream(tokenizer).update(ids) == "abc"  # a CJK character may still follow
    ids = tokenizer("年份[[训练", add_special_tokens=False)["input_ids"]
    assert TextStream(tokenizer).update(ids) == "年份"


def test_stop_strings_end_the_answer_before_them(door_model):
    tokenizer, _ = door_model
    ids = tokenizer("第一步做饭。第二步洗碗。", add_special_tokens=False)["input_ids"]
    text, pieces = TextStream(tokenizer, stop=["第二步"]), []
    for end in range(1, len(ids) + 1):
        pieces.append(text.update(ids[:end]))
        if text.stopped:
            break
    pieces.append(text.finish(ids[:end]))
    assert text.stopped and "".join(pieces) == text.text == "第一步做饭。"


def test_prompt_ids_drop_the_oldest_rounds_like_chat(door_model):
    tokenizer, _ = door_model
    history = [(f"第{i}个问题：今天天气怎么样", f"第{i}个回答：今天晴，气温二十度左右") for i in range(40)]
    for max_length in (30, 120, 400, 2000):
        # the rule of model.chat: leave out the oldest round while the prompt is too long
        kept = list(history)
        while kept and len(tokenizer(build_prompt("现在呢", kept))["input_ids"]) >= max_length:
            kept = kept[1:]
        assert prompt_ids(tokenizer, "现在呢", history, max_length) == \
            tokenizer(build_prompt("现在呢", kept))["input_ids"]
    with pytest.raises(PromptTooLong, match="max_length=3"):
        prompt_ids(tokenizer, "现在呢", history, 3)


def test_sample_next_tokens_follows_each_rows_settings():
    torch.manual_seed(0)
    logits = torch.randn(4, 100)
    top = logits.argmax(dim=-1)
    temperature = torch.tensor([0.0, 1.0, 1.0, 1.0])
    top_p = torch.tensor([0.7, 1.0, 0.0, 1.0])
    top_k = torch.tensor([50, 1, 0, 5])
    for _ in range(20):
        tokens = sample_next_tokens(logits.clone(), temperature, top_p, top_k)
        assert tokens[:3].tolist() == top[:3].tolist()  # greedy, top_k=1, top_p=0
        assert tokens[3] in logits[3].topk(5).indices
    # the invalid-score rule, row by row as the engine applies it: only the bad row picks token 5
    bad = torch.stack((torch.full((100,), float("nan")), logits[0]))
    replace_invalid_scores(bad, each_row=True)
    assert sample_next_tokens(bad, torch.zeros(2), torch.ones(2), torch.zeros(2, dtype=torch.long)).tolist() == [
        5, int(top[0])]


@pytest.mark.parametrize("each_token", [True, False])
def test_follow_wakes_per_token_or_once_at_the_end(engine, door_model, each_token):
    """A whole (non-streamed) answer needs the event loop once, at its end: a wake-up per token costs the
    engine thread the GIL every time."""
    tokenizer, _ = door_model

    async def follow_one():
        sequence = Sequence(prompt_ids(tokenizer, "你好", [], MAX_LENGTH), 24, temperature=0, ignore_eos=True)
        engine.submit(sequence)
        async with contextlib.aclosing(follow(engine, sequence, each_token=each_token)) as updates:
            wakes = [sequence.finish_reason async for _ in updates]
        return sequence, wakes

    sequence, wakes = asyncio.run(follow_one())
    assert len(sequence.output_ids) == 24 and sequence.finish_reason == LENGTH
    assert wakes[-1] == LENGTH
    if each_token:
        assert len(wakes) > 2  # the engine's steps coalesce only when the loop is late
    else:
        assert wakes == [None, LENGTH] or wakes == [LENGTH]  # the first pass runs before any token may come


@pytest.mark.slow  # starts worker processes
def test_prompt_workers_come_back_after_a_worker_dies(door_model):
    import os
    import signal

    from chatglm.serving.prompts import PromptWorkers

    tokenizer, _ = door_model
    history = [("你好", "你好！有什么可以帮你的吗？")]
    expected = prompt_ids(tokenizer, "晚上睡不着应该怎么办", history, 256)

    async def scenario():
        workers = PromptWorkers(tokenizer, processes=2)
        try:
            await workers.start()
            assert await workers.prompt_ids("晚上睡不着应该怎么办", history, 256) == expected
            for pid in list(workers.pool._processes):
                os.kill(pid, signal.SIGKILL)
            with pytest.raises(PromptTooLong):  # the rule still holds after the restart
                await workers.prompt_ids("晚上睡不着应该怎么办", history, 3)
            answers = await asyncio.gather(*(workers.prompt_ids("晚上睡不着应该怎么办", history, 256)
                                             for _ in range(4)))
            assert answers == [expected] * 4 and workers.restarts == 1
        finally:
            workers.close()

    asyncio.run(scenario())
