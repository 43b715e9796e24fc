#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (its own python3 has torch, torchvision, pandas, scikit-learn,
# tqdm, matplotlib and pytest, but no zarr, and nothing can be downloaded there). Each part runs under its own
# time limit, and whatever a part measures is written under OUT as soon as it is measured:
#   1. system check                                   -> OUT/system_check.txt
#   2. the CUDA tests (tests/test_cuda.py)            -> OUT/cuda_tests.txt
#   3. pre-training throughput, ResNet-50 at 224 px, at batch 256 and at the write-up's 32: ceiling, reference,
#      reference + mixed precision, default          -> OUT/bench_pretrain_batch<N>.json
#   everything printed                                -> OUT/gpu_check.log
#
#   OUT=/tmp/gpu bash scripts/gpu_check.sh
#
# The exit status is that of the first part that failed (0 when all passed). For a smoke test on a CPU the sizes
# can be made tiny: GPU_CHECK_ARCH, GPU_CHECK_IMAGE_SIZE, GPU_CHECK_BATCHES, GPU_CHECK_STEPS, GPU_CHECK_IMAGES,
# GPU_CHECK_TESTS; PYTHON picks the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench_results/gpu_check}"
PYTHON="${PYTHON:-python3}"
ARCH="${GPU_CHECK_ARCH:-resnet50}"
IMAGE_SIZE="${GPU_CHECK_IMAGE_SIZE:-224}"
BATCHES="${GPU_CHECK_BATCHES:-256 32}"
STEPS="${GPU_CHECK_STEPS:-15}"
IMAGES="${GPU_CHECK_IMAGES:-1024}"
TESTS="${GPU_CHECK_TESTS:-tests/test_cuda.py tests/test_augment_match.py}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0

# part NAME SECONDS COMMAND...: run COMMAND under a time limit, say how it ended, remember the first failure
part() {
    local name="$1" limit="$2" rc
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout "$limit" "$@"
    rc=$?
    [[ $rc -eq 124 ]] && echo "== $name: stopped at its ${limit} s limit"
    echo "== $name: exit $rc"
    [[ $rc -ne 0 && $status -eq 0 ]] && status=$rc
    return 0
}

{
    part "system check" 60 bash -c "$PYTHON scripts/system_check.py | tee '$OUT/system_check.txt'"
    # shellcheck disable=SC2086
    part "CUDA tests" 240 bash -c "$PYTHON -m pytest -q -p no:cacheprovider $TESTS 2>&1 | tee '$OUT/cuda_tests.txt'; exit \${PIPESTATUS[0]}"
    for batch in $BATCHES; do
        part "throughput: $ARCH, $IMAGE_SIZE px, batch $batch" 150 "$PYTHON" scripts/bench_pretrain.py \
            --arch="$ARCH" --image_size="$IMAGE_SIZE" --batch_size="$batch" --steps="$STEPS" --warmup_steps=5 \
            --num_images="$IMAGES" --num_workers=12 --output_json="$OUT/bench_pretrain_batch$batch.json"
    done
    echo "gpu_check.sh: done, exit $status; files in $OUT"
    exit $status
} 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
