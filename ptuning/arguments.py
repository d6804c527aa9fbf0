"""Command-line arguments of ptuning/main.py (besides transformers' Seq2SeqTrainingArguments).

Field names and defaults follow the original ChatGLM-6B ptuning/ scripts, so existing command lines and
JSON config files keep working.
"""

from dataclasses import dataclass, field

DATA_EXTENSIONS = ("json", "jsonl", "csv")


@dataclass
class ModelArguments:
    """Which model, tokenizer and P-Tuning prefix to start from."""

    model_name_or_path: str = field(
        metadata={"help": "Base model: a local folder (config.json, tokenizer, weights) or a hub id such as "
                          "THUDM/chatglm-6b."}
    )
    ptuning_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Folder of a P-Tuning v2 checkpoint (e.g. output/.../checkpoint-3000); its prefix encoder weights "
            "are loaded on top of --model_name_or_path."
        },
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Config to use instead of the one in --model_name_or_path."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer to use instead of the one in --model_name_or_path."}
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where downloaded models and data sets are cached."}
    )
    use_fast_tokenizer: bool = field(
        default=True, metadata={"help": "Kept for compatibility; ChatGLM only has a SentencePiece (slow) tokenizer."}
    )
    model_revision: str = field(
        default="main", metadata={"help": "Model version on the hub: a branch, tag or commit id."}
    )
    use_auth_token: bool = field(
        default=False, metadata={"help": "Use the token stored by `hf auth login` (needed for private models)."}
    )
    resize_position_embeddings: bool | None = field(
        default=None,
        metadata={"help": "Kept for compatibility; ChatGLM has rotary positions and nothing to resize."},
    )
    quantization_bit: int | None = field(
        default=None,
        metadata={"help": "Quantize the base model's block weights to 4 or 8 bits before training/inference."},
    )
    pre_seq_len: int | None = field(
        default=None,
        metadata={
            "help": "P-Tuning v2 prefix length (number of trainable virtual tokens per layer). Unset: full fine-tuning."
        },
    )
    prefix_projection: bool = field(
        default=False,
        metadata={"help": "Encode the prefix through a 2-layer MLP (more parameters) instead of a plain embedding."},
    )
    lora_rank: int | None = field(
        default=None,
        metadata={"help": "LoRA: train a rank-R adapter on --lora_target (the base stays frozen, quantized with "
                          "--quantization_bit); checkpoints hold only the adapter, in peft's layout."},
    )
    lora_alpha: float | None = field(
        default=None, metadata={"help": "LoRA scaling numerator (update scaled by alpha / rank); default 2 x rank."}
    )
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA branch's input in training."})
    lora_target: str = field(
        default="query_key_value",
        metadata={"help": "Layers that get an adapter, by name; a comma list such as query_key_value,dense_h_to_4h."},
    )
    lora_checkpoint: str | None = field(
        default=None,
        metadata={"help": "Folder of a trained LoRA adapter (checkpoint-N of a --lora_rank run) to evaluate or "
                          "predict with, applied on top of --model_name_or_path."},
    )


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on, and how to cut it into model inputs."""

    lang: str | None = field(default=None, metadata={"help": "Language id (informational, e.g. zh)."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Name of a data set on the hub (via the datasets library)."}
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Configuration name of --dataset_name."}
    )
    prompt_column: str | None = field(
        default=None, metadata={"help": "Column holding the input text (AdvertiseGen: content)."}
    )
    response_column: str | None = field(
        default=None, metadata={"help": "Column holding the target text (AdvertiseGen: summary)."}
    )
    history_column: str | None = field(
        default=None,
        metadata={"help": "Column holding earlier chat rounds [[question, answer], ...] (multi-turn data)."},
    )
    train_file: str | None = field(
        default=None, metadata={"help": "Training data: JSON lines (.json/.jsonl) or .csv."}
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Evaluation data (--do_eval): JSON lines (.json/.jsonl) or .csv."}
    )
    test_file: str | None = field(
        default=None, metadata={"help": "Prediction data (--do_predict): JSON lines (.json/.jsonl) or .csv."}
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Recompute the preprocessed data instead of using a cached copy."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes used to tokenize the data."}
    )
    max_source_length: int | None = field(
        default=1024,
        metadata={"help": "Maximum prompt length in tokens (including [gMASK] <sop> at inference); longer prompts "
                          "are cut."},
    )
    max_target_length: int | None = field(
        default=128,
        metadata={"help": "Maximum answer length in tokens (including <sop> and <eop>); longer answers are cut."},
    )
    val_max_target_length: int | None = field(
        default=None,
        metadata={"help": "--max_target_length for evaluation/prediction labels (default: --max_target_length)."},
    )
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Kept for compatibility; training rows are always padded to a fixed length."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training rows (debugging, quick runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N evaluation rows."}
    )
    max_predict_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N prediction rows."}
    )
    num_beams: int | None = field(
        default=None, metadata={"help": "Beams for evaluation generation (sets generation_num_beams)."}
    )
    ignore_pad_token_for_loss: bool = field(
        default=True, metadata={"help": "Give padded label positions the label -100 so they do not count in the loss."}
    )
    source_prefix: str | None = field(
        default="", metadata={"help": "Text put in front of every prompt."}
    )
    forced_bos_token: str | None = field(
        default=None, metadata={"help": "Kept for compatibility (multilingual seq2seq models); unused by ChatGLM."}
    )

    def __post_init__(self):
        data_files = (self.train_file, self.validation_file, self.test_file)
        if self.dataset_name is None and all(path is None for path in data_files):
            raise ValueError("Need a data set: --dataset_name or --train_file / --validation_file / --test_file.")
        for name in ("train_file", "validation_file", "test_file"):
            path = getattr(self, name)
            if path is not None:
                ext = path.rsplit(".", 1)[-1].lower()
                if ext not in DATA_EXTENSIONS:
                    raise ValueError(f"--{name} {path}: expected a .json/.jsonl (JSON lines) or .csv file")
        if self.val_max_target_length is None:
            self.val_max_target_length = self.max_target_length
