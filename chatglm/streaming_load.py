"""Build a ChatGLM model from its checkpoint one tensor at a time, quantizing while loading.

The model is first built on the meta device (no memory), already with the layers it will end with:
quantized block Linear layers when asked for (or when the checkpoint is an `-int4`/`-int8` one). Then each
checkpoint tensor is read from disk straight into its destination dtype (see `checkpoint_reader`), and a
full-precision block weight is quantized as it arrives, a few rows at a time, into the original's stored
format, which the quantized layer loads exactly as it loads an `-int4`/`-int8` checkpoint. So no
full-precision copy of the model, nor of a shard, is ever held: the peak is the final model plus a
bounded buffer. The integers are those of loading in the same dtype, then quantizing.
"""

import copy
import ctypes
import logging
import os
import re

import torch

from .checkpoint_reader import CHUNK_BYTES, stored_tensors, weight_files
from .quantization import QuantizedWeight, quantize_weight

logger = logging.getLogger(__name__)

# Stored in the original checkpoints but not loaded: the LM head is tied to the embeddings, and the
# rotary table is recomputed.
IGNORED_KEYS = re.compile(r"(^lm_head\.weight$)|(rotary_emb\.inv_freq$)")
# Parts a checkpoint may lack: the P-Tuning v2 prefix encoder starts untrained.
NEWLY_INITIALIZED = re.compile(r"^transformer\.prefix_encoder\.")
# from_pretrained options this loader understands; with any other, transformers' own loader runs.
STREAMING_OPTIONS = {"config", "dtype", "torch_dtype", "quantization_bit", "local_files_only", "revision",
                     "cache_dir", "token", "force_download", "trust_remote_code", "_from_auto", "_commit_hash",
                     "adapter_kwargs"}


def can_stream(args, kwargs):
    # With peft installed, the Auto classes always pass adapter_kwargs (at least the revision); it asks for
    # an adapter only when it names one (_adapter_model_path), and only then is transformers' loader needed.
    adapter = (kwargs.get("adapter_kwargs") or {}).get("_adapter_model_path")
    return not args and set(kwargs) <= STREAMING_OPTIONS and not adapter and not _deepspeed_zero3()


def _deepspeed_zero3():
    """Whether a DeepSpeed ZeRO-3 run is being set up: transformers then creates every parameter already
    partitioned over the processes, and only its loader knows how to fill such parameters."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


def load_streaming(model_class, path, config=None, dtype="auto", torch_dtype=None, quantization_bit=None,
                   quantize_embeddings=False, **hub_options):
    """`model_class` with the weights of the checkpoint `path` (folder or hub id), in eval mode.

    dtype: of every floating-point tensor that is not quantized ("auto": the checkpoint's).
    quantization_bit: 4 or 8 to quantize the block Linear layers while loading; a checkpoint stored
        quantized (`-int4`/`-int8`) loads as it is.
    quantize_embeddings: quantize the embeddings (and the LM head tied to them) as well.
    """
    hub_options.pop("adapter_kwargs", None)  # names no adapter here (see can_stream)
    folder = _local_folder(path, hub_options)
    if config is None or isinstance(config, (str, os.PathLike)):
        config = model_class.config_class.from_pretrained(config or folder, **_config_options(hub_options))
    config = copy.deepcopy(config)
    stored_bits = int(config.quantization_bit or 0)
    if quantization_bit and stored_bits and quantization_bit != stored_bits:
        logger.warning("%s is stored quantized to %d bits: it loads as stored (quantization_bit=%d ignored; "
                       "re-quantizing needs the full-precision checkpoint)", path, stored_bits, quantization_bit)
    config.quantization_bit = stored_bits or int(quantization_bit or 0)
    # Not only where the checkpoint is stored unquantized: AutoModel.from_pretrained moves a
    # quantization_bit argument into the config, which then looks like a checkpoint stored quantized; the
    # embeddings of either kind quantize as they arrive, if they are stored in float.
    if quantize_embeddings:
        if not config.quantization_bit:
            raise ValueError("quantize_embeddings needs quantization_bit (4 or 8)")
        config.quantization_embeddings = True
    dtype = _resolve_dtype(torch_dtype if torch_dtype is not None else dtype, config)

    with torch.device("meta"):
        model = model_class._from_config(config, dtype=dtype)
    _fill_from_checkpoint(model, folder, dtype)
    model.config.name_or_path = str(path)
    if os.path.isfile(os.path.join(folder, "generation_config.json")):
        model.generation_config = type(model.generation_config).from_pretrained(folder)
    return model.eval()


def _fill_from_checkpoint(model, folder, dtype):
    """Replace every meta tensor of `model` by the checkpoint's, module by module as their tensors arrive."""
    modules = dict(model.named_modules())
    expected = {name: set(_own_tensors(module)) for name, module in modules.items() if _own_tensors(module)}
    pending = {}
    unexpected = []
    for path in weight_files(folder):
        for key, stored in stored_tensors(path).items():
            if IGNORED_KEYS.search(key):
                continue
            module_name, _, tensor_name = _model_key(key, modules).rpartition(".")
            if tensor_name not in expected.get(module_name, ()):
                unexpected.append(key)
                continue
            module = modules[module_name]
            tensors = pending.setdefault(module_name, {})
            tensors.update(_read_tensor(module, tensor_name, stored, dtype))
            if tensors.keys() == expected[module_name]:
                module.load_state_dict(pending.pop(module_name), assign=True)
                if isinstance(module, QuantizedWeight):
                    _return_freed_memory()
    if unexpected:
        logger.warning("Weights in %s that this model has no place for (ignored): %s", folder, ", ".join(unexpected))
    model.tie_weights()
    _initialize_missing(model, modules, expected, pending, folder)


def _own_tensors(module):
    """Names of a module's own parameters and persistent buffers (not its children's)."""
    persistent = [n for n, b in module.named_buffers(recurse=False) if n not in module._non_persistent_buffers_set]
    return [n for n, _ in module.named_parameters(recurse=False)] + persistent


def _model_key(key, modules):
    """Checkpoint keys saved from the bare transformer lack its `transformer.` prefix."""
    module_name = key.rpartition(".")[0]
    if module_name not in modules and f"transformer.{module_name}" in modules:
        return f"transformer.{key}"
    return key


def _read_tensor(module, name, stored, dtype):
    """{tensor name: tensor} to load into `module` for the stored tensor `name`; a float weight of a
    quantized layer is quantized from its values in `dtype`, as load-then-quantize would."""
    if isinstance(module, QuantizedWeight) and name == "weight" and stored.dtype.is_floating_point:
        weight, scale = _quantize_stored(stored, module.bits, dtype)
        return {"weight": weight, "weight_scale": scale}
    return {name: stored.read(getattr(module, name).dtype)}


def _quantize_stored(stored, bits, dtype):
    """The stored format (int8 weight [out, in * bits / 8], fp16 scale [out]) of a float weight on disk,
    quantized from its values in `dtype` a few rows at a time (the scales are per row), so that the
    float copy stays small."""
    rows, columns = stored.shape
    weight = torch.empty(rows, columns * bits // 8, dtype=torch.int8)
    scale = torch.empty(rows, dtype=torch.float16)
    step = max(1, CHUNK_BYTES // (columns * dtype.itemsize))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        weight[start:stop], scale[start:stop] = quantize_weight(stored.read_rows(start, stop, dtype), bits)
    return weight, scale


def _return_freed_memory():
    """Give the heap memory freed by quantizing back to the system. glibc otherwise keeps the pages of the
    quantization buffers, fragmented between the small tensors loaded meanwhile: about 20 MB per 6B layer,
    0.6 GB over the model. A no-op where the C library has no malloc_trim."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _initialize_missing(model, modules, expected, pending, folder):
    """Initialize what the checkpoint may lack (a P-Tuning prefix encoder); anything else missing is an error.
    `pending` holds the tensors read for modules that never got all of theirs."""
    missing = [f"{module_name}.{name}" for module_name, names in expected.items() for name in sorted(names)
               if getattr(modules[module_name], name).is_meta and name not in pending.get(module_name, ())]
    absent = [name for name in missing if not NEWLY_INITIALIZED.search(name)]
    if absent:
        raise ValueError(f"the checkpoint in {folder} lacks {len(absent)} weights of this model "
                         f"({', '.join(absent[:4])}{', ...' if len(absent) > 4 else ''}): it is incomplete or "
                         "saved for another configuration")
    for module in modules.values():
        if any(tensor.is_meta for tensor in module.parameters(recurse=False)):
            module.to_empty(device="cpu", recurse=False)
            model._init_weights(module)
    if missing:
        logger.warning("Newly initialized (not in %s): %s", folder, ", ".join(missing))


def _resolve_dtype(dtype, config):
    if dtype is None or dtype == "auto":
        dtype = getattr(config, "dtype", None) or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def _config_options(hub_options):
    return {k: v for k, v in hub_options.items() if k in ("local_files_only", "revision", "cache_dir", "token")}


def _local_folder(path, hub_options):
    """`path` itself when it is a folder, else the local copy of that hub repository (downloaded if needed)."""
    if os.path.isdir(path):
        return str(path)
    from huggingface_hub import snapshot_download

    return snapshot_download(str(path), allow_patterns=["*.json", "*.safetensors", "*.bin", "*.model"],
                             **_config_options(hub_options))
