#!/usr/bin/env bash
# P-Tuning v2 on ADGEN (defaults of the original: ChatGLM-6B, INT4, prefix 128, lr 2e-2, 3000 steps).
# Run from anywhere; relative paths below are relative to this folder (ptuning/).
# Environment overrides (relative paths are taken from the directory you call from):
#   MODEL TRAIN_FILE VALIDATION_FILE OUTPUT_DIR PRE_SEQ_LEN LR MAX_STEPS SAVE_STEPS QUANTIZATION_BIT (empty: none)
#   MAX_SOURCE_LENGTH MAX_TARGET_LENGTH BATCH_SIZE GRAD_ACCUM
# Extra arguments go to main.py, e.g.  bash ptuning/train.sh --use_cpu --max_train_samples 200
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/paths.sh"

PRE_SEQ_LEN=${PRE_SEQ_LEN-128}  # empty: no prefix (train_lora.sh)
LR=${LR:-2e-2}
MODEL=$(abs "${MODEL:-THUDM/chatglm-6b}")
TRAIN_FILE=$(abs "${TRAIN_FILE:-$here/AdvertiseGen/train.json}")
VALIDATION_FILE=$(abs "${VALIDATION_FILE:-$here/AdvertiseGen/dev.json}")
OUTPUT_DIR=$(out_dir "${OUTPUT_DIR:-$here/output/adgen-chatglm-6b-pt-$PRE_SEQ_LEN-$LR}")
QUANTIZATION_BIT=${QUANTIZATION_BIT-4}

cd "$here"
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} python3 main.py \
    --do_train \
    --train_file "$TRAIN_FILE" \
    --validation_file "$VALIDATION_FILE" \
    --prompt_column content \
    --response_column summary \
    --overwrite_cache \
    --model_name_or_path "$MODEL" \
    --output_dir "$OUTPUT_DIR" \
    --overwrite_output_dir \
    --max_source_length "${MAX_SOURCE_LENGTH:-64}" \
    --max_target_length "${MAX_TARGET_LENGTH:-64}" \
    --per_device_train_batch_size "${BATCH_SIZE:-1}" \
    --per_device_eval_batch_size 1 \
    --gradient_accumulation_steps "${GRAD_ACCUM:-16}" \
    --predict_with_generate \
    --max_steps "${MAX_STEPS:-3000}" \
    --logging_steps 10 \
    --save_steps "${SAVE_STEPS:-1000}" \
    --learning_rate "$LR" \
    ${PRE_SEQ_LEN:+--pre_seq_len "$PRE_SEQ_LEN"} \
    ${QUANTIZATION_BIT:+--quantization_bit "$QUANTIZATION_BIT"} \
    "$@"
