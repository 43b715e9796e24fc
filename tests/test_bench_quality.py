"""scripts/bench_quality.py end to end on a tiny EuroSAT-shaped folder: pre-training on a subset of
train.csv, kNN + linear evaluation of the checkpoint and of a random initialisation of the same
network and input size, the JSON and Markdown it writes, and effective_rank (the
dimensional-collapse diagnostic it reports)."""
import json
import os

import pandas as pd
import pytest
import torch

from conftest import ROOT, run_in_process, steps_in_process
from simsiam_model import effective_rank
from test_evaluation import make_eurosat


def test_effective_rank_counts_the_directions_used():
    torch.manual_seed(0)
    assert effective_rank(torch.randn(4000, 1) @ torch.randn(1, 64)
                          + 1e-4 * torch.randn(4000, 64)) < 1.5
    assert 55 < effective_rank(torch.randn(4000, 64)) <= 64
    three = torch.randn(4000, 3) @ torch.randn(3, 64)
    assert 2 < effective_rank(three + 1e-4 * torch.randn(4000, 64)) < 3.5


@pytest.mark.slow
def test_bench_quality_quick_run_writes_table(tmp_path, monkeypatch):
    """Three runs of bench_quality.py, each step of them in this process (steps_in_process)."""
    steps = steps_in_process(monkeypatch)
    eurosat, out = tmp_path / "EuroSAT", tmp_path / "quality"
    make_eurosat(str(eurosat))
    args = [f"--eurosat_dir={eurosat}", f"--output_dir={out}", f"--cache_dir={tmp_path / 'cache'}",
            "--pretrain_images=20", "--pretrain_epochs=1", "--skip_finetune=True", "--amp=off",
            "--label_fractions=0.75 1",
            "--pretrain_args=--image_size=32 --batch_size=8 --proj_dim=64 --pred_dim=16 "
            "--small_stem=True", "--linear_args=--num_epochs=2"]
    result = run_in_process("scripts/bench_quality.py", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # the project's scripts, run as `python <script> ...` (here: in this process)
    assert [os.path.basename(c[1]) for c in steps] == ["train_simsiam.py"] + 6 * [
        "Linear_evaluation.py"]
    subset = pd.read_csv(out / "pretrain_images.csv", index_col=0)
    train = pd.read_csv(eurosat / "train.csv", index_col=0)
    # never validation or test images
    assert len(subset) == 20 and set(subset["Filename"]) <= set(train["Filename"])
    summary = json.loads((out / "quality.json").read_text())
    assert summary["pretrain_images"] == 20 and summary["input_size"] == 32
    assert summary["arch"] == "resnet18 (small stem)"
    # the random baseline is the same network at the same input size as the pre-trained one
    assert "--small_stem=True" in summary["commands"]["linear_random"]
    assert "--image_size=32" in summary["commands"]["linear_random"]
    assert "--stem_stride=1" in summary["commands"]["linear_random"]
    random_metrics = torch.load(out / "linear_eval_metrics_random.pth", weights_only=False)
    assert random_metrics["config"]["SMALL_STEM"] is True and random_metrics["image_size"] == 32
    protocols = {(row["init"], row["protocol"], row["labels"]) for row in summary["rows"]}
    assert {(init, protocol, labels)
            for init in ("SimSiam pre-trained", "random init", "image statistics")
            for protocol in ("linear probe", "kNN k=20") for labels in (0.75, 1.0)} <= protocols
    # (k = 200 is left out where the bank holds fewer images: 24 and 32 labelled here)
    assert set(summary["margin_over_floors"]) == {
        f"{protocol}, {share} % of labels" for protocol in ("kNN k=20", "linear probe")
        for share in (75, 100)}
    assert not [row for row in summary["rows"] if row["protocol"] == "kNN k=200"]
    by_row = {(row["init"], row["protocol"], row["labels"]): row["test_acc"]
              for row in summary["rows"]}
    for share in (0.75, 1.0):
        assert summary["margin_over_floors"][f"linear probe, {share * 100:g} % of labels"] == \
            pytest.approx(by_row["SimSiam pre-trained", "linear probe", share]
                          - max(by_row["random init", "linear probe", share],
                                by_row["image statistics", "linear probe", share]))
    # a label fraction trains on its share of train.csv (the same images for every initialisation)
    assert {row["train_labels"] for row in summary["rows"] if row["labels"] == 0.75} == {24}
    digests = {share: {row["train_files_sha1"] for row in summary["rows"] if row["labels"] == share}
               for share in (0.75, 1.0)}
    assert len(digests[0.75]) == len(digests[1.0]) == 1 and digests[0.75] != digests[1.0]
    assert "--label_fraction=0.75" in summary["commands"]["linear_random_labels75pct"]
    # the kNN monitor's floors, measured before the first step
    pretrain_metrics = torch.load(out / "pretrain_metrics.pth", weights_only=False)
    assert set(pretrain_metrics["knn_floors"]) == {"random init", "image statistics"}
    assert "kNN monitor floors (validation): random init" in (out / "pretrain.log").read_text()
    assert all(0 <= row["test_acc"] <= 100 and 0 <= row["val_acc"] <= 100
               for row in summary["rows"])  # validation beside test in every row
    assert set(summary["margin_over_floors_validation"]) == set(summary["margin_over_floors"])
    assert all(0 < rank <= 512 for rank in summary["feature_effective_rank"].values())
    table = (out / "quality.md").read_text()
    assert "| random init | linear probe" in table and "python train_simsiam.py" in table
    assert "| initialisation | kNN k=20, 75 % | kNN k=20, 100 % | linear probe, 75 % |" in table
    assert "| image statistics | linear probe" in table and "minus the higher floor" in table
    assert "--pretrained_path=image_stats" in summary["commands"]["linear_image_stats"]

    # another run reuses those floors when its commands for them are the same
    reuse = [a.replace(str(out), str(tmp_path / "second")) for a in args]
    second = run_in_process("scripts/bench_quality.py", *reuse, f"--floors_dir={out}")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "[linear_random] reused from" in second.stdout
    assert "[linear_image_stats] reused from" in second.stdout
    reused = json.loads((tmp_path / "second" / "quality.json").read_text())["rows"]
    floors = [row for row in summary["rows"] if row["init"] != "SimSiam pre-trained"]
    assert [row for row in reused if row["init"] != "SimSiam pre-trained"] == floors

    # a rerun skips what is done and keeps the pre-training time of the run that did the work
    rerun = run_in_process("scripts/bench_quality.py", *args)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "already done" in rerun.stdout and "nothing to do" in (out / "pretrain.log").read_text()
    again = json.loads((out / "quality.json").read_text())
    assert again["pretrain_wall_min"] >= summary["pretrain_wall_min"]
    assert again["rows"] == summary["rows"]
    # more epochs: a new checkpoint, whose evaluations replace the old one's; the floors stay
    longer = [a if not a.startswith("--pretrain_epochs") else "--pretrain_epochs=2" for a in args]
    more = run_in_process("scripts/bench_quality.py", *longer)
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    assert "[linear] " in more.stdout and "holds another checkpoint's results" in more.stdout
    assert "[linear_random] already done" in more.stdout
    assert json.loads((out / "quality.json").read_text())["pretrain_epochs"] == 2
    assert "epoch_2.pth" in torch.load(out / "linear_eval_metrics.pth",
                                       weights_only=False)["pretrained_path"]
    args = longer
    # a floor of the same fraction that trained on other labelled images is named, not tabled
    doctored = out / "linear_eval_metrics_random_labels75pct.pth"
    metrics = torch.load(doctored, weights_only=False)
    torch.save(dict(metrics, train_files_sha1="0" * 40), doctored)
    mixed = run_in_process("scripts/bench_quality.py", *args)
    assert mixed.returncode == 1 and "trained on different images" in mixed.stderr, mixed.stderr
    assert "linear_random_labels75pct" in mixed.stderr


def test_every_recipe_study_row_is_a_valid_set_of_train_simsiam_settings(tmp_path):
    """scripts/recipe_study.sh, run with a PYTHON that only records its arguments: every row
    becomes one bench_quality command on the preset that adds nothing (custom), whose pre-training
    overrides spell out the whole recipe as settings train_simsiam.py accepts, so that no preset
    changed later changes a row; the ranking runs last; an unknown row is refused by name."""
    import subprocess
    import sys

    import train_simsiam
    from runtime import check_settings, configure
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from bench_quality import PRESETS

    recorder = tmp_path / "record.sh"
    recorder.write_text(f"#!{sys.executable}\nimport json, sys\n"
                        f"open({str(tmp_path / 'calls.txt')!r}, 'a').write("
                        "json.dumps(sys.argv[1:]) + '\\n')\n")
    recorder.chmod(0o755)
    env = {**os.environ, "PYTHON": str(recorder), "STUDY_DIR": str(tmp_path / "study")}
    done = subprocess.run(["bash", "scripts/recipe_study.sh"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in (tmp_path / "calls.txt").read_text().splitlines()]
    assert len(calls) == done.stdout.count("==== row") + 1 >= 11
    assert calls[-1][0].endswith("rank_study.py")  # ranked on validation, after every row
    names = [line.split()[2].rstrip(":") for line in done.stdout.splitlines()
             if line.startswith("==== row")]
    assert PRESETS["custom"]["model"] == PRESETS["custom"]["pretrain"] == []
    recipe = ("ARCH", "SMALL_STEM", "STEM_STRIDE", "IMAGE_SIZE", "BATCH_SIZE", "BASE_LR",
              "WARMUP_EPOCHS", "WEIGHT_DECAY", "CROP_SCALE_MIN", "JITTER_P", "JITTER_STRENGTH",
              "GRAY_P", "BLUR_P", "SOLARIZE", "VFLIP_P", "ROTATE90")
    configs = {}
    for name, args in zip(names, calls):
        assert "--preset=custom" in args
        pretrain = next(a for a in args if a.startswith("--pretrain_args=")).split("=", 1)[1]
        given = {arg.split("=")[0][2:].upper() for arg in pretrain.split()}
        assert set(recipe) <= given, (name, set(recipe) - given)  # the whole recipe, spelled out
        namespace = dict(vars(train_simsiam))
        config, _ = configure(namespace, pretrain.split())
        check_settings(config, train_simsiam.settings_rules())  # exits 2 on a bad value
        configs[name] = config
        # the probe's grid as the rows ran, whatever Linear_evaluation.py's default becomes
        assert "--linear_args=--weight_decays=0,1e-5,3e-5,1e-4,3e-4,1e-3,3e-3,1e-2" in args
    # the rows keep the recipe they were run with: row "preset" is the CPU preset of the study's
    # time, row stride_1_overhead the overhead-imagery recipe
    checked = ("JITTER_P", "JITTER_STRENGTH", "GRAY_P", "VFLIP_P", "ROTATE90", "STEM_STRIDE")
    assert [configs["preset"][k] for k in checked] == [0.8, 0.5, 0.0, 0.0, False, 2]
    assert [configs["stride_1_overhead"][k] for k in checked] == [0.2, 0.25, 0.0, 0.5, True, 1]
    bad = subprocess.run(["bash", "scripts/recipe_study.sh", "no_such_row"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown row no_such_row" in bad.stderr


def test_the_study_is_ranked_on_validation_not_on_test(tmp_path):
    """rank_study.py orders rows by their validation figures; a row that is better on test only
    ranks below, and an unfinished row is left out by name."""
    def write_row(name, validation, test, complete=True):
        rows = [{"init": init, "protocol": protocol, "val_acc": value, "test_acc": test_value,
                 "wall_s": 1.0}
                for init, scale in (("SimSiam pre-trained", 1.0), ("random init", 0.5),
                                    ("image statistics", 0.6))
                for protocol, value, test_value in (
                    ("kNN k=20 (cosine, T=0.2)", validation * scale, test * scale),
                    ("linear probe (90 epochs)", validation * scale, test * scale))]
        (tmp_path / name).mkdir()
        (tmp_path / name / "quality.json").write_text(json.dumps({
            "complete": complete, "rows": rows, "arch": "resnet18 (small stem)",
            "input_size": 32, "margin_over_floors_validation": {},
            "commands": {"pretrain": f"python train_simsiam.py --stem_stride=1 --row={name}"}}))
    write_row("better_on_test", validation=60.0, test=80.0)
    write_row("better_on_validation", validation=70.0, test=65.0)
    write_row("unfinished", validation=99.0, test=99.0, complete=False)
    result = run_in_process("scripts/rank_study.py", f"--study_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    ranking = (tmp_path / "ranking.md").read_text().splitlines()
    assert ranking[2].startswith("| 1 | better_on_validation |")
    assert ranking[3].startswith("| 2 | better_on_test |")
    assert "skipping row unfinished" in result.stdout and "unfinished |" not in result.stdout


def test_label_fractions_are_checked_at_start_up(tmp_path):
    """A repeated, zero or above-1 fraction stops bench_quality.py before any work, by name."""
    for setting, value in (("label_fractions", "0.1 0.1"), ("finetune_fractions", "0"),
                           ("label_fractions", "0.5,2")):
        result = run_in_process("scripts/bench_quality.py", f"--{setting}={value}",
                                f"--eurosat_dir={tmp_path / 'missing'}")
        assert result.returncode == 2 and setting.upper() in result.stderr, result.stderr


def test_evaluation_steps_come_in_order_of_importance_and_plan_quality_budgets_as_many(
        monkeypatch):
    """All labels first (kNN + probe, then fine-tuning), then the smaller fractions largest first,
    then fine-tuning on them; each step knows the initialisation it evaluates, and
    scripts/plan_quality.py budgets exactly as many runs as bench_quality.py makes of the
    fractions it passes on."""
    import bench_quality
    import plan_quality
    preset = dict(bench_quality.PRESETS["gpu"], label_fractions="0.01 1 0.1",
                  finetune_fractions="0.1 1")
    steps = bench_quality.evaluation_steps("ck.pth", ["--pretrained_path=random"], [], preset)
    assert [step.name for step in steps] == [
        "linear", "linear_random", "linear_image_stats", "finetune", "finetune_random",
        "linear_labels10pct", "linear_random_labels10pct", "linear_image_stats_labels10pct",
        "linear_labels1pct", "linear_random_labels1pct", "linear_image_stats_labels1pct",
        "finetune_labels10pct", "finetune_random_labels10pct"]
    assert [step.init for step in steps[:5]] == ["SimSiam pre-trained", "random init",
                                                 "image statistics", "SimSiam pre-trained",
                                                 "random init"]
    assert steps[6].metrics_file == "linear_eval_metrics_random_labels10pct.pth"
    assert steps[-1].args[-1] == "--label_fraction=0.1" and steps[0].args == [
        "--pretrained_path=ck.pth", *preset["linear"]]
    for fractions in (("0.01 0.1 1", "1"), ("1", "0.1 1"), ("0.5", "0.5 1")):
        for script in (plan_quality, bench_quality):  # plan_quality passes both lists on
            monkeypatch.setattr(script, "LABEL_FRACTIONS", fractions[0])
            monkeypatch.setattr(script, "FINETUNE_FRACTIONS", fractions[1])
        steps = bench_quality.evaluation_steps("ck.pth", [], [], bench_quality.PRESETS["gpu"])
        linear, finetune, _ = plan_quality.evaluations()
        assert (linear, finetune) == (
            sum(s.script == "Linear_evaluation.py" for s in steps),
            sum(s.script == "finetune_model.py" for s in steps)), fractions
