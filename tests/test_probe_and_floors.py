"""The linear probe and the two floors every result is shown beside: image statistics computed as
by hand, the probe's weight decay and epoch chosen on validation only, a standardisation that does
not blow up near-constant features; results of one checkpoint never replaced by another's, and the
default checkpoint always the current run's."""
import json

import numpy as np
import pytest
import torch

import simsiam_data as data
from conftest import run_in_process
from runtime import CheckpointError
from test_evaluation import make_eurosat, make_pretrain_checkpoint

TINY_PROBE = ["--num_epochs=3", "--batch_size=8", "--weight_decays=0 1e-3 1e-1"]


def test_image_statistics_of_a_known_image_equal_values_computed_by_hand():
    image = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    image[0, :, :, 0] = [[0, 10], [20, 30]]  # red: mean 15, population std sqrt(125)
    image[0, :, :, 1] = 7  # green: constant
    image[0, :, :, 2] = [[255, 255], [0, 0]]  # blue: mean 127.5, std 127.5
    stats = data.image_statistics(image)
    expected = [15, 7, 127.5, 125 ** 0.5, 0, 127.5, 0, 7, 0, 30, 7, 255]
    assert stats.shape == (1, 12)
    assert torch.allclose(stats[0], torch.tensor(expected, dtype=torch.float32), atol=1e-4)
    # a memory map in chunks gives the same as one block
    many = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    assert torch.allclose(data.image_statistics(many, chunk=2),
                          data.image_statistics(many, chunk=5))


def test_standardization_does_not_blow_up_a_near_constant_feature():
    torch.manual_seed(0)
    features = torch.randn(1000, 8)
    features[:, 3] = 5.0 + 1e-7 * torch.randn(1000)  # rounding noise on a constant
    mean, std = data.standardization(features)
    scaled = (features - mean) / std
    assert scaled[:, 3].abs().max() < 0.01  # not unit variance
    assert torch.allclose(scaled[:, 0].std(), torch.tensor(1.0), atol=1e-5)


@pytest.fixture(scope="module")
def eurosat(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe") / "EuroSAT"
    make_eurosat(str(root))
    return root


def _evaluate(eurosat, out, *args):
    return run_in_process("Linear_evaluation.py", f"--eurosat_dir={eurosat}",
                          f"--output_dir={out}", f"--cache_dir={out / 'cache'}", *TINY_PROBE,
                          *args)


def _metrics(path):
    return torch.load(path, weights_only=False)


@pytest.mark.slow
def test_the_probe_never_reads_test_labels_before_its_choice(eurosat, tmp_path, monkeypatch):
    """Test labels are first read after the last epoch's choice is on disk; and permuting them
    changes nothing of the choice (weight decay, epoch, validation accuracy, the saved head)."""
    random_init = ["--pretrained_path=random", "--arch=resnet18", "--image_size=32"]
    reads = []
    load_splits = data.load_eurosat_splits

    class WatchedLabels(dict):
        def __getitem__(self, split):
            if split == "test" and not reads:
                metrics_file = tmp_path / "first" / "linear_eval_metrics_random.pth"
                reads.append(_metrics(metrics_file)["epochs"] if metrics_file.exists() else [])
            return super().__getitem__(split)

    def watched(*args, **kwargs):
        splits, labels = load_splits(*args, **kwargs)
        return splits, WatchedLabels(labels)

    monkeypatch.setattr(data, "load_eurosat_splits", watched)
    first = _evaluate(eurosat, tmp_path / "first", *random_init)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert reads == [[1, 2, 3]], "test labels were read before the probe's last epoch"
    monkeypatch.setattr(data, "load_eurosat_splits", load_splits)

    shuffled = eurosat.parent / "EuroSAT_shuffled_test"
    if not shuffled.exists():
        import shutil
        shutil.copytree(eurosat, shuffled)
        lines = (shuffled / "test.csv").read_text().splitlines()
        names = json.loads((shuffled / "label_map.json").read_text())
        rows = [line.split(",") for line in lines[1:]]
        classes = [row[3] for row in rows]
        classes = classes[5:] + classes[:5]  # every test image gets another class
        (shuffled / "test.csv").write_text("\n".join(
            [lines[0]] + [f"{r[0]},{r[1]},{names[c]},{c}" for r, c in zip(rows, classes)]) + "\n")
    second = _evaluate(shuffled, tmp_path / "second", *random_init)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    a = _metrics(tmp_path / "first" / "linear_eval_metrics_random.pth")
    b = _metrics(tmp_path / "second" / "linear_eval_metrics_random.pth")
    for key in ("weight_decay", "best_epoch", "best_val_acc", "probe", "val_acc", "train_acc"):
        assert a[key] == b[key], key
    assert a["test_acc"] != b["test_acc"]  # the labels did change
    chosen = [max(c["val_acc"]) for c in a["probe"]["curves"]]
    assert a["best_val_acc"] == max(chosen)
    assert a["weight_decay"] == a["probe"]["weight_decays"][chosen.index(max(chosen))]
    head_a = torch.load(tmp_path / "first" / "linear_eval_eurosat_best_model_random.pth")["head"]
    head_b = torch.load(tmp_path / "second" / "linear_eval_eurosat_best_model_random.pth")["head"]
    assert all(torch.equal(head_a[k], head_b[k]) for k in head_a)
    assert "weight decay 0.1: best val" in first.stdout and "<- chosen" in first.stdout


@pytest.mark.slow
def test_image_statistics_floor_runs_the_same_protocols(eurosat, tmp_path):
    result = _evaluate(eurosat, tmp_path, "--pretrained_path=image_stats")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    metrics = _metrics(tmp_path / "linear_eval_metrics_image_stats.pth")
    assert metrics["feature_dim"] == 12 and metrics["pretrained_identity"] == "image statistics"
    assert set(metrics["knn"]) == {"k20", "k200"} and metrics["test_acc"] is not None
    # colour separates these generated classes completely
    assert metrics["test_acc"] >= 90 and metrics["knn"]["k20"] >= 90
    assert not (tmp_path / "linear_eval_eurosat_best_model_image_stats.pth").exists()
    assert "no network" in run_in_process(
        "finetune_model.py", f"--eurosat_dir={eurosat}", "--pretrained_path=image_stats").stderr
    # every setting that has no meaning for 12 numbers per image is answered by name
    for settings, name in ((["--feature_cache=False"], "FEATURE_CACHE"),
                           (["--feature_cache=False", "--augment=True"], "FEATURE_CACHE"),
                           (["--image_size=64"], "IMAGE_SIZE")):
        refused = _evaluate(eurosat, tmp_path / "refused", "--pretrained_path=image_stats",
                            *settings)
        assert refused.returncode == 2 and name in refused.stderr, refused.stderr
        assert not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_results_of_another_checkpoint_are_not_replaced(eurosat, tmp_path):
    for epoch in (1, 2):
        make_pretrain_checkpoint(tmp_path / f"simsiam_resnet18_epoch_{epoch}.pth")
    # epoch 2 differs from epoch 1 (another seed's weights)
    second = torch.load(tmp_path / "simsiam_resnet18_epoch_2.pth", weights_only=False)
    second["model"] = {k: v + 0.01 if v.is_floating_point() else v
                       for k, v in second["model"].items()}
    torch.save(second, tmp_path / "simsiam_resnet18_epoch_2.pth")
    first_path = str(tmp_path / "simsiam_resnet18_epoch_1.pth")
    done = _evaluate(eurosat, tmp_path, f"--pretrained_path={first_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    before = (tmp_path / "linear_eval_metrics.pth").read_bytes()
    refused = _evaluate(eurosat, tmp_path)  # the newest: epoch 2, another checkpoint
    assert refused.returncode == 1
    assert "linear_eval_metrics.pth holds the results of" in refused.stderr
    assert "simsiam_resnet18_epoch_1.pth" in refused.stderr
    assert "--overwrite=True" in refused.stderr
    assert (tmp_path / "linear_eval_metrics.pth").read_bytes() == before
    again = _evaluate(eurosat, tmp_path, f"--pretrained_path={first_path}")  # the same: allowed
    assert again.returncode == 0, again.stderr[-2000:]
    replaced = _evaluate(eurosat, tmp_path, "--overwrite=True")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert "epoch_2.pth" in _metrics(tmp_path / "linear_eval_metrics.pth")["pretrained_identity"]
    refused = run_in_process("finetune_model.py", f"--eurosat_dir={eurosat}",
                             f"--output_dir={tmp_path}", f"--cache_dir={tmp_path / 'cache'}",
                             "--num_epochs=1", "--batch_size=8", "--amp=off")
    assert refused.returncode == 0  # no fine-tuning results there yet
    refused = run_in_process("finetune_model.py", f"--eurosat_dir={eurosat}",
                             f"--output_dir={tmp_path}", f"--cache_dir={tmp_path / 'cache'}",
                             "--num_epochs=1", "--batch_size=8", "--amp=off",
                             f"--pretrained_path={first_path}")
    assert refused.returncode == 1 and "finetune_metrics.pth holds the results of" in \
        refused.stderr


@pytest.mark.slow
def test_evaluations_take_the_current_runs_checkpoint_not_an_older_runs(first_epoch, tmp_path):
    """A folder holding an older run's epoch 2 and a new run (--resume=False) of 1 epoch: the
    default is the new run's epoch 1. While a new run has written no epoch file yet, the default
    refuses and lists the older files."""
    from simsiam_model import newest_pretrained
    out, common = tmp_path / "out", [*first_epoch, "--save_every=1"]
    # the older run: the session's first epoch, continued to 2
    assert run_in_process("train_simsiam.py", *common, "--num_epochs=2").returncode == 0
    assert newest_pretrained(str(out)) == str(out / "simsiam_resnet18_epoch_2.pth")
    again = run_in_process("train_simsiam.py", *common, "--num_epochs=1", "--resume=False")
    assert again.returncode == 0
    assert "holds 2 epoch file(s) of an earlier run" in again.stdout
    assert newest_pretrained(str(out)) == str(out / "simsiam_resnet18_epoch_1.pth")
    metrics = torch.load(out / "pretrain_metrics.pth", weights_only=False)
    metrics["checkpoints"] = {}  # a new run that has not reached its first epoch file
    torch.save(metrics, out / "pretrain_metrics.pth")
    with pytest.raises(CheckpointError, match="simsiam_resnet18_epoch_2.pth"):
        newest_pretrained(str(out))


# -------------------------------------------------------------------------------------------------
# label fractions: the same labelled images for every initialisation, validation and test whole

def test_label_subset_is_stratified_fixed_and_nested():
    labels = [0] * 200 + [1] * 150 + [2] * 3
    one, ten = data.label_subset(labels, 0.01), data.label_subset(labels, 0.1)
    counts = np.bincount(np.asarray(labels)[one])
    assert counts.tolist() == [2, 2, 1]  # round(0.01 x 150) = 2; a class of 3 keeps one image
    assert np.bincount(np.asarray(labels)[ten]).tolist() == [20, 15, 1]
    assert np.array_equal(one, data.label_subset(labels, 0.01))  # the same every time
    assert set(one) <= set(ten)  # 1 % is within 10 %
    assert np.array_equal(data.label_subset(labels, 1.0), np.arange(len(labels)))
    # an epoch walks the subset round(1 / fraction) times: the steps of one full pass
    order = data.epoch_order(len(one), data.subset_passes(0.01), torch.Generator().manual_seed(0))
    assert len(order) == 100 * len(one) and np.bincount(order).tolist() == [100] * len(one)
    assert np.array_equal(data.epoch_order(7, 1, torch.Generator().manual_seed(3)),
                          torch.randperm(7, generator=torch.Generator().manual_seed(3)).numpy())


def test_a_label_fraction_trains_on_its_subset_and_scores_everything(eurosat, tmp_path):
    out = tmp_path / "out"
    bad = _evaluate(eurosat, out, "--pretrained_path=image_stats", "--label_fraction=0")
    assert bad.returncode == 2 and "LABEL_FRACTION" in bad.stderr
    result = _evaluate(eurosat, out, "--pretrained_path=image_stats", "--label_fraction=0.25")
    assert result.returncode == 0, result.stderr
    metrics = _metrics(out / "linear_eval_metrics_image_stats_labels25pct.pth")
    # 8 training images of each of the 4 classes: 2 each; validation and test stay whole
    assert metrics["label_fraction"] == 0.25 and metrics["train_labels"] == 8
    assert len(metrics["test_files"]) == 32 and len(metrics["test_predictions"]) == 32
    assert "images: train 8, validation 32, test 32" in result.stdout
    assert "each epoch walks them 4 times" in result.stdout
    # the kNN bank is the subset: 8 images, fewer than either k, so neither is a neighbourhood
    assert metrics["knn"] == metrics["knn_val"] == {"k20": None, "k200": None}
    assert "kNN k20 - (val -) k200 - (val -)" in result.stdout
    # the same subset for a network (random init here), and its files apart from 100 %'s
    network = _evaluate(eurosat, out, "--pretrained_path=random", "--arch=resnet18",
                        "--image_size=32", "--label_fraction=0.25")
    assert network.returncode == 0, network.stderr
    random_metrics = _metrics(out / "linear_eval_metrics_random_labels25pct.pth")
    assert random_metrics["train_files_sha1"] == metrics["train_files_sha1"]
    assert (out / "linear_eval_eurosat_best_model_random_labels25pct.pth").is_file()
    assert not (out / "linear_eval_metrics_random.pth").exists()


def test_fine_tuning_on_a_label_fraction_keeps_the_steps_of_a_full_pass(eurosat, tmp_path):
    args = [f"--eurosat_dir={eurosat}", f"--output_dir={tmp_path}",
            f"--cache_dir={tmp_path / 'cache'}", "--pretrained_path=random", "--arch=resnet18",
            "--image_size=32", "--num_epochs=1", "--batch_size=8", "--amp=off"]
    result = run_in_process("finetune_model.py", *args, "--label_fraction=0.25")
    assert result.returncode == 0, result.stderr
    # 8 labelled images walked 4 times: the 4 steps of one pass over the 32 of train.csv
    assert "images: train 8, validation 32, test 32" in result.stdout
    assert "; 4 steps per epoch" in result.stdout
    metrics = _metrics(tmp_path / "finetune_metrics_random_labels25pct.pth")
    assert metrics["label_fraction"] == 0.25 and metrics["train_labels"] == 8
    assert len(metrics["test_predictions"]) == 32
    saved = torch.load(tmp_path / "finetuned_eurosat_best_model_random_labels25pct.pth")
    assert saved["label_fraction"] == 0.25


def test_the_labelled_images_digest_is_of_the_set_of_names_not_their_order_or_folder():
    """train_files_sha1 says whether two evaluations trained on the same labelled images: the
    same names in another order, or under another data folder, give the same digest (the one
    recorded since it existed: sorted names); one image more or less does not."""
    from simsiam_model import evaluation_metrics
    config = {"SEED": 0, "PRETRAINED_PATH": "random", "ARCH": "resnet18", "IMAGE_SIZE": 32,
              "LABEL_FRACTION": 1.0}

    def digest(paths):
        split = data.EuroSATSplit(None, [0] * len(paths), paths, ["A", "B"])
        return evaluation_metrics("x", config, {"train": split, "test": split})["train_files_sha1"]

    names = ["B/b_1.jpg", "A/a_2.jpg", "A/a_1.jpg"]
    first = digest([f"/data/EuroSAT/{n}" for n in names])
    assert first == digest([f"/elsewhere/copy/{n}" for n in sorted(names)])
    assert first == data.names_digest(sorted(names))
    assert first != digest([f"/data/EuroSAT/{n}" for n in names[:2]])
