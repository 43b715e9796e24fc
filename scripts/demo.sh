#!/usr/bin/env bash
# The whole pipeline end to end on a small generated data set, on the CPU, in a few minutes:
#   data prep (fake SSL4EO-S12 v1.1 .zarr.zip -> PNGs), SimSiam pre-training, linear evaluation (+ random-init
#   and image-statistics floors), fine-tuning (+ from-scratch baseline), classifying one image, and the report's figures.
# Same scripts and code paths as a real run; only the sizes are tiny (ResNet-18, 32 px, a few epochs), so the
# accuracies it prints say nothing about real data: see the README's results table for those.
#   bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh

DATA=demo_data        # generated inputs
OUT=demo_outputs      # checkpoints, metrics, figures
rm -rf "$OUT"
COMMON="--output_dir=$OUT --cache_dir=$OUT/cache"
EUROSAT="--eurosat_dir=$DATA/EuroSAT"
step() { echo; echo "==== $* ===="; }

step "0. system check"
python scripts/system_check.py

step "1. generate demo data in $DATA/ (4 SSL4EO-S12-format .zarr.zip files, a EuroSAT-shaped folder)"
python scripts/make_demo_data.py --out_dir="$DATA" --n_zarr_files=4 --samples_per_file=8 --eurosat_per_class=40

step "1b. convert the Zarr files to RGB PNGs (make_dataset.py)"
python make_dataset.py --input_dir="$DATA/ssl4eo/train/S2L1C" --output_dir="$DATA/barlow_data/train" \
  --manifest="$DATA/barlow_data/manifest.csv" --num_processes=2

step "2. SimSiam pre-training (train_simsiam.py; tiny: ResNet-18, 32 px, 6 epochs)"
python train_simsiam.py --data_dir="$DATA/barlow_data/train" $COMMON --arch=resnet18 --image_size=32 \
  --batch_size=32 --base_lr=0.5 --num_epochs=6 --warmup_epochs=1 --proj_dim=256 --pred_dim=64 --save_every=3 \
  --knn_data_dir="$DATA/EuroSAT" --knn_every=3 --knn_k=20

step "3. linear evaluation (Linear_evaluation.py), then its two floors: random init and image statistics"
python Linear_evaluation.py $EUROSAT $COMMON --batch_size=64 --num_epochs=30
python Linear_evaluation.py $EUROSAT $COMMON --batch_size=64 --num_epochs=30 --pretrained_path=random \
  --arch=resnet18 --image_size=32
python Linear_evaluation.py $EUROSAT $COMMON --batch_size=64 --num_epochs=30 --pretrained_path=image_stats

step "3b. the same three at a quarter of train.csv's labels (label_fractions.png)"
for model in "" "--pretrained_path=random --arch=resnet18 --image_size=32" "--pretrained_path=image_stats"; do
  # shellcheck disable=SC2086
  python Linear_evaluation.py $EUROSAT $COMMON --batch_size=64 --num_epochs=30 --label_fraction=0.25 $model
done

step "4. fine-tuning (finetune_model.py), then the from-scratch baseline"
python finetune_model.py $EUROSAT $COMMON --num_epochs=3
python finetune_model.py $EUROSAT $COMMON --num_epochs=3 --pretrained_path=random --arch=resnet18 --image_size=32

step "5. classify one image (classify_image.py)"
IMAGE=$(ls "$DATA"/EuroSAT/Forest/*.jpg | head -n 1)
python classify_image.py "$IMAGE" --model_path="$OUT/finetuned_eurosat_best_model.pth"

step "6. figures (plot_results.py)"
python plot_results.py --output_dir="$OUT" --figures_dir="$OUT/figures"

echo
echo "demo finished: data in $DATA/, checkpoints and metrics in $OUT/, figures in $OUT/figures/"
