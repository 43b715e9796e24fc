"""plot_results.py on the metrics of a tiny run: every figure is a PNG of the expected size, and a
missing, empty or wrong-kind metrics file skips only its own figures (CPU, seconds; the scripts
run in this process: conftest.run_in_process)."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import plot_results
from conftest import copy_first_epoch, run_in_process
from simsiam_data import IMAGENET_MEAN, IMAGENET_STD
from simsiam_model import Classifier, build_backbone, classifier_checkpoint

# class: mean colour
CLASSES = {"AnnualCrop": (200, 170, 90), "Forest": (40, 110, 50), "River": (60, 90, 180)}
PER_CLASS = 4  # test images per class
ALL_FIGURES = {"pretrain_curves", "augmentations", "linear_eval_curves", "finetune_curves",
               "comparison", "confusion_linear_eval", "confusion_finetune", "predictions_finetune",
               "label_fractions"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_eurosat(root):
    """A EuroSAT-shaped folder: <Class>/<Class>_<n>.jpg, test.csv and label_map.json;
    returns the test labels."""
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for label, (name, colour) in enumerate(CLASSES.items()):
        os.makedirs(root / name)
        for n in range(PER_CLASS):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (64, 64, 3)),
                             0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{n}.jpg")
            rows.append(f"{len(rows)},{name}/{name}_{n}.jpg,{label},{name}")
            labels.append(label)
    (root / "test.csv").write_text(",Filename,Label,ClassName\n" + "\n".join(rows) + "\n")
    (root / "label_map.json").write_text(json.dumps({name: i for i, name in enumerate(CLASSES)}))
    return labels


def eval_metrics(kind, eurosat, labels, model_path, pretrained_path, wrong):
    """A metrics dict in the schema of Linear_evaluation.py / finetune_model.py;
    the first `wrong` rows mislabelled."""
    names = list(CLASSES)
    predictions = [(y + 1) % len(names) if i < wrong else y for i, y in enumerate(labels)]
    confusion = np.zeros((len(names), len(names)), dtype=int)
    for y, p in zip(labels, predictions):
        confusion[y, p] += 1
    test_acc = 100 * float(np.mean(np.array(labels) == np.array(predictions)))
    return {"kind": kind,
            "config": {"EUROSAT_DIR": str(eurosat), "OUTPUT_DIR": "outputs", "ARCH": "resnet18"},
            "versions": {"torch": str(torch.__version__)}, "seed": 0,
            "pretrained_path": pretrained_path, "arch": "resnet18", "image_size": 32,
            "class_names": names, "epochs": [1, 2, 3], "train_loss": [1.1, 0.8, 0.6],
            "train_acc": [40.0, 62.5, 75.0], "val_loss": [1.0, 0.7, 0.75],
            "val_acc": [45.0, 70.0, 65.0], "lr": [0.1, 0.05, 0.0], "epoch_time_s": [1.0, 1.0, 1.0],
            "best_epoch": 2, "best_val_acc": 70.0, "test_acc": test_acc, "test_loss": 0.7,
            "per_class_acc": {n: float(100 * confusion[i, i] / confusion[i].sum())
                              for i, n in enumerate(names)},
            "confusion_matrix": confusion.tolist(), "test_predictions": predictions,
            "test_files": [os.path.join(str(eurosat), n, f"{n}_{k}.jpg")
                           for n in names for k in range(PER_CLASS)],
            "knn": {"k20": 55.0, "k200": 50.0} if kind == "linear_eval_metrics" else None,
            "wall_time_s": 3.0, "best_model_path": str(model_path), "device": "cpu"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, first_epoch_run):
    """A 2-epoch pre-training run on 16 generated images (the session's first epoch, continued),
    a random resnet18 classifier and the four eval metrics."""
    base = tmp_path_factory.mktemp("plots")
    out = base / "out"
    result = run_in_process("train_simsiam.py", *copy_first_epoch(first_epoch_run, base),
                            "--num_epochs=2")
    assert result.returncode == 0, result.stderr[-2000:]
    eurosat = base / "EuroSAT"
    labels = make_eurosat(eurosat)
    backbone, feature_dim = build_backbone("resnet18")
    config = {"ARCH": "resnet18", "IMAGE_SIZE": 32, "SMALL_STEM": False, "IN_CHANNELS": 3,
              "EUROSAT_DIR": str(eurosat)}
    model_path = out / "finetuned_eurosat_best_model.pth"
    torch.save(classifier_checkpoint(Classifier(backbone, feature_dim, len(CLASSES)), config,
                                     list(CLASSES), IMAGENET_MEAN, IMAGENET_STD), model_path)
    pretrained = str(out / "simsiam_resnet18_epoch_2.pth")
    for name, kind, source, wrong in (
            ("linear_eval_metrics", "linear_eval_metrics", pretrained, 3),
            ("finetune_metrics", "finetune_metrics", pretrained, 2),
            ("linear_eval_metrics_random", "linear_eval_metrics", "random", 7),
            ("finetune_metrics_random", "finetune_metrics", "random", 5),
            ("linear_eval_metrics_image_stats", "linear_eval_metrics", "image_stats", 4)):
        torch.save(eval_metrics(kind, eurosat, labels, model_path, source, wrong),
                   out / f"{name}.pth")
        # the same evaluation on 10 % of the labels, a few more wrong (label_fractions.png)
        torch.save(dict(eval_metrics(kind, eurosat, labels, model_path, source, wrong + 2),
                        label_fraction=0.1), out / f"{name}_labels10pct.pth")
    return {"base": base, "out": out, "eurosat": eurosat, "labels": labels,
            "model_path": model_path}


def plot(output_dir, figures_dir, *args):
    result = run_in_process("plot_results.py", f"--output_dir={output_dir}",
                            f"--figures_dir={figures_dir}", *args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return result.stdout


def check_figures(figures_dir, names, grid_images=0):
    """Exactly `names` were written, each a readable PNG of figure_inches x DPI pixels."""
    assert {f[:-4] for f in os.listdir(figures_dir)} == set(names)
    for name in names:
        path = os.path.join(figures_dir, f"{name}.png")
        with open(path, "rb") as f:
            assert f.read(8) == PNG_SIGNATURE, path
        count = grid_images if name == "predictions_finetune" else plot_results.AUGMENT_IMAGES
        width, height = plot_results.figure_inches(name, count)
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            expected = (width * plot_results.DPI, height * plot_results.DPI)
            assert (abs(image.width - expected[0]) <= 1
                    and abs(image.height - expected[1]) <= 1), (name, image.size)
            assert image.info["dpi"][0] == pytest.approx(plot_results.DPI, abs=1)


@pytest.mark.slow
def test_every_figure_is_written(tiny_run):
    figures = tiny_run["base"] / "figures_all"
    stdout = plot(tiny_run["out"], figures)
    assert "skipping" not in stdout, stdout
    assert "done: 9 figures written" in stdout and "0 skipped" in stdout
    for name in ALL_FIGURES:
        assert f"saving figure to {figures / name}.png" in stdout
    check_figures(figures, ALL_FIGURES, grid_images=len(tiny_run["labels"]))


@pytest.mark.slow
def test_missing_empty_and_wrong_kind_files_skip_only_their_figures(tiny_run):
    """No pre-training metrics, a linear file that is really a fine-tune file, an empty random-init
    file and test images that are gone: each skips only its own figures, with one line, and the run
    still succeeds."""
    out = tiny_run["base"] / "outputs_partial"
    out.mkdir()
    shutil.copy(tiny_run["out"] / "finetune_metrics.pth", out / "finetune_metrics.pth")
    shutil.copy(tiny_run["out"] / "finetune_metrics.pth", out / "linear_eval_metrics.pth")
    (out / "finetune_metrics_random.pth").write_bytes(b"")
    csv_only = tiny_run["base"] / "EuroSAT_csv_only"
    csv_only.mkdir()
    for name in ("test.csv", "label_map.json"):
        shutil.copy(tiny_run["eurosat"] / name, csv_only / name)
    figures = tiny_run["base"] / "figures_partial"
    stdout = plot(out, figures, f"--eurosat_dir={csv_only}")
    assert (f"skipping pre-training figures: {out / 'pretrain_metrics.pth'} not found "
            "(run python train_simsiam.py)") in stdout
    assert (f"skipping linear evaluation figures: {out / 'linear_eval_metrics.pth'}: "
            "this is a 'finetune_metrics' "
            "file") in stdout
    assert "skipping random-init fine-tuning baseline:" in stdout and "empty (0 bytes)" in stdout
    assert f"skipping prediction grid: test images not found under '{csv_only}'" in stdout
    assert "done: 3 figures written" in stdout and "6 skipped" in stdout
    check_figures(figures, ["finetune_curves", "confusion_finetune", "comparison"])


@pytest.mark.slow
def test_grid_runs_the_best_model_when_no_predictions_are_recorded(tiny_run):
    """Without test_predictions the grid classifies test images with the checkpoint
    named by best_model_path."""
    metrics = torch.load(tiny_run["out"] / "finetune_metrics.pth", weights_only=True)
    metrics.update(test_predictions=None)
    fig = plot_results.plot_predictions(metrics)
    assert fig is not None
    title = fig.get_suptitle()
    assert "predicted now by finetuned_eurosat_best_model.pth" in title
    assert f"{len(tiny_run['labels'])} random test images" in title
    assert (plot_results.figure_inches("predictions_finetune", len(tiny_run["labels"]))
            == tuple(fig.get_size_inches()))


@pytest.mark.slow
def test_grid_matches_recorded_predictions_by_file_name(tiny_run):
    """After a re-split (here: test.csv in reverse order, under another folder name) the grid still
    shows each image with its own recorded prediction: the two mislabelled AnnualCrop images are
    the only wrong ones."""
    resplit = tiny_run["base"] / "EuroSAT_resplit"
    if not resplit.exists():
        shutil.copytree(tiny_run["eurosat"], resplit)
        lines = (resplit / "test.csv").read_text().splitlines()
        (resplit / "test.csv").write_text("\n".join([lines[0]] + lines[:0:-1]) + "\n")
    metrics = torch.load(tiny_run["out"] / "finetune_metrics.pth", weights_only=True)
    plot_results.EUROSAT_DIR = str(resplit)
    try:
        fig = plot_results.plot_predictions(metrics)
    finally:
        plot_results.EUROSAT_DIR = ""
    assert "2 wrong" in fig.get_suptitle() and "matched by file name" in fig.get_suptitle()
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert sum("pred: Forest" in t and "true: AnnualCrop" in t for t in titles) == 2


@pytest.mark.slow
def test_floors_are_drawn_beside_simsiam(tiny_run):
    """comparison.png has the image-statistics bars beside random init; the kNN monitor panel
    draws both floors as lines; runs of different networks are said to differ."""
    names = ("linear_eval_metrics", "linear_eval_metrics_random",
             "linear_eval_metrics_image_stats", "finetune_metrics", "finetune_metrics_random")
    linear, linear_random, stats, tuned, tuned_random = (
        torch.load(tiny_run["out"] / f"{n}.pth", weights_only=True) for n in names)
    runs = (("linear", linear, linear_random, stats), ("fine-tune", tuned, tuned_random, None))
    fig = plot_results.plot_comparison(runs)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert {"SimSiam-pretrained", "random init", "image statistics"} <= set(legend)
    assert "different networks" not in fig.get_suptitle()
    tuned["image_size"] = 64
    mixed = plot_results.plot_comparison(runs).get_suptitle()
    assert "2 different networks or input sizes" in mixed
    pretrain = torch.load(tiny_run["out"] / "pretrain_metrics.pth", weights_only=True)
    pretrain.update(knn_top1=[40.0, 60.0],
                    knn_floors={"random init": 45.0, "image statistics": 55.0})
    knn_panel = plot_results.plot_pretraining(pretrain).axes[3]
    labels = [t.get_text() for t in knn_panel.get_legend().get_texts()]
    assert labels == ["SimSiam", "random init (floor): 45.0%", "image statistics (floor): 55.0%"]
    # a run resumed with other kNN settings measured its floors again from epoch 2: each set is
    # drawn over its own epochs
    pretrain["knn_floors_history"] = [
        {"from_epoch": 1, "random init": 45.0, "image statistics": 55.0},
        {"from_epoch": 2, "random init": 30.0, "image statistics": 35.0}]
    knn_panel = plot_results.plot_pretraining(pretrain).axes[3]
    labels = [t.get_text() for t in knn_panel.get_legend().get_texts()]
    assert "random init (floor): 30.0% from epoch 2" in labels
    spans = {round(c.get_segments()[0][0][1]): (c.get_segments()[0][0][0],
                                                c.get_segments()[0][1][0])
             for c in knn_panel.collections}
    assert spans[45] == (0.5, 1.5) and spans[30] == (1.5, 2.5)
    assert any("measured again" in t.get_text() for t in knn_panel.texts)


def test_label_fraction_figure_reads_each_share_from_its_file(tiny_run, monkeypatch, capsys):
    """label_fractions.png: per protocol and initialisation, the test accuracy at each label
    fraction the files record (kNN k=20 and the probe from linear evaluation, fine-tuning)."""
    monkeypatch.setattr(plot_results, "OUTPUT_DIR", str(tiny_run["out"]))
    found = plot_results.label_fraction_runs()
    full = torch.load(tiny_run["out"] / "linear_eval_metrics_random.pth", weights_only=False)
    tenth = torch.load(tiny_run["out"] / "linear_eval_metrics_random_labels10pct.pth",
                       weights_only=False)
    assert found["linear probe", "random"] == {1.0: full["test_acc"], 0.1: tenth["test_acc"]}
    assert tenth["test_acc"] < full["test_acc"]  # two more wrong: the points differ
    assert found["kNN, k=20", "stats"] == {1.0: 55.0, 0.1: 55.0}
    assert set(found["fine-tuning", "pretrained"]) == {0.1, 1.0}
    assert ("fine-tuning", "stats") not in found
    # a SimSiam file of another checkpoint (an earlier run's) is not drawn beside this one's
    stale = tiny_run["out"] / "linear_eval_metrics_labels1pct.pth"
    metrics = torch.load(tiny_run["out"] / "linear_eval_metrics_labels10pct.pth", weights_only=False)
    torch.save(dict(metrics, label_fraction=0.01, pretrained_path="older_epoch_1.pth"), stale)
    try:
        again = plot_results.label_fraction_runs()
    finally:
        stale.unlink()
    assert set(again["linear probe", "pretrained"]) == {0.1, 1.0}
    assert ("leaving out linear_eval_metrics_labels1pct.pth: it evaluated older_epoch_1.pth"
            in capsys.readouterr().out)
    # a copy kept beside the run under another name (an older result) is not drawn either
    copy = tiny_run["out"] / "linear_eval_metrics_random_old.pth"
    torch.save(dict(full, test_acc=12.5), copy)
    try:
        again = plot_results.label_fraction_runs()
    finally:
        copy.unlink()
    assert again["linear probe", "random"] == {1.0: full["test_acc"], 0.1: tenth["test_acc"]}
    assert ("leaving out linear_eval_metrics_random_old.pth: its run wrote "
            "linear_eval_metrics_random.pth" in capsys.readouterr().out)
