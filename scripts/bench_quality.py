"""Real-data quality: does the pre-training learn? SimSiam on the unlabeled EuroSAT training
images, then kNN, the linear probe and fine-tuning on validation.csv and test.csv, beside the same
evaluations of its two floors: the same network at random initialisation, and image statistics (12
colour numbers per image; kNN and probe only).

    python scripts/bench_quality.py                   # PRESET="cpu" (see PRESETS)
    python scripts/bench_quality.py --preset=gpu      # ResNet-18, small stem, EuroSAT's 64 px
    python scripts/bench_quality.py --preset=writeup  # the write-up's ResNet-50 at 224 px
    python scripts/bench_quality.py --eurosat_dir=../shared/data/EuroSAT  # another copy of EuroSAT

Pre-training sees only the images listed in train.csv (FILE_LIST), without labels; validation.csv
picks the probe's weight decay and every best epoch, and every row reports it beside test.csv, so
that choices between runs (recipes, presets) are made on validation and test.csv is only read. Each
step is a plain run of the project's scripts (its command is printed and recorded), logged to
OUTPUT_DIR/<step>.log. A rerun skips the steps that finished; FLOORS_DIR reuses another run's
floors (a study's rows share them). Writes OUTPUT_DIR/quality.json and OUTPUT_DIR/quality.md (the
table the README shows, with SimSiam's margin over the higher floor); how long each preset takes
on named machines is in the README.
"""
import json
import os
import platform
import re
import subprocess
import sys
import time

import pandas as pd
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from runtime import (AMP_MODES, CheckpointError, at_least, atomic_save,  # noqa: E402
                     atomic_write, check_settings, configure, fail, load_checkpoint, one_of, run)
from simsiam_model import COLLAPSE_RATIO, stem_label  # noqa: E402

# -------------------------------------------------------------------------------------------------
PRESET = "cpu"  # cpu | gpu | writeup | custom (see PRESETS below)
EUROSAT_DIR = "datae/EuroSAT"  # real EuroSAT RGB with train/validation/test CSVs, label_map.json
OUTPUT_DIR = ""  # "" = bench_results/quality_<PRESET>
CACHE_DIR = "cache"  # decoded-once image arrays, shared by all steps
PRETRAIN_EPOCHS = 0  # 0 = the preset's
FINETUNE_EPOCHS = 0  # 0 = the preset's
SKIP_FINETUNE = False  # only kNN and linear evaluation (fine-tuning is the slow part on a CPU)
PRETRAIN_IMAGES = 0  # 0 = all of train.csv; N = a fixed random N (seed 0), for quick comparisons
PRETRAIN_ARGS = ""  # extra train_simsiam.py overrides after preset's, e.g. "--weight_decay=5e-4"
LINEAR_ARGS = ""  # extra Linear_evaluation.py overrides, every floor too, e.g. "--weight_decays=0"
FINETUNE_ARGS = ""  # extra finetune_model.py overrides after the preset's, e.g. "--batch_size=64"
AMP = ""  # pre-training and fine-tuning AMP; "" = preset's (cpu: bf16 where native; gpu: auto)
FLOORS_DIR = ""  # an earlier OUTPUT_DIR whose floors (same network, size, commands) are reused
# -------------------------------------------------------------------------------------------------

# What each preset runs. The CPU preset is the recipe study's best row, stride_1_overhead
# (docs/experiments.md: the small stem at stride 1 moved the features most; vertical flips, quarter
# turns and weak colour jitter added ~2 points), on all of train.csv for 3 epochs.
PRESETS = {
    "cpu": {"model": ["--arch=resnet18", "--small_stem=True", "--image_size=32"],
            "pretrain": ["--batch_size=32", "--base_lr=0.2", "--warmup_epochs=1", "--num_epochs=3",
                         "--weight_decay=5e-4", "--jitter_p=0.2", "--jitter_strength=0.25",
                         "--gray_p=0", "--blur_p=0", "--solarize=False", "--crop_scale_min=0.3",
                         "--vflip_p=0.5", "--rotate90=True", "--knn_every=1"],
            "linear": ["--batch_size=256", "--num_epochs=90"],
            "finetune": ["--batch_size=64", "--num_epochs=1", "--warmup_epochs=0"], "amp": "bf16"},
    # EuroSAT's native 64 px through the small stem, many short steps (past SimSiam's slow start:
    # scripts/gpu_check.sh plans the epochs, and the stem's stride, from a timing at the start).
    # Weak colour jitter, flips and quarter turns (lightly's Sentinel-2 recipe): in the recipe study
    # (docs/experiments.md) the write-up's colour cost 4.3 points of linear probe at stride 1.
    "gpu": {"model": ["--arch=resnet18", "--small_stem=True", "--stem_stride=1",
                      "--image_size=64"],
            "pretrain": ["--batch_size=64", "--base_lr=0.2", "--warmup_epochs=2",
                         "--num_epochs=60", "--weight_decay=5e-4", "--jitter_p=0.2",
                         "--jitter_strength=0.25", "--gray_p=0", "--blur_p=0", "--solarize=False",
                         "--crop_scale_min=0.2", "--vflip_p=0.5", "--rotate90=True",
                         "--knn_every=5"],
            "linear": ["--batch_size=256", "--num_epochs=90"],
            "finetune": ["--batch_size=128", "--num_epochs=10", "--warmup_epochs=1"],
            "amp": "auto"},
    # nothing but the scripts' own defaults and PRETRAIN_ARGS: the recipe study's rows spell out
    # their whole recipe (scripts/recipe_study.sh), so that a preset changed later changes no row
    "custom": {"model": [], "pretrain": [], "linear": [], "finetune": [], "amp": "auto"},
    # the write-up's recipe at full size (ResNet-50, 224 px) with the batch a GPU wants: the first
    # H200 run (README)
    "writeup": {"model": ["--arch=resnet50", "--image_size=224"],
                "pretrain": ["--batch_size=256", "--num_epochs=10", "--warmup_epochs=1",
                             "--knn_every=5"],
                "linear": ["--batch_size=256", "--num_epochs=90"],
                "finetune": ["--batch_size=128", "--num_epochs=3", "--warmup_epochs=0"],
                "amp": "auto"},
}


def run_step(name, script, args, out_dir):
    """Run one script of the project, appending to out_dir/name.log (a rerun keeps the earlier
    output); returns (wall seconds, this run's output)."""
    command = [sys.executable, os.path.join(ROOT, script), *args]
    print(f"[{name}] {' '.join(command[1:])}", flush=True)
    log_path = os.path.join(out_dir, f"{name}.log")
    with open(log_path, "a") as log:
        log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command[1:])}\n")
        log.flush()
        start_offset = log.tell()
        started = time.time()
        result = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    elapsed = time.time() - started
    if result.returncode != 0:
        fail(f"step {name} failed (exit {result.returncode}); see {log_path}")
    print(f"[{name}] done in {elapsed / 60:.1f} min", flush=True)
    with open(log_path) as log:
        log.seek(start_offset)
        return elapsed, log.read()


def pretrain_seconds(out_dir, elapsed, output):
    """Pre-training wall time over all the runs that built this checkpoint: a rerun that resumed
    (or found every epoch done) adds its time to the one recorded in out_dir/pretrain_time.json; a
    fresh start replaces it."""
    path = os.path.join(out_dir, "pretrain_time.json")
    continued = "resuming from" in output or "nothing to do" in output
    total = elapsed
    if continued and os.path.isfile(path):
        with open(path) as f:
            total += json.load(f)["seconds"]
    with atomic_write(path, "w") as f:
        json.dump({"seconds": total}, f)
    return total


def write_subset(train_csv, count, path, setting="PRETRAIN_IMAGES"):
    """A fixed random `count` rows of train.csv (seed 0) as path; the same rows on every run (and
    in scripts/copy_eurosat_subset.py)."""
    table = pd.read_csv(train_csv, index_col=0, dtype={"Filename": str})
    if not 0 < count <= len(table):
        fail(f"{setting} must be 1 to {len(table)} (the images of {train_csv}), got {count}",
             code=2)
    with atomic_write(path, "w") as f:
        table.sample(count, random_state=0).to_csv(f)
    return path


def reuse_floor(name, command, metrics_file, path):
    """Copy a floor's finished result from FLOORS_DIR to `path` when that folder's run made it
    with the same command (up to its output and cache folders): the rows of a study share one
    network, so they share its floors. Returns whether it did."""
    if not FLOORS_DIR or not name.endswith(("_random", "_image_stats")):
        return False
    source = os.path.join(os.path.abspath(FLOORS_DIR), metrics_file)
    try:
        with open(os.path.join(os.path.abspath(FLOORS_DIR), "quality.json")) as f:
            earlier = json.load(f)["commands"].get(name, "")
    except (OSError, ValueError, KeyError):
        earlier = ""
    folders = re.compile(r" --(output_dir|cache_dir)=\S+")
    if not finished(source) or folders.sub("", earlier) != folders.sub("", command):
        print(f"[{name}] not in FLOORS_DIR {FLOORS_DIR} with this command: running it")
        return False
    atomic_save(load_checkpoint(source), path)
    print(f"[{name}] reused from {source}")
    return True


def finished(path):
    try:
        return load_checkpoint(path).get("test_acc") is not None
    except CheckpointError:
        return False


def machine():
    import torch
    if torch.cuda.is_available():
        return f"1x {torch.cuda.get_device_name(0)}"
    return f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()})"


def main():
    config, _ = configure(globals())
    check_settings(config, {"PRESET": one_of(*PRESETS), "AMP": one_of("", *AMP_MODES),
                            "PRETRAIN_EPOCHS": at_least(0), "FINETUNE_EPOCHS": at_least(0),
                            "PRETRAIN_IMAGES": at_least(0)})
    preset = PRESETS[PRESET]
    eurosat = os.path.abspath(EUROSAT_DIR)
    if not os.path.isfile(os.path.join(eurosat, "train.csv")):
        fail(f"{eurosat}/train.csv not found: point --eurosat_dir at EuroSAT with its split CSVs "
             "(bash scripts/data.sh downloads it to datae/EuroSAT)")
    out = os.path.abspath(OUTPUT_DIR or os.path.join("bench_results", f"quality_{PRESET}"))
    os.makedirs(out, exist_ok=True)
    cache = os.path.abspath(CACHE_DIR)
    model, pretrain = preset["model"], list(preset["pretrain"])
    if PRETRAIN_EPOCHS:
        pretrain.append(f"--num_epochs={PRETRAIN_EPOCHS}")
    pretrain += PRETRAIN_ARGS.split()
    file_list = os.path.join(eurosat, "train.csv")
    if PRETRAIN_IMAGES:
        file_list = write_subset(file_list, PRETRAIN_IMAGES,
                                 os.path.join(out, "pretrain_images.csv"))
    finetune = (preset["finetune"]
                + ([f"--num_epochs={FINETUNE_EPOCHS}"] if FINETUNE_EPOCHS else [])
                + FINETUNE_ARGS.split())
    precision = [f"--amp={AMP or preset['amp']}"]  # the probe's features are always fp32
    common = [f"--eurosat_dir={eurosat}", f"--output_dir={out}", f"--cache_dir={cache}"]
    times, commands = {}, {}

    # ---- pre-training on the unlabeled training images ----
    args = [f"--data_dir={eurosat}", f"--file_list={file_list}", f"--output_dir={out}",
            f"--cache_dir={cache}", f"--knn_data_dir={eurosat}", *precision, *model, *pretrain]
    commands["pretrain"] = "python train_simsiam.py " + " ".join(args)
    times["pretrain"] = pretrain_seconds(out, *run_step("pretrain", "train_simsiam.py", args, out))
    pretrain_metrics = load_checkpoint(os.path.join(out, "pretrain_metrics.pth"))
    epochs = pretrain_metrics["epochs"][-1]
    pretrained_config = pretrain_metrics["config"]
    arch = pretrained_config["ARCH"]
    checkpoint = os.path.join(out, f"simsiam_{arch}_epoch_{epochs}.pth")
    write_report(out, config, pretrain_metrics, {}, times, commands, final=False)

    # ---- evaluations: pre-trained and random initialisation, same protocol, same network and
    # input size ----
    stem_stride = pretrained_config.get("STEM_STRIDE", 1)
    random_model = ["--pretrained_path=random", f"--arch={arch}",
                    f"--small_stem={pretrained_config['SMALL_STEM']}",
                    f"--stem_stride={stem_stride}",
                    f"--image_size={pretrained_config['IMAGE_SIZE']}"]
    linear = preset["linear"] + LINEAR_ARGS.split()
    steps = [("linear", "Linear_evaluation.py", [f"--pretrained_path={checkpoint}", *linear],
              "linear_eval_metrics.pth"),
             ("linear_random", "Linear_evaluation.py", [*random_model, *linear],
              "linear_eval_metrics_random.pth"),
             ("linear_image_stats", "Linear_evaluation.py",
              ["--pretrained_path=image_stats", *linear], "linear_eval_metrics_image_stats.pth")]
    if not SKIP_FINETUNE:
        finetune_args = [f"--pretrained_path={checkpoint}", *precision, *finetune]
        steps += [("finetune", "finetune_model.py", finetune_args, "finetune_metrics.pth"),
                  ("finetune_random", "finetune_model.py", [*random_model, *precision, *finetune],
                   "finetune_metrics_random.pth")]
    results = {}
    for name, script, args, metrics_file in steps:
        commands[name] = f"python {script} " + " ".join(common + args)
        path = os.path.join(out, metrics_file)
        if finished(path):
            print(f"[{name}] already done: {path}")
        elif not reuse_floor(name, commands[name], metrics_file, path):
            run_step(name, script, common + args, out)
        results[name] = load_checkpoint(path)
        # the script's own timing: the same on a rerun that skips it
        times[name] = results[name]["wall_time_s"]
        # the table so far: a step that fails or is stopped later keeps these rows
        table = write_report(out, config, pretrain_metrics, results, times, commands,
                             final=name == steps[-1][0])
    print(table)
    print(f"\nwrote {out}/quality.json and {out}/quality.md")


# the rows of every table: SimSiam, then the two floors it must clear (same protocols, same splits)
INITS = (("SimSiam pre-trained", ""), ("random init", "_random"),
         ("image statistics", "_image_stats"))


def margins(rows, column):
    """SimSiam's accuracy minus the higher of the two floors, per protocol, in the given column of
    the rows (2: validation, 3: test): what pre-training bought beyond colour statistics and an
    untrained network."""
    by_protocol = {}
    for row in rows:
        if row[column] is not None:
            by_protocol.setdefault(row[1].split(" (")[0], {})[row[0]] = row[column]
    return {protocol: found["SimSiam pre-trained"] - max(found[f] for f in floors)
            for protocol, found in by_protocol.items()
            if "SimSiam pre-trained" in found
            and (floors := [f for f in found if f != "SimSiam pre-trained"])}


def percent(value):
    return "-" if value is None else f"{value:.2f} %"


def write_report(out, config, pretrain_metrics, results, times, commands, final):
    """Write out/quality.json and out/quality.md from the steps finished so far; return the
    table."""
    pretrained_config = pretrain_metrics["config"]
    size = pretrained_config["IMAGE_SIZE"]
    network = pretrained_config["ARCH"] + stem_label(pretrained_config["SMALL_STEM"],
                                                     pretrained_config.get("STEM_STRIDE", 1))
    test_images = (f" ({len(next(iter(results.values()))['test_files']):,} images)"
                   if results else "")
    epochs = pretrain_metrics["epochs"][-1]
    rows = []  # (initialisation, protocol, validation accuracy, test accuracy, wall seconds)
    for init, suffix in INITS:
        if f"linear{suffix}" in results:
            linear = results[f"linear{suffix}"]
            wall = times[f"linear{suffix}"]
            for k in ("k20", "k200"):
                rows.append((init, f"kNN k={k[1:]} (cosine, T=0.2)",
                             (linear.get("knn_val") or {}).get(k), linear["knn"][k], wall))
            rows.append((init, f"linear probe ({linear['config']['NUM_EPOCHS']} epochs, weight "
                         f"decay {linear['weight_decay']:g}, both chosen on validation)",
                         linear["best_val_acc"], linear["test_acc"], wall))
        if f"finetune{suffix}" in results:
            tuned = results[f"finetune{suffix}"]
            epochs_tuned = tuned["config"]["NUM_EPOCHS"]
            rows.append((init, f"fine-tune ({epochs_tuned} "
                         f"epoch{'s' if epochs_tuned > 1 else ''}, best on validation)",
                         tuned["best_val_acc"], tuned["test_acc"], times[f"finetune{suffix}"]))
    ranks = {init: results[f"linear{suffix}"].get("feature_effective_rank")
             for init, suffix in (("pretrained", ""), ("random", "_random"))
             if f"linear{suffix}" in results}
    collapsed = min(pretrain_metrics["z_std"]) < COLLAPSE_RATIO * pretrain_metrics["z_std_healthy"]
    summary = {
        "preset": PRESET, "machine": machine(), "arch": network, "input_size": size,
        "complete": final, "pretrain_epochs": epochs,
        "pretrain_images": pretrain_metrics["num_images"],
        "pretrain_wall_min": times["pretrain"] / 60,
        "pretrain_final_loss": pretrain_metrics["loss"][-1],
        "z_std_final": pretrain_metrics["z_std"][-1],
        "z_std_healthy": pretrain_metrics["z_std_healthy"], "collapse_warning": collapsed,
        "feature_effective_rank": ranks,
        "knn_val_per_epoch": dict(zip(pretrain_metrics["epochs"], pretrain_metrics["knn_top1"])),
        "rows": [{"init": i, "protocol": p, "val_acc": v, "test_acc": a, "wall_s": w}
                 for i, p, v, a, w in rows],
        "margin_over_floors": margins(rows, 3),
        "margin_over_floors_validation": margins(rows, 2),
        "commands": commands, "config": config}
    lines = [f"Real EuroSAT RGB, `validation.csv` and `test.csv`{test_images}, {network} at "
             f"{size} px, "
             f"preset `{PRESET}` on {machine()}; "
             f"pre-training: {epochs} epochs on the "
             f"{pretrain_metrics['num_images']:,} unlabeled `train.csv` images in "
             f"{times['pretrain'] / 60:.1f} min, final loss "
             f"{summary['pretrain_final_loss']:.3f}, z std "
             f"{summary['z_std_final']:.4f} (healthy {summary['z_std_healthy']:.4f}"
             f"{', COLLAPSE WARNING' if collapsed else ', no collapse warning'})."
             + ("" if final else " (Unfinished: the steps not listed did not run.)"), "",
             "| initialisation | protocol | validation accuracy | test accuracy | wall time |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {i} | {p} | {percent(v)} | {percent(a)} | {w / 60:.1f} min |"
              for i, p, v, a, w in rows]
    for split in ("validation", "test"):
        found = summary["margin_over_floors" + ("_validation" if split == "validation" else "")]
        if found:
            lines += ["", f"SimSiam minus the higher floor (random init or image statistics), "
                      f"{split}: " + ", ".join(f"{p} {m:+.2f}" for p, m in found.items())]
    if len(ranks) == 2 and None not in ranks.values():
        lines += ["", f"Feature effective rank (train, {results['linear']['feature_dim']}-d): "
                      f"pre-trained "
                      f"{ranks['pretrained']:.1f}, random init {ranks['random']:.1f}."]
    knn_lines = [f"{e}: {k:.1f} %" for e, k in summary["knn_val_per_epoch"].items()
                 if k is not None]
    if knn_lines:
        lines += ["", "kNN monitor (k=200, validation.csv) by pre-training epoch: "
                  + ", ".join(knn_lines)]
    lines += ["", "Commands:", ""] + [f"    {c}" for c in commands.values()]
    with atomic_write(os.path.join(out, "quality.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with atomic_write(os.path.join(out, "quality.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return "\n".join(lines)


if __name__ == "__main__":
    run(main)
