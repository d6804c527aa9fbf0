#!/usr/bin/env bash
# P-Tuning v2 on multi-turn chat data: JSON lines {"prompt": ..., "response": ..., "history": [[q, a], ...]}.
# Environment overrides (relative paths are taken from the directory you call from):
#   MODEL CHAT_TRAIN_DATA CHAT_VAL_DATA CHECKPOINT_NAME (output folder) PRE_SEQ_LEN LR MAX_STEPS SAVE_STEPS
#   QUANTIZATION_BIT (empty: none) MAX_SOURCE_LENGTH MAX_TARGET_LENGTH BATCH_SIZE GRAD_ACCUM
# Defaults: the bundled chat sample (ptuning/data/chat_sample) and the real ChatGLM-6B.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/paths.sh"

PRE_SEQ_LEN=${PRE_SEQ_LEN:-8}
LR=${LR:-1e-2}
MODEL=$(abs "${MODEL:-THUDM/chatglm-6b}")
CHAT_TRAIN_DATA=$(abs "${CHAT_TRAIN_DATA:-$here/data/chat_sample/train.json}")
CHAT_VAL_DATA=$(abs "${CHAT_VAL_DATA:-$here/data/chat_sample/dev.json}")
CHECKPOINT_NAME=$(out_dir "${CHECKPOINT_NAME:-$here/output/chat-chatglm-6b-pt-$PRE_SEQ_LEN-$LR}")
QUANTIZATION_BIT=${QUANTIZATION_BIT-4}

cd "$here"
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} python3 main.py \
    --do_train \
    --train_file "$CHAT_TRAIN_DATA" \
    --validation_file "$CHAT_VAL_DATA" \
    --prompt_column prompt \
    --response_column response \
    --history_column history \
    --overwrite_cache \
    --model_name_or_path "$MODEL" \
    --output_dir "$CHECKPOINT_NAME" \
    --overwrite_output_dir \
    --max_source_length "${MAX_SOURCE_LENGTH:-256}" \
    --max_target_length "${MAX_TARGET_LENGTH:-256}" \
    --per_device_train_batch_size "${BATCH_SIZE:-1}" \
    --per_device_eval_batch_size 1 \
    --gradient_accumulation_steps "${GRAD_ACCUM:-16}" \
    --predict_with_generate \
    --max_steps "${MAX_STEPS:-3000}" \
    --logging_steps 10 \
    --save_steps "${SAVE_STEPS:-1000}" \
    --learning_rate "$LR" \
    --pre_seq_len "$PRE_SEQ_LEN" \
    ${QUANTIZATION_BIT:+--quantization_bit "$QUANTIZATION_BIT"} \
    "$@"
