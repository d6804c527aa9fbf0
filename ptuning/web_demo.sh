#!/usr/bin/env bash
# Chat in the browser with a base model plus a P-Tuning v2 prefix checkpoint.
# Environment overrides (relative paths are taken from the directory you call from):
#   MODEL CHECKPOINT_DIR PRE_SEQ_LEN
# Extra arguments go to web_demo.py, e.g.  bash ptuning/web_demo.sh --port 7861 --device cpu
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/paths.sh"

PRE_SEQ_LEN=${PRE_SEQ_LEN:-128}
MODEL=$(abs "${MODEL:-THUDM/chatglm-6b}")
CHECKPOINT_DIR=$(abs "${CHECKPOINT_DIR:-$here/output/adgen-chatglm-6b-pt-128-2e-2/checkpoint-3000}")

cd "$here"
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} python3 web_demo.py \
    --model_name_or_path "$MODEL" \
    --ptuning_checkpoint "$CHECKPOINT_DIR" \
    --pre_seq_len "$PRE_SEQ_LEN" \
    "$@"
