#!/usr/bin/env bash
# Full fine-tuning of every weight with DeepSpeed ZeRO stage 2 (deepspeed.json), fp16, 4 GPUs.
# Needs `pip install deepspeed` and GPUs. Environment overrides (relative paths are taken from the directory
# you call from): MODEL TRAIN_FILE TEST_FILE OUTPUT_DIR LR MAX_STEPS SAVE_STEPS NUM_GPUS BATCH_SIZE.
# Without DeepSpeed, the same run with torchrun (CPU: add --use_cpu --ddp_backend gloo, drop --fp16):
#   torchrun --nproc_per_node 2 ptuning/main.py --do_train ... (see ptuning/README.md)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/paths.sh"

LR=${LR:-1e-4}
MODEL=$(abs "${MODEL:-THUDM/chatglm-6b}")
TRAIN_FILE=$(abs "${TRAIN_FILE:-$here/AdvertiseGen/train.json}")
TEST_FILE=$(abs "${TEST_FILE:-$here/AdvertiseGen/dev.json}")
OUTPUT_DIR=$(out_dir "${OUTPUT_DIR:-$here/output/adgen-chatglm-6b-ft-$LR}")
MASTER_PORT=${MASTER_PORT:-$(shuf -n 1 -i 10000-65535)}

cd "$here"
deepspeed --num_gpus="${NUM_GPUS:-4}" --master_port "$MASTER_PORT" main.py \
    --deepspeed deepspeed.json \
    --do_train \
    --train_file "$TRAIN_FILE" \
    --test_file "$TEST_FILE" \
    --prompt_column content \
    --response_column summary \
    --overwrite_cache \
    --model_name_or_path "$MODEL" \
    --output_dir "$OUTPUT_DIR" \
    --overwrite_output_dir \
    --max_source_length 64 \
    --max_target_length 64 \
    --per_device_train_batch_size "${BATCH_SIZE:-4}" \
    --per_device_eval_batch_size 1 \
    --gradient_accumulation_steps 1 \
    --predict_with_generate \
    --max_steps "${MAX_STEPS:-5000}" \
    --logging_steps 10 \
    --save_steps "${SAVE_STEPS:-1000}" \
    --learning_rate "$LR" \
    --fp16 \
    "$@"
