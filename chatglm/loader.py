"""Shared model loading for the command-line front doors (cli_demo.py, web_demo.py, api.py, ...).

Every script calls :func:`add_model_args` on its parser and :func:`load_model_and_tokenizer` with the
parsed arguments, so the flags below behave the same everywhere:

``--model``      hub id (e.g. ``THUDM/chatglm-6b``) or a local folder; default: the bundled demo checkpoint
``--device``     ``auto`` (cuda, then mps, then cpu), ``cuda``, ``cuda:N``, ``mps`` or ``cpu``
``--dtype``      ``auto`` (float16 on GPUs, float32 on CPU), ``float32``, ``float16`` or ``bfloat16``
``--quantize``   4 or 8: weight-only quantization applied after loading
``--num-gpus``   split the model over N GPUs (see :func:`load_model_on_gpus`)

Problems a user can fix (a missing folder, a hub id that is not downloaded, too few GPUs, ...) are raised
as :class:`ModelLoadError`, a ``SystemExit`` whose message is one line saying what to do: a script that
does not catch it prints that line and exits with status 1, without a traceback.

The multi-GPU helpers :func:`auto_configure_device_map` and :func:`load_model_on_gpus` live here too;
the top-level ``utils.py`` re-exports them under the names the original project used.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import time
from typing import Any, Dict, Mapping, Optional, Tuple, Union

REAL_MODEL_ID = "THUDM/chatglm-6b"

# generation defaults of every front door (the original's)
DEFAULT_MAX_LENGTH = 2048
DEFAULT_TOP_P = 0.7
DEFAULT_TEMPERATURE = 0.95

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

DOWNLOAD_HINT = (
    "download it first with `huggingface-cli download {model}` (or `git clone "
    "https://huggingface.co/{model}`) and pass --model /path/to/that/folder"
)


class ModelLoadError(SystemExit):
    """A problem the user can fix. ``str(err)`` is a single line that says what to do.

    It derives from ``SystemExit`` so that an uncaught one ends a script with that line on stderr and
    exit status 1 instead of a traceback. Library callers can catch it like any exception.
    """

    def __init__(self, message: str):
        super().__init__("error: " + message)
        self.message = message

    def __str__(self) -> str:
        return "error: " + self.message


def _log(message: str) -> None:
    # Status lines go to stderr so that piped stdout carries only the answers.
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# command-line flags
# --------------------------------------------------------------------------------------------------

def _dtype_arg(value: str) -> str:
    key = value.strip().lower()
    if key == "auto":
        return "auto"
    if key not in DTYPE_NAMES:
        raise argparse.ArgumentTypeError(
            f"unknown dtype {value!r}; choose auto, float32, float16 or bfloat16")
    return DTYPE_NAMES[key]


def _device_arg(value: str) -> str:
    key = value.strip().lower()
    if key in ("auto", "cpu", "mps", "cuda") or (key.startswith("cuda:") and key[5:].isdigit()):
        return key
    raise argparse.ArgumentTypeError(
        f"unknown device {value!r}; choose auto, cuda, cuda:N, mps or cpu")


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {number}")
    return number


def add_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the model flags shared by every script to ``parser`` (in their own group) and return it."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", default=None, metavar="ID_OR_FOLDER",
        help=("model to load: a hub id such as THUDM/chatglm-6b (also THUDM/chatglm-6b-int4, "
              "THUDM/chatglm-6b-int8) or a local folder holding config.json and the weights; "
              "default: the small bundled demo checkpoint"))
    group.add_argument(
        "--device", default="auto", type=_device_arg, metavar="DEVICE",
        help="auto (cuda if available, then mps, then cpu), cuda, cuda:N, mps or cpu (default: auto)")
    group.add_argument(
        "--dtype", default="auto", type=_dtype_arg, metavar="DTYPE",
        help="auto (float16 on cuda/mps, float32 on cpu), float32, float16 or bfloat16 (default: auto)")
    group.add_argument(
        "--quantize", type=int, choices=(4, 8), default=None, metavar="{4,8}",
        help="quantize the weights to 4 or 8 bits after loading (less memory; about 6 / 8 GB for the 6B model)")
    group.add_argument(
        "--num-gpus", type=_positive_int, default=1, metavar="N",
        help="split the model over N GPUs (default: 1)")
    return parser


def add_server_args(parser: argparse.ArgumentParser, *, default_port: Optional[int],
                    title: str = "server") -> argparse._ArgumentGroup:
    """Add ``--host`` (default 127.0.0.1) and ``--port`` for the scripts that serve over HTTP; returns the
    group so a script can add its own server flags to it."""
    group = parser.add_argument_group(title)
    group.add_argument("--host", default="127.0.0.1",
                       help="address to listen on; 0.0.0.0 makes it reachable from other machines "
                            "(default: 127.0.0.1, this machine only)")
    group.add_argument("--port", type=int, default=default_port,
                       help=f"port (default: {default_port if default_port else '7860, or the next free one'})")
    return group


def generation_options(max_length: int, top_p: float, temperature: float) -> Dict[str, Any]:
    """The front doors' generation settings as keyword arguments of ``chat``/``stream_chat``.
    Temperature 0 means greedy decoding (sampling at temperature 0 is undefined)."""
    options: Dict[str, Any] = {"max_length": max(1, int(max_length))}
    if float(temperature) <= 0:
        options["do_sample"] = False
    else:
        options.update(top_p=float(top_p), temperature=float(temperature))
    return options


# --------------------------------------------------------------------------------------------------
# resolving what to load and where
# --------------------------------------------------------------------------------------------------

def demo_model_path() -> str:
    import chatglm

    return chatglm.DEMO_MODEL_PATH


def pick_device(requested: str = "auto") -> str:
    """Resolve ``auto`` to cuda, then mps, then cpu; check that an explicit choice exists here."""
    import torch

    requested = (requested or "auto").lower()
    mps_ok = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if mps_ok:
            return "mps"
        return "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"--device {requested} was asked for but PyTorch sees no CUDA GPU here "
                f"(torch {torch.__version__}); install a CUDA build of torch or use --device cpu")
        if ":" in requested:
            index = int(requested.split(":", 1)[1])
            if index >= torch.cuda.device_count():
                raise ModelLoadError(
                    f"--device {requested} was asked for but only {torch.cuda.device_count()} "
                    f"CUDA device(s) are visible; use an index below {torch.cuda.device_count()}")
        return requested
    if requested == "mps" and not mps_ok:
        raise ModelLoadError("--device mps was asked for but this PyTorch has no usable MPS (Apple GPU) "
                             "backend; use --device cpu")
    return requested


def pick_dtype(dtype: str, device: str):
    import torch

    if not dtype or dtype == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    return getattr(torch, DTYPE_NAMES.get(dtype, dtype))


def resolve_model_path(model: Optional[str]) -> Tuple[str, bool]:
    """Return ``(path_or_hub_id, is_demo)``. Local folders are checked; hub ids are returned as is."""
    if not model:
        path = demo_model_path()
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelLoadError(
                f"the bundled demo checkpoint is missing ({path} has no config.json); restore it "
                f"with `git checkout -- chatglm-demo` or load the real model with --model {REAL_MODEL_ID}")
        return path, True
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise ModelLoadError(
                f"the folder {expanded} has no config.json, so it is not a model checkpoint; point "
                f"--model at the folder that holds config.json and the weights (for example a clone "
                f"of https://huggingface.co/{REAL_MODEL_ID})")
        return os.path.abspath(expanded), os.path.abspath(expanded) == os.path.abspath(demo_model_path())
    # a hub id is "name" or "owner/name"; anything else that does not exist is a mistyped path
    looks_like_hub_id = (re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", model) is not None
                         and not model.startswith(".") and not os.path.exists(expanded))
    if not looks_like_hub_id:
        raise ModelLoadError(
            f"--model {model}: no such folder; give an existing local folder or a hub id such as "
            f"{REAL_MODEL_ID}")
    return model, False


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _in_hub_cache(model_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub always comes with transformers
        return False
    return isinstance(try_to_load_from_cache(model_id, "config.json"), str)


def _hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the hub's host answers on its port at all (a quick check instead of minutes of retries)."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy decides; let the download itself try
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_load_options(model_id: str) -> Dict[str, Any]:
    """Decide how to load a hub id: from the local cache only, or allowing a download. A hub id that is
    neither cached nor downloadable fails at once with a line saying how to get the weights."""
    cached = _in_hub_cache(model_id)
    if _hub_offline():
        if not cached:
            raise ModelLoadError(
                f"model {model_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                + DOWNLOAD_HINT.format(model=model_id) + " (or unset HF_HUB_OFFLINE to download it)")
        return {"local_files_only": True}
    if _hub_reachable():
        if not cached:
            _log(f"Downloading {model_id} into the Hugging Face cache (the 6B model is about 13 GB) ...")
        return {}
    if cached:
        _log(f"note: the Hugging Face hub is not reachable; using the cached copy of {model_id}")
        return {"local_files_only": True}
    raise ModelLoadError(
        f"model {model_id} is not in the local Hugging Face cache and the hub "
        f"({os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}) cannot be reached from here; "
        + DOWNLOAD_HINT.format(model=model_id) + " (on a machine with internet, then copy the folder here)")


def _explain_failure(model: str, is_local: bool, exc: BaseException) -> ModelLoadError:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    if is_local:
        return ModelLoadError(
            f"could not load the checkpoint in {model} ({type(exc).__name__}: {text}); check that the "
            f"folder holds a complete ChatGLM-6B checkpoint (config.json, tokenizer files, weights)")
    return ModelLoadError(
        f"could not load {model} from the Hugging Face hub ({type(exc).__name__}: {text}); check the id "
        f"and your connection, or " + DOWNLOAD_HINT.format(model=model))


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------

def _model_classes():
    """The tokenizer and model classes: ours directly (robust even when a checkpoint's config carries an
    ``auto_map`` pointing at the original remote code), else the Auto classes our package registered."""
    import chatglm

    tokenizer_cls = getattr(chatglm, "ChatGLMTokenizer", None)
    model_cls = getattr(chatglm, "ChatGLMForConditionalGeneration", None)
    if tokenizer_cls is None or model_cls is None:
        from transformers import AutoModel, AutoTokenizer

        tokenizer_cls = tokenizer_cls or AutoTokenizer
        model_cls = model_cls or AutoModel
    return tokenizer_cls, model_cls


def load_model_and_tokenizer(args: Union[argparse.Namespace, Mapping[str, Any], None] = None, **overrides):
    """Load ``(tokenizer, model)`` as the flags of :func:`add_model_args` say; the model is in eval mode.

    ``args`` may be an ``argparse.Namespace``, a dict, or omitted; keyword overrides win
    (``model=``, ``device=``, ``dtype=``, ``quantize=``, ``num_gpus=``). Raises :class:`ModelLoadError`
    with a one-line explanation for anything the user has to fix.
    """
    settings: Dict[str, Any] = {"model": None, "device": "auto", "dtype": "auto", "quantize": None,
                                "num_gpus": 1}
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    for key, value in dict(args or {}, **overrides).items():
        if key in settings:
            settings[key] = value

    import torch

    path, is_demo = resolve_model_path(settings["model"])
    is_local = os.path.isdir(path)
    if is_demo:
        _log(f"Using the bundled demo checkpoint ({path}), a small model for trying the tools whose answers "
             f"are only a demonstration; for the real ChatGLM-6B add --model {REAL_MODEL_ID} (about 13 GB of "
             f"GPU memory, or --quantize 4 for about 6 GB).")
    hub_options = {} if is_local else _hub_load_options(path)

    num_gpus = int(settings["num_gpus"] or 1)
    quantize = settings["quantize"]
    if quantize not in (None, 0, 4, 8):
        raise ModelLoadError(f"--quantize must be 4 or 8, not {quantize}")

    if num_gpus > 1:
        device = "cuda"
        if settings["device"] not in ("auto", "cuda"):
            raise ModelLoadError(f"--num-gpus {num_gpus} splits the model over CUDA GPUs; it cannot be "
                                 f"combined with --device {settings['device']}")
    else:
        device = pick_device(settings["device"])
    dtype = pick_dtype(settings["dtype"], "cpu" if device == "cpu" else "gpu")
    if device == "cpu" and dtype == torch.float16:
        _log("note: float16 on CPU is slow and some CPU kernels lack float16; float32 is the default there")

    tokenizer_cls, model_cls = _model_classes()
    started = time.time()
    _log(f"Loading {path} on {device} ({str(dtype).replace('torch.', '')}"
         + (f", int{quantize}" if quantize else "")
         + (f", split over {num_gpus} GPUs" if num_gpus > 1 else "") + ") ...")
    try:
        tokenizer = tokenizer_cls.from_pretrained(path, **hub_options)
    except ModelLoadError:
        raise
    except (OSError, ValueError, EnvironmentError, ImportError, KeyError) as exc:
        raise _explain_failure(path, is_local, exc) from None

    try:
        if num_gpus > 1:
            if quantize:
                raise ModelLoadError("--quantize and --num-gpus > 1 cannot be combined; a quantized "
                                     "6B model fits on one GPU (int4 about 6 GB, int8 about 8 GB)")
            model = load_model_on_gpus(path, num_gpus=num_gpus, dtype=dtype, model_class=model_cls,
                                       **hub_options)
        else:
            model = model_cls.from_pretrained(path, dtype=dtype, **hub_options)
            if quantize:
                already = int(getattr(model.config, "quantization_bit", 0) or 0)
                if already:
                    _log(f"note: {path} is already quantized to int{already}; --quantize ignored")
                else:
                    model = model.quantize(quantize)
            model = model.to(device)
    except ModelLoadError:
        raise
    except torch.cuda.OutOfMemoryError as exc:  # type: ignore[attr-defined]
        raise ModelLoadError(
            f"the GPU ran out of memory while loading {path}; try --quantize 4 (about 6 GB), "
            f"--num-gpus 2, or --device cpu") from None
    except (OSError, ValueError, EnvironmentError, ImportError, KeyError, RuntimeError) as exc:
        raise _explain_failure(path, is_local, exc) from None

    model.eval()
    _log(f"Loaded in {time.time() - started:.1f}s.")
    return tokenizer, model


# --------------------------------------------------------------------------------------------------
# splitting over several GPUs (the original project's utils.py, generalised)
# --------------------------------------------------------------------------------------------------

PINNED_MODULES = ("transformer.word_embeddings", "transformer.final_layernorm", "lm_head")


def auto_configure_device_map(num_gpus: int, num_layers: int = 28) -> Dict[str, int]:
    """Spread the model over ``num_gpus`` GPUs the way the original project did.

    The model counts as ``num_layers + 2`` units (the layers, the embeddings, the final LayerNorm together
    with lm_head). The embeddings, the final LayerNorm and lm_head stay on GPU 0 (the input ids and the
    embeddings share a device, and lm_head is tied to the embeddings), which starts GPU 0 at two used
    units; each GPU then takes layers until it holds ``(num_layers + 2) / num_gpus`` units.
    """
    if int(num_gpus) != num_gpus or num_gpus < 1:
        raise ValueError(f"num_gpus must be a positive whole number, got {num_gpus!r}")
    if int(num_layers) != num_layers or num_layers < 1:
        raise ValueError(f"num_layers must be a positive whole number, got {num_layers!r}")
    num_gpus, num_layers = int(num_gpus), int(num_layers)
    per_gpu_units = (num_layers + 2) / num_gpus
    device_map: Dict[str, int] = {name: 0 for name in PINNED_MODULES}
    used = 2
    gpu = 0
    for layer in range(num_layers):
        if used >= per_gpu_units:
            gpu += 1
            used = 0
        if gpu >= num_gpus:  # cannot happen for sane inputs; keep the map valid anyway
            gpu = num_gpus - 1
        device_map[f"transformer.layers.{layer}"] = gpu
        used += 1
    return device_map


def _complete_device_map(model, device_map: Dict[str, Any]) -> Dict[str, Any]:
    """Put any top-level part of the model the map does not mention (for example a P-Tuning
    ``transformer.prefix_encoder``) on the device of the embeddings."""
    home = device_map.get("transformer.word_embeddings", next(iter(device_map.values())))
    completed = dict(device_map)

    def covered(name: str) -> bool:
        return any(name == key or name.startswith(key + ".") or key == "" for key in completed)

    for name, _ in list(model.named_parameters()) + list(model.named_buffers()):
        if covered(name):
            continue
        parts = name.split(".")
        if len(parts) > 3 and parts[:2] == ["transformer", "layers"]:
            prefix = ".".join(parts[:3])
        elif len(parts) > 2 and parts[0] == "transformer":
            prefix = ".".join(parts[:2])
        elif len(parts) > 1:
            prefix = parts[0]
        else:
            prefix = name
        completed[prefix] = home
    return completed


def _check_cuda_devices(device_map: Mapping[str, Any]) -> None:
    import torch

    wanted = set()
    for value in device_map.values():
        if isinstance(value, int) or (isinstance(value, str) and value.startswith("cuda")):
            index = value if isinstance(value, int) else int(value.split(":", 1)[1]) if ":" in value else 0
            wanted.add(int(index))
    if not wanted:
        return
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if max(wanted) >= have:
        raise ModelLoadError(
            f"the device map uses {max(wanted) + 1} GPU(s) but only {have} CUDA device(s) are visible here; "
            f"use fewer GPUs (--num-gpus {max(have, 1)}), --device cpu, or a machine with more GPUs")


def load_model_on_gpus(checkpoint_path: str, num_gpus: int = 2, device_map: Optional[Dict[str, Any]] = None,
                       **kwargs):
    """Load the model in half precision and split it over ``num_gpus`` GPUs with accelerate.

    ``device_map`` overrides the automatic split; it may map modules to ``"cpu"`` (used by the tests).
    With one GPU and no map this is ``from_pretrained(...).half().cuda()``. Extra keyword arguments go
    to ``from_pretrained``; ``dtype=`` changes the precision (default float16) and ``model_class=``
    the class used (default: the ChatGLM model class).
    """
    import torch

    model_cls = kwargs.pop("model_class", None) or _model_classes()[1]
    dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None) or torch.float16
    num_gpus = int(num_gpus)
    if device_map is None:
        _check_cuda_devices({"gpus": f"cuda:{num_gpus - 1}"})
    else:
        _check_cuda_devices(device_map)

    model = model_cls.from_pretrained(checkpoint_path, dtype=dtype, **kwargs).to(dtype)
    if num_gpus < 2 and device_map is None:
        return model.cuda()

    from accelerate import dispatch_model

    if device_map is None:
        num_layers = int(getattr(model.config, "num_layers", 28))
        device_map = auto_configure_device_map(num_gpus, num_layers=num_layers)
    device_map = _complete_device_map(model, device_map)
    return dispatch_model(model, device_map=device_map)
