#!/usr/bin/env bash
# Predict on the ADGEN dev set with a P-Tuning v2 checkpoint and score it (BLEU-4, ROUGE-1/2/L).
# Writes OUTPUT_DIR/generated_predictions.txt and OUTPUT_DIR/predict_results.json.
# Environment overrides (relative paths are taken from the directory you call from):
#   MODEL CHECKPOINT (run folder name under ptuning/output) STEP CHECKPOINT_DIR OUTPUT_DIR TEST_FILE
#   PRE_SEQ_LEN QUANTIZATION_BIT (empty: none) MAX_SOURCE_LENGTH MAX_TARGET_LENGTH
# Extra arguments go to main.py, e.g.  bash ptuning/evaluate.sh --use_cpu --max_predict_samples 50
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/paths.sh"

PRE_SEQ_LEN=${PRE_SEQ_LEN-128}  # empty: no prefix (evaluate_lora.sh)
CHECKPOINT=${CHECKPOINT:-adgen-chatglm-6b-pt-128-2e-2}
STEP=${STEP:-3000}
MODEL=$(abs "${MODEL:-THUDM/chatglm-6b}")
TEST_FILE=$(abs "${TEST_FILE:-$here/AdvertiseGen/dev.json}")
CHECKPOINT_DIR=$(abs "${CHECKPOINT_DIR:-$here/output/$CHECKPOINT/checkpoint-$STEP}")
OUTPUT_DIR=$(out_dir "${OUTPUT_DIR:-$here/output/$CHECKPOINT}")
QUANTIZATION_BIT=${QUANTIZATION_BIT-4}

cd "$here"
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} python3 main.py \
    --do_predict \
    --validation_file "$TEST_FILE" \
    --test_file "$TEST_FILE" \
    --overwrite_cache \
    --prompt_column content \
    --response_column summary \
    --model_name_or_path "$MODEL" \
    "${CHECKPOINT_FLAG:---ptuning_checkpoint}" "$CHECKPOINT_DIR" \
    --output_dir "$OUTPUT_DIR" \
    --overwrite_output_dir \
    --max_source_length "${MAX_SOURCE_LENGTH:-64}" \
    --max_target_length "${MAX_TARGET_LENGTH:-64}" \
    --per_device_eval_batch_size "${EVAL_BATCH_SIZE:-1}" \
    --predict_with_generate \
    ${PRE_SEQ_LEN:+--pre_seq_len "$PRE_SEQ_LEN"} \
    ${QUANTIZATION_BIT:+--quantization_bit "$QUANTIZATION_BIT"} \
    "$@"
