"""HTTP API for ChatGLM-6B (FastAPI + uvicorn): the original ``POST /`` and OpenAI-compatible routes.

    python api.py                                  # http://127.0.0.1:8000, bundled demo checkpoint
    python api.py --model THUDM/chatglm-6b --api-key SECRET --host 0.0.0.0   # reachable from other machines

    curl -X POST http://127.0.0.1:8000 -H 'Content-Type: application/json' \\
         -d '{"prompt": "你好", "history": []}'
    curl -N http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "chatglm", "messages": [{"role": "user", "content": "你好"}], "stream": true}'

Concurrent requests are answered together (continuous batching, see ``chatglm/serving/engine.py``); the
routes, checks and error shapes are in ``chatglm/serving/`` and the request fields in
``chatglm/serving/protocol.py`` (also at ``/docs``).
"""

import argparse
import logging
import os

from chatglm.cli import add_model_args, add_server_args, bounded, run_script
from chatglm.loader import load_model_and_tokenizer
from chatglm.serving import default_engine_threads
from chatglm.serving.app import ServerSettings, create_app

# how long a SIGTERM waits for the answers being generated before it cancels them
GRACEFUL_SHUTDOWN_SECONDS = 5


def served_model_name(model) -> str:
    """What /v1/models and the answers call the model: a hub id as is, a local folder by its name only."""
    if not model:
        return "chatglm-demo"
    return os.path.basename(os.path.normpath(model)) if os.path.isdir(os.path.expanduser(model)) else model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve ChatGLM-6B over HTTP: POST / and OpenAI-compatible "
                                                 "/v1/chat/completions.")
    add_model_args(parser)
    server = add_server_args(parser, default_port=8000)
    defaults = ServerSettings()
    server.add_argument("--api-key", default=os.environ.get("CHATGLM_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on every route except /health "
                             "(default: $CHATGLM_API_KEY; unset: no key)")
    server.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="let web pages from ORIGIN (e.g. https://example.com) call the API from a browser; "
                             "repeat for more (default: none, CORS off)")
    server.add_argument("--log-content", action="store_true",
                        help="log prompts and answers (default: only token counts and timings)")
    server.add_argument("--max-batch-size", type=bounded(int, 1), default=defaults.max_batch_size,
                        help=f"requests generated together (default: {defaults.max_batch_size})")
    server.add_argument("--max-queue", type=bounded(int, 1), default=defaults.max_queue,
                        help=f"requests waiting for a place in the batch; more get 503 (default: {defaults.max_queue})")
    server.add_argument("--max-body-bytes", type=bounded(int, 1), default=defaults.max_body_bytes,
                        help=f"largest request body; larger gets 413 (default: {defaults.max_body_bytes})")
    server.add_argument("--threads", type=bounded(int, 1), default=default_engine_threads(), metavar="N",
                        help="CPU threads that generate (default: all cores but one, %(default)s here: the HTTP "
                             "side needs a core of its own, and generation threads sharing a core with it stall "
                             "at every step)")
    return parser


def main(argv=None) -> None:
    import uvicorn

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tokenizer, model = load_model_and_tokenizer(args)
    settings = ServerSettings(api_key=args.api_key or None, cors_origins=args.cors_origin, log_content=args.log_content,
                              max_body_bytes=args.max_body_bytes, max_batch_size=args.max_batch_size,
                              max_queue=args.max_queue, threads=args.threads)
    app = create_app(tokenizer, model, settings, model_name=served_model_name(args.model))
    # the app logs one line per request itself, so uvicorn's access log is off
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)


if __name__ == "__main__":
    run_script(main)
