"""SimSiam pre-training on a folder of unlabeled RGB images (default: the SSL4EO-S12 PNGs in barlow_data/train).

    python train_simsiam.py                              # the write-up's recipe: ResNet-50, 224 px, batch 32, 90 epochs
    python train_simsiam.py --arch=resnet18 --image_size=64 --batch_size=128
    torchrun --nproc_per_node=4 train_simsiam.py         # several GPUs: DDP + SyncBatchNorm, lr scaled by global batch

Writes into OUTPUT_DIR: `pretrain_metrics.pth` after every epoch, `checkpoint_last.pth` after every epoch (rerunning
the same command resumes from it), and `simsiam_<arch>_epoch_X.pth` every SAVE_EVERY epochs and at the end. All
writes are atomic. Prints one line per epoch:
    epoch 3/90 loss -0.8123 lr 0.01250 z_std 0.0208 (healthy 0.0221) 61.2 pairs/s 334 s
Measured on our 2-core CPU machine: ResNet-18 at 64 px, batch 128, about 62 pairs/s; ResNet-50 at 224 px, batch 32,
1.7 pairs/s (a CPU is for checking that things run; pre-train on a GPU).
"""
import math
import os
import sys
import time

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

import simsiam_data as data
from runtime import (CheckpointError, amp_dtype_for, atomic_save, autocast_for, channels_last_for, configure,
                     describe_device, library_versions, load_checkpoint, pick_device, seed_everything)
from simsiam_model import PRETRAIN_KIND, SimSiam, knn_predict, negative_cosine_loss, normalized_std, unwrap

# ----------------------------------------------------------------------------------------------------------------
DATA_DIR = "barlow_data/train"  # unlabeled images (png/jpg/tif, searched recursively)
FILE_LIST = ""  # optional: only these images of DATA_DIR (a CSV with a Filename column, or one path per line)
OUTPUT_DIR = "outputs"  # checkpoints and pretrain_metrics.pth land here
CACHE_DIR = "cache"  # decoded-once image arrays (fast pipeline); safe to delete
ARCH = "resnet50"  # resnet18 | resnet34 | resnet50
IN_CHANNELS = 3  # input bands; 3 for the RGB PNGs
SMALL_STEM = False  # 3x3 stride-1 first conv, no max-pool: for 32-64 px inputs
STEM_STRIDE = 1  # stride of the small stem's conv: 2 reads a 64 px input at the cost of a 32 px one
IMAGE_SIZE = 224  # crop size in pixels fed to the network
PROJ_DIM = 2048  # projector width and output dim (paper: 2048)
PRED_DIM = 512  # predictor bottleneck (paper: 512)
BATCH_SIZE = 32  # pairs per step per process; 32 fits ResNet-50 at 224 px in 8 GB
NUM_EPOCHS = 90  # passes over the data
BASE_LR = 0.05  # per 256 pairs: lr = BASE_LR * global batch / 256 (paper)
MOMENTUM = 0.9  # SGD momentum
WEIGHT_DECAY = 1e-4  # SGD weight decay
WARMUP_EPOCHS = 10  # linear warm-up epochs, then half-cosine to 0, updated every step (write-up)
FIX_PRED_LR = True  # keep the predictor's lr constant (paper: +0.4 points); False decays it too
CROP_SCALE_MIN = 0.2  # RandomResizedCrop lower area bound (paper: 0.2)
SOLARIZE = True  # write-up: solarise view 2 with p=0.2; False = the paper's symmetric recipe
JITTER_STRENGTH = 1.0  # scales ColorJitter(0.4, 0.4, 0.4, 0.1), applied with p=0.8; 1.0 = write-up and paper
GRAY_P = 0.2  # probability of random grayscale (write-up and paper: 0.2)
BLUR_P = 0.5  # probability of Gaussian blur, sigma 0.1-2 (write-up and paper: 0.5)
PIPELINE = "fast"  # fast: decode once + batched augmentation on the device | reference: PIL per sample in workers
NUM_WORKERS = 4  # DataLoader workers (reference pipeline only)
AMP = True  # mixed precision on CUDA (bf16 where supported, else fp16 with a grad scaler)
CHANNELS_LAST = True  # channels_last memory format on CUDA and with CPU_BF16 (faster convolutions)
CPU_BF16 = False  # bf16 autocast on a CPU with native bf16 (AVX512-BF16/AMX): 1.8x faster on ours; fp32 if absent
COMPILE = False  # torch.compile the model (CUDA; slower start, faster steps)
SYNC_BN = True  # SyncBatchNorm when running under torchrun with several processes (paper)
SAVE_EVERY = 10  # write simsiam_<arch>_epoch_X.pth every this many epochs (and at the end)
RESUME = True  # continue from OUTPUT_DIR/checkpoint_last.pth when it exists
KNN_DATA_DIR = ""  # labelled EuroSAT folder (train.csv, validation.csv) for a kNN monitor; "" = off
KNN_EVERY = 5  # epochs between kNN monitor runs (when KNN_DATA_DIR is set)
KNN_K = 200  # neighbours for the kNN monitor (paper: 200, cosine, temperature 0.2)
SEED = 0  # seeds data order, augmentation and initialisation
DEVICE = "auto"  # auto | cuda | cpu | mps
# ----------------------------------------------------------------------------------------------------------------

# settings that change the model's shape or wiring: a checkpoint_last.pth written with others cannot be resumed
SHAPE_KEYS = ("ARCH", "IN_CHANNELS", "SMALL_STEM", "STEM_STRIDE", "PROJ_DIM", "PRED_DIM")


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def lr_at(step, steps_per_epoch, base_lr):
    """Linear warm-up over WARMUP_EPOCHS, then half-cosine to 0, per step."""
    warmup = WARMUP_EPOCHS * steps_per_epoch
    total = NUM_EPOCHS * steps_per_epoch
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def knn_monitor(model, knn_data, device, amp_dtype):
    """Top-1 of a weighted kNN on validation.csv with train.csv as the bank (l2-normalised backbone features)."""
    backbone = unwrap(model).backbone
    was_training = backbone.training
    backbone.eval()
    features = {}
    with torch.no_grad():
        for split, (array, _) in knn_data.items():
            chunks = []
            for batch in data.iterate_batches(array, np.arange(len(array)), 256, device, drop_last=False):
                x = data.eval_batch(batch, IMAGE_SIZE)
                with autocast_for(device, amp_dtype):
                    chunks.append(backbone(x).float())
            features[split] = torch.cat(chunks)
    backbone.train(was_training)
    train_labels = knn_data["train"][1].to(device)
    predicted = knn_predict(features["train"], train_labels, features["validation"], int(train_labels.max()) + 1,
                            k=KNN_K, temperature=0.2)
    return (predicted.cpu() == knn_data["validation"][1]).float().mean().item() * 100


def load_knn_data(log):
    knn_data = {}
    for split in ("train", "validation"):
        paths, labels, _ = data.read_eurosat_split(KNN_DATA_DIR, os.path.join(KNN_DATA_DIR, f"{split}.csv"),
                                                   os.path.join(KNN_DATA_DIR, "label_map.json"))
        array, kept, bad = data.build_image_cache(paths, CACHE_DIR, log=log)
        if bad:
            fail(f"{len(bad)} unreadable image(s) in {KNN_DATA_DIR}, first: {bad[0]}")
        knn_data[split] = (array, torch.tensor(labels))
    return knn_data


def select_listed(paths):
    """The images of DATA_DIR named in FILE_LIST (e.g. EuroSAT's train.csv, so pre-training never sees test images)."""
    if not os.path.isfile(FILE_LIST):
        fail(f"FILE_LIST {FILE_LIST!r} does not exist.")
    if FILE_LIST.endswith(".csv"):
        table = pd.read_csv(FILE_LIST)
        if "Filename" not in table.columns:
            fail(f"{FILE_LIST}: needs a Filename column; found {list(table.columns)}.")
        names = table["Filename"].astype(str).tolist()
    else:
        with open(FILE_LIST) as f:
            names = [line.strip() for line in f if line.strip()]
    wanted = {os.path.normpath(os.path.join(DATA_DIR, name)) for name in names}
    selected = [p for p in paths if os.path.normpath(p) in wanted]
    if len(selected) < len(wanted):
        print(f"warning: {len(wanted) - len(selected)} of the {len(wanted)} images in {FILE_LIST} are not under "
              f"{DATA_DIR}")
    if not selected:
        fail(f"none of the images listed in {FILE_LIST} is under {DATA_DIR!r}: paths must be relative to DATA_DIR.")
    return selected


def main():
    config, _ = configure(globals())
    # ---- distributed set-up (torchrun sets WORLD_SIZE, RANK, LOCAL_RANK) ----
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world_size = 0, 1
    if distributed:
        local_rank = int(os.environ["LOCAL_RANK"])
        use_cuda = torch.cuda.is_available() and DEVICE in ("auto", "cuda")
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        rank, world_size = dist.get_rank(), dist.get_world_size()
        device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    else:
        device = pick_device(DEVICE)
    main_process = rank == 0
    log = print if main_process else (lambda *args, **kwargs: None)
    seed_everything(SEED + rank)
    amp_dtype = amp_dtype_for(device, AMP, CPU_BF16)
    channels_last = channels_last_for(device, amp_dtype, CHANNELS_LAST)
    global_batch = BATCH_SIZE * world_size
    base_lr = BASE_LR * global_batch / 256
    healthy_std = 1 / math.sqrt(PROJ_DIM)
    log(f"config: {config}")
    log(f"device: {describe_device(device)}, processes: {world_size}, precision: {amp_dtype or 'fp32'}, "
        f"global batch {global_batch}, lr {base_lr:.5f} (= {BASE_LR} x {global_batch} / 256)")

    # ---- data ----
    if not os.path.isdir(DATA_DIR):
        fail(f"data folder {DATA_DIR!r} does not exist. Prepare it with `python make_dataset.py` "
             "(or pass --data_dir=FOLDER of images).")
    paths = data.list_images(DATA_DIR)
    if not paths:
        fail(f"no images (png/jpg/jpeg/tif) under {DATA_DIR!r}. Run `python make_dataset.py` first, or point "
             "--data_dir at a folder of images.")
    if FILE_LIST:
        paths = select_listed(paths)
    bad_images = []
    strengths = dict(jitter_strength=JITTER_STRENGTH, gray_p=GRAY_P, blur_p=BLUR_P)
    if PIPELINE == "fast":
        if main_process:
            array, paths, bad_images = data.build_image_cache(
                paths, CACHE_DIR, progress=lambda it: tqdm(it, desc="decoding images once"), log=log)
        if distributed:
            dist.barrier()  # rank 0 built the cache; the others open the same file
            if not main_process:
                array, paths, bad_images = data.build_image_cache(paths, CACHE_DIR)
        augment1, augment2 = data.batch_augment_pair(IMAGE_SIZE, CROP_SCALE_MIN, SOLARIZE, **strengths)
        num_images = len(paths)
    elif PIPELINE == "reference":
        dataset = data.PretrainImageDataset(
            paths, data.simsiam_transform_v1(IMAGE_SIZE, CROP_SCALE_MIN, **strengths),
            data.simsiam_transform_v2(IMAGE_SIZE, CROP_SCALE_MIN, solarize=SOLARIZE, **strengths))
        sampler = (torch.utils.data.DistributedSampler(dataset, shuffle=True, seed=SEED, drop_last=True)
                   if distributed else None)
        num_images = len(dataset)
    else:
        fail(f"PIPELINE must be 'fast' or 'reference', got {PIPELINE!r}")
    if bad_images:
        log(f"warning: skipping {len(bad_images)} unreadable image(s), e.g. {bad_images[0]}")
    steps_per_epoch = num_images // global_batch
    if steps_per_epoch == 0:
        fail(f"only {num_images} usable images in {DATA_DIR!r}, fewer than one global batch of {global_batch} "
             f"pairs. Lower --batch_size (at most {max(1, num_images // world_size)}) or add images.")
    knn_data = load_knn_data(log) if KNN_DATA_DIR and main_process else None

    # ---- model and optimiser ----
    try:
        model = SimSiam(ARCH, PROJ_DIM, PRED_DIM, IN_CHANNELS, SMALL_STEM, STEM_STRIDE)
    except ValueError as error:
        fail(f"{error}. Fix --arch / --stem_stride.")
    if distributed and SYNC_BN and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif distributed and SYNC_BN:
        log("note: SyncBatchNorm needs GPUs; on the CPU each process normalises over its own batch")
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    param_count = sum(p.numel() for p in model.parameters())
    predictor_params = list(model.predictor.parameters())
    other_params = [p for n, p in model.named_parameters() if not n.startswith("predictor.")]
    optimizer = torch.optim.SGD([{"params": other_params, "fix_lr": False},
                                 {"params": predictor_params, "fix_lr": FIX_PRED_LR}],
                                lr=base_lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    # ---- resume ----
    last_path = os.path.join(OUTPUT_DIR, "checkpoint_last.pth")
    metrics = {"kind": "simsiam_pretrain_metrics", "epochs": [], "loss": [], "lr": [], "z_std": [],
               "epoch_time_s": [], "pairs_per_s": [], "knn_top1": [], "skipped_images": [], "step": [],
               "step_lr": [], "step_loss": []}
    start_epoch, global_step = 0, 0
    if RESUME and os.path.exists(last_path):
        try:
            last = load_checkpoint(last_path, kinds=("simsiam_pretrain_last",))
        except CheckpointError as error:
            fail(f"{error} To start afresh, delete it or pass --resume=False.")
        recorded = {"STEM_STRIDE": 1, **last["config"]}  # checkpoints from before STEM_STRIDE existed used 1
        changed = [f"{k}={recorded.get(k)!r}" for k in SHAPE_KEYS if recorded.get(k) != config[k]]
        if changed:
            fail(f"{last_path} was written with different model settings ({', '.join(changed)}). Use the same settings, another "
                 "--output_dir, or --resume=False to start afresh (the old checkpoint is then overwritten).")
        unwrap(model).load_state_dict(last["model"])
        optimizer.load_state_dict(last["optimizer"])
        scaler.load_state_dict(last["scaler"])
        metrics, start_epoch, global_step = last["metrics"], last["epoch"], last["global_step"]
        log(f"resuming from {last_path}: {start_epoch} of {NUM_EPOCHS} epochs done, step {global_step}")
    if start_epoch >= NUM_EPOCHS:
        log(f"nothing to do: {last_path} already holds all {NUM_EPOCHS} epochs (pass --resume=False to retrain)")
        return
    train_model = model
    if distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if COMPILE:
        train_model = torch.compile(train_model)
    log(f"model: SimSiam {ARCH}, {param_count / 1e6:.2f} M parameters; {num_images} images, "
        f"{steps_per_epoch} steps per epoch, epochs {start_epoch + 1}..{NUM_EPOCHS}")

    # ---- training loop ----
    for epoch in range(start_epoch, NUM_EPOCHS):
        model.train()
        # per-epoch seeds: a resumed epoch replays exactly the data order and augmentations it would have had
        order_gen = torch.Generator().manual_seed(SEED * 100_003 + epoch)
        aug_gen = torch.Generator().manual_seed(SEED * 100_003 + epoch * 7_919 + rank + 1)
        if PIPELINE == "fast":
            order = torch.randperm(num_images, generator=order_gen).numpy()[:steps_per_epoch * global_batch]
            order = order[rank::world_size]  # same permutation on every rank, a disjoint share each
            batches = ((augment1(b, aug_gen), augment2(b, aug_gen), [])
                       for b in data.iterate_batches(array, order, BATCH_SIZE, device))
        else:
            if sampler is not None:
                sampler.set_epoch(epoch)
            torch.manual_seed(SEED * 100_003 + epoch * 7_919 + rank + 1)  # worker seeds derive from this
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=BATCH_SIZE, shuffle=sampler is None, sampler=sampler, drop_last=True,
                num_workers=NUM_WORKERS, pin_memory=device.type == "cuda", collate_fn=data.collate_skipping,
                generator=order_gen, persistent_workers=False)
            batches = ((x1, x2, bad) for x1, x2, bad in loader)
        loss_sum = torch.zeros((), device=device)
        steps, step_ids, step_losses, step_lrs, z_stds, epoch_bad = 0, [], [], [], [], []
        started = time.time()
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{NUM_EPOCHS}", disable=not main_process,
                   leave=False)
        for x1, x2, bad in bar:
            epoch_bad += bad
            if x1 is None:
                continue
            lr = lr_at(global_step, steps_per_epoch, base_lr)
            for group in optimizer.param_groups:
                group["lr"] = base_lr if group["fix_lr"] else lr
            x1 = x1.to(device, non_blocking=True)
            x2 = x2.to(device, non_blocking=True)
            if channels_last:
                x1, x2 = x1.contiguous(memory_format=torch.channels_last), x2.contiguous(memory_format=torch.channels_last)
            try:
                with autocast_for(device, amp_dtype):
                    p1, p2, z1, z2 = train_model(x1, x2)
                    loss = negative_cosine_loss(p1.float(), p2.float(), z1.float(), z2.float())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            except torch.cuda.OutOfMemoryError:
                fail(f"out of GPU memory at batch {BATCH_SIZE} x {IMAGE_SIZE} px with {ARCH}. Try a smaller "
                     f"--batch_size (e.g. {max(1, BATCH_SIZE // 2)}; the lr scales with it), a smaller "
                     "--image_size, or --arch=resnet18.")
            loss_sum += loss.detach()
            steps += 1
            global_step += 1
            step_lrs.append(lr)  # every step (a host float, no device sync); the loss only every 20 steps
            if steps % 20 == 1 or steps == steps_per_epoch:
                # a host sync every 20 steps: the running sum turns NaN/inf as soon as one step does
                running = loss_sum.item() / steps
                if not math.isfinite(running):
                    fail(f"loss became {running} at epoch {epoch + 1}, step {global_step}. Stopping; the last good "
                         f"state is kept in {last_path}. Lower --base_lr or keep --amp=True with bf16.")
                z_stds.append(normalized_std(z1))
                step_ids.append(global_step)
                step_losses.append(loss.item())
                bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr:.5f}")
        elapsed = time.time() - started
        if steps == 0:
            fail(f"epoch {epoch + 1} produced no batch: every image was unreadable?")
        if distributed:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        epoch_loss = loss_sum.item() / steps
        if not math.isfinite(epoch_loss):
            fail(f"loss became {epoch_loss} at epoch {epoch + 1}. Stopping; the last good state is kept in "
                 f"{last_path}. Lower --base_lr.")
        z_std = sum(z_stds) / len(z_stds)  # sampled with the loss: every 20 steps and at the end of the epoch
        new_bad = sorted(set(epoch_bad))
        for message in new_bad[:5]:
            log(f"warning: skipped unreadable image {message}")

        # ---- metrics and checkpoints (rank 0 only; every write atomic) ----
        knn = knn_monitor(model, knn_data, device, amp_dtype) if knn_data and (
            (epoch + 1) % KNN_EVERY == 0 or epoch + 1 == NUM_EPOCHS) else None
        if main_process:
            metrics["epochs"].append(epoch + 1)
            metrics["loss"].append(epoch_loss)
            metrics["lr"].append(lr)
            metrics["z_std"].append(z_std)
            metrics["epoch_time_s"].append(elapsed)
            metrics["pairs_per_s"].append(steps * global_batch / elapsed)
            metrics["knn_top1"].append(knn)
            metrics["skipped_images"].append(len(bad_images) + len(new_bad))
            metrics["step"] += step_ids  # the steps at which step_loss was sampled
            metrics["step_loss"] += step_losses
            metrics["step_lr"] += step_lrs  # one entry per optimiser step
            metrics.update(config=config, versions=library_versions(), seed=SEED, z_std_healthy=healthy_std,
                           num_images=num_images, param_count=param_count, world_size=world_size,
                           global_step=global_step, device=describe_device(device))
            model_state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
            # the epoch file is written before checkpoint_last: a kill in between replays this epoch on resume and
            # writes the file again, where the other order would resume past an epoch file never written
            if (epoch + 1) % SAVE_EVERY == 0 or epoch + 1 == NUM_EPOCHS:
                path = os.path.join(OUTPUT_DIR, f"simsiam_{ARCH}_epoch_{epoch + 1}.pth")
                print(f"saving checkpoint to {path}")
                atomic_save({"kind": PRETRAIN_KIND, "arch": ARCH, "config": config, "epoch": epoch + 1,
                             "model": model_state}, path)
            atomic_save({"kind": "simsiam_pretrain_last", "arch": ARCH, "config": config, "epoch": epoch + 1,
                         "global_step": global_step, "model": model_state, "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict(), "metrics": metrics}, last_path)
            atomic_save(metrics, os.path.join(OUTPUT_DIR, "pretrain_metrics.pth"))
            line = (f"epoch {epoch + 1}/{NUM_EPOCHS} loss {epoch_loss:.4f} lr {lr:.5f} z_std {z_std:.4f} "
                    f"(healthy {healthy_std:.4f}) {steps * global_batch / elapsed:.1f} pairs/s {elapsed:.0f} s")
            if knn is not None:
                line += f" knn {knn:.1f}%"
            if bad_images or new_bad:
                line += f" skipped {len(bad_images) + len(new_bad)} unreadable"
            print(line, flush=True)
            if z_std < 0.25 * healthy_std:
                print(f"warning: z_std {z_std:.4f} is far below the healthy {healthy_std:.4f}: the representation "
                      "may be collapsing. Check the augmentations, or lower --base_lr.", flush=True)
    if main_process:
        print(f"done: {NUM_EPOCHS} epochs, final loss {metrics['loss'][-1]:.4f}; outputs in {OUTPUT_DIR}/")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
