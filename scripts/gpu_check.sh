#!/usr/bin/env bash
# One prepared check for a GPU machine (written for one H100 lent for 15 minutes; nothing is downloaded there):
#   1. system check, 2. the CUDA tests (tests/test_cuda.py, plus the augmentation-match tests on CUDA's box),
#   3. the pre-training throughput benchmark at ResNet-50 / 224 px, batch 256, bf16: ceiling, reference, default.
#   bash scripts/gpu_check.sh [OUT_DIR]        # writes OUT_DIR/bench_pretrain_gpu.json and OUT_DIR/gpu_check.log
# Uses .venv/bin/python if present, else python3 (torch and torchvision must be installed; pytest, pandas, tqdm,
# zarr, matplotlib, scikit-learn may travel as wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-bench_results}}"
mkdir -p "$OUT_DIR"
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1
{
  echo "== system check"; $PY scripts/system_check.py
  echo "== CUDA tests"; $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_augment_match.py || true
  echo "== throughput: ResNet-50, 224 px, batch 256, bf16"
  $PY scripts/bench_pretrain.py --arch=resnet50 --image_size=224 --batch_size=256 --steps=15 --warmup_steps=5 \
    --num_images=1024 --num_workers=12 --output_json="$OUT_DIR/bench_pretrain_gpu.json"
} 2>&1 | tee "$OUT_DIR/gpu_check.log"
