"""P-Tuning v2 checkpoints: reading the prefix-encoder weights back and loading models for ptuning/.

A P-Tuning checkpoint written by ptuning/main.py holds only the `transformer.prefix_encoder.*` weights
(pytorch_model.bin) next to config.json. `load_prefix_checkpoint` also accepts model.safetensors and keys
without the `transformer.prefix_encoder.` prefix (`embedding.weight`, `trans.0.weight`, ...).
"""

import json
import logging
import os

import torch

from chatglm.entrypoints.errors import UserError

logger = logging.getLogger(__name__)

PREFIX = "transformer.prefix_encoder."
WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors", "adapter_model.bin", "adapter_model.safetensors")


class PrefixCheckpointError(UserError, ValueError):
    """A --ptuning_checkpoint that cannot be used with the model/flags given."""


def _read_state_dict(path):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def read_prefix_state_dict(checkpoint):
    """The prefix-encoder weights of a checkpoint folder (or weight file), keys relative to the prefix
    encoder (`embedding.weight`, `trans.0.weight`, ...)."""
    if os.path.isdir(checkpoint):
        files = [os.path.join(checkpoint, name) for name in WEIGHT_FILES
                 if os.path.isfile(os.path.join(checkpoint, name))]
        if not files:
            raise PrefixCheckpointError(
                f"--ptuning_checkpoint {checkpoint}: no weights file there (looked for {', '.join(WEIGHT_FILES)}); "
                "point it at a checkpoint-N folder written by ptuning/main.py"
            )
        path = files[0]
    elif os.path.isfile(checkpoint):
        path = checkpoint
    else:
        raise PrefixCheckpointError(f"--ptuning_checkpoint {checkpoint}: no such folder or file")
    state = _read_state_dict(path)
    prefix_state = {}
    for key, value in state.items():
        if key.startswith(PREFIX):
            prefix_state[key[len(PREFIX):]] = value
        elif key.startswith("prefix_encoder."):
            prefix_state[key[len("prefix_encoder."):]] = value
        elif key == "embedding.weight" or key.startswith("trans."):
            prefix_state[key] = value
    if "embedding.weight" not in prefix_state:
        sample = ", ".join(list(state)[:5]) or "none"
        raise PrefixCheckpointError(
            f"--ptuning_checkpoint {checkpoint}: {os.path.basename(path)} holds no P-Tuning prefix weights "
            f"(no transformer.prefix_encoder.embedding.weight; its keys start with: {sample}). Is this a full "
            "fine-tuning checkpoint? Then pass it as --model_name_or_path instead."
        )
    return prefix_state


def prefix_settings(prefix_state):
    """(pre_seq_len, prefix_projection) a prefix state dict was trained with."""
    return int(prefix_state["embedding.weight"].shape[0]), any(k.startswith("trans.") for k in prefix_state)


def check_prefix_matches(prefix_state, pre_seq_len, prefix_projection, checkpoint):
    ck_len, ck_proj = prefix_settings(prefix_state)
    if pre_seq_len is not None and ck_len != pre_seq_len:
        raise PrefixCheckpointError(
            f"--ptuning_checkpoint {checkpoint} was trained with pre_seq_len={ck_len}, but --pre_seq_len is "
            f"{pre_seq_len}; use --pre_seq_len {ck_len}"
        )
    if ck_proj != bool(prefix_projection):
        want = "needs --prefix_projection" if ck_proj else "was trained without --prefix_projection; drop that flag"
        raise PrefixCheckpointError(f"--ptuning_checkpoint {checkpoint} {want}")


def load_prefix_checkpoint(model, checkpoint, prefix_state=None):
    """Copy a checkpoint's prefix-encoder weights into `model.transformer.prefix_encoder`."""
    encoder = getattr(getattr(model, "transformer", None), "prefix_encoder", None)
    if encoder is None:
        raise PrefixCheckpointError(
            f"--ptuning_checkpoint {checkpoint}: the model has no prefix encoder; pass --pre_seq_len"
        )
    if prefix_state is None:
        prefix_state = read_prefix_state_dict(checkpoint)
    own = encoder.state_dict()
    for key, value in prefix_state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise PrefixCheckpointError(
                f"--ptuning_checkpoint {checkpoint}: {PREFIX}{key} has shape {tuple(value.shape)} but this model "
                f"needs {tuple(own[key].shape)} (trained on a different base model or pre_seq_len?)"
            )
    missing, unexpected = encoder.load_state_dict(prefix_state, strict=False)
    if missing or unexpected:
        raise PrefixCheckpointError(
            f"--ptuning_checkpoint {checkpoint}: prefix weights do not fit this model "
            f"(missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(unexpected) or 'none'})"
        )
    logger.info("Loaded P-Tuning prefix (%s) from %s", ", ".join(sorted(prefix_state)), checkpoint)
    return model


def half_with_fp32_prefix(model):
    """The model in half precision with its P-Tuning prefix encoder (if any) kept in fp32, as the original runs
    it on GPUs: the prefix is what trains."""
    model = model.half()
    if model.config.pre_seq_len is not None:
        model.transformer.prefix_encoder.float()
    return model


def checkpoint_config_value(checkpoint, name):
    path = os.path.join(checkpoint, "config.json") if os.path.isdir(checkpoint) else None
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f).get(name)
    return None


def load_for_ptuning(model_args, dtype=torch.float32, cache_dir=None, token=None, revision="main"):
    """(config, tokenizer, model) prepared as ptuning/main.py and ptuning/web_demo.py need them:
    config.pre_seq_len / prefix_projection set before the model is built, the checkpoint's prefix loaded,
    optional quantization (dtype casts are left to the caller). `model_args` is a ModelArguments (or
    anything with the same attributes). A missing --pre_seq_len is taken from the --ptuning_checkpoint."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    import chatglm  # noqa: F401  (registers the chatglm model type with the Auto classes)
    from chatglm.entrypoints.hub import resolve_model_path

    # a mistyped local folder fails here with one clear line (chatglm.entrypoints.errors.ModelLoadError)
    model_args.model_name_or_path, _ = resolve_model_path(model_args.model_name_or_path)

    hub = {"cache_dir": cache_dir, "revision": revision}
    if token:
        hub["token"] = token
    prefix_state = None
    if model_args.ptuning_checkpoint:
        prefix_state = read_prefix_state_dict(model_args.ptuning_checkpoint)
        if model_args.pre_seq_len is None:
            model_args.pre_seq_len, proj = prefix_settings(prefix_state)
            model_args.prefix_projection = model_args.prefix_projection or proj
            logger.info("pre_seq_len=%d taken from %s", model_args.pre_seq_len, model_args.ptuning_checkpoint)
        check_prefix_matches(prefix_state, model_args.pre_seq_len, model_args.prefix_projection,
                             model_args.ptuning_checkpoint)

    config = AutoConfig.from_pretrained(model_args.config_name or model_args.model_name_or_path, **hub)
    config.pre_seq_len = model_args.pre_seq_len
    config.prefix_projection = model_args.prefix_projection
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path, **hub)
    model = AutoModel.from_pretrained(model_args.model_name_or_path, config=config, dtype=dtype, **hub)
    if prefix_state is not None:
        # (transformers reports the prefix encoder as MISSING above: it is filled in here)
        load_prefix_checkpoint(model, model_args.ptuning_checkpoint, prefix_state)
    if model_args.quantization_bit:
        if model_args.quantization_bit not in (4, 8):
            raise ValueError(f"--quantization_bit must be 4 or 8, not {model_args.quantization_bit}")
        logger.info("Quantizing the model to %d bits", model_args.quantization_bit)
        model = model.quantize(model_args.quantization_bit)
    return config, tokenizer, model
