"""Write a self-contained checkpoint folder: weights, config with `auto_map`, tokenizer and the model
code, so that `AutoModel.from_pretrained(folder, trust_remote_code=True)` works without this package."""

import os
import shutil

from safetensors.torch import load_file, save_file

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# every module the model and tokenizer import (relative imports), and the C source of the CPU kernels, so the
# folder works on its own
CODE_FILES = ("configuration_chatglm.py", "tokenization_chatglm.py", "modeling_chatglm.py", "generation.py",
              "positions.py", "quantization.py", "cpu_features.py", "cpu_kernels.py", "cpu_kernels.c",
              "torch_fallback.py", "streaming_load.py", "checkpoint_reader.py", "huge_pages.py", "sampling.py",
              "kv_cache.py", "linear.py")
AUTO_MAP = {
    "AutoConfig": "configuration_chatglm.ChatGLMConfig",
    "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
}
TOKENIZER_AUTO_MAP = {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}


def export_checkpoint(model, tokenizer, out_dir, weights_dtype=None, link_code=False, **save_kwargs):
    """Save `model` and `tokenizer` to `out_dir` in the original layout plus our code files.

    weights_dtype: store floating-point weights in this dtype (e.g. torch.float16 to halve the size)
        while config.json keeps the model's compute dtype, which loading restores.
    link_code: symlink the code files to this package instead of copying them (for checkpoints
        kept inside this repository, so the code exists once).
    save_kwargs: passed to `model.save_pretrained` (e.g. max_shard_size, safe_serialization).
    """
    os.makedirs(out_dir, exist_ok=True)
    model.config.auto_map = dict(AUTO_MAP)
    model.save_pretrained(out_dir, **save_kwargs)
    if weights_dtype is not None:
        _cast_safetensors(out_dir, weights_dtype)

    tokenizer.init_kwargs["auto_map"] = dict(TOKENIZER_AUTO_MAP)
    tokenizer.save_pretrained(out_dir)

    for name in CODE_FILES:
        source, target = os.path.join(PACKAGE_DIR, name), os.path.join(out_dir, name)
        if os.path.lexists(target):
            os.remove(target)
        if link_code:
            os.symlink(os.path.relpath(source, out_dir), target)
        else:
            shutil.copyfile(source, target)
    return out_dir


def _cast_safetensors(out_dir, dtype):
    files = [f for f in os.listdir(out_dir) if f.endswith(".safetensors")]
    if not files:
        raise ValueError("weights_dtype needs safetensors weights (safe_serialization=True)")
    for name in files:
        path = os.path.join(out_dir, name)
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(path).items()}
        save_file(tensors, path, metadata={"format": "pt"})
