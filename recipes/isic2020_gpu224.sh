#!/usr/bin/env bash
# The reference recipe at 224 px on one GPU: ASFF `channel`, plain ResNet-50 `none` and ASFF `spatial`, trained in
# parallel (one process each, same arguments and seed) from scratch, then compared on the same test images (paired
# differences from plain ResNet-50: the paper's claim is that the fusion beats it).
#
#   recipes/isic2020_gpu224.sh DATA_DIR OUTPUT_DIR        (env: EPOCHS=40, BUDGET_MIN=6, WORKERS=4)
#
# It differs from the CPU recipe (recipes/isic2020_cpu128.sh) only in image size, epochs and bf16 autocast.
# BUDGET_MIN is a safety net (--max_train_minutes): a run that reaches it stops, evaluates and is reported as such.
set -euo pipefail
data=${1:?usage: $0 DATA_DIR OUTPUT_DIR}
out=${2:?usage: $0 DATA_DIR OUTPUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$out"
recipe=(--dataset "$data" --drop_duplicates true --image_size 224 --num_train_epochs "${EPOCHS:-40}"
  --learning_rate 1e-3 --per_device_train_batch_size 32 --lr_scheduler_type cosine --warmup_steps 0.1
  --weight_decay 0.05 --augmentation_strength 1.0 --seed 42 --split_seed 42 --validation_fraction 0.15
  --bf16 "${BF16:-true}" --channels_last true --dataloader_num_workers "${WORKERS:-4}"
  --dataloader_persistent_workers true --dataloader_pin_memory true --save_total_limit 1
  --max_train_minutes "${BUDGET_MIN:-6}" --disable_tqdm true --logging_steps 20)
# One GPU per process (round robin): with several visible GPUs the Trainer would otherwise wrap each model in
# DataParallel and multiply its batch size.
gpus=$(nvidia-smi -L 2>/dev/null | wc -l || true)
pids=()
index=0
for model in channel none spatial; do
  pin=()
  if [ -z "${CUDA_VISIBLE_DEVICES+set}" ] && [ "${gpus:-0}" -gt 0 ]; then pin=(env "CUDA_VISIBLE_DEVICES=$((index % gpus))"); fi
  "${pin[@]}" python train_hf.py "${recipe[@]}" --models "$model" --output_dir "$out/$model" \
    >"$out/$model.log" 2>&1 &
  pids+=($!)
  index=$((index + 1))
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for model in channel none spatial; do tail -n 3 "$out/$model.log"; done
python -m modeling.compare --output_dir "$out" none="$out/none" channel="$out/channel" spatial="$out/spatial"
exit $status
