"""Linear evaluation of a SimSiam backbone on EuroSAT: frozen backbone + linear head,
regularisation and epoch chosen on validation.csv, scored once on test.csv; and weighted kNN.

    python Linear_evaluation.py                     # newest outputs/simsiam_<arch>_epoch_X.pth,
                                                    # its own arch and size
    python Linear_evaluation.py --pretrained_path=outputs/simsiam_resnet18_epoch_90.pth
    python Linear_evaluation.py --pretrained_path=random --arch=resnet18 --image_size=64
                                                    # floor 1: the same network at random init
    python Linear_evaluation.py --pretrained_path=image_stats
                                                    # floor 2: 12 colour statistics per image

The backbone is rebuilt from the checkpoint's own config, frozen (requires_grad False, and eval()
so BatchNorm statistics do not move) and checked at the end to be bit-for-bit unchanged. Its
features are computed in fp32 (standardising rounded features would blow their rounding noise up
in dimensions that hardly vary). The probe: one linear head per weight decay of WEIGHT_DECAYS,
all trained side by side on the same batches of standardised train.csv features; the head and
epoch with the best validation.csv accuracy are kept, and only that head is scored on test.csv.
Also reported: weighted kNN accuracy on validation.csv and test.csv (bank = train.csv features,
cosine, k=20 and k=200), a protocol with no training.

LABEL_FRACTION < 1 (e.g. 0.01) evaluates with a stratified fraction of train.csv's labels (the same
images for every backbone and floor, simsiam_data.label_subset): the probe and the kNN bank see only
those; validation and test stay whole. Each epoch walks that subset about 1/LABEL_FRACTION times,
so the heads take the steps of one pass over all of train.csv. Files get a `_labels1pct` suffix.

`--pretrained_path=image_stats` runs the same probe and kNN on the mean, std, min and max of each
RGB channel of every image (standardised with train.csv's statistics): a floor that learned
features have to clear by a wide margin. It writes metrics only (no model file).

FEATURE_CACHE = True (default): the backbone sees each image once; 90 epochs of the heads take
seconds. FEATURE_CACHE = False runs every training batch of every epoch through the frozen
backbone (needed for AUGMENT = True); with AUGMENT = False it gives the same result.

Writes into OUTPUT_DIR (every write atomic; `_random` / `_image_stats` names for the floors, and
`_labels<percent>pct` for a LABEL_FRACTION below 1):
  linear_eval_metrics.pth               after every epoch, and at the end with the test results
  linear_eval_eurosat_best_model.pth    whenever validation accuracy improves
                                        (classify_image.py can use it)
Results of another checkpoint already there are refused (pass --overwrite=True to replace them).
Prints one line per epoch (the heads' best so far), a line per weight decay, then a summary:
  epoch 3/90 train loss 0.4100 acc 87.2% val loss 0.4500 acc 86.1% lr 0.0999 (best 86.1% @3) ...
  weight decay 0.0001: best val 86.40% at epoch 71 (train 90.12%)
  test accuracy 85.9% (loss 0.4412) with the head of epoch 71 (weight decay 0.0001, val 86.4%) ...
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
from runtime import (above, at_least, atomic_save, between, check_fits,
                     check_settings, configure, describe_device, device_and_precision,
                     epoch_generator, fail, one_of, pick_device, prepare_output_dir, run,
                     seed_everything, speed_up_cuda, warmup_cosine)
from simsiam_model import (ARCHS, IMAGE_STATS, LINEAR_METRICS_KIND, Classifier,
                           classifier_checkpoint, effective_rank, evaluation_memory,
                           evaluation_metrics, evaluation_outputs, knn_top1,
                           percent, record_evaluation_epoch, start_evaluation, test_results)

# -------------------------------------------------------------------------------------------------
EUROSAT_DIR = "datae/EuroSAT"  # JPEG class folders + train/validation/test.csv, label_map.json
OUTPUT_DIR = "outputs"  # train_simsiam.py's simsiam_<arch>_epoch_X.pth files; results go here too
CACHE_DIR = "cache"  # decoded-once image arrays; safe to delete
PRETRAINED_PATH = ""  # "" = newest simsiam_<arch>_epoch_X.pth | checkpoint | random | image_stats
ARCH = "resnet50"  # random baseline only (checkpoints name theirs): resnet18 | resnet34 | resnet50
SMALL_STEM = False  # 3x3 stride-1 stem for the random baseline only (a checkpoint names its own)
STEM_STRIDE = 1  # that small stem's conv stride, random baseline only (a checkpoint names its own)
IMAGE_SIZE = 0  # input side in px; 0 = the checkpoint's own IMAGE_SIZE (224 for random)
LABEL_FRACTION = 1.0  # share of train.csv's labels used (stratified, fixed seed): 0.01 = 1 %
BATCH_SIZE = 256  # images per head step and per backbone forward pass; lr scales with it
NUM_EPOCHS = 90  # head epochs (cheap with FEATURE_CACHE; each is a full backbone pass without it)
BASE_LR = 0.1  # head lr per 256 images: lr = BASE_LR * BATCH_SIZE / 256, half-cosine to 0 per step
MOMENTUM = 0.9  # SGD momentum of the heads
WEIGHT_DECAYS = "0 1e-5 3e-5 1e-4 3e-4 1e-3 3e-3 1e-2 3e-2 1e-1 3e-1"  # a head each; best on val
FEATURE_CACHE = True  # True: backbone features computed once | False: backbone pass every batch
AUGMENT = False  # light on-device train augment (crop 0.8-1, h/v flips); needs FEATURE_CACHE=False
KNN_TEMPERATURE = 0.2  # kNN vote weight exp(cosine / T), used for both k=20 and k=200 (paper: 0.2)
OVERWRITE = False  # replace results of another checkpoint in OUTPUT_DIR (refused otherwise)
SEED = 0  # seeds the batch order (and augmentation, and the random baseline's initialisation)
DEVICE = "auto"  # auto | cuda | cpu | mps
CHANNELS_LAST = True  # channels_last memory format: faster convs (docs/experiments.md)
# -------------------------------------------------------------------------------------------------

# Why SGD on standardised features: standardised with the train-set mean and std, one lr fits any
# backbone (random-init and pre-trained features differ in scale by orders of magnitude), and SGD
# with momentum and a cosine schedule on a convex problem is the paper's recipe (LARS there is only
# for its batch of 4096). Why a grid of weight decays: an unregularised head fits 2048-d features
# of 18,900 images (95.7 % train against 64 % validation was seen), so the L2 strength is chosen
# on validation, like the C of torchgeo-bench's and CLIP's logistic regressions. Heads start at
# zero (softmax regression needs no symmetry breaking), so only SEED's batch order matters. The
# standardisation is folded into the saved head, which therefore works on raw backbone features.
SPLITS = ("train", "validation", "test")


def weight_decay_grid():
    """WEIGHT_DECAYS as numbers, checked at start-up (exit 2 with the setting's name)."""
    try:
        grid = [float(v) for v in WEIGHT_DECAYS.replace(",", " ").split()]
    except ValueError:
        grid = []
    if not grid or any(not math.isfinite(v) or v < 0 for v in grid) or len(set(grid)) < len(grid):
        fail(f"WEIGHT_DECAYS = {WEIGHT_DECAYS!r} is not allowed: it must list distinct numbers of "
             "at least 0, e.g. --weight_decays='0 1e-4 1e-3' (one value: no search)", code=2)
    return grid


def settings_rules():
    stats = PRETRAINED_PATH == IMAGE_STATS
    return {"ARCH": one_of(*ARCHS), "STEM_STRIDE": one_of(1, 2),
            "IMAGE_SIZE": ((lambda v: v == 0 or (v >= 8 and not stats)),
                           "0 (the checkpoint's own size) or at least 8; 0 with image_stats, "
                           "which are taken at the stored size"),
            "LABEL_FRACTION": ((lambda v: 0 < v <= 1),
                               "greater than 0 and at most 1 (0.01 = 1 % of train.csv's labels)"),
            "BATCH_SIZE": at_least(1), "NUM_EPOCHS": at_least(1), "BASE_LR": above(0),
            "MOMENTUM": between(0.0, 1.0), "KNN_TEMPERATURE": above(0), "SEED": at_least(0),
            "FEATURE_CACHE": ((lambda v: v or not stats),
                              "True with image_stats: 12 numbers per image are computed once, "
                              "there is no backbone pass to repeat"),
            "AUGMENT": ((lambda v: not (v and (FEATURE_CACHE or stats))),
                        "False unless --feature_cache=False with a network: augmented images "
                        "change every epoch, so their features cannot be computed once")}


class TrainSource(NamedTuple):
    """What the heads' training batches are made from."""
    standardized: torch.Tensor  # the train split's standardised features (FEATURE_CACHE)
    images: object  # the train split's uint8 images, for the backbone pass (no FEATURE_CACHE)
    features: object  # the extractor (simsiam_model.BackboneFeatures)
    scale: object  # (mean, std) of the train features
    augment: object  # a BatchAugment, or None


def train_batches(epoch, source):
    """(rows on the device, standardised features) of each training batch of one epoch, in the
    epoch's seeded order: from the features computed once, or (FEATURE_CACHE False) through the
    backbone, with the same batches in the same order."""
    order = data.epoch_order(len(source.images), data.subset_passes(LABEL_FRACTION),
                             epoch_generator(SEED, epoch))
    mean, std = source.scale
    if FEATURE_CACHE:
        # the epoch's rows reach the device in one copy, not one (blocking) copy per step
        rows = torch.from_numpy(np.concatenate(data.batch_rows(order, BATCH_SIZE,
                                                               drop_last=False)))
        rows = rows.to(source.standardized.device)
        for start in range(0, len(rows), BATCH_SIZE):
            batch = rows[start:start + BATCH_SIZE]
            yield batch, source.standardized[batch]
        return
    generator = epoch_generator(SEED, epoch, augment_stream=1)
    for rows, images in data.iterate_batches(source.images, order, BATCH_SIZE,
                                             source.features.device, drop_last=False,
                                             rows_on_device=True):
        x = (source.augment(images, generator) if source.augment
             else data.eval_batch(images, source.features.image_size))
        yield rows, (source.features.of_batch(x) - mean) / std



@torch.no_grad()
def evaluate(head, features, labels):
    logits = head(features)
    predictions = logits.argmax(dim=1)
    return (F.cross_entropy(logits, labels).item(),
            (predictions == labels).float().mean().item() * 100, predictions)


def fold_standardization(head, mean, std):
    """A head on raw features equal to `head` on (features - mean) / std:
    W' = W / std, b' = b - W' mean."""
    folded = nn.Linear(head.in_features, head.out_features).to(mean.device)
    with torch.no_grad():
        folded.weight.copy_(head.weight / std)
        folded.bias.copy_(head.bias - folded.weight @ mean)
    return folded


def new_heads(grid, feature_dim, num_classes, lr, device):
    """One zero linear head per weight decay, and one SGD over them all; the decay applies to the
    weights, not the biases."""
    heads = [nn.Linear(feature_dim, num_classes).to(device) for _ in grid]
    for head in heads:
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    groups = [group for head, decay in zip(heads, grid)
              for group in ({"params": [head.weight], "weight_decay": decay},
                            {"params": [head.bias], "weight_decay": 0.0})]
    return heads, torch.optim.SGD(groups, lr=lr, momentum=MOMENTUM)


def validate_heads(heads, train, validation, metrics, epoch):
    """Record each head's epoch (`train`: its loss and accuracy in this epoch's batches, a 2 x heads
    tensor; its loss and accuracy on `validation`, (features, labels)) and keep the best (weight
    decay, epoch) on validation.csv; test labels are never looked at here. Returns the head that
    became the best this epoch, or None."""
    grid, chosen = metrics["probe"]["weight_decays"], None
    for index, (head, curves) in enumerate(zip(heads, metrics["probe"]["curves"])):
        val_loss, val_acc, _ = evaluate(head, *validation)
        for key, value in (("train_loss", train[0][index].item()),
                           ("train_acc", train[1][index].item() * 100),
                           ("val_loss", val_loss), ("val_acc", val_acc)):
            curves[key].append(value)
        if metrics["weight_decay"] is None or val_acc > metrics["best_val_acc"]:
            chosen = head
            metrics.update(best_epoch=epoch + 1, best_val_acc=val_acc, weight_decay=grid[index])
    return chosen


def new_probe_record(grid):
    """The metrics' record of every head: its weight decay and its curves, epoch by epoch."""
    return {"weight_decays": grid, "curves": [
        {k: [] for k in ("train_loss", "train_acc", "val_loss", "val_acc")} for _ in grid]}


def probe_summary(metrics):
    """A line per weight decay: its best validation accuracy, at which epoch, with its train
    accuracy there."""
    lines = []
    for decay, curves in zip(metrics["probe"]["weight_decays"], metrics["probe"]["curves"]):
        epoch = int(np.argmax(curves["val_acc"]))
        lines.append(f"weight decay {decay:g}: best val {curves['val_acc'][epoch]:.2f}% at epoch "
                     f"{epoch + 1} (train {curves['train_acc'][epoch]:.2f}%)"
                     + ("  <- chosen" if decay == metrics["weight_decay"] else ""))
    return "\n".join(lines)


def save_best(features, head, metrics):
    """The backbone with the chosen (folded) head, as a classifier file; image statistics have no
    network, so no file."""
    if not features.saves_model:
        return
    path = metrics["best_model_path"]
    print(f"saving best head (epoch {metrics['best_epoch']}, weight decay "
          f"{metrics['weight_decay']:g}, val {metrics['best_val_acc']:.2f}%) to {path}")
    classifier = Classifier(features.backbone, head.in_features, head.out_features)
    classifier.head = head
    extra = {"epoch": metrics["best_epoch"], "val_acc": metrics["best_val_acc"],
             "weight_decay": metrics["weight_decay"], "source": "linear_eval",
             "label_fraction": LABEL_FRACTION, "pretrained_path": metrics["pretrained_path"],
             "pretrained_identity": metrics["pretrained_identity"],
             "standardisation": "folded into the head"}
    atomic_save(classifier_checkpoint(classifier, metrics["config"], metrics["class_names"],
                                      data.IMAGENET_MEAN, data.IMAGENET_STD, extra=extra), path)


def record_probe_epoch(metrics, epoch, lr, seconds):
    """Record the epoch; the metrics' curves are those of the chosen weight decay so far (the
    plots draw them). Returns the epoch's line."""
    probe = metrics["probe"]
    curves = probe["curves"][probe["weight_decays"].index(metrics["weight_decay"])]
    line = record_evaluation_epoch(metrics, epoch, NUM_EPOCHS, {
        "train_loss": curves["train_loss"][-1], "train_acc": curves["train_acc"][-1],
        "val_loss": curves["val_loss"][-1], "val_acc": curves["val_acc"][-1], "lr": lr,
        "epoch_time_s": seconds}, note=f"wd {metrics['weight_decay']:g}")
    metrics.update({key: list(values) for key, values in curves.items()})
    return line


def knn_accuracies(features, values, labels):
    """Weighted kNN accuracy on validation.csv (what choices are made on) and test.csv, the train
    features as the bank, k=20 and k=200; `features` (the extractor) says whether its `values`
    are standardised first (image statistics: 12 numbers in different units). None for a k of at
    least the bank's size (a few labels): that is a vote of every labelled image, not a
    neighbourhood."""
    return {split: {f"k{k}": knn_top1((values["train"], values[split]), labels["train"],
                                      labels[split], k, temperature=KNN_TEMPERATURE,
                                      standardize=features.standardize_for_knn)
                    if k < len(labels["train"]) else None
                    for k in (20, 200)}
            for split in ("validation", "test")}


def print_summary(metrics, metrics_path):
    knn, timings = metrics["knn"], metrics["timings"]
    print(f"test accuracy {percent(metrics['test_acc'])} (loss {metrics['test_loss']:.4f}) with "
          f"the head of epoch {metrics['best_epoch']} (weight decay {metrics['weight_decay']:g}, "
          f"val {percent(metrics['best_val_acc'])}); kNN " + " ".join(
              f"{k} {percent(knn[k])} (val {percent(metrics['knn_val'][k])})" for k in knn)
          + f", temperature {KNN_TEMPERATURE}")
    print("per-class test accuracy: "
          + ", ".join(f"{n} {a:.1f}%" for n, a in metrics["per_class_acc"].items()))
    print(f"wall time {metrics['wall_time_s']:.1f} s: feature extraction "
          f"{timings['feature_extraction_s']:.1f} s, head training "
          f"{timings['head_training_s']:.1f} s ({timings['head_training_s'] / NUM_EPOCHS:.2f} "
          f"s/epoch, {'cached features' if FEATURE_CACHE else 'on the fly'}), test + kNN "
          f"{timings['test_and_knn_s']:.1f} s")
    print(f"saving metrics to {metrics_path}")


def main():
    config, _ = configure(globals())
    check_settings(config, settings_rules())
    grid = weight_decay_grid()
    started, device = time.time(), pick_device(DEVICE)
    speed_up_cuda(device, tf32=False)  # fp32 features and heads: TF32 off on CUDA (10-bit mantissa)
    check_fits(evaluation_memory(config, train=False), device)
    seed_everything(SEED)
    metrics_path, best_path, lock_name = evaluation_outputs(config, "linear_eval_metrics",
                                                            "linear_eval_eurosat_best_model")
    prepare_output_dir(OUTPUT_DIR, lock_name)

    # ---- the frozen backbone rebuilt from the checkpoint's own config (or image statistics) ----
    lr_peak = BASE_LR * BATCH_SIZE / 256
    print(f"device: {device_and_precision(device, None, 'the probe features are fp32')}; head lr "
          f"{lr_peak:.4f} (= {BASE_LR} x {BATCH_SIZE} / 256)")
    start = start_evaluation(config, device, CHANNELS_LAST, "evaluating", (metrics_path, best_path))
    config, features = start.config, start.features  # as used: the checkpoint's arch and size
    print(start.header)
    splits, labels = data.load_eurosat_splits(EUROSAT_DIR, CACHE_DIR, device,
                                              label_fraction=LABEL_FRACTION)
    class_names = splits["train"].class_names
    print(data.describe_splits(splits, LABEL_FRACTION))
    frozen_before = features.freeze()

    # ---- features computed once, standardised with the train split's statistics ----
    timer = time.time()
    values = {split: features(splits[split].images, f"features {split}") for split in SPLITS}
    feature_time = time.time() - timer
    mean, std = data.standardization(values["train"])
    standardized = {split: (v - mean) / std for split, v in values.items()}
    rank = effective_rank(values["train"])
    print(f"features: {sum(len(s.labels) for s in splits.values())} images in "
          f"{feature_time:.1f} s; effective rank {rank:.1f} of {features.dim} (train; low = "
          "dimensional collapse)")
    augment = data.BatchAugment(features.image_size, crop_scale=(0.8, 1.0), flip_p=0.5,
                                vflip_p=0.5, jitter_p=0.0, gray_p=0.0,
                                blur_p=0.0) if AUGMENT else None
    source = TrainSource(standardized["train"], splits["train"].images, features, (mean, std),
                         augment)

    # ---- the heads side by side; the best (weight decay, epoch) on validation.csv ----
    heads, optimizer = new_heads(grid, features.dim, len(class_names), lr_peak, device)
    seen = len(labels["train"]) * data.subset_passes(LABEL_FRACTION)  # images per epoch
    steps_per_epoch = math.ceil(seen / BATCH_SIZE)
    metrics = evaluation_metrics(
        LINEAR_METRICS_KIND, config, splits, device=describe_device(device),
        best_model_path=best_path if features.saves_model else None,
        pretrained_identity=start.identity, feature_dim=features.dim,
        feature_effective_rank=rank, weight_decay=None, probe=new_probe_record(grid),
        timings={"feature_extraction_s": feature_time})
    print(f"training {len(grid)} linear heads (weight decays {grid}): {NUM_EPOCHS} epochs x "
          f"{steps_per_epoch} steps, {'cached' if FEATURE_CACHE else 'on-the-fly'} features")
    best_head, step, head_timer = None, 0, time.time()
    for epoch in range(NUM_EPOCHS):
        epoch_started = time.time()
        sums = torch.zeros(2, len(heads), device=device)  # loss x images, correct: per head
        for rows, x in tqdm(train_batches(epoch, source), total=steps_per_epoch, leave=False,
                            disable=FEATURE_CACHE, desc=f"epoch {epoch + 1}/{NUM_EPOCHS}"):
            lr = warmup_cosine(step, NUM_EPOCHS * steps_per_epoch, 0, lr_peak)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch_labels = labels["train"][rows]
            logits = torch.stack([head(x) for head in heads])  # (heads, batch, classes)
            losses = F.cross_entropy(logits.flatten(0, 1), batch_labels.repeat(len(heads)),
                                     reduction="none").view(len(heads), -1).mean(1)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # each head's gradient is that of its own loss
            optimizer.step()
            sums += torch.stack([losses.detach() * len(rows),
                                 (logits.argmax(dim=2) == batch_labels).sum(1)])
            step += 1
        if not torch.isfinite(sums).all():
            fail(f"a head's loss became non-finite at epoch {epoch + 1}. Lower --base_lr.")
        chosen = validate_heads(heads, sums / seen, (standardized["validation"],
                                                     labels["validation"]), metrics, epoch)
        if chosen is not None:  # the standardisation folded in: it works on raw features
            best_head = fold_standardization(chosen, mean, std)
            save_best(features, best_head, metrics)
        print(record_probe_epoch(metrics, epoch, lr, time.time() - epoch_started), flush=True)
        metrics["wall_time_s"] = time.time() - started
        atomic_save(metrics, metrics_path)
    metrics["timings"]["head_training_s"] = time.time() - head_timer
    print(probe_summary(metrics))

    # ---- test: the chosen head, once; kNN; the frozen-backbone check ----
    timer = time.time()
    test_loss, _, predictions = evaluate(best_head, values["test"], labels["test"])
    knn = knn_accuracies(features, values, labels)
    metrics.update(test_results(labels["test"], predictions, test_loss, class_names),
                   knn=knn["test"], knn_val=knn["validation"])
    print(f"check: {features.assert_unchanged(frozen_before)}")
    metrics["timings"]["test_and_knn_s"] = time.time() - timer
    metrics["wall_time_s"] = time.time() - started
    atomic_save(metrics, metrics_path)
    print_summary(metrics, metrics_path)


if __name__ == "__main__":
    run(main)
