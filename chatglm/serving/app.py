"""The HTTP server behind ``api.py``: a FastAPI app around one batching Engine.

Routes: ``POST /`` (the original contract), ``POST /v1/chat/completions`` (OpenAI-compatible, with
streaming as server-sent events), ``GET /v1/models``, ``GET /health``, and FastAPI's ``/docs`` and
``/openapi.json``.

Every request first passes RequestGuard, which works on the raw request: the API key, the content type
(JSON only, so a browser's form-like "simple request" from another site is refused), the body size, and
the JSON itself (nesting depth, over-long integers, lone UTF-16 surrogates). Only then does FastAPI parse
the body into the pydantic models of ``chatglm.protocol``. Errors keep the original shape
``{"detail": ..., "status": ...}`` on ``POST /`` and OpenAI's ``{"error": {...}}`` under ``/v1/``.
"""

import asyncio
import contextlib
import datetime
import hmac
import json
import logging
import time
import uuid
from collections.abc import Sequence as Seq
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..generation import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, PromptTooLong, prompt_ids
from ..text import is_valid_text
from .engine import ERROR, STOP, Engine, QueueFull, Sequence
from .protocol import (
    FIELD_NAMES,
    ApiError,
    ChatCompletion,
    ChatCompletionRequest,
    ChatRequest,
    ChatResponse,
    ModelList,
    messages_to_chat,
)
from .text_stream import TextStream
from .updates import follow

logger = logging.getLogger("chatglm.api")

LONGEST_INTEGER = 64  # digits; longer integer literals are read as +-10**64 (always out of range, never parsed)
BODY_EXAMPLES = {"/": '{"prompt": "你好", "history": []}',
                 "/v1/": '{"messages": [{"role": "user", "content": "你好"}]}'}


@dataclass
class ServerSettings:
    api_key: str | None = None  # when set, every route but /health needs "Authorization: Bearer <key>"
    cors_origins: Seq[str] = ()  # origins allowed to call from a browser; none: CORS stays off
    log_content: bool = False  # log prompts and answers (off: only sizes and timings)
    max_body_bytes: int = 1 << 20
    max_json_depth: int = 32
    max_batch_size: int = 32  # sequences decoded together
    max_queue: int = 256  # sequences waiting to join; more get 503
    threads: int | None = None  # CPU threads of the engine (None: torch's setting)


# --- errors ------------------------------------------------------------------------------------------


def safe_text(text: str, limit: int = 300) -> str:
    """``text`` made printable as UTF-8 (lone surrogates become '?') and cut to ``limit`` characters."""
    text = str(text).encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "..."


def error_response(path: str, status: int, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    message = safe_text(message, 1000)
    if path.startswith("/v1/"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        body = {"error": {"message": message, "type": kind, "param": param and safe_text(param), "code": status}}
    else:
        body = {"detail": message, "status": status}
    return JSONResponse(body, status_code=status, headers=headers)


def describe_validation_error(exc: RequestValidationError, path: str) -> tuple[str, str | None]:
    """One message naming each field at fault (pydantic's union tags left out), and the first field."""
    messages, fields = [], []
    for error in exc.errors():
        loc = list(error["loc"])[1:]  # drop "body"
        field = ""
        for i, part in enumerate(loc):
            if isinstance(part, int):
                field += f"[{part}]"
            elif part in FIELD_NAMES or (error["type"] == "extra_forbidden" and i == len(loc) - 1):
                field += ("." if field else "") + safe_text(part, 60)
        if field in fields:  # the other members of a union
            continue
        fields.append(field)
        if not field:
            example = BODY_EXAMPLES["/v1/" if path.startswith("/v1/") else "/"]
            messages.append(f"the request body must be a JSON object like {example}")
        elif error["type"] == "extra_forbidden":
            messages.append(f"'{field}' is not an option of this API; leave it out")
        else:
            messages.append(f"'{field}': {error['msg']}")
    return "; ".join(messages[:3]), (fields[0] or None) if fields else None


# --- the guard in front of every route ---------------------------------------------------------------


def check_json(value, max_depth: int):
    """Raise ApiError (naming where) for nesting deeper than ``max_depth`` or a lone UTF-16 surrogate."""
    stack = [(value, "", 1)]
    while stack:  # iterative: the depth is what is being checked
        item, path, depth = stack.pop()
        if isinstance(item, str) and not is_valid_text(item):
            raise ApiError(400, f"'{path or 'body'}' holds a lone UTF-16 surrogate (like \\ud800), which is not "
                                f"text: send valid Unicode", path or None)
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                raise ApiError(400, f"the JSON body is nested more than {max_depth} levels deep (at '{path}')")
            for key, child in (item.items() if isinstance(item, dict) else enumerate(item)):
                if isinstance(key, str) and not is_valid_text(key):
                    raise ApiError(400, f"a key in '{path or 'body'}' holds a lone UTF-16 surrogate: send valid "
                                        f"Unicode", path or None)
                child_path = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key
                stack.append((child, child_path, depth + 1))


class RequestGuard:
    """ASGI middleware: API key, content type, body size and JSON checks before anything else runs. It also
    writes the one log line of each request (from what the route left in ``request.state.log``)."""

    def __init__(self, app, settings: ServerSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [None]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            self._check_key(scope)
            if scope["method"] in ("POST", "PUT", "PATCH"):
                receive = await self._read_json(scope, receive)
        except ApiError as exc:
            scope.setdefault("state", {})["log"] = exc.message
            response = error_response(scope["path"], exc.status, exc.message, exc.param, exc.headers)
            await response(scope, receive, send_and_note)
        else:
            await self.app(scope, receive, send_and_note)
        finally:
            if scope["path"] != "/health":
                client = scope.get("client") or ("-",)
                note = safe_text(scope.get("state", {}).get("log", ""), 100000)
                logger.info("[%s] %s %s %s %s %.2fs %s", now(), client[0], scope["method"], scope["path"],
                            status[0] or "-", time.perf_counter() - started, note)

    def _check_key(self, scope):
        key = self.settings.api_key
        if not key or scope["path"] == "/health":
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("latin-1"), key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' with the "
                                "key the server was started with (--api-key or CHATGLM_API_KEY)",
                           headers={"WWW-Authenticate": "Bearer"})

    async def _read_json(self, scope, receive):
        """Read and check the whole body; return a ``receive`` that hands it to the app."""
        headers, limit = Headers(scope=scope), self.settings.max_body_bytes
        content_type = headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise ApiError(415, f"send the body as JSON with the header 'Content-Type: application/json' "
                                f"(got {safe_text(content_type, 80) or 'none'})")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the request body is {declared} bytes; this server takes at most {limit} "
                                f"(--max-body-bytes): send a shorter history")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ApiError(400, "the client went away before sending the whole body")
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                raise ApiError(413, f"the request body is over {limit} bytes (--max-body-bytes): send a shorter "
                                    f"history")
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)

        shortened = []  # integer literals too long to convert (Python refuses beyond 4300 digits anyway)

        def parse_int(digits: str):
            if len(digits) <= LONGEST_INTEGER:
                return int(digits)
            shortened.append(digits)
            return -(10 ** LONGEST_INTEGER) if digits.startswith("-") else 10 ** LONGEST_INTEGER

        try:
            value = json.loads(body, parse_int=parse_int)
        except RecursionError:
            raise ApiError(400, f"the JSON body is nested too deeply (at most {self.settings.max_json_depth} "
                                f"levels)") from None
        except ValueError as exc:  # also bad UTF-8
            raise ApiError(400, f"the request body is not valid JSON ({safe_text(exc, 120)}); send for example "
                                f"{BODY_EXAMPLES['/v1/' if scope['path'].startswith('/v1/') else '/']}") from None
        check_json(value, self.settings.max_json_depth)
        if shortened:
            body = json.dumps(value).encode()
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()  # later calls report the client's disconnect
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay


# --- the app -----------------------------------------------------------------------------------------


def now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


async def cancel_on_disconnect(engine: Engine, sequence: Sequence, receive):
    """Wait for the client to go away, then stop generating for it."""
    while (await receive())["type"] != "http.disconnect":
        pass
    engine.cancel(sequence)


def create_app(tokenizer, model, settings: ServerSettings | None = None, *, model_name: str = "chatglm"):
    """The FastAPI app serving ``model``; its Engine starts and stops with the app's lifespan."""
    settings = settings or ServerSettings()
    engine = Engine(model, max_batch_size=settings.max_batch_size, max_waiting=settings.max_queue,
                    threads=settings.threads)
    context_length = model.config.max_sequence_length
    started = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        engine.start()
        yield
        engine.stop()
        logger.info("engine stopped")

    app = FastAPI(title="ChatGLM-6B API", lifespan=lifespan,
                  description="The original `POST /` and OpenAI-compatible `/v1/chat/completions`, "
                              "with concurrent requests batched together.")
    app.state.engine = engine
    app.add_middleware(RequestGuard, settings=settings)
    if settings.cors_origins:  # added last, so it runs first and answers preflight requests itself
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        request.state.log = exc.message
        return error_response(request.url.path, exc.status, exc.message, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        message, param = describe_validation_error(exc, request.url.path)
        request.state.log = message
        return error_response(request.url.path, 400 if request.url.path.startswith("/v1/") else 422, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(request.url.path, exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        logger.error("internal error on %s", request.url.path, exc_info=exc)
        return error_response(request.url.path, 500, "internal server error (the server log has the details)")

    def new_sequence(ids: list[int], max_new_tokens: int, temperature, top_p, top_k=None, ignore_eos=False):
        return Sequence(ids, max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                        ignore_eos=ignore_eos)

    def submit(request: Request, sequence: Sequence) -> asyncio.Task:
        """Queue ``sequence`` (503 when the queue is full) and cancel it if the client goes away."""
        try:
            engine.submit(sequence)
        except QueueFull as exc:
            raise ApiError(503, f"the server is busy ({exc}); retry shortly", headers={"Retry-After": "1"}) from None
        return asyncio.ensure_future(cancel_on_disconnect(engine, sequence, request.receive))

    def outcome(sequence: Sequence, text: TextStream) -> tuple[str, str]:
        """The last piece of text and the OpenAI finish reason of a sequence that has ended."""
        if sequence.finish_reason == ERROR:
            raise ApiError(500, f"generating this answer failed: {sequence.error}")
        piece = text.finish(sequence.output_ids)
        if text.stopped or sequence.finish_reason == STOP:
            return piece, "stop"
        if sequence.finish_reason == "length":
            return piece, "length"
        raise ApiError(503, "the request was cancelled: the client went away or the server is shutting down")

    async def generate(request: Request, sequence: Sequence, text: TextStream) -> str:
        """Run ``sequence`` to its end and return the finish reason; ``text.text`` then holds the answer."""
        watcher = submit(request, sequence)
        try:
            # without stop strings to look for, the answer is only read at its end
            async with contextlib.aclosing(follow(engine, sequence, each_token=bool(text.stop))) as updates:
                async for _ in updates:
                    if text.stop:  # look for stop strings as the answer grows
                        text.update(sequence.output_ids)
                        if text.stopped:
                            break
        finally:
            watcher.cancel()
        return outcome(sequence, text)[1]

    def note(request: Request, sequence: Sequence, finish: str, prompt: str, answer: str):
        request.state.log = (f"prompt_tokens={len(sequence.prompt_ids)} completion_tokens={len(sequence.output_ids)} "
                             f"finish={finish}")
        if settings.log_content:
            request.state.log += f" prompt={prompt!r} response={answer!r}"

    error_docs = {status: {"description": what} for status, what in (
        (400, "bad input"), (401, "missing or wrong API key"), (413, "body too large"),
        (415, "not JSON"), (422, "bad field (POST /)"), (500, "this request failed"), (503, "queue full"))}

    @app.post("/", response_model=ChatResponse, responses=error_docs)
    async def chat(body: ChatRequest, request: Request):
        """The original ChatGLM-6B API: answer ``prompt`` after ``history``."""
        history = [tuple(pair) for pair in body.history or []]
        try:
            ids = prompt_ids(tokenizer, body.prompt, history, body.max_length)
        except PromptTooLong as exc:
            raise ApiError(422, f"cannot answer this request: {exc}", "max_length") from None
        sequence = new_sequence(ids, body.max_length - len(ids), body.temperature, body.top_p)
        text = TextStream(tokenizer)
        finish = await generate(request, sequence, text)
        note(request, sequence, finish, body.prompt, text.text)
        return {"response": text.text, "history": history + [(body.prompt, text.text)], "status": 200, "time": now()}

    @app.post("/v1/chat/completions", response_model=ChatCompletion,
              responses={**error_docs, 200: {"content": {"text/event-stream": {}},
                                             "description": "a chat.completion, or chunks when stream is true"}})
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        """OpenAI-compatible chat completion (see the README for how messages map onto ChatGLM's prompt)."""
        body.check_supported()
        query, history = messages_to_chat(body.messages)
        try:
            ids = prompt_ids(tokenizer, query, history, context_length)
        except PromptTooLong as exc:
            raise ApiError(400, f"'messages': the last user message alone is {exc.length} tokens and leaves no "
                                f"room for an answer in the model's context of {context_length} tokens",
                           "messages") from None
        room = context_length - len(ids)
        limit = body.max_completion_tokens or body.max_tokens or room
        temperature = DEFAULT_TEMPERATURE if body.temperature is None else body.temperature
        top_p = DEFAULT_TOP_P if body.top_p is None else body.top_p
        sequence = new_sequence(ids, min(limit, room), temperature, top_p, body.top_k, body.ignore_eos)
        text = TextStream(tokenizer, body.stop_strings())
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def usage():
            completion = len(sequence.output_ids)
            return {"prompt_tokens": len(ids), "completion_tokens": completion, "total_tokens": len(ids) + completion}

        if not body.stream:
            finish = await generate(request, sequence, text)
            note(request, sequence, finish, query, text.text)
            return {"id": reply_id, "created": created, "model": model_name, "usage": usage(),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text.text},
                                 "finish_reason": finish}]}

        def event(payload) -> str:
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        def chunk(delta, finish=None):
            return event({"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        watcher = submit(request, sequence)  # before the response starts, so that a full queue is a 503

        async def events():
            try:
                yield chunk({"role": "assistant", "content": ""})
                async with contextlib.aclosing(follow(engine, sequence)) as updates:
                    async for _ in updates:
                        piece = text.update(sequence.output_ids)
                        if piece:
                            yield chunk({"content": piece})
                        if text.stopped:
                            break
                try:
                    piece, finish = outcome(sequence, text)
                except ApiError as exc:  # the status line is sent already: say it in the stream
                    request.state.log = exc.message
                    yield event({"error": {"message": exc.message, "type": "server_error", "param": None,
                                           "code": exc.status}})
                else:
                    if piece:
                        yield chunk({"content": piece})
                    yield chunk({}, finish)
                    if body.stream_options and body.stream_options.include_usage:
                        yield event({"id": reply_id, "object": "chat.completion.chunk", "created": created,
                                     "model": model_name, "choices": [], "usage": usage()})
                    note(request, sequence, finish, query, text.text)
                yield "data: [DONE]\n\n"
            finally:
                watcher.cancel()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/models", response_model=ModelList)
    async def models():
        return {"data": [{"id": model_name, "created": started}]}

    @app.get("/health")
    async def health():
        """Liveness and load: requests generating or waiting, and the engine's counters since start."""
        stats = engine.stats()
        return {"status": "ok", "model": model_name, "queued_requests": stats["running"] + stats["waiting"],
                "engine": stats}

    return app
