#!/usr/bin/env bash
# The CPU recipe study of docs/experiments.md: one quick protocol for every row, so rows compare.
# Each row pre-trains the CPU preset's network (ResNet-18, small stem, 32 px, bf16, batch 32) for 3
# epochs on a fixed 6,000 of the train.csv images (seed 0), with the row's changes to the preset's
# recipe, then scores kNN and the linear probe on test.csv beside the two floors (the same network
# at random init, and image statistics), which every row shares (the first row computes them).
# A rerun skips finished rows; one row takes about 12 minutes on 2 cores.
#   bash scripts/recipe_study.sh                       # every row
#   bash scripts/recipe_study.sh colour_off flips_rot  # some rows
#   EUROSAT=../shared/data/EuroSAT bash scripts/recipe_study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EUROSAT="${EUROSAT:-datae/EuroSAT}"
OUT="${STUDY_DIR:-bench_results/study}"
PYTHON="${PYTHON:-python}"
# name | train_simsiam.py overrides after the CPU preset's (scripts/bench_quality.py, PRESETS["cpu"])
ROWS=(
  "preset|"
  "colour_off|--jitter_p=0"
  "colour_weak|--jitter_p=0.2 --jitter_strength=0.25"
  "colour_writeup|--jitter_p=0.8 --jitter_strength=1.0 --gray_p=0.2"
  "flips_rot|--vflip_p=0.5 --rotate90=True"
  "crop_0.6|--crop_scale_min=0.6"
  "crop_0.14|--crop_scale_min=0.14"
  "lr_0.5|--base_lr=0.5"
  "lr_0.05|--base_lr=0.05"
  "wd_1e-4|--weight_decay=1e-4"
  "wd_1e-3|--weight_decay=1e-3"
  "batch_64|--batch_size=64"
  "batch_16|--batch_size=16"
)
wanted=" $* "
for row in "${ROWS[@]}"; do
  name="${row%%|*}"
  args="${row#*|}"
  [[ $# -gt 0 && "$wanted" != *" $name "* ]] && continue
  echo "==== row $name: $args"
  "$PYTHON" scripts/bench_quality.py --eurosat_dir="$EUROSAT" --output_dir="$OUT/$name" \
    --floors_dir="$OUT/preset" --pretrain_images=6000 --pretrain_epochs=3 --skip_finetune=True \
    --pretrain_args="--knn_data_dir= $args"
done
