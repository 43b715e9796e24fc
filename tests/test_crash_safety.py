"""Fault injection: SIGKILL a tiny pre-training at random moments, rerun the same command, check nothing is lost."""
import glob
import os
import random
import signal
import subprocess
import sys
import time

from conftest import ROOT, TINY_PRETRAIN, write_images
from runtime import load_checkpoint

EPOCHS, IMAGES, BATCH = 6, 24, 8


def _all_files_load(out):
    for path in glob.glob(os.path.join(out, "*.pth")):
        load_checkpoint(path)  # raises on a half-written file


def test_pretraining_survives_sigkill_at_random_moments(tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    write_images(str(images), IMAGES)
    command = [sys.executable, os.path.join(ROOT, "train_simsiam.py"), f"--data_dir={images}", f"--output_dir={out}",
               f"--cache_dir={tmp_path / 'cache'}", *TINY_PRETRAIN, f"--num_epochs={EPOCHS}", "--save_every=1"]
    rng = random.Random(0)
    kills = 0
    for attempt in range(12):
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if attempt < 4:
            # after start-up (imports take a few seconds) an epoch of 3 steps plus its writes takes about a second
            time.sleep(rng.uniform(3.0, 8.0))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
        output = process.communicate(timeout=300)[0]
        if os.path.isdir(out):
            _all_files_load(str(out))
        if process.returncode == 0:
            break
        assert process.returncode == -signal.SIGKILL, output[-2000:]
    assert process.returncode == 0 and kills >= 1
    metrics = load_checkpoint(str(out / "pretrain_metrics.pth"))
    assert metrics["epochs"] == list(range(1, EPOCHS + 1))  # every epoch exactly once
    assert metrics["global_step"] == EPOCHS * (IMAGES // BATCH)  # as many optimiser steps as an uninterrupted run
    assert len(metrics["loss"]) == EPOCHS
    for epoch in range(1, EPOCHS + 1):
        assert load_checkpoint(str(out / f"simsiam_resnet18_epoch_{epoch}.pth"))["epoch"] == epoch


def test_atomic_save_never_leaves_a_half_file(tmp_path):
    """Kill a process in the middle of rewriting a large file, many times: the file is always old or new."""
    target = tmp_path / "big.pth"
    writer = ("import sys, torch; sys.path.insert(0, %r); from runtime import atomic_save\n"
              "i = 0\n"
              "while True:\n"
              "    i += 1; atomic_save({'kind': 'x', 'i': i, 'w': torch.full((4_000_000,), float(i))}, %r)\n"
              % (ROOT, str(target)))
    rng = random.Random(1)
    for _ in range(4):
        process = subprocess.Popen([sys.executable, "-c", writer])
        time.sleep(rng.uniform(2.5, 4.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if target.exists():
            saved = load_checkpoint(str(target))
            assert (saved["w"] == saved["i"]).all()
