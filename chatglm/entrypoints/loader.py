"""Loading ``(tokenizer, model)`` the way the scripts' model flags (``chatglm.entrypoints.cli.add_model_args``) ask:
which checkpoint, on which device, in which dtype, quantized or split over several GPUs.

Problems a user can fix (a missing folder, a hub id that is not downloaded, no GPU, ...) raise
``ModelLoadError`` whose message is one line saying what to do.
"""

import argparse
import os
import sys
import time

import torch

from ..modeling_chatglm import ChatGLMForConditionalGeneration
from ..tokenization_chatglm import ChatGLMTokenizer
from .errors import ModelLoadError
from .hub import REAL_MODEL_ID, explain_failure, hub_load_options, resolve_model_path
from .multi_gpu import load_model_on_gpus

DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}

# what from_pretrained raises for a checkpoint it cannot read
LOAD_ERRORS = (OSError, ValueError, ImportError, KeyError, RuntimeError)


def log(message):
    # Status lines go to stderr so that piped stdout carries only the answers.
    print(message, file=sys.stderr, flush=True)


def pick_device(requested="auto"):
    """Resolve ``auto`` to cuda, then mps, then cpu; check that an explicit choice exists here."""
    requested = (requested or "auto").lower()
    mps_ok = torch.backends.mps.is_available()
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"--device {requested} was asked for but PyTorch sees no CUDA GPU here "
                f"(torch {torch.__version__}); install a CUDA build of torch or use --device cpu")
        if ":" in requested and int(requested.split(":", 1)[1]) >= torch.cuda.device_count():
            raise ModelLoadError(
                f"--device {requested} was asked for but only {torch.cuda.device_count()} "
                f"CUDA device(s) are visible; use an index below {torch.cuda.device_count()}")
        return requested
    if requested == "mps" and not mps_ok:
        raise ModelLoadError("--device mps was asked for but this PyTorch has no usable MPS (Apple GPU) "
                             "backend; use --device cpu")
    return requested


def pick_dtype(dtype, device):
    """``auto`` is float32 on CPU and float16 on GPUs; otherwise any name of ``DTYPE_NAMES``."""
    if not dtype or dtype == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    return getattr(torch, DTYPE_NAMES.get(dtype, dtype))


def load_model_and_tokenizer(args=None, **overrides):
    """Load ``(tokenizer, model)`` as the model flags say; the model is in eval mode.

    ``args`` may be an ``argparse.Namespace``, a dict, or omitted; keyword overrides win
    (``model=``, ``device=``, ``dtype=``, ``quantize=``, ``num_gpus=``, ``lora=[paths]``, ``lora_live=``). Raises
    ``ModelLoadError`` (``LoraError`` for an adapter that does not fit)
    with a one-line explanation for anything the user has to fix.
    """
    settings = {"model": None, "device": "auto", "dtype": "auto", "quantize": None, "num_gpus": 1, "lora": None,
                "lora_live": False}
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    settings.update((key, value) for key, value in dict(args or {}, **overrides).items() if key in settings)
    num_gpus, quantize = int(settings["num_gpus"] or 1), settings["quantize"]

    path, is_demo = resolve_model_path(settings["model"])
    is_local = os.path.isdir(path)
    if is_demo:
        log(f"Using the bundled demo checkpoint ({path}), a small model for trying the tools whose answers "
            f"are only a demonstration; for the real ChatGLM-6B add --model {REAL_MODEL_ID} (about 13 GB of "
            f"GPU memory, or --quantize 4 for about 6 GB).")
    hub_options = {} if is_local else hub_load_options(path)

    if num_gpus > 1:
        if settings["device"] not in ("auto", "cuda"):
            raise ModelLoadError(f"--num-gpus {num_gpus} splits the model over CUDA GPUs; it cannot be "
                                 f"combined with --device {settings['device']}")
        if quantize:
            raise ModelLoadError("--quantize and --num-gpus > 1 cannot be combined; a quantized "
                                 "6B model fits on one GPU (int4 about 6 GB, int8 about 8 GB)")
        device = "cuda"
    else:
        device = pick_device(settings["device"])
    dtype = pick_dtype(settings["dtype"], device)
    if device == "cpu" and dtype == torch.float16:
        log("note: float16 on CPU is slow and some CPU kernels lack float16; float32 is the default there")

    started = time.time()
    log(f"Loading {path} on {device} ({str(dtype).replace('torch.', '')}"
        + (f", int{quantize}" if quantize else "")
        + (f", split over {num_gpus} GPUs" if num_gpus > 1 else "") + ") ...")
    try:
        tokenizer = ChatGLMTokenizer.from_pretrained(path, **hub_options)
        if num_gpus > 1:
            model = load_model_on_gpus(path, num_gpus=num_gpus, dtype=dtype, **hub_options)
        else:
            # quantized while loading: no full-precision copy of the model is ever held
            model = ChatGLMForConditionalGeneration.from_pretrained(path, dtype=dtype, quantization_bit=quantize,
                                                                    **hub_options)
            stored_bits = int(model.config.quantization_bit or 0)
            if quantize and stored_bits != quantize:
                log(f"note: {path} is stored quantized to int{stored_bits}; --quantize ignored")
            model = model.to(device)
    except torch.cuda.OutOfMemoryError:
        raise ModelLoadError(
            f"the GPU ran out of memory while loading {path}; try --quantize 4 (about 6 GB), "
            f"--num-gpus 2, or --device cpu") from None
    except LOAD_ERRORS as exc:
        raise explain_failure(path, is_local, exc) from None

    if settings["lora"]:
        model = _with_adapters(model, settings["lora"], live=settings["lora_live"])
    model.eval()
    log(f"Loaded in {time.time() - started:.1f}s.")
    return tokenizer, model


def _with_adapters(model, paths, live):
    from ..lora import apply_lora

    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    quantized = int(model.config.quantization_bit or 0)
    if quantized and not live:
        log(f"note: the model is int{quantized}; the LoRA adapters are applied live (merging needs the "
            "full-precision weights)")
    log(f"Applying LoRA adapter(s) {', '.join(map(str, paths))} "
        + ("live" if live or quantized else "merged into the weights") + " ...")
    return apply_lora(model, paths, merge=not (live or quantized))
