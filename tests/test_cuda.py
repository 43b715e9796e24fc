"""CUDA checks, run by scripts/gpu_check.sh on a GPU machine; skipped where there is no GPU (as in CI)."""
import pytest
import torch

import simsiam_data as data
from conftest import TINY_PRETRAIN, run_script, write_images
from runtime import amp_dtype_for, autocast_for, load_checkpoint
from simsiam_model import SimSiam, negative_cosine_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")


def test_batch_augment_gives_the_same_views_on_cuda_and_cpu():
    images = torch.randint(0, 256, (16, 64, 64, 3), dtype=torch.uint8)
    first, second = data.batch_augment_pair(48)
    on_cpu = second(images, torch.Generator().manual_seed(0))
    on_gpu = second(images.cuda(), torch.Generator().manual_seed(0)).cpu()
    assert (on_cpu - on_gpu).abs().max() < 1e-3


def test_bf16_channels_last_step_matches_fp32():
    torch.manual_seed(0)
    model = SimSiam("resnet18", dim=256, pred_dim=64).cuda()
    x1, x2 = torch.randn(32, 3, 64, 64, device="cuda"), torch.randn(32, 3, 64, 64, device="cuda")
    model.train()
    fp32 = negative_cosine_loss(*model(x1, x2)).item()
    model = model.to(memory_format=torch.channels_last)
    device = torch.device("cuda")
    with autocast_for(device, amp_dtype_for(device)):
        p1, p2, z1, z2 = model(x1.contiguous(memory_format=torch.channels_last),
                               x2.contiguous(memory_format=torch.channels_last))
        mixed = negative_cosine_loss(p1.float(), p2.float(), z1.float(), z2.float())
    mixed.backward()
    assert abs(mixed.item() - fp32) < 0.02
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_pretraining_runs_on_cuda_with_amp(tmp_path):
    images = tmp_path / "images"
    write_images(str(images), 32)
    result = run_script("train_simsiam.py", f"--data_dir={images}", f"--output_dir={tmp_path / 'out'}",
                        f"--cache_dir={tmp_path / 'cache'}", *TINY_PRETRAIN, "--num_epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "device: cuda" in result.stdout and "precision: torch.bfloat16" in result.stdout
    metrics = load_checkpoint(str(tmp_path / "out" / "pretrain_metrics.pth"))
    assert metrics["epochs"] == [1, 2] and all(abs(loss) <= 1 for loss in metrics["loss"])
