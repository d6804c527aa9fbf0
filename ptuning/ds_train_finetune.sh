#!/usr/bin/env bash
# Full fine-tuning of every weight with DeepSpeed, 4 processes (GPUs, or CPU processes over gloo where there is
# no GPU). Needs `pip install -e ".[deepspeed]"`. Environment overrides (relative paths are taken from the
# directory you call from): MODEL TRAIN_FILE TEST_FILE OUTPUT_DIR LR MAX_STEPS SAVE_STEPS NUM_GPUS BATCH_SIZE
#   DS_CONFIG   deepspeed.json (ZeRO-2, the default) or deepspeed_zero3.json (ZeRO-3: parameters sharded too)
#   PRECISION   fp16, bf16 or fp32; by default fp16 on GPUs (as the original), bf16 on CPUs that compute it
#               natively, else fp32 (DeepSpeed refuses fp16 on CPUs)
#   HOSTFILE    several machines: a DeepSpeed hostfile ("host slots=N" per line; see ptuning/README.md)
# Extra arguments go to main.py, e.g. --lora_rank 8 or --pre_seq_len 128 (LoRA / P-Tuning v2 under DeepSpeed).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/paths.sh"

LR=${LR:-1e-4}
MODEL=$(abs "${MODEL:-THUDM/chatglm-6b}")
TRAIN_FILE=$(abs "${TRAIN_FILE:-$here/AdvertiseGen/train.json}")
TEST_FILE=$(abs "${TEST_FILE:-$here/AdvertiseGen/dev.json}")
OUTPUT_DIR=$(out_dir "${OUTPUT_DIR:-$here/output/adgen-chatglm-6b-ft-$LR}")
DS_CONFIG=$(abs "${DS_CONFIG:-$here/deepspeed.json}")
MASTER_PORT=${MASTER_PORT:-$(shuf -n 1 -i 10000-65535)}
PRECISION=${PRECISION:-$(python3 -c 'import torch
print("fp16" if torch.cuda.is_available() else "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32")')}
case "$PRECISION" in
    fp16|bf16) precision_flag=(--"$PRECISION") ;;
    fp32|"") precision_flag=() ;;
    *) echo "error: PRECISION must be fp16, bf16 or fp32, not '$PRECISION'" >&2; exit 2 ;;
esac
launcher=(--num_gpus="${NUM_GPUS:-4}")
if [ -n "${HOSTFILE:-}" ]; then launcher=(--hostfile "$(abs "$HOSTFILE")"); fi

cd "$here"
deepspeed "${launcher[@]}" --master_port "$MASTER_PORT" main.py \
    --deepspeed "$DS_CONFIG" \
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
    ${precision_flag[@]+"${precision_flag[@]}"} \
    "$@"
