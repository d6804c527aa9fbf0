#!/usr/bin/env python3
"""Fine-tune ChatGLM-6B with P-Tuning v2 (--pre_seq_len), LoRA (--lora_rank) or fully, evaluate and predict.

    python3 ptuning/main.py --do_train --train_file AdvertiseGen/train.json --prompt_column content \\
        --response_column summary --model_name_or_path THUDM/chatglm-6b --output_dir output/x \\
        --pre_seq_len 128 --max_steps 3000 ...
    python3 ptuning/main.py config.json          # all arguments from one JSON file

Arguments: ModelArguments and DataTrainingArguments (ptuning/arguments.py) plus transformers'
Seq2SeqTrainingArguments. See ptuning/README.md and the *.sh scripts next to this file.
"""

import json
import logging
import os
import sys

import datasets
import torch
import transformers
from transformers import HfArgumentParser, Seq2SeqTrainingArguments, set_seed

from chatglm.entrypoints.cli import run_script
from chatglm.entrypoints.errors import UserError
from chatglm.generation import DEFAULT_TEMPERATURE, DEFAULT_TOP_P
from chatglm.lora import add_lora, apply_lora
from ptuning.arguments import DataTrainingArguments, ModelArguments
from ptuning.data_utils import ChatGLMCollator, make_preprocessors, print_dataset_example, read_data_file
from ptuning.metrics import decode_ids, make_compute_metrics
from ptuning.prefix import half_with_fp32_prefix, load_for_ptuning
from ptuning.trainer_seq2seq import Seq2SeqTrainer

logger = logging.getLogger(__name__)

# Flags of older transformers that the original scripts pass: translated or accepted without effect.
RENAMED_FLAGS = {"--no_cuda": "--use_cpu", "--evaluation_strategy": "--eval_strategy"}
DROPPED_FLAGS = {"--overwrite_output_dir"}  # transformers 5 always writes into output_dir


def _compat_argv(argv):
    out, skip_value = [], False
    for arg in argv:
        if skip_value:
            skip_value = False
            if arg.lower() in ("true", "false", "yes", "no", "1", "0"):
                continue
        name, eq, value = arg.partition("=")
        if name in DROPPED_FLAGS:
            skip_value = not eq
            continue
        if name in RENAMED_FLAGS:
            arg = RENAMED_FLAGS[name] + eq + value
        out.append(arg)
    return out


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, Seq2SeqTrainingArguments))
    if len(argv) == 1 and argv[0].endswith(".json"):
        with open(argv[0], encoding="utf-8") as f:
            raw = json.load(f)
        for flag in DROPPED_FLAGS:
            raw.pop(flag[2:], None)
        if "no_cuda" in raw:
            raw["use_cpu"] = raw.pop("no_cuda")
        if raw.get("deepspeed") and _set_up_deepspeed_on_cpu():
            raw["accelerator_config"] = {**raw.get("accelerator_config", {}), "use_configured_state": True}
        return parser.parse_dict(raw)
    argv = _compat_argv(argv)
    if any(arg.partition("=")[0] == "--deepspeed" for arg in argv) and _set_up_deepspeed_on_cpu():
        if any(arg.partition("=")[0] == "--accelerator_config" for arg in argv):
            raise UserError("--accelerator_config cannot be combined with --deepspeed on CPU here")
        argv += ["--accelerator_config", json.dumps({"use_configured_state": True})]
    return parser.parse_args_into_dataclasses(args=argv)


def _set_up_deepspeed_on_cpu():
    """Under the deepspeed launcher on a machine without CUDA, set up the processes' distributed state (gloo)
    before transformers does; returns whether it did. Left to itself, accelerate finds no distributed backend
    for the CPU and records every process as rank 0 of 1 (while DeepSpeed itself runs over gloo), so each
    process would read the whole data set and every rank log as rank 0."""
    if "LOCAL_RANK" not in os.environ or torch.cuda.is_available():
        return False
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # how accelerate is told that DeepSpeed runs the processes
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    return True


def check_model_flags(model_args, training_args):
    """Flags that cannot work together fail here, before anything is loaded or written."""
    if model_args.lora_rank is not None and model_args.pre_seq_len is not None:
        raise UserError("--lora_rank and --pre_seq_len are two ways of tuning; pass one of them")
    if model_args.lora_checkpoint and (model_args.lora_rank is not None or model_args.pre_seq_len is not None):
        raise UserError("--lora_checkpoint evaluates a trained adapter; to train on from one use "
                        "--resume_from_checkpoint")
    if training_args.fp16 and training_args.device.type == "cpu":
        raise UserError("--fp16 needs a GPU; on CPU train in float32 (drop --fp16) or, where the CPU has "
                        "bfloat16, with --bf16")


def load_raw_datasets(data_args, model_args, training_args):
    """{"train"/"validation"/"test": datasets.Dataset} after checking every row of the data files."""
    columns = (data_args.prompt_column, data_args.response_column, data_args.history_column)
    if data_args.prompt_column is None or data_args.response_column is None:
        raise UserError("--prompt_column and --response_column are required (AdvertiseGen: content / summary)")
    wanted = {}
    if training_args.do_train:
        wanted["train"] = data_args.train_file
    if training_args.do_eval:
        wanted["validation"] = data_args.validation_file
    if training_args.do_predict:
        wanted["test"] = data_args.test_file
    raw = {}
    if data_args.dataset_name is not None:
        hub = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name,
                                    cache_dir=model_args.cache_dir)
        for split in wanted:
            if split not in hub:
                raise UserError(f"--dataset_name {data_args.dataset_name} has no '{split}' split "
                                f"(it has {', '.join(hub)})")
            missing = [c for c in columns if c is not None and c not in hub[split].column_names]
            if missing:
                raise UserError(f"--dataset_name {data_args.dataset_name} [{split}]: "
                                f"missing column(s) {', '.join(missing)}")
            raw[split] = hub[split]
        return raw
    for split, path in wanted.items():
        if path is None:
            flag = {"train": "--train_file (for --do_train)", "validation": "--validation_file (for --do_eval)",
                    "test": "--test_file (for --do_predict)"}[split]
            raise UserError(f"missing {flag}")
        raw[split] = datasets.Dataset.from_list(read_data_file(path, *columns))
    return raw


def main(argv=None):
    model_args, data_args, training_args = parse_args(argv)
    check_model_flags(model_args, training_args)

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        datefmt="%m/%d/%Y %H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    for name in ("prefix", "data_utils"):
        logging.getLogger(name).setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(f"Process rank: {training_args.process_index} of {training_args.world_size} (local rank "
                   f"{training_args.local_process_index}), device: {training_args.device}, "
                   f"n_gpu: {training_args.n_gpu}, distributed: {training_args.parallel_mode.value == 'distributed'}, "
                   f"fp16: {training_args.fp16}")
    logger.info(f"Training/evaluation parameters {training_args}")

    set_seed(training_args.seed)

    # ---- data (checked before the model is loaded: a broken file fails in seconds) ----
    raw = load_raw_datasets(data_args, model_args, training_args)

    # ---- model ----
    config, tokenizer, model = load_for_ptuning(
        model_args, dtype=torch.float32, cache_dir=model_args.cache_dir,
        token=True if model_args.use_auth_token else None, revision=model_args.model_revision)
    lora = model_args.lora_rank is not None
    if training_args.device.type == "cuda" and model_args.pre_seq_len is not None:
        model = half_with_fp32_prefix(model)
    elif training_args.device.type == "cuda" and lora:
        # the frozen base in half precision; peft keeps the adapter in float32
        model = model.to(torch.bfloat16 if training_args.bf16 else torch.float16)
    else:
        model = model.float()  # full fine-tuning, and on CPU, where fp16 training is not sensible
    if model_args.lora_checkpoint:
        quantized = bool(model_args.quantization_bit)
        model = apply_lora(model, [model_args.lora_checkpoint], merge=not quantized)
    if lora:
        model = add_lora(model, model_args.lora_rank, model_args.lora_alpha, model_args.lora_dropout,
                         model_args.lora_target)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    logger.info("Trainable parameters: %d of %d (%.4f%%)", n_train, n_all, 100.0 * n_train / max(n_all, 1))

    # ---- preprocessing ----
    train_fn, eval_fn = make_preprocessors(tokenizer, data_args)
    eval_style_fn = eval_fn if training_args.predict_with_generate else train_fn

    def preprocess(split, max_samples, fn):
        dataset = raw[split]
        if max_samples is not None:
            dataset = dataset.select(range(min(len(dataset), max_samples)))
        with training_args.main_process_first(desc=f"{split} dataset map pre-processing"):
            dataset = dataset.map(fn, batched=True, num_proc=data_args.preprocessing_num_workers,
                                  remove_columns=dataset.column_names,
                                  load_from_cache_file=not data_args.overwrite_cache,
                                  desc=f"Running tokenizer on {split} dataset")
        if len(dataset) == 0:
            source = {"train": data_args.train_file, "validation": data_args.validation_file,
                      "test": data_args.test_file}[split]
            raise UserError(f"{source}: no usable rows (every prompt or answer is empty)")
        print_dataset_example(tokenizer, dataset[0])
        return dataset

    train_dataset = preprocess("train", data_args.max_train_samples, train_fn) if training_args.do_train else None
    eval_dataset = preprocess("validation", data_args.max_eval_samples, eval_style_fn) \
        if training_args.do_eval else None
    predict_dataset = preprocess("test", data_args.max_predict_samples, eval_style_fn) \
        if training_args.do_predict else None

    label_pad = -100 if data_args.ignore_pad_token_for_loss else tokenizer.pad_token_id
    collator = ChatGLMCollator(tokenizer, label_pad_token_id=label_pad)

    # Generation settings of the original: chat's sampling settings,
    # max_length = max_source_length + max_target_length + 1 (prompt included).
    max_seq_length = data_args.max_source_length + data_args.max_target_length + 1
    gen_kwargs = {"do_sample": True, "top_p": DEFAULT_TOP_P, "temperature": DEFAULT_TEMPERATURE,
                  "max_length": max_seq_length}
    training_args.generation_max_length = (training_args.generation_max_length
                                           if training_args.generation_max_length is not None
                                           else data_args.val_max_target_length)
    training_args.generation_num_beams = (data_args.num_beams if data_args.num_beams is not None
                                          else training_args.generation_num_beams)
    if training_args.generation_num_beams:
        gen_kwargs["num_beams"] = training_args.generation_num_beams

    if training_args.do_train:
        model.activation_checkpointing_enable()
        model.enable_input_require_grads()

    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=make_compute_metrics(tokenizer) if training_args.predict_with_generate else None,
        save_prefixencoder=model_args.pre_seq_len is not None,
        gen_kwargs=gen_kwargs,
    )

    # ---- train ----
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        metrics = train_result.metrics
        n = data_args.max_train_samples if data_args.max_train_samples is not None else len(train_dataset)
        metrics["train_samples"] = min(n, len(train_dataset))
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    # ---- evaluate ----
    results = {}
    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        metrics = trainer.evaluate(metric_key_prefix="eval", **gen_kwargs)
        n = data_args.max_eval_samples if data_args.max_eval_samples is not None else len(eval_dataset)
        metrics["eval_samples"] = min(n, len(eval_dataset))
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        results.update(metrics)

    # ---- predict ----
    if training_args.do_predict:
        logger.info("*** Predict ***")
        output = trainer.predict(predict_dataset, metric_key_prefix="predict", **gen_kwargs)
        metrics = output.metrics
        n = data_args.max_predict_samples if data_args.max_predict_samples is not None else len(predict_dataset)
        metrics["predict_samples"] = min(n, len(predict_dataset))
        trainer.log_metrics("predict", metrics)
        trainer.save_metrics("predict", metrics)
        results.update(metrics)
        if trainer.is_world_process_zero() and training_args.predict_with_generate:
            predictions = decode_ids(tokenizer, output.predictions)
            labels = decode_ids(tokenizer, output.label_ids)
            os.makedirs(training_args.output_dir, exist_ok=True)
            path = os.path.join(training_args.output_dir, "generated_predictions.txt")
            with open(path, "w", encoding="utf-8") as f:
                for predicted, label in zip(predictions, labels):
                    f.write(json.dumps({"labels": label, "predict": predicted}, ensure_ascii=False) + "\n")
            logger.info("Predictions written to %s", path)
    return results


if __name__ == "__main__":
    run_script(main)
