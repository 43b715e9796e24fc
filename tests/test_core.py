"""Model, data module, overrides and train_simsiam.py on tiny data (CPU, seconds)."""
import json
import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import simsiam_data as data
from conftest import TINY_PRETRAIN, run_in_process, run_script, write_images
from runtime import CheckpointError, configure, load_checkpoint
from simsiam_model import (SimSiam, backbone_from_checkpoint, backbone_state_dict, build_backbone,
                           negative_cosine_loss, strip_prefixes)


# -------------------------------------------------------------------------------------------------
# model

def test_model_shapes_and_stop_gradient():
    model = SimSiam("resnet18", dim=128, pred_dim=32)
    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    p1, p2, z1, z2 = model(x1, x2)
    assert p1.shape == p2.shape == z1.shape == z2.shape == (2, 128)
    assert p1.requires_grad and not z1.requires_grad and not z2.requires_grad
    last_bn = model.projector[-1]
    assert (isinstance(last_bn, torch.nn.BatchNorm1d) and last_bn.weight is None
            and last_bn.bias is None)
    assert model.projector[1].weight is not None  # the other BNs keep their affine parameters
    assert model.predictor[0].out_features == 32 and model.predictor[-1].out_features == 128


def test_default_model_is_the_papers():
    model = SimSiam()
    assert model.projector[0].in_features == 2048 and model.projector[-2].out_features == 2048
    assert model.predictor[0].out_features == 512
    assert isinstance(model.backbone.fc, torch.nn.Identity)


def test_loss_range_and_symmetry():
    torch.manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(8, 16) for _ in range(4))
    loss = negative_cosine_loss(p1, p2, z1, z2)
    assert -1 <= loss.item() <= 1
    assert torch.allclose(loss, negative_cosine_loss(p2, p1, z2, z1))
    assert negative_cosine_loss(z2, z1, z1, z2).item() == pytest.approx(-1.0, abs=1e-6)
    assert negative_cosine_loss(-z2, -z1, z1, z2).item() == pytest.approx(1.0, abs=1e-6)


def test_loss_gradient_flows_only_through_predictions():
    """The stop-gradient: the model's gradients equal those of a loss that detaches z by hand, and
    differ from a loss that lets gradients through z (what removing the detach in SimSiam.forward
    would give)."""
    torch.manual_seed(0)
    model = SimSiam("resnet18", dim=64, pred_dim=16)
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)

    def gradients(loss_of):
        model.zero_grad(set_to_none=True)
        loss_of().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    def by_hand(detach):
        z1, z2 = model.projector(model.backbone(x1)), model.projector(model.backbone(x2))
        p1, p2 = model.predictor(z1), model.predictor(z2)
        return negative_cosine_loss(p1, p2, z1.detach() if detach else z1,
                                    z2.detach() if detach else z2)

    through_model = gradients(lambda: negative_cosine_loss(*model(x1, x2)))
    stopped, not_stopped = gradients(lambda: by_hand(True)), gradients(lambda: by_hand(False))
    assert torch.allclose(through_model, stopped, atol=1e-6)
    assert not torch.allclose(through_model, not_stopped, atol=1e-4)
    assert (model.backbone.conv1.weight.grad is not None
            and model.predictor[0].weight.grad is not None)


def test_backbone_state_dict_loads_into_torchvision():
    model = SimSiam("resnet50")
    result = torchvision.models.resnet50().load_state_dict(backbone_state_dict(model),
                                                           strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    # wrappers (DDP, torch.compile) add prefixes that must not leak into the file
    wrapped = {"module._orig_mod.backbone.conv1.weight": 1, "backbone.fc.bias": 2}
    assert strip_prefixes(wrapped) == {"conv1.weight": 1, "fc.bias": 2}


def test_backbone_from_checkpoint_is_strict(tmp_path):
    model = SimSiam("resnet18", dim=64, pred_dim=16)
    config = {"ARCH": "resnet18", "IMAGE_SIZE": 32, "SMALL_STEM": False, "IN_CHANNELS": 3}
    good = tmp_path / "good.pth"
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # as DDP would have saved it
    torch.save({"kind": "simsiam_pretrain", "arch": "resnet18", "config": config, "epoch": 1,
                "model": state}, good)
    backbone, feature_dim, model_config = backbone_from_checkpoint(str(good))
    assert feature_dim == 512 and model_config["image_size"] == 32
    assert torch.equal(backbone.conv1.weight, model.backbone.conv1.weight)
    wrong = tmp_path / "wrong_arch.pth"
    torch.save({"kind": "simsiam_pretrain", "config": dict(config, ARCH="resnet34"),
                "model": state}, wrong)
    with pytest.raises(CheckpointError, match="wrong_arch.pth.*do not match"):
        backbone_from_checkpoint(str(wrong))
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": state}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pth"):
        backbone_from_checkpoint(str(foreign))


def test_small_stem_stride_two_reads_64px_at_the_cost_of_32px(tmp_path):
    maps = {}
    for name, size, stride in (("s1_32", 32, 1), ("s2_64", 64, 2)):
        backbone, _ = build_backbone("resnet18", small_stem=True, stem_stride=stride)
        maps[name] = backbone.layer1(
            backbone.maxpool(backbone.conv1(torch.zeros(1, 3, size, size)))).shape
    assert maps["s1_32"] == maps["s2_64"] == (1, 64, 32, 32)
    with pytest.raises(ValueError, match="stem_stride"):
        build_backbone("resnet18", small_stem=False, stem_stride=2)
    # the stride travels with the checkpoint; files written before STEM_STRIDE existed
    # mean stride 1
    model = SimSiam("resnet18", dim=64, pred_dim=16, small_stem=True, stem_stride=2)
    config = {"ARCH": "resnet18", "IMAGE_SIZE": 64, "SMALL_STEM": True, "STEM_STRIDE": 2,
              "IN_CHANNELS": 3}
    for name, recorded in (("new", config),
                           ("old", {k: v for k, v in config.items() if k != "STEM_STRIDE"})):
        torch.save({"kind": "simsiam_pretrain", "config": recorded, "model": model.state_dict()},
                   tmp_path / name)
    assert backbone_from_checkpoint(str(tmp_path / "new"))[0].conv1.stride == (2, 2)
    assert backbone_from_checkpoint(str(tmp_path / "old"))[0].conv1.stride == (1, 1)


def test_checkpoint_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"kind": "simsiam_pretrain", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(str(path))
    assert not marker.exists()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(open(tmp_path / "evil.pth", "rb").read()[:50])
    with pytest.raises(CheckpointError, match="truncated.pth.*not a readable"):
        load_checkpoint(str(truncated))


# -------------------------------------------------------------------------------------------------
# transforms

def test_reference_transforms_shapes_and_solarisation():
    image = Image.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8))
    v1 = data.simsiam_transform_v1(32)(image)
    v2 = data.simsiam_transform_v2(32)(image)
    assert v1.shape == v2.shape == (3, 32, 32)
    steps = data.simsiam_transform_v2(32).transforms
    names = [type(s).__name__ for s in steps]
    assert names.index("RandomSolarize") < names.index("ToTensor")  # acts on the PIL image
    solarize = steps[names.index("RandomSolarize")]
    assert solarize.p == 0.2 and solarize.threshold == 128
    out = np.asarray(torchvision.transforms.RandomSolarize(128, p=1.0)(image))
    assert (out == 55).all()  # PIL pixels >= 128 are inverted: 255 - 200
    symmetric = [type(s).__name__
                 for s in data.simsiam_transform_v2(32, solarize=False).transforms]
    assert "RandomSolarize" not in symmetric


def test_batch_augment_shapes_and_range():
    images = torch.randint(0, 256, (6, 40, 40, 3), dtype=torch.uint8)
    out = data.BatchAugment(32, solarize_p=0.2)(images, torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 32, 32) and torch.isfinite(out).all()
    mean, std = torch.tensor(data.IMAGENET_MEAN), torch.tensor(data.IMAGENET_STD)
    assert (out >= ((0 - mean) / std).view(1, 3, 1, 1) - 1e-4).all()
    assert (out <= ((1 - mean) / std).view(1, 3, 1, 1) + 1e-4).all()


# -------------------------------------------------------------------------------------------------
# overrides

def _namespace():
    return {"BATCH_SIZE": 32, "BASE_LR": 0.05, "ARCH": "resnet50", "AMP": True, "lower": 1,
            "__file__": ""}


def test_overrides_valid_and_case_insensitive(capsys):
    namespace = _namespace()
    config, positional = configure(namespace, ["--batch_size=64", "--BASE_LR=1", "--arch=resnet18",
                                               "--amp=false"])
    assert (namespace["BATCH_SIZE"] == 64 and namespace["BASE_LR"] == 1.0
            and isinstance(namespace["BASE_LR"], float))
    assert namespace["ARCH"] == "resnet18" and namespace["AMP"] is False
    assert (config == {"BATCH_SIZE": 64, "BASE_LR": 1.0, "ARCH": "resnet18", "AMP": False}
            and positional == [])
    assert "overriding: BATCH_SIZE = 64" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [(["--batch_sise=64"], "unknown setting 'batch_sise'"),
                                           (["--batch_size=6.5"], "BATCH_SIZE must be an integer"),
                                           (["--amp=maybe"], "AMP is a bool"),
                                           (["--batch_size"], "needs a value"),
                                           (["stray"], "unexpected argument")])
def test_overrides_rejected(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        configure(_namespace(), argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "--batch_size, --base_lr, --arch, --amp" in err


def test_help_lists_constants_with_comments():
    result = run_in_process("train_simsiam.py", "--help")
    assert result.returncode == 0
    assert ("--batch_size" in result.stdout and "= 32" in result.stdout
            and "fits ResNet-50" in result.stdout)


# -------------------------------------------------------------------------------------------------
# EuroSAT splits

def _eurosat(tmp_path, rows, label_map=None):
    root = tmp_path / "EuroSAT"
    for cls in ("Forest", "River"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / cls / f"{cls}_1.jpg")
    (root / "label_map.json").write_text(json.dumps(label_map or {"Forest": 0, "River": 1}))
    (root / "train.csv").write_text(rows)
    return str(root), str(root / "train.csv"), str(root / "label_map.json")


def test_eurosat_split_reads_the_official_format(tmp_path):
    root, csv, label_map = _eurosat(tmp_path,
                                    ",Filename,Label,ClassName\n0,Forest/Forest_1.jpg,0,Forest\n"
                                    "1,River/River_1.jpg,1,River\n")
    paths, labels, classes = data.read_eurosat_split(root, csv, label_map)
    assert labels == [0, 1] and classes == ["Forest", "River"] and os.path.isfile(paths[1])


@pytest.mark.parametrize("rows, label_map, message", [
    ("Name,ClassName\nForest/Forest_1.jpg,Forest\n", None,
     r"missing column\(s\) \['Filename'\]; found \['Name'"),
    (",Filename,Label,ClassName\n0,Forest/Forest_1.jpg,0,Desert\n", None,
     "line 2: class 'Desert'"),
    (",Filename,Label,ClassName\n0,Forest/Forest_1.jpg,0,Forest\n1,Forest/Forest_1.jpg,0,Forest\n",
     None, "line 3 repeats"),
    (",Filename,Label,ClassName\n0,../secret.jpg,0,Forest\n", None, "outside the data folder"),
    (",Filename,Label,ClassName\n0,Forest/Forest_1.jpg,1,Forest\n", None, "Label 1 disagrees"),
    (",Filename,Label,ClassName\n0,Forest/Forest_1.jpg,0,Forest\n", ["Forest", "River"],
     "must be a JSON mapping"),
])
def test_eurosat_split_errors_name_the_problem(tmp_path, rows, label_map, message):
    root, csv, label_map_path = _eurosat(tmp_path, rows, label_map)
    with pytest.raises(ValueError, match=message):
        data.read_eurosat_split(root, csv, label_map_path)


# -------------------------------------------------------------------------------------------------
# train_simsiam.py end to end (in this process: conftest.run_in_process)

def _pretrain(tmp_path, images, *extra):
    return run_in_process("train_simsiam.py", f"--data_dir={images}",
                      f"--output_dir={tmp_path / 'out'}", f"--cache_dir={tmp_path / 'cache'}",
                      *TINY_PRETRAIN, *extra)


@pytest.mark.slow
def test_pretraining_writes_checkpoints_and_metrics_then_resumes(tmp_path, tiny_images):
    result = _pretrain(tmp_path, tiny_images, "--num_epochs=2", "--save_every=1")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert "epoch 2/2 loss" in result.stdout and "pairs/s" in result.stdout
    metrics = load_checkpoint(str(out / "pretrain_metrics.pth"))
    assert (metrics["epochs"] == [1, 2] and len(metrics["loss"]) == 2
            and metrics["config"]["BATCH_SIZE"] == 8)
    assert (metrics["global_step"] == 2 * (24 // 8) and metrics["seed"] == 0
            and "torch" in metrics["versions"])
    assert all(np.isfinite(metrics["loss"])) and 0 < metrics["z_std"][-1] < 1
    checkpoint = load_checkpoint(str(out / "simsiam_resnet18_epoch_2.pth"))
    assert (checkpoint["epoch"] == 2 and checkpoint["arch"] == "resnet18"
            and checkpoint["config"]["IMAGE_SIZE"] == 32)
    backbone, _, _ = backbone_from_checkpoint(str(out / "simsiam_resnet18_epoch_1.pth"))
    assert torchvision.models.resnet18().load_state_dict(
        backbone.state_dict(), strict=False).unexpected_keys == []

    # the same command with more epochs continues from checkpoint_last.pth instead of restarting
    result = _pretrain(tmp_path, tiny_images, "--num_epochs=3", "--save_every=1")
    assert result.returncode == 0, result.stderr
    assert ("resuming from" in result.stdout and "epoch 1/3" not in result.stdout
            and "epoch 3/3 loss" in result.stdout)
    metrics = load_checkpoint(str(out / "pretrain_metrics.pth"))
    assert metrics["epochs"] == [1, 2, 3] and metrics["global_step"] == 9
    result = _pretrain(tmp_path, tiny_images, "--num_epochs=3")
    assert result.returncode == 0 and "nothing to do" in result.stdout
    result = _pretrain(tmp_path, tiny_images, "--num_epochs=4", "--proj_dim=32")
    assert (result.returncode == 1 and "PROJ_DIM=64" in result.stderr
            and "--resume=False" in result.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["fast", "reference"])
def test_corrupt_images_are_skipped_and_counted(tmp_path, tiny_images, pipeline):
    (tiny_images / "part0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tiny_images / "part1" / "empty.jpg").write_bytes(b"")
    Image.new("RGBA", (40, 40), (10, 200, 30, 128)).save(tiny_images / "part1" / "rgba.png")
    Image.new("L", (40, 40), 90).save(tiny_images / "part1" / "gray.png")
    result = _pretrain(tmp_path, tiny_images, "--num_epochs=1", f"--pipeline={pipeline}")
    assert result.returncode == 0, result.stderr
    assert "broken.png" in result.stdout and "skipped 2 unreadable" in result.stdout
    metrics = load_checkpoint(str(tmp_path / "out" / "pretrain_metrics.pth"))
    assert metrics["skipped_images"] == [2]


@pytest.mark.slow
def test_missing_data_and_oversized_batch_are_clear_errors(tmp_path, tiny_images):
    result = _pretrain(tmp_path, tmp_path / "nowhere", "--num_epochs=1")
    assert (result.returncode == 1 and "does not exist" in result.stderr
            and "make_dataset.py" in result.stderr)
    (tmp_path / "empty").mkdir()
    result = _pretrain(tmp_path, tmp_path / "empty", "--num_epochs=1")
    assert result.returncode == 1 and "no images" in result.stderr
    result = _pretrain(tmp_path, tiny_images, "--num_epochs=1", "--batch_size=64")
    assert (result.returncode == 1 and "Lower --batch_size" in result.stderr
            and "Traceback" not in result.stderr)


@pytest.mark.slow
def test_same_seed_same_loss(tmp_path):
    """One run as a user starts it, one in this process: two interpreters (with their own hash
    seeds, so any set order that leaked into the image order would show) give the same loss."""
    images = tmp_path / "images"
    write_images(str(images), 16)
    losses = []
    for run, runner in (("a", run_script), ("b", run_in_process)):
        result = runner("train_simsiam.py", f"--data_dir={images}",
                        f"--output_dir={tmp_path / run}", f"--cache_dir={tmp_path / 'cache'}",
                        *TINY_PRETRAIN, "--num_epochs=1", "--seed=3")
        assert result.returncode == 0, result.stderr
        losses.append(load_checkpoint(str(tmp_path / run / "pretrain_metrics.pth"))["loss"][0])
    assert losses[0] == losses[1]
