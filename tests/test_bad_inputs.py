"""A corpus of bad inputs fed to every script: each gets a clear message (file named, what is wrong, what to do)
and a non-zero exit, or is skipped with a count; never a traceback, never a silently wrong result."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_PRETRAIN, run_script, write_images
from make_demo_data import write_eurosat_like, write_ssl4eo_zarr
from simsiam_model import SimSiam


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny EuroSAT-shaped folder and a tiny pre-training checkpoint, shared by the cases below."""
    root = tmp_path_factory.mktemp("corpus")
    eurosat = root / "EuroSAT"
    write_eurosat_like(str(eurosat), n_per_class=10, size=32)
    model = SimSiam("resnet18", dim=64, pred_dim=16)
    config = {"ARCH": "resnet18", "IMAGE_SIZE": 32, "SMALL_STEM": False, "IN_CHANNELS": 3}
    checkpoint = root / "simsiam_resnet18_epoch_1.pth"
    torch.save({"kind": "simsiam_pretrain", "arch": "resnet18", "config": config, "epoch": 1,
                "model": model.state_dict()}, checkpoint)
    return {"root": root, "eurosat": eurosat, "checkpoint": checkpoint}


def _copy_eurosat(corpus, tmp_path):
    """A private copy of the split files (images are shared through absolute symlinks to class folders)."""
    target = tmp_path / "EuroSAT"
    target.mkdir()
    for entry in os.listdir(corpus["eurosat"]):
        source = corpus["eurosat"] / entry
        if source.is_dir():
            os.symlink(source, target / entry)
        else:
            (target / entry).write_bytes(source.read_bytes())
    return target


def _linear_eval(corpus, eurosat, tmp_path, *extra):
    return run_script("Linear_evaluation.py", f"--eurosat_dir={eurosat}", f"--output_dir={tmp_path / 'out'}",
                      f"--cache_dir={tmp_path / 'cache'}", f"--pretrained_path={corpus['checkpoint']}",
                      "--num_epochs=1", "--batch_size=16", *extra)


def _assert_clear_failure(result, *needles, code=1):
    output = result.stdout + result.stderr
    assert result.returncode == code, output[-2000:]
    assert "Traceback" not in output, output[-3000:]
    for needle in needles:
        assert needle in output, (needle, output[-2000:])


# ---------------------------------------------------------------------------------------------------------------
# EuroSAT split files (Linear_evaluation.py; finetune_model.py reads them through the same function)

@pytest.mark.parametrize("case, edit, needles", [
    ("missing column", lambda t: t.replace("ClassName", "Class"), ["train.csv", "missing column", "Filename"]),
    ("unknown class", lambda t: t.replace(",Forest\n", ",Forestt\n", 1), ["train.csv", "'Forestt'", "label_map.json"]),
    ("duplicated row", lambda t: t + t.splitlines()[1] + "\n", ["train.csv", "repeats", "Remove the duplicate"]),
    ("path with ..", lambda t: t.replace("Forest/", "../Forest/", 1), ["train.csv", "outside the data folder"]),
])
def test_bad_split_csv(corpus, tmp_path, case, edit, needles):
    eurosat = _copy_eurosat(corpus, tmp_path)
    csv = eurosat / "train.csv"
    csv.write_text(edit(csv.read_text()))
    _assert_clear_failure(_linear_eval(corpus, eurosat, tmp_path), *needles)


def test_label_map_that_is_not_a_mapping(corpus, tmp_path):
    eurosat = _copy_eurosat(corpus, tmp_path)
    (eurosat / "label_map.json").write_text(json.dumps(["AnnualCrop", "Forest"]))
    _assert_clear_failure(_linear_eval(corpus, eurosat, tmp_path), "label_map.json", "mapping")


def test_missing_eurosat_folder(corpus, tmp_path):
    _assert_clear_failure(_linear_eval(corpus, tmp_path / "nowhere", tmp_path), "nowhere", "make_dataset.py")


# ---------------------------------------------------------------------------------------------------------------
# checkpoints

def test_checkpoint_from_the_wrong_script(corpus, tmp_path):
    metrics = tmp_path / "pretrain_metrics.pth"
    torch.save({"kind": "simsiam_pretrain_metrics", "loss": [0.1]}, metrics)
    result = _linear_eval(corpus, corpus["eurosat"], tmp_path, f"--pretrained_path={metrics}")
    _assert_clear_failure(result, "pretrain_metrics.pth", "simsiam_pretrain_metrics")
    # a pre-training checkpoint is not a classifier
    result = run_script("classify_image.py", str(corpus["eurosat"] / "Forest" / "Forest_1.jpg"),
                        f"--model_path={corpus['checkpoint']}")
    _assert_clear_failure(result, "simsiam_resnet18_epoch_1.pth", "not a classifier", "Linear_evaluation.py")


def test_truncated_checkpoint(corpus, tmp_path):
    truncated = tmp_path / "simsiam_resnet18_epoch_9.pth"
    truncated.write_bytes(corpus["checkpoint"].read_bytes()[:4000])
    result = _linear_eval(corpus, corpus["eurosat"], tmp_path, f"--pretrained_path={truncated}")
    _assert_clear_failure(result, "simsiam_resnet18_epoch_9.pth", "truncated")


def test_checkpoint_whose_pickle_would_run_code(corpus, tmp_path):
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"kind": "simsiam_pretrain", "x": Payload()}, f)  # a plain pickle, as an attacker would write
    for result in (_linear_eval(corpus, corpus["eurosat"], tmp_path, f"--pretrained_path={evil}"),
                   run_script("classify_image.py", str(corpus["eurosat"] / "Forest" / "Forest_1.jpg"),
                              f"--model_path={evil}")):
        _assert_clear_failure(result, "evil.pth")
    assert not marker.exists()
    torch.save({"kind": "simsiam_pretrain", "x": Payload()}, evil)  # and inside a torch zip file
    _assert_clear_failure(_linear_eval(corpus, corpus["eurosat"], tmp_path, f"--pretrained_path={evil}"),
                          "evil.pth", "refused")
    assert not marker.exists()


def test_truncated_resume_checkpoint(tmp_path):
    images = tmp_path / "images"
    write_images(str(images), 16)
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint_last.pth").write_bytes(b"PK\x03\x04 half a zip")
    result = run_script("train_simsiam.py", f"--data_dir={images}", f"--output_dir={out}",
                        f"--cache_dir={tmp_path / 'cache'}", *TINY_PRETRAIN, "--num_epochs=1")
    _assert_clear_failure(result, "checkpoint_last.pth", "--resume=False")


# ---------------------------------------------------------------------------------------------------------------
# images

def test_bad_and_unusual_images_in_the_pretraining_folder(tmp_path):
    images = tmp_path / "images"
    write_images(str(images), 16)
    (images / "zero.png").write_bytes(b"")
    good = (images / "part0" / "img_000.png").read_bytes()
    (images / "truncated.png").write_bytes(good[:len(good) // 2])
    (images / "notes.jpg").write_text("this is not an image")
    Image.new("L", (40, 40), 100).save(images / "gray.png")
    Image.new("RGBA", (40, 40), (1, 2, 3, 4)).save(images / "rgba.png")
    Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)).save(images / "sixteen.png")
    result = run_script("train_simsiam.py", f"--data_dir={images}", f"--output_dir={tmp_path / 'out'}",
                        f"--cache_dir={tmp_path / 'cache'}", *TINY_PRETRAIN, "--num_epochs=1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped 3 unreadable" in result.stdout  # zero-byte, truncated, not an image; 16 + 3 converted train
    assert "19 images" in result.stdout


def test_empty_and_missing_pretraining_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder, needle in ((tmp_path / "empty", "no images"), (tmp_path / "missing", "does not exist")):
        result = run_script("train_simsiam.py", f"--data_dir={folder}", *TINY_PRETRAIN)
        _assert_clear_failure(result, str(folder), needle, "make_dataset.py")


def test_batch_larger_than_the_data_set(tmp_path):
    images = tmp_path / "images"
    write_images(str(images), 6)
    result = run_script("train_simsiam.py", f"--data_dir={images}", f"--output_dir={tmp_path / 'out'}",
                        f"--cache_dir={tmp_path / 'cache'}", *TINY_PRETRAIN, "--num_epochs=1")
    _assert_clear_failure(result, "only 6 usable images", "--batch_size")


def test_overrides_unknown_and_wrong_type_for_every_script():
    integer_setting = {"train_simsiam.py": "seed", "make_dataset.py": "num_processes", "Linear_evaluation.py": "seed",
                       "finetune_model.py": "seed", "classify_image.py": "batch_size", "plot_results.py": "dpi"}
    for script, name in integer_setting.items():
        _assert_clear_failure(run_script(script, "--no_such_setting=1"), "unknown setting", "valid names",
                              code=2)
        _assert_clear_failure(run_script(script, f"--{name}=abc"), "must be an integer", code=2)


# ---------------------------------------------------------------------------------------------------------------
# Zarr files

def test_bad_zarr_files_are_skipped_by_name(tmp_path):
    folder = tmp_path / "zarr"
    folder.mkdir()
    write_ssl4eo_zarr(str(folder / "good.zarr.zip"), n_samples=1, size=16)
    write_ssl4eo_zarr(str(folder / "nobands.zarr.zip"), n_samples=1, size=16, drop=["bands"])
    write_ssl4eo_zarr(str(folder / "nob04.zarr.zip"), n_samples=1, size=16, drop_bands=["B04"])
    whole = (folder / "good.zarr.zip").read_bytes()
    (folder / "truncated.zarr.zip").write_bytes(whole[:len(whole) // 2])
    result = run_script("make_dataset.py", f"--input_dir={folder}", f"--output_dir={tmp_path / 'png'}",
                        f"--manifest={tmp_path / 'manifest.csv'}", "--num_processes=1")
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Traceback" not in output, output[-2000:]
    for name in ("nobands.zarr.zip", "nob04.zarr.zip", "truncated.zarr.zip"):
        assert name in output
    assert "B04" in output and "3 failed" in output
    assert len([n for n in os.listdir(tmp_path / "png") if n.endswith(".png")]) == 4  # 1 sample x 4 seasons
    _assert_clear_failure(run_script("make_dataset.py", f"--input_dir={tmp_path / 'none'}"), "none",
                          "data.sh")
