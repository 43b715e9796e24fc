"""Pre-training under torchrun: DDP on the CPU with the gloo backend and 2 processes."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import ROOT, TINY_PRETRAIN, children_of, write_images
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


def _workers_of(launcher):
    """{RANK: pid} of the processes that torchrun (pid `launcher`) started."""
    found = {}
    for pid in children_of(launcher):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
        except OSError:
            continue
        if b"RANK" in env:
            found[int(env[b"RANK"])] = pid
    return found


def test_a_worker_killed_under_torchrun_max_restarts_is_restarted_and_the_run_finishes(tmp_path):
    """Issue 31: torchrun keeps one store for every start of the workers, so a restarted worker
    read the address its peer published before the kill and died in "Connection refused".
    The restarted rank 0 is held back 3 s (SIMSIAM_TEST_RANK0_DELAY), so rank 1 arrives first."""
    images = tmp_path / "images"
    write_images(str(images), 24)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--max-restarts=1", f"--master_port={_free_port()}",
               os.path.join(ROOT, "train_simsiam.py"), f"--data_dir={images}",
               f"--output_dir={tmp_path / 'out'}", f"--cache_dir={tmp_path / 'cache'}",
               *TINY_PRETRAIN, "--batch_size=4", "--num_epochs=3"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1",
                                        SIMSIAM_TEST_RANK0_DELAY="3"))
    output = []
    try:
        for line in process.stdout:
            output.append(line)
            if line.startswith("epoch 1/3 loss"):  # rank 0 has saved epoch 1; rank 1 is in 2
                os.kill(_workers_of(process.pid)[1], signal.SIGKILL)
        process.wait(timeout=300)
    finally:
        process.kill()
    printed = "".join(output)
    assert process.returncode == 0, printed[-3000:]
    assert "resuming from" in printed and "Connection refused" not in printed, printed[-3000:]
    metrics = load_checkpoint(str(tmp_path / "out" / "pretrain_metrics.pth"))
    # each epoch once, and as many steps as a run that was never killed
    assert metrics["epochs"] == [1, 2, 3] and metrics["global_step"] == 3 * (24 // 8)


def test_restarted_processes_agree_on_a_start_of_their_own_and_wait_a_bounded_time(
        monkeypatch, capsys):
    """What the process group of a restart is made under: a name that the store's keys of the
    start that died (here, of both ranks) cannot pass for; a peer that never comes is named."""
    sys.path.insert(0, ROOT)
    import train_simsiam
    port = _free_port()
    server = dist.TCPStore("127.0.0.1", port, 2, is_master=True, wait_for_workers=False)
    for key, value in (("hello/1", "old"), ("welcome/1", "old dead"), ("joined/1", "dead")):
        server.set(f"simsiam/{key}", value)
    agreed = {}

    def join(rank, delay):
        time.sleep(delay)
        store = dist.TCPStore("127.0.0.1", port, 2, is_master=False)
        agreed[rank] = train_simsiam.agree_on_start(store, rank, 2, "here")

    threads = [threading.Thread(target=join, args=(rank, delay))
               for rank, delay in ((0, 1.0), (1, 0.0))]  # rank 1 first, as after a restart
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert agreed[0] == agreed[1] and agreed[0] != "dead", agreed
    monkeypatch.setattr(train_simsiam, "PEER_TIMEOUT", 1)
    with pytest.raises(SystemExit):  # rank 0 never comes
        train_simsiam.agree_on_start(dist.TCPStore("127.0.0.1", port, 2, is_master=False), 1, 2,
                                     "at 127.0.0.1")
    assert "rank 1 waited 1 s (PEER_TIMEOUT) for rank 0 to join" in capsys.readouterr().err
