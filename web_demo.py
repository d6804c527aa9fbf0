"""Chat with ChatGLM-6B in the browser (gradio).

    python web_demo.py                           # http://127.0.0.1:7860, bundled demo checkpoint
    python web_demo.py --model THUDM/chatglm-6b --host 0.0.0.0 --port 7860
    python web_demo.py --share                   # also a temporary public gradio.live link

The page itself is built by ``chatglm.entrypoints.webui.build_demo`` (shared with ``ptuning/web_demo.py``).
"""

import argparse

from chatglm.entrypoints.cli import add_model_args, add_server_args, bounded, run_script
from chatglm.entrypoints.loader import load_model_and_tokenizer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Chat with ChatGLM-6B in the browser.")
    add_model_args(parser)
    server = add_server_args(parser, default_port=None, title="web server")
    server.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    server.add_argument("--max-batch-size", "--concurrency", type=bounded(int, 1), default=8, metavar="N",
                        help="answers generated at the same time, batched together; others wait in the queue "
                             "(default: 8)")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    tokenizer, model = load_model_and_tokenizer(args)
    from chatglm.entrypoints.webui import build_demo, launch

    demo = build_demo(tokenizer, model, max_batch_size=args.max_batch_size)
    launch(demo, host=args.host, port=args.port, share=args.share, max_batch_size=args.max_batch_size)


if __name__ == "__main__":
    run_script(main)
