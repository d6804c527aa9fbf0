"""Multi-GPU helpers under the names the original ChatGLM-6B project used.

    from utils import load_model_on_gpus
    model = load_model_on_gpus("THUDM/chatglm-6b", num_gpus=2)

``auto_configure_device_map(num_gpus, num_layers=28)`` returns the module -> GPU map: the embeddings, the
final LayerNorm and lm_head on GPU 0, the layers spread so that every GPU holds about
``(num_layers + 2) / num_gpus`` units. ``load_model_on_gpus(checkpoint_path, num_gpus=2, device_map=None,
**kwargs)`` loads the model in float16 and dispatches it with accelerate (one GPU: ``.half().cuda()``).
Both live in ``chatglm/entrypoints/multi_gpu.py``, which the scripts' ``--num-gpus`` flag uses too.
"""

from chatglm.entrypoints.multi_gpu import auto_configure_device_map, load_model_on_gpus

__all__ = ["auto_configure_device_map", "load_model_on_gpus"]
