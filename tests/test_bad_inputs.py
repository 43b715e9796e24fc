"""A corpus of bad inputs fed to every script: each gets a clear message (file named, what is
wrong, what to do) and a non-zero exit, or is skipped with a count; never a traceback, never a
silently wrong result."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import simsiam_data as data
from conftest import TINY_PRETRAIN, run_in_process, run_script, write_images
from make_demo_data import write_eurosat_like, write_ssl4eo_zarr
from runtime import DataError, load_checkpoint
from simsiam_model import Classifier, SimSiam, classifier_checkpoint


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny EuroSAT-shaped folder and a tiny pre-training checkpoint,
    shared by the cases below."""
    root = tmp_path_factory.mktemp("corpus")
    eurosat = root / "EuroSAT"
    write_eurosat_like(str(eurosat), n_per_class=10, size=32)
    model = SimSiam("resnet18", dim=64, pred_dim=16)
    config = {"ARCH": "resnet18", "IMAGE_SIZE": 32, "SMALL_STEM": False, "IN_CHANNELS": 3}
    checkpoint = root / "simsiam_resnet18_epoch_1.pth"
    torch.save({"kind": "simsiam_pretrain", "arch": "resnet18", "config": config, "epoch": 1,
                "model": model.state_dict()}, checkpoint)
    classifier = root / "classifier.pth"
    class_names = sorted(json.loads((eurosat / "label_map.json").read_text()))
    torch.save(classifier_checkpoint(Classifier(model.backbone, 512, len(class_names)), config,
                                     class_names, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
               classifier)
    return {"root": root, "eurosat": eurosat, "checkpoint": checkpoint, "classifier": classifier}


def _copy_eurosat(corpus, tmp_path):
    """A private copy of the split files
    (images are shared through absolute symlinks to class folders)."""
    target = tmp_path / "EuroSAT"
    target.mkdir()
    for entry in os.listdir(corpus["eurosat"]):
        source = corpus["eurosat"] / entry
        if source.is_dir():
            os.symlink(source, target / entry)
        else:
            (target / entry).write_bytes(source.read_bytes())
    return target


# Most cases run a script in-process (run_in_process: the same main and messages, without
# seconds of start-up each); a few run as a user would (run_script), to cover the command line.

def _linear_eval(corpus, eurosat, tmp_path, *extra):
    return run_in_process("Linear_evaluation.py", f"--eurosat_dir={eurosat}",
                          f"--output_dir={tmp_path / 'out'}", f"--cache_dir={tmp_path / 'cache'}",
                          f"--pretrained_path={corpus['checkpoint']}", "--num_epochs=1",
                          "--batch_size=16", *extra)


def _assert_clear_failure(result, *needles, code=1):
    output = result.stdout + result.stderr
    assert result.returncode == code, output[-2000:]
    assert "Traceback" not in output, output[-3000:]
    for needle in needles:
        assert needle in output, (needle, output[-2000:])


# -------------------------------------------------------------------------------------------------
# EuroSAT split files
# (Linear_evaluation.py; finetune_model.py reads them through the same function)

@pytest.mark.parametrize("case, edit, needles", [
    ("missing column", lambda t: t.replace("ClassName", "Class"),
     ["train.csv", "missing column", "Filename"]),
    ("unknown class", lambda t: t.replace(",Forest\n", ",Forestt\n", 1),
     ["train.csv", "'Forestt'", "label_map.json"]),
    ("duplicated row", lambda t: t + t.splitlines()[1] + "\n",
     ["train.csv", "repeats", "Remove the duplicate"]),
    ("path with ..", lambda t: t.replace("Forest/", "../Forest/", 1),
     ["train.csv", "outside the data folder"]),
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
    _assert_clear_failure(_linear_eval(corpus, tmp_path / "nowhere", tmp_path), "nowhere",
                          "make_dataset.py")


def test_a_class_the_training_labels_lack_stops_the_evaluation_by_name(corpus, tmp_path):
    """Issue 31: SeaLake in validation.csv and test.csv but not in train.csv: the evaluation
    exited 0, SeaLake 0.0 %, test accuracy capped at 90 %. Now it stops before any image is
    decoded (the kNN monitor of pre-training too)."""
    eurosat = _copy_eurosat(corpus, tmp_path)
    train = eurosat / "train.csv"
    train.write_text("".join(line for line in train.read_text().splitlines(keepends=True)
                             if not line.rstrip().endswith(",SeaLake")))
    result = _linear_eval(corpus, eurosat, tmp_path)
    _assert_clear_failure(result, "class 'SeaLake' (validation.csv ", "test.csv ", str(train),
                          "never predict it", "take its rows out of validation.csv and test.csv")
    assert not (tmp_path / "cache").exists()
    images = tmp_path / "images"
    write_images(str(images), 16)
    result = run_in_process("train_simsiam.py", f"--data_dir={images}", f"--knn_data_dir={eurosat}",
                            f"--output_dir={tmp_path / 'pretrain'}",
                            f"--cache_dir={tmp_path / 'cache'}", *TINY_PRETRAIN, "--num_epochs=1")
    _assert_clear_failure(result, "class 'SeaLake' (validation.csv ", str(train))
    assert not (tmp_path / "cache").exists()


def test_check_classes_on_labelled_subsets():
    """The one check of the classes, as a label fraction calls it: on the labels it is given."""
    names = ["Forest", "River", "SeaLake"]
    logged = []
    data.check_classes({"train": [0, 1, 2], "validation": [0, 1, 2], "test": [0, 1]}, names,
                       "train.csv", log=logged.append)
    assert logged == ["warning: test.csv has no image of SeaLake: the test accuracy says nothing "
                      "about that class."]
    with pytest.raises(DataError, match=r"classes 'River' \(test.csv 2\); 'SeaLake' \(validation"
                                        r".csv 1, test.csv 1\) have images to score but none "
                                        r"among the training labels \(the 1 % label fraction of "
                                        r"train.csv\)"):
        data.check_classes({"train": [0, 0], "validation": [0, 2], "test": [1, 1, 2]}, names,
                           "the 1 % label fraction of train.csv")


# -------------------------------------------------------------------------------------------------
# checkpoints

def test_checkpoint_from_the_wrong_script(corpus, tmp_path):
    metrics = tmp_path / "pretrain_metrics.pth"
    torch.save({"kind": "simsiam_pretrain_metrics", "loss": [0.1]}, metrics)
    result = _linear_eval(corpus, corpus["eurosat"], tmp_path, f"--pretrained_path={metrics}")
    _assert_clear_failure(result, "pretrain_metrics.pth", "simsiam_pretrain_metrics")
    # a pre-training checkpoint is not a classifier
    result = run_in_process("classify_image.py", str(corpus["eurosat"] / "Forest" / "Forest_1.jpg"),
                        f"--model_path={corpus['checkpoint']}")
    _assert_clear_failure(result, "simsiam_resnet18_epoch_1.pth", "not a classifier",
                          "Linear_evaluation.py")


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
        # a plain pickle, as an attacker would write
        pickle.dump({"kind": "simsiam_pretrain", "x": Payload()}, f)
    for result in (_linear_eval(corpus, corpus["eurosat"], tmp_path, f"--pretrained_path={evil}"),
                   run_in_process("classify_image.py",
                                  str(corpus["eurosat"] / "Forest" / "Forest_1.jpg"),
                                  f"--model_path={evil}")):
        _assert_clear_failure(result, "evil.pth")
    assert not marker.exists()
    torch.save({"kind": "simsiam_pretrain", "x": Payload()}, evil)  # and inside a torch zip file
    _assert_clear_failure(_linear_eval(corpus, corpus["eurosat"], tmp_path,
                                       f"--pretrained_path={evil}"),
                          "evil.pth", "refused")
    assert not marker.exists()


def test_truncated_resume_checkpoint(tmp_path):
    images = tmp_path / "images"
    write_images(str(images), 16)
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint_last.pth").write_bytes(b"PK\x03\x04 half a zip")
    result = run_in_process("train_simsiam.py", f"--data_dir={images}", f"--output_dir={out}",
                            f"--cache_dir={tmp_path / 'cache'}", *TINY_PRETRAIN, "--num_epochs=1")
    _assert_clear_failure(result, "checkpoint_last.pth", "--resume=False")


# -------------------------------------------------------------------------------------------------
# images

@pytest.mark.slow
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
    result = run_in_process("train_simsiam.py", f"--data_dir={images}",
                            f"--output_dir={tmp_path / 'out'}", f"--cache_dir={tmp_path / 'cache'}",
                            *TINY_PRETRAIN, "--num_epochs=1")
    assert result.returncode == 0, result.stderr[-2000:]
    # zero-byte, truncated, not an image; 16 + 3 converted train
    assert "skipped 3 unreadable" in result.stdout
    assert "19 images" in result.stdout


def test_empty_and_missing_pretraining_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder, needle in ((tmp_path / "empty", "no images"),
                           (tmp_path / "missing", "does not exist")):
        result = run_in_process("train_simsiam.py", f"--data_dir={folder}",
                                f"--output_dir={tmp_path / 'out'}", *TINY_PRETRAIN)
        _assert_clear_failure(result, str(folder), needle, "make_dataset.py")


def test_batch_larger_than_the_data_set(tmp_path):
    images = tmp_path / "images"
    write_images(str(images), 6)
    result = run_in_process("train_simsiam.py", f"--data_dir={images}",
                            f"--output_dir={tmp_path / 'out'}",
                            f"--cache_dir={tmp_path / 'cache'}", *TINY_PRETRAIN, "--num_epochs=1")
    _assert_clear_failure(result, "only 6 usable images", "--batch_size")


@pytest.mark.slow
def test_overrides_unknown_and_wrong_type_for_every_script():
    integer_setting = {"train_simsiam.py": "seed", "make_dataset.py": "num_processes",
                       "Linear_evaluation.py": "seed", "finetune_model.py": "seed",
                       "classify_image.py": "batch_size", "plot_results.py": "dpi"}
    # once as a user runs it, then in-process (the same main, without seconds of start-up)
    _assert_clear_failure(run_script("train_simsiam.py", "--no_such_setting=1"),
                          "unknown setting", "valid names", code=2)
    for script, name in integer_setting.items():
        _assert_clear_failure(run_in_process(script, "--no_such_setting=1"), "unknown setting",
                              "valid names", code=2)
        _assert_clear_failure(run_in_process(script, f"--{name}=abc"), "must be an integer",
                              code=2)


# -------------------------------------------------------------------------------------------------
# Zarr files

@pytest.mark.slow
def test_bad_zarr_files_are_skipped_by_name(tmp_path):
    folder = tmp_path / "zarr"
    folder.mkdir()
    write_ssl4eo_zarr(str(folder / "good.zarr.zip"), n_samples=1, size=16)
    write_ssl4eo_zarr(str(folder / "nobands.zarr.zip"), n_samples=1, size=16, drop=["bands"])
    write_ssl4eo_zarr(str(folder / "nob04.zarr.zip"), n_samples=1, size=16, drop_bands=["B04"])
    whole = (folder / "good.zarr.zip").read_bytes()
    (folder / "truncated.zarr.zip").write_bytes(whole[:len(whole) // 2])
    result = run_script("make_dataset.py", f"--input_dir={folder}",
                        f"--output_dir={tmp_path / 'png'}",
                        f"--manifest={tmp_path / 'manifest.csv'}", "--num_processes=1")
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Traceback" not in output, output[-2000:]
    for name in ("nobands.zarr.zip", "nob04.zarr.zip", "truncated.zarr.zip"):
        assert name in output
    assert "B04" in output and "3 failed" in output
    # 1 sample x 4 seasons
    assert len([n for n in os.listdir(tmp_path / "png") if n.endswith(".png")]) == 4
    _assert_clear_failure(run_script("make_dataset.py", f"--input_dir={tmp_path / 'none'}"),
                          "none", "data.sh")


# -------------------------------------------------------------------------------------------------
# second round

def _bomb_png(path, side=20000):
    """A PNG header that declares side x side pixels, far over PIL's decompression-bomb limit
    (a few bytes)."""
    import struct
    import zlib

    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))


# kind 3: every constant checked at start-up, before any data is read
# (the data folders here do not exist)
@pytest.mark.parametrize("script, setting, name", [
    ("train_simsiam.py", "--batch_size=-1", "BATCH_SIZE"),
    ("train_simsiam.py", "--image_size=0", "IMAGE_SIZE"),
    ("train_simsiam.py", "--proj_dim=0", "PROJ_DIM"),
    ("train_simsiam.py", "--crop_scale_min=5", "CROP_SCALE_MIN"),
    ("train_simsiam.py", "--num_workers=-1", "NUM_WORKERS"),
    ("train_simsiam.py", "--save_every=0", "SAVE_EVERY"),
    ("train_simsiam.py", "--num_epochs=0", "NUM_EPOCHS"),
    ("train_simsiam.py", "--pipeline=fastest", "PIPELINE"),
    ("train_simsiam.py", "--amp=True", "AMP"), ("train_simsiam.py", "--device=tpu", "DEVICE"),
    ("train_simsiam.py", "--warmup_epochs=200", "WARMUP_EPOCHS"),
    ("train_simsiam.py", "--base_lr=0", "BASE_LR"),
    ("train_simsiam.py", "--stem_stride=2", "stem_stride"),
    ("Linear_evaluation.py", "--knn_temperature=0", "KNN_TEMPERATURE"),
    ("Linear_evaluation.py", "--image_size=-3", "IMAGE_SIZE"),
    ("Linear_evaluation.py", "--batch_size=0", "BATCH_SIZE"),
    ("Linear_evaluation.py", "--arch=vgg16", "ARCH"),
    ("Linear_evaluation.py", "--label_fraction=1.5", "LABEL_FRACTION"),
    ("finetune_model.py", "--label_fraction=0", "LABEL_FRACTION"),
    ("finetune_model.py", "--batch_size=1", "BATCH_SIZE"),
    ("finetune_model.py", "--crop_scale_min=0", "CROP_SCALE_MIN"),
    ("classify_image.py", "--top_k=0", "TOP_K"), ("plot_results.py", "--dpi=0", "DPI"),
    ("scripts/bench_pretrain.py", "--steps=0", "STEPS"),
    ("scripts/bench_quality.py", "--preset=tpu", "PRESET"),
])
def test_settings_are_checked_before_any_data_is_read(tmp_path, script,
                                                      setting, name):
    nowhere = tmp_path / "nowhere"
    folders = {"train_simsiam.py": [f"--data_dir={nowhere}", f"--output_dir={tmp_path / 'out'}"],
               "Linear_evaluation.py": [f"--eurosat_dir={nowhere}",
                                        f"--output_dir={tmp_path / 'out'}"],
               "finetune_model.py": [f"--eurosat_dir={nowhere}",
                                     f"--output_dir={tmp_path / 'out'}"],
               "classify_image.py": [str(nowhere)], "plot_results.py": [f"--output_dir={nowhere}"],
               "scripts/bench_pretrain.py": [],
               "scripts/bench_quality.py": [f"--eurosat_dir={nowhere}"]}
    code, _, err = run_in_process(script, *folders[script], setting)
    assert code == 2, err
    assert name in err and "nowhere" not in err  # the setting is named; no data was looked at
    assert not (tmp_path / "out").exists()  # and no output folder was made


def test_a_gpu_that_is_not_there_is_a_setting_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = run_in_process("train_simsiam.py", f"--data_dir={tmp_path}", "--device=cuda")
    assert code == 2 and "DEVICE = 'cuda'" in err and "0 CUDA GPU(s)" in err


# kind 1: one tuple of image-read errors, the decompression-bomb error included, used everywhere
@pytest.mark.slow
def test_an_image_over_the_decompression_bomb_limit(corpus, tmp_path):
    import simsiam_data as data
    from runtime import DataError
    images = tmp_path / "images"
    # 16 files in two whole batches: the reference pipeline's epoch reads every one, whatever
    # the order (with a 17th, the one left over would depend on the seed's order)
    write_images(str(images), 15)
    _bomb_png(images / "bomb.png")
    for pipeline in ("fast", "reference"):
        code, out, err = run_in_process(
            "train_simsiam.py", f"--data_dir={images}", f"--output_dir={tmp_path / pipeline}",
            f"--cache_dir={tmp_path / 'cache'}", *TINY_PRETRAIN, "--num_epochs=1",
            f"--pipeline={pipeline}")
        assert code == 0, err
        assert "bomb.png" in out and "DecompressionBombError" in out
        assert load_checkpoint(
            str(tmp_path / pipeline / "pretrain_metrics.pth"))["skipped_images"] == [1]
    eurosat = _copy_eurosat(corpus, tmp_path)
    os.unlink(eurosat / "Forest")
    (eurosat / "Forest").mkdir()
    for i in range(1, 11):
        _bomb_png(eurosat / "Forest" / f"Forest_{i}.jpg", side=20000 + i)
    with pytest.raises(DataError, match="DecompressionBombError"):
        data.load_eurosat_cached(str(eurosat), "test", str(tmp_path / "cache"))
    code, out, err = run_in_process("classify_image.py", str(eurosat / "Forest"),
                                    f"--model_path={corpus['classifier']}",
                                    f"--output_csv={tmp_path / 'p.csv'}")
    assert code == 1 and "none of the 10 images" in err and "DecompressionBombError" in out + err


# kind 2: split files, kNN folders and image lists
def test_split_rows_naming_missing_or_numeric_files(corpus, tmp_path):
    import simsiam_data as data
    from runtime import DataError
    eurosat = _copy_eurosat(corpus, tmp_path)
    csv = eurosat / "train.csv"
    lines = csv.read_text().splitlines()
    index, filename, label, name = lines[3].split(",")
    lines[3] = ",".join([index, filename.replace("/", "/missing_"), label, name])
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError,
                       match=r"train\.csv: line 4: image '\w+/missing_.*does not exist"):
        data.read_eurosat_split(str(eurosat), str(csv), str(eurosat / "label_map.json"))
    (eurosat / "Numbers").mkdir()
    shutil_copy = (corpus["eurosat"] / "Forest" / "Forest_1.jpg").read_bytes()
    (eurosat / "Numbers" / "17").write_bytes(shutil_copy)
    (eurosat / "label_map.json").write_text('{"Numbers": 0}')
    csv.write_text(",Filename,Label,ClassName\n0,Numbers/17,0,Numbers\n1,Numbers/0018,0,Numbers\n")
    # text, not the number 18
    with pytest.raises(DataError, match=r"line 3: image 'Numbers/0018' does not exist"):
        data.read_eurosat_split(str(eurosat), str(csv), str(eurosat / "label_map.json"))
    csv.write_text(",Filename,Label,ClassName\n0,17,0,Numbers\n")
    with pytest.raises(DataError, match=r"line 2: image '17' does not exist"):
        data.read_eurosat_split(str(eurosat), str(csv), str(eurosat / "label_map.json"))


@pytest.mark.slow
def test_knn_folder_and_file_list_problems_are_named(corpus, tmp_path):
    images = tmp_path / "images"
    write_images(str(images), 16)
    common = [f"--data_dir={images}", f"--cache_dir={tmp_path / 'cache'}", *TINY_PRETRAIN,
              "--num_epochs=1"]
    code, _, err = run_in_process("train_simsiam.py", *common, f"--output_dir={tmp_path / 'a'}",
                                  f"--knn_data_dir={tmp_path / 'no_knn'}")
    assert code == 1 and "no_knn" in err and "label_map.json" in err
    eurosat = _copy_eurosat(corpus, tmp_path)
    (eurosat / "validation.csv").write_text((eurosat / "validation.csv").read_text()
                                            .replace("Forest_", "Gone_", 1))
    code, _, err = run_in_process("train_simsiam.py", *common, f"--output_dir={tmp_path / 'b'}",
                                  f"--knn_data_dir={eurosat}")
    assert code == 1 and "validation.csv" in err and "does not exist" in err
    for name, text, needle in (("empty.txt", "", "names no image"),
                               ("empty.csv", "", "not a readable list"),
                               ("columns.csv", "File\na.png\n", "needs a Filename column")):
        (tmp_path / name).write_text(text)
        code, _, err = run_in_process("train_simsiam.py", *common,
                                      f"--output_dir={tmp_path / ('out_' + name)}",
                                      f"--file_list={tmp_path / name}")
        assert code == 1 and name in err and needle in err, err


# kind 4: output locations, checked at start-up; a failed write leaves nothing behind
@pytest.mark.slow
def test_output_locations_are_checked_before_training(tmp_path, monkeypatch):
    images = tmp_path / "images"
    write_images(str(images), 16)
    (tmp_path / "a_file").write_text("")
    common = [f"--data_dir={images}", *TINY_PRETRAIN, "--num_epochs=1"]
    for output_dir, needle in ((tmp_path / "a_file", "is a file"),
                               ("/proc/simsiam_outputs", "cannot write")):
        code, _, err = run_in_process("train_simsiam.py", *common, f"--output_dir={output_dir}",
                                      f"--cache_dir={tmp_path / 'cache'}")
        assert code == 1 and needle in err and "OUTPUT_DIR" in err
        assert not (tmp_path / "cache").exists()  # stopped before any image was decoded
    out = tmp_path / "out"
    out.mkdir()
    (out / ".checkpoint_last.pth.tmp999999999").write_bytes(b"x" * 1000)  # left by a dead run
    (out / f".pretrain_metrics.pth.tmp{os.getpid()}").write_bytes(b"x")  # a live process's: kept
    import runtime
    real_save = torch.save

    def save_on_a_full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    code, out_text, err = run_in_process("train_simsiam.py", *common, f"--output_dir={out}",
                                         f"--cache_dir={tmp_path / 'cache'}")
    assert code == 1 and "cannot write" in err and "disk full or not writable?" in err
    assert "removed 1 temporary file(s)" in out_text
    left = sorted(os.listdir(out))
    assert left == [".pretrain_metrics.pth.tmp%d" % os.getpid(), ".train_simsiam.lock"], left
    with pytest.raises(runtime.WriteError, match="cannot write .*disk full"):
        with runtime.atomic_write(tmp_path / "x.bin"):
            raise OSError(28, "No space left on device")
    assert (os.listdir(tmp_path).count("x.bin") == 0
            and not [n for n in os.listdir(tmp_path) if ".tmp" in n])


# kind 5: checkpoints that do not match their own config
def test_checkpoints_whose_config_does_not_match_the_weights(corpus, tmp_path):
    from runtime import CheckpointError
    from simsiam_model import backbone_from_checkpoint, classifier_from_checkpoint
    good = torch.load(corpus["checkpoint"], weights_only=True)
    model_state = good["model"]
    reshaped = dict(model_state, **{"backbone.layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)})
    cases = [("r50_config", dict(good, config=dict(good["config"], ARCH="resnet50")),
              "mismatched"),
             ("small_stem", dict(good, config=dict(good["config"], SMALL_STEM=True)),
              "backbone.conv1"),
             ("reshaped", dict(good, model=reshaped), "layer1.0.conv1.weight is (64, 64, 1, 1)"),
             ("size_zero", dict(good, config=dict(good["config"], IMAGE_SIZE=0)), "IMAGE_SIZE 0"),
             ("no_weights", {k: v for k, v in good.items() if k != "model"}, "holds no weights")]
    for name, checkpoint, needle in cases:
        path = tmp_path / f"{name}.pth"
        torch.save(checkpoint, path)
        with pytest.raises(CheckpointError) as error:
            backbone_from_checkpoint(str(path))
        assert (f"{name}.pth" in str(error.value)
                and needle.replace("backbone.", "") in str(error.value)), (
            name, str(error.value))
    classifier = torch.load(corpus["classifier"], weights_only=True)
    for name, edit, needle in (("names_string", {"class_names": "Forest"},
                                "class_names must be a list"),
                               ("std_zero", {"std": [0, 1, 1]}, "std must be 3 numbers"),
                               ("head_shape",
                                {"class_names": classifier["class_names"] + ["Extra"]},
                                "does not fit")):
        path = tmp_path / f"{name}.pth"
        torch.save(dict(classifier, **edit), path)
        with pytest.raises(CheckpointError, match=needle):
            classifier_from_checkpoint(str(path))


@pytest.mark.slow
def test_a_resume_checkpoint_missing_keys(first_epoch, tmp_path):
    last_path = tmp_path / "out" / "checkpoint_last.pth"
    last = torch.load(last_path, weights_only=True)
    del last["optimizer"], last["global_step"]
    torch.save(last, last_path)
    code, _, err = run_in_process("train_simsiam.py", *first_epoch, "--num_epochs=2")
    assert (code == 1 and "checkpoint_last.pth: lacks ['global_step', 'optimizer']" in err
            and "--resume=False" in err)


# kind 6: two runs, one folder
@pytest.mark.slow
def test_a_second_run_on_a_folder_in_use_is_refused_and_a_killed_run_leaves_no_lock(tmp_path):
    import signal
    import subprocess
    import sys as _sys
    from conftest import ROOT
    images = tmp_path / "images"
    write_images(str(images), 16)
    command = [_sys.executable, os.path.join(ROOT, "train_simsiam.py"), f"--data_dir={images}",
               f"--output_dir={tmp_path / 'out'}", f"--cache_dir={tmp_path / 'cache'}",
               *TINY_PRETRAIN]
    first = subprocess.Popen([*command, "--num_epochs=500"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        for line in first.stdout:
            if line.startswith("model:"):
                break
        # (this process is not the first one: its lock refuses this run as another process's)
        second = run_in_process("train_simsiam.py", *command[2:], "--num_epochs=1")
        _assert_clear_failure(second, "is in use by another train_simsiam run", f"pid {first.pid}")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    third = run_in_process("train_simsiam.py", *command[2:], "--num_epochs=1", "--resume=False")
    assert third.returncode == 0, third.stderr[-2000:]
