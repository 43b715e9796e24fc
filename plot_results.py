"""Figures from the metrics files of pre-training, linear evaluation and fine-tuning
(seconds on a CPU).

    python plot_results.py                          # reads outputs/, writes figures/
    python plot_results.py --output_dir=runs/r18 --figures_dir=figures/r18
        --eurosat_dir=data/EuroSAT

Reads the metrics files named below from OUTPUT_DIR (and, only when finetune_metrics.pth holds no
test predictions, the classifier checkpoint it names) and writes PNGs at DPI into FIGURES_DIR:
    pretrain_curves.png         loss per epoch, lr schedule per step, z std against 1/sqrt(dim),
                                kNN per epoch with its floors (random init, image statistics)
    augmentations.png           pre-training images and their two augmented views, as the
                                pre-training config ran them
    linear_eval_curves.png      train / validation loss and accuracy per epoch, best epoch marked
    finetune_curves.png         the same for fine-tuning
    comparison.png              test accuracy of kNN, linear evaluation and fine-tuning; SimSiam
                                beside its floors: random init and image statistics
    confusion_linear_eval.png   test confusion matrix and per-class accuracy
    confusion_finetune.png      the same for fine-tuning
    predictions_finetune.png    test images with true and predicted class, wrong ones in red
    label_fractions.png         test accuracy against the share of train.csv's labels (log axis),
                                SimSiam beside both floors, when runs at label fractions exist
A missing or unreadable metrics file skips only its figures, with one line that says which step
writes it:
    skipping linear evaluation figures: outputs/linear_eval_metrics.pth not found
        (run python Linear_evaluation.py)
Prints `saving figure to figures/NAME.png` for each figure and ends with
    done: 8 figures written to figures/, 0 skipped
"""
import math
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, MaxNLocator  # noqa: E402

import simsiam_data as data  # noqa: E402
from runtime import (CheckpointError, at_least, atomic_write, check_settings,  # noqa: E402
                     configure, load_checkpoint, pick_device, prepare_output_dir, run)
from simsiam_model import (COLLAPSE_RATIO, FINETUNE_METRICS_KIND, IMAGE_STATS,  # noqa: E402
                           LINEAR_METRICS_KIND, PRETRAIN_METRICS_KIND, classifier_from_checkpoint,
                           evaluation_outputs)

# -------------------------------------------------------------------------------------------------
OUTPUT_DIR = "outputs"  # metrics of train_simsiam.py, Linear_evaluation.py and finetune_model.py
FIGURES_DIR = "figures"  # PNGs land here (created if missing)
PRETRAIN_METRICS = "pretrain_metrics.pth"  # file names in OUTPUT_DIR (absolute paths used as is)
LINEAR_METRICS = "linear_eval_metrics.pth"  # written by Linear_evaluation.py
FINETUNE_METRICS = "finetune_metrics.pth"  # written by finetune_model.py
LINEAR_RANDOM_METRICS = "linear_eval_metrics_random.pth"  # Linear_evaluation.py, random-init run
LINEAR_STATS_METRICS = "linear_eval_metrics_image_stats.pth"  # Linear_evaluation.py, image stats
FINETUNE_RANDOM_METRICS = "finetune_metrics_random.pth"  # finetune_model.py, random-init run
EUROSAT_DIR = ""  # folder with test.csv and label_map.json; "" = EUROSAT_DIR the metrics record
AUGMENT_IMAGES_DIR = ""  # images for augmentations.png; "" = DATA_DIR of the pre-training config
AUGMENT_IMAGES = 4  # rows of augmentations.png: original, view 1, view 2 of one image each
GRID_IMAGES = 24  # random test images in predictions_finetune.png
GRID_COLUMNS = 8  # images per row of predictions_finetune.png
DPI = 150  # resolution of every PNG, pixels per inch
SEED = 0  # picks the images shown and their augmentations
DEVICE = "auto"  # auto | cuda | cpu | mps; runs the classifier if the metrics hold no predictions
# -------------------------------------------------------------------------------------------------

# one colour per meaning, the same in every figure
COLOR = {"train": "tab:blue", "val": "tab:orange", "pretrained": "tab:green", "random": "tab:gray",
         "stats": "tab:brown", "wrong": "tab:red", "note": "0.45"}
written, skipped = [], []  # figure paths written, figure names skipped (for the summary line)


def figure_inches(name, count=0):
    """Width, height in inches of each figure; `count` is the number of images in the two image
    figures."""
    if name == "predictions_finetune":
        return GRID_COLUMNS * 1.6, math.ceil(count / GRID_COLUMNS) * 2.0 + 0.8
    if name == "augmentations":
        return 7.2, count * 2.4 + 1.0
    if name == "pretrain_curves":
        return 12.0, 8.0
    if name.startswith("confusion"):
        return 14.0, 6.4
    if name == "comparison":
        return 9.0, 5.6
    if name == "label_fractions":
        return 15.0, 4.8
    return 12.0, 4.8  # the training curves


def set_style():
    """The one look of every figure: white background, light grid, readable fonts, layout that fits
    its size."""
    plt.rcParams.update({
        "figure.dpi": DPI, "savefig.dpi": DPI, "figure.facecolor": "white",
        "savefig.facecolor": "white",
        "figure.constrained_layout.use": True, "font.size": 10, "axes.titlesize": 11,
        "axes.labelsize": 10,
        "figure.titlesize": 12, "legend.fontsize": 9, "legend.frameon": False, "axes.grid": True,
        "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
        "lines.linewidth": 1.8,
        "lines.markersize": 4, "image.interpolation": "nearest"})


def skip(what, reason, figures=()):
    print(f"skipping {what}: {reason}")
    skipped.extend(figures)


def load_metrics(name, kind, what, how, figures):
    """The metrics dict, or None after one line saying why `figures` are skipped."""
    path = os.path.join(OUTPUT_DIR, name)
    if not os.path.isfile(path):
        skip(what, f"{path} not found ({how})", figures)
        return None
    try:
        return load_checkpoint(path, kinds=(kind,))
    except CheckpointError as error:
        skip(what, str(error), figures)
        return None


def draw(name, build, *args):
    """Build one figure and save it; a problem in one figure (e.g. an older metrics schema) skips
    only that one."""
    try:
        fig = build(*args)
    except KeyError as error:
        plt.close("all")
        skip(name, f"the metrics have no {error} entry "
             "(written by an older version of the script?)", [name])
        return
    except Exception as error:  # noqa: BLE001 -- one bad figure must not cost the others
        plt.close("all")
        skip(name, f"{type(error).__name__}: {error}", [name])
        return
    if fig is None:  # the builder printed why
        return
    path = os.path.join(FIGURES_DIR, f"{name}.png")
    with atomic_write(path, durable=False) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    print(f"saving figure to {path}")
    written.append(path)


def folder_name(path):
    return f"'{os.path.basename(os.path.normpath(path))}'" if path else "(unknown folder)"


def run_label(m):
    """Which model and data: "resnet18, 64 px, SimSiam-pretrained (simsiam_resnet18_epoch_90.pth),
    EuroSAT 'X'"."""
    pretrained = m.get("pretrained_path", "?")
    if pretrained == IMAGE_STATS:
        return f"image statistics, EuroSAT {folder_name(m['config'].get('EUROSAT_DIR'))}"
    source = ("random init" if pretrained == "random"
              else f"SimSiam-pretrained ({os.path.basename(pretrained)})")
    return (f"{m['arch']}, {m['image_size']} px, {source}, "
            f"EuroSAT {folder_name(m['config'].get('EUROSAT_DIR'))}")


def eurosat_dir_of(m):
    return EUROSAT_DIR or m["config"].get("EUROSAT_DIR", "")


# -------------------------------------------------------------------------------------------------
# pre-training

def plot_pretraining(m):
    config, epochs = m["config"], m["epochs"]
    fig, ((ax_loss, ax_lr), (ax_std, ax_knn)) = plt.subplots(
        2, 2, figsize=figure_inches("pretrain_curves"))
    steps_per_epoch = m["global_step"] / len(epochs)
    if m.get("step_loss"):
        ax_loss.plot(np.array(m["step"]) / steps_per_epoch, m["step_loss"], ".",
                     color=COLOR["note"], alpha=0.5,
                     label="one batch (sampled every 20 steps and at epoch end)")
    ax_loss.plot(epochs, m["loss"], "-o", color=COLOR["train"], label="epoch mean")
    ax_loss.set(title="loss", xlabel="epoch",
                ylabel="negative cosine similarity (-1 = views agree)")
    ax_loss.legend()

    base_lr = config["BASE_LR"] * config["BATCH_SIZE"] * m.get("world_size", 1) / 256
    if m.get("step_lr"):
        ax_lr.plot(np.arange(1, len(m["step_lr"]) + 1), m["step_lr"], "-", color=COLOR["train"],
                   label="backbone + projector (per step)")
        ax_lr.set_xlabel("step")
        top = ax_lr.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch,
                                                      lambda e: e * steps_per_epoch))
        top.set_xlabel("epoch")
    else:
        ax_lr.plot(epochs, m["lr"], "-o", color=COLOR["train"],
                   label="backbone + projector (end of epoch)")
        ax_lr.set_xlabel("epoch")
    if config.get("FIX_PRED_LR"):
        ax_lr.axhline(base_lr, color=COLOR["val"], ls="--", label="predictor (fixed)")
    ax_lr.set(title=f"learning rate: {config['WARMUP_EPOCHS']} warm-up epoch(s), then cosine",
              ylabel="learning rate", ylim=(0, base_lr * 1.1))
    ax_lr.legend()

    healthy = m["z_std_healthy"]
    ax_std.plot(epochs, m["z_std"], "-o", color=COLOR["train"], label="measured")
    ax_std.axhline(healthy, color=COLOR["pretrained"], ls="--",
                   label=f"healthy: 1/sqrt({config['PROJ_DIM']}) = {healthy:.4f}")
    ax_std.axhspan(0, COLLAPSE_RATIO * healthy, color=COLOR["wrong"], alpha=0.12,
                   label=f"collapse warning (< {COLLAPSE_RATIO:g} x healthy)")
    ax_std.set(title="collapse signal", xlabel="epoch",
               ylabel="std of l2-normalised z, per dimension",
               ylim=(0, 1.3 * max(max(m["z_std"]), healthy)))
    ax_std.legend(loc="best")

    knn = [(e, v) for e, v in zip(epochs, m["knn_top1"]) if v is not None]
    if knn:
        ax_knn.plot(*zip(*knn), "-o", color=COLOR["val"], label="SimSiam")
        ax_knn.annotate(f"{knn[-1][1]:.1f}%", knn[-1], textcoords="offset points", xytext=(0, 8),
                        ha="center")
        # the floors: where the curve crosses them is where pre-training starts to pay. Each set
        # holds from the epoch it was measured for (a resume with other kNN settings measures
        # them again); files of before that record kept one set, for every epoch
        history = m.get("knn_floors_history") or (
            [{"from_epoch": 1, **m["knn_floors"]}] if m.get("knn_floors") else [])
        for index, floors in enumerate(history):
            end = (history[index + 1]["from_epoch"] - 0.5 if index + 1 < len(history)
                   else epochs[-1] + 0.5)
            for name in ("random init", "image statistics"):
                ax_knn.hlines(floors[name], floors["from_epoch"] - 0.5, end,
                              ls="--" if name == "random init" else ":",
                              color=COLOR["random" if name == "random init" else "stats"],
                              label=f"{name} (floor): {floors[name]:.1f}%"
                              + (f" from epoch {floors['from_epoch']}" if index else ""))
        if len(history) > 1:
            ax_knn.annotate("kNN settings changed: floors measured again", xy=(0.02, 0.94),
                            xycoords="axes fraction", fontsize=8, color=COLOR["note"])
        ax_knn.legend(loc="lower right")
        ax_knn.set(ylim=(0, 100))
    else:
        ax_knn.text(0.5, 0.5, "kNN monitor not run\n"
                    "(train_simsiam.py --knn_data_dir=EUROSAT_FOLDER turns it on)",
                    ha="center", va="center", transform=ax_knn.transAxes, color=COLOR["note"])
        ax_knn.set(xlim=(0.5, epochs[-1] + 0.5), ylim=(0, 100))
    ax_knn.set(title=f"kNN monitor (k={config.get('KNN_K', '?')}, validation split)",
               xlabel="epoch", ylabel="kNN top-1 accuracy (%)")
    for ax in (ax_loss, ax_std, ax_knn):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"SimSiam pre-training: {config['ARCH']}, {config['IMAGE_SIZE']} px, "
                 f"{m['num_images']} images from "
                 f"{folder_name(config.get('DATA_DIR'))}, epoch {epochs[-1]} of "
                 f"{config['NUM_EPOCHS']}, "
                 f"batch {config['BATCH_SIZE']} x {m.get('world_size', 1)}")
    return fig


def describe_ops(params, i, height, width):
    """The augmentations BatchAugment applied to sample i, e.g. 'crop 46%, flip, jitter, blur'."""
    x0, y0, x1, y1 = params["boxes"][i].tolist()
    ops = [f"crop {100 * (x1 - x0) * (y1 - y0) / (height * width):.0f}%"]
    ops += [name for name, key in (("flip", "flip"), ("v-flip", "vflip"), ("jitter", "jitter"),
                                   ("gray", "gray"), ("blur", "blur"), ("solarised", "solarize"))
            if bool(params[key][i])]
    ops += [f"turn {90 * int(params['turns'][i])}°"] if int(params["turns"][i]) else []
    return ", ".join(ops)


def plot_augmentations(m):
    config = m["config"]
    folder = AUGMENT_IMAGES_DIR or config.get("DATA_DIR", "")
    paths = data.list_images(folder) if os.path.isdir(folder) else []
    if not paths:
        skip("augmentations", f"no images found in {folder!r} (pass --augment_images_dir=FOLDER)",
             ["augmentations"])
        return None
    rng = np.random.default_rng(SEED)
    chosen = sorted(rng.choice(len(paths), min(AUGMENT_IMAGES, len(paths)), replace=False))
    images = [data.open_rgb(paths[i]) for i in chosen]
    size, augmentation = config["IMAGE_SIZE"], data.augmentation_settings(config)
    views, labels = [], []
    if config.get("PIPELINE", "fast") == "reference":
        torch.manual_seed(SEED)
        first, second = data.simsiam_transform_pair(size, **augmentation)
        views = [(first(image), second(image)) for image in images]
        labels = [("", "")] * len(images)
        pipeline = "reference pipeline: simsiam_transform_v1 / v2 (PIL, per sample)"
    else:
        first, second = data.batch_augment_pair(size, **augmentation)
        generator = torch.Generator().manual_seed(SEED)
        for image in images:
            batch = torch.from_numpy(np.array(image)).unsqueeze(0)  # one uint8 NHWC sample
            (v1, p1), (v2, p2) = first(batch, generator, True), second(batch, generator, True)
            views.append((v1[0], v2[0]))
            labels.append((describe_ops(p1, 0, image.height, image.width),
                           describe_ops(p2, 0, image.height, image.width)))
        pipeline = "fast pipeline: BatchAugment on uint8 tensors, as train_simsiam.py"
    mean, std = (torch.tensor(data.IMAGENET_MEAN).view(3, 1, 1),
                 torch.tensor(data.IMAGENET_STD).view(3, 1, 1))
    fig, axes = plt.subplots(len(images), 3, figsize=figure_inches("augmentations", len(images)),
                             squeeze=False)
    for row, (image, (v1, v2), (l1, l2)) in enumerate(zip(images, views, labels)):
        shown = [(image, f"original\n{image.width}x{image.height} px"), (v1, f"view 1\n{l1}"),
                 (v2, f"view 2\n{l2}")]
        for ax, (picture, title) in zip(axes[row], shown):
            if torch.is_tensor(picture):  # de-normalise to 0..1 RGB
                picture = (picture * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
            ax.imshow(picture)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    solarisation = ("view 2 solarised with p=0.2" if augmentation["solarize"]
                    else "no solarisation (the paper's symmetric recipe)")
    fig.suptitle(f"SimSiam augmentations ({config['ARCH']} pre-training config)\n"
                 f"{len(images)} images from {folder_name(folder)}, {size} px views")
    fig.supxlabel(f"{pipeline}\ncrop area {augmentation['crop_scale_min']}-1, {solarisation}",
                  fontsize=8, color=COLOR["note"])
    return fig


# -------------------------------------------------------------------------------------------------
# linear evaluation and fine-tuning

def plot_curves(m, baseline, stage):
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=figure_inches("curves"))
    epochs, best = m["epochs"], m["best_epoch"]
    for ax, key, unit in ((ax_loss, "loss", "cross-entropy loss"),
                          (ax_acc, "acc", "accuracy (%)")):
        ax.plot(epochs, m[f"train_{key}"], "-o", color=COLOR["train"], label="train")
        ax.plot(epochs, m[f"val_{key}"], "-o", color=COLOR["val"], label="validation")
        if baseline is not None:
            ax.plot(baseline["epochs"], baseline[f"val_{key}"], "--", color=COLOR["random"],
                    label="validation, random init")
        ax.axvline(best, color="black", ls=":", lw=1, label=f"best epoch ({best})")
        ax.set(xlabel="epoch", ylabel=unit, title=f"{unit.split(' (')[0]} per epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.plot(best, m["best_val_acc"], "*", ms=14, color=COLOR["val"], zorder=5)
    ax_acc.annotate(f"{m['best_val_acc']:.1f}%", (best, m["best_val_acc"]),
                    textcoords="offset points", xytext=(0, 9), ha="center")
    accuracies = (m["train_acc"] + m["val_acc"]
                  + (baseline["val_acc"] if baseline is not None else []))
    ax_acc.set_ylim(max(0.0, min(accuracies) - 5), 101)
    ax_loss.legend()
    ax_acc.legend(loc="best")
    test = f"test {m['test_acc']:.1f}%" if m.get("test_acc") is not None else "no test-set run"
    fig.suptitle(f"{stage}: {run_label(m)}\n"
                 f"best validation {m['best_val_acc']:.1f}% at epoch {best}, {test}")
    return fig


# the bars of comparison.png: SimSiam and the two floors it must clear
SERIES = (("SimSiam-pretrained", "pretrained"), ("random init", "random"),
          ("image statistics", "stats"))


def plot_comparison(runs):
    """runs: (label, SimSiam metrics, random-init metrics, image-statistics metrics; each or None)
    of linear evaluation and fine-tuning."""
    (_, *linear), _ = runs
    groups = []  # (x label, SimSiam value, random-init value, image-statistics value)
    for k in ("k20", "k200"):
        values = [(r.get("knn") or {}).get(k) if r is not None else None for r in linear]
        if any(v is not None for v in values):
            groups.append((f"kNN, k={k[1:]}\n(frozen features)", *values))
    for label, *results in runs:
        values = [r.get("test_acc") if r is not None else None for r in results]
        if any(v is not None for v in values):
            groups.append((label, *values))
    if not groups:
        skip("comparison", "no test accuracy recorded in any metrics file", ["comparison"])
        return None
    shown = [column for column in range(3) if any(g[1 + column] is not None for g in groups)]
    width = 0.8 / len(shown)
    fig, ax = plt.subplots(figsize=figure_inches("comparison"))
    for slot, column in enumerate(shown):
        offset = (slot - (len(shown) - 1) / 2) * width
        bars = [(x + offset, g[1 + column]) for x, g in enumerate(groups)
                if g[1 + column] is not None]
        drawn = ax.bar(*zip(*bars), width=width, label=SERIES[column][0],
                       color=COLOR[SERIES[column][1]])
        ax.bar_label(drawn, fmt="%.1f%%", padding=2, fontsize=8)
    reference = next(r for _, *results in runs for r in results if r is not None)
    chance = 100 / len(reference["class_names"])
    ax.axhline(chance, color="black", ls=":", lw=1,
               label=f"chance ({len(reference['class_names'])} classes)")
    ax.set_xticks(range(len(groups)), [g[0] for g in groups])
    ax.set(ylabel="top-1 accuracy on the test set (%)", ylim=(0, 112))
    ax.grid(axis="x", visible=False)
    ax.legend(loc="upper left", ncols=4)
    source = next((r["pretrained_path"] for _, r, *_ in runs if r is not None), None)
    weights = (f"SimSiam weights {os.path.basename(source)}" if source
               else "baselines only")
    networks = sorted({f"{r['arch']}, {r['image_size']} px" for _, *results in runs
                       for r in results if r is not None and r["pretrained_path"] != IMAGE_STATS})
    fig.suptitle(f"EuroSAT test accuracy: {' / '.join(networks) or 'no network'}, {weights}, "
                 f"data {folder_name(reference['config'].get('EUROSAT_DIR'))}"
                 + (f"\nnote: these runs used {len(networks)} different networks or input "
                    "sizes, so their bars do not compare like for like" if len(networks) > 1
                    else ""))
    return fig


def plot_confusion(m, stage, name):
    if m.get("confusion_matrix") is None:
        skip(name, "the metrics record no test-set confusion matrix (the test split was not run)",
             [name])
        return None
    names, counts = m["class_names"], np.array(m["confusion_matrix"])
    share = 100 * counts / counts.sum(axis=1, keepdims=True).clip(min=1)
    fig, (ax_cm, ax_bar) = plt.subplots(1, 2, figsize=figure_inches("confusion"),
                                        width_ratios=[1.5, 1])
    image = ax_cm.imshow(share, cmap="Blues", vmin=0, vmax=100)
    for (row, col), count in np.ndenumerate(counts):
        ax_cm.text(col, row, str(count), ha="center", va="center", fontsize=8,
                   color="white" if share[row, col] > 60 else "black")
    ticks = range(len(names))
    ax_cm.set_xticks(ticks, names, rotation=45, ha="right")
    ax_cm.set_yticks(ticks, names)
    ax_cm.set(xlabel="predicted class", ylabel="true class",
              title="confusion matrix (test images; colour = row %)")
    ax_cm.grid(False)
    fig.colorbar(image, ax=ax_cm, label="share of the true class (%)", shrink=0.8)
    per_class = m.get("per_class_acc") or {n: s for n, s in zip(names, np.diag(share))}
    values = [per_class[n] for n in names]
    bars = ax_bar.barh(names, values,
                       color=COLOR["pretrained" if m["pretrained_path"] != "random" else "random"])
    ax_bar.bar_label(bars, fmt="%.1f%%", padding=2, fontsize=8)
    title = "per-class accuracy"
    if m.get("test_acc") is not None:
        ax_bar.axvline(m["test_acc"], color="black", ls=":", lw=1)
        title += f" (dotted line: overall {m['test_acc']:.1f}%)"
    ax_bar.invert_yaxis()  # same class order as the matrix rows
    ax_bar.set(xlabel="test accuracy (%)", xlim=(0, 112), title=title)
    ax_bar.grid(axis="y", visible=False)
    fig.suptitle(f"{stage} on the EuroSAT test set ({int(counts.sum())} images): {run_label(m)}")
    return fig


def resolve_model_path(recorded):
    """The checkpoint as recorded, else the same file name in OUTPUT_DIR (outputs copied
    elsewhere)."""
    for candidate in (recorded, os.path.join(OUTPUT_DIR, os.path.basename(recorded or ""))):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


@torch.no_grad()
def predict(model_path, paths):
    """Class names predicted by a classifier checkpoint for image files (the project's evaluation
    transform)."""
    model, checkpoint, model_config = classifier_from_checkpoint(model_path)
    device = pick_device(DEVICE)
    model.to(device).eval()
    transform = data.eval_transform(model_config["image_size"], checkpoint["mean"],
                                    checkpoint["std"])
    batch = torch.stack([transform(data.open_rgb(p)) for p in paths]).to(device)
    return [checkpoint["class_names"][i] for i in model(batch).argmax(dim=1).tolist()]


def relative_name(path, root):
    """An image's name inside its EuroSAT folder ("Forest/Forest_1.jpg"), whatever the folder is
    called now."""
    return os.path.relpath(os.path.normpath(path), os.path.normpath(os.path.abspath(root)))


def recorded_predictions(m):
    """{image name inside the EuroSAT folder: predicted class name} of the recorded test run."""
    files, predictions = m.get("test_files") or [], m.get("test_predictions") or []
    if len(files) != len(predictions):
        return {}
    root = m["config"].get("EUROSAT_DIR", "")
    return {relative_name(f, root): m["class_names"][p] for f, p in zip(files, predictions)}


def plot_predictions(m):
    name = "predictions_finetune"
    folder = eurosat_dir_of(m)
    try:
        paths, labels, csv_names = data.read_eurosat_split(
            folder, os.path.join(folder, "test.csv"), os.path.join(folder, "label_map.json"),
            require_files=False)
    except ValueError as error:
        skip("prediction grid", f"{error} (pass --eurosat_dir=FOLDER)", [name])
        return None
    present = [i for i, p in enumerate(paths) if os.path.isfile(p)]
    if not present:
        skip("prediction grid",
             f"test images not found under {folder!r} (pass --eurosat_dir=FOLDER)", [name])
        return None
    # recorded predictions belong to file names, not to rows: test.csv may have been re-split
    recorded = recorded_predictions(m)
    known = [i for i in present if relative_name(paths[i], folder) in recorded]
    rng = np.random.default_rng(SEED)
    pool = known or present
    chosen = sorted(rng.choice(pool, min(GRID_IMAGES, len(pool)), replace=False))
    if known:
        predicted = [recorded[relative_name(paths[i], folder)] for i in chosen]
        source = "predictions recorded during the test run, matched by file name"
    else:
        if m.get("test_predictions") is not None:
            print(f"note: none of the {len(m['test_predictions'])} recorded test predictions is "
                  f"of an image in {folder}/test.csv; running the model instead")
        model_path = resolve_model_path(m.get("best_model_path"))
        if model_path is None:
            skip("prediction grid", "no test predictions recorded and the model "
                 f"{m.get('best_model_path')!r} "
                 "was not found", [name])
            return None
        predicted = predict(model_path, [paths[i] for i in chosen])
        source = f"predicted now by {os.path.basename(model_path)}"
    truth = [csv_names[labels[i]] for i in chosen]
    rows = math.ceil(len(chosen) / GRID_COLUMNS)
    fig, axes = plt.subplots(rows, GRID_COLUMNS, figsize=figure_inches(name, len(chosen)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    wrong = 0
    for ax, i, true_name, predicted_name in zip(axes.flat, chosen, truth, predicted):
        ok = true_name == predicted_name
        wrong += not ok
        ax.axis("on")
        ax.imshow(data.open_rgb(paths[i]))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for spine in ax.spines.values():  # a red frame marks a mistake
            spine.set(visible=not ok, color=COLOR["wrong"], linewidth=3)
        ax.set_title(f"true: {true_name}\npred: {predicted_name}", fontsize=7,
                     color="black" if ok else COLOR["wrong"])
    fig.suptitle(f"Fine-tuned {run_label(m)}\n"
                 f"{len(chosen)} random test images, {wrong} wrong (red); {source}")
    return fig


# -------------------------------------------------------------------------------------------------

# how the evaluations' metrics files begin, at any label fraction and initialisation; the rest of
# the name is evaluation_outputs' for what the file says it measured
EVALUATION_FILES = {LINEAR_METRICS_KIND: "linear_eval_metrics",
                    FINETUNE_METRICS_KIND: "finetune_metrics"}


def label_fraction_runs():
    """{(protocol, series): {label fraction: test accuracy}} of every finished evaluation in
    OUTPUT_DIR (kNN k=20 and the probe of Linear_evaluation.py, fine-tuning), read from the files
    themselves; an unreadable file, a copy under another name, or SimSiam's of another checkpoint
    than the full probe's (linear_eval_metrics.pth), is left out with a line."""
    found, checkpoint = {}, None
    full_probe = os.path.join(OUTPUT_DIR, "linear_eval_metrics.pth")
    if os.path.isfile(full_probe):
        try:
            checkpoint = load_checkpoint(full_probe).get("pretrained_path")
        except CheckpointError:
            pass
    for name in sorted(os.listdir(OUTPUT_DIR)) if os.path.isdir(OUTPUT_DIR) else []:
        if not (name.startswith(tuple(EVALUATION_FILES.values())) and name.endswith(".pth")):
            continue
        try:
            m = load_checkpoint(os.path.join(OUTPUT_DIR, name), kinds=tuple(EVALUATION_FILES))
        except CheckpointError as error:
            print(f"label fractions: leaving out {error}")
            continue
        if m.get("test_acc") is None:
            continue  # unfinished
        fraction = m.get("label_fraction", 1.0)
        measured = {"OUTPUT_DIR": "", "PRETRAINED_PATH": m["pretrained_path"],
                    "LABEL_FRACTION": fraction}
        own_name = evaluation_outputs(measured, EVALUATION_FILES[m["kind"]], "")[0]
        if name != own_name:  # a copy kept beside the run (an older result, a backup)
            print(f"label fractions: leaving out {name}: its run wrote {own_name}")
            continue
        series = {"random": "random", IMAGE_STATS: "stats"}.get(m["pretrained_path"], "pretrained")
        checkpoint = checkpoint or (m["pretrained_path"] if series == "pretrained" else None)
        if series == "pretrained" and m["pretrained_path"] != checkpoint:
            print(f"label fractions: leaving out {name}: it evaluated {m['pretrained_path']}, "
                  f"not {checkpoint}")
            continue
        if m["kind"] == FINETUNE_METRICS_KIND:
            found.setdefault(("fine-tuning", series), {})[fraction] = m["test_acc"]
        else:
            found.setdefault(("kNN, k=20", series), {})[fraction] = (m.get("knn") or {}).get("k20")
            found.setdefault(("linear probe", series), {})[fraction] = m["test_acc"]
    return found


def plot_label_fractions(found):
    """Test accuracy against the share of train.csv's labels (log axis), a panel per protocol:
    SimSiam beside both floors, as label-efficiency results are reported (SSL4EO-S12, GEO-Bench)."""
    fig, axes = plt.subplots(1, 3, figsize=figure_inches("label_fractions"), sharey=True)
    for ax, protocol in zip(axes, ("kNN, k=20", "linear probe", "fine-tuning")):
        for label, series in SERIES:
            points = sorted((f, a) for f, a in found.get((protocol, series), {}).items()
                            if a is not None)
            if points:
                ax.plot([f * 100 for f, _ in points], [a for _, a in points], "-o",
                        color=COLOR[series], label=label)
                for f, a in points:
                    ax.annotate(f"{a:.1f}", (f * 100, a), textcoords="offset points",
                                xytext=(0, 6), ha="center", fontsize=8, color=COLOR[series])
        if ax.lines:
            ax.legend(loc="lower right")
        else:
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes,
                    color=COLOR["note"])
        ax.set(xscale="log", title=protocol, xlabel="labelled share of train.csv (%)",
               ylim=(0, 100))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    axes[0].set(ylabel="top-1 accuracy on the test set (%)")
    fig.suptitle(f"Accuracy by share of the labels, test.csv: {folder_name(OUTPUT_DIR)}")
    return fig


def main():
    config, _ = configure(globals())
    check_settings(config, {"AUGMENT_IMAGES": at_least(1), "GRID_IMAGES": at_least(1),
                            "GRID_COLUMNS": at_least(1),
                            "DPI": at_least(10), "SEED": at_least(0)})
    prepare_output_dir(FIGURES_DIR, setting="FIGURES_DIR")
    set_style()
    pretrain = load_metrics(PRETRAIN_METRICS, PRETRAIN_METRICS_KIND, "pre-training figures",
                            "run python train_simsiam.py", ["pretrain_curves", "augmentations"])
    linear = load_metrics(LINEAR_METRICS, LINEAR_METRICS_KIND, "linear evaluation figures",
                          "run python Linear_evaluation.py",
                          ["linear_eval_curves", "confusion_linear_eval"])
    finetune = load_metrics(FINETUNE_METRICS, FINETUNE_METRICS_KIND, "fine-tuning figures",
                            "run python finetune_model.py",
                            ["finetune_curves", "confusion_finetune", "predictions_finetune"])
    linear_random = load_metrics(LINEAR_RANDOM_METRICS, LINEAR_METRICS_KIND,
                                 "random-init linear evaluation baseline",
                                 "run python Linear_evaluation.py --pretrained_path=random", [])
    linear_stats = load_metrics(LINEAR_STATS_METRICS, LINEAR_METRICS_KIND,
                                "image-statistics baseline",
                                "run python Linear_evaluation.py --pretrained_path=image_stats",
                                [])
    finetune_random = load_metrics(FINETUNE_RANDOM_METRICS, FINETUNE_METRICS_KIND,
                                   "random-init fine-tuning baseline",
                                   "run python finetune_model.py --pretrained_path=random", [])

    if pretrain is not None:
        draw("pretrain_curves", plot_pretraining, pretrain)
        draw("augmentations", plot_augmentations, pretrain)
    if linear is not None:
        draw("linear_eval_curves", plot_curves, linear, linear_random, "Linear evaluation")
        draw("confusion_linear_eval", plot_confusion, linear, "Linear evaluation",
             "confusion_linear_eval")
    if finetune is not None:
        draw("finetune_curves", plot_curves, finetune, finetune_random, "Fine-tuning")
        draw("confusion_finetune", plot_confusion, finetune, "Fine-tuning", "confusion_finetune")
        draw("predictions_finetune", plot_predictions, finetune)
    runs = (("linear evaluation\n(frozen backbone)", linear, linear_random, linear_stats),
            ("fine-tuning\n(all layers)", finetune, finetune_random, None))
    if any(r is not None for _, *results in runs for r in results):
        draw("comparison", plot_comparison, runs)
    else:
        skip("comparison", "no linear evaluation or fine-tuning metrics", ["comparison"])
    fractions = label_fraction_runs()
    if len({f for points in fractions.values() for f in points}) > 1:
        draw("label_fractions", plot_label_fractions, fractions)
    else:
        skip("label_fractions", "no evaluation at a label fraction below 1 beside 100 % (run "
             "them with --label_fraction=0.01, or scripts/bench_quality.py)", ["label_fractions"])
    print(f"done: {len(written)} figures written to {FIGURES_DIR}/, {len(skipped)} skipped"
          + (f" ({', '.join(skipped)})" if skipped else ""))


if __name__ == "__main__":
    run(main)
