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
import dataclasses
import logging
import os

from chatglm.entrypoints.cli import add_model_args, add_server_args, bounded, run_script
from chatglm.entrypoints.loader import load_model_and_tokenizer
from chatglm.serving import default_engine_threads
from chatglm.serving.app import create_app
from chatglm.serving.server import serve
from chatglm.serving.settings import ServerSettings


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
    server.add_argument("--threads", type=bounded(int, 1), default=default_engine_threads(), metavar="N",
                        help="CPU threads that generate (default: all cores but one, %(default)s here: the HTTP "
                             "side needs a core of its own, and generation threads sharing a core with it stall "
                             "at every step)")
    limits = parser.add_argument_group("limits (each refusal says which flag to raise)")
    limits.add_argument("--max-batch-size", type=bounded(int, 1), default=defaults.max_batch_size, metavar="N",
                        help=f"requests generated together (default: {defaults.max_batch_size})")
    limits.add_argument("--max-queue", type=bounded(int, 1), default=defaults.max_queue, metavar="N",
                        help=f"requests waiting for a place in the batch; more get 503 (default: {defaults.max_queue})")
    limits.add_argument("--prefill-chunk-tokens", type=bounded(int, 1), default=defaults.prefill_chunk_tokens,
                        metavar="N", help="prompt tokens a joining request prefills between two steps of the "
                                          "running answers, which wait meanwhile; a longer prompt joins over "
                                          f"several steps (default: {defaults.prefill_chunk_tokens})")
    limits.add_argument("--max-body-bytes", type=bounded(int, 1), default=defaults.max_body_bytes, metavar="N",
                        help=f"largest request body; larger gets 413 and the connection is closed "
                             f"(default: {defaults.max_body_bytes})")
    limits.add_argument("--max-prompt-tokens", type=bounded(int, 1), default=None, metavar="N",
                        help="longest prompt, in tokens, after the oldest history rounds are left out to fit it; "
                             "a question alone longer gets 413 (default: the model's context)")
    limits.add_argument("--max-answer-tokens", type=bounded(int, 1), default=None, metavar="N",
                        help="longest answer, in tokens, whatever a request asks (its finish reason is then "
                             "\"length\"; default: what the request's max_length or max_tokens leaves)")
    limits.add_argument("--request-timeout", type=bounded(float, 0.1), default=defaults.request_timeout,
                        metavar="SECONDS", help="time for a request's headers, and again for its body; a slower "
                                                f"client gets 408 and is disconnected (default: "
                                                f"{defaults.request_timeout:g})")
    limits.add_argument("--max-connections", type=bounded(int, 1), default=defaults.max_connections, metavar="N",
                        help=f"open connections served at once; a request on one more gets 503 "
                             f"(default: {defaults.max_connections})")
    limits.add_argument("--keep-alive-timeout", type=bounded(float, 0.1), default=defaults.keep_alive_timeout,
                        metavar="SECONDS", help=f"how long an idle connection stays open between requests "
                                                f"(default: {defaults.keep_alive_timeout:g})")
    limits.add_argument("--drain-seconds", type=bounded(float, 0), default=defaults.drain_seconds,
                        metavar="SECONDS", help="on SIGTERM or Ctrl-C: how long running answers may go on; then "
                                                "each is cut and ended properly, and the server exits "
                                                f"(default: {defaults.drain_seconds:g})")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tokenizer, model = load_model_and_tokenizer(args)
    # every other flag is named after the setting it sets
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerSettings) if hasattr(args, f.name)}
    settings = ServerSettings(**{**given, "api_key": args.api_key or None, "cors_origins": args.cors_origin})
    serve(create_app(tokenizer, model, settings, model_name=served_model_name(args.model)), settings,
          args.host, args.port)


if __name__ == "__main__":
    run_script(main)
