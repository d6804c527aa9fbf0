"""LoRA adapters (through peft) on ChatGLM models, quantized or not.

An adapter is a folder in peft's standard layout (`adapter_config.json` + `adapter_model.safetensors`), as
`ptuning/main.py --lora_rank R` writes it; `peft.PeftModel.from_pretrained(model, folder)` loads it on a
full-precision model. This module adds what plain peft lacks for this model:

* our INT4/INT8 block layers (`QuantizedLinear`) are not `nn.Linear`, so peft would refuse to wrap them;
  `QuantizedLoraLinear` is peft's LoRA layer over one (the integer weight stays frozen and quantized, the
  adapter is float), registered through peft's custom-module mapping by `lora_config` / `apply_lora`;
* `apply_lora` checks an adapter against the model first, so that one made for another base model, or for
  layers this model lacks, fails with one line (`LoraError`) instead of a size-mismatch traceback;
* several adapters at once, merged into the weights or applied live; `merge_to_checkpoint` writes the merged
  model as an ordinary checkpoint folder.
"""

import json
import os

import torch

from .entrypoints.errors import UserError
from .quantization import QuantizedLinear

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
DEFAULT_TARGET = "query_key_value"  # peft's default target for chatglm


class LoraError(UserError, ValueError):
    """An adapter that cannot be used with this model (one line saying why)."""


def _peft():
    try:
        import peft
    except ImportError:
        raise LoraError("LoRA needs peft: pip install peft (it comes with `pip install -e .`)") from None
    return peft


def _quantized_lora_class():
    from peft.tuners.lora.layer import Linear as LoraLinear

    class QuantizedLoraLinear(LoraLinear):
        """peft's LoRA Linear over a QuantizedLinear: the base computes with its integer weight as always (its
        dequantized weight while autograd records), and the float adapter adds its low-rank product."""

        def _get_in_out_features(self, module):
            return module.in_features, module.out_features

        def merge(self, safe_merge=False, adapter_names=None):
            # Adding the update to integer weights would re-quantize it away; merge on the float model instead.
            raise LoraError("a LoRA adapter cannot be merged into an INT4/INT8 model; apply it live, or merge it "
                            "into the full-precision model and quantize after")

    return QuantizedLoraLinear


def parse_targets(targets):
    """`query_key_value,dense_h_to_4h` (or a list) -> ["query_key_value", "dense_h_to_4h"]."""
    if isinstance(targets, str):
        targets = targets.split(",")
    names = [name.strip() for name in targets if name.strip()]
    if not names:
        raise LoraError("--lora_target names no layer; e.g. query_key_value or query_key_value,dense_h_to_4h")
    return names


def lora_config(rank, alpha=None, dropout=0.0, targets=DEFAULT_TARGET):
    """peft's LoraConfig for ChatGLM (alpha defaults to 2 x rank), able to wrap quantized layers too."""
    peft = _peft()
    if rank < 1:
        raise LoraError(f"--lora_rank must be at least 1, not {rank}")
    config = peft.LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, lora_dropout=dropout,
                             target_modules=parse_targets(targets), bias="none")
    return _with_quantized_layers(config)


def _with_quantized_layers(config):
    config._register_custom_module({QuantizedLinear: _quantized_lora_class()})
    return config


def add_lora(model, rank, alpha=None, dropout=0.0, targets=DEFAULT_TARGET):
    """`model` wrapped in a peft model with a new trainable adapter; everything else frozen."""
    peft = _peft()
    config = lora_config(rank, alpha, dropout, targets)
    _check_targets_exist(model, config.target_modules, "--lora_target")
    return peft.get_peft_model(model, config)


def _check_targets_exist(model, targets, what):
    names = {name.rpartition(".")[2] for name, _ in model.named_modules()}
    missing = sorted(set(targets) - names)
    if missing:
        layers = sorted({n.rpartition(".")[2] for n, m in model.named_modules()
                         if isinstance(m, (torch.nn.Linear, QuantizedLinear))})
        raise LoraError(f"{what}: this model has no layer named {', '.join(missing)} "
                        f"(its linear layers: {', '.join(layers)})")


def read_adapter(path):
    """(peft config dict, {key: shape}) of an adapter folder, or LoraError saying what is wrong with it."""
    if not os.path.isdir(path):
        raise LoraError(f"--lora {path}: no such folder")
    config_path = os.path.join(path, ADAPTER_CONFIG)
    weights = [os.path.join(path, name) for name in ADAPTER_WEIGHTS if os.path.isfile(os.path.join(path, name))]
    if not os.path.isfile(config_path) or not weights:
        raise LoraError(f"--lora {path}: not a LoRA adapter folder (needs {ADAPTER_CONFIG} and "
                        f"{ADAPTER_WEIGHTS[0]}, as ptuning/main.py --lora_rank writes them)")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        if weights[0].endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(weights[0], "pt") as f:
                shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        else:
            shapes = {k: tuple(v.shape) for k, v in torch.load(weights[0], map_location="cpu",
                                                               weights_only=True).items()}
    except (OSError, ValueError, RuntimeError) as exc:
        raise LoraError(f"--lora {path}: cannot read the adapter ({exc})") from None
    if config.get("peft_type") != "LORA":
        raise LoraError(f"--lora {path}: a {config.get('peft_type')} adapter, not LoRA")
    return config, shapes


def check_adapter(model, path):
    """Read the adapter at `path` and check it fits `model` (layers, shapes, rank); returns its config dict."""
    config, shapes = read_adapter(path)
    modules = dict(model.named_modules())
    rank = config.get("r")
    for key, shape in shapes.items():
        # peft's keys: base_model.model.<module>.lora_A.weight ([rank, in]) / lora_B.weight ([out, rank])
        module_name, _, part = key.removeprefix("base_model.model.").rpartition(".lora_")
        layer = modules.get(module_name)
        if layer is None:
            raise LoraError(f"--lora {path}: made for another model (this one has no layer {module_name})")
        expected = (rank, layer.in_features) if part.startswith("A") else (layer.out_features, rank)
        if shape != expected:
            base = config.get("base_model_name_or_path") or "another model"
            raise LoraError(f"--lora {path}: made for another base model ({base}): {key} has shape {list(shape)}, "
                            f"this model needs {list(expected)} for rank {rank}")
    return config


def apply_lora(model, paths, merge=True):
    """`model` with the LoRA adapters of `paths` (folders) applied, all of them at once. merge=True adds them
    into the weights (as fast as the base; impossible on an INT4/INT8 model); merge=False keeps peft's LoRA
    layers inside the model, which apply them live. Either way the result is the model itself (not a peft
    wrapper), so that generate(), chat() and the server use it as any other."""
    peft = _peft()
    from peft.utils import set_peft_model_state_dict

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    quantized = any(isinstance(m, QuantizedLinear) for m in model.modules())
    if merge and quantized:
        raise LoraError("a LoRA adapter cannot be merged into an INT4/INT8 model; apply it live (--lora-live), "
                        "or merge into the full-precision model and quantize after")
    names = []
    for index, path in enumerate(map(str, paths)):
        check_adapter(model.get_base_model() if index else model, path)
        config = _with_quantized_layers(peft.LoraConfig.from_pretrained(path))
        config.inference_mode = True
        name = f"adapter{index}"
        if index == 0:
            model = peft.PeftModel.from_pretrained(model, path, adapter_name=name, config=config)
        else:
            model.add_adapter(name, config)
            set_peft_model_state_dict(model, _load_weights(path), adapter_name=name)
        names.append(name)
    model.base_model.set_adapter(names)
    model.eval()
    if merge:
        return model.merge_and_unload(adapter_names=names)
    return model.get_base_model()


def _load_weights(path):
    file = next(os.path.join(path, n) for n in ADAPTER_WEIGHTS if os.path.isfile(os.path.join(path, n)))
    if file.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(file)
    return torch.load(file, map_location="cpu", weights_only=True)


def merge_to_checkpoint(model_path, adapter_paths, output_dir, tokenizer=None):
    """Write the base model at `model_path` with the adapters merged, as a complete checkpoint folder
    (safetensors, config, tokenizer, model code) that loads like any other. Nothing is left at `output_dir`
    if anything fails."""
    import shutil
    import tempfile

    from .export import export_checkpoint
    from .modeling_chatglm import ChatGLMForConditionalGeneration
    from .tokenization_chatglm import ChatGLMTokenizer

    if os.path.exists(output_dir):
        raise LoraError(f"--output {output_dir} exists already; choose a new folder")
    model = ChatGLMForConditionalGeneration.from_pretrained(model_path)
    if int(model.config.quantization_bit or 0):
        raise LoraError(f"{model_path} is stored quantized: merge into the full-precision model, then quantize")
    merged = apply_lora(model, adapter_paths, merge=True)
    tokenizer = tokenizer or ChatGLMTokenizer.from_pretrained(model_path)
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".merging-", dir=parent)
    try:
        export_checkpoint(merged, tokenizer, staging)
        os.replace(staging, output_dir)  # whole folder or none
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir
