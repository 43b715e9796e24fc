"""Resuming pre-training: checked at start-up, before any image is decoded; refused by name when
the resumed run would not be the run it continues; what may change is applied and recorded. Each
test continues its own copy of the session's 1-epoch run (conftest.first_epoch)."""
import os
import shutil

import pytest
import torch

from conftest import TINY_PRETRAIN, run_in_process, write_images
from runtime import load_checkpoint
from test_evaluation import make_eurosat


def _decoded(tmp_path):
    """The decoded-once caches in tmp_path/cache."""
    cache = tmp_path / "cache"
    return sorted(n for n in os.listdir(cache) if n.endswith(".npy")) if cache.exists() else []


def _edit_last(tmp_path, edit):
    path = tmp_path / "out" / "checkpoint_last.pth"
    last = torch.load(path, weights_only=True)
    edit(last)
    torch.save(last, path)


@pytest.mark.slow
def test_resuming_with_settings_that_define_the_run_is_refused_by_name(first_epoch, first_epoch_run,
                                                                      tmp_path, monkeypatch):
    common, images = first_epoch, first_epoch_run / "images"
    decoded = _decoded(tmp_path)
    moved = tmp_path / "moved"
    shutil.copytree(images, moved)
    for change, needles in (
            (["--batch_size=4"], ["BATCH_SIZE=8 (now 4)", "--batch_size=8"]),
            (["--base_lr=0.1", "--gray_p=0.1"], ["BASE_LR=0.05 (now 0.1)", "GRAY_P=0.2 (now 0.1)",
                                                 "--base_lr=0.05 --gray_p=0.2"]),
            (["--seed=1"], ["SEED=0 (now 1)", "--seed=0"]),
            (["--pipeline=reference"], ["PIPELINE='fast' (now 'reference')", "--pipeline=fast"]),
            (["--weight_decay=0.001"], ["WEIGHT_DECAY=0.0001 (now 0.001)"]),
            ([f"--data_dir={moved}"], ["DATA_DIR=", f"--data_dir={images}"])):
        code, _, err = run_in_process("train_simsiam.py", *common, "--num_epochs=2", *change)
        assert code == 1 and "checkpoint_last.pth" in err and "--resume=False" in err, err
        for needle in needles:
            assert needle in err, (needle, err)
    # the same folder with one more image: other data under the same DATA_DIR (the session's
    # images: put back as they were)
    try:
        write_images(str(images / "more"), 1, seed=5)
        code, _, err = run_in_process("train_simsiam.py", *common, "--num_epochs=2")
    finally:
        shutil.rmtree(images / "more")
    assert code == 1 and "16 listed then, 17 now" in err and "--resume=False" in err, err
    # two processes resuming what one process wrote: the global batch and the lr would change
    # (all five torchrun variables: a partial set is refused earlier, as left over from elsewhere;
    # the refusal comes before any process group would wait for the missing peer)
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0"),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29512")):
        monkeypatch.setenv(name, value)
    code, _, err = run_in_process("train_simsiam.py", *common, "--num_epochs=2")
    assert code == 1 and "written by 1 process" in err and "--resume=False" in err, err
    assert _decoded(tmp_path) == decoded  # all refused before any image was decoded


@pytest.mark.slow
def test_resuming_records_what_may_change_and_knows_checkpoints_older_than_a_setting(
        first_epoch, first_epoch_run, tmp_path):
    common = first_epoch
    # a checkpoint_last.pth written before GRAY_P and STEM_STRIDE existed (they were 0.2 and 1),
    # in fp16 (the same AMP setting resolves to another precision on another machine)
    _edit_last(tmp_path, lambda last: [last["config"].pop(k) for k in ("GRAY_P", "STEM_STRIDE")]
               + [last["metrics"].update(precision="fp16")])
    code, out, err = run_in_process("train_simsiam.py", *common, "--num_epochs=2",
                                    "--knn_every=3", "--sample_every=5", "--save_every=2")
    assert code == 0 and "resuming from" in out, err
    assert "trained in fp16; it goes on in fp32" in out, out
    metrics = load_checkpoint(str(tmp_path / "out" / "pretrain_metrics.pth"))
    assert metrics["epochs"] == [1, 2] and metrics["config"]["NUM_EPOCHS"] == 2
    changed = {"NUM_EPOCHS": [1, 2], "OUTPUT_DIR": [str(first_epoch_run / "out"),
                                                    str(tmp_path / "out")],
               "CACHE_DIR": [str(first_epoch_run / "cache"), str(tmp_path / "cache")],
               "KNN_EVERY": [5, 3], "SAMPLE_EVERY": [20, 5], "SAVE_EVERY": [10, 2],
               "precision": ["fp16", "fp32"]}
    assert metrics["resumed_with"] == [{"epoch": 1, "changed": changed}]
    # a setting the checkpoint does not know, and whose value before it existed is not known
    _edit_last(tmp_path, lambda last: last["config"].pop("CROP_SCALE_MIN"))
    code, _, err = run_in_process("train_simsiam.py", *common, "--num_epochs=3")
    assert code == 1 and "CROP_SCALE_MIN" in err and "predates" in err and "--resume=False" in err


@pytest.mark.slow
def test_a_resumed_optimizer_uses_this_runs_settings(first_epoch, tmp_path):
    common = first_epoch

    def other_hyperparameters(last):
        for group in last["optimizer"]["param_groups"]:
            group.update(weight_decay=0.5, momentum=0.1, fix_lr=not group["fix_lr"])
    _edit_last(tmp_path, other_hyperparameters)
    code, _, err = run_in_process("train_simsiam.py", *common, "--num_epochs=2")
    assert code == 0, err
    last = load_checkpoint(str(tmp_path / "out" / "checkpoint_last.pth"))
    groups = last["optimizer"]["param_groups"]
    assert [(g["weight_decay"], g["momentum"], g["fix_lr"]) for g in groups] == [
        (1e-4, 0.9, False), (1e-4, 0.9, True)]
    assert last["optimizer"]["state"]  # the momentum buffers were kept


def test_unusable_resume_files_and_knn_folders_are_found_before_any_image_is_decoded(tmp_path):
    images = tmp_path / "images"
    write_images(str(images), 16)
    common = [f"--data_dir={images}", f"--cache_dir={tmp_path / 'cache'}", *TINY_PRETRAIN,
              "--num_epochs=1"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint_last.pth").write_bytes(b"PK\x03\x04 half a zip")
    code, _, err = run_in_process("train_simsiam.py", *common, f"--output_dir={out}")
    assert code == 1 and "checkpoint_last.pth" in err and "--resume=False" in err, err
    eurosat = tmp_path / "EuroSAT"
    make_eurosat(str(eurosat))
    (eurosat / "validation.csv").write_text((eurosat / "validation.csv").read_text()
                                            .replace("Forest_", "Gone_", 1))
    code, _, err = run_in_process("train_simsiam.py", *common, f"--output_dir={tmp_path / 'a'}",
                                  f"--knn_data_dir={eurosat}")
    assert code == 1 and "validation.csv" in err and "does not exist" in err, err
    assert _decoded(tmp_path) == []


@pytest.mark.slow
def test_a_resume_with_other_knn_settings_measures_the_floors_again(first_epoch, first_epoch_run,
                                                                     tmp_path):
    """The kNN monitor's floors hold for the settings they were measured under: a resume that
    turns the monitor on or changes KNN_K measures them again, from its first epoch, with the
    run's initial weights (the same network a fresh run measures before its first step); a
    resume with the same settings keeps them."""
    eurosat = tmp_path / "EuroSAT"
    make_eurosat(str(eurosat))
    knn = [f"--knn_data_dir={eurosat}", "--knn_every=1"]

    def resume(epochs, k):
        result = run_in_process("train_simsiam.py", *first_epoch, f"--num_epochs={epochs}",
                                *knn, f"--knn_k={k}")
        assert result.returncode == 0, result.stderr[-2000:]
        metrics = load_checkpoint(str(tmp_path / "out" / "pretrain_metrics.pth"))
        return result.stdout, metrics["knn_floors_history"]

    printed, history = resume(2, 3)  # the monitor turned on at epoch 2
    assert [(h["from_epoch"], h["settings"]["KNN_K"]) for h in history] == [(2, 3)]
    assert "kNN monitor floors (validation)" in printed and "measured again" in printed
    printed, again = resume(3, 3)  # the same settings: the same floors
    assert again == history and "kNN monitor floors" not in printed
    _, history = resume(4, 5)
    assert [(h["from_epoch"], h["settings"]["KNN_K"]) for h in history] == [(2, 3), (4, 5)]
    # a run from before the history kept one set of floors: they stay, from epoch 1, settings
    # unknown, and are measured again
    old = {"random init": 10.0, "image statistics": 20.0}
    _edit_last(tmp_path, lambda last: [last["metrics"].pop("knn_floors_history"),
                                       last["metrics"].update(knn_floors=old)])
    _, history = resume(5, 5)
    assert [(h["from_epoch"], h["settings"]) for h in history][0] == (1, None)
    assert history[0]["random init"] == 10.0 and history[1]["from_epoch"] == 5


def test_initial_model_rebuilds_the_same_weights_whatever_the_global_generator_did(
        tmp_path, monkeypatch):
    """initial_model, which measures a resumed run's random-init floor again, rebuilds the weights
    a run starts from (build_model's) however much the global generator drew in between, and
    from the run's own seed."""
    import train_simsiam
    for name, value in (("ARCH", "resnet18"), ("PROJ_DIM", 64), ("PRED_DIM", 16),
                        ("OUTPUT_DIR", str(tmp_path / "out")), ("DEVICE", "cpu")):
        monkeypatch.setattr(train_simsiam, name, value)
    started = train_simsiam.build_model(train_simsiam.start_run()).state_dict()
    torch.rand(1000)  # the training goes on drawing from the global generator
    again = train_simsiam.initial_model().state_dict()
    assert all(torch.equal(started[k], again[k]) for k in started)
    monkeypatch.setattr(train_simsiam, "SEED", 1)  # and it is the run's own seed's
    other = train_simsiam.initial_model().state_dict()
    assert not torch.equal(other["backbone.conv1.weight"], started["backbone.conv1.weight"])
