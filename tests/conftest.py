"""Shared test helpers: the repository root on sys.path, two ways to run a script (as a user
would, and in-process), tiny images, and the `slow` marker: `pytest -m "not slow"` runs the inner
loops in about a minute; CI (`bash scripts/test.sh`) runs everything."""
import contextlib
import io
import os
import runpy
import shutil
import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image

# one thread per process, here and in the scripts the tests start (they inherit it), unless set:
# the models are tiny, so more threads mostly wait for each other (tests/test_resume.py on 2 busy
# cores: 50 s of CPU with the default 2 threads, 23 s with 1), and scripts/test.sh runs 2 pytest
# processes side by side. Set before anything imports PyTorch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

# a tiny pre-training configuration that goes through the same code path as the defaults; in fp32
# everywhere (AMP = "auto" is bf16 on a CPU with native bf16), so that runs compare bit for bit
TINY_PRETRAIN = ["--arch=resnet18", "--image_size=32", "--batch_size=8", "--proj_dim=64",
                 "--pred_dim=16", "--warmup_epochs=1", "--num_workers=0", "--amp=off"]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end to end (script runs, killed processes, "
                                       "torchrun); left out by -m 'not slow'")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name == "test_distributed.py":  # every test there starts gloo processes
            item.add_marker(pytest.mark.slow)


def children_of(pid):
    """Process ids whose parent is pid, from /proc (Linux)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:  # the field after the state
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            pass  # gone meanwhile
    return found


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


def steps_in_process(monkeypatch):
    """Make the `subprocess.run([sys.executable, <a script of this repository>, ...])` of a script
    that runs the project's scripts as its steps (scripts/bench_quality.py) run that step with
    run_in_process, its output written where `stdout` points: the same steps, without seconds of
    start-up each. Other commands run as before. Returns the commands run so."""
    real_run, commands = subprocess.run, []

    def run(command, *args, stdout=None, **kwargs):
        script = os.path.relpath(str(command[1]), ROOT) if len(command) > 1 else ""
        if (list(command[:1]) != [sys.executable] or not script.endswith(".py")
                or script.startswith("..") or not os.path.isfile(os.path.join(ROOT, script))):
            return real_run(command, *args, stdout=stdout, **kwargs)
        commands.append(list(command))
        code, out, err = run_in_process(script, *command[2:])
        if stdout is not None and stdout != subprocess.PIPE:
            stdout.write(out + err)
            stdout.flush()
        return subprocess.CompletedProcess(command, code, out, err)

    monkeypatch.setattr(subprocess, "run", run)
    return commands


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


@pytest.fixture(scope="session")
def first_epoch_run(tmp_path_factory):
    """One finished 1-epoch pre-training (TINY_PRETRAIN, 16 images of write_images), made once for
    the whole session: the tests that continue, edit or evaluate a finished run take a copy of it
    (copy_first_epoch) instead of each training its own."""
    base = tmp_path_factory.mktemp("first_epoch")
    write_images(str(base / "images"), 16)
    result = run_in_process("train_simsiam.py", f"--data_dir={base / 'images'}",
                            f"--output_dir={base / 'out'}", f"--cache_dir={base / 'cache'}",
                            *TINY_PRETRAIN, "--num_epochs=1")
    assert result.returncode == 0, result.stderr[-2000:]
    return base


def copy_first_epoch(run, target):
    """A private copy of first_epoch_run's outputs and decode cache in target/out and
    target/cache; returns the arguments that continue it (with --num_epochs=N added). Its images
    are the session's: DATA_DIR is part of what a resume checks, so they are not copied; a test
    that changes them must put them back."""
    shutil.copytree(run / "out", target / "out")
    shutil.copytree(run / "cache", target / "cache")
    return [f"--data_dir={run / 'images'}", f"--output_dir={target / 'out'}",
            f"--cache_dir={target / 'cache'}", *TINY_PRETRAIN]


@pytest.fixture
def first_epoch(first_epoch_run, tmp_path):
    """copy_first_epoch into tmp_path: the arguments that continue the session's 1-epoch run."""
    return copy_first_epoch(first_epoch_run, tmp_path)
