"""Command-line flags shared by the examples (kept tiny on purpose: the examples show the model API)."""

import argparse

import chatglm  # registers ChatGLM with the transformers Auto classes


def parse_args(description, **defaults):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=chatglm.DEMO_MODEL_PATH,
                        help="hub id (e.g. THUDM/chatglm-6b) or local folder; default: the bundled demo checkpoint")
    parser.add_argument("--max-length", type=int, default=defaults.get("max_length", 256))
    return parser.parse_args()
