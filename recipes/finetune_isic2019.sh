#!/usr/bin/env bash
# Fine-tuning onto a new source, the worked example of README "Fine-tune on your own images": the shipped ISIC-2020
# ASFF-ResNet-50 fine-tuned on isic2019-part, against the same architecture trained from scratch on isic2019-part
# under the same budget (epochs, images, schedule), compared on isic2019-part's own test split (carved, 15 %,
# stratified, seed 42; validation is carved from the rest and chooses the epoch and the threshold).
#
#   recipes/finetune_isic2019.sh ISIC2019_DIR OUTPUT_DIR     (env: EPOCHS=10, BUDGET_MIN=none, EXTRA="")
#
# EXTRA takes more train_hf.py options for both runs, e.g. EXTRA="--bf16 true --dataloader_num_workers 8" on a GPU,
# or EXTRA="--max_train_samples 400" for a quick CPU check. The fine-tuning run keeps the checkpoint's image
# processor (no colour constancy: the checkpoint was trained without it); the scratch run uses the same.
set -euo pipefail
data=${1:?usage: $0 ISIC2019_DIR OUTPUT_DIR}
out=${2:?usage: $0 ISIC2019_DIR OUTPUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$out"
budget=()
if [ -n "${BUDGET_MIN:-}" ]; then budget=(--max_train_minutes "$BUDGET_MIN"); fi
# shellcheck disable=SC2206
extra=(${EXTRA:-})
common=(--dataset "$data" --test_fraction 0.15 --drop_duplicates true --image_size 224 --num_train_epochs
  "${EPOCHS:-10}" --per_device_train_batch_size 32 --lr_scheduler_type cosine --warmup_steps 0.1 --weight_decay 0.05
  --seed 42 --split_seed 42 --channels_last true --disable_tqdm true "${budget[@]}" "${extra[@]}")
python train_hf.py "${common[@]}" --model_name_or_path checkpoints/asff-resnet50-isic2020 --learning_rate 3e-4 \
  --output_dir "$out/finetuned" >"$out/finetuned.log" 2>&1
python train_hf.py "${common[@]}" --fusion_mode channel --learning_rate 1e-3 \
  --output_dir "$out/scratch" >"$out/scratch.log" 2>&1
python -m modeling.compare --output_dir "$out" scratch="$out/scratch" finetuned="$out/finetuned"
