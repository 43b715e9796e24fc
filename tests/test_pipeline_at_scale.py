"""The pre-training pipeline at scale, on the CPU: an honest reference row in the throughput
benchmark, one copy of the decode cache, temporary files of several nodes, and the GPU paths (side
stream, CUDA graphs) with their CPU fallbacks. Per-rank augmentations under torchrun are checked
in the gloo test of tests/test_gpu_paths.py; what only a GPU can show is in tests/test_cuda.py."""
import contextlib
import json
import os
import time

import numpy as np
import pytest
import torch

import runtime
import simsiam_data as data
from conftest import TINY_PRETRAIN, run_in_process, write_images
from runtime import load_checkpoint

CUDA = torch.device("cuda")  # a device object only: nothing here touches a GPU


# -------------------------------------------------------------------------------------------------
# 1. the throughput benchmark times whole worker waves, and all of the default's data work

WAVE_INTERVAL = 0.4  # seconds a fake DataLoader worker takes per batch


class TinySimSiam(torch.nn.Module):
    """Stands in for SimSiam where only the timing is under test: a step of a millisecond or so,
    far faster than the fake workers."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.projector, self.predictor = torch.nn.Linear(3, 8), torch.nn.Linear(8, 8)

    def forward(self, x1, x2):
        z1, z2 = (self.projector(x.mean(dim=(2, 3))) for x in (x1, x2))
        return self.predictor(z1), self.predictor(z2), z1.detach(), z2.detach()


class WaveLoader:
    """Hands batches over as a DataLoader with W workers and prefetch factor 2 does: worker i % W
    makes batch i in WAVE_INTERVAL s, one after another, with at most 2 batches asked of each
    worker ahead; a new batch is asked for whenever one is taken, and batches are taken in order.
    So they land in waves of W, and a consumer faster than the workers waits for each wave."""

    def __init__(self, dataset, batch_size, num_workers=0, **kwargs):
        views, _ = dataset[0]
        self.views = [v.unsqueeze(0).expand(batch_size, -1, -1, -1).contiguous() for v in views]
        self.workers = max(1, num_workers)

    def __iter__(self):
        started = time.perf_counter()
        free_at, lands_at = [started] * self.workers, []

        def ask(at):
            worker = len(lands_at) % self.workers
            free_at[worker] = max(free_at[worker], at) + WAVE_INTERVAL
            lands_at.append(free_at[worker])

        for _ in range(2 * self.workers):
            ask(started)
        for index in range(10_000):
            time.sleep(max(0.0, lands_at[index] - time.perf_counter()))
            ask(time.perf_counter())
            yield self.views[0], self.views[1], []


def _slow_augment_pair(seconds):
    """batch_augment_pair whose every view takes at least `seconds` (the data work of the
    default)."""
    real = data.batch_augment_pair

    def pair(*args, **kwargs):
        def slow(augment):
            def call(*a, **k):
                time.sleep(seconds)
                return augment(*a, **k)
            return call
        return tuple(slow(augment) for augment in real(*args, **kwargs))
    return pair


@pytest.mark.slow
def test_bench_reference_rows_time_whole_waves_and_default_rows_all_data_work(tmp_path,
                                                                              monkeypatch):
    import simsiam_model
    monkeypatch.setattr(torch.utils.data, "DataLoader", WaveLoader)
    monkeypatch.setattr(simsiam_model, "SimSiam", TinySimSiam)
    monkeypatch.setattr(data, "batch_augment_pair", _slow_augment_pair(0.2))
    workers, batch = 2, 4
    result = run_in_process("scripts/bench_pretrain.py", "--arch=resnet18", "--image_size=32",
                            f"--batch_size={batch}", "--steps=2", "--warmup_steps=1",
                            "--num_images=8", f"--num_workers={workers}", "--amp=off",
                            f"--cache_dir={tmp_path / 'cache'}",
                            f"--generated_dir={tmp_path / 'images'}",
                            f"--output_json={tmp_path / 'bench.json'}")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.load(open(tmp_path / "bench.json"))["results"]
    workers_rate = workers * batch / WAVE_INTERVAL  # what the fake workers deliver
    for name in ("reference", "reference_amp"):
        # the old window counted a queued wave plus the next one over one interval: about 2x
        assert abs(rows[name]["pairs_per_s"] / workers_rate - 1) < 0.15, (name, rows[name])
        assert rows[name]["timed_steps"] % workers == 0
    # two views of 0.2 s each per step, every one of them inside the window
    assert rows["default"]["ms_per_step"] >= 0.95 * 400, rows["default"]
    assert rows["reference"]["precision"] == "fp32" and rows["default"]["precision"] == "fp32"


def test_the_reference_precision_on_cuda_is_named_tf32():
    import bench_pretrain
    flag = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        assert bench_pretrain.precision_label(CUDA, None) == "tf32"
        assert bench_pretrain.precision_label(CUDA, torch.bfloat16) == "bf16"
        assert bench_pretrain.precision_label(torch.device("cpu"), None) == "fp32"
        torch.backends.cudnn.allow_tf32 = False
        assert bench_pretrain.precision_label(CUDA, None) == "fp32"
    finally:
        torch.backends.cudnn.allow_tf32 = flag


@pytest.mark.slow
def test_bench_variants_time_the_other_memory_format_and_torch_compile(tmp_path, monkeypatch):
    """--variants=True: ceiling and default again in the other memory format (a fresh model in
    it), then compiled in theirs, with each ratio printed; a compiler that fails says so and
    keeps the rows measured."""
    import simsiam_model
    formats, compiled = [], []

    class Recorded(TinySimSiam):
        def to(self, *args, memory_format=torch.preserve_format, **kwargs):
            formats.append(memory_format)
            return super().to(*args, **kwargs)

    def fake_compile(model, **kwargs):
        compiled.append(kwargs)
        if len(compiled) == 2:  # the second compiled row: a machine without a C++ compiler
            def broken(*args):
                raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
            return broken
        return model

    monkeypatch.setattr(simsiam_model, "SimSiam", Recorded)
    monkeypatch.setattr(torch, "compile", fake_compile)
    result = run_in_process("scripts/bench_pretrain.py", "--image_size=16", "--batch_size=4",
                            "--steps=1", "--warmup_steps=1", "--num_images=8", "--rows=default",
                            "--amp=off", "--variants=True", f"--cache_dir={tmp_path / 'cache'}",
                            f"--generated_dir={tmp_path / 'images'}",
                            f"--output_json={tmp_path / 'bench.json'}")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.load(open(tmp_path / "bench.json"))
    assert list(summary["results"]) == ["ceiling", "default", "default_data_only",
                                        "ceiling_nchw", "default_nchw", "ceiling_compile"]
    assert {row.get("precision", "fp32") for row in summary["results"].values()} == {"fp32"}
    # the default is channels_last (on a CPU in fp32 too); the variants flip it, compiled keep it
    nchw, cl = torch.preserve_format, torch.channels_last
    assert formats == [cl, cl, nchw, nchw, cl, cl] and compiled == [{}, {}]
    for ratio in ("ceiling_nchw / ceiling", "default_nchw / default",
                  "ceiling_compile / ceiling"):
        assert ratio + " = " in result.stdout
    assert "ceiling_compile_over_ceiling" in summary
    assert "torch.compile failed here (RuntimeError: InvalidCxxCompiler" in result.stdout
    assert "default_compile not measured" in result.stdout


# -------------------------------------------------------------------------------------------------
# 3. unreadable images leave one copy of the decode cache, not two

def test_unreadable_images_do_not_make_a_second_copy_of_the_cache(tmp_path, monkeypatch):
    paths = write_images(str(tmp_path / "images"), 10, size=24)
    (tmp_path / "images" / "bad.png").write_bytes(b"not an image")
    paths = sorted(paths + [str(tmp_path / "images" / "bad.png")])
    real_open_memmap, made = np.lib.format.open_memmap, []

    def disk_for_one_copy(path, mode="r+", dtype=None, shape=None, **kwargs):
        if mode == "w+":
            made.append(shape)
            if len(made) > 1:  # the free-space check covered one copy of the cache
                raise OSError(28, "No space left on device")
        return real_open_memmap(path, mode=mode, dtype=dtype, shape=shape, **kwargs)

    monkeypatch.setattr(np.lib.format, "open_memmap", disk_for_one_copy)
    images, kept, bad = data.build_image_cache(paths, str(tmp_path / "cache"), workers=1,
                                               desc=False)
    assert len(made) == 1 and len(bad) == 1 and "bad.png" in bad[0]
    assert len(images) == len(kept) == 10 and images.shape == (10, 24, 24, 3)
    expected = np.stack([np.asarray(data.open_rgb(p)) for p in kept])
    batches = list(data.iterate_batches(images, np.arange(10)[::-1], 5, torch.device("cpu")))
    for rows, batch in batches:
        assert np.array_equal(batch.numpy(), expected[rows])
    again, kept_again, _ = data.build_image_cache(paths, str(tmp_path / "cache"), desc=False)
    assert kept_again == kept and np.array_equal(again[np.arange(10)], expected)
    assert len(made) == 1  # opened, not rebuilt


# -------------------------------------------------------------------------------------------------
# 6. several nodes on one shared file system: each cleans only its own temporary files

def test_temporary_files_name_their_host_and_only_this_hosts_dead_ones_are_removed(
        tmp_path, monkeypatch):
    final = tmp_path / "checkpoint_last.pth"

    def temp_name(host, pid):
        with monkeypatch.context() as patch:
            patch.setattr(runtime.platform, "node", lambda: host)
            patch.setattr(runtime.os, "getpid", lambda: pid)
            return runtime.temp_path_for(final)

    here = runtime.platform.node()
    # a run on node b, alive there; its pid means nothing on this host
    other_node = temp_name("node-b.cluster", 999_999_999)
    dead_here = temp_name(here, 999_999_998)  # a run on this host that was killed
    live_here = runtime.temp_path_for(final)  # this process, writing now
    assert "node-b" in os.path.basename(other_node) and other_node != dead_here
    for path in (other_node, dead_here, live_here):
        open(path, "w").close()
    assert runtime.remove_stale_temp_files(str(tmp_path)) == 1
    assert os.path.exists(other_node) and os.path.exists(live_here)
    assert not os.path.exists(dead_here)


# -------------------------------------------------------------------------------------------------
# 9. the default's data work on a side stream, one batch ahead of the model's step

class _FakeStreams:
    """torch.cuda's streams and events, and Tensor.record_stream, on the CPU: each call is logged
    in order, with the stream that was current."""

    def __init__(self, monkeypatch):
        self.log, self.current = [], "current"
        streams = self

        class Stream:
            def __init__(self, name):
                self.name = name

            def record_event(self):
                streams.log.append(("record event", self.name))
                return sum(entry[0] == "record event" for entry in streams.log)

            def wait_event(self, event):
                streams.log.append(("wait for event", self.name, event))

        @contextlib.contextmanager
        def stream(chosen):
            before, self.current = self.current, chosen.name
            try:
                yield
            finally:
                self.current = before

        monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: Stream("side"))
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream("current"))
        monkeypatch.setattr(torch.cuda, "stream", stream)
        monkeypatch.setattr(torch.Tensor, "record_stream",
                            lambda tensor, chosen: self.log.append(("keep for", chosen.name)))


def test_side_stream_makes_each_batch_one_step_ahead_with_the_same_views(monkeypatch):
    images = np.random.default_rng(0).integers(0, 256, (24, 40, 40, 3), dtype=np.uint8)
    order, pair = np.arange(24)[::-1], data.batch_augment_pair(32)

    def pairs(device, side_stream):
        return list(data.augmented_pairs(images, order, 8, device, pair,
                                         torch.Generator().manual_seed(3), side_stream))

    in_turn = pairs(torch.device("cpu"), True)  # the CPU fallback: made in turn
    assert len(in_turn) == 3
    streams = _FakeStreams(monkeypatch)
    real_batches = data.iterate_batches

    def cpu_batches(array, order, batch_size, device, **kwargs):
        for rows, batch in real_batches(array, order, batch_size, torch.device("cpu"), **kwargs):
            streams.log.append(("read batch", streams.current))
            yield rows, batch
    monkeypatch.setattr(data, "iterate_batches", cpu_batches)

    def logged(augment):
        def call(*args):
            streams.log.append(("augment", streams.current))
            return augment(*args)
        return call
    handed = []
    for x1, x2 in data.augmented_pairs(images, order, 8, CUDA, tuple(map(logged, pair)),
                                       torch.Generator().manual_seed(3)):
        streams.log.append(("step", len(handed)))
        handed.append((x1, x2))
    assert all(torch.equal(a, b) for ours, theirs in zip(handed, in_turn)
               for a, b in zip(ours, theirs))
    # batch n + 1 is read and augmented on the side stream before step n, and its event recorded
    # after both views (an event recorded earlier would let the step read half-made views); step
    # n waits (on the device) for batch n's event alone, before it gets the views (the views
    # above are equal either way: only this order shows the wait); its views are kept until the
    # current stream is done
    made = [("read batch", "side"), ("augment", "side"), ("augment", "side"),
            ("record event", "side")]
    assert streams.log == [
        *made, *made,
        ("wait for event", "current", 1), ("keep for", "current"), ("keep for", "current"),
        ("step", 0),
        *made,
        ("wait for event", "current", 2), ("keep for", "current"), ("keep for", "current"),
        ("step", 1),
        ("wait for event", "current", 3), ("keep for", "current"), ("keep for", "current"),
        ("step", 2)]


# -------------------------------------------------------------------------------------------------
# 10. CUDA graphs for the model step: on one CUDA process, with the fallback elsewhere

def test_cuda_graphs_compile_the_step_on_cuda_and_fall_back_elsewhere(monkeypatch):
    import train_simsiam
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: compiled.append(kwargs) or model)
    monkeypatch.setattr(train_simsiam, "CUDA_GRAPHS", True)
    notes = []
    model = torch.nn.Linear(2, 2)
    def run(device):
        return train_simsiam.Run(0, 1, device, None, "", torch.contiguous_format, notes.append)
    assert train_simsiam.for_training(model, run(CUDA)) == (model, True)
    assert compiled == [{"mode": "reduce-overhead"}] and notes == []
    assert train_simsiam.for_training(model, run(torch.device("cpu"))) == (model, False)
    assert compiled == [{"mode": "reduce-overhead"}] and "CUDA_GRAPHS" in notes[0]


@pytest.mark.slow
def test_the_gpu_paths_fall_back_to_the_same_training_on_the_cpu(tmp_path, tiny_images):
    weights = []
    for name, flags in (("plain", []), ("gpu_paths", ["--cuda_graphs=True",
                                                      "--overlap_data=True"])):
        result = run_in_process("train_simsiam.py", f"--data_dir={tiny_images}",
                                f"--output_dir={tmp_path / name}",
                                f"--cache_dir={tmp_path / 'cache'}", *TINY_PRETRAIN,
                                "--num_epochs=1", *flags)
        assert result.returncode == 0, result.stderr[-2000:]
        weights.append(load_checkpoint(str(tmp_path / name / "checkpoint_last.pth"))["model"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
