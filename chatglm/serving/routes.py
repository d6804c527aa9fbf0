"""The routes of the HTTP API: module-level handlers over one AppState (``app.state.serving``).

``POST /`` (the original contract), ``POST /v1/chat/completions`` (OpenAI-compatible, streaming as
server-sent events), ``GET /v1/models`` and ``GET /health``. Handlers only do I/O on the event loop:
building and tokenizing a prompt runs in worker processes (prompts.py), checking JSON, writing long replies
and turning tokens into text in worker threads, so one request's CPU work never stalls the others' streams.
"""

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ..generation import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, PromptTooLong
from .engine import ERROR, SHUTDOWN, STOP, Engine, QueueFull, Sequence
from .errors import ERROR_DOCS, ApiError
from .guard import now
from .prompts import PromptWorkers
from .protocol import ChatCompletion, ChatCompletionRequest, ChatRequest, ChatResponse, ModelList, messages_to_chat
from .settings import ServerSettings
from .text_stream import TextStream
from .updates import follow

router = APIRouter()


@dataclass
class AppState:
    engine: Engine
    tokenizer: Any
    settings: ServerSettings
    model_name: str
    context_length: int  # the model's, in tokens
    prompts: PromptWorkers
    started: int = field(default_factory=lambda: int(time.time()))

    @property
    def max_prompt_tokens(self) -> int:
        return self.settings.max_prompt_tokens or self.context_length


def app_state(request: Request) -> AppState:
    return request.app.state.serving


# --- shared by the routes ----------------------------------------------------------------------------


async def tokenize(state: AppState, query: str, history, max_length: int) -> list[int]:
    """The prompt's ids, built in a worker process, the oldest rounds left out until the prompt leaves room to
    answer within ``max_length`` and holds at most --max-prompt-tokens. Raises PromptTooLong (its limit is
    the smaller of the two plus one)."""
    return await state.prompts.prompt_ids(query, history, min(max_length, state.max_prompt_tokens + 1))


def prompt_too_long(state: AppState, exc: PromptTooLong, message: str, param: str) -> ApiError:
    """413: the content is too large, in tokens (a limit that no JSON schema can state)."""
    if exc.limit > state.max_prompt_tokens:
        message = (f"the question alone is {exc.length} tokens; this server takes prompts of at most "
                   f"{state.max_prompt_tokens} tokens (--max-prompt-tokens): shorten it")
    return ApiError(413, message, param)


def answer_limit(state: AppState, room: int) -> int:
    """The most tokens an answer may have: the room the request leaves, within --max-answer-tokens."""
    return min(room, state.settings.max_answer_tokens or room)


async def cancel_on_disconnect(engine: Engine, sequence: Sequence, receive):
    """Wait for the client to go away, then stop generating for it."""
    while (await receive())["type"] != "http.disconnect":
        pass
    engine.cancel(sequence)


def submit(state: AppState, request: Request, sequence: Sequence) -> asyncio.Task:
    """Queue ``sequence`` (503 when the queue is full or the server is shutting down) and cancel it if the
    client goes away; returns the task that watches the client."""
    try:
        state.engine.submit(sequence)
    except QueueFull as exc:
        raise ApiError(503, f"the server is busy ({exc}); retry shortly", headers={"Retry-After": "1"}) from None
    return asyncio.ensure_future(cancel_on_disconnect(state.engine, sequence, request.receive))


async def text_update(text: TextStream, sequence: Sequence) -> str:
    return await asyncio.to_thread(text.update, list(sequence.output_ids))


async def outcome(sequence: Sequence, text: TextStream) -> tuple[str, str]:
    """The last piece of text of a sequence that has ended, and why it ended: "stop", "length" or
    "shutdown" (the server's drain time ran out)."""
    if sequence.finish_reason == ERROR:
        raise ApiError(500, f"generating this answer failed: {sequence.error}")
    piece = await asyncio.to_thread(text.finish, list(sequence.output_ids))
    if text.stopped or sequence.finish_reason == STOP:
        return piece, STOP
    if sequence.finish_reason in ("length", SHUTDOWN):
        return piece, sequence.finish_reason
    raise ApiError(503, "the request was cancelled: the client went away or the server is shutting down")


async def run_to_end(state: AppState, request: Request, sequence: Sequence, text: TextStream) -> str:
    """Run ``sequence`` to its end and return why it ended; ``text.text`` then holds the answer."""
    watcher = submit(state, request, sequence)
    try:
        # without stop strings to look for, the answer is only read at its end
        async with contextlib.aclosing(follow(state.engine, sequence, each_token=bool(text.stop))) as updates:
            async for _ in updates:
                if text.stop:  # look for stop strings as the answer grows
                    await text_update(text, sequence)
                    if text.stopped:
                        break
    finally:
        watcher.cancel()
    return (await outcome(sequence, text))[1]


def note(state: AppState, request: Request, sequence: Sequence, finish: str, prompt: str, answer: str):
    """What the request's log line says (RequestGuard writes it)."""
    request.state.log = (f"prompt_tokens={len(sequence.prompt_ids)} completion_tokens={len(sequence.output_ids)} "
                         f"finish={finish}")
    if finish == SHUTDOWN:
        request.state.log += " (cut: the server's drain time ran out)"
    if state.settings.log_content:
        request.state.log += f" prompt={prompt!r} response={answer!r}"


def openai_finish(finish: str) -> str:
    """OpenAI clients know "stop" and "length": an answer cut by the shutdown is one cut short."""
    return "length" if finish == SHUTDOWN else finish


# --- POST / ------------------------------------------------------------------------------------------


@router.post("/", response_model=ChatResponse, response_model_exclude_none=True, responses=ERROR_DOCS)
async def chat(body: ChatRequest, request: Request):
    """The original ChatGLM-6B API: answer ``prompt`` after ``history``."""
    state = app_state(request)
    history = [tuple(pair) for pair in body.history or []]
    try:
        ids = await tokenize(state, body.prompt, history, body.max_length)
    except PromptTooLong as exc:
        raise prompt_too_long(state, exc, f"cannot answer this request: {exc}", "max_length") from None
    sequence = Sequence(ids, answer_limit(state, body.max_length - len(ids)), temperature=body.temperature,
                        top_p=body.top_p)
    text = TextStream(state.tokenizer)
    finish = await run_to_end(state, request, sequence, text)
    note(state, request, sequence, finish, body.prompt, text.text)
    # the reply echoes the whole history: written out in a worker thread, as the JSON was read
    reply = await asyncio.to_thread(chat_reply, text.text, history + [(body.prompt, text.text)], finish)
    return Response(reply, media_type="application/json")


def chat_reply(answer: str, history: list, finish: str) -> str:
    """The JSON of POST /'s reply."""
    reply = ChatResponse(response=answer, history=history, time=now(), cut=True if finish == SHUTDOWN else None)
    return reply.model_dump_json(exclude_none=True)


# --- POST /v1/chat/completions -----------------------------------------------------------------------


@dataclass
class Completion:
    """One chat completion being answered: its sequence, its text, and the fields every event repeats."""
    sequence: Sequence
    text: TextStream
    query: str
    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def usage(self) -> dict:
        prompt, completion = len(self.sequence.prompt_ids), len(self.sequence.output_ids)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def reply(self, finish: str) -> dict:
        return {"id": self.id, "created": self.created, "model": self.model, "usage": self.usage(),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text.text},
                             "finish_reason": openai_finish(finish)}]}

    def chunk(self, delta: dict, finish: str | None = None, usage: bool = False) -> str:
        payload = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                   "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage:
            payload["usage"] = self.usage()
        return event(payload)


def event(payload) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


@router.post("/v1/chat/completions", response_model=ChatCompletion,
             responses={**ERROR_DOCS, 200: {"content": {"text/event-stream": {}},
                                            "description": "a chat.completion, or chunks when stream is true"}})
async def chat_completions(body: ChatCompletionRequest, request: Request):
    """OpenAI-compatible chat completion (see the README for how messages map onto ChatGLM's prompt)."""
    state = app_state(request)
    query, history = messages_to_chat(body.messages)
    try:
        ids = await tokenize(state, query, history, state.context_length)
    except PromptTooLong as exc:
        raise prompt_too_long(state, exc, f"'messages': the last user message alone is {exc.length} tokens "
                                          f"and leaves no room for an answer in the model's context of "
                                          f"{state.context_length} tokens", "messages") from None
    room = state.context_length - len(ids)
    limit = body.max_completion_tokens or body.max_tokens or room
    sequence = Sequence(ids, answer_limit(state, min(limit, room)), top_k=body.top_k, ignore_eos=body.ignore_eos,
                        temperature=DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
                        top_p=DEFAULT_TOP_P if body.top_p is None else body.top_p)
    completion = Completion(sequence, TextStream(state.tokenizer, body.stop_strings()), query, state.model_name)
    if not body.stream:
        finish = await run_to_end(state, request, sequence, completion.text)
        note(state, request, sequence, finish, query, completion.text.text)
        return completion.reply(finish)
    watcher = submit(state, request, sequence)  # before the response starts, so that a full queue is a 503
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(completion_events(state, request, completion, watcher, include_usage),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def completion_events(state: AppState, request: Request, completion: Completion, watcher: asyncio.Task,
                            include_usage: bool):
    """The server-sent events of a streamed completion: the role, the text as it grows, the finish reason
    (or an error event once the status line is sent), the usage if asked, then [DONE]."""
    sequence, text = completion.sequence, completion.text
    try:
        yield completion.chunk({"role": "assistant", "content": ""})
        async with contextlib.aclosing(follow(state.engine, sequence)) as updates:
            async for _ in updates:
                piece = await text_update(text, sequence)
                if piece:
                    yield completion.chunk({"content": piece})
                if text.stopped:
                    break
        try:
            piece, finish = await outcome(sequence, text)
        except ApiError as exc:  # the status line is sent already: say it in the stream
            request.state.log = exc.message
            yield event({"error": {"message": exc.message, "type": "server_error", "param": None,
                                   "code": exc.status}})
        else:
            if piece:
                yield completion.chunk({"content": piece})
            yield completion.chunk({}, openai_finish(finish))
            if include_usage:
                yield completion.chunk({}, usage=True)
            note(state, request, sequence, finish, completion.query, text.text)
        yield "data: [DONE]\n\n"
    finally:
        watcher.cancel()


# --- the rest ----------------------------------------------------------------------------------------


@router.get("/v1/models", response_model=ModelList)
async def models(request: Request):
    state = app_state(request)
    return {"data": [{"id": state.model_name, "created": state.started}]}


@router.get("/health")
async def health(request: Request):
    """Liveness and load: requests generating or waiting, and the engine's counters since start."""
    state = app_state(request)
    stats = state.engine.stats()
    return {"status": "ok", "model": state.model_name, "queued_requests": stats["running"] + stats["waiting"],
            "engine": stats}
