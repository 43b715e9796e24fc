"""The CUDA and torchrun paths, checked on the CPU wherever the logic allows: a faked compute
capability, gloo instead of NCCL, counted calls instead of a profiler. What only a GPU can show is
in tests/test_cuda.py."""
import json
import os
import re
import shutil
import sys
import threading
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.overrides import TorchFunctionMode

import runtime
import simsiam_data as data
from conftest import ROOT, TINY_PRETRAIN, run_in_process, write_images
from runtime import DataError, amp_dtype_for, load_checkpoint, restore_grad_scaler
from test_evaluation import make_eurosat

CUDA = torch.device("cuda")  # a device object only: nothing here touches a GPU


# -------------------------------------------------------------------------------------------------
# 1. precision per device

@pytest.mark.parametrize("capability, expected", [((7, 5), torch.float16), ((7, 0), torch.float16),
                                                  ((8, 0), torch.bfloat16),
                                                  ((9, 0), torch.bfloat16)])
def test_auto_precision_follows_the_cards_native_bf16(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    # says yes on Turing too
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    dtype, reason = amp_dtype_for(CUDA, "auto")
    assert dtype == expected and f"{capability[0]}.{capability[1]}" in reason
    if expected == torch.float16:
        assert "grad scaler" in reason


def test_forced_and_disabled_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert amp_dtype_for(CUDA, "fp16")[0] == torch.float16
    dtype, reason = amp_dtype_for(CUDA, "bf16")
    assert dtype == torch.bfloat16 and "emulated" in reason
    assert amp_dtype_for(CUDA, "off")[0] is None
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert amp_dtype_for(cpu, "bf16")[0] == torch.bfloat16 and amp_dtype_for(cpu, "off")[0] is None
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    dtype, reason = amp_dtype_for(cpu, "bf16")
    assert dtype is None and "no native bf16" in reason
    with pytest.raises(SystemExit) as stopped:
        amp_dtype_for(cpu, "fp16")
    assert stopped.value.code == 2


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_a_cpu_follows_its_native_bf16(monkeypatch, native):
    """As on a GPU: bf16 where the CPU computes it (AVX512-BF16 or AMX), fp32 where bf16 would be
    emulated; MPS stays in fp32."""
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    dtype, reason = amp_dtype_for(torch.device("cpu"), "auto")
    assert dtype == (torch.bfloat16 if native else None)
    assert ("computes bf16 natively" if native else "no native bf16") in reason
    assert amp_dtype_for(torch.device("mps"), "auto")[0] is None


@pytest.mark.slow
@pytest.mark.parametrize("native, line", [
    (True, "precision: bf16 (this CPU computes bf16 natively (AVX512-BF16 or AMX))"),
    (False, "precision: fp32 (this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 is "
            "slower than fp32)")])
def test_pretraining_says_its_precision_and_why(tmp_path, tiny_images, monkeypatch, native, line):
    """A default run (AMP = "auto") on a CPU with and without native bf16: the start-up line names
    the precision and the reason, and the metrics record it."""
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    result = run_in_process("train_simsiam.py", f"--data_dir={tiny_images}",
                            f"--output_dir={tmp_path / 'out'}",
                            f"--cache_dir={tmp_path / 'cache'}", *TINY_PRETRAIN, "--num_epochs=1",
                            "--amp=auto")
    assert result.returncode == 0, result.stderr[-2000:]
    assert line in result.stdout
    metrics = load_checkpoint(str(tmp_path / "out" / "pretrain_metrics.pth"))
    assert metrics["precision"] == ("bf16" if native else "fp32")
    assert np.isfinite(metrics["loss"][0])


def test_fp16_on_a_cpu_is_a_setting_error():
    result = run_in_process("train_simsiam.py", "--data_dir=nowhere", "--amp=fp16",
                            *TINY_PRETRAIN[:1])
    assert result.returncode == 2 and "needs a CUDA GPU" in result.stderr


# -------------------------------------------------------------------------------------------------
# 2. resume across precisions

def test_grad_scaler_state_restores_in_every_direction():
    # what bf16 / fp32 runs save
    saved_by_bf16 = torch.amp.GradScaler("cpu", enabled=False).state_dict()
    assert saved_by_bf16 == {}
    fp16 = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0**16)
    with pytest.raises(RuntimeError):
        fp16.load_state_dict(saved_by_bf16)  # what resuming did before: the enabled scaler refuses
    assert restore_grad_scaler(fp16, saved_by_bf16) == "fresh" and fp16.get_scale() == 2.0**16
    written = torch.amp.GradScaler("cpu", enabled=True, init_scale=128.0).state_dict()
    assert restore_grad_scaler(fp16, written) == "restored" and fp16.get_scale() == 128.0
    assert restore_grad_scaler(torch.amp.GradScaler("cpu", enabled=False), written) == "unused"


# -------------------------------------------------------------------------------------------------
# 3. the augmentation under autocast, and 8. without host synchronisation

def test_batch_augment_is_the_same_under_autocast():
    images = torch.randint(0, 256, (8, 40, 40, 3), dtype=torch.uint8)
    augment = data.BatchAugment(32, solarize_p=0.2)
    plain = augment(images, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = augment(images, torch.Generator().manual_seed(0))
    assert under_autocast.dtype == torch.float32 and torch.equal(plain, under_autocast)


class _CountCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


# calls that make the host wait for the device (or copy to or from it)
# when the tensors live on a GPU
SYNCHRONISING = {"item", "tolist", "nonzero", "__bool__", "__int__", "__float__", "__index__",
                 "cpu", "numpy", "to", "cuda", "copy_", "any", "all", "masked_select", "unique",
                 "argwhere", "nonzero_static"}


def test_augmentation_step_has_no_synchronising_call():
    images = torch.randint(0, 256, (16, 48, 48, 3), dtype=torch.uint8)
    for augment in (*data.batch_augment_pair(32),
                    data.BatchAugment(32, crop_scale=(0.8, 1), vflip_p=0.5, jitter_p=0, gray_p=0,
                                      blur_p=0)):
        # on the CPU, by design
        params = augment.sample_params(16, 48, 48, torch.Generator().manual_seed(0))
        assert all(v.device.type == "cpu" for v in params.values())
        counter = _CountCalls()
        with counter:
            augment(images, torch.Generator().manual_seed(0))
        copies = [name for name in counter.names if name in ("to", "cuda", "copy_")]
        assert copies == ["to"], copies  # the packed parameters, once
        packed = torch.rand(16, len(augment.COLUMNS))
        counter = _CountCalls()
        with counter:
            augment.apply(images, packed)  # everything that runs on the device
        assert not SYNCHRONISING & set(counter.names), SYNCHRONISING & set(counter.names)
    counter = _CountCalls()
    with counter:
        data.eval_batch(images, 32)
        data.eval_batch(images, 32)
    # normalisation constants made once
    assert "tensor" not in counter.names[len(counter.names) // 2:]


class _StepCopies(TorchFunctionMode):
    """Records the copies (to, cuda, copy_) made in the body of every loop over
    data.iterate_batches, with whether each was asked to be non-blocking."""

    def __init__(self):
        super().__init__()
        self.active, self.steps, self.copies = False, 0, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if self.active and name in ("to", "cuda", "copy_"):
            self.copies.append((name, bool((kwargs or {}).get("non_blocking"))))
        return func(*args, **(kwargs or {}))

    def counting(self, iterate_batches):
        def batches(*args, **kwargs):
            for item in iterate_batches(*args, **kwargs):
                self.active, self.steps = True, self.steps + 1
                try:
                    yield item  # the caller's loop body runs now
                finally:
                    self.active = False
        return batches


def test_fine_tuning_steps_copy_nothing_to_the_device_that_blocks(tmp_path, monkeypatch):
    """From pageable memory a copy to the GPU waits for it: the labels of each batch arrive with
    the images, pinned and non-blocking, instead of from a copy in the step."""
    make_eurosat(str(tmp_path / "EuroSAT"))
    counter = _StepCopies()
    monkeypatch.setattr(data, "iterate_batches", counter.counting(data.iterate_batches))
    with counter:
        result = run_in_process("finetune_model.py", f"--eurosat_dir={tmp_path / 'EuroSAT'}",
                                f"--output_dir={tmp_path / 'out'}",
                                f"--cache_dir={tmp_path / 'cache'}", "--pretrained_path=random",
                                "--arch=resnet18", "--image_size=32", "--num_epochs=1",
                                "--batch_size=8", "--amp=off")
    assert result.returncode == 0, result.stderr[-2000:]
    blocking = [name for name, non_blocking in counter.copies if not non_blocking]
    assert counter.steps >= 4 and blocking == [], blocking


# -------------------------------------------------------------------------------------------------
# 4. the prefetch thread

class _FailingArray:
    """Reads like a uint8 NHWC array until the `fail_at`-th read, which raises `error`."""

    def __init__(self, error, fail_at=2):
        self.error, self.fail_at, self.reads = error, fail_at, 0
        self.shape = (64, 8, 8, 3)

    def __len__(self):
        return 64

    def __getitem__(self, rows):
        self.reads += 1
        if self.reads >= self.fail_at:
            raise self.error
        return np.zeros((len(rows), 8, 8, 3), np.uint8)


def _consume_within(seconds, iterable):
    outcome = {}

    def consume():
        try:
            outcome["batches"] = sum(1 for _ in iterable)
        except BaseException as error:  # noqa: B036 - the outcome under test
            outcome["error"] = error

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), (
        "the consumer is still waiting: the reader's error never reached it")
    return outcome


def test_a_read_error_in_the_prefetch_thread_reaches_the_training_loop():
    cpu = torch.device("cpu")
    outcome = _consume_within(10, data.iterate_batches(
        _FailingArray(OSError(5, "Input/output error")), np.arange(64), 8, cpu))
    assert (isinstance(outcome.get("error"), DataError)
            and "Input/output error" in str(outcome["error"]))
    outcome = _consume_within(10, data.iterate_batches(_FailingArray(RuntimeError("pin failed")),
                                                       np.arange(64), 8, cpu))
    assert isinstance(outcome.get("error"), RuntimeError) and "pin failed" in str(outcome["error"])


def test_a_consumer_that_stops_early_ends_the_reader():
    before = threading.active_count()
    batches = data.iterate_batches(np.zeros((64, 8, 8, 3), np.uint8), np.arange(64), 4,
                                   torch.device("cpu"), prefetch=1)
    next(batches)
    batches.close()
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before


# -------------------------------------------------------------------------------------------------
# 5. the decoded-once cache at scale: parallel, one builder, disk checked, before the process group

@pytest.mark.slow
def test_parallel_decoding_gives_the_same_cache(tmp_path):
    paths = write_images(str(tmp_path / "images"), 40, size=24)
    (tmp_path / "images" / "bad.png").write_bytes(b"not an image")
    paths = sorted(paths + [str(tmp_path / "images" / "bad.png")])
    one, kept_one, bad_one = data.build_image_cache(paths, str(tmp_path / "serial"), workers=1,
                                                    desc=False)
    two, kept_two, bad_two = data.build_image_cache(paths, str(tmp_path / "parallel"), workers=2,
                                                    desc=False)
    assert np.array_equal(one, two) and kept_one == kept_two and len(kept_two) == 40
    assert len(bad_one) == len(bad_two) == 1 and "bad.png" in bad_two[0]
    assert not [n for n in os.listdir(tmp_path / "parallel") if ".tmp" in n]


@pytest.mark.slow
def test_a_second_builder_waits_for_the_first(tmp_path):
    paths = write_images(str(tmp_path / "images"), 30, size=24)
    script = ("import sys; sys.path.insert(0, %r); import simsiam_data as d\n"
              "a, kept, bad = d.build_image_cache(%r, %r, workers=1, desc=False)\n"
              "print('rows', len(a))" % (ROOT, paths, str(tmp_path / "cache")))
    import subprocess
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = [r.communicate(timeout=120)[0] for r in runs]
    assert all(r.returncode == 0 and "rows 30" in out for r, out in zip(runs, outputs)), outputs
    # one built it, the others opened it
    assert sum("decoding 30 images" in out for out in outputs) == 1
    assert len([n for n in os.listdir(tmp_path / "cache") if n.endswith(".npy")]) == 1


def test_cache_checks_free_space_and_removes_dead_runs_temp_files(tmp_path, monkeypatch):
    paths = write_images(str(tmp_path / "images"), 6, size=24)
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / ".images_0123456789abcdef.npy.tmp999999999"  # a pid that cannot be alive
    stale.write_bytes(b"x" * 1000)
    real_usage = data.shutil.disk_usage
    monkeypatch.setattr(data.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=100))
    with pytest.raises(DataError, match=r"needs 0\.00 GiB.*--cache_dir"):
        data.build_image_cache(paths, str(cache), workers=1, desc=False)
    monkeypatch.setattr(data.shutil, "disk_usage", real_usage)
    data.build_image_cache(paths, str(cache), workers=1, desc=False)
    assert not stale.exists()


def test_the_process_group_starts_after_the_cache_is_complete(tmp_path, monkeypatch, tiny_images):
    """Under torchrun the caches (the images, and the kNN monitor's two splits) are decoded before
    the process group is joined (its store first): a long decode cannot time out a barrier."""
    make_eurosat(str(tmp_path / "EuroSAT"))
    seen = {}

    def store(*args, **kwargs):
        seen["cache files"] = sorted(os.listdir(tmp_path / "cache"))
        raise KeyboardInterrupt  # stop here: the rest needs real peers

    monkeypatch.setattr(dist, "TCPStore", store)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # torchrun sets all five
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(KeyboardInterrupt):
        run_in_process("train_simsiam.py", f"--data_dir={tiny_images}",
                       f"--output_dir={tmp_path}/out", f"--cache_dir={tmp_path}/cache",
                       f"--knn_data_dir={tmp_path / 'EuroSAT'}", *TINY_PRETRAIN)
    assert (sum(n.endswith(".npy") for n in seen["cache files"]) == 3
            and sum(n.endswith(".json") for n in seen["cache files"]) == 3), seen


# -------------------------------------------------------------------------------------------------
# 6. ranks agree (gloo, two processes on the CPU)

def _agreement(rank, world_size, init_file, out_file, copies):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    sys.path.insert(0, ROOT)
    import train_simsiam
    result = {}
    # (a) one rank's whole batch unreadable:
    # every rank skips the step, none waits in the all-reduce
    result["one empty"] = train_simsiam.batch_usable_on_every_rank(
        None if rank == 0 else torch.ones(2), torch.device("cpu"))
    result["none empty"] = train_simsiam.batch_usable_on_every_rank(
        torch.ones(2), torch.device("cpu"))
    # (b) ranks that see different files stop, all of them, with the same message
    try:
        train_simsiam.ranks_agree(rank == 0, "whether outputs/checkpoint_last.pth exists")
        result["stopped"] = None
    except SystemExit as stop:
        result["stopped"] = stop.code
    try:
        train_simsiam.ranks_agree(("same", 3), "the epoch")
        result["agreed"] = True
    except SystemExit:
        result["agreed"] = False
    # (c) the reference pipeline's DataLoader workers draw this rank's augmentations (worker k of
    # every rank drew the same ones): on copies of one image the ranks' first views differ
    train_simsiam.PIPELINE, train_simsiam.NUM_WORKERS = "reference", 1
    train_simsiam.BATCH_SIZE, train_simsiam.IMAGE_SIZE = 4, 32
    pretraining = train_simsiam.Pretraining(None, copies, [], 1, None, None)
    run = train_simsiam.Run(rank, world_size, torch.device("cpu"), None, "", None, print)
    batches = train_simsiam.epoch_batches(0, pretraining, run, None)
    result["first views"] = next(batches)[0][:, :, :4, :4].flatten().tolist()
    batches.close()
    with open(f"{out_file}.{rank}", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_on_skipped_batches_and_on_resuming(tmp_path, capfd):
    out_file = str(tmp_path / "result")
    first = write_images(str(tmp_path / "one"), 1)[0]
    copies = [shutil.copy(first, tmp_path / f"copy_{i}.png") for i in range(8)]
    mp.spawn(_agreement, args=(2, str(tmp_path / "init"), out_file, [str(c) for c in copies]),
             nprocs=2, join=True)
    results = [json.load(open(f"{out_file}.{rank}")) for rank in range(2)]
    views = [result.pop("first views") for result in results]
    assert len(views[0]) == 4 * 3 * 4 * 4 and views[0] != views[1], "the ranks drew one sequence"
    for result in results:
        assert result == {"one empty": False, "none empty": True, "stopped": 1, "agreed": True}
    err = capfd.readouterr().err
    assert "disagree on whether outputs/checkpoint_last.pth exists" in err and "shares" in err


# -------------------------------------------------------------------------------------------------
# 7. the torch floor, 9. cuDNN / TF32, 10. torch.compile time

def test_requirements_admit_no_torch_without_torch_amp_grad_scaler():
    text = open(os.path.join(ROOT, "requirements.txt")).read()
    floor = re.search(r"^torch>=(\d+)\.(\d+)", text, flags=re.M)
    # torch.amp.GradScaler("cuda")
    assert floor and (int(floor.group(1)), int(floor.group(2))) >= (2, 3)
    vision = re.search(r"^torchvision>=0\.(\d+)", text, flags=re.M)
    assert vision and int(vision.group(1)) >= 18  # the torchvision of torch 2.3


def _math_flags():
    return (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32)


@pytest.fixture
def math_flags():
    """CUDA's math settings as they were, restored after the test."""
    flags = _math_flags()
    yield
    (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
     torch.backends.cudnn.allow_tf32) = flags


def test_cudnn_autotuning_and_tf32_only_on_cuda(math_flags):
    torch.backends.cudnn.benchmark = torch.backends.cuda.matmul.allow_tf32 = False
    assert (runtime.speed_up_cuda(torch.device("cpu")) == ""
            and not torch.backends.cudnn.benchmark)
    said = runtime.speed_up_cuda(CUDA)
    assert _math_flags() == (True, True, True)
    assert said == "cuDNN benchmark on, TF32 matmul on and convolutions on"
    # the probe's: exact fp32
    said = runtime.speed_up_cuda(CUDA, tf32=False)
    assert _math_flags() == (True, False, False) and "TF32 matmul off and convolutions off" in said


def test_describing_the_device_only_describes(monkeypatch, math_flags):
    monkeypatch.setattr(runtime, "describe_device", lambda device: f"{device.type} (a card)")
    for flags in ((False, False, False), (True, True, True), (True, False, True)):
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = flags
        line = runtime.device_and_precision(CUDA, torch.bfloat16, "native")
        assert _math_flags() == flags  # no side effect
        on = ["on" if flag else "off" for flag in flags]
        assert line == (f"cuda (a card), precision: bf16 (native), cuDNN benchmark {on[0]}, TF32 "
                        f"matmul {on[1]} and convolutions {on[2]}")
    assert runtime.device_and_precision(torch.device("cpu"), None, "r") == "cpu (a card), " \
        "precision: fp32 (r)"


class _Switched(Exception):
    """Ends a script right after it set CUDA's math settings: what it asked is all the test
    needs."""


@pytest.mark.parametrize("script, tf32", [("train_simsiam.py", True), ("finetune_model.py", True),
                                          ("Linear_evaluation.py", False)])
def test_each_script_sets_cudas_math_itself_the_probe_without_tf32(tmp_path, monkeypatch,
                                                                   script, tf32):
    asked = []

    def switch(device, tf32=True):
        asked.append((device.type, tf32))
        raise _Switched
    monkeypatch.setattr(runtime, "speed_up_cuda", switch)
    with pytest.raises(_Switched):
        run_in_process(script, f"--output_dir={tmp_path}", "--device=cpu")
    assert asked == [("cpu", tf32)]


@pytest.mark.slow
def test_compile_time_is_reported_apart_from_the_first_epochs_rate(tmp_path, monkeypatch,
                                                                   tiny_images):
    # stands in for torch.compile: 3 s of "compilation" on the first call
    def slow_compile(model, **kwargs):
        calls = []

        def compiled(*args):
            if not calls:
                time.sleep(3.0)
            calls.append(1)
            return model(*args)
        return compiled

    monkeypatch.setattr(torch, "compile", slow_compile)
    result = run_in_process("train_simsiam.py", f"--data_dir={tiny_images}",
                            f"--output_dir={tmp_path}/out", f"--cache_dir={tmp_path}/cache",
                            *TINY_PRETRAIN, "--num_epochs=1", "--compile=True")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = load_checkpoint(str(tmp_path / "out" / "pretrain_metrics.pth"))
    assert metrics["compile_time_s"] >= 3.0
    epoch_time, rate = metrics["epoch_time_s"][0], metrics["pairs_per_s"][0]
    # the rate leaves the compile step out
    assert epoch_time >= 3.0 and rate > 2 * (24 / epoch_time)
    assert "torch.compile: the first step took" in result.stdout


# -------------------------------------------------------------------------------------------------
# 12. the throughput benchmark keeps what it measured

@pytest.mark.slow
def test_bench_pretrain_writes_each_pipeline_as_it_is_measured(tmp_path):
    args = ["--arch=resnet18", "--image_size=32", "--batch_size=4", "--steps=1",
            "--warmup_steps=1", "--num_images=8", "--num_workers=0", "--amp=off",
            f"--output_json={tmp_path / 'bench.json'}"]
    result = run_in_process("scripts/bench_pretrain.py", *args, f"--cache_dir={tmp_path / 'cache'}")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.load(open(tmp_path / "bench.json"))
    assert list(summary["results"]) == ["ceiling", "reference", "reference_amp", "default",
                                        "default_data_only"]
    assert "reference_amp_over_reference" in summary and "| reference_amp |" in result.stdout
    # the default pipeline cannot make its cache here: a late failure
    (tmp_path / "a_file").write_text("")
    result = run_in_process("scripts/bench_pretrain.py", *args,
                            f"--cache_dir={tmp_path / 'a_file'}")
    assert result.returncode == 1  # and no traceback: run_in_process checks
    kept = json.load(open(tmp_path / "bench.json"))["results"]
    assert list(kept) == ["ceiling", "reference", "reference_amp"]


def test_cpu_bf16_gradients_stay_within_a_few_input_roundings_of_fp32():
    """The CUDA test's gradient yardstick, on the CPU's bf16: it must pass here, and fail when the
    gradients are not the mixed-precision ones."""
    from test_cuda import mixed_precision_gradients
    output_dtype, dtype, activation, errors = mixed_precision_gradients(torch.device("cpu"),
                                                                        "bf16")
    assert output_dtype == dtype == torch.bfloat16 and activation.dtype == torch.bfloat16
    for name, (mixed, input_rounding) in errors.items():
        assert 0 < mixed < 3 * input_rounding, (name, mixed, input_rounding)
        # a gradient with no relation to fp32's (error ~1.4 for random directions) would fail
        assert 3 * input_rounding < 1.4, (name, input_rounding)
