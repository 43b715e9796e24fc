"""CUDA checks, run by scripts/gpu_check.sh on a GPU machine;
skipped where there is no GPU (as in CI).

Each asserts what its name says on the real device: dtypes, memory formats, gradients against fp32,
the fp16 scaler, torch.compile and CUDA graphs, resuming, the evaluations, and a training
augmentation (made on a side stream, with its batch's rows) that never waits for the GPU.
"""
import numpy as np
import pytest
import torch

import simsiam_data as data
from conftest import TINY_PRETRAIN, run_script, write_images
from make_demo_data import write_eurosat_like
from runtime import amp_dtype_for, autocast_for, load_checkpoint
from simsiam_model import SimSiam, negative_cosine_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (scripts/gpu_check.sh)")
CUDA = torch.device("cuda")


def _pretrain(tmp_path, *extra):
    images = tmp_path / "images"
    if not images.exists():
        write_images(str(images), 32)
    return run_script("train_simsiam.py", f"--data_dir={images}",
                      f"--output_dir={tmp_path / 'out'}", f"--cache_dir={tmp_path / 'cache'}",
                      *TINY_PRETRAIN, "--device=cuda", *extra)


def test_batch_augment_gives_the_same_views_on_cuda_and_cpu():
    images = torch.randint(0, 256, (16, 64, 64, 3), dtype=torch.uint8)
    _, second = data.batch_augment_pair(48)
    on_cpu = second(images, torch.Generator().manual_seed(0))
    on_gpu = second(images.cuda(), torch.Generator().manual_seed(0)).cpu()
    assert (on_cpu - on_gpu).abs().max() < 1e-3


def test_augmentation_never_waits_for_the_gpu():
    images = torch.randint(0, 256, (32, 64, 64, 3), dtype=torch.uint8).cuda()
    first, second = data.batch_augment_pair(48)
    generator = torch.Generator().manual_seed(0)
    first(images, generator)  # warm-up: pinned buffers, kernels, cached constants
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call now raises
    try:
        for _ in range(3):
            first(images, generator)
            second(images, generator)
            data.eval_batch(images, 48)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_side_stream_views_equal_the_in_turn_views_and_never_wait_for_the_gpu():
    images = np.random.default_rng(0).integers(0, 256, (96, 64, 64, 3), dtype=np.uint8)
    pair = data.batch_augment_pair(48)

    def pairs(side_stream):
        return data.augmented_pairs(images, np.arange(96), 16, CUDA, pair,
                                    torch.Generator().manual_seed(0), side_stream)
    in_turn = [tuple(x.clone() for x in views) for views in pairs(False)]
    ahead = pairs(True)
    first = next(ahead)  # warm-up: pinned buffers, kernels, cached constants
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call now raises
    try:
        made = [first] + [views for views in ahead]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(made) == len(in_turn) == 6
    assert all(torch.equal(a, b) for ours, theirs in zip(made, in_turn)
               for a, b in zip(ours, theirs))


def test_batch_rows_reach_the_gpu_without_a_wait():
    labels = torch.arange(64, device=CUDA)
    batches = data.iterate_batches(np.zeros((64, 8, 8, 3), np.uint8), np.arange(64)[::-1], 16,
                                   CUDA, rows_on_device=True)
    rows, _ = next(batches)  # warm-up: pinned buffers
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        picked = [labels[rows]] + [labels[rows] for rows, _ in batches]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert rows.device.type == "cuda" and torch.cat(picked).sort().values.tolist() == list(
        range(64))


def test_auto_precision_matches_the_card():
    major, _ = torch.cuda.get_device_capability()
    dtype, reason = amp_dtype_for(CUDA, "auto")
    assert dtype == (torch.bfloat16 if major >= 8 else torch.float16), reason


def mixed_precision_gradients(device, amp):
    """A SimSiam step in fp32 and under `amp` on `device`. Returns the output dtype, the last
    layer1 activation, and per layer the relative gradient error of the mixed step against fp32
    beside that of an fp32 step whose inputs were only rounded to the reduced precision.

    That second error is the yardstick: at random initialisation on random inputs, BatchNorm makes
    these gradients small differences of large terms, so rounding the inputs alone moves conv1's
    gradient by about 30 % in bf16 (measured on a CPU). Mixed precision should add errors of that
    order, not replace the gradient."""
    torch.manual_seed(0)
    model = SimSiam("resnet18", dim=256, pred_dim=64).to(device, memory_format=torch.channels_last)
    inputs = [torch.randn(32, 3, 64, 64, device=device).contiguous(
        memory_format=torch.channels_last) for _ in range(2)]
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    activations = []
    model.backbone.layer1.register_forward_hook(
        lambda module, args, output: activations.append(output))

    def gradients(dtype, x1, x2):
        model.zero_grad(set_to_none=True)
        with autocast_for(device, dtype):
            p1, p2, z1, z2 = model(x1, x2)
            loss = negative_cosine_loss(p1.float(), p2.float(), z1.float(), z2.float())
        # scaled, as fp16 training does, so that small gradients do not flush to zero
        (loss * 1024).backward()
        return p1.dtype, {n: p.grad.float() / 1024 for n, p in model.named_parameters()
                          if p.grad is not None}

    # a CPU without native bf16 still computes it (emulated, slowly): the yardstick holds there too
    dtype = amp_dtype_for(device, amp)[0] if device.type == "cuda" else torch.bfloat16
    _, reference = gradients(None, *inputs)
    _, rounded = gradients(None, *[x.to(dtype).float() for x in inputs])
    output_dtype, mixed = gradients(dtype, *inputs)

    def error(grads, name):
        return ((grads[name] - reference[name]).norm() / reference[name].norm()).item()
    names = ("backbone.conv1.weight", "backbone.layer4.1.conv2.weight", "predictor.0.weight")
    return output_dtype, dtype, activations[-1], {
        name: (error(mixed, name), error(rounded, name)) for name in names}


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_outputs_channels_last_and_gradients_close_to_fp32(amp):
    output_dtype, dtype, activation, errors = mixed_precision_gradients(CUDA, amp)
    assert output_dtype == dtype  # the predictor really ran in reduced precision
    assert activation.dtype == dtype and activation.is_contiguous(
        memory_format=torch.channels_last)
    for name, (mixed, input_rounding) in errors.items():
        assert mixed < 3 * input_rounding, (name, mixed, input_rounding)


def test_forced_fp16_trains_with_the_grad_scaler(tmp_path):
    result = _pretrain(tmp_path, "--num_epochs=1", "--amp=fp16")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "precision: fp16" in result.stdout
    last = load_checkpoint(str(tmp_path / "out" / "checkpoint_last.pth"))
    # the scaler was enabled and stepped
    assert last["scaler"] and 0 < last["scaler"]["scale"] < float("inf")
    assert torch.isfinite(torch.tensor(last["metrics"]["loss"])).all()


def test_resume_across_precisions_on_cuda(tmp_path):
    for epochs, amp in ((1, "bf16"), (2, "fp16"), (3, "bf16"), (4, "off")):
        result = _pretrain(tmp_path, f"--num_epochs={epochs}", f"--amp={amp}")
        assert result.returncode == 0, (amp, result.stderr[-3000:])
        assert epochs == 1 or "resuming from" in result.stdout
    assert load_checkpoint(
        str(tmp_path / "out" / "pretrain_metrics.pth"))["epochs"] == [1, 2, 3, 4]


@pytest.mark.parametrize("compiled", ["--compile=True", "--cuda_graphs=True"])
def test_compiled_pretraining_step(tmp_path, compiled):
    result = _pretrain(tmp_path, "--num_epochs=1", compiled)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = load_checkpoint(str(tmp_path / "out" / "pretrain_metrics.pth"))
    assert metrics["compile_time_s"] > 0 and "torch.compile: the first step took" in result.stdout
    assert torch.isfinite(torch.tensor(metrics["loss"])).all()


def test_linear_evaluation_and_fine_tuning_on_cuda(tmp_path):
    eurosat = tmp_path / "EuroSAT"
    write_eurosat_like(str(eurosat), n_per_class=12, size=32)
    common = [f"--eurosat_dir={eurosat}", f"--output_dir={tmp_path / 'out'}",
              f"--cache_dir={tmp_path / 'cache'}", "--pretrained_path=random", "--arch=resnet18",
              "--image_size=32", "--device=cuda"]
    linear = run_script("Linear_evaluation.py", *common, "--num_epochs=3", "--batch_size=16")
    assert linear.returncode == 0, linear.stderr[-3000:]
    tuned = run_script("finetune_model.py", *common, "--num_epochs=2", "--batch_size=16")
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    for name in ("linear_eval_metrics_random.pth", "finetune_metrics_random.pth"):
        metrics = load_checkpoint(str(tmp_path / "out" / name))
        assert metrics["device"].startswith("cuda") and metrics["test_acc"] is not None


def test_the_memory_check_reads_the_card_and_lets_the_defaults_through(tmp_path):
    import runtime
    import train_simsiam  # its constants are the defaults: ResNet-50, 224 px, batch 32
    assert runtime.device_memory(CUDA) == torch.cuda.mem_get_info(CUDA)[1]
    train_simsiam.check_memory(CUDA)  # returns: the defaults fit any card of 8 GB or more
    typo = run_script("train_simsiam.py", f"--data_dir={tmp_path}", "--device=cuda",
                      "--proj_dim=204800")
    assert typo.returncode == 2 and "PROJ_DIM" in typo.stderr, typo.stderr[-2000:]
