#!/usr/bin/env bash
# LoRA on ADGEN: a rank-8 adapter on every block's query_key_value over the frozen INT4 ChatGLM-6B, lr 2e-4,
# 3000 steps; data, batch, lengths and the other variables as train.sh, which this calls without a prefix.
# Checkpoints hold only the adapter, in peft's layout.
# Environment overrides besides train.sh's: LORA_RANK LORA_ALPHA (default 2 x rank) LORA_TARGET (comma list)
# Extra arguments go to main.py, e.g.  bash ptuning/train_lora.sh --use_cpu --max_train_samples 200
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

LORA_RANK=${LORA_RANK:-8}
export LR=${LR:-2e-4}
export OUTPUT_DIR=${OUTPUT_DIR:-$here/output/adgen-chatglm-6b-lora-$LORA_RANK-$LR}
PRE_SEQ_LEN= exec bash "$here/train.sh" --lora_rank "$LORA_RANK" ${LORA_ALPHA:+--lora_alpha "$LORA_ALPHA"} \
    --lora_target "${LORA_TARGET:-query_key_value}" "$@"
