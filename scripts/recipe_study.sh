#!/usr/bin/env bash
# The CPU recipe study of docs/experiments.md: one quick protocol for every row, so rows compare, and
# every row's whole recipe written out in its line (nothing is inherited from a preset, so a later
# preset change never changes what a row means).
# Protocol (PROTOCOL below, the same for every row): ResNet-18 with the small stem, 1 warm-up epoch, 3
# epochs on a fixed 6,000 of the train.csv images (seed 0), no blur or solarisation, bf16 where the CPU
# computes it natively, the kNN monitor off; then kNN (k = 20, 200) and the linear probe (weight decays
# 0 to 1e-2, PROBE) beside the two floors (the same network at random init, and image statistics), on
# validation.csv and test.csv. Rows
# are ranked on validation (scripts/rank_study.py); test.csv is only reported. The rows of one network
# share its floors (the first row of that stem stride and size computes them; bench_quality.py reruns a
# floor whose command differs).
# A rerun skips finished rows.
#   bash scripts/recipe_study.sh                       # every row, then the ranking
#   bash scripts/recipe_study.sh colour_off flips_rot  # some rows, then the ranking
#   EUROSAT=../shared/data/EuroSAT bash scripts/recipe_study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EUROSAT="${EUROSAT:-datae/EuroSAT}"
OUT="${STUDY_DIR:-bench_results/study}"
PYTHON="${PYTHON:-python}"
PROTOCOL="--arch=resnet18 --small_stem=True --warmup_epochs=1 --blur_p=0 --solarize=False --knn_data_dir="
# the probe's weight decays as the rows ran (Linear_evaluation.py's default grid now reaches 0.3)
PROBE="--weight_decays=0,1e-5,3e-5,1e-4,3e-4,1e-3,3e-3,1e-2"
# name, then the row's recipe: stem stride, input size (px), batch (pairs), BASE_LR (per 256 pairs),
# weight decay, smallest crop, colour jitter p, jitter strength, grayscale p, vertical flip p, quarter turns
ROWS=(
  "preset                  2 32 32 0.2 5e-4 0.3 0.8 0.5  0   0   False"
  "colour_off              2 32 32 0.2 5e-4 0.3 0   0.5  0   0   False"
  "flips_rot               2 32 32 0.2 5e-4 0.3 0.8 0.5  0   0.5 True"
  "colour_weak             2 32 32 0.2 5e-4 0.3 0.2 0.25 0   0   False"
  "colour_writeup          2 32 32 0.2 5e-4 0.3 0.8 1.0  0.2 0   False"
  "crop_0.6                2 32 32 0.2 5e-4 0.6 0.8 0.5  0   0   False"
  "wd_1e-4                 2 32 32 0.2 1e-4 0.3 0.8 0.5  0   0   False"
  "lr_0.5                  2 32 32 0.5 5e-4 0.3 0.8 0.5  0   0   False"
  "batch_64                2 32 64 0.2 5e-4 0.3 0.8 0.5  0   0   False"
  "stride_1                1 32 32 0.2 5e-4 0.3 0.8 0.5  0   0   False"
  "stride_1_colour_writeup 1 32 32 0.2 5e-4 0.3 0.8 1.0  0.2 0   False"
  "stride_1_overhead       1 32 32 0.2 5e-4 0.3 0.2 0.25 0   0.5 True"
  "size_64_overhead        2 64 32 0.2 5e-4 0.3 0.2 0.25 0   0.5 True"
)
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=("${ROWS[@]%% *}")  # the rows asked for, in that order
for name in "${names[@]}"; do
  row=""
  for candidate in "${ROWS[@]}"; do [[ "${candidate%% *}" == "$name" ]] && row="$candidate"; done
  [[ -n "$row" ]] || { echo "unknown row $name; rows: ${ROWS[*]%% *}" >&2; exit 2; }
  read -r _ stride size batch lr wd crop jitter strength gray vflip turns <<< "$row"
  recipe="--stem_stride=$stride --image_size=$size --batch_size=$batch --base_lr=$lr \
--weight_decay=$wd --crop_scale_min=$crop --jitter_p=$jitter --jitter_strength=$strength \
--gray_p=$gray --vflip_p=$vflip --rotate90=$turns"
  echo "==== row $name: $recipe"
  # the floors of a network (stem stride, input size) are computed by the first row that has it
  floors="$OUT/preset"
  for candidate in "${ROWS[@]}"; do
    read -r other other_stride other_size _ <<< "$candidate"
    [[ "$other_stride $other_size" == "$stride $size" ]] && { floors="$OUT/$other"; break; }
  done
  "$PYTHON" scripts/bench_quality.py --preset=custom --amp=bf16 --eurosat_dir="$EUROSAT" \
    --output_dir="$OUT/$name" --floors_dir="$floors" --pretrain_images=6000 --pretrain_epochs=3 \
    --skip_finetune=True --pretrain_args="$PROTOCOL $recipe" --linear_args="$PROBE"
done
"$PYTHON" scripts/rank_study.py --study_dir="$OUT"
