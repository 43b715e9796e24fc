"""Shared test helpers: the repository root on sys.path, two ways to run a script (as a user
would, and in-process), tiny images."""
import contextlib
import io
import os
import runpy
import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

# a tiny pre-training configuration that goes through the same code path as the defaults; in fp32
# everywhere (AMP = "auto" is bf16 on a CPU with native bf16), so that runs compare bit for bit
TINY_PRETRAIN = ["--arch=resnet18", "--image_size=32", "--batch_size=8", "--proj_dim=64",
                 "--pred_dim=16", "--warmup_epochs=1", "--num_workers=0", "--amp=off"]


def run_script(script, *args, cwd=None, timeout=300, env=None):
    """Run `python script args...` from the repository root;
    return the CompletedProcess (text output)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


class Result(NamedTuple):
    """What run_in_process returns: reads like subprocess.run's result and unpacks as
    (code, out, err)."""
    returncode: int
    stdout: str
    stderr: str


def run_in_process(script, *args):
    """Run a script's main as `python script args...` would, in this process: the same main and
    messages, without seconds of interpreter and PyTorch start-up. SystemExit becomes the exit
    status; any other exception propagates (a traceback the user would see fails the test)."""
    import runtime
    out, err = io.StringIO(), io.StringIO()
    saved_argv, sys.argv = sys.argv, [script, *args]
    locks_before = len(runtime._held_locks)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    except SystemExit as stop:
        code = stop.code or 0
    finally:
        sys.argv = saved_argv
        # a process's exit drops its output-folder locks; here, drop the ones this run took
        while len(runtime._held_locks) > locks_before:
            runtime._held_locks.pop().close()
    assert "Traceback" not in err.getvalue()
    return Result(code, out.getvalue(), err.getvalue())


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
