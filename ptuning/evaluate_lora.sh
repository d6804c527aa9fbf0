#!/usr/bin/env bash
# Predict on the ADGEN dev set with a LoRA adapter (train_lora.sh) on its base model and score it (BLEU-4,
# ROUGE-1/2/L): evaluate.sh with --lora_checkpoint instead of a prefix. On a quantized base the adapter is
# applied live, otherwise merged into the weights. Overrides as evaluate.sh (without PRE_SEQ_LEN);
# CHECKPOINT defaults to train_lora.sh's run.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

export CHECKPOINT=${CHECKPOINT:-adgen-chatglm-6b-lora-8-2e-4}
PRE_SEQ_LEN= CHECKPOINT_FLAG=--lora_checkpoint exec bash "$here/evaluate.sh" "$@"
