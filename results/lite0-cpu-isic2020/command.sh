# The README's transfer-regime example, run as written on the 2-core CPU (2026-11-29), then scored on the
# isic2019-part validation images the two-source models hold out, and compared with the shipped default.
python train_hf.py --dataset ../shared/data/isic2020-part --drop_duplicates true --fusion_mode channel \
  --pretrained_backbone efficientnet-lite0 --channels_last true --learning_rate 3e-4 --num_train_epochs 10 \
  --output_dir runs/lite0
python train_hf.py --do_eval_only true --model_name_or_path runs/lite0 --dataset ../shared/data/isic2019-part \
  --eval_split validation --drop_duplicates true --near_duplicate_distance 4 --output_dir runs/lite0-on-isic2019-val
python -m modeling.compare --output_dir runs/cross-lite0 lite2=checkpoints/asff-lite2-isic \
  lite0-isic2020=runs/lite0 lite0-isic2020=runs/lite0-on-isic2019-val
# Fusion weights on the 660 test images: recipes/gpu_sweep.py's fusion_summary over the model's outputs.
