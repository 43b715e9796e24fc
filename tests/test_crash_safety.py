"""Fault injection: SIGKILL a tiny pre-training at random moments, rerun the same command, check
nothing is lost and that the result is the one an uninterrupted run gives. The runs that are
killed are processes of their own; the reruns that finish run in this process
(conftest.run_in_process: the same main, without seconds of start-up)."""
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TINY_PRETRAIN, run_in_process, write_images
from runtime import load_checkpoint

pytestmark = pytest.mark.slow  # every test here kills processes at random moments

EPOCHS, IMAGES, BATCH = 4, 24, 8


def _all_files_load(out):
    for path in glob.glob(os.path.join(out, "*.pth")):
        load_checkpoint(path)  # raises on a half-written file


def test_pretraining_survives_sigkill_at_random_moments(tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    write_images(str(images), IMAGES)
    command = [sys.executable, os.path.join(ROOT, "train_simsiam.py"), f"--data_dir={images}",
               f"--output_dir={out}", f"--cache_dir={tmp_path / 'cache'}", *TINY_PRETRAIN,
               f"--num_epochs={EPOCHS}", "--save_every=1"]
    rng = random.Random(0)
    kills = 0
    for attempt in range(3):
        # kill at a random moment up to 0.5 s after the attempt's first epoch line (printed once
        # that epoch's files are written): in the next epoch's steps or in writing its files.
        # Each attempt moves one epoch, so 3 attempts never finish the 4 epochs: every attempt
        # really is killed.
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1"))
        for line in process.stdout:
            if line.startswith("epoch ") and " loss " in line:
                time.sleep(rng.uniform(0.0, 0.5))
                process.send_signal(signal.SIGKILL)
                break
        process.stdout.close()
        process.wait(timeout=300)
        assert process.returncode == -signal.SIGKILL, (
            f"attempt {attempt} was not killed (exit {process.returncode})")
        kills += 1
        _all_files_load(str(out))
    result = _finish(command)
    assert result.returncode == 0, result.stderr[-2000:]
    assert kills == 3 and "resuming from" in result.stdout
    metrics = load_checkpoint(str(out / "pretrain_metrics.pth"))
    assert metrics["epochs"] == list(range(1, EPOCHS + 1))  # every epoch exactly once
    # as many optimiser steps as an uninterrupted run
    assert metrics["global_step"] == EPOCHS * (IMAGES // BATCH)
    assert len(metrics["loss"]) == EPOCHS
    for epoch in range(1, EPOCHS + 1):
        assert load_checkpoint(str(out / f"simsiam_resnet18_epoch_{epoch}.pth"))["epoch"] == epoch

    # and the result is the one an uninterrupted run gives:
    # the same loss at every epoch, the same weights
    straight = tmp_path / "straight"
    result = _finish([*command[:3], f"--output_dir={straight}", *command[4:]])
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_checkpoint(str(straight / "pretrain_metrics.pth"))["loss"] == metrics["loss"]
    resumed_weights = load_checkpoint(str(out / f"simsiam_resnet18_epoch_{EPOCHS}.pth"))["model"]
    straight_weights = load_checkpoint(
        str(straight / f"simsiam_resnet18_epoch_{EPOCHS}.pth"))["model"]
    assert all(torch.equal(resumed_weights[k], straight_weights[k]) for k in straight_weights)


def test_atomic_save_never_leaves_a_half_file(tmp_path):
    """Kill a process in the middle of rewriting a large file, many times:
    the file is always old or new."""
    target = tmp_path / "big.pth"
    writer = ("import sys, torch; sys.path.insert(0, %r); from runtime import atomic_save\n"
              "i = 0\n"
              "while True:\n"
              "    i += 1; atomic_save({'kind': 'x', 'i': i, "
              "'w': torch.full((4_000_000,), float(i))}, %r)\n"
              % (ROOT, str(target)))
    rng = random.Random(1)
    for _ in range(4):
        target.unlink(missing_ok=True)
        process = subprocess.Popen([sys.executable, "-c", writer])
        # the kill lands in the rewrites: after the first save (PyTorch's import before it takes
        # from one to many seconds, by the machine's load), not at a fixed time from the start
        deadline = time.monotonic() + 120
        while not target.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL and target.exists()
        saved = load_checkpoint(str(target))
        assert (saved["w"] == saved["i"]).all()


def _finish(command):
    """Run `command` ([python, script, args...]) to its end, in this process."""
    return run_in_process(os.path.relpath(command[1], ROOT), *command[2:])


def _kill_at_random_moments(command, rng, times, check, longest):
    """Start `command`, SIGKILL it at a random moment of its work, call check(), `times` times;
    then run it to the end. The moment is up to `longest` seconds after the script's first line
    of output (its settings, printed once its imports are done): a fixed time from the start
    lands in PyTorch's import on a loaded machine, and tests nothing. Every start must really be
    killed, or check() would see a run that finished."""
    for attempt in range(times):
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1"))
        process.stdout.readline()
        time.sleep(rng.uniform(0.0, longest))
        process.send_signal(signal.SIGKILL)
        process.stdout.close()
        process.wait(timeout=300)
        assert process.returncode == -signal.SIGKILL, (
            f"start {attempt} of {os.path.basename(command[1])} ended (exit "
            f"{process.returncode}) before its kill: lower `longest`")
        check()
    return _finish(command)


def test_make_dataset_survives_sigkill(tmp_path):
    from PIL import Image

    from make_demo_data import write_ssl4eo_zarr
    zarr_dir, png_dir = tmp_path / "zarr", tmp_path / "png"
    zarr_dir.mkdir()
    for n in range(3):
        write_ssl4eo_zarr(str(zarr_dir / f"ssl4eos12_train_seasonal_data_{n + 1:06d}.zarr.zip"),
                          n_samples=8, size=264, seed=n)  # SSL4EO-S12's size: seconds of work
    command = [sys.executable, os.path.join(ROOT, "make_dataset.py"), f"--input_dir={zarr_dir}",
               f"--output_dir={png_dir}", f"--manifest={tmp_path / 'manifest.csv'}",
               "--num_processes=1", "--png_compress_level=9"]

    def every_png_is_whole():
        for name in os.listdir(png_dir) if png_dir.exists() else []:
            if name.endswith(".png") and not name.startswith("."):
                with Image.open(png_dir / name) as image:
                    image.load()  # raises on a truncated PNG

    result = _kill_at_random_moments(command, random.Random(2), 2, every_png_is_whole, 0.8)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    every_png_is_whole()
    assert len([n for n in os.listdir(png_dir) if n.endswith(".png")]) == 3 * 8 * 4
    assert not [n for n in os.listdir(png_dir) if ".tmp" in n]


def test_evaluation_files_are_never_left_unreadable(tmp_path):
    from make_demo_data import write_eurosat_like
    eurosat, out = tmp_path / "EuroSAT", tmp_path / "out"
    write_eurosat_like(str(eurosat), n_per_class=12, size=32)
    common = [f"--eurosat_dir={eurosat}", f"--output_dir={out}",
              f"--cache_dir={tmp_path / 'cache'}", "--pretrained_path=random", "--arch=resnet18",
              "--image_size=32"]
    linear = [sys.executable, os.path.join(ROOT, "Linear_evaluation.py"), *common,
              "--feature_cache=False", "--num_epochs=40", "--batch_size=16"]
    finetune = [sys.executable, os.path.join(ROOT, "finetune_model.py"), *common, "--num_epochs=4",
                "--batch_size=16", "--amp=off"]
    rng = random.Random(3)
    for command in (linear, finetune):
        result = _kill_at_random_moments(command, rng, 2, lambda: _all_files_load(str(out)),
                                         1.5)
        assert result.returncode == 0, result.stderr[-2000:]
    assert load_checkpoint(str(out / "linear_eval_metrics_random.pth"))["test_acc"] is not None
    assert load_checkpoint(str(out / "finetune_metrics_random.pth"))["test_acc"] is not None


# a checkpoint, a figure and an image cache, each written over an earlier file under a file-size
# limit of 1 MiB, as a full disk would stop them (Python ignores SIGXFSZ: the write gets EFBIG)
_UNDER_A_LIMIT = r"""
import json, resource, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
import torch
import simsiam_data as data
from conftest import write_images
from runtime import WriteError, atomic_save, atomic_write
folder = sys.argv[2]
paths = write_images(folder + "/images", 4)
atomic_save({"w": torch.zeros(10)}, folder + "/checkpoint_last.pth")
with atomic_write(folder + "/figure.png") as f:
    f.write(b"the earlier figure")
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
def figure():
    with atomic_write(folder + "/figure.png") as f:
        f.write(b"x" * 2**21)
writes = {"checkpoint_last.pth": lambda: atomic_save({"w": torch.zeros(10**6)},
                                                     folder + "/checkpoint_last.pth"),
          "figure.png": figure,
          "cache": lambda: data.build_image_cache(paths, folder + "/cache", size=400, desc=False)}
errors = {}
for name, write in writes.items():
    try:
        write()
        errors[name] = "written"
    except WriteError as error:
        errors[name] = str(error)
print(json.dumps(errors))
"""


def test_writes_that_meet_a_full_disk_or_a_file_size_limit_are_named(tmp_path):
    """Issue 31: torch.save meets the OSError, then its zip writer raises a RuntimeError of its
    own, which became a traceback. Now a WriteError names each file; the earlier file is intact
    and no temporary file is left."""
    folder = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", _UNDER_A_LIMIT, ROOT, str(folder)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.splitlines()[-1])
    for name, error in errors.items():
        assert "(disk full or not writable?): File too large" in error, (name, error)
    assert str(folder / "checkpoint_last.pth") in errors["checkpoint_last.pth"]
    assert "images_" in errors["cache"] and ".npy" in errors["cache"]
    assert load_checkpoint(str(folder / "checkpoint_last.pth"))["w"].shape == (10,)
    assert (folder / "figure.png").read_bytes() == b"the earlier figure"
    assert not [n for n in os.listdir(folder) + os.listdir(folder / "cache") if ".tmp" in n]


def test_other_errors_inside_an_atomic_write_are_not_called_a_full_disk(tmp_path):
    from runtime import WriteError, atomic_write
    for cause in (None, FileNotFoundError(2, "No such file or directory")):
        with pytest.raises(RuntimeError, match="a bug") as raised:
            with atomic_write(tmp_path / "file.bin") as f:
                f.write(b"x")
                try:
                    raise cause or RuntimeError("the first")
                except (OSError, RuntimeError):
                    raise RuntimeError("a bug, not a full disk") from cause
        assert not isinstance(raised.value, WriteError)
    assert os.listdir(tmp_path) == []
