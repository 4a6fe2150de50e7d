#!/bin/bash
# ASFF-Lite2 on isic2019-part alone (the default's backbone, the earlier CPU isic2020-part run's recipe), then
# evaluated on the isic2020-part test split: the cross-source cell "trained on isic2019-part -> isic2020-part test".
set -e
python3 train_hf.py --pretrained_backbone efficientnet-lite2 --fusion_mode channel --image_size 224 \
  --dataset ../shared/data/isic2019-part --test_fraction 0.15 --learning_rate 5e-4 --num_train_epochs 6 \
  --warmup_steps 0.1 --weight_decay 0.05 --per_device_train_batch_size 32 --channels_last true --num_threads 2 \
  --dataloader_num_workers 1 --metric_for_best_model roc_auc --max_train_minutes 60 --cam_frame_share_limit 200 \
  --output_dir runs/lite2-isic2019 --disable_tqdm true
python3 train_hf.py --do_eval_only --model_name_or_path runs/lite2-isic2019 --dataset ../shared/data/isic2020-part \
  --num_threads 2 --dataloader_num_workers 1 --cam_frame_share_limit 200 --output_dir runs/lite2-isic2019-on-isic2020 \
  --disable_tqdm true
echo ALLDONE
