"""Linear evaluation of a SimSiam backbone on EuroSAT: frozen backbone + linear head,
best epoch on validation.csv.

    python Linear_evaluation.py                     # newest outputs/simsiam_<arch>_epoch_X.pth,
                                                    # its own arch and size
    python Linear_evaluation.py --pretrained_path=outputs/simsiam_resnet18_epoch_90.pth
    python Linear_evaluation.py --pretrained_path=random --arch=resnet18 --image_size=64
                                                    # random-init baseline

The backbone is rebuilt from the checkpoint's own config, frozen (requires_grad False, and eval()
so BatchNorm statistics do not move) and checked at the end to be bit-for-bit unchanged. The head
trains on train.csv, the epoch with the best validation.csv accuracy is kept, and that head is
scored once on test.csv. Also reported: weighted kNN accuracy on test.csv (bank = train.csv
features, cosine, k=20 and k=200), a protocol with no training.

FEATURE_CACHE = True (default): the backbone sees each image once (features of
train/validation/test are computed up front), then the head trains on those features: 90 epochs
take seconds. FEATURE_CACHE = False runs every batch of every epoch through the frozen backbone
(needed for AUGMENT = True); with AUGMENT = False it gives the same result as the cached mode for
the same SEED (same batches in the same order, same features up to float error).

Writes into OUTPUT_DIR (every write atomic; a `_random` suffix for the random baseline so it
never overwrites):
  linear_eval_metrics.pth               after every epoch, and at the end with the test results
  linear_eval_eurosat_best_model.pth    whenever validation accuracy improves
                                        (classify_image.py can use it)
Prints one line per epoch, then a summary:
  epoch 3/90 train loss 0.4100 acc 87.2% val loss 0.4500 acc 86.1% lr 0.0999 (best 86.1% @3) 0.4 s
  test accuracy 85.9% (loss 0.4412) with the head of epoch 71 (val 86.4%); kNN k20 80.1% k200 78.3%
"""
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import simsiam_data as data
from runtime import (AMP_MODES, above, amp_dtype_for, at_least, atomic_save, autocast_for, between,
                     channels_last_for, check_fits, check_settings, configure, describe_device,
                     device_and_precision, epoch_generator, fail, one_of, pick_device,
                     prepare_output_dir, run, seed_everything, warmup_cosine)
from simsiam_model import (ARCHS, LINEAR_METRICS_KIND, Classifier,
                           classifier_checkpoint, evaluation_outputs,
                           effective_rank, evaluation_memory, evaluation_metrics, knn_predict,
                           record_evaluation_epoch, start_evaluation, test_results)

# -------------------------------------------------------------------------------------------------
EUROSAT_DIR = "datae/EuroSAT"  # JPEG class folders + train/validation/test.csv, label_map.json
OUTPUT_DIR = "outputs"  # train_simsiam.py's simsiam_<arch>_epoch_X.pth files; results go here too
CACHE_DIR = "cache"  # decoded-once image arrays; safe to delete
PRETRAINED_PATH = ""  # "" = newest OUTPUT_DIR/simsiam_<arch>_epoch_X.pth | a checkpoint | "random"
ARCH = "resnet50"  # random baseline only (checkpoints name theirs): resnet18 | resnet34 | resnet50
SMALL_STEM = False  # 3x3 stride-1 stem for the random baseline only (a checkpoint names its own)
STEM_STRIDE = 1  # that small stem's conv stride, random baseline only (a checkpoint names its own)
IMAGE_SIZE = 0  # input side in px; 0 = the checkpoint's own IMAGE_SIZE (224 for random)
BATCH_SIZE = 256  # images per head step and per backbone forward pass; lr scales with it
NUM_EPOCHS = 90  # head epochs (cheap with FEATURE_CACHE; each is a full backbone pass without it)
BASE_LR = 0.1  # head lr per 256 images: lr = BASE_LR * BATCH_SIZE / 256, half-cosine to 0 per step
MOMENTUM = 0.9  # SGD momentum of the head
WEIGHT_DECAY = 0.0  # head weight decay (SimSiam's linear evaluation uses 0)
FEATURE_CACHE = True  # True: backbone features computed once | False: backbone pass every batch
AUGMENT = False  # light on-device train augment (crop 0.8-1, h/v flips); needs FEATURE_CACHE=False
KNN_TEMPERATURE = 0.2  # kNN vote weight exp(cosine / T), used for both k=20 and k=200 (paper: 0.2)
SEED = 0  # seeds the batch order (and augmentation, and the random baseline's initialisation)
DEVICE = "auto"  # auto | cuda | cpu | mps
AMP = "auto"  # backbone: auto (GPU: native bf16 or fp16; CPU: fp32) | bf16 | fp16 | off; head fp32
CHANNELS_LAST = True  # channels_last memory format on CUDA and under bf16 on a CPU (faster convs)
# -------------------------------------------------------------------------------------------------

# Why SGD on standardised features: features are standardised with the train-set mean and std, so
# one lr fits any backbone (random-init and pre-trained features differ in scale by orders of
# magnitude), and SGD with momentum and a cosine schedule on a convex problem is the paper's recipe
# (LARS there is only for its batch of 4096). The head starts at zero (softmax regression needs no
# symmetry breaking), so only SEED's batch order matters. The standardisation is folded into the
# saved head, which therefore works on raw backbone features.
SPLITS = ("train", "validation", "test")


def settings_rules():
    return {"ARCH": one_of(*ARCHS), "STEM_STRIDE": one_of(1, 2),
            "IMAGE_SIZE": ((lambda v: v == 0 or v >= 8),
                           "0 (the checkpoint's own size) or at least 8"),
            "BATCH_SIZE": at_least(1), "NUM_EPOCHS": at_least(1), "BASE_LR": above(0),
            "MOMENTUM": between(0.0, 1.0), "WEIGHT_DECAY": at_least(0),
            "KNN_TEMPERATURE": above(0), "SEED": at_least(0), "AMP": one_of(*AMP_MODES)}


def embed(backbone, x, device, amp_dtype, channels_last):
    """Frozen-backbone features of a normalised NCHW batch, as fp32."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast_for(device, amp_dtype):
        return backbone(x).float()


def extract_features(backbone, images, image_size, device, amp_dtype, channels_last, desc):
    """Features of every image of `images` in file order
    (evaluation transform, no augmentation)."""
    batches = data.iterate_batches(images, np.arange(len(images)), BATCH_SIZE, device,
                                   drop_last=False)
    return torch.cat([embed(backbone, data.eval_batch(batch, image_size), device, amp_dtype,
                            channels_last)
                      for _, batch in tqdm(batches, total=math.ceil(len(images) / BATCH_SIZE),
                                           desc=desc, leave=False)])


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


def frozen_classifier(backbone, feature_dim, num_classes, device, channels_last):
    """Backbone + a zero linear head, with only the head trainable and the backbone in eval() so
    that BatchNorm uses, and keeps, its pre-trained running statistics."""
    model = Classifier(backbone, feature_dim, num_classes)
    for p in model.backbone.parameters():
        p.requires_grad = False
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    model = model.to(device,
                     memory_format=torch.channels_last if channels_last else torch.preserve_format)
    model.backbone.eval()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == feature_dim * num_classes + num_classes, (
        f"{trainable} trainable parameters; only the head's")
    return model


def save_best(classifier, config, class_names, epoch, val_acc, pretrained, best_path):
    print(f"saving best head (epoch {epoch + 1}, val {val_acc:.2f}%) to {best_path}")
    atomic_save(classifier_checkpoint(classifier, config, class_names, data.IMAGENET_MEAN,
                                      data.IMAGENET_STD,
                                      extra={"epoch": epoch + 1, "val_acc": val_acc,
                                             "source": "linear_eval",
                                             "pretrained_path": pretrained,
                                             "standardisation": "folded into the head"}),
                best_path)


def test_and_report(model, best_head, features, splits, labels, frozen_before, image_size, device,
                    amp_dtype, channels_last):
    """The test entries of the metrics: the best head (folded, on raw features) and weighted kNN on
    test.csv, after checking that the frozen backbone is bit-for-bit what was loaded (weights and
    BatchNorm statistics)."""
    test_features = features["test"] if FEATURE_CACHE else extract_features(
        model.backbone, splits["test"].images, image_size, device, amp_dtype, channels_last,
        "features test")
    test_loss, _, predictions = evaluate(best_head, test_features, labels["test"])
    class_names = splits["train"].class_names
    knn = {}
    for k in (20, 200):
        knn_predictions = knn_predict(features["train"], labels["train"], test_features,
                                      len(class_names), k=k, temperature=KNN_TEMPERATURE)
        knn[f"k{k}"] = (knn_predictions == labels["test"]).float().mean().item() * 100
    changed = [k for k, v in model.backbone.state_dict().items()
               if not torch.equal(v, frozen_before[k])]
    if changed:
        fail(f"the frozen backbone changed during linear evaluation ({len(changed)} tensors, "
             f"e.g. {changed[:3]}); this is a bug: the results are not a linear evaluation.")
    trainable = sum(p.numel() for p in model.head.parameters())
    print(f"check: frozen backbone unchanged ({len(frozen_before)} tensors identical), "
          f"{trainable} trainable parameters (the head)")
    return dict(test_results(labels["test"], predictions, test_loss, class_names), knn=knn)


def main():
    config, _ = configure(globals())
    check_settings(config, settings_rules())
    check_fits(evaluation_memory(config, train=False), pick_device(DEVICE))
    if AUGMENT and FEATURE_CACHE:
        fail("AUGMENT=True needs --feature_cache=False: augmented images change every epoch, so "
             "their features cannot be computed once.", code=2)
    started = time.time()
    device = pick_device(DEVICE)
    amp_dtype, precision_reason = amp_dtype_for(device, AMP)
    channels_last = channels_last_for(device, amp_dtype, CHANNELS_LAST)
    seed_everything(SEED)
    metrics_path, best_path, lock_name = evaluation_outputs(config, "linear_eval_metrics",
                                                            "linear_eval_eurosat_best_model")
    prepare_output_dir(OUTPUT_DIR, lock_name)

    # ---- frozen backbone rebuilt from the checkpoint's own config, and the data ----
    lr_peak = BASE_LR * BATCH_SIZE / 256
    device_line = (device_and_precision(device, amp_dtype, precision_reason)
                   + f"; head lr {lr_peak:.4f} (= {BASE_LR} x {BATCH_SIZE} / 256)")
    backbone, feature_dim, config, header = start_evaluation(config, device_line, "evaluating",
                                                             (metrics_path, best_path))
    image_size, pretrained = config["IMAGE_SIZE"], config["PRETRAINED_PATH"]  # as used
    print(header)
    splits, labels = data.load_eurosat_splits(EUROSAT_DIR, CACHE_DIR, device)
    class_names = splits["train"].class_names
    num_classes, num_train = len(class_names), len(splits["train"].labels)
    print("images: " + ", ".join(f"{s} {len(splits[s].labels)}" for s in splits)
          + f"; {num_classes} classes")
    model = frozen_classifier(backbone, feature_dim, num_classes, device, channels_last)
    frozen_before = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}

    # ---- features computed once: the train set always (standardisation statistics, kNN bank) ----
    timer = time.time()
    features = {split: extract_features(model.backbone, splits[split].images, image_size, device,
                                        amp_dtype, channels_last, f"features {split}")
                for split in (SPLITS if FEATURE_CACHE else ("train",))}
    feature_time = time.time() - timer
    count = sum(len(splits[s].labels) for s in features)
    print(f"feature extraction: {count} images ({', '.join(features)}) in {feature_time:.1f} s "
          f"({count / feature_time:.0f} img/s)")
    # standardised features: one lr fits any backbone, whatever the scale of its features
    mean, std = features["train"].mean(dim=0), features["train"].std(dim=0).clamp_min(1e-6)
    rank = effective_rank(features["train"])
    print(f"feature effective rank {rank:.1f} of {feature_dim} "
          "(train; low = dimensional collapse)")
    augment = data.BatchAugment(image_size, crop_scale=(0.8, 1.0), flip_p=0.5, vflip_p=0.5,
                                jitter_p=0.0, gray_p=0.0, blur_p=0.0) if AUGMENT else None

    # ---- head training: SGD on standardised features, best epoch on validation.csv ----
    optimizer = torch.optim.SGD(model.head.parameters(), lr=lr_peak, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)
    steps_per_epoch = math.ceil(num_train / BATCH_SIZE)
    metrics = evaluation_metrics(LINEAR_METRICS_KIND, config, pretrained, image_size, class_names,
                                 splits["test"].paths, best_path, describe_device(device),
                                 feature_dim=feature_dim, feature_effective_rank=rank,
                                 timings={"feature_extraction_s": feature_time})
    best_head, step = None, 0
    # what the best model file holds: the folded head
    saved = Classifier(model.backbone, feature_dim, num_classes)
    print(f"training the linear head: {NUM_EPOCHS} epochs x {steps_per_epoch} steps, "
          f"{'cached features' if FEATURE_CACHE else 'backbone pass every batch'}"
          f"{', augmented' if AUGMENT else ''}")
    head_timer = time.time()
    for epoch in range(NUM_EPOCHS):
        epoch_started = time.time()
        order = torch.randperm(num_train, generator=epoch_generator(SEED, epoch)).numpy()
        # the same batches, in the same order, as iterate_batches gives the on-the-fly mode
        if FEATURE_CACHE:
            rows_and_images = ((rows, None)
                               for rows in data.batch_rows(order, BATCH_SIZE, drop_last=False))
        else:
            augment_generator = epoch_generator(SEED, epoch, augment_stream=1)
            rows_and_images = data.iterate_batches(splits["train"].images, order, BATCH_SIZE,
                                                   device, drop_last=False)
        loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
        for rows, images in tqdm(rows_and_images, total=steps_per_epoch, leave=False,
                                 desc=f"epoch {epoch + 1}/{NUM_EPOCHS}", disable=FEATURE_CACHE):
            rows = torch.from_numpy(rows).to(device)
            if FEATURE_CACHE:
                batch_features = features["train"][rows]
            else:
                x = (augment(images, augment_generator) if augment
                     else data.eval_batch(images, image_size))
                batch_features = embed(model.backbone, x, device, amp_dtype, channels_last)
            lr = warmup_cosine(step, NUM_EPOCHS * steps_per_epoch, 0, lr_peak)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch_labels = labels["train"][rows]
            logits = model.head((batch_features - mean) / std)
            loss = F.cross_entropy(logits, batch_labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(rows)
            correct += (logits.argmax(dim=1) == batch_labels).sum()
            step += 1
        train_loss, train_acc = loss_sum.item() / num_train, correct.item() / num_train * 100
        if not math.isfinite(train_loss):
            fail(f"the head's loss became {train_loss} at epoch {epoch + 1}. Lower --base_lr.")
        val_features = features["validation"] if FEATURE_CACHE else extract_features(
            model.backbone, splits["validation"].images, image_size, device, amp_dtype,
            channels_last, "features val")
        val_loss, val_acc, _ = evaluate(model.head, (val_features - mean) / std,
                                        labels["validation"])
        if val_acc > metrics["best_val_acc"] or best_head is None:
            # the standardisation is folded into the saved head, which therefore works on raw
            # backbone features
            best_head = saved.head = fold_standardization(model.head, mean, std)
            metrics.update(best_epoch=epoch + 1, best_val_acc=val_acc)
            save_best(saved, config, class_names, epoch, val_acc, pretrained, best_path)
        line = record_evaluation_epoch(metrics, epoch, NUM_EPOCHS, {
            "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
            "val_acc": val_acc, "lr": lr, "epoch_time_s": time.time() - epoch_started})
        metrics["wall_time_s"] = time.time() - started
        atomic_save(metrics, metrics_path)
        print(line, flush=True)
    head_time = time.time() - head_timer

    # ---- test ----
    timer = time.time()
    metrics.update(test_and_report(model, best_head, features, splits, labels, frozen_before,
                                   image_size, device, amp_dtype, channels_last),
                   wall_time_s=time.time() - started)
    metrics["timings"].update(head_training_s=head_time, test_and_knn_s=time.time() - timer)
    atomic_save(metrics, metrics_path)
    knn = metrics["knn"]
    print(f"test accuracy {metrics['test_acc']:.2f}% (loss {metrics['test_loss']:.4f}) with the "
          f"head of epoch {metrics['best_epoch']} (val {metrics['best_val_acc']:.2f}%); kNN k20 "
          f"{knn['k20']:.2f}% k200 {knn['k200']:.2f}% (temperature {KNN_TEMPERATURE})")
    print("per-class test accuracy: "
          + ", ".join(f"{n} {a:.1f}%" for n, a in metrics["per_class_acc"].items()))
    print(f"wall time {metrics['wall_time_s']:.1f} s: feature extraction {feature_time:.1f} s, "
          f"head training {head_time:.1f} s ({head_time / NUM_EPOCHS:.2f} s/epoch, "
          f"{'cached features' if FEATURE_CACHE else 'on the fly'}), test + kNN "
          f"{metrics['timings']['test_and_knn_s']:.1f} s")
    print(f"saving metrics to {metrics_path}")


if __name__ == "__main__":
    run(main)
