"""Pre-training under torchrun: DDP on the CPU with the gloo backend and 2 processes."""
import os
import socket
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import ROOT, TINY_PRETRAIN, write_images
from runtime import load_checkpoint
from simsiam_model import SimSiam, backbone_from_checkpoint, negative_cosine_loss


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_ddp_step(rank, world_size, init_file, x1, x2, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    torch.manual_seed(0)
    model = SimSiam("resnet18", dim=64, pred_dim=16)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    # as the ranks split a batch
    share = slice(rank * len(x1) // world_size, (rank + 1) * len(x1) // world_size)
    loss = negative_cosine_loss(*ddp(x1[share], x2[share]))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss, op=dist.ReduceOp.AVG)
    if rank == 0:
        torch.save({"loss": mean_loss.item(),
                    "conv1": model.backbone.conv1.weight.detach().clone(),
                    "head": model.predictor[-1].weight.detach().clone()}, out_file)
    dist.destroy_process_group()


def test_one_distributed_step_equals_one_single_process_step(tmp_path):
    torch.manual_seed(1)
    x1, x2 = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    out_file = str(tmp_path / "ddp.pt")
    mp.spawn(_one_ddp_step, args=(2, str(tmp_path / "init"), x1, x2, out_file), nprocs=2,
             join=True)
    distributed = torch.load(out_file)

    # single process, same global batch; without SyncBatchNorm (GPU-only) each rank normalises its
    # own half, so the single-process reference does the same
    torch.manual_seed(0)
    model = SimSiam("resnet18", dim=64, pred_dim=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    losses = [negative_cosine_loss(*model(x1[i:i + 4], x2[i:i + 4])) for i in (0, 4)]
    loss = sum(losses) / 2
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert abs(distributed["loss"] - loss.item()) < 1e-5
    assert torch.allclose(distributed["conv1"], model.backbone.conv1.weight, atol=1e-6)
    assert torch.allclose(distributed["head"], model.predictor[-1].weight, atol=1e-6)


def test_torchrun_pretraining_finishes_and_resumes(tmp_path):
    images = tmp_path / "images"
    write_images(str(images), 24)

    def torchrun(epochs):
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                   f"--master_port={_free_port()}", os.path.join(ROOT, "train_simsiam.py"),
                   f"--data_dir={images}", f"--output_dir={tmp_path / 'out'}",
                   f"--cache_dir={tmp_path / 'cache'}", *TINY_PRETRAIN, "--batch_size=4",
                   f"--num_epochs={epochs}"]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)

    result = torchrun(2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes: 2" in result.stdout and "global batch 8" in result.stdout
    assert result.stdout.count("epoch 2/2 loss") == 1  # only rank 0 prints and writes
    metrics = load_checkpoint(str(tmp_path / "out" / "pretrain_metrics.pth"))
    assert (metrics["world_size"] == 2 and metrics["epochs"] == [1, 2]
            and metrics["global_step"] == 2 * (24 // 8))
    backbone, _, _ = backbone_from_checkpoint(
        str(tmp_path / "out" / "simsiam_resnet18_epoch_2.pth"))
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    result = torchrun(3)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout and "epoch 3/3 loss" in result.stdout
    assert load_checkpoint(str(tmp_path / "out" / "pretrain_metrics.pth"))["epochs"] == [1, 2, 3]
