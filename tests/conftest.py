"""Shared fixtures.

``tiny_checkpoint``  a random 2-layer ChatGLM (hidden 64) saved with save_pretrained into a temporary folder,
                     with the goldens' small tokenizer (tests/goldens/tokenizer). Session-scoped; read-only.
``door_checkpoint``  what the front-door tests load: the bundled demo checkpoint (chatglm.DEMO_MODEL_PATH).
``api_server``       api.py serving ``door_checkpoint`` as a real server process on a free port (session-scoped).

``TEST_THREADS``     torch threads of every test process (this one and the scripts it starts): the cores shared out
                     between pytest-xdist's workers (`-n 2`), so that two workers' threads do not spin against
                     each other; at most 2, the protocol of the scripts' defaults.

``@pytest.mark.requires_cpu_kernels``  skips a test, with the reason, where the C kernels of chatglm/cpu_kernels.py
                     cannot be built (no compiler, not x86-64, CHATGLM_CPU_KERNELS=0, a build that failed).
"""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Outputs recorded from the original ChatGLM-6B code (see tests/goldens/README.md). They live in the
# repository so that a plain clone runs every comparison; a missing file fails the test that reads it.
GOLDENS_DIR = Path(__file__).resolve().parent / "goldens"


# The special ids of the goldens' tokenizer (tests/goldens/tokenizer), which most small test models share.
GOLDENS_VOCAB_SIZE = 10310
MASK, GMASK, SOP, EOP, PAD = 9966, 9967, 9970, 9971, 3

TEST_THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


def pytest_configure(config):
    import torch

    torch.set_num_threads(TEST_THREADS)


def tiny_config(**overrides):
    """The one small ChatGLM configuration the tests build on: 2 layers, hidden 64, 4 heads, the goldens'
    tokenizer's vocabulary and special ids. Tests that need another shape pass only what differs."""
    import chatglm

    values = dict(vocab_size=GOLDENS_VOCAB_SIZE, hidden_size=64, inner_hidden_size=256, num_layers=2,
                  num_attention_heads=4, max_sequence_length=512, bos_token_id=SOP, eos_token_id=EOP,
                  mask_token_id=MASK, gmask_token_id=GMASK, pad_token_id=PAD)
    values.update(overrides)
    if "hidden_size" in overrides and "inner_hidden_size" not in overrides:
        values["inner_hidden_size"] = 4 * values["hidden_size"]
    return chatglm.ChatGLMConfig(**values)


def cpu_kernels_missing():
    """Why the C kernels are not available in this process, or None where they are."""
    from chatglm import cpu_kernels

    if cpu_kernels.library() is not None:
        return None
    return cpu_kernels.unavailable_reason() or "the C kernels failed to build (see the logged warning)"


def pytest_collection_modifyitems(config, items):
    """For pytest-xdist's `--dist loadgroup` (pyproject.toml): a module's tests run on one worker, so that its
    module-scoped servers and models start once, and the modules that share the session's api.py server run on
    one worker with it."""
    modules_on_the_shared_server = {item.module.__name__ for item in items if "api_server" in item.fixturenames}
    for item in items:
        module = item.module.__name__
        item.add_marker(pytest.mark.xdist_group("api_server" if module in modules_on_the_shared_server else module))


def pytest_runtest_setup(item):
    if item.get_closest_marker("requires_cpu_kernels"):
        reason = cpu_kernels_missing()
        if reason:
            pytest.skip(f"no C kernels here: {reason}")


def build_tiny_checkpoint(folder, *, num_layers=2, hidden_size=64, num_attention_heads=4, seed=0):
    """Write a random small ChatGLM checkpoint (model + tokenizer) into ``folder`` and return its path."""
    import torch

    import chatglm

    tokenizer = chatglm.ChatGLMTokenizer.from_pretrained(str(GOLDENS_DIR / "tokenizer"))
    config = tiny_config(num_layers=num_layers, hidden_size=hidden_size, num_attention_heads=num_attention_heads)
    torch.manual_seed(seed)
    model = chatglm.ChatGLMForConditionalGeneration(config).eval()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)


def greedy_answer(model, tokenizer, query, max_length):
    """What model.chat(tokenizer, query, history=[], do_sample=False) must answer, computed through
    generate() alone."""
    from chatglm.generation import process_response

    inputs = tokenizer([query], return_tensors="pt")
    output = model.generate(**inputs, max_length=max_length, do_sample=False)
    return process_response(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:].tolist()))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-chatglm"))


@pytest.fixture(scope="session")
def door_checkpoint():
    import chatglm

    return chatglm.DEMO_MODEL_PATH


@pytest.fixture(scope="session")
def door_model(door_checkpoint):
    """(tokenizer, model) of ``door_checkpoint`` loaded in this process, for computing expected answers."""
    from chatglm.entrypoints.loader import load_model_and_tokenizer

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
        "OMP_NUM_THREADS": str(TEST_THREADS),
        "TOKENIZERS_PARALLELISM": "false",
    })
    return env


@pytest.fixture(scope="session")
def api_server(door_checkpoint, script_env):
    from _doors import ServerProcess, free_port

    with ServerProcess("api.py", ["--model", door_checkpoint, "--device", "cpu"], free_port(), script_env,
                       ready_path="/health") as proc:
        yield proc
