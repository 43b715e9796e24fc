#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (its own python3 has torch, torchvision, pandas, scikit-learn,
# tqdm, matplotlib and pytest, but no zarr, and nothing can be downloaded there). It runs the parts named in
# GPU_CHECK_PARTS, in that order (default: all three); each part runs under its own time limit, and whatever a
# part measures is written under OUT as soon as it is measured:
#   quality     real-data quality first, because it is what the project most needs to show:
#               bench_quality.py --preset=gpu on EUROSAT (ResNet-18, small stem, EuroSAT's native 64 px). A
#               short timing of that network (bench_pretrain.py --rows=default) plans the pre-training: stem
#               stride 1 when at least MIN_STEPS steps fit QUALITY_PRETRAIN_S seconds, else stride 2, and the
#               epochs that fit; then kNN, the linear probe and fine-tuning beside both floors (random init,
#               image statistics)          -> OUT/quality.json, OUT/quality.md (the table so far),
#                                             OUT/quality_logs.tar.gz (every step's log and metrics)
#   throughput  pre-training throughput, ResNet-50 at 224 px, at batch 256 and at the write-up's 32 (alone on
#               the GPU): ceiling, reference (tf32) and reference + mixed precision over whole worker waves,
#               default (the next batch made on a side stream), default_serial (the same on the model's
#               stream), the data work alone; at batch 32 also ceiling and default with CUDA graphs (compiled
#               first)                     -> OUT/bench_pretrain_batch<N>.json
#   tests       the CUDA tests (tests/test_cuda.py)  -> OUT/cuda_tests.txt
#   always      system check -> OUT/system_check.txt; everything printed -> OUT/gpu_check.log
#
#   OUT=/tmp/gpu bash scripts/gpu_check.sh                                     # everything, in one go
#   GPU_CHECK_PARTS=quality OUT=/tmp/gpu bash scripts/gpu_check.sh             # within one 10-minute command
#   GPU_CHECK_PARTS="throughput tests" OUT=/tmp/gpu2 bash scripts/gpu_check.sh # with what is left
#
# The exit status is that of the first part that failed (0 when all passed). For a smoke test on a CPU the sizes
# can be made tiny: GPU_CHECK_ARCH, GPU_CHECK_IMAGE_SIZE, GPU_CHECK_BATCHES, GPU_CHECK_GRAPHS_BATCHES,
# GPU_CHECK_STEPS, GPU_CHECK_IMAGES, GPU_CHECK_WORKERS, GPU_CHECK_TESTS, GPU_CHECK_EUROSAT, GPU_CHECK_PRETRAIN_S,
# GPU_CHECK_MIN_STEPS, GPU_CHECK_QUALITY_ARGS; PYTHON picks the interpreter.
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
QUALITY_PRETRAIN_S="${GPU_CHECK_PRETRAIN_S:-300}"  # pre-training budget of the quality part, seconds
MIN_STEPS="${GPU_CHECK_MIN_STEPS:-10000}"  # steps the quality part wants: well past SimSiam's slow start
QUALITY_BATCH="${GPU_CHECK_QUALITY_BATCH:-64}"  # the GPU preset's batch, timed and then run
QUALITY_SIZE="${GPU_CHECK_QUALITY_SIZE:-64}"  # the GPU preset's input size: EuroSAT's own
TIMING_STEPS="${GPU_CHECK_TIMING_STEPS:-30}"  # timed steps of the quality part's planning run
PRETRAIN_EXTRA="${GPU_CHECK_PRETRAIN_ARGS:-}"  # more train_simsiam.py overrides for the quality run
PARTS="${GPU_CHECK_PARTS:-quality throughput tests}"
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

# plan_pretraining: "STRIDE EPOCHS STEPS SECONDS" for the quality run, from the timings of the GPU preset's
# network (stride 1, then 2 only when stride 1 fits fewer than MIN_STEPS); the epochs fill QUALITY_PRETRAIN_S,
# allowing 0.6 s per epoch for the checkpoint, the metrics and a share of the kNN monitor
plan_pretraining() {
    local stride plan
    for stride in 1 2; do
        part "quality: timing the GPU preset's network, stem stride $stride" 120 "$PYTHON" scripts/bench_pretrain.py \
            --arch=resnet18 --small_stem=True --stem_stride="$stride" --image_size="$QUALITY_SIZE" \
            --batch_size="$QUALITY_BATCH" --rows=default --steps="$TIMING_STEPS" --warmup_steps=10 \
            --num_images="$IMAGES" --output_json="$WORK/timing_stride$stride.json" >&2
        plan=$("$PYTHON" -c "import json, pandas; \
rate = json.load(open('$WORK/timing_stride$stride.json'))['results']['default']['pairs_per_s'] / $QUALITY_BATCH; \
per_epoch = len(pandas.read_csv('$EUROSAT/train.csv')) // $QUALITY_BATCH; \
epochs = max(1, int($QUALITY_PRETRAIN_S / (per_epoch / rate + 0.6))); \
print($stride, epochs, epochs * per_epoch, round(epochs * (per_epoch / rate + 0.6)))" 2>/dev/null)
        [[ -n "$plan" ]] || continue
        echo "== quality: stem stride $stride: $(cut -d' ' -f2 <<<"$plan") epochs, $(cut -d' ' -f3 <<<"$plan") steps in about $(cut -d' ' -f4 <<<"$plan") s" >&2
        [[ $(cut -d' ' -f3 <<<"$plan") -ge $MIN_STEPS ]] && break
    done
    echo "$plan"
}

quality_part() {
    if [[ ! -f "$EUROSAT/train.csv" ]]; then
        echo "== quality: skipped ($EUROSAT/train.csv not found; copy a subset with scripts/copy_eurosat_subset.py)"
        return
    fi
    local plan stride epochs steps
    plan=$(plan_pretraining)
    read -r stride epochs steps _ <<<"${plan:-1 30 0 0}"
    [[ -z "$plan" ]] && echo "== quality: no timing (the timing runs failed): $epochs epochs at stem stride 1"
    [[ $steps -lt $MIN_STEPS ]] && echo "== quality: only $steps steps fit ${QUALITY_PRETRAIN_S} s, fewer than $MIN_STEPS"
    (while sleep 10; do save_quality; done) &
    saver_pid=$!
    # shellcheck disable=SC2086
    part "quality" $((QUALITY_PRETRAIN_S + 240)) "$PYTHON" scripts/bench_quality.py --preset=gpu \
        --eurosat_dir="$EUROSAT" --output_dir="$WORK/quality" --cache_dir="$WORK/cache" \
        --pretrain_epochs="$epochs" --pretrain_args="--batch_size=$QUALITY_BATCH --image_size=$QUALITY_SIZE \
--stem_stride=$stride --knn_every=$(( epochs / 10 > 1 ? epochs / 10 : 1 )) $PRETRAIN_EXTRA" $QUALITY_ARGS
    kill "$saver_pid" 2>/dev/null
    save_quality
}

throughput_part() {
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
}

tests_part() {
    # shellcheck disable=SC2086
    part "CUDA tests" 300 bash -c "$PYTHON -m pytest -q -p no:cacheprovider $TESTS >'$OUT/cuda_tests.txt' 2>&1"
    echo "== CUDA tests, as printed:"
    cat "$OUT/cuda_tests.txt"
}

{
    echo "== gpu_check.sh: parts $PARTS"
    part "system check" 60 bash -c "$PYTHON scripts/system_check.py | tee '$OUT/system_check.txt'"
    for name in $PARTS; do
        case "$name" in
            quality) quality_part ;;
            throughput) throughput_part ;;
            tests) tests_part ;;
            *) echo "== unknown part '$name' in GPU_CHECK_PARTS (quality, throughput, tests)"; echo 2 >>"$WORK/failures" ;;
        esac
    done
    status=$(head -n 1 "$WORK/failures" 2>/dev/null || echo 0)
    echo "gpu_check.sh: done, exit $status; files in $OUT"
    exit "$status"
} 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
