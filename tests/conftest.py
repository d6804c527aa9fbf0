"""Shared fixtures.

``tiny_checkpoint``  a random 2-layer ChatGLM (hidden 64) saved with save_pretrained into a temporary folder,
                     with the reference tokenizer (../shared/reference/tokenizer) or, on a fresh clone without
                     it, the bundled demo checkpoint's tokenizer. Session-scoped; treat it as read-only.
``demo_checkpoint``  chatglm.DEMO_MODEL_PATH when the bundled checkpoint is there, else the test is skipped.
``door_checkpoint``  what the front-door tests load: the demo checkpoint when present, else the tiny one.
``api_server``       api.py serving ``door_checkpoint`` as a real server process on a free port (session-scoped).
"""

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def _has_checkpoint(path) -> bool:
    return path is not None and (Path(path) / "config.json").is_file()


def _tokenizer_source():
    import chatglm

    for candidate in (REFERENCE_DIR / "tokenizer", Path(chatglm.DEMO_MODEL_PATH)):
        if (candidate / "ice_text.model").is_file():
            return candidate
    return None


def build_tiny_checkpoint(folder, *, num_layers=2, hidden_size=64, num_attention_heads=4, seed=0):
    """Write a random small ChatGLM checkpoint (model + tokenizer) into ``folder`` and return its path."""
    import torch

    import chatglm

    source = _tokenizer_source()
    if source is None:
        pytest.skip("no SentencePiece model to build a tiny checkpoint (neither ../shared/reference/tokenizer "
                    "nor chatglm-demo/ is present)")
    tokenizer = chatglm.ChatGLMTokenizer.from_pretrained(str(source))
    ids = tokenizer.convert_tokens_to_ids
    config = chatglm.ChatGLMConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size,
        inner_hidden_size=4 * hidden_size,
        num_layers=num_layers,
        num_attention_heads=num_attention_heads,
        max_sequence_length=512,
        bos_token_id=ids("<sop>"),
        eos_token_id=ids("<eop>"),
        mask_token_id=ids("[MASK]"),
        gmask_token_id=ids("[gMASK]"),
        pad_token_id=ids("<pad>"),
    )
    torch.manual_seed(seed)
    model = chatglm.ChatGLMForConditionalGeneration(config).eval()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-chatglm"))


@pytest.fixture(scope="session")
def demo_checkpoint():
    import chatglm

    if not _has_checkpoint(chatglm.DEMO_MODEL_PATH):
        pytest.skip(f"the bundled demo checkpoint is not there yet ({chatglm.DEMO_MODEL_PATH})")
    return chatglm.DEMO_MODEL_PATH


@pytest.fixture(scope="session")
def door_checkpoint(request):
    import chatglm

    if _has_checkpoint(chatglm.DEMO_MODEL_PATH):
        return chatglm.DEMO_MODEL_PATH
    return request.getfixturevalue("tiny_checkpoint")


@pytest.fixture(scope="session")
def door_model(door_checkpoint):
    """(tokenizer, model) of ``door_checkpoint`` loaded in this process, for computing expected answers."""
    from chatglm.loader import load_model_and_tokenizer

    return load_model_and_tokenizer(model=door_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def script_env():
    """Environment for running the scripts as subprocesses: offline, unbuffered, few threads."""
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONUNBUFFERED": "1",
        "PYTHONIOENCODING": "utf-8",
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2"),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
    })
    return env


@pytest.fixture(scope="session")
def api_server(door_checkpoint, script_env):
    from _doors import ServerProcess, free_port

    with ServerProcess("api.py", ["--model", door_checkpoint, "--device", "cpu"], free_port(), script_env,
                       ready_path="/health") as proc:
        yield proc
