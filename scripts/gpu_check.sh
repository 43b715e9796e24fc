#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (its own python3 has torch, torchvision, pandas, scikit-learn,
# tqdm, matplotlib and pytest, but no zarr, and nothing can be downloaded there). Each part runs under its own
# time limit, and whatever a part measures is written under OUT as soon as it is measured:
#   1. system check                                   -> OUT/system_check.txt
#   2. pre-training throughput, ResNet-50 at 224 px, at batch 256 and at the write-up's 32 (alone on the GPU):
#      ceiling, reference (tf32) and reference + mixed precision over whole worker waves, default (the next
#      batch made on a side stream), default_serial (the same on the model's stream), the data work alone; at
#      batch 32 also ceiling and default with CUDA graphs (compiled first)   -> OUT/bench_pretrain_batch<N>.json
#   3. the CUDA tests (tests/test_cuda.py), beside part 4 -> OUT/cuda_tests.txt
#   4. real-data quality (scripts/bench_quality.py --preset=gpu) on EUROSAT, when that folder exists: SimSiam
#      for about QUALITY_PRETRAIN_S seconds (the epochs follow from part 2's default rate at the first batch
#      size), then kNN, linear probe and fine-tuning against random init
#                                                     -> OUT/quality.json, OUT/quality.md (the table so far),
#                                                        OUT/quality_logs.tar.gz (every step's log and metrics)
#   everything printed                                -> OUT/gpu_check.log
#
#   OUT=/tmp/gpu bash scripts/gpu_check.sh
#
# The CUDA tests share the GPU with the quality run: they are small, and a lent machine's time is short. The
# exit status is that of the first part that failed (0 when all passed). For a smoke test on a CPU the sizes
# can be made tiny: GPU_CHECK_ARCH, GPU_CHECK_IMAGE_SIZE, GPU_CHECK_BATCHES, GPU_CHECK_GRAPHS_BATCHES,
# GPU_CHECK_STEPS, GPU_CHECK_IMAGES, GPU_CHECK_WORKERS, GPU_CHECK_TESTS, GPU_CHECK_EUROSAT, GPU_CHECK_PRETRAIN_S,
# GPU_CHECK_QUALITY_ARGS; PYTHON picks the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench_results/gpu_check}"
PYTHON="${PYTHON:-python3}"
ARCH="${GPU_CHECK_ARCH:-resnet50}"
IMAGE_SIZE="${GPU_CHECK_IMAGE_SIZE:-224}"
BATCHES="${GPU_CHECK_BATCHES:-256 32}"
GRAPHS_BATCHES="${GPU_CHECK_GRAPHS_BATCHES:-32}"  # batches also timed with CUDA graphs (launch-bound steps)
STEPS="${GPU_CHECK_STEPS:-15}"
IMAGES="${GPU_CHECK_IMAGES:-1024}"
WORKERS="${GPU_CHECK_WORKERS:-12}"  # DataLoader workers of the reference pipeline
TESTS="${GPU_CHECK_TESTS:-tests/test_cuda.py tests/test_augment_match.py}"
EUROSAT="${GPU_CHECK_EUROSAT:-datae/EuroSAT}"
QUALITY_PRETRAIN_S="${GPU_CHECK_PRETRAIN_S:-160}"
QUALITY_ARGS="${GPU_CHECK_QUALITY_ARGS:-}"
WORK="$(mktemp -d /tmp/gpu_check.XXXXXX)"  # images, caches, checkpoints: too big to bring back
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

# part NAME SECONDS COMMAND...: run COMMAND under a time limit and say how it ended; a failure is noted in
# WORK/failures (a file, so that a part run in the background counts too)
part() {
    local name="$1" limit="$2" rc
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout "$limit" "$@"
    rc=$?
    [[ $rc -eq 124 ]] && echo "== $name: stopped at its ${limit} s limit"
    echo "== $name: exit $rc"
    [[ $rc -ne 0 ]] && echo "$rc" >>"$WORK/failures"
    return 0
}

# copy the quality run's small files to OUT (temporary name, then rename: a stopped copy leaves no half file)
save_quality() {
    local q="$WORK/quality" f
    for f in quality.json quality.md; do
        [[ -f "$q/$f" ]] && cp "$q/$f" "$OUT/.$f.tmp" && mv "$OUT/.$f.tmp" "$OUT/$f"
    done
    [[ -d "$q" ]] && (cd "$q" && find . -maxdepth 1 -type f \( -name '*.log' -o -name '*.json' -o -name '*.md' \
        -o -name '*metrics*.pth' -o -name '*.csv' \) -print0 | tar czf "$OUT/.quality_logs.tmp" --null -T - \
        && mv "$OUT/.quality_logs.tmp" "$OUT/quality_logs.tar.gz")
    return 0
}

{
    part "system check" 60 bash -c "$PYTHON scripts/system_check.py | tee '$OUT/system_check.txt'"
    # the first run generates the images (SSL4EO-S12 patch size), the second reuses them. A reference row waits
    # for four waves of the workers (one skipped, two timed, one that closes the window); CUDA graphs compile
    # first. The graph rows come last, so a run stopped at its limit keeps every other row.
    for batch in $BATCHES; do
        graphs=False limit=300
        [[ " $GRAPHS_BATCHES " == *" $batch "* ]] && graphs=True limit=420
        part "throughput: $ARCH, $IMAGE_SIZE px, batch $batch" "$limit" "$PYTHON" scripts/bench_pretrain.py \
            --generated_dir="$WORK/images" --num_images="$IMAGES" --arch="$ARCH" \
            --image_size="$IMAGE_SIZE" --batch_size="$batch" --graphs="$graphs" \
            --steps="$STEPS" --warmup_steps=5 --num_workers="$WORKERS" \
            --output_json="$OUT/bench_pretrain_batch$batch.json"
    done

    # shellcheck disable=SC2086
    part "CUDA tests" 240 bash -c "$PYTHON -m pytest -q -p no:cacheprovider $TESTS >'$OUT/cuda_tests.txt' 2>&1" &
    tests_pid=$!
    if [[ -f "$EUROSAT/train.csv" ]]; then
        # epochs that fit QUALITY_PRETRAIN_S at the default pipeline's measured rate, allowing ~1.5 s per epoch
        # for the checkpoint and the kNN monitor
        epochs=$("$PYTHON" -c "import json, pandas; \
rate = json.load(open('$OUT/bench_pretrain_batch${BATCHES%% *}.json'))['results']['default']['pairs_per_s']; \
n = len(pandas.read_csv('$EUROSAT/train.csv')); \
print(max(2, min(200, int($QUALITY_PRETRAIN_S / (n / rate + 1.5)))))" 2>/dev/null)
        if [[ -n "$epochs" ]]; then
            echo "== quality: $epochs pre-training epochs (about ${QUALITY_PRETRAIN_S} s at the measured rate)"
        else
            epochs=10
            echo "== quality: no measured rate (the throughput part failed): $epochs pre-training epochs"
        fi
        (while sleep 10; do save_quality; done) &
        saver_pid=$!
        # shellcheck disable=SC2086
        part "quality" $((QUALITY_PRETRAIN_S + 150)) "$PYTHON" scripts/bench_quality.py --preset=gpu \
            --eurosat_dir="$EUROSAT" --output_dir="$WORK/quality" --cache_dir="$WORK/cache" \
            --pretrain_epochs="$epochs" $QUALITY_ARGS
        kill "$saver_pid" 2>/dev/null
        save_quality
    else
        echo "== quality: skipped ($EUROSAT/train.csv not found; copy a subset with scripts/copy_eurosat_subset.py)"
    fi
    wait "$tests_pid"
    echo "== CUDA tests, as printed:"
    cat "$OUT/cuda_tests.txt"
    status=$(head -n 1 "$WORK/failures" 2>/dev/null || echo 0)
    echo "gpu_check.sh: done, exit $status; files in $OUT"
    exit "$status"
} 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
