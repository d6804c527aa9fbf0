#!/usr/bin/env python3
"""Merge LoRA adapters into their base model and write the result as an ordinary checkpoint folder.

    python3 ptuning/merge_lora.py --model chatglm-demo --lora ptuning/output/adgen-demo-lora/checkpoint-100 \\
        --output merged/adgen-demo-lora

The folder (safetensors weights, config, tokenizer, model code) loads like any other: `--model merged/...` in
the scripts, `AutoModel.from_pretrained`, `--quantize 4` included. Nothing is left at --output if anything fails.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from chatglm.entrypoints.cli import run_script  # noqa: E402
from chatglm.entrypoints.hub import resolve_model_path  # noqa: E402
from chatglm.lora import merge_to_checkpoint  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description="Merge LoRA adapter(s) into a base model and save the merged "
                                                 "model as a complete checkpoint folder.")
    parser.add_argument("--model", required=True, metavar="ID_OR_FOLDER",
                        help="the base model the adapters were trained on (folder or hub id), full precision")
    parser.add_argument("--lora", nargs="+", required=True, metavar="PATH",
                        help="adapter folder(s) as ptuning/main.py --lora_rank saves them (checkpoint-N)")
    parser.add_argument("--output", required=True, metavar="FOLDER", help="new folder for the merged checkpoint")
    args = parser.parse_args(argv)
    path, _ = resolve_model_path(args.model)
    out = merge_to_checkpoint(path, args.lora, args.output)
    print(f"Merged {len(args.lora)} adapter(s) into {path}: {out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    run_script(main)
