"""The lent GPU's check rehearsed on the CPU at tiny size: scripts/gpu_check.sh and the plan of its
quality part (scripts/plan_quality.py), and the EuroSAT copy that travels with it
(scripts/copy_eurosat_subset.py). The timings below are made-up inputs of the planner, not
measurements of any GPU."""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import plan_quality
import simsiam_data as data
from conftest import ROOT, run_in_process, run_script
from test_evaluation import make_eurosat

GPU_PRESET = ["--jitter_p=0.2", "--jitter_strength=0.25", "--gray_p=0", "--blur_p=0",
              "--solarize=False", "--crop_scale_min=0.2", "--vflip_p=0.5", "--rotate90=True"]


def _gpu_check(tmp_path, **env):
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh")], cwd=ROOT,
                          env=dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable,
                                   **env),
                          capture_output=True, text=True, timeout=600)


def _plan(tmp_path, step, *args):
    return run_in_process("scripts/plan_quality.py", f"--step={step}",
                          f"--work_dir={tmp_path / 'work'}", *args)


# -------------------------------------------------------------------------------------------------
# missing data, and the budget

def test_missing_or_incomplete_data_stops_the_check_at_once_by_name(tmp_path):
    started = time.time()
    result = _gpu_check(tmp_path, GPU_CHECK_PARTS="quality",
                        GPU_CHECK_EUROSAT=str(tmp_path / "missing_folder"))
    assert result.returncode == 1 and time.time() - started < 60
    log = open(tmp_path / "out" / "gpu_check.log").read()
    assert f"{tmp_path / 'missing_folder'} (the folder is missing)" in log
    assert "copy_eurosat_subset.py" in log and "carry" in log
    assert "== system check" not in log  # stopped before anything slow
    # a listed image that did not travel
    make_eurosat(str(tmp_path / "EuroSAT"))
    listed = pd.read_csv(tmp_path / "EuroSAT" / "test.csv")["Filename"].iloc[3]
    os.remove(tmp_path / "EuroSAT" / listed)
    result = _plan(tmp_path, "check", f"--eurosat_dir={tmp_path / 'EuroSAT'}")
    assert result.returncode == 1 and listed in result.stderr and "test.csv" in result.stderr
    assert "incomplete" in result.stderr and not (tmp_path / "work" / "plan.json").exists()


def test_the_budget_printed_sums_to_the_command_limit_and_must_leave_pre_training_time(
        tmp_path):
    make_eurosat(str(tmp_path / "EuroSAT"))
    result = _plan(tmp_path, "check", f"--eurosat_dir={tmp_path / 'EuroSAT'}",
                   "--seconds_used=7", "--batches=8")
    assert result.returncode == 0, result.stderr
    assert "train 32, validation 32, test 32 images" in result.stdout
    stages = re.findall(r"^ +(-?\d+) s  (.+)$", result.stdout, flags=re.M)
    assert [name for _, name in stages][0] == "data check (done)" and int(stages[0][0]) >= 7
    assert sum(int(s) for s, _ in stages) <= plan_quality.COMMAND_S
    pretrain = next(int(s) for s, name in stages if name.startswith("pre-training"))
    assert pretrain >= plan_quality.MIN_PRETRAIN_S
    # the evaluations' cost: one kNN + probe run per label fraction and initialisation
    assert "9 kNN + probe runs x 15 s, 2 fine-tuning runs x 40 s" in result.stdout
    limits = open(tmp_path / "work" / "stage_limits.txt").read().split()
    assert limits == [str(plan_quality.SYSTEM_CHECK_S), str(plan_quality.SIDE_STREAM_TEST_S),
                      str(plan_quality.GRAPHS_TEST_S)]
    # evaluations that leave pre-training too little are refused at the start, by name
    result = _plan(tmp_path, "check", f"--eurosat_dir={tmp_path / 'EuroSAT'}",
                   "--batches=8", "--linear_run_s=30")
    assert result.returncode == 2 and "MIN_PRETRAIN_S" in result.stderr
    assert "LINEAR_RUN_S" in result.stderr


# -------------------------------------------------------------------------------------------------
# the plan: timings of the preset as it will run; a later failure never discards a plan

def _timing(work, stride, batch, default_ms, graphs_ms=None, compile_s=0.0):
    """A timing file as bench_pretrain.py writes it (made-up step times)."""
    rows = {"ceiling": {"ms_per_step": default_ms}}
    if default_ms is not None:
        rows["default"] = {"ms_per_step": default_ms}
    if graphs_ms is not None:
        rows["ceiling_graphs"] = {"ms_per_step": graphs_ms, "warmup_s": compile_s}
        rows["default_graphs"] = {"ms_per_step": graphs_ms}
    with open(work / f"timing_s{stride}_b{batch}.json", "w") as f:
        json.dump({"results": rows}, f)


def _state(work, train_images=18900):
    """plan.json as the check step leaves it, for the GPU preset on all of EuroSAT."""
    from bench_quality import PRESETS
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "plan.json", "w") as f:
        json.dump({"eurosat_dir": "/e", "images": {"train": train_images}, "copy": None,
                   "preset": PRESETS["gpu"], "budget": [], "timings": []}, f)


def _next(tmp_path, *args):
    result = _plan(tmp_path, "next", "--seconds_used=100", *args)
    assert result.returncode == 0, result.stderr
    return open(tmp_path / "work" / "next_timing.txt").read().splitlines()


def _run_plan(tmp_path, *args):
    result = _plan(tmp_path, "plan", "--seconds_used=200", *args)
    assert result.returncode == 0, result.stderr
    chosen = json.load(open(tmp_path / "work" / "plan.json"))["plan"]
    return chosen, open(tmp_path / "work" / "quality_run.txt").read().splitlines(), result.stdout


def test_timings_run_the_gpu_preset_as_the_quality_run_will(tmp_path):
    work = tmp_path / "work"
    _state(work)
    first = _next(tmp_path, "--side_stream_ok=False", "--graphs_ok=True")
    assert first[0] == (f"{plan_quality.TIMING_S} stem stride 1, batch 64, eager and with CUDA "
                        "graphs")
    args = first[1:]
    assert set(GPU_PRESET) <= set(args)  # the preset's augmentations, not the write-up's
    assert {"--stem_stride=1", "--batch_size=64", "--graphs=True", "--overlap_data=False",
            "--rows=default"} <= set(args)
    assert args.index("--stem_stride=1") > args.index("--arch=resnet18")  # after the preset's
    assert "--base_lr=0.2" not in args  # a pre-training setting bench_pretrain.py lacks
    assert f"--output_json={work / 'timing_s1_b64.json'}" in args


def test_bench_pretrain_makes_the_views_it_is_given(tmp_path, monkeypatch):
    import simsiam_model
    from test_pipeline_at_scale import TinySimSiam
    monkeypatch.setattr(simsiam_model, "SimSiam", TinySimSiam)  # the views are under test
    made = []
    real = data.batch_augment_pair

    def recorded(image_size, **views):
        made.append(views)
        return real(image_size, **views)
    monkeypatch.setattr(data, "batch_augment_pair", recorded)
    result = run_in_process("scripts/bench_pretrain.py", "--arch=resnet18", "--small_stem=True",
                            "--stem_stride=2", "--image_size=16", "--batch_size=2", "--steps=1",
                            "--warmup_steps=1", "--num_images=4", "--rows=default",
                            "--overlap_data=False", *GPU_PRESET,
                            f"--generated_dir={tmp_path / 'images'}",
                            f"--cache_dir={tmp_path / 'cache'}",
                            f"--output_json={tmp_path / 'timing.json'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert made == [{"crop_scale_min": 0.2, "solarize": False, "jitter_strength": 0.25,
                     "jitter_p": 0.2, "gray_p": 0.0, "blur_p": 0.0, "vflip_p": 0.5,
                     "rotate90": True}]
    assert json.load(open(tmp_path / "timing.json"))["config"]["OVERLAP_DATA"] is False


def test_a_failed_second_timing_keeps_the_first_plan(tmp_path):
    work = tmp_path / "work"
    _state(work)
    paths = ["--side_stream_ok=True", "--graphs_ok=True", "--min_steps=1500"]
    _next(tmp_path, *paths)
    # stride 1 at batch 64 reaches MIN_STEPS in what is left, eager and (more) with CUDA graphs
    _timing(work, 1, 64, default_ms=20.0, graphs_ms=4.0, compile_s=20.0)
    second = _next(tmp_path, *paths)
    assert second[0].startswith(f"{plan_quality.TIMING_S} stem stride 1, batch 256, eager and")
    # ... which fails before its first row: the plan of the first timing stands
    chosen, run, printed = _run_plan(tmp_path, *paths)
    assert (chosen["stride"], chosen["batch"], chosen["graphs"]) == (1, 64, True)
    assert chosen["steps"] >= 1500 and "largest batch timed" in chosen["why"]
    assert "chose stem stride 1, batch 64, CUDA graphs" in printed
    assert int(run[0]) == plan_quality.COMMAND_S - 200 - plan_quality.SAVE_S
    pretrain = next(a for a in run if a.startswith("--pretrain_args="))
    assert "--batch_size=64 --stem_stride=1 --cuda_graphs=True --overlap_data=True" in pretrain
    assert f"--pretrain_epochs={chosen['epochs']}" in run
    # the fine-tuning epochs fit FINETUNE_RUN_S at the eager step time: the preset's 10 would not
    epoch_s = 18900 * 0.020 / (2 * 64) * plan_quality.STEP_MARGIN
    epochs = int((plan_quality.FINETUNE_RUN_S - plan_quality.FINETUNE_START_S) // epoch_s)
    assert 1 <= epochs < 10 and f"--finetune_epochs={epochs}" in run
    # had the second timing given a rate that reaches MIN_STEPS, its larger batch would be chosen
    _timing(work, 1, 256, default_ms=60.0, graphs_ms=12.0, compile_s=20.0)
    chosen, run, _ = _run_plan(tmp_path, *paths)
    assert (chosen["batch"], chosen["graphs"]) == (256, True)
    # where the CUDA-graph test failed, the graph rows are no candidates
    chosen, run, _ = _run_plan(tmp_path, "--side_stream_ok=True", "--min_steps=1500")
    assert (chosen["batch"], chosen["graphs"]) == (64, False)
    assert "--cuda_graphs=False" in " ".join(run)


def test_stride_2_only_when_stride_1_falls_short_and_a_stopped_timing_adds_nothing(tmp_path):
    work = tmp_path / "work"
    _state(work)
    _next(tmp_path, "--side_stream_ok=True")
    _timing(work, 1, 64, default_ms=60.0)  # too slow for MIN_STEPS at stride 1
    second = _next(tmp_path, "--side_stream_ok=True")
    assert second[0] == f"{plan_quality.TIMING_S} stem stride 2, batch 64, eager"
    assert _next(tmp_path, "--side_stream_ok=True") == []  # TIMINGS = 2 made
    # the stride-2 timing stopped after its ceiling row: stride 1 stays, short of MIN_STEPS
    _timing(work, 2, 64, default_ms=None)
    chosen, _, printed = _run_plan(tmp_path, "--side_stream_ok=True")
    assert (chosen["stride"], chosen["batch"], chosen["step_ms"]) == (1, 64, 60.0)
    assert chosen["steps"] < plan_quality.MIN_STEPS and "fewer than MIN_STEPS" in printed
    # finished, it fits more steps, and MIN_STEPS: stride 2
    _timing(work, 2, 64, default_ms=1.5)
    chosen, _, _ = _run_plan(tmp_path, "--side_stream_ok=True")
    assert (chosen["stride"], chosen["steps"] >= plan_quality.MIN_STEPS) == (2, True)
    # no timing at all: a slow step is assumed, so that the run still ends in time
    for name in ("timing_s1_b64.json", "timing_s2_b64.json"):
        os.remove(work / name)
    chosen, _, printed = _run_plan(tmp_path, "--side_stream_ok=True")
    assert chosen["step_ms"] == plan_quality.UNTIMED_STEP_S * 1000 and "UNTIMED_STEP_S" in printed


def test_the_label_fractions_are_passed_to_the_quality_run(tmp_path):
    work = tmp_path / "work"
    _state(work)
    _next(tmp_path)
    _timing(work, 1, 64, default_ms=12.0)
    _, run, _ = _run_plan(tmp_path, "--finetune_fractions=0.1 1")
    assert "--label_fractions=0.01 0.1 1" in run and "--finetune_fractions=0.1 1" in run
    # budgeted as bench_quality.py reads them (commas too), and a bad list refused before any work
    make_eurosat(str(tmp_path / "EuroSAT"))
    commas = _plan(tmp_path, "check", f"--eurosat_dir={tmp_path / 'EuroSAT'}", "--batches=8",
                   "--label_fractions=0.01,0.1,1")
    assert "9 kNN + probe runs x 15 s, 2 fine-tuning runs x 40 s" in commas.stdout, commas.stderr
    bad = _plan(tmp_path, "check", f"--eurosat_dir={tmp_path / 'EuroSAT'}", "--batches=8",
                "--label_fractions=0.01 0.01")
    assert bad.returncode == 2 and "LABEL_FRACTIONS" in bad.stderr, bad.stderr


# -------------------------------------------------------------------------------------------------
# the whole quality part, and the other parts, on the CPU

@pytest.mark.slow
def test_gpu_check_rehearsal_on_the_cpu(tmp_path):
    """scripts/gpu_check.sh at tiny size: the data checked, the budget printed, the two proven
    paths (here one fails, one passes), two timings (here the second fails), the planned quality
    run without the path that failed and with the first timing's plan, each stage's time; then
    throughput and the CUDA tests. Everything under OUT."""
    make_eurosat(str(tmp_path / "EuroSAT"))
    result = _gpu_check(
        tmp_path, GPU_CHECK_EUROSAT=str(tmp_path / "EuroSAT"),
        # 20 minutes: room for a CPU that others share
        GPU_CHECK_PLAN_ARGS="--batches=4 --max_epochs=1 --min_steps=1000000 --timed_steps=1 "
                            "--command_s=1200 --label_fractions=1",
        # the standard stem: stride 1 times, stride 2 (small stem only) fails at its settings
        GPU_CHECK_TIMING_ARGS="--image_size=16 --num_images=8 --warmup_steps=1 --small_stem=False",
        GPU_CHECK_PRETRAIN_ARGS="--image_size=16 --proj_dim=16 --pred_dim=8",
        GPU_CHECK_QUALITY_ARGS="--skip_finetune=True --linear_args=--num_epochs=1",
        GPU_CHECK_SIDE_STREAM_TEST="tests/no_such_test.py",
        GPU_CHECK_GRAPHS_TEST="tests/test_readme.py::test_no_placeholder_left",
        GPU_CHECK_ARCH="resnet18", GPU_CHECK_IMAGE_SIZE="16", GPU_CHECK_BATCHES="2",
        GPU_CHECK_GRAPHS_BATCHES="2", GPU_CHECK_STEPS="1", GPU_CHECK_WARMUP_STEPS="1",
        GPU_CHECK_IMAGES="4",
        GPU_CHECK_WORKERS="0", GPU_CHECK_TESTS="tests/test_readme.py::test_no_placeholder_left")
    # the failed side-stream test is the exit status (pytest: 4, no such file); all else ran
    assert result.returncode == 4, result.stdout[-3000:] + result.stderr[-2000:]
    out = tmp_path / "out"
    # at most 8 files come back from a lent machine
    assert sorted(os.listdir(out)) == ["bench_pretrain_batch2.json", "cuda_tests.txt",
                                       "gpu_check.log", "quality.json", "quality.md",
                                       "quality_logs.tar.gz", "system_check.txt"]
    log = open(out / "gpu_check.log").read()
    order = [log.index(s) for s in ("quality budget, 1200 s", "== system check",
                                    "== quality: side-stream test", "== quality: CUDA-graph test",
                                    "quality: timing 1: stem stride 1, batch 4",
                                    "quality: timing 2: stem stride 2, batch 4",
                                    "quality: chose stem stride", "== quality run (limit",
                                    "quality stages, 1200 s", "== throughput", "== CUDA tests")]
    assert order == sorted(order)
    assert "the side-stream test did not pass: the run goes without it" in log
    assert "timing, stem stride 2, batch 4, eager and with CUDA graphs: exit 2" in log
    assert "chose stem stride 1, batch 4, eager" in log
    assert "batch 2 pairs, 1 timed steps after 1 warm-up" in log  # GPU_CHECK_WARMUP_STEPS
    summary = json.load(open(out / "quality.json"))
    assert "--overlap_data=False --knn_every=1" in summary["commands"]["pretrain"]
    assert summary["arch"] == "resnet18 (small stem)"  # stride 1: the first timing's plan
    assert "--cuda_graphs=False" in summary["commands"]["pretrain"]  # no graph rows on a CPU
    assert {row["init"] for row in summary["rows"]} == {"SimSiam pre-trained", "random init",
                                                         "image statistics"}
    with tarfile.open(out / "quality_logs.tar.gz") as logs:
        names = logs.getnames()
        plan = json.load(logs.extractfile("./plan.json"))
    assert {"./pretrain.log", "./side_stream_test.log", "./graphs_test.log", "./stages.log",
            "./timing_s1_b4.json"} <= set(names)
    assert not any(name.startswith("./simsiam_") for name in names)  # no large checkpoints
    assert [t["stride"] for t in plan["timings"]] == [1, 2]
    assert {c["stride"] for c in plan["plan"]["candidates"]} == {1}
    assert plan["plan"]["overlap_data"] is False and plan["plan"]["epochs"] == 1
    stages = {s["stage"]: s for s in plan["stages"]}
    assert stages["quality: side-stream test"]["exit"] == 4
    assert stages["quality run"]["exit"] == 0
    # every stage within the limit it was given (a stage that reaches it is stopped there)
    assert all(s["took_s"] <= s["limit_s"] + 5 for s in plan["stages"]), plan["stages"]


# -------------------------------------------------------------------------------------------------
# the EuroSAT copy that travels

def _listed(folder):
    return {f for split in ("train", "validation", "test")
            for f in pd.read_csv(folder / f"{split}.csv")["Filename"]}


def test_the_copy_reencoded_matches_its_csvs(tmp_path):
    source, target = tmp_path / "EuroSAT", tmp_path / "copy"
    make_eurosat(str(source))
    result = run_script("scripts/copy_eurosat_subset.py", f"--source_dir={source}",
                        f"--target_dir={target}", "--train_images=0", "--jpeg_quality=95")
    assert result.returncode == 0, result.stderr[-2000:]
    for split in ("train", "validation", "test"):
        assert (target / f"{split}.csv").read_bytes() == (source / f"{split}.csv").read_bytes()
    copied = {os.path.relpath(os.path.join(root, name), target)
              for root, _, names in os.walk(target) for name in names if name.endswith(".jpg")}
    assert copied == _listed(target) == _listed(source)  # every listed image, nothing else
    info = json.load(open(target / "eurosat_copy.json"))
    counts = {split: len(pd.read_csv(target / f"{split}.csv")) for split in info["images"]}
    assert info["images"] == counts
    printed = re.search(r"copied train (\d+), validation (\d+), test (\d+) images \(re-encoded at "
                        r"JPEG quality 95; per-pixel difference from the originals: largest "
                        r"(\d+), mean [\d.]+\) .*: ([\d.]+) MiB", result.stdout)
    assert printed, result.stdout
    assert [int(n) for n in printed.groups()[:3]] == list(counts.values())
    assert int(printed.group(4)) == info["max_pixel_difference"] > 0
    # re-encoded, as the worst pixel says
    name = sorted(copied)[0]
    original, copy = (np.asarray(Image.open(folder / name), dtype=int) for folder in (source,
                                                                                      target))
    assert 0 < np.abs(original - copy).max() <= info["max_pixel_difference"]
    assert Image.open(target / name).format == "JPEG"
    # the evaluations read it as they read the original
    assert len(data.read_eurosat_splits(str(target))["train"].paths) == counts["train"]


def test_copy_eurosat_subset_keeps_validation_and_test_whole(tmp_path):
    source, target = tmp_path / "EuroSAT", tmp_path / "subset"
    make_eurosat(str(source))
    args = [f"--source_dir={source}", f"--target_dir={target}"]
    result = run_in_process("scripts/copy_eurosat_subset.py", *args, "--train_images=5")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "bytes as they are" in result.stdout
    train = pd.read_csv(target / "train.csv", index_col=0)
    original = pd.read_csv(source / "train.csv", index_col=0)
    assert len(train) == 5 and set(train.index) <= set(original.index)
    assert train.equals(original.sample(5, random_state=0))  # the same rows every time
    for split in ("validation", "test"):
        assert pd.read_csv(target / f"{split}.csv", index_col=0).equals(
            pd.read_csv(source / f"{split}.csv", index_col=0))
    listed = _listed(target)
    assert all((target / f).read_bytes() == (source / f).read_bytes() for f in listed)
    assert (target / "label_map.json").is_file()
    # a second copy into the same folder is refused, as is asking for more rows than exist
    again = run_in_process("scripts/copy_eurosat_subset.py", *args)
    assert again.returncode == 2 and "not empty" in again.stderr
    too_many = run_in_process("scripts/copy_eurosat_subset.py", f"--source_dir={source}",
                              f"--target_dir={tmp_path / 'other'}", "--train_images=100000")
    assert too_many.returncode == 2 and "TRAIN_IMAGES" in too_many.stderr
    assert not (tmp_path / "other").exists()  # refused before anything was copied
    # a corrupt image stops the copy by name; nothing half-made is left where the copy goes
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    first = sorted(pd.read_csv(broken / "test.csv")["Filename"])[0]
    (broken / first).write_bytes(b"not a JPEG")
    corrupt = run_in_process("scripts/copy_eurosat_subset.py", f"--source_dir={broken}",
                             f"--target_dir={tmp_path / 'from_broken'}", "--train_images=0",
                             "--jpeg_quality=95")
    assert corrupt.returncode == 1 and first in corrupt.stderr, corrupt.stderr
    assert "replace it" in corrupt.stderr and not (tmp_path / "from_broken").exists()


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, "..", "shared", "data", "EuroSAT")),
                    reason="needs our EuroSAT copy in ../shared/data/EuroSAT")
def test_reencoding_real_eurosat_saves_space(tmp_path, monkeypatch):
    """A few of the real images: quality 95 takes well under the 64 MiB / 78.8 MiB share that
    all of EuroSAT needs to travel (the README gives the whole copy's size)."""
    source = os.path.join(ROOT, "..", "shared", "data", "EuroSAT", "Forest")
    names = sorted(os.listdir(source))[:20]
    before = after = 0
    import copy_eurosat_subset as copier
    monkeypatch.setattr(copier, "JPEG_QUALITY", 95)
    for name in names:
        difference = copier.copy_image(os.path.join(source, name), str(tmp_path / name))
        before += os.path.getsize(os.path.join(source, name))
        after += os.path.getsize(tmp_path / name)
        assert difference.max() < 64
    assert after < 0.8 * before
