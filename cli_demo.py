"""Chat with ChatGLM-6B in the terminal.

    python cli_demo.py                         # the bundled demo checkpoint
    python cli_demo.py --model THUDM/chatglm-6b --quantize 4

Type a message at the ``用户：`` prompt; the answer streams in. ``clear`` empties the history and the
screen, ``stop`` (or Ctrl-D) ends the program, Ctrl-C while an answer is being written stops that
answer only (at the prompt it drops the line typed so far). Arrow keys edit the line and walk through earlier inputs.

When stdin or stdout is not a terminal (``echo 你好 | python cli_demo.py``), every input line is one
message and the plain answers are printed one after another, for scripting. A line that cannot be answered
(not valid UTF-8, or too long for --max-length) gets a one-line message on stderr, and the session goes on.
"""

import argparse
import signal
import sys
import time

from chatglm.entrypoints.cli import add_model_args, bounded, run_script
from chatglm.entrypoints.loader import load_model_and_tokenizer
from chatglm.entrypoints.text import is_valid_text
from chatglm.generation import DEFAULT_MAX_LENGTH, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, generation_options

WELCOME = "欢迎使用 ChatGLM-6B 模型：输入内容即可对话，输入 clear 清空对话历史，输入 stop 退出程序。"
USER_TAG = "用户："
BOT_TAG = "ChatGLM-6B："
CLEAR_SCREEN = "\033[H\033[2J\033[3J"
REDRAW_INTERVAL_S = 0.05


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Chat with ChatGLM-6B in the terminal.")
    add_model_args(parser)
    gen = parser.add_argument_group("generation")
    gen.add_argument("--max-length", type=bounded(int, 1, 1 << 20), default=DEFAULT_MAX_LENGTH,
                     help="most tokens of prompt (with history) plus answer (default: %(default)s)")
    gen.add_argument("--top-p", type=bounded(float, 0.0, 1.0), default=DEFAULT_TOP_P,
                     help="nucleus sampling top p (default: %(default)s)")
    gen.add_argument("--temperature", type=bounded(float, 0.0, 100.0), default=DEFAULT_TEMPERATURE,
                     help="sampling temperature; 0 means greedy decoding (default: %(default)s)")
    return parser


def generation_kwargs(args) -> dict:
    return generation_options(args.max_length, args.top_p, args.temperature)


def render(history, welcome: str = WELCOME) -> str:
    """The whole conversation as the interactive screen shows it."""
    text = welcome
    for query, response in history:
        text += f"\n\n{USER_TAG}{query}\n\n{BOT_TAG}{response}"
    return text


def read_lines(stream):
    """(line number, text) of each line of a byte stream; a line that is not valid UTF-8 is reported on stderr
    and skipped, so the lines after it are still read."""
    for number, raw in enumerate(stream, start=1):
        try:
            yield number, raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as err:
            print(f"error: line {number} is not valid UTF-8 (byte {err.start + 1}); skipped", file=sys.stderr)


def _enable_line_editing() -> None:
    try:
        import readline  # noqa: F401  (importing it gives input() line editing and history)
    except ImportError:  # e.g. Windows without pyreadline
        pass


class _AnswerInterrupt:
    """While installed, the first Ctrl-C asks the current answer to stop at the next token; a second
    one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)
        return False


def interactive(model, tokenizer, args) -> None:
    # Ctrl-C at the prompt must work even when the parent ignored SIGINT (a child inherits that, and Python
    # then leaves it ignored instead of raising KeyboardInterrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _enable_line_editing()
    # Undecodable bytes reach us as lone surrogates (checked below) instead of raising inside input().
    sys.stdin.reconfigure(errors="surrogateescape")
    history = []
    out = sys.stdout
    out.write(CLEAR_SCREEN + WELCOME + "\n")
    out.flush()
    while True:
        try:
            query = input(f"\n{USER_TAG}")
        except EOFError:  # Ctrl-D
            out.write("\n")
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt drops the line typed so far
            out.write("\n")
            continue
        if not is_valid_text(query):
            out.write("error: the input is not valid UTF-8; type it again\n")
            continue
        command = query.strip()
        if command == "stop":
            return
        if command == "clear":
            history = []
            out.write(CLEAR_SCREEN + WELCOME + "\n")
            out.flush()
            continue
        if not command:
            continue
        new_history = history + [(query, "")]
        last_draw = 0.0
        with _AnswerInterrupt() as interrupt:
            try:
                for _response, new_history in model.stream_chat(tokenizer, query, history=history,
                                                                  **generation_kwargs(args)):
                    if interrupt.requested:
                        break
                    now = time.monotonic()
                    if now - last_draw >= REDRAW_INTERVAL_S:
                        out.write(CLEAR_SCREEN + render(new_history) + "\n")
                        out.flush()
                        last_draw = now
            except KeyboardInterrupt:
                pass
            except ValueError as err:  # the question does not fit --max-length
                out.write(f"error: {err}\n")
                continue
        history = [tuple(turn) for turn in new_history]
        out.write(CLEAR_SCREEN + render(history) + "\n")
        out.flush()


def batch(model, tokenizer, args) -> None:
    """Non-interactive use: one message per input line, the plain answer on stdout."""
    history = []
    for number, query in read_lines(sys.stdin.buffer):
        command = query.strip()
        if command == "stop":
            break
        if command == "clear":
            history = []
            continue
        if not command:
            continue
        try:
            response, history = model.chat(tokenizer, query, history=history, **generation_kwargs(args))
        except ValueError as err:  # the question does not fit --max-length
            print(f"error: line {number}: {err}", file=sys.stderr)
            continue
        sys.stdout.write(response + "\n")
        sys.stdout.flush()


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    tokenizer, model = load_model_and_tokenizer(args)
    if sys.stdin.isatty() and sys.stdout.isatty():
        interactive(model, tokenizer, args)
    else:
        batch(model, tokenizer, args)


if __name__ == "__main__":
    run_script(main)
