"""Fine-tune a SimSiam backbone + new linear head on EuroSAT (all weights train),
best epoch on validation.csv.

  python finetune_model.py                     # newest outputs/simsiam_<arch>_epoch_X.pth,
                                               # its own arch and size
  python finetune_model.py --pretrained_path=outputs/simsiam_resnet18_epoch_90.pth --batch_size=64
  python finetune_model.py --pretrained_path=random --arch=resnet18 --image_size=64
                                               # from scratch (baseline)
  python finetune_model.py --label_fraction=0.1  # with 10 % of train.csv's labels

The backbone is rebuilt from the checkpoint's own config and trained together with a new head
(AdamW, lr 1e-4 at batch 32) on train.csv with light augmentation on the device (random resized
crop of 80-100% of the area, horizontal and vertical flips: aerial images have no "up"). After each
epoch the model is scored on validation.csv; the best epoch's weights are saved, reloaded from that
file at the end, and scored on test.csv. LABEL_FRACTION < 1 trains on a stratified fraction of
train.csv's labels (the same images as Linear_evaluation.py's), each epoch walking them about
1/LABEL_FRACTION times so that it takes the steps of one pass over all of train.csv.

Writes into OUTPUT_DIR (every write atomic; a `_random` suffix for the from-scratch baseline,
`_labels<percent>pct` for a LABEL_FRACTION below 1):
  finetune_metrics.pth                 after every epoch, and at the end with the test results
  finetuned_eurosat_best_model.pth     whenever validation accuracy improves
                                       (classify_image.py reads it)
Prints one line per epoch, then a summary:
  epoch 3/30 train loss 0.2100 acc 93.2% val loss 0.1800 ... (best 94.1% @3) 171 img/s 110 s
  test accuracy 94.0% (loss 0.1900) with the model of epoch 27 (val 94.4%)
"""
import math
import time
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import simsiam_data as data
from runtime import (AMP_MODES, above, amp_dtype_for, at_least, atomic_save, autocast_for, between,
                     check_fits, check_settings, configure, describe_device,
                     device_and_precision, epoch_generator, fail, one_of, pick_device,
                     prepare_output_dir, run, seed_everything, speed_up_cuda, warmup_cosine)
from simsiam_model import (ARCHS, FINETUNE_METRICS_KIND, IMAGE_STATS, Classifier,
                           classifier_checkpoint, classifier_from_checkpoint, evaluation_memory,
                           evaluation_metrics, evaluation_outputs, record_evaluation_epoch,
                           start_evaluation, test_results)

# -------------------------------------------------------------------------------------------------
EUROSAT_DIR = "datae/EuroSAT"  # JPEG class folders + train/validation/test.csv, label_map.json
OUTPUT_DIR = "outputs"  # train_simsiam.py's simsiam_<arch>_epoch_X.pth files; results go here too
CACHE_DIR = "cache"  # decoded-once image arrays; safe to delete
PRETRAINED_PATH = ""  # "" = newest OUTPUT_DIR/simsiam_<arch>_epoch_X.pth | a checkpoint | "random"
ARCH = "resnet50"  # backbone of the from-scratch baseline only (a checkpoint names its own)
SMALL_STEM = False  # 3x3 stride-1 stem, from-scratch baseline only (a checkpoint names its own)
STEM_STRIDE = 1  # small stem's stride, from-scratch baseline only (a checkpoint names its own)
IMAGE_SIZE = 0  # input side in px; 0 = the checkpoint's own IMAGE_SIZE (224 for random)
LABEL_FRACTION = 1.0  # share of train.csv's labels used (stratified, fixed seed): 0.1 = 10 %
BATCH_SIZE = 32  # images per step; 32 fits ResNet-50 at 224 px in 8 GB with AMP (write-up's batch)
NUM_EPOCHS = 30  # fine-tuning a pre-trained backbone levels off in 10-20 epochs; 30 leaves margin
BASE_LR = 8e-4  # AdamW lr per 256 images: BASE_LR * BATCH_SIZE / 256 = 1e-4 at batch 32 (write-up)
WEIGHT_DECAY = 0.05  # AdamW decoupled weight decay on conv/linear weights (not BatchNorm, biases)
WARMUP_EPOCHS = 1  # linear lr warm-up, then half-cosine to 0, per step
CROP_SCALE_MIN = 0.8  # RandomResizedCrop keeps 80-100% of the area; + h/v flips, no colour changes
OVERWRITE = False  # replace results of another checkpoint in OUTPUT_DIR (refused otherwise)
SEED = 0  # seeds the head's initialisation, the batch order and the augmentation
DEVICE = "auto"  # auto | cuda | cpu | mps
AMP = "auto"  # auto | bf16 | fp16 | off. auto: bf16 where native (GPU 8.0+, CPU AVX512-BF16/AMX),
#               else fp16 with a grad scaler on a GPU, fp32 on a CPU
CHANNELS_LAST = True  # channels_last memory format: faster convs (docs/experiments.md)
# -------------------------------------------------------------------------------------------------

# Why AdamW: it adapts the step per parameter, so one small lr suits both the pre-trained backbone
# (which must not be pushed far) and the new head, and its decoupled weight decay does not interact
# with the adaptive step; it is the usual choice for fine-tuning. The short warm-up keeps the
# random head's first large gradients from scrambling the pre-trained features.
SPLITS = ("train", "validation", "test")


class Compute(NamedTuple):
    """Where and how the model computes: what every pass over images needs besides them."""
    device: torch.device
    amp_dtype: object  # the autocast dtype, or None for fp32
    memory_format: torch.memory_format
    image_size: int


def settings_rules():
    return {"ARCH": one_of(*ARCHS), "STEM_STRIDE": one_of(1, 2),
            "IMAGE_SIZE": ((lambda v: v == 0 or v >= 8),
                           "0 (the checkpoint's own size) or at least 8"),
            "LABEL_FRACTION": ((lambda v: 0 < v <= 1),
                               "greater than 0 and at most 1 (0.1 = 10 % of train.csv's labels)"),
            "BATCH_SIZE": at_least(2),  # BatchNorm trains on more than one image
            "NUM_EPOCHS": at_least(1), "BASE_LR": above(0), "WEIGHT_DECAY": at_least(0),
            "WARMUP_EPOCHS": between(0, NUM_EPOCHS), "CROP_SCALE_MIN": between(0.01, 1.0),
            "SEED": at_least(0), "AMP": one_of(*AMP_MODES),
            "PRETRAINED_PATH": ((lambda v: v != IMAGE_STATS),
                                "a checkpoint, empty (the newest) or random: image_stats has no "
                                "network to fine-tune (it is Linear_evaluation.py's floor)")}



def epoch_plan(splits):
    """(train images, passes over them per epoch, steps per epoch); the last partial batch of an
    epoch is dropped (BatchNorm), so fewer images than a batch stop the run by name."""
    num_train = len(splits["train"].labels)
    passes = data.subset_passes(LABEL_FRACTION)  # an epoch: the steps of a pass over train.csv
    steps_per_epoch = num_train * passes // BATCH_SIZE
    if steps_per_epoch == 0:
        fail(f"only {num_train} training images, fewer than one batch of {BATCH_SIZE}. "
             "Lower --batch_size.")
    print(data.describe_splits(splits, LABEL_FRACTION) + f"; {steps_per_epoch} steps per epoch")
    return num_train, passes, steps_per_epoch


def out_of_memory():
    fail(f"out of GPU memory at batch {BATCH_SIZE}. Try a smaller --batch_size "
         f"(e.g. {max(2, BATCH_SIZE // 2)}; the lr scales with it), a smaller --image_size, or "
         "--amp=auto.")


@torch.no_grad()
def evaluate(model, split, labels, compute, desc):
    """(mean loss, accuracy in %, predictions) of `model` in eval mode over every image of a
    split (its EuroSATSplit and labels on the device), in order."""
    model.eval()
    logits = []
    batch_size = 2 * BATCH_SIZE  # no gradients: twice the training batch fits
    batches = data.iterate_batches(split.images, np.arange(len(split.images)), batch_size,
                                   compute.device, drop_last=False)
    try:
        for _, batch in tqdm(batches, total=math.ceil(len(split.images) / batch_size), desc=desc,
                             leave=False):
            x = data.eval_batch(batch, compute.image_size).contiguous(
                memory_format=compute.memory_format)
            with autocast_for(compute.device, compute.amp_dtype):
                logits.append(model(x).float())
    except torch.cuda.OutOfMemoryError:
        out_of_memory()
    logits = torch.cat(logits)
    predictions = logits.argmax(dim=1)
    return (F.cross_entropy(logits, labels).item(),
            (predictions == labels).float().mean().item() * 100, predictions)


def new_classifier(backbone, feature_dim, num_classes, compute):
    """The backbone with a new linear head (small normal weights, zero bias), on the device."""
    model = Classifier(backbone, feature_dim, num_classes)
    nn.init.normal_(model.head.weight, std=0.01)
    nn.init.zeros_(model.head.bias)
    return model.to(compute.device, memory_format=compute.memory_format)


def adamw_for(model, lr):
    """AdamW with weight decay on conv and linear weights only, not on BatchNorm parameters or
    biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def save_best(model, metrics):
    """This epoch's model as the best so far: a classifier file that classify_image.py reads."""
    path = metrics["best_model_path"]
    print(f"saving best model (epoch {metrics['best_epoch']}, val {metrics['best_val_acc']:.2f}%) "
          f"to {path}")
    extra = {"epoch": metrics["best_epoch"], "val_acc": metrics["best_val_acc"],
             "source": "finetune", "label_fraction": LABEL_FRACTION,
             "pretrained_path": metrics["pretrained_path"],
             "pretrained_identity": metrics["pretrained_identity"]}
    atomic_save(classifier_checkpoint(model, metrics["config"], metrics["class_names"],
                                      data.IMAGENET_MEAN, data.IMAGENET_STD, extra=extra), path)


def test_best(metrics, splits, labels, compute):
    """The best epoch's weights, reloaded from the file that was saved, scored once on test.csv;
    the test entries go into `metrics`."""
    print(f"reloading the best model (epoch {metrics['best_epoch']}) from "
          f"{metrics['best_model_path']}")
    model, _, _ = classifier_from_checkpoint(metrics["best_model_path"])
    model = model.to(compute.device, memory_format=compute.memory_format)
    test_loss, _, predictions = evaluate(model, splits["test"], labels["test"], compute, "test")
    metrics.update(test_results(labels["test"], predictions, test_loss, metrics["class_names"]))
    print(f"test accuracy {metrics['test_acc']:.2f}% (loss {test_loss:.4f}) with the model of "
          f"epoch {metrics['best_epoch']} (val {metrics['best_val_acc']:.2f}%)")
    print("per-class test accuracy: "
          + ", ".join(f"{n} {a:.1f}%" for n, a in metrics["per_class_acc"].items()))


def main():
    config, _ = configure(globals())
    check_settings(config, settings_rules())
    started, device = time.time(), pick_device(DEVICE)
    check_fits(evaluation_memory(config, train=True), device)
    speed_up_cuda(device)
    amp_dtype, precision_reason = amp_dtype_for(device, AMP)
    seed_everything(SEED)
    metrics_path, best_path, lock_name = evaluation_outputs(config, "finetune_metrics",
                                                            "finetuned_eurosat_best_model")
    prepare_output_dir(OUTPUT_DIR, lock_name)

    # ---- the backbone rebuilt from the checkpoint's own config, a new head; the data ----
    lr_peak = BASE_LR * BATCH_SIZE / 256
    print(f"device: {device_and_precision(device, amp_dtype, precision_reason)}; lr "
          f"{lr_peak:.6f} (= {BASE_LR} x {BATCH_SIZE} / 256)")
    start = start_evaluation(config, device, CHANNELS_LAST, "fine-tuning",
                             (metrics_path, best_path))
    config = start.config  # as used: the checkpoint's arch and size
    print(start.header)
    compute = Compute(device, amp_dtype, torch.channels_last if CHANNELS_LAST
                      else torch.contiguous_format, config["IMAGE_SIZE"])
    splits, labels = data.load_eurosat_splits(EUROSAT_DIR, CACHE_DIR, device,
                                              label_fraction=LABEL_FRACTION)
    num_train, passes, steps_per_epoch = epoch_plan(splits)
    augment = data.BatchAugment(compute.image_size, crop_scale=(CROP_SCALE_MIN, 1.0), flip_p=0.5,
                                vflip_p=0.5, jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    model = new_classifier(start.features.backbone, start.features.dim,
                           len(splits["train"].class_names), compute)
    optimizer = adamw_for(model, lr_peak)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    metrics = evaluation_metrics(FINETUNE_METRICS_KIND, config, splits, best_model_path=best_path,
                                 device=describe_device(device), images_per_s=[],
                                 pretrained_identity=start.identity)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, all "
          "trainable")

    # ---- training, best epoch on validation.csv ----
    step = 0
    for epoch in range(NUM_EPOCHS):
        model.train()
        epoch_started = time.time()
        order = data.epoch_order(num_train, passes, epoch_generator(SEED, epoch))
        augment_generator = epoch_generator(SEED, epoch, augment_stream=1)
        batches = data.iterate_batches(splits["train"].images, order, BATCH_SIZE, device,
                                       drop_last=True, rows_on_device=True)
        loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{NUM_EPOCHS}",
                   leave=False)
        try:
            for rows, images in bar:
                lr = warmup_cosine(step, NUM_EPOCHS * steps_per_epoch,
                                   WARMUP_EPOCHS * steps_per_epoch, lr_peak)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch_labels = labels["train"][rows]  # both on the device: no wait
                x = augment(images, augment_generator).contiguous(
                    memory_format=compute.memory_format)
                with autocast_for(device, amp_dtype):
                    logits = model(x).float()
                    loss = F.cross_entropy(logits, batch_labels)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                loss_sum += loss.detach() * len(batch_labels)
                correct += (logits.argmax(dim=1) == batch_labels).sum()
                step += 1
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.6f}")
        except torch.cuda.OutOfMemoryError:
            out_of_memory()
        seen, train_time = steps_per_epoch * BATCH_SIZE, time.time() - epoch_started
        train_loss, train_acc = loss_sum.item() / seen, correct.item() / seen * 100
        if not math.isfinite(train_loss):
            fail(f"the loss became {train_loss} at epoch {epoch + 1}. Lower --base_lr.")
        val_loss, val_acc, _ = evaluate(model, splits["validation"], labels["validation"],
                                        compute, "validation")
        if val_acc > metrics["best_val_acc"] or metrics["best_epoch"] == 0:
            metrics.update(best_epoch=epoch + 1, best_val_acc=val_acc)
            save_best(model, metrics)
        line = record_evaluation_epoch(metrics, epoch, NUM_EPOCHS, {
            "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
            "val_acc": val_acc, "lr": lr, "epoch_time_s": time.time() - epoch_started,
            "images_per_s": seen / train_time}, lr_format=".6f",
            note=f"{seen / train_time:.0f} img/s")
        metrics["wall_time_s"] = time.time() - started
        atomic_save(metrics, metrics_path)
        print(line, flush=True)

    # ---- test: the best epoch's weights, reloaded from the file that was saved ----
    test_best(metrics, splits, labels, compute)
    metrics["wall_time_s"] = time.time() - started
    atomic_save(metrics, metrics_path)
    print(f"wall time {metrics['wall_time_s']:.0f} s "
          f"({sum(metrics['epoch_time_s']) / NUM_EPOCHS:.0f} s/epoch)")
    print(f"saving metrics to {metrics_path}")


if __name__ == "__main__":
    run(main)
