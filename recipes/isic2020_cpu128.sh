#!/usr/bin/env bash
# The reference CPU recipe (RESULTS.md): three models under one command and seed, 128 px, 8 epochs, from scratch.
#
#   recipes/isic2020_cpu128.sh DATA_DIR OUTPUT_DIR
set -euo pipefail
data=${1:?usage: $0 DATA_DIR OUTPUT_DIR}
out=${2:?usage: $0 DATA_DIR OUTPUT_DIR}
cd "$(dirname "$0")/.."
exec python train_hf.py --dataset "$data" --drop_duplicates true \
  --models channel,none,spatial --image_size 128 --num_train_epochs 8 --learning_rate 1e-3 \
  --per_device_train_batch_size 32 --lr_scheduler_type cosine --warmup_steps 0.1 --weight_decay 0.05 \
  --augmentation_strength 1.0 --seed 42 --split_seed 42 --validation_fraction 0.15 --output_dir "$out"
