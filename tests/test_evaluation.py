"""End-to-end tests of Linear_evaluation.py, finetune_model.py and classify_image.py
on tiny generated data.

A EuroSAT-shaped folder (4 classes, 8 JPEGs per class per split, 32 px, class-dependent colours)
and a SimSiam pre-training checkpoint (ResNet-18, untrained, saved the way train_simsiam.py saves)
are written to a temporary folder; the scripts then run in this process (conftest.run_in_process:
the same main and messages as `python script ...`, without seconds of start-up for each of the 13
runs), on the CPU.
"""
import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import simsiam_data as data
from conftest import run_in_process
from simsiam_model import PRETRAIN_KIND, SimSiam, classifier_from_checkpoint

CLASSES = ["Forest", "Highway", "River", "SeaLake"]
COLORS = [(40, 110, 40), (140, 140, 130), (70, 100, 150), (20, 40, 110)]
PER_CLASS_PER_SPLIT = 8
SIZE = 32
METRIC_KEYS = {"kind", "config", "versions", "seed", "pretrained_path", "arch", "image_size",
               "class_names", "epochs", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
               "epoch_time_s", "best_epoch", "best_val_acc", "test_acc", "test_loss",
               "per_class_acc", "confusion_matrix", "test_predictions", "test_files", "knn",
               "wall_time_s", "best_model_path", "device"}
EPOCHS = 3


def make_eurosat(root):
    """Class folders of JPEGs plus train/validation/test.csv and label_map.json
    in the real format."""
    rng = np.random.default_rng(0)
    rows = {"train": [], "validation": [], "test": []}
    for label, (name, color) in enumerate(zip(CLASSES, COLORS)):
        os.makedirs(os.path.join(root, name))
        for i in range(3 * PER_CLASS_PER_SPLIT):
            pixels = np.clip(np.array(color) + rng.normal(0, 30, (SIZE, SIZE, 3)),
                             0, 255).astype(np.uint8)
            filename = f"{name}/{name}_{i + 1}.jpg"
            Image.fromarray(pixels).save(os.path.join(root, filename))
            rows[("train", "validation", "test")[i % 3]].append((filename, label, name))
    for split, split_rows in rows.items():
        with open(os.path.join(root, f"{split}.csv"), "w") as f:
            f.write(",Filename,Label,ClassName\n")
            f.writelines(f"{i},{filename},{label},{name}\n"
                         for i, (filename, label, name) in enumerate(split_rows))
    with open(os.path.join(root, "label_map.json"), "w") as f:
        json.dump({name: i for i, name in enumerate(CLASSES)}, f)


def make_pretrain_checkpoint(path):
    """An untrained SimSiam saved as train_simsiam.py saves simsiam_<arch>_epoch_X.pth."""
    torch.manual_seed(0)
    model = SimSiam("resnet18", dim=64, pred_dim=16)
    config = {"ARCH": "resnet18", "IN_CHANNELS": 3, "SMALL_STEM": False, "IMAGE_SIZE": SIZE,
              "PROJ_DIM": 64, "PRED_DIM": 16, "BATCH_SIZE": 8, "SEED": 0}
    torch.save({"kind": PRETRAIN_KIND, "arch": "resnet18", "config": config, "epoch": 1,
                "model": model.state_dict()}, path)


class CodeRunner:
    """Unpickling this would run code (create a marker file): a safe loader must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def start(script, *args):
    return run_in_process(script, *map(str, args))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every script run of this file; returns (results by name, paths)."""
    tmp = tmp_path_factory.mktemp("evaluation")
    eurosat = tmp / "EuroSAT"
    make_eurosat(eurosat)
    out = {name: tmp / name for name in ("cached", "on_the_fly", "random", "finetune")}
    for name in ("cached", "on_the_fly", "finetune"):
        out[name].mkdir()
        make_pretrain_checkpoint(out[name] / "simsiam_resnet18_epoch_1.pth")
    pretrain = out["cached"] / "simsiam_resnet18_epoch_1.pth"
    not_checkpoint = tmp / "notes.pth"
    not_checkpoint.write_text("these are my notes, not a model\n")
    marker = tmp / "code_was_run"
    malicious = tmp / "malicious.pth"
    torch.save({"kind": "eurosat_classifier", "payload": CodeRunner(str(marker))}, malicious)
    broken = tmp / "EuroSAT_broken"  # one test image is not a JPEG
    shutil.copytree(eurosat, broken)
    (broken / "River/River_3.jpg").write_bytes(b"\xff\xd8 truncated")
    no_csv = tmp / "EuroSAT_without_csv"  # label_map.json but no split CSVs
    no_csv.mkdir()
    (no_csv / "label_map.json").write_text((eurosat / "label_map.json").read_text())

    def train_args(name):  # one cache folder per run, as when they ran side by side
        return [f"--eurosat_dir={eurosat}", f"--cache_dir={tmp / 'cache' / name}",
                f"--output_dir={out[name]}", "--batch_size=8"]

    results = {
        "cached": start("Linear_evaluation.py", *train_args("cached"), f"--num_epochs={EPOCHS}"),
        "on_the_fly": start("Linear_evaluation.py", *train_args("on_the_fly"),
                            f"--num_epochs={EPOCHS}", "--feature_cache=False"),
        "random": start("Linear_evaluation.py", *train_args("random"), "--num_epochs=2",
                        "--pretrained_path=random", "--arch=resnet18", f"--image_size={SIZE}"),
        # fp32, as predict_files recomputes its predictions
        "finetune": start("finetune_model.py", *train_args("finetune"), "--num_epochs=2",
                          "--amp=off"),
        "not_checkpoint": start("classify_image.py", eurosat / "Forest/Forest_1.jpg",
                                f"--model_path={not_checkpoint}"),
        "pretrain_checkpoint": start("classify_image.py", eurosat / "Forest/Forest_1.jpg",
                                     f"--model_path={pretrain}"),
        "missing_checkpoint": start("classify_image.py", eurosat / "Forest/Forest_1.jpg",
                                    f"--model_path={tmp / 'nowhere.pth'}"),
        "malicious": start("classify_image.py", eurosat / "Forest/Forest_1.jpg",
                           f"--model_path={malicious}"),
        # the failing runs use output folders of their own, as when they ran side by side
        "missing_data": start("Linear_evaluation.py", f"--eurosat_dir={tmp / 'no_such_folder'}",
                              f"--output_dir={tmp / 'failing_1'}",
                              f"--pretrained_path={pretrain}"),
        "unreadable_image": start("Linear_evaluation.py", f"--eurosat_dir={broken}",
                                  f"--output_dir={tmp / 'failing_2'}",
                                  f"--cache_dir={tmp / 'cache' / 'broken'}",
                                  f"--pretrained_path={pretrain}"),
        "missing_csv": start("finetune_model.py", f"--eurosat_dir={no_csv}",
                             f"--output_dir={tmp / 'failing_3'}",
                             f"--cache_dir={tmp / 'cache' / 'unused'}",
                             f"--pretrained_path={pretrain}"),
    }
    # classification needs the trained classifiers:
    # odd image modes in a folder, plus one unreadable file
    images = tmp / "to_classify"
    (images / "nested").mkdir(parents=True)
    rgb = np.asarray(Image.open(eurosat / "River/River_1.jpg"))
    Image.fromarray(rgb).convert("RGBA").save(images / "rgba.png")
    Image.fromarray(rgb).convert("L").save(images / "nested/gray.png")
    # mode I;16
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(images / "nested/deep.png")
    Image.fromarray(rgb).convert("P").save(images / "palette.png")
    (images / "nested/broken.jpg").write_bytes(b"\xff\xd8 this is not really a JPEG")
    predictions_csv = tmp / "predictions.csv"
    results.update({
        "classify_one": start(
            "classify_image.py", eurosat / "SeaLake/SeaLake_3.jpg",
            f"--model_path={out['finetune'] / 'finetuned_eurosat_best_model.pth'}"),
        "classify_folder": start(
            "classify_image.py", images, f"--output_csv={predictions_csv}",
            f"--model_path={out['cached'] / 'linear_eval_eurosat_best_model.pth'}"),
    })
    paths = {"eurosat": eurosat, "out": out, "pretrain": pretrain, "marker": marker,
             "csv": predictions_csv, "images": images}
    return results, paths


def check_ok(result):
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    assert "Traceback" not in result.stderr


def check_clean_error(result, *phrases):
    assert result.returncode == 1, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") or "\nerror: " in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, f"{phrase!r} not in:\n{result.stderr}"


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def check_metrics(metrics, kind, epochs, eurosat):
    assert METRIC_KEYS <= set(metrics), METRIC_KEYS - set(metrics)
    assert metrics["kind"] == kind
    assert metrics["class_names"] == CLASSES
    assert metrics["epochs"] == list(range(1, epochs + 1))
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s"):
        assert len(metrics[key]) == epochs and all(np.isfinite(metrics[key])), key
    for key in ("train_acc", "val_acc"):
        assert all(0 <= value <= 100 for value in metrics[key])
    # cosine decay
    assert metrics["lr"][0] > 0 and metrics["lr"] == sorted(metrics["lr"], reverse=True)
    val_acc = metrics["val_acc"]
    assert (metrics["best_epoch"] == val_acc.index(max(val_acc)) + 1
            and metrics["best_val_acc"] == max(val_acc))
    num_test = PER_CLASS_PER_SPLIT * len(CLASSES)
    assert 0 <= metrics["test_acc"] <= 100 and np.isfinite(metrics["test_loss"])
    confusion = np.array(metrics["confusion_matrix"])
    assert (confusion.shape == (4, 4) and confusion.sum() == num_test
            and (confusion.sum(1) == PER_CLASS_PER_SPLIT).all())
    assert np.isclose(np.trace(confusion) / num_test * 100, metrics["test_acc"])
    assert list(metrics["per_class_acc"]) == CLASSES
    assert (len(metrics["test_predictions"]) == num_test
            and set(metrics["test_predictions"]) <= {0, 1, 2, 3})
    test_paths, _, _ = data.read_eurosat_split(eurosat, eurosat / "test.csv",
                                               eurosat / "label_map.json")
    assert metrics["test_files"] == test_paths
    assert (metrics["wall_time_s"] > 0 and metrics["image_size"] == SIZE
            and metrics["arch"] == "resnet18")
    assert (metrics["config"]["IMAGE_SIZE"] == SIZE
            and metrics["versions"]["torch"] == torch.__version__)


def predict_files(model_path, paths):
    """Predictions of a saved classifier on image files, through the PIL evaluation transform."""
    model, checkpoint, model_config = classifier_from_checkpoint(model_path)
    transform = data.eval_transform(model_config["image_size"], checkpoint["mean"],
                                    checkpoint["std"])
    with torch.no_grad():
        return model.eval()(
            torch.stack([transform(data.open_rgb(p)) for p in paths])).argmax(1).tolist()


# -------------------------------------------------------------------------------------------------
# Linear_evaluation.py

@pytest.mark.slow
def test_linear_eval_metrics_best_model_and_frozen_backbone(runs):
    results, paths = runs
    check_ok(results["cached"])
    out = paths["out"]["cached"]
    metrics = load(out / "linear_eval_metrics.pth")
    check_metrics(metrics, "linear_eval_metrics", EPOCHS, paths["eurosat"])
    # a bank of 32 train images: k=20 is a neighbourhood, k=200 a vote of every image (None)
    assert 0 <= metrics["knn"]["k20"] <= 100 and metrics["knn"]["k200"] is None
    assert metrics["config"]["KNN_TEMPERATURE"] == 0.2
    # found as the newest checkpoint in OUTPUT_DIR
    assert metrics["pretrained_path"] == str(paths["pretrain"])
    assert metrics["test_acc"] > 50  # colours separate the classes; chance is 25%
    assert "frozen backbone unchanged" in results["cached"].stdout
    assert f"epoch {EPOCHS}/{EPOCHS} train loss" in results["cached"].stdout

    best_path = out / "linear_eval_eurosat_best_model.pth"
    assert metrics["best_model_path"] == str(best_path)
    best = load(best_path)
    assert best["epoch"] == metrics["best_epoch"] and best["val_acc"] == metrics["best_val_acc"]
    assert best["source"] == "linear_eval" and best["pretrained_path"] == str(paths["pretrain"])
    # the frozen backbone, BatchNorm running statistics included, is exactly the pre-trained one
    pretrained = {k[len("backbone."):]: v for k, v in load(paths["pretrain"])["model"].items()
                  if k.startswith("backbone.")}
    assert set(best["backbone"]) == set(pretrained)
    assert all(torch.equal(best["backbone"][k], v) for k, v in pretrained.items())
    # the saved head has the feature standardisation folded in:
    # on raw images it reproduces the test predictions
    assert predict_files(best_path, metrics["test_files"]) == metrics["test_predictions"]


@pytest.mark.slow
def test_cached_and_on_the_fly_linear_eval_agree(runs):
    results, paths = runs
    check_ok(results["on_the_fly"])
    cached = load(paths["out"]["cached"] / "linear_eval_metrics.pth")
    fly = load(paths["out"]["on_the_fly"] / "linear_eval_metrics.pth")
    check_metrics(fly, "linear_eval_metrics", EPOCHS, paths["eurosat"])
    assert "frozen backbone unchanged" in results["on_the_fly"].stdout
    np.testing.assert_allclose(fly["train_loss"], cached["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(fly["val_loss"], cached["val_loss"], rtol=1e-4)
    assert fly["val_acc"] == cached["val_acc"] and fly["best_epoch"] == cached["best_epoch"]
    assert fly["test_predictions"] == cached["test_predictions"] and fly["knn"] == cached["knn"]


@pytest.mark.slow
def test_random_baseline_writes_random_files(runs):
    results, paths = runs
    check_ok(results["random"])
    out = paths["out"]["random"]
    assert sorted(p.name for p in out.glob("*.pth")) == [
        "linear_eval_eurosat_best_model_random.pth", "linear_eval_metrics_random.pth"]
    assert "_random" in results["random"].stdout
    metrics = load(out / "linear_eval_metrics_random.pth")
    check_metrics(metrics, "linear_eval_metrics", 2, paths["eurosat"])
    assert metrics["pretrained_path"] == "random"
    model, checkpoint, model_config = classifier_from_checkpoint(
        out / "linear_eval_eurosat_best_model_random.pth")
    assert model_config == {"arch": "resnet18", "in_channels": 3, "small_stem": False,
                            "stem_stride": 1, "image_size": SIZE}


def test_fold_standardization_is_exact():
    import Linear_evaluation
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 5)
    features = torch.randn(64, 16) * torch.rand(16) * 10 + torch.randn(16) * 3
    mean, std = features.mean(0), features.std(0)
    folded = Linear_evaluation.fold_standardization(head, mean, std)
    torch.testing.assert_close(folded(features), head((features - mean) / std), rtol=1e-4,
                               atol=1e-4)


def test_newest_pretrained_checkpoint_is_the_highest_epoch(tmp_path):
    from simsiam_model import newest_pretrained
    for name in ("simsiam_resnet18_epoch_2.pth", "simsiam_resnet18_epoch_10.pth",
                 "checkpoint_last.pth", "simsiam_resnet50_epoch_9.pth", "linear_eval_metrics.pth"):
        (tmp_path / name).write_bytes(b"")
    assert newest_pretrained(str(tmp_path)) == str(tmp_path / "simsiam_resnet18_epoch_10.pth")
    # same epoch: the newer file wins
    (tmp_path / "simsiam_resnet34_epoch_10.pth").write_bytes(b"")
    os.utime(tmp_path / "simsiam_resnet18_epoch_10.pth", (1e9, 1e9))
    assert newest_pretrained(str(tmp_path)) == str(tmp_path / "simsiam_resnet34_epoch_10.pth")
    assert newest_pretrained(str(tmp_path / "missing")) is None


@pytest.mark.slow
def test_missing_or_broken_data_is_a_clear_error(runs):
    results, _ = runs
    check_clean_error(results["missing_data"], "no_such_folder",
                      "make_dataset.py --mode=eurosat_splits", "scripts/data.sh")
    check_clean_error(results["missing_csv"], "train.csv", "make_dataset.py --mode=eurosat_splits")
    check_clean_error(results["unreadable_image"], "unreadable", "River_3.jpg")


# -------------------------------------------------------------------------------------------------
# finetune_model.py

@pytest.mark.slow
def test_finetune_writes_metrics_and_best_model(runs):
    results, paths = runs
    check_ok(results["finetune"])
    out = paths["out"]["finetune"]
    metrics = load(out / "finetune_metrics.pth")
    check_metrics(metrics, "finetune_metrics", 2, paths["eurosat"])
    assert metrics["knn"] is None
    assert "reloading the best model" in results["finetune"].stdout
    best = load(out / "finetuned_eurosat_best_model.pth")
    assert best["epoch"] == metrics["best_epoch"] and best["val_acc"] == metrics["best_val_acc"]
    assert best["source"] == "finetune" and best["class_names"] == CLASSES
    # the test numbers are those of the saved best model
    predictions = predict_files(out / "finetuned_eurosat_best_model.pth", metrics["test_files"])
    assert predictions == metrics["test_predictions"]


# -------------------------------------------------------------------------------------------------
# classify_image.py

@pytest.mark.slow
def test_classify_one_image(runs):
    results, _ = runs
    check_ok(results["classify_one"])
    lines = results["classify_one"].stdout.splitlines()
    predicted = [line for line in lines if line.startswith("predicted class: ")]
    assert len(predicted) == 1 and predicted[0].split()[2] in CLASSES
    assert any(line.startswith("top 3: ") for line in lines)


@pytest.mark.slow
def test_classify_folder_writes_csv_and_converts_modes(runs):
    results, paths = runs
    result = results["classify_folder"]
    check_ok(result)
    for name, mode in (("rgba.png", "RGBA"), ("gray.png", "L"), ("deep.png", "I;16"),
                       ("palette.png", "P")):
        assert any(name in line and f"mode {mode} " in line and "converted to RGB" in line
                   for line in result.stdout.splitlines()), (name, result.stdout)
    assert "broken.jpg" in result.stdout + result.stderr and "1 unreadable" in result.stdout
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    expected = [str(paths["images"] / name)
                for name in ("nested/deep.png", "nested/gray.png", "palette.png", "rgba.png")]
    # recursive, sorted, the unreadable one skipped
    assert [row["path"] for row in rows] == expected
    for row in rows:
        assert row["predicted_class"] in CLASSES and 0 < float(row["confidence"]) <= 1
        assert abs(sum(float(row[f"prob_{name}"]) for name in CLASSES) - 1) < 1e-3
    with open(paths["csv"].with_suffix(".json")) as f:
        info = json.load(f)
    assert (info["classified"] == 4
            and info["unreadable"] == [str(paths["images"] / "nested/broken.jpg")])
    assert (info["config"]["OUTPUT_CSV"] == str(paths["csv"])
            and info["model"]["arch"] == "resnet18")


@pytest.mark.slow
def test_classify_rejects_bad_checkpoints_cleanly(runs):
    results, paths = runs
    check_clean_error(results["not_checkpoint"], "notes.pth", "not a readable PyTorch checkpoint")
    check_clean_error(results["pretrain_checkpoint"], "pre-training checkpoint")
    check_clean_error(results["missing_checkpoint"], "nowhere.pth", "no such checkpoint file")
    check_clean_error(results["malicious"], "malicious.pth", "refused")
    assert not paths["marker"].exists(), "loading the checkpoint ran code from its pickle"
