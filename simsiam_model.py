"""SimSiam (Chen and He, CVPR 2021), the classifiers built on its backbone, and the evaluations'
shared parts. No paths of its own: the scripts pass them in.

- `SimSiam`: torchvision ResNet backbone (fc removed), 3-layer projector (last BN without affine),
  2-layer bottleneck predictor; `forward(x1, x2)` returns p1, p2 and the detached z1, z2 (the
  stop-gradient).
- `negative_cosine_loss`: the symmetric loss D(p1, z2)/2 + D(p2, z1)/2, in [-1, 1].
- `backbone_state_dict`: the backbone as a plain torchvision state dict (loads into resnet50() with
  only fc.* missing).
- `backbone_from_checkpoint`, `classifier_from_checkpoint`: rebuild models from any checkpoint of
  this project, strictly, from the checkpoint's own config.
- `check_finite`: weights with NaN or inf are refused by name at load.
- `step_memory`, `evaluation_memory`: what one step needs at the least, counted on the meta device.
- `BackboneFeatures`, `ImageStatistics`: the one way images become an N x D fp32 feature tensor,
  for a frozen backbone and for the image-statistics floor alike (the probe and the kNN monitor).
- `knn_top1` (on `knn_predict`, the weighted kNN of Wu et al. 2018 on l2-normalised features): the
  one kNN accuracy, of the probe's report and of the pre-training monitor.
- `start_evaluation`: the extractor, config and identity of an evaluation, from its settings.
- `evaluation_metrics`, `record_evaluation_epoch`, `test_results`: the metrics file of
  Linear_evaluation.py and finetune_model.py (one schema), its per-epoch line and its test report.
"""
import hashlib
import math
import os
import re
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from tqdm import tqdm

import simsiam_data as data
from runtime import CheckpointError, autocast_for, fail, library_versions, load_checkpoint

ARCHS = ("resnet18", "resnet34", "resnet50")
# the "kind" entry of every file the project writes: a script loading a file checks it is the
# kind it needs
PRETRAIN_KIND = "simsiam_pretrain"  # simsiam_<arch>_epoch_X.pth: the model, for evaluation
PRETRAIN_LAST_KIND = "simsiam_pretrain_last"  # checkpoint_last.pth: full training state, to resume
PRETRAIN_METRICS_KIND = "simsiam_pretrain_metrics"  # pretrain_metrics.pth
CLASSIFIER_KIND = "eurosat_classifier"  # {linear_eval,finetuned}_eurosat_best_model.pth
LINEAR_METRICS_KIND = "linear_eval_metrics"  # linear_eval_metrics.pth
FINETUNE_METRICS_KIND = "finetune_metrics"  # finetune_metrics.pth
# collapse warning: the std of l2-normalised z below this fraction of the healthy 1/sqrt(dim)
COLLAPSE_RATIO = 0.25
KNOWN_PREFIXES = ("module.", "_orig_mod.", "backbone.", "encoder.")
IMAGE_STATS = "image_stats"  # PRETRAINED_PATH of the colour-statistics floor (no network)
IMAGE_STATS_DIM = 12  # mean, std, min and max of each RGB channel


def build_backbone(arch="resnet50", in_channels=3, small_stem=False, stem_stride=1):
    """A torchvision ResNet with `fc` replaced by Identity; returns (backbone, feature_dim).

    small_stem=True swaps the 7x7/2 conv + max-pool for a 3x3/1 conv (as for CIFAR): on 32-64 px
    inputs the standard stem leaves a 2x2 map at the last stage, which throws most of the image
    away. stem_stride=2 makes that conv stride 2: a 64 px input then costs what a 32 px one does
    with stride 1, yet the first conv sees every pixel.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if stem_stride not in (1, 2) or (stem_stride != 1 and not small_stem):
        raise ValueError(f"stem_stride must be 1, or 2 with the small stem (got {stem_stride} "
                         f"with small_stem={small_stem})")
    backbone = getattr(torchvision.models, arch)(weights=None)
    if small_stem:
        backbone.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=stem_stride, padding=1,
                                   bias=False)
        backbone.maxpool = nn.Identity()
    elif in_channels != 3:
        backbone.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    feature_dim = backbone.fc.in_features
    backbone.fc = nn.Identity()
    return backbone, feature_dim


class SimSiam(nn.Module):
    def __init__(self, arch="resnet50", dim=2048, pred_dim=512, in_channels=3, small_stem=False,
                 stem_stride=1):
        super().__init__()
        self.backbone, feature_dim = build_backbone(arch, in_channels, small_stem, stem_stride)
        self.projector = nn.Sequential(
            nn.Linear(feature_dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False))
        self.predictor = nn.Sequential(
            nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim), nn.ReLU(inplace=True),
            nn.Linear(pred_dim, dim))

    def forward(self, x1, x2):
        # one backbone pass over both views: BatchNorm sees each view's batch separately below, as
        # in the paper, because the projector and predictor run per view
        z1 = self.projector(self.backbone(x1))
        z2 = self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return p1, p2, z1.detach(), z2.detach()


def step_memory(model, inputs, train=True, activation_bytes=2):
    """(weights, activations): the bytes one step of `model` on `inputs` needs at the least,
    counted on the meta device, where nothing is allocated (build both under
    torch.device("meta")). Training: fp32 weights with their gradients and SGD momentum, and every
    activation that the backward pass keeps; inference: the weights and the largest input + output
    of one layer. activation_bytes=2 counts activations as under AMP (fp32 keeps twice that), so
    that what exceeds a device's memory surely cannot fit."""
    parameters = {id(p) for p in model.parameters()}
    weights = 4 * sum(p.numel() for p in model.parameters()) * (3 if train else 1)
    kept, largest = {}, 0

    def keep(tensor):  # a saved activation; weights (and views of them: w.t()) are counted above
        if id(tensor) not in parameters and id(tensor._base) not in parameters:
            kept[id(tensor)] = tensor.numel()
        return tensor

    def measure(module, args, output):
        nonlocal largest
        largest = max(largest, sum(a.numel() for a in args if torch.is_tensor(a)) + output.numel())

    if train:
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            model(*inputs)
        return weights, activation_bytes * sum(kept.values())
    hooks = [m.register_forward_hook(measure) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(*inputs)
    for hook in hooks:
        hook.remove()
    return weights, activation_bytes * largest


def negative_cosine_loss(p1, p2, z1, z2):
    """Symmetric negative cosine similarity; z must already be detached (stop-gradient)."""
    return -(F.cosine_similarity(p1, z2, dim=-1).mean()
             + F.cosine_similarity(p2, z1, dim=-1).mean()) / 2


def normalized_std(z):
    """Mean per-dimension std of l2-normalised z: about 1/sqrt(dim) when healthy, towards 0 when
    collapsed."""
    return F.normalize(z.float(), dim=1).std(dim=0).mean().item()


def unwrap(model):
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def strip_prefixes(state_dict):
    cleaned = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in KNOWN_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        cleaned[key] = value
    return cleaned


def backbone_state_dict(model):
    """Backbone weights with torchvision's key names (no wrapper prefixes, no fc)."""
    backbone = unwrap(model).backbone if hasattr(unwrap(model), "backbone") else unwrap(model)
    return {k: v.detach().cpu().clone() for k, v in strip_prefixes(backbone.state_dict()).items()
            if not k.startswith("fc.")}


def stem_label(small_stem, stem_stride=1):
    """How logs and tables name the stem: "" (ImageNet stem), " (small stem)" or
    " (small stem, stride 2)"."""
    if not small_stem:
        return ""
    return " (small stem)" if stem_stride == 1 else f" (small stem, stride {stem_stride})"


def model_config_from(checkpoint, path):
    """arch / in_channels / small_stem / stem_stride / image_size as recorded in any checkpoint of
    this project, checked: an edited or foreign config is a CheckpointError naming what is
    wrong."""
    config = checkpoint.get("config")
    if not isinstance(config, dict) or "ARCH" not in config:
        raise CheckpointError(f"{path}: the checkpoint records no config with ARCH, so it was not "
                              "written by this project's train_simsiam.py, Linear_evaluation.py "
                              "or finetune_model.py.")
    try:
        found = {"arch": config["ARCH"], "in_channels": int(config.get("IN_CHANNELS", 3)),
                 "small_stem": bool(config.get("SMALL_STEM", False)),
                 "stem_stride": int(config.get("STEM_STRIDE", 1)),
                 "image_size": int(config.get("IMAGE_SIZE", 224))}
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: its config holds a value of the wrong type "
                              f"({error}).") from None
    problems = []
    if found["arch"] not in ARCHS:
        problems.append(f"ARCH {found['arch']!r} (known: {', '.join(ARCHS)})")
    if found["in_channels"] < 1:
        problems.append(f"IN_CHANNELS {found['in_channels']}")
    if (found["stem_stride"] not in (1, 2)
            or (found["stem_stride"] == 2 and not found["small_stem"])):
        problems.append(f"STEM_STRIDE {found['stem_stride']} with SMALL_STEM "
                        f"{found['small_stem']}")
    if found["image_size"] < 8:
        problems.append(f"IMAGE_SIZE {found['image_size']} (at least 8)")
    if problems:
        raise CheckpointError(f"{path}: its config is not usable: {'; '.join(problems)}. "
                              "Was the file edited? Rerun the step that writes it.")
    return found


def check_finite(state_dict, path):
    """Refuse weights with NaN or inf (a run that diverged saved them) by name, at load: later they
    would only show as a loss of NaN, which reads as "lower --base_lr"."""
    bad = {key: value for key, value in state_dict.items()
           if torch.is_tensor(value) and value.is_floating_point()
           and not torch.isfinite(value).all()}
    if bad:
        first, value = next(iter(bad.items()))
        raise CheckpointError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN or inf, first {first} "
            f"({int(value.isnan().sum())} NaN, {int(value.isinf().sum())} inf): the run that "
            "wrote it had diverged. Use an earlier checkpoint, or train again.")


def load_backbone_weights(backbone, state_dict, path, model_config):
    """Strict load after stripping known prefixes: every key present, no other, every shape as the
    config's architecture has it; otherwise a CheckpointError that names the file and what does not
    match."""
    state_dict = {k: v for k, v in strip_prefixes(state_dict).items() if not k.startswith("fc.")}
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [f"{k} is {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}, "
                f"{tuple(expected[k].shape)} expected"
                for k, v in state_dict.items()
                if k in expected
                and (not isinstance(v, torch.Tensor) or v.shape != expected[k].shape)]
    if missing or unexpected or reshaped:
        found = []
        for name, keys in (("missing", missing), ("unexpected", unexpected),
                           ("mismatched", reshaped)):
            if keys:
                found.append(f"{len(keys)} {name}: {', '.join(keys[:3])}"
                             f"{'...' if len(keys) > 3 else ''}")
        described = ", ".join(f"{k}={v}" for k, v in model_config.items() if k != "image_size")
        raise CheckpointError(f"{path}: the backbone weights do not match the architecture its "
                              f"config names ({described}): {'; '.join(found)}. Was the file "
                              "edited, its config changed, or was it written by another project?")
    check_finite(state_dict, path)
    backbone.load_state_dict(state_dict)


def backbone_from_checkpoint(path):
    """Rebuild the backbone of any checkpoint of this project; returns (backbone, feature_dim,
    model_config)."""
    return _backbone_from(load_checkpoint(path, kinds=(PRETRAIN_KIND, CLASSIFIER_KIND)), path)


def _backbone_from(checkpoint, path):
    model_config = model_config_from(checkpoint, path)
    backbone, feature_dim = build_backbone(model_config["arch"], model_config["in_channels"],
                                           model_config["small_stem"], model_config["stem_stride"])
    weights = checkpoint.get("model" if checkpoint["kind"] == PRETRAIN_KIND else "backbone")
    if not isinstance(weights, dict):
        raise CheckpointError(
            f"{path}: holds no weights "
            f"(no {'model' if checkpoint['kind'] == PRETRAIN_KIND else 'backbone'} "
            "state dict). Rerun the step that writes it.")
    if checkpoint["kind"] == PRETRAIN_KIND:
        # keep only the backbone part of the SimSiam state dict (projector and predictor are
        # dropped)
        weights = {k: v for k, v in strip_wrappers(weights).items() if k.startswith("backbone.")}
    load_backbone_weights(backbone, weights, path, model_config)
    return backbone, feature_dim, model_config


def strip_wrappers(state_dict):
    """Keys without the prefixes that DistributedDataParallel and torch.compile add."""
    cleaned = {}
    for key, value in state_dict.items():
        for wrapper in ("module.", "_orig_mod."):
            key = key[len(wrapper):] if key.startswith(wrapper) else key
        cleaned[key] = value
    return cleaned


def newest_pretrained(output_dir):
    """The newest simsiam_<arch>_epoch_X.pth of the pre-training run that output_dir's
    pretrain_metrics.pth describes (its run_id and the epoch files it wrote), or None when the
    folder holds none. Files of an older run left there (after --resume=False or a smaller
    --num_epochs) are never taken for the current run's: if the run wrote none that is still there,
    this refuses and lists what it found. Without pretrain_metrics.pth (or one from before run
    ids), the highest X is taken (tie: newest modification time)."""
    found = []
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        match = re.fullmatch(r"simsiam_(.+)_epoch_(\d+)\.pth", name)
        if match:
            path = os.path.join(output_dir, name)
            found.append((int(match.group(2)), os.path.getmtime(path), path))
    metrics_path = os.path.join(output_dir, "pretrain_metrics.pth")
    try:
        run = load_checkpoint(metrics_path, kinds=(PRETRAIN_METRICS_KIND,))
    except CheckpointError:
        run = {}
    if not found or not run.get("run_id"):
        return max(found)[2] if found else None
    written = [os.path.join(output_dir, name)
               for _, name in sorted(run.get("checkpoints", {}).items())
               if os.path.isfile(os.path.join(output_dir, name))]
    if not written:
        raise CheckpointError(
            f"{metrics_path} describes a run (id {run['run_id']}) that has written no epoch file "
            f"yet, and the simsiam_*_epoch_X.pth files in {output_dir!r} are of an earlier run: "
            f"{', '.join(os.path.basename(p) for _, _, p in sorted(found))}. Wait for the run's "
            "first SAVE_EVERY epochs, or pass --pretrained_path=FILE to evaluate one of those.")
    return written[-1]


def backbone_for_evaluation(config):
    """The network that Linear_evaluation.py and finetune_model.py start from, from their config's
    PRETRAINED_PATH: a checkpoint, "" for the newest simsiam_<arch>_epoch_X.pth in OUTPUT_DIR, or
    "random" for a randomly initialised ARCH (the honest baseline, with SMALL_STEM and
    STEM_STRIDE). Image statistics have no network: see evaluation_features.

    Returns (backbone, feature_dim, the config resolved with what was actually used: the
    checkpoint's architecture, IMAGE_SIZE 0 replaced, the checkpoint path; the size the checkpoint
    was pre-trained at). Raises CheckpointError with the fix.
    """
    image_size = config["IMAGE_SIZE"]
    if config["PRETRAINED_PATH"] == "random":
        try:
            backbone, feature_dim = build_backbone(config["ARCH"], 3, config["SMALL_STEM"],
                                                   config["STEM_STRIDE"])
        except ValueError as error:
            raise CheckpointError(f"--pretrained_path=random: {error}") from None
        resolved = dict(config, IN_CHANNELS=3, IMAGE_SIZE=image_size or 224)
        return backbone, feature_dim, resolved, image_size or 224
    path = config["PRETRAINED_PATH"] or newest_pretrained(config["OUTPUT_DIR"])
    if not path:
        raise CheckpointError(f"no simsiam_<arch>_epoch_X.pth in {config['OUTPUT_DIR']!r}. "
                              "Run train_simsiam.py first, pass --pretrained_path=PATH, or "
                              "--pretrained_path=random for a random initialisation.")
    backbone, feature_dim, found = backbone_from_checkpoint(path)
    if found["in_channels"] != 3:
        raise CheckpointError(f"{path} was pre-trained on {found['in_channels']} bands; "
                              "EuroSAT here is RGB.")
    resolved = dict(config, ARCH=found["arch"], SMALL_STEM=found["small_stem"],
                    STEM_STRIDE=found["stem_stride"], IN_CHANNELS=3,
                    IMAGE_SIZE=image_size or found["image_size"], PRETRAINED_PATH=path)
    return backbone, feature_dim, resolved, found["image_size"]


def backbone_identity(config):
    """What an evaluation's results are results of, as recorded in its files: the checkpoint (its
    path and a hash of its bytes, so a file rewritten by another run differs), or the baseline
    with the settings that make it (for random init: network, input size and seed)."""
    if config["PRETRAINED_PATH"] == IMAGE_STATS:
        return "image statistics"
    if config["PRETRAINED_PATH"] == "random":
        stem = stem_label(config["SMALL_STEM"], config["STEM_STRIDE"])
        return (f"random init {config['ARCH']}{stem} {config['IMAGE_SIZE']} px "
                f"seed {config['SEED']}")
    digest = hashlib.sha1()
    with open(config["PRETRAINED_PATH"], "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return f"{os.path.abspath(config['PRETRAINED_PATH'])} (sha1 {digest.hexdigest()[:12]})"


def check_results_replaceable(paths, identity, overwrite):
    """Refuse to replace an earlier evaluation's results (metrics file, best model) of another
    backbone: evaluating checkpoint A, then B into one folder would otherwise lose A's results
    as soon as B's first epoch is saved. The same backbone's results (a rerun) may be replaced."""
    for path in paths:
        if overwrite or not os.path.exists(path):
            continue
        try:
            recorded = load_checkpoint(path).get("pretrained_identity")
        except CheckpointError:
            recorded = "an unreadable file"
        if recorded != identity:
            raise CheckpointError(
                f"{path} holds the results of {recorded or 'another backbone (not recorded)'}, "
                f"and this run evaluates {identity}: it would replace them. Move that file (and "
                "the other results beside it) elsewhere, pass another --output_dir, or pass "
                "--overwrite=True to replace them.")


class Classifier(nn.Module):
    """Backbone + linear head: what linear evaluation and fine-tuning train and classify_image.py
    uses."""

    def __init__(self, backbone, feature_dim, num_classes):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x):
        return self.head(self.backbone(x))


def classifier_checkpoint(model, config, class_names, mean, std, extra=None):
    """A self-describing classifier file: arch, image size, normalisation, class names, weights."""
    model = unwrap(model)
    checkpoint = {"kind": CLASSIFIER_KIND, "config": dict(config),
                  "class_names": list(class_names), "mean": list(mean), "std": list(std),
                  "backbone": backbone_state_dict(model.backbone),
                  "head": {k: v.detach().cpu().clone()
                           for k, v in model.head.state_dict().items()}}
    checkpoint.update(extra or {})
    return checkpoint


def classifier_from_checkpoint(path):
    """Rebuild a Classifier from linear_eval_eurosat_best_model.pth or
    finetuned_eurosat_best_model.pth; returns (model, checkpoint, model_config). Anything that does
    not fit is a CheckpointError naming it."""
    checkpoint = load_checkpoint(path)
    if checkpoint.get("kind") != CLASSIFIER_KIND:
        hint = (" It is a pre-training checkpoint: run Linear_evaluation.py or finetune_model.py "
                "on it first."
                if checkpoint.get("kind") == PRETRAIN_KIND else "")
        raise CheckpointError(f"{path}: not a classifier checkpoint "
                              f"(kind {checkpoint.get('kind', 'unknown')!r})." + hint)
    names, mean, std = checkpoint.get("class_names"), checkpoint.get("mean"), checkpoint.get("std")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{path}: class_names must be a list of class names, found "
                              f"{type(names).__name__} {str(names)[:60]!r}. Was the file edited? "
                              "Rerun the step that writes it.")
    for name, values in (("mean", mean), ("std", std)):
        if (not isinstance(values, list) or len(values) != 3
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
                or (name == "std" and min(values) <= 0)):
            raise CheckpointError(f"{path}: {name} must be 3 numbers (one per RGB channel"
                                  f"{', all positive' if name == 'std' else ''}), "
                                  f"found {values!r}.")
    backbone, feature_dim, model_config = _backbone_from(checkpoint, path)
    model = Classifier(backbone, feature_dim, len(names))
    try:
        check_finite(checkpoint["head"], path)
        model.head.load_state_dict(checkpoint["head"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path}: the classifier head does not fit {len(names)} classes of "
                              f"{feature_dim}-d features "
                              f"({str(error).splitlines()[0][:160]}).") from None
    return model, checkpoint, model_config


@torch.no_grad()
def effective_rank(features):
    """exp(entropy of the normalised squared singular values) of the standardised features (Roy and
    Vetterli 2007): how many directions the features really use. Far below the feature dimension
    means dimensional collapse, a partial collapse the z-std check does not see; a linear probe can
    only use what these directions carry."""
    features = features.float()
    standardized = (features - features.mean(dim=0)) / features.std(dim=0).clamp_min(1e-6)
    energy = torch.linalg.svdvals(standardized) ** 2
    p = energy / energy.sum()
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()).item()


@torch.no_grad()
def knn_predict(train_features, train_labels, query_features, num_classes, k=200, temperature=0.2,
                chunk=1024):
    """Weighted kNN: cosine similarity, the k nearest vote with weight exp(sim / temperature)."""
    train_features = F.normalize(train_features.float(), dim=1)
    k = min(k, train_features.shape[0])
    predictions = []
    for start in range(0, query_features.shape[0], chunk):
        query = F.normalize(query_features[start:start + chunk].float(), dim=1)
        similarity, index = (query @ train_features.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(query.shape[0], num_classes, device=query.device)
        votes.scatter_add_(1, train_labels[index], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


# -------------------------------------------------------------------------------------------------
# features: images in, an N x D fp32 tensor out. The probe, kNN and the kNN monitor all measure
# through these, a backbone and the image-statistics floor alike.

class BackboneFeatures:
    """A backbone as a feature extractor: a uint8 NHWC image array in (any stored size: the
    evaluation transform resizes it to `image_size` and normalises it), an N x D fp32 tensor out,
    rows in the array's order. Computed in fp32 unless `amp_dtype` (the kNN monitor runs in the
    training precision; the probe standardises its features, so it keeps fp32). The caller places
    the backbone on `device` and owns its train()/eval() mode."""

    saves_model = True  # a head on these features is a classifier that classify_image.py can run
    standardize_for_knn = False  # the kNN l2-normalises them as they are

    def __init__(self, backbone, dim, image_size, device, *, channels_last=False, amp_dtype=None,
                 batch_size=256):
        self.backbone, self.dim, self.image_size, self.device = backbone, dim, image_size, device
        self.channels_last, self.amp_dtype, self.batch_size = channels_last, amp_dtype, batch_size

    def describe(self, config):
        return (f"{config['ARCH']}{stem_label(config['SMALL_STEM'], config['STEM_STRIDE'])} from "
                f"{config['PRETRAINED_PATH']}, {self.dim}-d features, {self.image_size} px")

    @torch.no_grad()
    def of_batch(self, x):
        """Features of a normalised NCHW batch on the device (an augmented one, for instance)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(self.device, self.amp_dtype):
            return self.backbone(x).float()

    def __call__(self, images, desc=None):
        batches = data.iterate_batches(images, np.arange(len(images)), self.batch_size,
                                       self.device, drop_last=False)
        return torch.cat([self.of_batch(data.eval_batch(batch, self.image_size))
                          for _, batch in tqdm(batches, desc=desc, leave=False, disable=not desc,
                                               total=math.ceil(len(images) / self.batch_size))])

    def freeze(self):
        """No trainable parameter, and eval(), so that BatchNorm uses, and keeps, its running
        statistics; returns a copy of the state, for assert_unchanged."""
        for p in self.backbone.parameters():
            p.requires_grad = False
        self.backbone.eval()
        return {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}

    def assert_unchanged(self, before):
        """Stop if the frozen backbone moved (weights or BatchNorm statistics): the results would
        not be a linear evaluation."""
        changed = [k for k, v in self.backbone.state_dict().items()
                   if not torch.equal(v, before[k])]
        if changed:
            fail(f"the frozen backbone changed during linear evaluation ({len(changed)} tensors, "
                 f"e.g. {changed[:3]}); this is a bug: the results are not a linear evaluation.")
        return f"frozen backbone unchanged ({len(before)} tensors identical)"


class ImageStatistics:
    """The floor of every results table as a feature extractor: the IMAGE_STATS_DIM colour
    statistics of each image at its stored size (simsiam_data.image_statistics), N x 12 fp32."""

    saves_model = False  # no network: a head on 12 numbers is no classifier classify_image runs
    standardize_for_knn = True  # its numbers are in different units (means, spreads, extremes)
    dim = IMAGE_STATS_DIM

    def __init__(self, device):
        self.device = device

    def describe(self, config):
        return (f"none: image statistics ({self.dim} numbers per image: mean, std, min and max "
                "of each channel at the stored size)")

    def __call__(self, images, desc=None):
        return data.image_statistics(images).to(self.device)

    def freeze(self):
        return {}  # nothing that could move

    def assert_unchanged(self, before):
        return "image statistics: no network to check"


def knn_top1(features, bank_labels, query_labels, k, *, temperature=0.2, standardize=False):
    """Top-1 accuracy (%) of the weighted kNN of the query features against the bank: the one kNN
    of the project, for the probe's report and the kNN monitor alike. `features` is (bank,
    queries); with `standardize` (image statistics) both are standardised with the bank's
    statistics first."""
    bank, queries = features
    if standardize:
        mean, std = data.standardization(bank)
        bank, queries = (bank - mean) / std, (queries - mean) / std
    num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    predicted = knn_predict(bank, bank_labels.to(bank.device), queries, num_classes, k=k,
                            temperature=temperature)
    return (predicted.cpu() == query_labels.cpu()).float().mean().item() * 100


# -------------------------------------------------------------------------------------------------
# evaluation scaffolding shared by Linear_evaluation.py and finetune_model.py: one metrics schema

def fraction_suffix(fraction):
    """How file names say a label fraction: "" for all labels, "_labels1pct" for 0.01."""
    return "" if fraction == 1 else f"_labels{fraction * 100:g}pct"


def evaluation_outputs(config, metrics_name, best_name):
    """(metrics file, best model file, lock name) in OUTPUT_DIR; `_random` and `_image_stats`
    names for the two floors, so that they never overwrite the results of a pre-trained backbone,
    and `_labels1pct` (fraction_suffix) for a LABEL_FRACTION below 1."""
    suffix = {"random": "_random", IMAGE_STATS: "_image_stats"}.get(config["PRETRAINED_PATH"], "")
    suffix += fraction_suffix(config.get("LABEL_FRACTION", 1.0))
    return (os.path.join(config["OUTPUT_DIR"], f"{metrics_name}{suffix}.pth"),
            os.path.join(config["OUTPUT_DIR"], f"{best_name}{suffix}.pth"),
            f"{metrics_name}{suffix}")


class Evaluation(NamedTuple):
    """What an evaluation starts from (start_evaluation)."""
    features: object  # BackboneFeatures or ImageStatistics
    config: dict  # the config as used: the checkpoint's architecture and size filled in
    identity: str  # what the results are results of (backbone_identity)
    header: str  # the lines the script prints first


def start_evaluation(config, device, channels_last, verb, outputs):
    """The features an evaluation starts from and the lines that Linear_evaluation.py and
    finetune_model.py print first: what runs, where, from which backbone. Image statistics for
    PRETRAINED_PATH = image_stats, else the backbone of backbone_for_evaluation on `device`.
    Results of another backbone already in `outputs` (metrics, best model) are refused
    (check_results_replaceable) unless OVERWRITE."""
    if config["PRETRAINED_PATH"] == IMAGE_STATS:
        features, pretrained_size = ImageStatistics(device), 0
        config = dict(config, ARCH="none", IMAGE_SIZE=0)
    else:
        backbone, feature_dim, config, pretrained_size = backbone_for_evaluation(config)
        backbone = backbone.to(device, memory_format=torch.channels_last if channels_last
                               else torch.preserve_format)
        features = BackboneFeatures(backbone, feature_dim, config["IMAGE_SIZE"], device,
                                    channels_last=channels_last)
    identity = backbone_identity(config)
    check_results_replaceable(outputs[:2], identity, config["OVERWRITE"])
    lines = [f"config: {config}", f"backbone: {features.describe(config)}"]
    if features.saves_model and config["IMAGE_SIZE"] != pretrained_size:
        lines.append(f"note: {verb} at {config['IMAGE_SIZE']} px; the checkpoint was pre-trained "
                     f"at {pretrained_size} px")
    if config["PRETRAINED_PATH"] in ("random", IMAGE_STATS):
        lines.append(f"baseline: results go to {outputs[0]}"
                     + (f" and {outputs[1]}" if features.saves_model else ""))
    return Evaluation(features, config, identity, "\n".join(lines))


def evaluation_memory(config, train):
    """What one step of Linear_evaluation.py (train=False: a frozen backbone) or finetune_model.py
    needs at the least, as runtime.check_fits takes it. Before the checkpoint is read its
    architecture is not known, so the smallest is counted (resnet18, ImageNet stem); IMAGE_SIZE 0,
    the checkpoint's own size, is not checked."""
    random = config["PRETRAINED_PATH"] == "random"
    if not config["IMAGE_SIZE"]:
        return {}
    try:
        with torch.device("meta"):
            backbone, _ = build_backbone(config["ARCH"] if random else "resnet18", 3,
                                         random and config["SMALL_STEM"],
                                         config["STEM_STRIDE"] if random else 1)
            x = torch.empty(config["BATCH_SIZE"], 3, config["IMAGE_SIZE"], config["IMAGE_SIZE"])
    except ValueError:  # a stem that does not exist: backbone_for_evaluation names it
        return {}
    weights, activations = step_memory(backbone, (x,), train)
    return {"weights": (weights, {"ARCH": config["ARCH"]}),
            "activations": (activations, {"BATCH_SIZE": config["BATCH_SIZE"],
                                          "IMAGE_SIZE": config["IMAGE_SIZE"]})}


def evaluation_metrics(kind, config, splits, **extra):
    """A new metrics dict of an evaluation of `splits` ({split: EuroSATSplit}) with `config` (as
    used); lists grow by one entry per epoch, the test entries are filled at the end. `extra` adds
    the script's own entries (best_model_path, device, ...)."""
    return {"kind": kind, "config": config, "versions": library_versions(), "seed": config["SEED"],
            "pretrained_path": config["PRETRAINED_PATH"], "arch": config["ARCH"],
            "image_size": config["IMAGE_SIZE"], "class_names": list(splits["test"].class_names),
            "label_fraction": config["LABEL_FRACTION"],
            "train_labels": len(splits["train"].labels),
            # the labelled images as a set, by class folder and name, not where the data folder is
            # (sorted: the digest the metrics files have recorded since it existed)
            "train_files_sha1": data.names_digest(sorted(
                "/".join(os.path.normpath(p).split(os.sep)[-2:]) for p in splits["train"].paths)),
            "epochs": [], "train_loss": [],
            "train_acc": [], "val_loss": [], "val_acc": [], "lr": [], "epoch_time_s": [],
            "best_epoch": 0, "best_val_acc": 0.0, "test_acc": None, "test_loss": None,
            "per_class_acc": None, "confusion_matrix": None, "test_predictions": None,
            "test_files": list(splits["test"].paths), "knn": None, "wall_time_s": 0.0, **extra}


def percent(accuracy):
    """An accuracy as the summaries and tables print it; "-" where none was measured."""
    return "-" if accuracy is None else f"{accuracy:.2f} %"


def record_evaluation_epoch(metrics, epoch, num_epochs, row, lr_format=".4f", note=""):
    """Append one epoch (row: train_loss, train_acc, val_loss, val_acc, lr, epoch_time_s, and any
    other list the metrics hold); return its log line, with `note` before the time."""
    metrics["epochs"].append(epoch + 1)
    for key, value in row.items():
        metrics[key].append(value)
    return (f"epoch {epoch + 1}/{num_epochs} train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.1f}% val loss {row['val_loss']:.4f} "
            f"acc {row['val_acc']:.1f}% lr {row['lr']:{lr_format}} "
            f"(best {metrics['best_val_acc']:.1f}% @{metrics['best_epoch']}) "
            f"{note + ' ' if note else ''}{row['epoch_time_s']:.1f} s")


def test_results(labels, predictions, loss, class_names):
    """The test entries of the metrics: accuracy, loss, per-class accuracy, confusion matrix,
    predictions."""
    num_classes = len(class_names)
    confusion = torch.bincount(labels * num_classes + predictions, minlength=num_classes ** 2)
    confusion = confusion.view(num_classes, num_classes).cpu()
    per_class = {name: ((confusion[i, i] / confusion[i].sum() * 100).item()
                        if confusion[i].sum() else float("nan"))
                 for i, name in enumerate(class_names)}
    return {"test_acc": (predictions == labels).float().mean().item() * 100, "test_loss": loss,
            "per_class_acc": per_class, "confusion_matrix": confusion.tolist(),
            "test_predictions": predictions.cpu().tolist()}
