#!/usr/bin/env bash
# Predict on the ADGEN dev set with a fully fine-tuned checkpoint (ds_train_finetune.sh) and score it.
# Environment overrides (relative paths are taken from the directory you call from):
#   CHECKPOINT (run folder name under ptuning/output) STEP CHECKPOINT_DIR OUTPUT_DIR TEST_FILE
#   MAX_SOURCE_LENGTH MAX_TARGET_LENGTH
# On CPU pass --use_cpu and drop fp16:  bash ptuning/evaluate_finetune.sh --use_cpu --fp16_full_eval false
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/paths.sh"

CHECKPOINT=${CHECKPOINT:-adgen-chatglm-6b-ft-1e-4}
STEP=${STEP:-3000}
CHECKPOINT_DIR=$(abs "${CHECKPOINT_DIR:-$here/output/$CHECKPOINT/checkpoint-$STEP}")
TEST_FILE=$(abs "${TEST_FILE:-$here/AdvertiseGen/dev.json}")
OUTPUT_DIR=$(out_dir "${OUTPUT_DIR:-$here/output/$CHECKPOINT}")

cd "$here"
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} python3 main.py \
    --do_predict \
    --validation_file "$TEST_FILE" \
    --test_file "$TEST_FILE" \
    --overwrite_cache \
    --prompt_column content \
    --response_column summary \
    --model_name_or_path "$CHECKPOINT_DIR" \
    --output_dir "$OUTPUT_DIR" \
    --overwrite_output_dir \
    --max_source_length "${MAX_SOURCE_LENGTH:-256}" \
    --max_target_length "${MAX_TARGET_LENGTH:-256}" \
    --per_device_eval_batch_size 1 \
    --predict_with_generate \
    --fp16_full_eval \
    "$@"
