"""Shared test helpers: the repository root on sys.path, a way to run a script as a user would,
tiny images."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

# a tiny pre-training configuration that goes through the same code path as the defaults
TINY_PRETRAIN = ["--arch=resnet18", "--image_size=32", "--batch_size=8", "--proj_dim=64",
                 "--pred_dim=16", "--warmup_epochs=1", "--num_workers=0"]


def run_script(script, *args, cwd=None, timeout=300, env=None):
    """Run `python script args...` from the repository root;
    return the CompletedProcess (text output)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def write_images(folder, count, size=40, seed=0):
    """`count` small RGB PNGs with smooth random colours, in two sub-folders
    (the dataset is recursive)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        sub = os.path.join(folder, f"part{i % 2}")
        os.makedirs(sub, exist_ok=True)
        base = rng.integers(0, 255, size=(1, 1, 3))
        ramp = np.linspace(0, 80, size).reshape(1, size, 1)
        pixels = np.clip(base + ramp + rng.normal(0, 20, size=(size, size, 3)),
                         0, 255).astype(np.uint8)
        path = os.path.join(sub, f"img_{i:03d}.png")
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def tiny_images(tmp_path):
    folder = tmp_path / "images"
    write_images(str(folder), 24)
    return folder
