"""Linear evaluation of a SimSiam backbone on EuroSAT: frozen backbone + linear head, best epoch on validation.csv.

    python Linear_evaluation.py                     # newest outputs/simsiam_<arch>_epoch_X.pth, its own arch and size
    python Linear_evaluation.py --pretrained_path=outputs/simsiam_resnet18_epoch_90.pth
    python Linear_evaluation.py --pretrained_path=random --arch=resnet18 --image_size=64   # random-init baseline

The backbone is rebuilt from the checkpoint's own config, frozen (requires_grad False, and eval() so BatchNorm
statistics do not move) and checked at the end to be bit-for-bit unchanged. The head trains on train.csv, the
epoch with the best validation.csv accuracy is kept, and that head is scored once on test.csv. Also reported:
weighted kNN accuracy on test.csv (bank = train.csv features, cosine, k=20 and k=200), a protocol with no training.

FEATURE_CACHE = True (default): the backbone sees each image once (features of train/validation/test are computed
up front), then the head trains on those features: 90 epochs take seconds. FEATURE_CACHE = False runs every batch
of every epoch through the frozen backbone (needed for AUGMENT = True); with AUGMENT = False it gives the same
result as the cached mode for the same SEED (same batches in the same order, same features up to float error).

Writes into OUTPUT_DIR (every write atomic; a `_random` suffix for the random baseline so it never overwrites):
  linear_eval_metrics.pth               after every epoch, and at the end with the test results
  linear_eval_eurosat_best_model.pth    whenever validation accuracy improves (classify_image.py can use it)
Prints one line per epoch, then a summary:
    epoch 3/90 train loss 0.4100 acc 87.2% val loss 0.4500 acc 86.1% lr 0.0999 (best 86.1% @3) 0.4 s
    test accuracy 85.9% (loss 0.4412) with the head of epoch 71 (val 86.4%); kNN k20 80.1% k200 78.3%
Measured on our shared 2-core CPU, ResNet-18 at 64 px, random init (--pretrained_path=random --arch=resnet18
--image_size=64): features of all 24,300 images 197 s, then 90 head epochs 53 s (0.6 s each), 268 s in all; test
68.5%, kNN k20 47.8%, k200 41.7%. Without the cache, one epoch (train + validation through the backbone) took
52-132 s, so 90 epochs would take hours on a CPU.
"""
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import simsiam_data as data
from runtime import (CheckpointError, amp_dtype_for, atomic_save, autocast_for, channels_last_for, configure,
                     describe_device, library_versions, pick_device, seed_everything)
from simsiam_model import (Classifier, backbone_for_evaluation, classifier_checkpoint, effective_rank, knn_predict,
                           stem_label)

# ----------------------------------------------------------------------------------------------------------------
EUROSAT_DIR = "datae/EuroSAT"  # class folders of JPEGs + train.csv, validation.csv, test.csv, label_map.json
OUTPUT_DIR = "outputs"  # where train_simsiam.py writes simsiam_<arch>_epoch_X.pth; results are written here too
CACHE_DIR = "cache"  # decoded-once image arrays; safe to delete
PRETRAINED_PATH = ""  # "" = newest simsiam_<arch>_epoch_X.pth in OUTPUT_DIR | a checkpoint path | "random"
ARCH = "resnet50"  # backbone of the random baseline only (a checkpoint names its own): resnet18 | resnet34 | resnet50
SMALL_STEM = False  # 3x3 stride-1 stem for the random baseline only (a checkpoint names its own)
STEM_STRIDE = 1  # stride of that small stem's conv, for the random baseline only (a checkpoint names its own)
IMAGE_SIZE = 0  # input side in px; 0 = the checkpoint's own IMAGE_SIZE (224 for random)
BATCH_SIZE = 256  # images per head step and per backbone forward pass; lr scales with it
NUM_EPOCHS = 90  # head epochs (cheap with FEATURE_CACHE; each is a full backbone pass without it)
BASE_LR = 0.1  # head lr per 256 images: lr = BASE_LR * BATCH_SIZE / 256, half-cosine to 0 per step
MOMENTUM = 0.9  # SGD momentum of the head
WEIGHT_DECAY = 0.0  # head weight decay (SimSiam's linear evaluation uses 0)
FEATURE_CACHE = True  # True: backbone features computed once | False: through the backbone every batch
AUGMENT = False  # light device-side augmentation of train batches (crop 0.8-1, h/v flips); needs FEATURE_CACHE=False
KNN_TEMPERATURE = 0.2  # kNN vote weight exp(cosine / T), used for both k=20 and k=200 (paper: 0.2)
SEED = 0  # seeds the batch order (and augmentation, and the random baseline's initialisation)
DEVICE = "auto"  # auto | cuda | cpu | mps
AMP = True  # mixed precision for the backbone on CUDA (bf16 where supported, else fp16); the head stays fp32
CHANNELS_LAST = True  # channels_last memory format on CUDA and with CPU_BF16 (faster convolutions)
CPU_BF16 = False  # bf16 autocast on a CPU with native bf16 (AVX512-BF16/AMX): 1.8x faster on ours; fp32 if absent
# ----------------------------------------------------------------------------------------------------------------

# Why SGD on standardised features: features are standardised with the train-set mean and std, so one lr fits
# any backbone (random-init and pre-trained features differ in scale by orders of magnitude), and SGD with momentum
# and a cosine schedule on a convex problem is the paper's recipe (LARS there is only for its batch of 4096).
# The head starts at zero (softmax regression needs no symmetry breaking), so only SEED's batch order matters.
# The standardisation is folded into the saved head, which therefore works on raw backbone features.
SPLITS = ("train", "validation", "test")


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def load_backbone():
    """(backbone, feature_dim, backbone settings for the saved classifier's config, pretrained path or 'random')."""
    try:
        backbone, feature_dim, settings, source, pretrained_size = backbone_for_evaluation(
            PRETRAINED_PATH, OUTPUT_DIR, ARCH, SMALL_STEM, IMAGE_SIZE, STEM_STRIDE)
    except CheckpointError as error:
        fail(str(error))
    if IMAGE_SIZE and IMAGE_SIZE != pretrained_size:
        print(f"note: evaluating at {IMAGE_SIZE} px; the checkpoint was pre-trained at {pretrained_size} px")
    return backbone, feature_dim, settings, source


def load_split(split):
    """(uint8 NHWC image array, labels, paths, class names) of one split, decoded once into CACHE_DIR."""
    try:
        return data.load_eurosat_cached(EUROSAT_DIR, split, CACHE_DIR,
                                        progress=lambda it: tqdm(it, desc=f"decoding {split}"))
    except ValueError as error:
        fail(str(error))


def embed(backbone, x, device, amp_dtype, channels_last):
    """Frozen-backbone features of a normalised NCHW batch, as fp32."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast_for(device, amp_dtype):
        return backbone(x).float()


def extract_features(backbone, array, image_size, device, amp_dtype, channels_last, desc):
    """Features of every image of `array` in file order (evaluation transform, no augmentation)."""
    batches = data.iterate_batches(array, np.arange(len(array)), BATCH_SIZE, device, drop_last=False)
    return torch.cat([embed(backbone, data.eval_batch(images, image_size), device, amp_dtype, channels_last)
                      for images in tqdm(batches, total=math.ceil(len(array) / BATCH_SIZE), desc=desc, leave=False)])


def batch_indices(order):
    """The rows of each batch exactly as iterate_batches reads them (sorted within a batch): the cached and the
    on-the-fly modes see the same batches in the same order."""
    return [np.sort(order[start:start + BATCH_SIZE]) for start in range(0, len(order), BATCH_SIZE)]


@torch.no_grad()
def evaluate(head, features, labels):
    logits = head(features)
    predictions = logits.argmax(dim=1)
    return F.cross_entropy(logits, labels).item(), (predictions == labels).float().mean().item() * 100, predictions


def fold_standardisation(head, mean, std):
    """A head on raw features equal to `head` on (features - mean) / std: W' = W / std, b' = b - W' mean."""
    folded = nn.Linear(head.in_features, head.out_features).to(mean.device)
    with torch.no_grad():
        folded.weight.copy_(head.weight / std)
        folded.bias.copy_(head.bias - folded.weight @ mean)
    return folded


def main():
    config, _ = configure(globals())
    started = time.time()
    if NUM_EPOCHS < 1 or BATCH_SIZE < 1:
        fail("NUM_EPOCHS and BATCH_SIZE must be at least 1.")
    if AUGMENT and FEATURE_CACHE:
        fail("AUGMENT=True needs --feature_cache=False: augmented images change every epoch, so their features "
             "cannot be computed once.")
    device = pick_device(DEVICE)
    seed_everything(SEED)
    amp_dtype = amp_dtype_for(device, AMP, CPU_BF16)
    channels_last = channels_last_for(device, amp_dtype, CHANNELS_LAST)
    lr_peak = BASE_LR * BATCH_SIZE / 256
    suffix = "_random" if PRETRAINED_PATH == "random" else ""
    metrics_path = os.path.join(OUTPUT_DIR, f"linear_eval_metrics{suffix}.pth")
    best_path = os.path.join(OUTPUT_DIR, f"linear_eval_eurosat_best_model{suffix}.pth")

    # ---- frozen backbone ----
    backbone, feature_dim, backbone_config, pretrained = load_backbone()
    image_size = backbone_config["IMAGE_SIZE"]
    config = dict(config, **backbone_config, PRETRAINED_PATH=pretrained)  # resolved: what was actually used
    print(f"config: {config}")
    print(f"device: {describe_device(device)}, backbone precision: {amp_dtype or 'fp32'}, head lr {lr_peak:.4f} "
          f"(= {BASE_LR} x {BATCH_SIZE} / 256)")
    print(f"backbone: {config['ARCH']}{stem_label(config['SMALL_STEM'], config['STEM_STRIDE'])} from {pretrained}, "
          f"{feature_dim}-d features, {image_size} px")
    if suffix:
        print(f"random-init baseline: results go to {metrics_path} and {best_path}")

    # ---- data ----
    splits = {split: load_split(split) for split in SPLITS}
    class_names = splits["train"][3]
    num_classes = len(class_names)
    labels = {split: torch.tensor(splits[split][1], device=device) for split in SPLITS}
    print("images: " + ", ".join(f"{split} {len(splits[split][0])}" for split in SPLITS) + f"; {num_classes} classes")

    model = Classifier(backbone, feature_dim, num_classes)
    for p in model.backbone.parameters():
        p.requires_grad = False
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    model.backbone.eval()  # BatchNorm uses (and keeps) its pre-trained running statistics
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == feature_dim * num_classes + num_classes, f"{trainable} trainable parameters; only the head's"
    frozen_before = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}

    # ---- features computed once: the train set always (standardisation statistics, kNN bank) ----
    timer = time.time()
    features = {split: extract_features(model.backbone, splits[split][0], image_size, device, amp_dtype, channels_last,
                                        f"features {split}")
                for split in (SPLITS if FEATURE_CACHE else ("train",))}
    feature_time = time.time() - timer
    count = sum(len(splits[s][0]) for s in features)
    print(f"feature extraction: {count} images ({', '.join(features)}) in {feature_time:.1f} s "
          f"({count / feature_time:.0f} img/s)")
    mean, std = features["train"].mean(dim=0), features["train"].std(dim=0).clamp_min(1e-6)
    rank = effective_rank(features["train"])
    print(f"feature effective rank {rank:.1f} of {feature_dim} (train; low = dimensional collapse)")
    augment = data.BatchAugment(image_size, crop_scale=(0.8, 1.0), flip_p=0.5, vflip_p=0.5, jitter_p=0.0,
                                gray_p=0.0, blur_p=0.0) if AUGMENT else None

    # ---- head training ----
    optimizer = torch.optim.SGD(model.head.parameters(), lr=lr_peak, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    num_train = len(splits["train"][0])
    steps_per_epoch = math.ceil(num_train / BATCH_SIZE)
    total_steps = NUM_EPOCHS * steps_per_epoch
    metrics = {"kind": "linear_eval_metrics", "config": config, "versions": library_versions(), "seed": SEED,
               "pretrained_path": pretrained, "arch": config["ARCH"], "image_size": image_size,
               "class_names": class_names, "epochs": [], "train_loss": [], "train_acc": [], "val_loss": [],
               "val_acc": [], "lr": [], "epoch_time_s": [], "best_epoch": 0, "best_val_acc": 0.0, "test_acc": None,
               "test_loss": None, "per_class_acc": None, "confusion_matrix": None, "test_predictions": None,
               "test_files": list(splits["test"][2]), "knn": None, "wall_time_s": 0.0, "best_model_path": best_path,
               "device": describe_device(device), "feature_dim": feature_dim,
               "feature_effective_rank": rank, "timings": {"feature_extraction_s": feature_time}}
    best_head, step = None, 0
    saved = Classifier(model.backbone, feature_dim, num_classes)  # what the best model file holds: the folded head
    print(f"training the linear head: {NUM_EPOCHS} epochs x {steps_per_epoch} steps, "
          f"{'cached features' if FEATURE_CACHE else 'backbone pass every batch'}"
          f"{', augmented' if AUGMENT else ''}")
    head_timer = time.time()
    for epoch in range(NUM_EPOCHS):
        epoch_started = time.time()
        order = torch.randperm(num_train, generator=torch.Generator().manual_seed(SEED * 100_003 + epoch)).numpy()
        index_batches = batch_indices(order)
        if FEATURE_CACHE:
            batches = (features["train"][torch.from_numpy(index).to(device)] for index in index_batches)
        else:
            aug_gen = torch.Generator().manual_seed(SEED * 100_003 + epoch * 7_919 + 1)
            images = data.iterate_batches(splits["train"][0], order, BATCH_SIZE, device, drop_last=False)
            batches = (embed(model.backbone, augment(b, aug_gen) if augment else data.eval_batch(b, image_size),
                             device, amp_dtype, channels_last) for b in images)
        loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
        for index, batch_features in tqdm(zip(index_batches, batches), total=steps_per_epoch, leave=False,
                                          desc=f"epoch {epoch + 1}/{NUM_EPOCHS}", disable=FEATURE_CACHE):
            lr = lr_peak * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch_labels = labels["train"][torch.from_numpy(index).to(device)]
            logits = model.head((batch_features - mean) / std)
            loss = F.cross_entropy(logits, batch_labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(index)
            correct += (logits.argmax(dim=1) == batch_labels).sum()
            step += 1
        train_loss, train_acc = loss_sum.item() / num_train, correct.item() / num_train * 100
        if not math.isfinite(train_loss):
            fail(f"the head's loss became {train_loss} at epoch {epoch + 1}. Lower --base_lr.")
        val_features = features["validation"] if FEATURE_CACHE else extract_features(
            model.backbone, splits["validation"][0], image_size, device, amp_dtype, channels_last, "features val")
        val_loss, val_acc, _ = evaluate(model.head, (val_features - mean) / std, labels["validation"])
        if val_acc > metrics["best_val_acc"] or best_head is None:
            best_head = saved.head = fold_standardisation(model.head, mean, std)
            metrics.update(best_epoch=epoch + 1, best_val_acc=val_acc)
            print(f"saving best head (epoch {epoch + 1}, val {val_acc:.2f}%) to {best_path}")
            atomic_save(classifier_checkpoint(saved, config, class_names, data.IMAGENET_MEAN, data.IMAGENET_STD,
                                              extra={"epoch": epoch + 1, "val_acc": val_acc, "source": "linear_eval",
                                                     "pretrained_path": pretrained,
                                                     "standardisation": "folded into the head"}), best_path)
        elapsed = time.time() - epoch_started
        for key, value in (("epochs", epoch + 1), ("train_loss", train_loss), ("train_acc", train_acc),
                           ("val_loss", val_loss), ("val_acc", val_acc), ("lr", lr), ("epoch_time_s", elapsed)):
            metrics[key].append(value)
        metrics["wall_time_s"] = time.time() - started
        atomic_save(metrics, metrics_path)
        print(f"epoch {epoch + 1}/{NUM_EPOCHS} train loss {train_loss:.4f} acc {train_acc:.1f}% val loss "
              f"{val_loss:.4f} acc {val_acc:.1f}% lr {lr:.4f} (best {metrics['best_val_acc']:.1f}% "
              f"@{metrics['best_epoch']}) {elapsed:.1f} s", flush=True)
    head_time = time.time() - head_timer

    # ---- test: the best head (folded, on raw features), and weighted kNN ----
    timer = time.time()
    test_features = features["test"] if FEATURE_CACHE else extract_features(
        model.backbone, splits["test"][0], image_size, device, amp_dtype, channels_last, "features test")
    test_loss, test_acc, predictions = evaluate(best_head, test_features, labels["test"])
    knn = {}
    for k in (20, 200):
        knn_predictions = knn_predict(features["train"], labels["train"], test_features, num_classes, k=k,
                                      temperature=KNN_TEMPERATURE)
        knn[f"k{k}"] = (knn_predictions == labels["test"]).float().mean().item() * 100
    test_time = time.time() - timer
    confusion = torch.bincount(labels["test"] * num_classes + predictions, minlength=num_classes ** 2)
    confusion = confusion.view(num_classes, num_classes).cpu()
    per_class = {name: (confusion[i, i] / confusion[i].sum() * 100).item() if confusion[i].sum() else float("nan")
                 for i, name in enumerate(class_names)}

    # the frozen backbone must be bit-for-bit what was loaded (weights and BatchNorm running statistics)
    changed = [k for k, v in model.backbone.state_dict().items() if not torch.equal(v, frozen_before[k])]
    if changed:
        fail(f"the frozen backbone changed during linear evaluation ({len(changed)} tensors, e.g. {changed[:3]}); "
             "this is a bug: the results are not a linear evaluation.")
    print(f"check: frozen backbone unchanged ({len(frozen_before)} tensors identical), "
          f"{trainable} trainable parameters (the head)")

    metrics.update(test_acc=test_acc, test_loss=test_loss, per_class_acc=per_class, confusion_matrix=confusion.tolist(),
                   test_predictions=predictions.cpu().tolist(), knn=knn, wall_time_s=time.time() - started)
    metrics["timings"].update(head_training_s=head_time, test_and_knn_s=test_time)
    atomic_save(metrics, metrics_path)
    print(f"test accuracy {test_acc:.2f}% (loss {test_loss:.4f}) with the head of epoch {metrics['best_epoch']} "
          f"(val {metrics['best_val_acc']:.2f}%); kNN k20 {knn['k20']:.2f}% k200 {knn['k200']:.2f}% "
          f"(temperature {KNN_TEMPERATURE})")
    print("per-class test accuracy: " + ", ".join(f"{name} {acc:.1f}%" for name, acc in per_class.items()))
    print(f"wall time {metrics['wall_time_s']:.1f} s: feature extraction {feature_time:.1f} s, head training "
          f"{head_time:.1f} s ({head_time / NUM_EPOCHS:.2f} s/epoch, "
          f"{'cached features' if FEATURE_CACHE else 'on the fly'}), test + kNN {test_time:.1f} s")
    print(f"saving metrics to {metrics_path}")


if __name__ == "__main__":
    main()
