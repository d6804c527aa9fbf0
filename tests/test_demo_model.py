"""The bundled demo checkpoint `chatglm-demo/`: complete, small, loads through our package and through
`trust_remote_code=True` alone, and chats sensibly in both languages (greedy)."""

import collections
import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO_ROOT, TEST_THREADS

DEMO = REPO_ROOT / "chatglm-demo"

REQUIRED = ["config.json", "generation_config.json", "tokenizer_config.json", "ice_text.model", "model.safetensors",
            "README.md", "configuration_chatglm.py", "modeling_chatglm.py", "tokenization_chatglm.py",
            "quantization.py"]


def cjk(text):
    return sum(1 for c in text if "\u4e00" <= c <= "\u9fff")


def latin(text):
    return sum(1 for c in text if c.isascii() and c.isalpha())


def check_answer(answer, chinese, tokenizer):
    assert answer.strip(), "empty answer"
    if chinese:
        assert cjk(answer) >= 2, f"expected a Chinese answer, got {answer!r}"
    else:
        assert latin(answer) >= 2 and cjk(answer) <= 0.5 * (cjk(answer) + latin(answer)), \
            f"expected an English answer, got {answer!r}"
    ids = tokenizer.encode(answer, add_special_tokens=False)
    worst = max(collections.Counter(zip(ids, ids[1:])).values(), default=0)
    assert worst <= 4, f"degenerate answer (a bigram repeats {worst} times): {answer!r}"


@pytest.fixture(scope="module")
def loaded():
    from transformers import AutoModel, AutoTokenizer

    import chatglm  # noqa: F401  (registers the Auto classes)

    tokenizer = AutoTokenizer.from_pretrained(str(DEMO))
    model = AutoModel.from_pretrained(str(DEMO)).eval()
    return tokenizer, model


def test_folder_contents():
    for name in REQUIRED:
        assert (DEMO / name).exists(), name
    size = sum((DEMO / f).stat().st_size for f in os.listdir(DEMO) if (DEMO / f).is_file())
    assert size <= 30 * 1024 * 1024, f"checkpoint folder is {size / 1e6:.1f} MB"
    config = json.loads((DEMO / "config.json").read_text())
    assert config["model_type"] == "chatglm"
    assert config["auto_map"]["AutoModel"] == "modeling_chatglm.ChatGLMForConditionalGeneration"
    assert config["position_encoding_2d"] is True
    assert (config["hidden_size"] // config["num_attention_heads"]) % 4 == 0
    tok_config = json.loads((DEMO / "tokenizer_config.json").read_text())
    assert tok_config["auto_map"]["AutoTokenizer"][0] == "tokenization_chatglm.ChatGLMTokenizer"
    assert "Apache-2.0" in (DEMO / "README.md").read_text()


def test_special_ids_match_tokenizer(loaded):
    tokenizer, model = loaded
    ids = tokenizer.convert_tokens_to_ids
    config = model.config
    assert config.vocab_size == tokenizer.vocab_size
    assert (config.bos_token_id, config.eos_token_id, config.mask_token_id, config.gmask_token_id,
            config.pad_token_id) == (ids("<sop>"), ids("<eop>"), ids("[MASK]"), ids("[gMASK]"), 3)


@pytest.mark.slow
@pytest.mark.parametrize("query,chinese", [
    ("你好", True),
    ("你是谁？", True),
    ("怎么启动 API 服务？", True),
    ("Hello", False),
    ("Who are you?", False),
    ("How do I run the tests?", False),
])
def test_single_round(loaded, query, chinese):
    tokenizer, model = loaded
    answer, history = model.chat(tokenizer, query, history=[], do_sample=False, max_length=256)
    check_answer(answer, chinese, tokenizer)
    assert history == [(query, answer)]


@pytest.mark.slow
def test_multi_round_both_languages(loaded):
    tokenizer, model = loaded
    history = []
    for query in ["你好", "怎么量化模型？", "谢谢"]:
        answer, history = model.chat(tokenizer, query, history=history, do_sample=False, max_length=512)
        check_answer(answer, True, tokenizer)
    history = []
    for query in ["Hi!", "How do I start the web demo?", "Thanks"]:
        answer, history = model.chat(tokenizer, query, history=history, do_sample=False, max_length=512)
        check_answer(answer, False, tokenizer)
    assert len(history) == 3


@pytest.mark.slow
def test_trust_remote_code_without_our_package(tmp_path):
    """Exactly the model-card snippet, in a fresh interpreter that cannot import this repository."""
    script = textwrap.dedent(f"""
        import importlib.util, os, sys
        # The repository is installed here (pip install -e .): hide it, as on a machine that has only the
        # checkpoint folder.
        sys.meta_path = [f for f in sys.meta_path if not f.__module__.startswith("__editable__")]
        sys.path = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "chatglm"))]
        assert importlib.util.find_spec("chatglm") is None, "the chatglm package must not be importable here"
        import torch
        torch.set_num_threads(2)
        from transformers import AutoModel, AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained({str(DEMO)!r}, trust_remote_code=True)
        model = AutoModel.from_pretrained({str(DEMO)!r}, trust_remote_code=True)
        response, history = model.chat(tokenizer, "你好", history=[], do_sample=False)
        print("RESPONSE=" + response)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
                "OMP_NUM_THREADS": str(TEST_THREADS), "PYTHONIOENCODING": "utf-8"})
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESPONSE=")]
    assert lines, result.stdout[-2000:]
    answer = lines[-1][len("RESPONSE="):]
    assert answer.strip() and cjk(answer) >= 2, answer
