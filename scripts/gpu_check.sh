#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (its own python3 has torch, torchvision, pandas, scikit-learn,
# tqdm, matplotlib and pytest, but no zarr, and nothing can be downloaded there). It runs the parts named in
# GPU_CHECK_PARTS, in that order (default: all three); each stage runs under its own time limit, and whatever a
# part measures is written under OUT as soon as it is measured:
#   quality     what the project most needs to show, in one command of at most 9 minutes, its start-up included
#               (scripts/plan_quality.py: COMMAND_S, the budget it prints first, the plan and why): the EuroSAT
#               copy checked before anything slow (a missing folder or image stops the command at once); the
#               side-stream and CUDA-graph tests on this device (a path whose test fails is left out); timings of
#               the GPU preset as it will run (stem stride 1, then a larger batch or stride 2); then
#               bench_quality.py --preset=gpu: pre-training with what is left after the evaluations' expected
#               cost, kNN, the linear probe and fine-tuning beside both floors (random init, image statistics)
#                                          -> OUT/quality.json, OUT/quality.md (the table so far),
#                                             OUT/quality_logs.tar.gz (every step's log and metrics, the tests'
#                                             output, the timings, plan.json: the plan, why, each stage's time)
#   throughput  pre-training throughput, ResNet-50 at 224 px, at batch 256 and at the write-up's 32 (alone on
#               the GPU): ceiling, reference (tf32) and reference + mixed precision over whole worker waves,
#               default (the next batch made on a side stream), default_serial (the same on the model's
#               stream), the data work alone; at batch 32 also ceiling and default with CUDA graphs (compiled
#               first)                     -> OUT/bench_pretrain_batch<N>.json
#   tests       the CUDA tests (tests/test_cuda.py)  -> OUT/cuda_tests.txt
#   always      system check -> OUT/system_check.txt; everything printed -> OUT/gpu_check.log
#
#   OUT=/tmp/gpu bash scripts/gpu_check.sh                                     # everything, in one go
#   GPU_CHECK_PARTS=quality OUT=/tmp/gpu bash scripts/gpu_check.sh             # one command of 9 minutes
#   GPU_CHECK_PARTS=throughput GPU_CHECK_BATCHES=256 OUT=/tmp/gpu2 bash scripts/gpu_check.sh  # what is left
#
# The exit status is that of the first stage that failed (0 when all passed). For a rehearsal on a CPU the sizes
# can be made tiny: GPU_CHECK_ARCH, GPU_CHECK_IMAGE_SIZE, GPU_CHECK_BATCHES, GPU_CHECK_GRAPHS_BATCHES,
# GPU_CHECK_STEPS, GPU_CHECK_WARMUP_STEPS, GPU_CHECK_IMAGES, GPU_CHECK_WORKERS, GPU_CHECK_TESTS, GPU_CHECK_EUROSAT,
# GPU_CHECK_PLAN_ARGS (plan_quality.py settings), GPU_CHECK_TIMING_ARGS, GPU_CHECK_PRETRAIN_ARGS,
# GPU_CHECK_QUALITY_ARGS, and the two tests run first (pytest ids): GPU_CHECK_SIDE_STREAM_TEST,
# GPU_CHECK_GRAPHS_TEST; PYTHON picks the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench_results/gpu_check}"
PYTHON="${PYTHON:-python3}"
ARCH="${GPU_CHECK_ARCH:-resnet50}"
IMAGE_SIZE="${GPU_CHECK_IMAGE_SIZE:-224}"
BATCHES="${GPU_CHECK_BATCHES:-256 32}"
GRAPHS_BATCHES="${GPU_CHECK_GRAPHS_BATCHES:-32}"  # batches also timed with CUDA graphs (launch-bound steps)
STEPS="${GPU_CHECK_STEPS:-15}"
WARMUP_STEPS="${GPU_CHECK_WARMUP_STEPS:-5}"  # untimed steps before each throughput row
IMAGES="${GPU_CHECK_IMAGES:-1024}"
WORKERS="${GPU_CHECK_WORKERS:-12}"  # DataLoader workers of the reference pipeline
TESTS="${GPU_CHECK_TESTS:-tests/test_cuda.py tests/test_augment_match.py}"
EUROSAT="${GPU_CHECK_EUROSAT:-datae/EuroSAT}"
PLAN_ARGS="${GPU_CHECK_PLAN_ARGS:-}"  # more scripts/plan_quality.py settings (no spaces inside a value)
TIMING_EXTRA="${GPU_CHECK_TIMING_ARGS:-}"  # more bench_pretrain.py settings for the quality part's timings
PRETRAIN_EXTRA="${GPU_CHECK_PRETRAIN_ARGS:-}"  # more train_simsiam.py settings for the quality run
QUALITY_ARGS="${GPU_CHECK_QUALITY_ARGS:-}"  # more bench_quality.py settings for the quality run
SIDE_STREAM_TEST="${GPU_CHECK_SIDE_STREAM_TEST:-tests/test_cuda.py::test_side_stream_views_equal_the_in_turn_views_and_never_wait_for_the_gpu}"
GRAPHS_TEST="${GPU_CHECK_GRAPHS_TEST:-tests/test_cuda.py::test_compiled_pretraining_step[--cuda_graphs=True]}"
PARTS="${GPU_CHECK_PARTS:-quality throughput tests}"
WORK="$(mktemp -d /tmp/gpu_check.XXXXXX)"  # images, caches, checkpoints: too big to bring back
Q="$WORK/quality"  # the quality run's folder (plan_quality.py's WORK_DIR, bench_quality.py's OUTPUT_DIR)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT" "$Q"
export PYTHONUNBUFFERED=1

# part NAME SECONDS COMMAND...: run COMMAND under a time limit and say how it ended; a failure is noted in
# WORK/failures (a file, so that a part run in the background counts too), each stage's limit and time in
# Q/stages.log; PART_RC is COMMAND's exit status
part() {
    local name="$1" limit="$2" started=$SECONDS
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout "$limit" "$@"
    PART_RC=$?
    [[ $PART_RC -eq 124 ]] && echo "== $name: stopped at its ${limit} s limit"
    echo "== $name: exit $PART_RC after $((SECONDS - started)) s"
    [[ $PART_RC -ne 0 ]] && echo "$PART_RC" >>"$WORK/failures"
    printf '%s\t%s\t%s\t%s\n' "$name" "$limit" "$((SECONDS - started))" "$PART_RC" >>"$Q/stages.log"
    return 0
}

# plan STEP [SETTING...]: one step of scripts/plan_quality.py (quick: only its check loads PyTorch)
plan() {
    # shellcheck disable=SC2086
    timeout 60 "$PYTHON" scripts/plan_quality.py --step="$1" --eurosat_dir="$EUROSAT" --work_dir="$Q" \
        --seconds_used="$SECONDS" --timing_args="$TIMING_EXTRA" --pretrain_args="$PRETRAIN_EXTRA" \
        --quality_args="$QUALITY_ARGS" "${@:2}" $PLAN_ARGS
}

# proven NAME SECONDS TEST LOG: run one pytest TEST on this device, its output in Q/LOG; true when it passed
# (a test skipped, as on a machine without CUDA, proves nothing)
proven() {
    part "quality: $1" "$2" bash -c "$PYTHON -m pytest -q -p no:cacheprovider '$3' >'$Q/$4' 2>&1"
    tail -n 5 "$Q/$4"
    [[ $PART_RC -eq 0 ]] && grep -qE '[0-9]+ passed' "$Q/$4"
}

# copy the quality run's small files to OUT (temporary name, then rename: a stopped copy leaves no half file)
save_quality() {
    local f
    for f in quality.json quality.md; do
        [[ -f "$Q/$f" ]] && cp "$Q/$f" "$OUT/.$f.tmp" && mv "$OUT/.$f.tmp" "$OUT/$f"
    done
    (cd "$Q" && find . -maxdepth 1 -type f \( -name '*.log' -o -name '*.json' -o -name '*.md' \
        -o -name '*metrics*.pth' -o -name '*.csv' \) -print0 | tar czf "$OUT/.quality_logs.tmp" --null -T - \
        && mv "$OUT/.quality_logs.tmp" "$OUT/quality_logs.tar.gz")
    return 0
}

quality_part() {
    local side=False graphs=False run saver_pid
    proven "side-stream test" "$SIDE_S" "$SIDE_STREAM_TEST" side_stream_test.log && side=True
    proven "CUDA-graph test" "$GRAPHS_S" "$GRAPHS_TEST" graphs_test.log && graphs=True
    # the timings the plan asks for, one at a time (at most TIMINGS; a failed one leaves the plan as it was)
    for _ in 1 2 3 4; do
        rm -f "$Q/next_timing.txt"
        plan next --side_stream_ok=$side --graphs_ok=$graphs
        [[ -s "$Q/next_timing.txt" ]] || break
        mapfile -t run <"$Q/next_timing.txt"
        part "quality: timing, ${run[0]#* }" "${run[0]%% *}" "$PYTHON" scripts/bench_pretrain.py "${run[@]:1}"
    done
    rm -f "$Q/quality_run.txt"
    plan plan --side_stream_ok=$side --graphs_ok=$graphs
    if [[ ! -s "$Q/quality_run.txt" ]]; then
        echo "== quality: no plan (see above): the quality run did not start"
        echo 1 >>"$WORK/failures"
        return
    fi
    mapfile -t run <"$Q/quality_run.txt"
    # a copy every 10 s while it runs; stopped between copies (a killed copy could land after the last)
    rm -f "$WORK/stop_saver"
    (n=0; until [[ -e "$WORK/stop_saver" ]]; do sleep 1; (( ++n % 10 )) || save_quality; done) &
    saver_pid=$!
    part "quality run" "${run[0]}" "$PYTHON" scripts/bench_quality.py "${run[@]:1}"
    touch "$WORK/stop_saver"
    wait "$saver_pid" 2>/dev/null
    plan report
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
            --steps="$STEPS" --warmup_steps="$WARMUP_STEPS" --num_workers="$WORKERS" \
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
    SYSTEM_S=60
    if [[ " $PARTS " == *" quality "* ]]; then
        # the data first, and the budget: a copy that did not travel stops everything before anything slow
        plan check
        rc=$?
        if [[ $rc -ne 0 ]]; then
            echo "gpu_check.sh: the quality part's data check failed (above), exit $rc: nothing else was run"
            exit "$rc"
        fi
        read -r SYSTEM_S SIDE_S GRAPHS_S <"$Q/stage_limits.txt"
        printf 'data check\t60\t%s\t0\n' "$SECONDS" >>"$Q/stages.log"
    fi
    part "system check" "$SYSTEM_S" bash -c "$PYTHON scripts/system_check.py | tee '$OUT/system_check.txt'"
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
