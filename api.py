"""HTTP API for ChatGLM-6B (FastAPI + uvicorn), with the original project's request/response contract.

    python api.py                                  # http://127.0.0.1:8000, bundled demo checkpoint
    python api.py --model THUDM/chatglm-6b --host 0.0.0.0 --port 8000   # reachable from other machines

    curl -X POST http://127.0.0.1:8000 -H 'Content-Type: application/json' \\
         -d '{"prompt": "你好", "history": []}'

``POST /`` takes ``{"prompt": str, "history": [[question, answer], ...], "max_length": int,
"top_p": float, "temperature": float}`` (the last three optional: 2048, 0.7, 0.95) and answers
``{"response": str, "history": [[question, answer], ...], "status": 200, "time": "YYYY-MM-DD HH:MM:SS"}``.
Bad input gets a 4xx JSON ``{"detail": "<what is wrong>", "status": <code>}``. ``GET /health`` reports
that the server is up; ``/docs`` is the interactive OpenAPI page.

Generation runs in one worker thread, so concurrent requests queue up (none is lost) while the server
keeps answering other requests.
"""

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List, Optional, Tuple

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from chatglm.cli import add_model_args, add_server_args, run_script
from chatglm.generation import DEFAULT_MAX_LENGTH, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, generation_options
from chatglm.loader import load_model_and_tokenizer

logger = logging.getLogger("chatglm.api")

MAX_LENGTH_LIMIT = 32768
TEMPERATURE_LIMIT = 100.0


class BadRequest(Exception):
    def __init__(self, detail: str, status: int = 422):
        super().__init__(detail)
        self.detail = detail
        self.status = status


def _number(body: dict, name: str, default: float, *, integer: bool, low: float, high: float,
            low_inclusive: bool = True) -> Any:
    if name not in body or body[name] is None:
        return default
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if integer else "a number"
        raise BadRequest(f"'{name}' must be {kind}, got {json.dumps(value, ensure_ascii=False)}")
    if not math.isfinite(value):
        raise BadRequest(f"'{name}' must be a finite number, got {value}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise BadRequest(f"'{name}' must be an integer, got {value}")
        value = int(value)
    too_low = value < low if low_inclusive else value <= low
    if too_low or value > high:
        lower = "<=" if low_inclusive else "<"
        raise BadRequest(f"'{name}' must satisfy {low:g} {lower} {name} <= {high:g}, got {value}")
    return value


def parse_chat_request(body: Any) -> Tuple[str, List[Tuple[str, str]], int, float, float]:
    """Validate a decoded JSON body; return (prompt, history, max_length, top_p, temperature)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object like "
                         "{\"prompt\": \"你好\", \"history\": []}", 400)
    if "prompt" not in body:
        raise BadRequest("'prompt' is missing: send {\"prompt\": \"your question\", \"history\": []}")
    prompt = body["prompt"]
    if not isinstance(prompt, str):
        raise BadRequest(f"'prompt' must be a string, got {type(prompt).__name__ if prompt is not None else 'null'}")
    history = body.get("history")
    if history is None:
        history = []
    if not isinstance(history, list):
        raise BadRequest("'history' must be a list of [question, answer] pairs of strings")
    pairs = []
    for index, turn in enumerate(history):
        if (not isinstance(turn, (list, tuple)) or len(turn) != 2
                or not all(isinstance(part, str) for part in turn)):
            raise BadRequest(f"'history' must be a list of [question, answer] pairs of strings; item {index} "
                             f"is {json.dumps(turn, ensure_ascii=False)[:200]}")
        pairs.append((turn[0], turn[1]))
    max_length = _number(body, "max_length", DEFAULT_MAX_LENGTH, integer=True, low=1, high=MAX_LENGTH_LIMIT)
    top_p = _number(body, "top_p", DEFAULT_TOP_P, integer=False, low=0.0, high=1.0)
    temperature = _number(body, "temperature", DEFAULT_TEMPERATURE, integer=False, low=0.0,
                          high=TEMPERATURE_LIMIT)
    return prompt, pairs, max_length, top_p, temperature


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail, "status": status}, status_code=status)


def create_app(tokenizer, model, *, model_name: Optional[str] = None) -> FastAPI:
    """Build the FastAPI application serving ``model``. Generation is serialized on one worker thread."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatglm-generate")

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="ChatGLM-6B API", lifespan=lifespan,
                  description="POST / with {\"prompt\", \"history\", \"max_length\", \"top_p\", \"temperature\"}.")
    app.state.executor = executor
    app.state.pending = 0
    name = model_name or getattr(getattr(model, "config", None), "_name_or_path", None) or "chatglm"

    def generate(prompt, history, max_length, top_p, temperature):
        response, new_history = model.chat(tokenizer, prompt, history=history,
                                           **generation_options(max_length, top_p, temperature))
        _free_gpu_cache()
        return response, new_history

    def rejected(request: Request, status: int, detail: str) -> JSONResponse:
        client = request.client.host if request.client else "-"
        logger.info("[%s] %s rejected %d: %s", _now(), client, status, detail)
        return _error(status, detail)

    @app.post("/")
    async def chat(request: Request):
        started = time.time()
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return rejected(request, 400, f"the request body is not valid JSON ({exc}); send "
                                          f"{{\"prompt\": \"your question\", \"history\": []}}")
        try:
            prompt, history, max_length, top_p, temperature = parse_chat_request(body)
        except BadRequest as exc:
            return rejected(request, exc.status, exc.detail)

        app.state.pending += 1
        try:
            loop = asyncio.get_running_loop()
            response, new_history = await loop.run_in_executor(
                executor, generate, prompt, history, max_length, top_p, temperature)
        except ValueError as exc:  # e.g. a prompt the model cannot take at this max_length
            return rejected(request, 422, f"cannot answer this request: {exc}")
        finally:
            app.state.pending -= 1
        now = _now()
        client = request.client.host if request.client else "-"
        logger.info("[%s] %s prompt=%r history_rounds=%d response=%r (%.2fs)", now, client, prompt,
                    len(history), response, time.time() - started)
        return {
            "response": response,
            "history": [[question, answer] for question, answer in new_history],
            "status": 200,
            "time": now,
        }

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "queued_requests": app.state.pending}

    return app


def _now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def _free_gpu_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve ChatGLM-6B over HTTP (POST / with a JSON prompt).")
    add_model_args(parser)
    add_server_args(parser, default_port=8000)
    return parser


def main(argv=None) -> None:
    import uvicorn

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tokenizer, model = load_model_and_tokenizer(args)
    app = create_app(tokenizer, model, model_name=args.model)
    # the app logs one line per request itself, so uvicorn's access log is off
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)


if __name__ == "__main__":
    run_script(main)
