"""Splitting the model over several GPUs: the original project's layer map, handed to ``from_pretrained`` so
that every weight is loaded straight onto its GPU. The top-level ``utils.py`` exports both functions under
the names the original project used."""

import torch
from transformers import AutoConfig

from ..modeling_chatglm import ChatGLMForConditionalGeneration
from .errors import ModelLoadError

PINNED_MODULES = ("transformer.word_embeddings", "transformer.final_layernorm", "lm_head")


def auto_configure_device_map(num_gpus, num_layers=28):
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
    per_gpu_units = (num_layers + 2) / num_gpus
    device_map = {name: 0 for name in PINNED_MODULES}
    used, gpu = 2, 0
    for layer in range(int(num_layers)):
        if used >= per_gpu_units:
            gpu, used = gpu + 1, 0
        device_map[f"transformer.layers.{layer}"] = gpu
        used += 1
    return device_map


def check_cuda_devices(device_map):
    """Fail with a clear message when the map names more CUDA devices than are visible."""
    wanted = set()
    for device in device_map.values():
        if isinstance(device, int):
            wanted.add(device)
        elif isinstance(device, str) and device.startswith("cuda"):
            wanted.add(int(device.split(":", 1)[1]) if ":" in device else 0)
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if wanted and max(wanted) >= have:
        raise ModelLoadError(
            f"the device map uses {max(wanted) + 1} GPU(s) but only {have} CUDA device(s) are visible here; "
            f"use fewer GPUs (--num-gpus {max(have, 1)}), --device cpu, or a machine with more GPUs")


def load_model_on_gpus(checkpoint_path, num_gpus=2, device_map=None, **kwargs):
    """Load the model in half precision, split over ``num_gpus`` GPUs.

    ``device_map`` overrides the automatic split (module name -> GPU index or device name such as "cpu");
    a P-Tuning prefix encoder it does not mention goes with the embeddings. With one GPU and no map this
    is ``from_pretrained(...).half().cuda()``. Extra keyword arguments go to ``from_pretrained``;
    ``dtype=`` changes the precision (default float16).
    """
    dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None) or torch.float16
    num_gpus = int(num_gpus)
    check_cuda_devices(device_map if device_map is not None else {"last GPU": num_gpus - 1})
    if device_map is None and num_gpus < 2:
        return ChatGLMForConditionalGeneration.from_pretrained(checkpoint_path, dtype=dtype, **kwargs).cuda()
    config = kwargs.get("config") or AutoConfig.from_pretrained(checkpoint_path, **kwargs)
    if device_map is None:
        device_map = auto_configure_device_map(num_gpus, num_layers=config.num_layers)
    if config.pre_seq_len is not None:
        home = device_map.get("transformer.word_embeddings", 0)
        device_map = {"transformer.prefix_encoder": home, **device_map}
    return ChatGLMForConditionalGeneration.from_pretrained(checkpoint_path, dtype=dtype, device_map=device_map,
                                                           **kwargs)
