"""The quality part of scripts/gpu_check.sh, planned so that it fits one command of COMMAND_S
seconds on a lent GPU, its own start-up included. gpu_check.sh runs the steps in this order:

    check   the EuroSAT copy: every CSV and every image it lists (a missing folder, file or image
            stops the command before anything slow); then the budget, each stage's limit
    next    the next timing of the GPU preset, as the run would use it (network, augmentations,
            stem stride, batch, CUDA graphs, side stream), or none
    plan    the quality run from the timings made: stride, batch, CUDA graphs, epochs, kNN monitor,
            fine-tuning epochs, and its time limit
    report  each stage's limit beside the time it took

    python scripts/plan_quality.py --step=check --eurosat_dir=datae/EuroSAT --work_dir=/tmp/q

The budget: pre-training gets what is left of COMMAND_S after the stages before it, the
evaluations' expected cost (EVALUATIONS: LINEAR_RUN_S per kNN + probe run, FINETUNE_RUN_S per
fine-tuning run) and SAVE_S. The plan: stem stride 1 at the largest batch of BATCHES at which
MIN_STEPS optimizer steps fit that share; stride 2 only when stride 1 cannot reach MIN_STEPS, and
then whichever timing fits more steps. CUDA graphs only where their test passed on the device and
they fit more steps once their compilation is paid; the side stream only where its test passed.
Each timing adds candidates, so a timing that fails or is stopped leaves the plan of the earlier
ones as it was. What each step decided, and why, is printed and kept in WORK_DIR/plan.json; what
gpu_check.sh reads (limits, arguments one per line) goes to WORK_DIR/*.txt.
"""
import json
import math
import os
import shlex
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from runtime import (DataError, _constant_comments, above, at_least, atomic_write,  # noqa: E402
                     check_settings, configure, fail, fractions_rule, label_fractions, one_of, run)

# -------------------------------------------------------------------------------------------------
STEP = "check"  # check | next | plan | report, in that order (scripts/gpu_check.sh)
EUROSAT_DIR = "datae/EuroSAT"  # the EuroSAT copy that travelled (scripts/copy_eurosat_subset.py)
WORK_DIR = ""  # the quality run's folder: plan.json, the timings, bench_quality.py's outputs
SECONDS_USED = 0  # seconds the command had run when this step started (bash's $SECONDS)
SIDE_STREAM_OK = False  # the side-stream test passed on this device: OVERLAP_DATA may be on
GRAPHS_OK = False  # the CUDA-graph test passed on this device: CUDA_GRAPHS may be on
# the budget: the command's limit, and each stage's (gpu_check.sh runs each under it)
COMMAND_S = 540  # the whole quality command: 9 of the lease's 15 minutes
SYSTEM_CHECK_S = 20  # scripts/system_check.py
SIDE_STREAM_TEST_S = 40  # tests/test_cuda.py's side-stream test
GRAPHS_TEST_S = 75  # tests/test_cuda.py's CUDA-graph test (compiles a small network)
TIMING_S = 90  # one timing of the GPU preset (with CUDA graphs it compiles the network first)
TIMINGS = 2  # timings at most: stride 1 at the smallest batch, then one that may do better
SAVE_S = 10  # the results copied to OUT at the end
# what the evaluations after pre-training cost: estimates until a GPU run measures them (report)
LABEL_FRACTIONS = "0.01 0.1 1"  # kNN + probe runs per initialisation (SimSiam, random, statistics)
FINETUNE_FRACTIONS = "1"  # fine-tuning runs per initialisation (SimSiam, from scratch)
LINEAR_RUN_S = 15  # one Linear_evaluation.py run: start-up, caches, features, probe, kNN
FINETUNE_RUN_S = 40  # one finetune_model.py run; its epochs are sized to fit
FINETUNE_START_S = 20  # of a fine-tuning run, the part that is not its epochs
# pre-training
PRETRAIN_START_S = 40  # train_simsiam.py before its first step: start-up, caches, kNN floors
EPOCH_OVERHEAD_S = 0.5  # per epoch: checkpoint and metrics
KNN_MONITORS = 8  # kNN monitor runs on validation.csv during pre-training (sets KNN_EVERY)
KNN_MONITOR_S = 3.0  # one kNN monitor run
STEP_MARGIN = 1.1  # a planned step takes the timed one x this (loss samples, the epoch's ends)
UNTIMED_STEP_S = 0.05  # the step time assumed when no timing gave one (slow: the run must end)
MIN_PRETRAIN_S = 60  # the least pre-training may get when every stage before it takes its limit
MIN_STEPS = 10000  # optimizer steps wanted: well past SimSiam's slow start
BATCHES = "64 128 256"  # batch sizes (pairs per step) the plan may choose
TIMED_STEPS = 40  # timed steps of each timing, after 10 untimed ones
MAX_EPOCHS = 0  # 0 = as many as fit; N caps the epochs (a rehearsal at tiny size)
TIMING_ARGS = ""  # more bench_pretrain.py settings for the timings (a rehearsal at tiny size)
PRETRAIN_ARGS = ""  # more train_simsiam.py settings after the plan's (a rehearsal at tiny size)
QUALITY_ARGS = ""  # more bench_quality.py settings, e.g. "--skip_finetune=True"
# -------------------------------------------------------------------------------------------------

PLAN = "plan.json"  # in WORK_DIR: the state between the steps, and the record
CHECK_OUT, NEXT_OUT, RUN_OUT = "stage_limits.txt", "next_timing.txt", "quality_run.txt"
STAGES = "stages.log"  # in WORK_DIR: gpu_check.sh's "name<TAB>limit<TAB>seconds<TAB>exit" lines
# bench_quality.py's initialisations (its INITS; held to them by tests/test_bench_quality.py, since
# importing it here would load PyTorch before the quick checks)
INITS_LINEAR, INITS_FINETUNE = 3, 2  # SimSiam, random init, image statistics; SimSiam, scratch


def settings_rules():
    return {"STEP": one_of("check", "next", "plan", "report"), "COMMAND_S": above(0),
            "TIMINGS": at_least(1), "MIN_STEPS": at_least(1), "STEP_MARGIN": at_least(1.0),
            "KNN_MONITORS": at_least(1), "MAX_EPOCHS": at_least(0), "TIMED_STEPS": at_least(1),
            "BATCHES": ((lambda v: bool(v.split()) and all(b.isdigit() and int(b) >= 2
                                                           for b in v.split())),
                        "batch sizes of at least 2, e.g. '64 128 256'"),
            "FINETUNE_START_S": ((lambda v: 0 <= v < FINETUNE_RUN_S), "below FINETUNE_RUN_S"),
            "LABEL_FRACTIONS": fractions_rule(), "FINETUNE_FRACTIONS": fractions_rule()}


def batches():
    return sorted(int(b) for b in BATCHES.split())


def work_file(name):
    return os.path.join(WORK_DIR, name)


def write_lines(name, lines):
    """What gpu_check.sh reads: one line each (an argument may hold spaces)."""
    with atomic_write(work_file(name), "w") as f:
        f.write("".join(f"{line}\n" for line in lines))


def save_state(state):
    with atomic_write(work_file(PLAN), "w") as f:
        json.dump(state, f, indent=2)


def load_state():
    try:
        with open(work_file(PLAN)) as f:
            return json.load(f)
    except (OSError, ValueError):
        fail(f"{work_file(PLAN)} is missing or unreadable: run --step=check first", code=2)


# -------------------------------------------------------------------------------------------------
# the budget

def evaluations():
    """(kNN + probe runs, fine-tuning runs, their expected seconds) after pre-training."""
    linear = INITS_LINEAR * len(label_fractions(LABEL_FRACTIONS))
    finetune = INITS_FINETUNE * len(label_fractions(FINETUNE_FRACTIONS))
    return linear, finetune, linear * LINEAR_RUN_S + finetune * FINETUNE_RUN_S


def budget(seconds_used):
    """([(stage, seconds)] of the whole command from the data check on, pre-training's seconds):
    each stage's limit, and pre-training with what is left, so that the seconds sum to
    COMMAND_S."""
    linear, finetune, evaluation = evaluations()
    before = [("data check (done)", seconds_used), ("system check", SYSTEM_CHECK_S),
              ("side-stream test", SIDE_STREAM_TEST_S), ("CUDA-graph test", GRAPHS_TEST_S),
              (f"timing 1 (stem stride 1, batch {batches()[0]})", TIMING_S)]
    after = [(f"evaluations, expected: {linear} kNN + probe runs x {LINEAR_RUN_S} s, "
              f"{finetune} fine-tuning runs x {FINETUNE_RUN_S} s", evaluation),
             ("saving the results", SAVE_S)]
    rest = COMMAND_S - sum(seconds for _, seconds in before + after)
    return before + [("pre-training, with what is left (a second timing comes out of it)",
                      rest)] + after, rest


def pretrain_share(seconds_used):
    """Seconds left for pre-training (start-up included) once the command has run
    seconds_used."""
    return COMMAND_S - seconds_used - evaluations()[2] - SAVE_S


# -------------------------------------------------------------------------------------------------
# check: the data, before anything slow; the budget

def check_step(started):
    eurosat = os.path.abspath(EUROSAT_DIR)
    carry = (f"make it with `python scripts/copy_eurosat_subset.py --source_dir=EUROSAT "
             f"--target_dir={EUROSAT_DIR} --train_images=0 --jpeg_quality=95` and name "
             f"{EUROSAT_DIR} in the run's carry")
    if budget(SECONDS_USED)[1] < MIN_PRETRAIN_S:  # a setting: checked before any work
        fail(f"quality: the budget leaves pre-training {budget(SECONDS_USED)[1]} s when every "
             f"stage takes its limit, under MIN_PRETRAIN_S = {MIN_PRETRAIN_S}: lower "
             "LINEAR_RUN_S, FINETUNE_RUN_S or a stage's limit, or raise COMMAND_S", code=2)
    # the quick checks first: loading PyTorch (for the full one) takes seconds on a fresh machine
    if not os.path.isfile(os.path.join(eurosat, "train.csv")):
        what = "the folder" if not os.path.isdir(eurosat) else "train.csv"
        fail(f"quality: EuroSAT not found at {eurosat} ({what} is missing): {carry}")
    import simsiam_data as data
    from bench_quality import PRESETS
    try:
        splits = data.read_eurosat_splits(eurosat)  # every row's image there, no overlap
    except DataError as error:
        fail(f"quality: the EuroSAT copy at {eurosat} is incomplete: {error}\n"
             f"To replace it: {carry}")
    counts = {split: len(files.paths) for split, files in splits.items()}
    if counts["train"] < batches()[0]:
        fail(f"quality: {counts['train']} train images, fewer than one batch of {batches()[0]} "
             "(BATCHES)", code=2)
    try:
        with open(os.path.join(eurosat, "eurosat_copy.json")) as f:
            copy = json.load(f)
    except (OSError, ValueError):
        copy = None
    print(f"quality: EuroSAT at {eurosat}: "
          + ", ".join(f"{split} {n:,}" for split, n in counts.items())
          + " images, every one listed is there; " + describe_copy(copy))
    used = SECONDS_USED + math.ceil(time.monotonic() - started)
    stages, _ = budget(used)
    print(f"quality budget, {COMMAND_S} s in all (each stage's limit):")
    for stage, seconds in stages:
        print(f"  {seconds:5d} s  {stage}")
    save_state({"eurosat_dir": eurosat, "images": counts, "copy": copy,
                "preset": PRESETS["gpu"], "budget": stages, "timings": []})
    write_lines(CHECK_OUT, [f"{SYSTEM_CHECK_S} {SIDE_STREAM_TEST_S} {GRAPHS_TEST_S}"])


def describe_copy(copy):
    if not copy:
        return "no eurosat_copy.json: the files as the source holds them"
    if not copy.get("jpeg_quality"):
        return "copied with its bytes as they were (eurosat_copy.json)"
    return (f"re-encoded at JPEG quality {copy['jpeg_quality']}, per-pixel difference from the "
            f"originals at most {copy['max_pixel_difference']} (eurosat_copy.json)")


# -------------------------------------------------------------------------------------------------
# timings: what they give, and which comes next

def preset_value(args, name):
    """The value of --name=... in a list of overrides (the last one), or None."""
    found = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return found[-1] if found else None


def timing_args(state, stride, batch, graphs):
    """bench_pretrain.py's arguments for the GPU preset as the run would use it: its network and
    its augmentations (the preset's settings that bench_pretrain.py has), at this stride and batch,
    with CUDA graphs or not, the side stream as its test allows."""
    known = {name.lower() for name in _constant_comments(
        os.path.join(ROOT, "scripts", "bench_pretrain.py"))}
    preset = [a for a in state["preset"]["model"] + state["preset"]["pretrain"]
              if a[2:].split("=", 1)[0].lower() in known]
    name = f"timing_s{stride}_b{batch}.json"
    return name, [*preset, f"--stem_stride={stride}", f"--batch_size={batch}",
                  f"--graphs={graphs}", f"--overlap_data={SIDE_STREAM_OK}", "--rows=default",
                  f"--steps={TIMED_STEPS}", "--warmup_steps=10", "--num_images=1024",
                  f"--generated_dir={work_file('timing_images')}",
                  f"--cache_dir={work_file('timing_cache')}",
                  f"--output_json={work_file(name)}", *shlex.split(TIMING_ARGS)]


def fit(timed, share, train_images):
    """A candidate plan: the epochs at a timing's stride, batch and step time that fit `share`
    seconds of pre-training (start-up, kNN monitor and compilation taken off first). `timed`:
    (stride, batch, graphs, step seconds, compilation seconds, the eager step's seconds)."""
    stride, batch, graphs, step_s, compile_s, eager_step_s = timed
    per_epoch = train_images // batch
    epoch_s = per_epoch * step_s * STEP_MARGIN + EPOCH_OVERHEAD_S
    usable = share - PRETRAIN_START_S - KNN_MONITORS * KNN_MONITOR_S - compile_s
    epochs = max(1, int(usable // epoch_s))
    if MAX_EPOCHS:
        epochs = min(epochs, MAX_EPOCHS)
    return {"stride": stride, "batch": batch, "graphs": graphs, "step_ms": step_s * 1000,
            "compile_s": compile_s, "eager_step_ms": eager_step_s * 1000, "epochs": epochs,
            "steps": epochs * per_epoch,
            "pretrain_s": round(PRETRAIN_START_S + KNN_MONITORS * KNN_MONITOR_S + compile_s
                                + epochs * epoch_s)}


def candidates(state, share):
    """Every plan the timings made so far allow (a timing that failed before its first row adds
    none; one stopped during the graph rows adds its eager one)."""
    found = []
    for timing in state["timings"]:
        try:
            with open(work_file(timing["json"])) as f:
                rows = json.load(f)["results"]
        except (OSError, ValueError, KeyError):
            continue
        if "default" not in rows:
            continue
        eager = rows["default"]["ms_per_step"] / 1000
        common = (timing["stride"], timing["batch"])
        found.append(fit((*common, False, eager, 0.0, eager), share, state["images"]["train"]))
        if GRAPHS_OK and "default_graphs" in rows and "ceiling_graphs" in rows:
            # the compilation happens in the graph ceiling's warm-up
            found.append(fit((*common, True, rows["default_graphs"]["ms_per_step"] / 1000,
                              rows["ceiling_graphs"]["warmup_s"], eager), share,
                             state["images"]["train"]))
    return found


def choose(found):
    """(the plan, why): stride 1 at the largest batch reaching MIN_STEPS, else stride 2 likewise,
    else the most steps."""
    for stride in (1, 2):
        enough = [c for c in found if c["stride"] == stride and c["steps"] >= MIN_STEPS]
        if enough:
            return (max(enough, key=lambda c: (c["batch"], c["steps"])),
                    f"the largest batch timed that reaches MIN_STEPS = {MIN_STEPS:,} at stem "
                    f"stride {stride}" + (" (stride 1 does not)" if stride == 2 else ""))
    if not found:
        return None, "no timing gave a step time"
    return (max(found, key=lambda c: c["steps"]),
            f"the most steps of those timed: none reaches MIN_STEPS = {MIN_STEPS:,}")


def describe(c):
    return (f"stem stride {c['stride']}, batch {c['batch']}, "
            f"{'CUDA graphs' if c['graphs'] else 'eager'}: {c['step_ms']:.1f} ms a step"
            + (f" after {c['compile_s']:.0f} s of compilation" if c["graphs"] else "")
            + f", {c['epochs']} epochs = {c['steps']:,} steps in about {c['pretrain_s']} s")


def next_timing(state):
    """(stride, batch, graphs) of the timing that may improve the plan, or None (and why)."""
    if len(state["timings"]) >= TIMINGS:
        return None, f"TIMINGS = {TIMINGS} made"
    if not state["timings"]:
        return (1, batches()[0], GRAPHS_OK), "the first"
    share = pretrain_share(SECONDS_USED + TIMING_S)  # what pre-training keeps after one more
    if share < MIN_PRETRAIN_S:
        return None, f"another timing would leave pre-training under {MIN_PRETRAIN_S} s"
    best, _ = choose(candidates(state, share))
    timed = {(t["stride"], t["batch"]) for t in state["timings"]}
    if best and best["stride"] == 1 and best["steps"] >= MIN_STEPS:
        # a step takes at most batch/b of a larger batch's: a larger one is worth timing only
        # where even that fits MIN_STEPS
        for batch in sorted(batches(), reverse=True):
            step_s = best["step_ms"] / 1000 * batch / best["batch"]
            guess = fit((1, batch, best["graphs"], step_s, best["compile_s"], step_s), share,
                        state["images"]["train"])
            if (batch > best["batch"] and batch <= state["images"]["train"]
                    and guess["steps"] >= MIN_STEPS and (1, batch) not in timed):
                return (1, batch, best["graphs"]), (
                    f"batch {batch} may still reach MIN_STEPS = {MIN_STEPS:,} at stem stride 1")
        return None, f"no larger batch can reach MIN_STEPS = {MIN_STEPS:,}"
    if (2, batches()[0]) not in timed:
        return (2, batches()[0], GRAPHS_OK), (
            f"stem stride 1 does not reach MIN_STEPS = {MIN_STEPS:,}" if best
            else "the timing at stem stride 1 gave no step time")
    return None, "stem stride 2 timed already"


def next_step():
    state = load_state()
    chosen, why = next_timing(state)
    if chosen is None:
        print(f"quality: no more timings ({why})")
        write_lines(NEXT_OUT, [])
        return
    stride, batch, graphs = chosen
    name, args = timing_args(state, stride, batch, graphs)
    label = (f"stem stride {stride}, batch {batch}"
             + (", eager and with CUDA graphs" if graphs else ", eager"))
    print(f"quality: timing {len(state['timings']) + 1}: {label} ({why})")
    state["timings"].append({"stride": stride, "batch": batch, "graphs": graphs, "json": name})
    save_state(state)
    write_lines(NEXT_OUT, [f"{TIMING_S} {label}", *args])


# -------------------------------------------------------------------------------------------------
# plan: the quality run

def finetune_epochs(chosen, train_images, preset_epochs):
    """Fine-tuning epochs that fit FINETUNE_RUN_S: a fine-tuning image costs about one view of a
    pre-training pair (forward and backward once), on the eager path."""
    epoch_s = train_images * chosen["eager_step_ms"] / 1000 / (2 * chosen["batch"]) * STEP_MARGIN
    return max(1, min(preset_epochs, int((FINETUNE_RUN_S - FINETUNE_START_S) // epoch_s)))


def quality_args(state, chosen):
    """bench_quality.py's arguments for the plan."""
    preset = state["preset"]
    warmup = int(preset_value(preset["pretrain"], "warmup_epochs") or 0)
    pretrain = (f"--batch_size={chosen['batch']} --stem_stride={chosen['stride']} "
                f"--cuda_graphs={chosen['graphs']} --overlap_data={SIDE_STREAM_OK} "
                f"--knn_every={math.ceil(chosen['epochs'] / KNN_MONITORS)}"
                + (f" --warmup_epochs={chosen['epochs'] // 2}" if chosen["epochs"] <= warmup
                   else "") + (f" {PRETRAIN_ARGS}" if PRETRAIN_ARGS else ""))
    epochs = finetune_epochs(chosen, state["images"]["train"],
                             int(preset_value(preset["finetune"], "num_epochs") or 1))
    return ["--preset=gpu", f"--eurosat_dir={state['eurosat_dir']}",
            f"--output_dir={WORK_DIR}", f"--cache_dir={work_file('cache')}",
            f"--pretrain_epochs={chosen['epochs']}", f"--pretrain_args={pretrain}",
            f"--finetune_epochs={epochs}", f"--label_fractions={LABEL_FRACTIONS}",
            f"--finetune_fractions={FINETUNE_FRACTIONS}", *shlex.split(QUALITY_ARGS)]


def plan_step():
    state = load_state()
    share = pretrain_share(SECONDS_USED)
    found = candidates(state, share)
    for c in found:
        print(f"quality: timed {describe(c)}")
    chosen, why = choose(found)
    if chosen is None:
        # a guess at a slow step, so that the run still ends inside the command
        chosen = fit((1, batches()[0], False, UNTIMED_STEP_S, 0.0, UNTIMED_STEP_S), share,
                     state["images"]["train"])
        why += f": UNTIMED_STEP_S = {UNTIMED_STEP_S} s assumed"
    limit = max(1, COMMAND_S - SECONDS_USED - SAVE_S)  # (timeout 0 would mean no limit)
    print(f"quality: {SECONDS_USED} s used, {limit} s left for the quality run: pre-training "
          f"{share} s, evaluations {evaluations()[2]} s expected")
    print(f"quality: chose {describe(chosen)}: {why}"
          + ("" if chosen["steps"] >= MIN_STEPS else
             f"; only {chosen['steps']:,} steps, fewer than MIN_STEPS = {MIN_STEPS:,}"))
    if not SIDE_STREAM_OK:
        print("quality: the side-stream test did not pass: the run goes without it "
              "(--overlap_data=False)")
    if not GRAPHS_OK:
        print("quality: the CUDA-graph test did not pass: the run goes without CUDA graphs")
    args = quality_args(state, chosen)
    state["plan"] = {**chosen, "why": why, "overlap_data": SIDE_STREAM_OK, "limit_s": limit,
                     "pretrain_share_s": share, "seconds_used": SECONDS_USED,
                     "candidates": found, "bench_quality_args": args}
    save_state(state)
    write_lines(RUN_OUT, [str(limit), *args])


# -------------------------------------------------------------------------------------------------
# report: each stage's limit and time

def report_step():
    state = load_state()
    stages = []
    try:
        with open(work_file(STAGES)) as f:
            for line in f:
                name, limit, seconds, code = line.rstrip("\n").split("\t")
                stages.append({"stage": name, "limit_s": int(limit), "took_s": int(seconds),
                               "exit": int(code)})
    except (OSError, ValueError):
        pass
    print(f"quality stages, {COMMAND_S} s in all (limit, took, exit):")
    for s in stages:
        print(f"  {s['limit_s']:5d} s  {s['took_s']:5d} s  {s['exit']:3d}  {s['stage']}")
    try:
        with open(work_file("quality.json")) as f:
            pretrain_s = round(json.load(f)["pretrain_wall_min"] * 60)
    except (OSError, ValueError, KeyError):
        pretrain_s = None
    run_s = next((s["took_s"] for s in stages if s["stage"] == "quality run"), None)
    plan = state.get("plan", {})
    if pretrain_s is not None and run_s is not None and plan:
        print(f"  of the quality run: pre-training {pretrain_s} s (planned {plan['pretrain_s']} "
              f"s), evaluations {run_s - pretrain_s} s (expected {evaluations()[2]} s)")
    state["stages"] = stages
    state["pretrain_took_s"] = pretrain_s
    save_state(state)


def main():
    started = time.monotonic()
    config, _ = configure(globals())
    check_settings(config, settings_rules())
    if not WORK_DIR:
        fail("set --work_dir (the quality run's folder)", code=2)
    os.makedirs(WORK_DIR, exist_ok=True)
    {"check": lambda: check_step(started), "next": next_step, "plan": plan_step,
     "report": report_step}[STEP]()


if __name__ == "__main__":
    run(main)
