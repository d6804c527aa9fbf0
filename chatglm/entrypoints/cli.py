"""What the scripts share on the command line: the model flags, the server flags, range-checked numbers,
and ``run_script``, which turns an error the user can fix into one line on stderr and exit status 1."""

import argparse
import sys

from .errors import UserError
from .loader import DTYPE_NAMES


def bounded(kind, low, high=None):
    """An argparse ``type`` that parses ``kind`` (int or float) and checks ``low <= value <= high`` (no upper
    bound when ``high`` is None)."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            noun = "whole number" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"expected a {noun}, got {text!r}") from None
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"expected a number of at least {low}, got {value}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a value from {low} to {high}, got {value}")
        return value

    return parse


def dtype_name(value):
    key = value.strip().lower()
    if key != "auto" and key not in DTYPE_NAMES:
        raise argparse.ArgumentTypeError(f"unknown dtype {value!r}; choose auto, float32, float16 or bfloat16")
    return DTYPE_NAMES.get(key, key)


def device_name(value):
    key = value.strip().lower()
    if key in ("auto", "cpu", "mps", "cuda") or (key.startswith("cuda:") and key[5:].isdigit()):
        return key
    raise argparse.ArgumentTypeError(f"unknown device {value!r}; choose auto, cuda, cuda:N, mps or cpu")


def add_model_args(parser):
    """Add the model flags every script shares (in their own group) and return ``parser``; the parsed
    arguments go to ``chatglm.entrypoints.loader.load_model_and_tokenizer``."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", default=None, metavar="ID_OR_FOLDER",
        help=("model to load: a hub id such as THUDM/chatglm-6b (also THUDM/chatglm-6b-int4, "
              "THUDM/chatglm-6b-int8) or a local folder holding config.json and the weights; "
              "default: the small bundled demo checkpoint"))
    group.add_argument(
        "--device", default="auto", type=device_name, metavar="DEVICE",
        help="auto (cuda if available, then mps, then cpu), cuda, cuda:N, mps or cpu (default: auto)")
    group.add_argument(
        "--dtype", default="auto", type=dtype_name, metavar="DTYPE",
        help="auto (float16 on cuda/mps, float32 on cpu), float32, float16 or bfloat16 (default: auto)")
    group.add_argument(
        "--quantize", type=int, choices=(4, 8), default=None, metavar="{4,8}",
        help="quantize the weights to 4 or 8 bits while loading (less memory; about 6 / 8 GB for the 6B model)")
    group.add_argument(
        "--num-gpus", type=bounded(int, 1), default=1, metavar="N",
        help="split the model over N GPUs (default: 1)")
    group.add_argument(
        "--lora", nargs="+", action="extend", default=[], metavar="PATH",
        help="LoRA adapter folder(s) to apply (as ptuning/main.py --lora_rank saves them); several are applied "
             "together. Merged into the weights, or applied live with --quantize or --lora-live")
    group.add_argument(
        "--lora-live", action="store_true",
        help="keep the --lora adapters as separate layers instead of merging them (slower; the base unchanged)")
    return parser


def add_server_args(parser, *, default_port, title="server"):
    """Add ``--host`` (default 127.0.0.1) and ``--port`` for the scripts that serve over HTTP; returns the
    group so a script can add its own server flags to it."""
    group = parser.add_argument_group(title)
    group.add_argument("--host", default="127.0.0.1",
                       help="address to listen on; 0.0.0.0 makes it reachable from other machines "
                            "(default: 127.0.0.1, this machine only)")
    group.add_argument("--port", type=bounded(int, 1, 65535), default=default_port,
                       help=f"port (default: {default_port if default_port else '7860, or the next free one'})")
    return group


def run_script(main, *more_errors):
    """Call ``main()``. A ``UserError`` (or one of ``more_errors``) ends the script with its message as one
    ``error: ...`` line on stderr and exit status 1, instead of a traceback."""
    try:
        return main()
    except (UserError, *more_errors) as err:
        sys.exit(f"error: {err}")
