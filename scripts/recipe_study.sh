#!/usr/bin/env bash
# The CPU recipe study of docs/experiments.md: one quick protocol for every row, so rows compare.
# Each row pre-trains ResNet-18 with the small stem on 32 px views (batch 32, bf16 where the CPU
# has it natively) for 3 epochs on a fixed 6,000 of the train.csv images (seed 0), with the row's
# changes to BASE (the CPU preset of scripts/bench_quality.py when the study ran, before the preset
# took row stride_1_overhead), then scores kNN and the linear probe on test.csv beside the two
# floors (the same network at random init, and image statistics), which the rows of one network
# share. The first rows use the stem at stride 2 (a quarter of the cost), the stride_1 rows the
# preset's stride 1, row size_64_overhead 64 px views at stride 2.
# A rerun skips finished rows.
#   bash scripts/recipe_study.sh                       # every row
#   bash scripts/recipe_study.sh colour_off flips_rot  # some rows
#   EUROSAT=../shared/data/EuroSAT bash scripts/recipe_study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EUROSAT="${EUROSAT:-datae/EuroSAT}"
OUT="${STUDY_DIR:-bench_results/study}"
PYTHON="${PYTHON:-python}"
# undoes what the CPU preset took from the study, so that every row keeps the recipe it was run with
BASE="--jitter_p=0.8 --jitter_strength=0.5 --vflip_p=0 --rotate90=False"
# name | stem stride | train_simsiam.py overrides after the CPU preset's (bench_quality.py) and BASE
ROWS=(
  "preset|2|"
  "colour_off|2|--jitter_p=0"
  "flips_rot|2|--vflip_p=0.5 --rotate90=True"
  "colour_weak|2|--jitter_p=0.2 --jitter_strength=0.25"
  "colour_writeup|2|--jitter_p=0.8 --jitter_strength=1.0 --gray_p=0.2"
  "crop_0.6|2|--crop_scale_min=0.6"
  "wd_1e-4|2|--weight_decay=1e-4"
  "lr_0.5|2|--base_lr=0.5"
  "batch_64|2|--batch_size=64"
  "stride_1|1|"
  "stride_1_colour_writeup|1|--jitter_p=0.8 --jitter_strength=1.0 --gray_p=0.2"
  "stride_1_overhead|1|--vflip_p=0.5 --rotate90=True --jitter_p=0.2 --jitter_strength=0.25"
  # EuroSAT's native 64 px through the stem at stride 2: about the cost of 32 px at stride 1. Its
  # floors are its own (another input size: bench_quality.py reruns a floor whose command differs)
  "size_64_overhead|2|--image_size=64 --vflip_p=0.5 --rotate90=True --jitter_p=0.2 --jitter_strength=0.25"
)
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=("${ROWS[@]%%|*}")  # the rows asked for, in that order
for name in "${names[@]}"; do
  row=""
  for candidate in "${ROWS[@]}"; do [[ "${candidate%%|*}" == "$name" ]] && row="$candidate"; done
  [[ -n "$row" ]] || { echo "unknown row $name; rows: ${ROWS[*]%%|*}" >&2; exit 2; }
  IFS="|" read -r _ stride args <<< "$row"
  echo "==== row $name: stride $stride $args"
  # the rows of one network share the floors of its first row (there they are computed)
  floors="$OUT/preset"; [[ "$stride" == 1 ]] && floors="$OUT/stride_1"
  "$PYTHON" scripts/bench_quality.py --eurosat_dir="$EUROSAT" --output_dir="$OUT/$name" \
    --floors_dir="$floors" --pretrain_images=6000 --pretrain_epochs=3 --skip_finetune=True \
    --pretrain_args="--knn_data_dir= --stem_stride=$stride $BASE $args"
done
