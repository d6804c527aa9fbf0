"""The OpenAI-compatible routes of api.py, driven by the official `openai` client against the live server."""


import httpx
import openai
import pytest

from chatglm.generation import prompt_ids

pytestmark = pytest.mark.slow  # api.py as a server process


@pytest.fixture(scope="module")
def client(api_server):
    return openai.OpenAI(base_url=api_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def chat_alone(door_model, query, history=(), max_length=512):
    tokenizer, model = door_model
    return model.chat(tokenizer, query, history=list(history), max_length=max_length, do_sample=False)[0]


def test_completion_matches_chat(client, door_model):
    tokenizer, _ = door_model
    reply = client.chat.completions.create(model="anything", temperature=0,
                                           messages=[{"role": "user", "content": "晚上睡不着应该怎么办"}])
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == client.models.list().data[0].id
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == chat_alone(door_model, "晚上睡不着应该怎么办")
    assert choice.finish_reason == "stop"
    prompt_tokens = len(prompt_ids(tokenizer, "晚上睡不着应该怎么办", [], 512))
    assert reply.usage.prompt_tokens == prompt_tokens
    assert reply.usage.total_tokens == prompt_tokens + reply.usage.completion_tokens
    # the answer's tokens, and the end-of-answer token
    answer_ids = tokenizer(choice.message.content, add_special_tokens=False)["input_ids"]
    assert abs(reply.usage.completion_tokens - (len(answer_ids) + 1)) <= 2


def test_stream_text_equals_the_answer(client):
    messages = [{"role": "user", "content": "介绍一下北京"}]
    whole = client.chat.completions.create(model="m", messages=messages, temperature=0)
    chunks = list(client.chat.completions.create(model="m", messages=messages, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for p in pieces if p) >= 3, "the answer should come in several pieces"
    assert "".join(pieces) == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and not any(finishes[:-1])
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_raw_stream_is_server_sent_events(api_server):
    payload = {"messages": [{"role": "user", "content": "你好"}], "stream": True, "temperature": 0, "max_tokens": 5}
    with httpx.stream("POST", api_server.url + "/v1/chat/completions", json=payload, timeout=60) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in reply.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert '"finish_reason": "length"' in lines[-2]


def test_max_tokens_and_stop(client, door_model):
    messages = [{"role": "user", "content": "晚上睡不着应该怎么办"}]
    expected = chat_alone(door_model, "晚上睡不着应该怎么办")
    short = client.chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=4)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 4
    assert expected.startswith(short.choices[0].message.content)
    stop_word = expected[6:8]
    for stream in (False, True):
        reply = client.chat.completions.create(model="m", messages=messages, temperature=0, stop=[stop_word, "zzz"],
                                               stream=stream)
        if stream:
            chunks = list(reply)
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            finish = chunks[-1].choices[0].finish_reason
        else:
            text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
        assert text == expected[: expected.index(stop_word)] and finish == "stop"


def test_messages_map_onto_query_and_history(client, door_model):
    messages = [{"role": "system", "content": "你是一个助手"},
                {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "你好！"},
                {"role": "user", "content": [{"type": "text", "text": "晚上睡不着"},
                                             {"type": "text", "text": "怎么办"}]}]
    reply = client.chat.completions.create(model="m", messages=messages, temperature=0)
    expected = chat_alone(door_model, "晚上睡不着怎么办", [("你是一个助手\n你好", "你好！")])
    assert reply.choices[0].message.content == expected


def test_models(client):
    models = client.models.list()
    assert len(models.data) == 1 and models.data[0].object == "model"
    assert "/" not in models.data[0].id  # the served model's name, not a path


UNSUPPORTED = [
    ("n", {"n": 2}),
    ("tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
    ("logprobs", {"logprobs": True}),
    ("top_logprobs", {"top_logprobs": 2}),
    ("presence_penalty", {"presence_penalty": 0.5}),
    ("seed", {"seed": 1}),
    ("response_format", {"response_format": {"type": "json_object"}}),
]


@pytest.mark.parametrize("field,options", UNSUPPORTED, ids=[case[0] for case in UNSUPPORTED])
def test_unsupported_options_are_a_clear_400(client, field, options):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], **options)
    assert caught.value.status_code == 400
    assert f"'{field}'" in caught.value.message and "not supported" in caught.value.message
    assert caught.value.body["param"] == field


BAD_REQUESTS = [
    ("no messages", {"messages": []}, "messages"),
    ("tool role", {"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ("content a number", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("temperature too high", {"messages": [{"role": "user", "content": "hi"}], "temperature": 3}, "temperature"),
    ("max_tokens zero", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ("stop a number", {"messages": [{"role": "user", "content": "hi"}], "stop": 5}, "stop"),
    ("unknown option", {"messages": [{"role": "user", "content": "hi"}], "beam_width": 4}, "beam_width"),
]


@pytest.mark.parametrize("name,payload,field", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_input_is_a_400_naming_the_field(api_server, name, payload, field):
    reply = httpx.post(api_server.url + "/v1/chat/completions", json=payload, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert f"'{field}" in error["message"] and error["type"] == "invalid_request_error"


def test_a_question_too_long_for_the_context_is_a_413(api_server):
    reply = httpx.post(api_server.url + "/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": "你好" * 2000}]})
    assert reply.status_code == 413 and "'messages'" in reply.json()["error"]["message"], reply.text


def test_lone_surrogate_and_deep_nesting(api_server):
    url = api_server.url + "/v1/chat/completions"
    for raw, word in ((b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content"),
                      (b'{"messages": ' + b"[" * 3000 + b"]" * 3000 + b"}", "nested"),
                      (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1' + b"0" * 5000 + b"}",
                       "max_tokens")):
        reply = httpx.post(url, content=raw, headers={"Content-Type": "application/json"}, timeout=60)
        assert reply.status_code == 400 and word in reply.json()["error"]["message"], reply.text


def test_ignore_eos_runs_to_max_tokens(client):
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "你好"}], temperature=0,
                                           max_tokens=60, extra_body={"ignore_eos": True})
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 60
