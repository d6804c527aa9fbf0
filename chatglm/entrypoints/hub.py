"""What to load: the bundled demo checkpoint, a local folder, or a Hugging Face hub id (from the local cache
when it is there, else downloaded by huggingface_hub). Problems raise ``ModelLoadError`` with one line that
says what to do."""

import os
import re
import sys

from .errors import ModelLoadError

REAL_MODEL_ID = "THUDM/chatglm-6b"
# The small checkpoint trained by this repository (demo/), used by every script when no model is named.
REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_MODEL_PATH = os.path.join(REPO_DIR, "chatglm-demo")

DOWNLOAD_HINT = (
    "download it first with `hf download {model}` (or `git clone "
    "https://huggingface.co/{model}`) and pass --model /path/to/that/folder"
)


def resolve_model_path(model):
    """Return ``(path_or_hub_id, is_demo)`` for ``--model`` (None: the demo checkpoint). Local folders are
    checked for a config.json; anything else must look like a hub id ("name" or "owner/name")."""
    if not model:
        if not os.path.isfile(os.path.join(DEMO_MODEL_PATH, "config.json")):
            raise ModelLoadError(
                f"the bundled demo checkpoint is missing ({DEMO_MODEL_PATH} has no config.json); restore it "
                f"with `git checkout -- chatglm-demo` or load the real model with --model {REAL_MODEL_ID}")
        return DEMO_MODEL_PATH, True
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise ModelLoadError(
                f"the folder {expanded} has no config.json, so it is not a model checkpoint; point "
                f"--model at the folder that holds config.json and the weights (for example a clone "
                f"of https://huggingface.co/{REAL_MODEL_ID})")
        path = os.path.abspath(expanded)
        return path, path == os.path.abspath(DEMO_MODEL_PATH)
    looks_like_hub_id = re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", model) is not None and not model.startswith(".")
    if not looks_like_hub_id or os.path.exists(expanded):
        raise ModelLoadError(
            f"--model {model}: no such folder; give an existing local folder or a hub id such as "
            f"{REAL_MODEL_ID}")
    return model, False


def hub_offline():
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def in_hub_cache(model_id):
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model_id, "config.json"), str)


def hub_load_options(model_id):
    """``from_pretrained`` options for a hub id: the cached copy when there is one (no network needed), else a
    download. Its first file (config.json) is fetched here, so that a wrong id or no connection fails with one
    line after huggingface_hub's own retries, before the tokenizer and weights are asked for file by file."""
    from huggingface_hub import hf_hub_download

    if in_hub_cache(model_id):
        return {"local_files_only": True}
    if hub_offline():
        raise ModelLoadError(
            f"model {model_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            + DOWNLOAD_HINT.format(model=model_id) + " (or unset HF_HUB_OFFLINE to download it)")
    print(f"Downloading {model_id} into the Hugging Face cache (the 6B model is about 13 GB) ...",
          file=sys.stderr, flush=True)
    try:
        hf_hub_download(model_id, "config.json")
    except OSError as exc:  # huggingface_hub's errors (no connection, unknown or gated repository) are OSErrors
        raise explain_failure(model_id, False, exc) from None
    return {}


def explain_failure(model, is_local, exc):
    """A ``ModelLoadError`` saying why loading ``model`` failed and what to check."""
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
