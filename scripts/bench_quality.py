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
from typing import NamedTuple

import pandas as pd
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from runtime import (AMP_MODES, CheckpointError, at_least, atomic_save,  # noqa: E402
                     atomic_write, check_settings, configure, fail, fractions_rule, label_fractions,
                     load_checkpoint, one_of, run)
from simsiam_model import COLLAPSE_RATIO, fraction_suffix, percent, stem_label  # noqa: E402

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
LABEL_FRACTIONS = ""  # shares of train.csv's labels for kNN and probe; "" = preset's (0.01 0.1 1)
FINETUNE_FRACTIONS = ""  # the same for fine-tuning; "" = the preset's
AMP = ""  # pre-training and fine-tuning AMP; "" = the preset's (auto: bf16 where native)
FLOORS_DIR = ""  # an earlier OUTPUT_DIR whose floors (same network, size, commands) are reused
# -------------------------------------------------------------------------------------------------

# What each preset runs. The CPU preset is the recipe study's best row on validation,
# stride_1_overhead (docs/experiments.md: the small stem at stride 1 moved the features most;
# vertical flips, quarter turns and weak colour jitter added 2-4 points), on all of train.csv for
# 16 epochs: 9,440 steps at batch 32, within the 10,000 its goal allows.
PRESETS = {
    "cpu": {"model": ["--arch=resnet18", "--small_stem=True", "--image_size=32"],
            "pretrain": ["--batch_size=32", "--base_lr=0.2", "--warmup_epochs=1", "--num_epochs=16",
                         "--weight_decay=5e-4", "--jitter_p=0.2", "--jitter_strength=0.25",
                         "--gray_p=0", "--blur_p=0", "--solarize=False", "--crop_scale_min=0.3",
                         "--vflip_p=0.5", "--rotate90=True", "--knn_every=2"],
            "linear": ["--batch_size=256", "--num_epochs=90"],
            "finetune": ["--batch_size=64", "--num_epochs=1", "--warmup_epochs=0"], "amp": "auto",
            "label_fractions": "0.01 0.1 1", "finetune_fractions": "0.1 1"},
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
            "amp": "auto", "label_fractions": "0.01 0.1 1", "finetune_fractions": "0.1 1"},
    # nothing but the scripts' own defaults and PRETRAIN_ARGS: the recipe study's rows spell out
    # their whole recipe (scripts/recipe_study.sh), so that a preset changed later changes no row
    "custom": {"model": [], "pretrain": [], "linear": [], "finetune": [], "amp": "auto",
               "label_fractions": "1", "finetune_fractions": "1"},
    # the write-up's recipe at full size (ResNet-50, 224 px) with the batch a GPU wants: the first
    # H200 run (docs/experiments.md)
    "writeup": {"model": ["--arch=resnet50", "--image_size=224"],
                "pretrain": ["--batch_size=256", "--num_epochs=10", "--warmup_epochs=1",
                             "--knn_every=5"],
                "linear": ["--batch_size=256", "--num_epochs=90"],
                "finetune": ["--batch_size=128", "--num_epochs=3", "--warmup_epochs=0"],
                "amp": "auto", "label_fractions": "0.01 0.1 1", "finetune_fractions": "1"},
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


def reuse_floor(step, command, path):
    """Copy a floor's finished result from FLOORS_DIR to `path` when that folder's run made it
    with the same command (up to its output and cache folders): the rows of a study share one
    network, so they share its floors. Returns whether it did."""
    if not FLOORS_DIR or step.init == SIMSIAM:
        return False
    source = os.path.join(os.path.abspath(FLOORS_DIR), step.metrics_file)
    try:
        with open(os.path.join(os.path.abspath(FLOORS_DIR), "quality.json")) as f:
            earlier = json.load(f)["commands"].get(step.name, "")
    except (OSError, ValueError, KeyError):
        earlier = ""
    folders = re.compile(r" --(output_dir|cache_dir)=\S+")
    if not finished(source) or folders.sub("", earlier) != folders.sub("", command):
        print(f"[{step.name}] not in FLOORS_DIR {FLOORS_DIR} with this command: running it")
        return False
    atomic_save(load_checkpoint(source), path)
    print(f"[{step.name}] reused from {source}")
    return True


def finished(path, pretrained_path=None):
    """Whether `path` holds a finished evaluation (of `pretrained_path`, where given)."""
    try:
        metrics = load_checkpoint(path)
    except CheckpointError:
        return False
    return (metrics.get("test_acc") is not None
            and pretrained_path in (None, metrics.get("pretrained_path")))


def machine():
    import torch
    if torch.cuda.is_available():
        return f"1x {torch.cuda.get_device_name(0)}"
    return f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()})"


# the initialisations of every table: SimSiam, then the two floors it must clear (same protocols,
# same splits), with the suffix of their files and steps
INITS = (("SimSiam pre-trained", ""), ("random init", "_random"),
         ("image statistics", "_image_stats"))
SIMSIAM = INITS[0][0]


class Step(NamedTuple):
    """One evaluation: a plain run of one of the project's scripts."""
    name: str  # its log (OUTPUT_DIR/<name>.log) and its key in quality.json
    script: str
    args: list
    metrics_file: str  # in OUTPUT_DIR
    init: str  # the initialisation it evaluates, as INITS names it


def evaluation_steps(checkpoint, random_model, precision, preset):
    """Each evaluation, every initialisation under the same protocol, in the order they matter
    most: kNN and the probe on all labels, fine-tuning on all labels, then the smaller label
    fractions (largest first), then fine-tuning on them."""
    linear = preset["linear"] + LINEAR_ARGS.split()
    finetune = (preset["finetune"] + ([f"--num_epochs={FINETUNE_EPOCHS}"] if FINETUNE_EPOCHS
                                      else []) + FINETUNE_ARGS.split())
    models = {"": [f"--pretrained_path={checkpoint}"], "_random": random_model,
              "_image_stats": ["--pretrained_path=image_stats"]}
    probe = sorted(label_fractions(LABEL_FRACTIONS or preset["label_fractions"]), reverse=True)
    tuned = sorted([] if SKIP_FINETUNE else
                   label_fractions(FINETUNE_FRACTIONS or preset["finetune_fractions"]),
                   reverse=True)
    order = ([("linear", f) for f in probe if f == 1] + [("finetune", f) for f in tuned if f == 1]
             + [("linear", f) for f in probe if f < 1] + [("finetune", f) for f in tuned if f < 1])
    steps = []
    for stage, fraction in order:
        labels = [f"--label_fraction={fraction:g}"] if fraction < 1 else []
        for init, suffix in INITS if stage == "linear" else INITS[:2]:
            name = f"{stage}{suffix}{fraction_suffix(fraction)}"
            if stage == "linear":
                steps.append(Step(name, "Linear_evaluation.py", models[suffix] + linear + labels,
                                  f"linear_eval_metrics{suffix}{fraction_suffix(fraction)}.pth",
                                  init))
            else:
                steps.append(Step(name, "finetune_model.py",
                                  models[suffix] + precision + finetune + labels,
                                  f"finetune_metrics{suffix}{fraction_suffix(fraction)}.pth", init))
    return steps


def same_labelled_images(results):
    """Stop, naming the steps, when two evaluations at one label fraction trained on different
    labelled images (metrics files written before the digest existed are not checked)."""
    by_fraction = {}
    for name, found in results.items():
        if found.get("train_files_sha1"):
            by_fraction.setdefault(found.get("label_fraction", 1.0), {})[name] = \
                found["train_files_sha1"]
    for fraction, digests in by_fraction.items():
        if len(set(digests.values())) > 1:
            fail(f"at {fraction * 100:g} % of the labels the steps {', '.join(sorted(digests))} "
                 "trained on different images (train_files_sha1 differs): their rows would not "
                 "compare. Rerun them into a fresh --output_dir")


def table_rows(results, times, inits):
    """One row per (initialisation, protocol, label fraction) that has run: its validation and test
    accuracy and wall time. `inits`: each step's initialisation, by step name."""
    rows = []
    for name, found in results.items():
        stage = "linear" if name.startswith("linear") else "finetune"
        common = {"init": inits[name], "labels": found.get("label_fraction", 1.0),
                  "train_labels": found.get("train_labels"),
                  "train_files_sha1": found.get("train_files_sha1"), "wall_s": times[name]}
        if stage == "linear":
            # (Linear_evaluation.py records None for a k of at least its labelled bank)
            for k in [k for k in ("k20", "k200") if found["knn"][k] is not None]:
                rows.append(dict(common, protocol=f"kNN k={k[1:]}",
                                 val_acc=(found.get("knn_val") or {}).get(k),
                                 test_acc=found["knn"][k]))
            rows.append(dict(common, protocol="linear probe", val_acc=found["best_val_acc"],
                             test_acc=found["test_acc"],
                             detail=f"{found['config']['NUM_EPOCHS']} epochs, weight decay "
                                    f"{found['weight_decay']:g}, both chosen on validation"))
        else:
            epochs = found["config"]["NUM_EPOCHS"]
            rows.append(dict(common, protocol="fine-tune", val_acc=found["best_val_acc"],
                             test_acc=found["test_acc"],
                             detail=f"{epochs} epoch{'s' if epochs > 1 else ''}, best on "
                                    "validation"))
    return rows


def margins(rows, split):
    """SimSiam's accuracy minus the higher of the two floors, per protocol and label fraction, on
    `split` ("val_acc" or "test_acc"): what pre-training bought beyond colour statistics and an
    untrained network."""
    by_protocol = {}
    for row in rows:
        if row[split] is not None:
            key = f"{row['protocol']}, {row['labels'] * 100:g} % of labels"
            by_protocol.setdefault(key, {})[row["init"]] = row[split]
    return {key: found[SIMSIAM] - max(found[f] for f in floors)
            for key, found in by_protocol.items()
            if SIMSIAM in found and (floors := [f for f in found if f != SIMSIAM])}


def fraction_table(rows, split):
    """Markdown: one line per initialisation, a column per (protocol, label fraction) that ran."""
    columns = sorted({(row["protocol"], row["labels"]) for row in rows
                      if row["protocol"] != "kNN k=200"},
                     key=lambda c: (("kNN k=20", "linear probe", "fine-tune").index(c[0]), c[1]))
    found = {(row["init"], row["protocol"], row["labels"]): row[split] for row in rows}
    lines = ["| initialisation | " + " | ".join(f"{p}, {f * 100:g} %" for p, f in columns) + " |",
             "| --- |" + " --- |" * len(columns)]
    for init, _ in INITS:
        lines.append(f"| {init} | " + " | ".join(percent(found.get((init, *c)))
                                                 for c in columns) + " |")
    return lines


class Report(NamedTuple):
    """What every version of the report is written from, besides the evaluations done so far."""
    out: str  # OUTPUT_DIR: quality.json and quality.md go here
    config: dict  # this script's settings
    pretrain_metrics: dict  # train_simsiam.py's pretrain_metrics.pth
    times: dict  # wall seconds per step
    commands: dict  # the command of each step
    inits: dict  # the initialisation each evaluation step evaluates


def write_report(report, results, final):
    """Write out/quality.json and out/quality.md from the steps finished so far (`results`: their
    metrics by step name); return the table."""
    out, config, pretrain_metrics, times, commands, inits = report
    pretrained_config = pretrain_metrics["config"]
    size = pretrained_config["IMAGE_SIZE"]
    network = pretrained_config["ARCH"] + stem_label(pretrained_config["SMALL_STEM"],
                                                     pretrained_config.get("STEM_STRIDE", 1))
    test_images = (f" ({len(next(iter(results.values()))['test_files']):,} images each)"
                   if results else "")
    epochs = pretrain_metrics["epochs"][-1]
    rows = table_rows(results, times, inits)
    ranks = {init: results[f"linear{suffix}"].get("feature_effective_rank")
             for init, suffix in (("pretrained", ""), ("random", "_random"))
             if f"linear{suffix}" in results}
    collapsed = min(pretrain_metrics["z_std"]) < COLLAPSE_RATIO * pretrain_metrics["z_std_healthy"]
    summary = {
        "preset": PRESET, "machine": machine(), "arch": network, "input_size": size,
        "complete": final, "pretrain_epochs": epochs,
        "pretrain_steps": pretrain_metrics["step"][-1] if pretrain_metrics.get("step") else None,
        "pretrain_images": pretrain_metrics["num_images"],
        "pretrain_wall_min": times["pretrain"] / 60,
        "pretrain_final_loss": pretrain_metrics["loss"][-1],
        "z_std_final": pretrain_metrics["z_std"][-1],
        "z_std_healthy": pretrain_metrics["z_std_healthy"], "collapse_warning": collapsed,
        "feature_effective_rank": ranks,
        "knn_val_per_epoch": dict(zip(pretrain_metrics["epochs"], pretrain_metrics["knn_top1"])),
        "knn_floors": pretrain_metrics.get("knn_floors"),
        "rows": rows, "margin_over_floors": margins(rows, "test_acc"),
        "margin_over_floors_validation": margins(rows, "val_acc"),
        "commands": commands, "config": config}
    lines = [f"Real EuroSAT RGB, `validation.csv` and `test.csv`{test_images}, {network} at "
             f"{size} px, preset `{PRESET}` on {machine()}; "
             f"pre-training: {epochs} epochs ({summary['pretrain_steps']} steps) on the "
             f"{pretrain_metrics['num_images']:,} unlabeled `train.csv` images in "
             f"{times['pretrain'] / 60:.1f} min, final loss "
             f"{summary['pretrain_final_loss']:.3f}, z std "
             f"{summary['z_std_final']:.4f} (healthy {summary['z_std_healthy']:.4f}"
             f"{', COLLAPSE WARNING' if collapsed else ', no collapse warning'})."
             + ("" if final else " (Unfinished: the steps not listed did not run.)")]
    for split, what in (("test_acc", "Test"), ("val_acc", "Validation (what choices are made on)")):
        if rows:
            lines += ["", f"{what} accuracy by share of `train.csv`'s labels:", "",
                      *fraction_table(rows, split)]
    lines += ["", "| initialisation | protocol | labels (images) | validation | test | wall time |",
              "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['init']} | {r['protocol']}"
              f"{' (' + r['detail'] + ')' if r.get('detail') else ''}"
              f" | {r['labels'] * 100:g} % ({r['train_labels']:,}) | {percent(r['val_acc'])} | "
              f"{percent(r['test_acc'])} | {r['wall_s'] / 60:.1f} min |" for r in rows]
    for split, key in (("validation", "margin_over_floors_validation"),
                       ("test", "margin_over_floors")):
        if summary[key]:
            lines += ["", f"SimSiam minus the higher floor (random init or image statistics), "
                      f"{split}: " + "; ".join(f"{p} {m:+.2f}" for p, m in summary[key].items())]
    if len(ranks) == 2 and None not in ranks.values():
        lines += ["", f"Feature effective rank (train, {results['linear']['feature_dim']}-d): "
                      f"pre-trained {ranks['pretrained']:.1f}, random init {ranks['random']:.1f}."]
    knn_lines = [f"{e}: {k:.1f} %" for e, k in summary["knn_val_per_epoch"].items()
                 if k is not None]
    if knn_lines:
        floors = summary["knn_floors"] or {}
        lines += ["", f"kNN monitor (k={pretrained_config.get('KNN_K')}, validation.csv) by "
                  "pre-training epoch: " + ", ".join(knn_lines)
                  + ("; its floors: " + ", ".join(f"{name} {value:.1f} %"
                                                  for name, value in floors.items()
                                                  if isinstance(value, float))
                     if floors else "")]
    lines += ["", "Commands:", ""] + [f"    {c}" for c in commands.values()]
    with atomic_write(os.path.join(out, "quality.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with atomic_write(os.path.join(out, "quality.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return "\n".join(lines)


def main():
    config, _ = configure(globals())
    check_settings(config, {"PRESET": one_of(*PRESETS), "AMP": one_of("", *AMP_MODES),
                            "PRETRAIN_EPOCHS": at_least(0), "FINETUNE_EPOCHS": at_least(0),
                            "PRETRAIN_IMAGES": at_least(0),
                            "LABEL_FRACTIONS": fractions_rule(empty="the preset's"),
                            "FINETUNE_FRACTIONS": fractions_rule(empty="the preset's")})
    preset = PRESETS[PRESET]
    precision = [f"--amp={AMP or preset['amp']}"]  # the probe's features are always fp32
    eurosat = os.path.abspath(EUROSAT_DIR)
    if not os.path.isfile(os.path.join(eurosat, "train.csv")):
        fail(f"{eurosat}/train.csv not found: point --eurosat_dir at EuroSAT with its split CSVs "
             "(bash scripts/data.sh downloads it to datae/EuroSAT)")
    out = os.path.abspath(OUTPUT_DIR or os.path.join("bench_results", f"quality_{PRESET}"))
    os.makedirs(out, exist_ok=True)
    cache = os.path.abspath(CACHE_DIR)
    pretrain = (preset["model"] + preset["pretrain"]
                + ([f"--num_epochs={PRETRAIN_EPOCHS}"] if PRETRAIN_EPOCHS else [])
                + PRETRAIN_ARGS.split())
    file_list = os.path.join(eurosat, "train.csv")
    if PRETRAIN_IMAGES:
        file_list = write_subset(file_list, PRETRAIN_IMAGES,
                                 os.path.join(out, "pretrain_images.csv"))
    common = [f"--eurosat_dir={eurosat}", f"--output_dir={out}", f"--cache_dir={cache}"]
    times, commands = {}, {}

    # ---- pre-training on the unlabeled training images ----
    args = [f"--data_dir={eurosat}", f"--file_list={file_list}", f"--output_dir={out}",
            f"--cache_dir={cache}", f"--knn_data_dir={eurosat}", *precision, *pretrain]
    commands["pretrain"] = "python train_simsiam.py " + " ".join(args)
    times["pretrain"] = pretrain_seconds(out, *run_step("pretrain", "train_simsiam.py", args, out))
    pretrain_metrics = load_checkpoint(os.path.join(out, "pretrain_metrics.pth"))
    pretrained_config = pretrain_metrics["config"]
    checkpoint = os.path.join(out, f"simsiam_{pretrained_config['ARCH']}_epoch_"
                                   f"{pretrain_metrics['epochs'][-1]}.pth")
    random_model = ["--pretrained_path=random", f"--arch={pretrained_config['ARCH']}",
                    f"--small_stem={pretrained_config['SMALL_STEM']}",
                    f"--stem_stride={pretrained_config.get('STEM_STRIDE', 1)}",
                    f"--image_size={pretrained_config['IMAGE_SIZE']}"]
    steps = evaluation_steps(checkpoint, random_model, precision, preset)
    report = Report(out, config, pretrain_metrics, times, commands,
                    {step.name: step.init for step in steps})
    write_report(report, {}, final=False)

    # ---- evaluations: pre-trained, random initialisation of the same network and input size,
    # and image statistics; at each label fraction ----
    results = {}
    for step in steps:
        name = step.name
        commands[name] = f"python {step.script} " + " ".join(common + step.args)
        path = os.path.join(out, step.metrics_file)
        model = step.args[0].split("=", 1)[1]  # --pretrained_path: this checkpoint, or a floor
        if finished(path, model):
            print(f"[{name}] already done: {path}")
        elif finished(path):  # an earlier checkpoint's (a rerun with more --pretrain_epochs)
            print(f"[{name}] {path} holds another checkpoint's results: replacing them")
            run_step(name, step.script, common + step.args + ["--overwrite=True"], out)
        elif not reuse_floor(step, commands[name], path):
            run_step(name, step.script, common + step.args, out)
        results[name] = load_checkpoint(path)
        # the script's own timing: the same on a rerun that skips it
        times[name] = results[name]["wall_time_s"]
        same_labelled_images(results)
        # the table so far: a step that fails or is stopped later keeps these rows
        table = write_report(report, results, final=step == steps[-1])
    print(table)
    print(f"\nwrote {out}/quality.json and {out}/quality.md")


if __name__ == "__main__":
    run(main)
