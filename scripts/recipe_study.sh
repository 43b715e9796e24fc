#!/usr/bin/env bash
# The CPU recipe study of docs/experiments.md: one quick protocol for every row, so rows compare.
# Each row pre-trains ResNet-18 with the small stem on 32 px views (batch 32, bf16 where the CPU
# has it natively) for 3 epochs on a fixed 6,000 of the train.csv images (seed 0), with the row's
# changes to the recipe of the CPU preset of scripts/bench_quality.py, then scores kNN and the
# linear probe on test.csv beside the two floors (the same network at random init, and image
# statistics), which the rows of one network share. The first rows use the stem at stride 2 (a
# quarter of the cost); the stride_1 rows the preset's stride 1.
# A rerun skips finished rows.
#   bash scripts/recipe_study.sh                       # every row
#   bash scripts/recipe_study.sh colour_off flips_rot  # some rows
#   EUROSAT=../shared/data/EuroSAT bash scripts/recipe_study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EUROSAT="${EUROSAT:-datae/EuroSAT}"
OUT="${STUDY_DIR:-bench_results/study}"
PYTHON="${PYTHON:-python}"
# name | train_simsiam.py overrides after the CPU preset's (bench_quality.py, PRESETS["cpu"])
ROWS=(
  "preset|"
  "colour_off|--jitter_p=0"
  "flips_rot|--vflip_p=0.5 --rotate90=True"
  "colour_weak|--jitter_p=0.2 --jitter_strength=0.25"
  "colour_writeup|--jitter_p=0.8 --jitter_strength=1.0 --gray_p=0.2"
  "crop_0.6|--crop_scale_min=0.6"
  "wd_1e-4|--weight_decay=1e-4"
  "lr_0.5|--base_lr=0.5"
  "batch_64|--batch_size=64"
  "stride_1|--stem_stride=1"
  "stride_1_colour_writeup|--stem_stride=1 --jitter_p=0.8 --jitter_strength=1.0 --gray_p=0.2"
  "stride_1_overhead|--stem_stride=1 --vflip_p=0.5 --rotate90=True --jitter_p=.2 --jitter_strength=.25"
)
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=("${ROWS[@]%%|*}")  # the rows asked for, in that order
for name in "${names[@]}"; do
  args=""
  for row in "${ROWS[@]}"; do [[ "${row%%|*}" == "$name" ]] && args="${row#*|}" && found=1; done
  [[ "${found:-}" == 1 ]] || { echo "unknown row $name; rows: ${ROWS[*]%%|*}" >&2; exit 2; }
  found=0
  echo "==== row $name: $args"
  floors="$OUT/preset"  # the stride-1 rows share the floors of row stride_1 (its random init)
  [[ "$args" == *"--stem_stride=1"* && "$name" != stride_1 ]] && floors="$OUT/stride_1"
  "$PYTHON" scripts/bench_quality.py --eurosat_dir="$EUROSAT" --output_dir="$OUT/$name" \
    --floors_dir="$floors" --pretrain_images=6000 --pretrain_epochs=3 --skip_finetune=True \
    --pretrain_args="--knn_data_dir= --stem_stride=2 $args"
done
