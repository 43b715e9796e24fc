"""SimSiam pre-training on a folder of unlabeled RGB images
(default: the SSL4EO-S12 PNGs in barlow_data/train).

    python train_simsiam.py                        # the write-up's recipe: ResNet-50, 224 px,
                                                   # batch 32, 90 epochs
    python train_simsiam.py --arch=resnet18 --image_size=64 --batch_size=128
    torchrun --nproc_per_node=4 train_simsiam.py   # several GPUs: DDP + SyncBatchNorm,
                                                   # lr scaled by global batch

Writes into OUTPUT_DIR: `pretrain_metrics.pth` and `checkpoint_last.pth` after every epoch
(rerunning the same command resumes from it; a setting that defines the run, changed since, is
refused by name, see RESUMABLE_CHANGES), and `simsiam_<arch>_epoch_X.pth` every SAVE_EVERY
epochs and at the end. Every write is atomic, and a second run on the same OUTPUT_DIR is refused
while this one runs. Prints one line per epoch:
    epoch 3/90 loss -0.8123 lr 0.01250 z_std 0.0208 (healthy 0.0221) 61.2 pairs/s 334 s
What it reaches, and how fast, on named machines: see the README's results.
"""
import datetime
import math
import os
import shlex
import time
from typing import NamedTuple

import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

import simsiam_data as data
from runtime import (AMP_MODES, CheckpointError, DataError, above, amp_dtype_for, at_least,
                     atomic_save, autocast_for, between, check_fits,
                     check_settings, configure, describe_device, device_and_precision,
                     epoch_generator, fail, library_versions, load_checkpoint, one_of, pick_device,
                     precision_name, prepare_output_dir,
                     restore_grad_scaler, run, seed_everything, speed_up_cuda, warmup_cosine)
from simsiam_model import (ARCHS, COLLAPSE_RATIO, PRETRAIN_KIND, PRETRAIN_LAST_KIND,
                           PRETRAIN_METRICS_KIND, BackboneFeatures, ImageStatistics, SimSiam,
                           check_finite, knn_top1, negative_cosine_loss, normalized_std,
                           step_memory, unwrap)

# -------------------------------------------------------------------------------------------------
DATA_DIR = "barlow_data/train"  # unlabeled images (png/jpg/tif, searched recursively)
FILE_LIST = ""  # optional subset of DATA_DIR: a CSV with a Filename column, or one path per line
OUTPUT_DIR = "outputs"  # checkpoints and pretrain_metrics.pth land here
CACHE_DIR = "cache"  # decoded-once image arrays (fast pipeline); safe to delete
ARCH = "resnet50"  # resnet18 | resnet34 | resnet50
IN_CHANNELS = 3  # input bands; 3 for the RGB PNGs
SMALL_STEM = False  # 3x3 stride-1 first conv, no max-pool: for 32-64 px inputs
STEM_STRIDE = 1  # small stem's conv stride: 2 reads a 64 px input at the cost of a 32 px one
IMAGE_SIZE = 224  # crop size in pixels fed to the network
PROJ_DIM = 2048  # projector width and output dim (paper: 2048)
PRED_DIM = 512  # predictor bottleneck (paper: 512)
BATCH_SIZE = 32  # pairs per step per process; 32 fits ResNet-50 at 224 px in 8 GB
NUM_EPOCHS = 90  # passes over the data
BASE_LR = 0.05  # per 256 pairs: lr = BASE_LR * global batch / 256 (paper)
MOMENTUM = 0.9  # SGD momentum
WEIGHT_DECAY = 1e-4  # SGD weight decay
WARMUP_EPOCHS = 10  # linear warm-up epochs, then half-cosine to 0, updated every step (write-up)
FIX_PRED_LR = True  # keep the predictor's lr constant (paper: +0.4 points); False decays it too
CROP_SCALE_MIN = 0.2  # RandomResizedCrop lower area bound (paper: 0.2)
SOLARIZE = True  # write-up: solarise view 2 with p=0.2; False = the paper's symmetric recipe
JITTER_STRENGTH = 1.0  # scales ColorJitter(0.4, 0.4, 0.4, 0.1); 1.0 = write-up and paper
JITTER_P = 0.8  # probability of colour jitter (write-up and paper: 0.8)
GRAY_P = 0.2  # probability of random grayscale (write-up and paper: 0.2)
BLUR_P = 0.5  # probability of Gaussian blur, sigma 0.1-2 (write-up and paper: 0.5)
VFLIP_P = 0.0  # probability of a vertical flip (write-up: 0; overhead imagery has no "up": 0.5)
ROTATE90 = False  # rotate each view by a random multiple of 90 degrees (write-up: no)
PIPELINE = "fast"  # fast: decode once, device batch augment | reference: PIL per sample in workers
NUM_WORKERS = 4  # DataLoader workers (reference pipeline only)
DECODE_PROCESSES = 0  # processes that decode the fast pipeline's image cache; 0 = one per core
AMP = "auto"  # auto | bf16 | fp16 | off. auto: bf16 where native (GPU 8.0+, CPU AVX512-BF16/AMX),
#               else fp16 with a grad scaler on a GPU, fp32 on a CPU
CHANNELS_LAST = True  # channels_last memory format: faster convs (docs/experiments.md)
COMPILE = False  # torch.compile (CUDA; slower start, faster steps; compile time reported apart)
CUDA_GRAPHS = False  # CUDA, one process: compile with CUDA graphs (fewer launches: small batches)
OVERLAP_DATA = True  # CUDA, fast pipeline: make the next batch during this step, on a side stream
SYNC_BN = True  # SyncBatchNorm when running under torchrun with several processes (paper)
PEER_TIMEOUT = 1800  # torchrun: seconds a process waits for its peers to join, then stops
SAVE_EVERY = 10  # write simsiam_<arch>_epoch_X.pth every this many epochs (and at the end)
RESUME = True  # continue from OUTPUT_DIR/checkpoint_last.pth when it exists
KNN_DATA_DIR = ""  # labelled EuroSAT dir (train.csv, validation.csv) for a kNN monitor; "" = off
KNN_EVERY = 5  # epochs between kNN monitor runs (when KNN_DATA_DIR is set)
KNN_K = 200  # neighbours for the kNN monitor (paper: 200, cosine, temperature 0.2)
SAMPLE_EVERY = 20  # steps between samples of loss and z std (each sample waits for the GPU once)
SEED = 0  # seeds data order, augmentation and initialisation
DEVICE = "auto"  # auto | cuda | cpu | mps
# -------------------------------------------------------------------------------------------------

# Settings that may differ when checkpoint_last.pth is resumed: where files are, how fast the run
# goes, what it logs, and how long it goes on (recorded in metrics["resumed_with"]). Every other
# setting defines the run, and resuming with another value is refused by name: a setting added
# later is covered without a change here.
RESUMABLE_CHANGES = ("NUM_EPOCHS", "OUTPUT_DIR", "CACHE_DIR", "RESUME", "SAVE_EVERY",
                     "SAMPLE_EVERY", "KNN_DATA_DIR", "KNN_EVERY", "KNN_K", "NUM_WORKERS",
                     "DECODE_PROCESSES", "DEVICE", "AMP", "CHANNELS_LAST", "COMPILE",
                     "CUDA_GRAPHS", "OVERLAP_DATA", "PEER_TIMEOUT")
# What a setting was before it existed, for checkpoints written then: its default when it was
# added, which kept the old behaviour. A setting that a checkpoint lacks and that is not here is
# refused (its earlier value is unknown); add a new setting here if it keeps the old behaviour.
# (Values of the past, written out: they stay what they were when the defaults change.)
BEFORE_IT_EXISTED = {"FILE_LIST": "", "STEM_STRIDE": 1, "JITTER_STRENGTH": 1.0, "GRAY_P": 0.2,
                     "BLUR_P": 0.5, "JITTER_P": 0.8, "VFLIP_P": 0.0, "ROTATE90": False}
# what torchrun sets for every process it starts
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
LAST_KEYS = ("config", "epoch", "global_step", "model", "optimizer", "scaler", "metrics")
_UNKNOWN = object()  # a setting that a checkpoint predates


def settings_rules():
    return {"ARCH": one_of(*ARCHS), "IN_CHANNELS": at_least(1), "STEM_STRIDE": one_of(1, 2),
            "IMAGE_SIZE": at_least(8), "PROJ_DIM": at_least(1), "PRED_DIM": at_least(1),
            "BATCH_SIZE": at_least(2),  # BatchNorm needs two samples
            "NUM_EPOCHS": at_least(1), "BASE_LR": above(0), "MOMENTUM": between(0.0, 1.0),
            "WEIGHT_DECAY": at_least(0), "WARMUP_EPOCHS": between(0, NUM_EPOCHS),
            **data.augmentation_rules(),
            "PIPELINE": one_of("fast", "reference"),
            "NUM_WORKERS": at_least(0), "DECODE_PROCESSES": at_least(0), "AMP": one_of(*AMP_MODES),
            "SAVE_EVERY": at_least(1), "SAMPLE_EVERY": at_least(1), "KNN_EVERY": at_least(1),
            "KNN_K": at_least(1), "SEED": at_least(0), "PEER_TIMEOUT": at_least(1)}


# -------------------------------------------------------------------------------------------------
# processes and devices

def process_layout():
    """(rank, local rank, world size) as torchrun sets them; (0, 0, 1) for a plain run.

    torchrun sets all of TORCHRUN_VARIABLES; some of them alone were left in the environment (an
    exported shell variable, a job script) and stop the run, since RANK=1 would keep it from
    writing its checkpoints and WORLD_SIZE=2 would wait for peers that never come."""
    found = {name: os.environ[name] for name in TORCHRUN_VARIABLES if name in os.environ}
    if not {"RANK", "LOCAL_RANK", "WORLD_SIZE"} & set(found):
        return 0, 0, 1
    described = ", ".join(f"{name}={value}" for name, value in found.items())
    fix = ("Start several processes with `torchrun --nproc_per_node=N train_simsiam.py`, or one "
           f"without torchrun after `unset {' '.join(TORCHRUN_VARIABLES)}`.")
    missing = [name for name in TORCHRUN_VARIABLES if name not in found]
    if missing:
        fail(f"{described} in the environment, but not {', '.join(missing)}: torchrun sets all "
             f"five, so these were left over from elsewhere. {fix}", code=2)
    try:
        rank, local_rank, world_size = (int(found[name])
                                        for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    except ValueError:
        fail(f"{described}: RANK, LOCAL_RANK and WORLD_SIZE must be whole numbers. {fix}", code=2)
    if not (0 <= rank < world_size and local_rank >= 0):
        fail(f"{described}: RANK must be 0 .. WORLD_SIZE - 1. {fix}", code=2)
    return rank, local_rank, world_size


def training_device(local_rank, world_size):
    device = pick_device(DEVICE)
    if world_size > 1 and device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            fail(f"LOCAL_RANK {local_rank}, but this node has {torch.cuda.device_count()} GPU(s): "
                 "start torchrun with --nproc_per_node at most the number of GPUs.")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


class Run(NamedTuple):
    """Where this process runs and how: what most parts of the script need to know."""
    rank: int
    world_size: int
    device: torch.device
    amp_dtype: object  # the autocast dtype, or None for fp32
    precision_reason: str  # why that precision (amp_dtype_for), for the start-up line
    memory_format: torch.memory_format  # of the model and its inputs
    log: object  # print on rank 0, nothing on the others

    @property
    def main(self):
        return self.rank == 0


def start_run():
    """This process's Run: its rank under torchrun, its device and precision, its seed."""
    rank, local_rank, world_size = process_layout()
    device = training_device(local_rank, world_size)
    speed_up_cuda(device)
    amp_dtype, reason = amp_dtype_for(device, AMP)
    memory_format = torch.channels_last if CHANNELS_LAST else torch.contiguous_format
    seed_everything(SEED + rank)
    return Run(rank, world_size, device, amp_dtype, reason, memory_format,
               print if rank == 0 else (lambda *args, **kwargs: None))


def ranks_agree(value, what):
    """Stop every rank with the same message unless all hold the same `value`: replicas that
    start from different data or different checkpoints would silently diverge, then hang in a
    collective."""
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        fail(f"the {len(values)} processes disagree on {what}: "
             + "; ".join(f"rank {rank}: {v}" for rank, v in enumerate(values))
             + ". A multi-node run needs DATA_DIR, CACHE_DIR and OUTPUT_DIR on a file system "
               "that every node shares (see the README).")


def join_process_group(rank, world_size, backend):
    """init_process_group on keys of this start alone.

    torchrun's agent keeps one store for the whole job and hands it to every start of the workers
    (TORCHELASTIC_USE_AGENT_STORE), and the process group's keys are the same at every start: after
    a restart (--max-restarts) a worker that arrives first reads the address (gloo) or NCCL id that
    its peer published in the start that died, and fails with "Connection refused" or waits
    forever (pytorch/pytorch#135712). TORCHELASTIC_RESTART_COUNT cannot name the start, since each
    node's agent counts its own restarts; so the ranks agree on a fresh name first (agree_on_start)
    and the group keeps its keys under it. Waits at most PEER_TIMEOUT seconds, then stops naming
    what it waited for."""
    address = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    if rank == 0 and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        # tests only: a restarted rank 0 that arrives last, as a slow resume makes it in real runs
        time.sleep(float(os.environ.get("SIMSIAM_TEST_RANK0_DELAY", "0")))
    # the agent's store where torchrun has one (whatever the rendezvous), else rank 0 hosts it
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    try:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                              world_size, is_master=rank == 0 and not agent_store,
                              timeout=datetime.timedelta(seconds=PEER_TIMEOUT),
                              wait_for_workers=False)
    except RuntimeError as error:  # torch's DistNetworkError and DistStoreError
        fail(f"rank {rank}: cannot open the store of the process group at {address} "
             f"({str(error).splitlines()[0][:200]}) within PEER_TIMEOUT = {PEER_TIMEOUT} s. Check "
             "that torchrun's --master_addr / --master_port name node 0, and that it runs.")
    start = agree_on_start(store, rank, world_size, f"at {address}")
    dist.init_process_group(backend, store=dist.PrefixStore(f"simsiam/{start}/", store),
                            rank=rank, world_size=world_size)


def agree_on_start(store, rank, world_size, where):
    """A fresh name that every process of this start of the workers shares, told apart from the
    names of earlier starts that the store still holds: rank 0 draws it and gives it to each peer
    in answer to a token that the peer drew now; a peer's answer, with the name, says it has it."""
    clock = {"deadline": time.time() + PEER_TIMEOUT, "report": time.time() + 10}
    if rank != 0:
        token = os.urandom(8).hex()
        store.set(f"simsiam/hello/{rank}", token)
        while True:
            if store.check([f"simsiam/welcome/{rank}"]):
                answer, start = store.get(f"simsiam/welcome/{rank}").decode().split()
                if answer == token:
                    store.set(f"simsiam/joined/{rank}", start)
                    return start
            wait_for_peers(rank, [0], clock, where)
    start, waiting = os.urandom(8).hex(), set(range(1, world_size))
    while waiting:
        for peer in sorted(waiting):
            if store.check([f"simsiam/hello/{peer}"]):
                token = store.get(f"simsiam/hello/{peer}").decode()
                store.set(f"simsiam/welcome/{peer}", f"{token} {start}")
            if (store.check([f"simsiam/joined/{peer}"])
                    and store.get(f"simsiam/joined/{peer}").decode() == start):
                waiting.discard(peer)
        if waiting:
            wait_for_peers(rank, sorted(waiting), clock, where)
    return start


def wait_for_peers(rank, peers, clock, where):
    """A pause in agree_on_start: says what it waits for after 10 s and every minute after, and
    stops the process, naming them, once PEER_TIMEOUT is over."""
    names = (f"rank{'s' * (len(peers) > 1)} {', '.join(map(str, peers[:8]))}"
             + " ..." * (len(peers) > 8))
    now = time.time()
    if now > clock["deadline"]:
        fail(f"rank {rank} waited {PEER_TIMEOUT} s (PEER_TIMEOUT) for {names} to join the process "
             f"group {where}, and stops: did they stop, or are they still preparing their data? "
             "Their own output says; raise --peer_timeout if they need longer to start.")
    if now > clock["report"]:
        print(f"rank {rank}: waiting for {names} to join the process group {where} (gives up "
              f"after {PEER_TIMEOUT} s, PEER_TIMEOUT)", flush=True)
        clock["report"] = now + 60
    time.sleep(0.2)


def batch_usable_on_every_rank(x1, device):
    """False on every rank when any rank's batch is wholly unreadable (reference pipeline): all
    then skip the step together, where one skipping alone would leave the others waiting in the
    gradient all-reduce."""
    usable = torch.tensor([0 if x1 is None else 1], device=device)
    dist.all_reduce(usable, op=dist.ReduceOp.MIN)
    return bool(usable.item())


# -------------------------------------------------------------------------------------------------
# data

def list_pretraining_images(log):
    if not os.path.isdir(DATA_DIR):
        raise DataError(f"data folder {DATA_DIR!r} does not exist. Prepare it with "
                        "`python make_dataset.py` (or pass --data_dir=FOLDER of images).")
    paths = data.list_images(DATA_DIR, log)
    if not paths:
        raise DataError(f"no images (png/jpg/jpeg/tif) under {DATA_DIR!r}. Run "
                        "`python make_dataset.py` first, or point --data_dir at a folder of "
                        "images.")
    return select_listed(paths) if FILE_LIST else paths


def select_listed(paths):
    """The images of DATA_DIR named in FILE_LIST (e.g. EuroSAT's train.csv, so pre-training never
    sees test images)."""
    if not os.path.isfile(FILE_LIST):
        raise DataError(f"FILE_LIST {FILE_LIST!r} does not exist.")
    try:
        if FILE_LIST.endswith(".csv"):
            table = pd.read_csv(FILE_LIST, dtype=str)
            if "Filename" not in table.columns:
                raise DataError(f"{FILE_LIST}: needs a Filename column; found "
                                f"{list(table.columns)}.")
            names = table["Filename"].dropna().tolist()
        else:
            with open(FILE_LIST, encoding="utf-8") as f:
                names = [line.strip() for line in f if line.strip()]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"FILE_LIST {FILE_LIST}: not a readable list "
                        f"({type(error).__name__}: {error}).") from None
    if not names:
        raise DataError(f"FILE_LIST {FILE_LIST} names no image: list paths relative to DATA_DIR, "
                        "or pass --file_list= to use every image of DATA_DIR.")
    wanted = {os.path.normpath(os.path.join(DATA_DIR, name)) for name in names}
    selected = [p for p in paths if os.path.normpath(p) in wanted]
    if not selected:
        raise DataError(f"none of the images listed in {FILE_LIST} is under {DATA_DIR!r}: paths "
                        "must be relative to DATA_DIR.")
    if len(selected) < len(wanted):
        print(f"warning: {len(wanted) - len(selected)} of the {len(wanted)} images in "
              f"{FILE_LIST} are not under {DATA_DIR}")
    return selected


def decode_once(paths, main_process, log):
    """(images, usable paths, unreadable) of the fast pipeline: every image decoded once into
    CACHE_DIR (one process builds it, the other ranks wait for it). The reference pipeline reads
    the files as it goes: (None, paths, [])."""
    if PIPELINE == "reference":
        return None, paths, []
    return data.build_image_cache(paths, CACHE_DIR, workers=DECODE_PROCESSES,
                                  desc="decoding images once" if main_process else False,
                                  log=log if main_process else (lambda *args: None))


def epoch_batches(epoch, pretraining, run, augment_pair):
    """The (x1, x2, unreadable) of one epoch on this rank; x1 None marks a step that every rank
    skips.

    Per-epoch seeds: a resumed epoch replays exactly the data order and augmentations it would
    have had."""
    images, paths, steps = pretraining.images, pretraining.paths, pretraining.steps_per_epoch
    rank, world_size, device = run.rank, run.world_size, run.device
    order_generator = epoch_generator(SEED, epoch)
    augment_generator = epoch_generator(SEED, epoch, augment_stream=rank + 1)
    if PIPELINE == "fast":
        order = (torch.randperm(len(paths), generator=order_generator)
                 .numpy()[:steps * BATCH_SIZE * world_size])
        for x1, x2 in data.augmented_pairs(images, order[rank::world_size], BATCH_SIZE, device,
                                           augment_pair, augment_generator, OVERLAP_DATA):
            yield x1, x2, []
        return
    dataset = data.PretrainImageDataset(
        paths, *data.simsiam_transform_pair(IMAGE_SIZE, **data.augmentation_settings(globals())))
    if world_size > 1:
        sampler = torch.utils.data.DistributedSampler(dataset, world_size, rank, shuffle=True,
                                                      seed=SEED, drop_last=True)
        sampler.set_epoch(epoch)
    else:
        sampler = torch.utils.data.RandomSampler(dataset, generator=order_generator)
    # The augmentations are this rank's: the workers' seeds come from the loader's generator (the
    # order's generator would give worker k of every rank the same ones), and without workers the
    # transforms draw from the global generator
    torch.manual_seed(augment_generator.initial_seed())
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH_SIZE, sampler=sampler, drop_last=True, num_workers=NUM_WORKERS,
        pin_memory=device.type == "cuda", collate_fn=data.collate_skipping,
        generator=augment_generator)
    for x1, x2, unreadable in loader:
        if world_size > 1 and not batch_usable_on_every_rank(x1, device):
            x1 = x2 = None
        yield x1, x2, unreadable


def knn_splits():
    """{split: SplitFiles} of KNN_DATA_DIR's train.csv (the bank) and validation.csv (the
    queries), read and checked at start-up (a class of validation with no image in the bank
    included): a broken kNN folder stops the run before any image is decoded."""
    splits = {split: data.read_eurosat_split(KNN_DATA_DIR,
                                             os.path.join(KNN_DATA_DIR, f"{split}.csv"),
                                             os.path.join(KNN_DATA_DIR, "label_map.json"))
              for split in ("train", "validation")}
    data.check_classes({split: files.labels for split, files in splits.items()},
                       splits["train"].class_names, os.path.join(KNN_DATA_DIR, "train.csv"),
                       log=print if process_layout()[0] == 0 else (lambda *args: None))
    return splits


def decode_knn(splits, main_process, log):
    """{split: (images, labels)} of the kNN monitor, decoded once into CACHE_DIR. Every rank calls
    this before the process group exists (one builds each cache, the others wait for it), so that
    no rank waits in a collective while rank 0 decodes."""
    knn_data = {}
    for split, files in splits.items():
        images, _, bad = data.build_image_cache(
            files.paths, CACHE_DIR, desc=f"decoding kNN {split}" if main_process else False,
            log=log)
        if bad:
            raise DataError(f"{len(bad)} unreadable image(s) in {KNN_DATA_DIR}/{split}.csv, "
                            f"first: {bad[0]}")
        knn_data[split] = (images, torch.tensor(files.labels))
    return knn_data


def knn_monitor(model, knn_data, run):
    """Top-1 of a weighted kNN on validation.csv with train.csv as the bank (backbone features in
    the training precision, l2-normalised by the kNN)."""
    backbone = unwrap(model).backbone
    backbone.eval()
    features = BackboneFeatures(backbone, unwrap(model).projector[0].in_features, IMAGE_SIZE,
                                run.device, amp_dtype=run.amp_dtype)
    accuracy = knn_score(features, knn_data)
    backbone.train()
    return accuracy


def knn_score(features, knn_data):
    """The monitor's kNN (k = KNN_K, cosine, temperature 0.2) of validation on train, in %, with
    `features` (a backbone's or image statistics: simsiam_model's extractors)."""
    values = {split: features(images) for split, (images, _) in knn_data.items()}
    return knn_top1((values["train"], values["validation"]), knn_data["train"][1],
                    knn_data["validation"][1], KNN_K, standardize=features.standardize_for_knn)


def knn_floors(model, metrics, pretraining, run, start_epoch):
    """The kNN monitor's two floors on rank 0, before the first step it measures: this network at
    its initial weights, and the 12 colour statistics of each image. A representation worth
    pre-training for rises well above both. Each set is recorded with the settings it was measured
    under and the epoch from which it applies (metrics["knn_floors_history"]): a run resumed with
    another KNN_DATA_DIR or KNN_K measures them again, from its first epoch, with a model of the
    run's initial weights (initial_model), so that every monitor value stands beside floors of its
    own settings."""
    settings = {"KNN_DATA_DIR": KNN_DATA_DIR, "KNN_K": KNN_K}
    history = metrics.setdefault("knn_floors_history", [])
    if not history and metrics.get("knn_floors"):  # a run from before the history: settings unknown
        history.append({"from_epoch": 1, "settings": None, **metrics["knn_floors"]})
    if not pretraining.knn or not run.main or (history and history[-1]["settings"] == settings):
        return
    if start_epoch:  # the model has trained: the floor is the network as it started
        model = initial_model().to(run.device, memory_format=run.memory_format)
    floors = {"random init": knn_monitor(model, pretraining.knn, run),
              "image statistics": knn_score(ImageStatistics(run.device), pretraining.knn)}
    history.append({"from_epoch": start_epoch + 1, "settings": settings, **floors})
    metrics["knn_floors"] = floors
    run.log("kNN monitor floors (validation): "
            + ", ".join(f"{name} {value:.1f}%" for name, value in floors.items())
            + (f" (measured again: epochs before {start_epoch + 1} had other kNN settings, or "
               "none)" if start_epoch else ""))


# -------------------------------------------------------------------------------------------------
# resuming and saving

def new_metrics():
    """The metrics of a new run. run_id names the run in every file it writes, and checkpoints
    lists its epoch files: evaluations take the newest of this run, never an older run's file
    left in OUTPUT_DIR (--resume=False, a smaller --num_epochs)."""
    return {"kind": PRETRAIN_METRICS_KIND, "run_id": f"{time.strftime('%Y%m%d-%H%M%S')}-"
            f"{os.getpid()}-{os.urandom(3).hex()}", "checkpoints": {}, "epochs": [], "loss": [],
            "lr": [], "z_std": [], "epoch_time_s": [], "pairs_per_s": [], "knn_top1": [],
            "skipped_images": [], "step": [], "step_lr": [], "step_loss": []}


def resume_or_start(training, config, listing, run):
    """(metrics, epochs done, optimiser steps done), from OUTPUT_DIR/checkpoint_last.pth when
    RESUME and it exists: checked and loaded at start-up, before any image is decoded.

    A resume that would not continue the same run is refused by name (refuse_another_run); what
    may change is applied and recorded in metrics["resumed_with"]. Under torchrun every rank
    decides from its own file system; prepare_data then makes them agree on what they resumed.
    `training`: (model, optimizer, grad scaler), loaded in place."""
    model, optimizer, scaler = training
    last_path = os.path.join(OUTPUT_DIR, "checkpoint_last.pth")
    if not (RESUME and os.path.exists(last_path)):
        return new_metrics(), 0, 0
    fix = "To start afresh, delete it or pass --resume=False (it is then overwritten)."
    try:
        last = load_checkpoint(last_path, kinds=(PRETRAIN_LAST_KIND,))
    except CheckpointError as error:
        raise CheckpointError(f"{error} {fix}") from None
    missing = [key for key in LAST_KEYS if key not in last]
    if missing:
        raise CheckpointError(f"{last_path}: lacks {missing}, so it cannot be resumed. {fix}")
    refuse_another_run(last, config, listing, run.world_size, last_path)
    check_finite(last["model"], last_path)
    try:
        unwrap(model).load_state_dict(last["model"])
        load_optimizer_state(optimizer, last["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{last_path}: its weights do not match the model its config "
                              f"describes ({str(error).splitlines()[0][:200]}). {fix}") from None
    scaler_state = restore_grad_scaler(scaler, last["scaler"])
    if scaler_state == "fresh":
        run.log(f"note: {last_path} was written without fp16; the grad scaler starts from its "
                "initial scale")
    metrics, then = last["metrics"], last["config"]
    changed = {name: [then[name], config[name]] for name in RESUMABLE_CHANGES
               if name in then and then[name] != config[name]}
    # AMP names a rule ("auto"), not a precision: the same setting on another machine (or from a
    # version whose "auto" meant fp32 on every CPU) may go on in another one
    precision = precision_name(run.amp_dtype)
    if metrics.get("precision", precision) != precision:
        changed["precision"] = [metrics["precision"], precision]
        run.log(f"note: {last_path} trained in {metrics['precision']}; it goes on in {precision} "
                f"(AMP={AMP!r} here: {run.precision_reason}); pass --amp=off for fp32")
    metrics.setdefault("resumed_with", []).append({"epoch": last["epoch"], "changed": changed})
    run.log(f"resuming from {last_path}: {last['epoch']} of {NUM_EPOCHS} epochs done, step "
            f"{last['global_step']}")
    return metrics, last["epoch"], last["global_step"]


def refuse_another_run(last, config, listing, world_size, last_path):
    """Stop, naming it, on what would make resuming `last` not the run it continues: a setting
    outside RESUMABLE_CHANGES with another value (or one the checkpoint predates), another number
    of processes, other images."""
    fresh = ("or --resume=False to start afresh (its files are then overwritten), or another "
             "--output_dir.")
    then = {name: last["config"].get(name, BEFORE_IT_EXISTED.get(name, _UNKNOWN))
            for name in config if name not in RESUMABLE_CHANGES}
    unknown = [name for name, value in then.items() if value is _UNKNOWN]
    if unknown:
        raise CheckpointError(f"{last_path} predates the setting(s) {', '.join(unknown)}: what "
                              "they were then is not known, so resuming may not continue that "
                              f"run. Pass {fresh}")
    changed = [name for name, value in then.items() if value != config[name]]
    if changed:
        raise CheckpointError(
            f"{last_path} continues a run with other settings: "
            + ", ".join(f"{name}={then[name]!r} (now {config[name]!r})" for name in changed)
            + ". Resuming would not be that run. Pass "
            + " ".join(f"--{name.lower()}={shlex.quote(str(then[name]))}" for name in changed)
            + f" to continue it, {fresh}")
    processes = last["metrics"].get("world_size", world_size)
    if processes != world_size:
        raise CheckpointError(f"{last_path} was written by {processes} process(es), and this run "
                              f"has {world_size}: the global batch, the lr and each process's "
                              "share of the data would change. Start it as that run was "
                              f"(torchrun --nproc_per_node={processes}, or plain python for 1), "
                              f"{fresh}")
    images = last["metrics"].get("image_list", listing)  # not recorded before it was checked
    if images != listing:
        raise CheckpointError(f"the images of DATA_DIR {DATA_DIR!r} are not those {last_path} "
                              f"was trained on ({images['count']} listed then, "
                              f"{listing['count']} now): resuming would not be that run. Restore "
                              f"them, {fresh}")


def load_optimizer_state(optimizer, saved):
    """The saved momentum buffers under this run's settings: load_state_dict alone would also
    bring back each group's saved lr, momentum, weight decay and fix_lr, so that the run would
    record one value and use another."""
    current, saved_groups = optimizer.state_dict()["param_groups"], saved["param_groups"]
    groups = [dict(now, params=then["params"]) for now, then in zip(current, saved_groups)]
    # a different number of groups is left for load_state_dict to refuse
    optimizer.load_state_dict(dict(saved, param_groups=groups + saved_groups[len(groups):]))


def checkpoint_bytes(param_count):
    """Disk the run's checkpoints need: the epoch files, and checkpoint_last.pth (weights and SGD
    momentum) twice while it is rewritten."""
    return 4 * param_count * (NUM_EPOCHS // SAVE_EVERY + 1 + 4)


def save_epoch(training, metrics, config, epoch, global_step):
    """This epoch's files, of `training`: (model, optimizer, grad scaler). The epoch file goes
    first: a kill before checkpoint_last.pth is rewritten replays this epoch on resume and writes
    the file again, where the other order could resume past a file never written."""
    model, optimizer, scaler = training
    model_state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    if (epoch + 1) % SAVE_EVERY == 0 or epoch + 1 == NUM_EPOCHS:
        name = f"simsiam_{ARCH}_epoch_{epoch + 1}.pth"
        print(f"saving checkpoint to {os.path.join(OUTPUT_DIR, name)}")
        atomic_save({"kind": PRETRAIN_KIND, "arch": ARCH, "config": config, "epoch": epoch + 1,
                     "run_id": metrics.get("run_id"), "model": model_state},
                    os.path.join(OUTPUT_DIR, name))
        metrics.setdefault("checkpoints", {})[epoch + 1] = name
    atomic_save({"kind": PRETRAIN_LAST_KIND, "arch": ARCH, "config": config, "epoch": epoch + 1,
                 "global_step": global_step, "model": model_state,
                 "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "metrics": metrics}, os.path.join(OUTPUT_DIR, "checkpoint_last.pth"))
    atomic_save(metrics, os.path.join(OUTPUT_DIR, "pretrain_metrics.pth"))


def finish_epoch(metrics, epoch, summary, samples, run_facts):
    """Append one epoch to the metrics (the epoch's summary, the per-step samples, the run's
    facts); return the epoch's line, and a collapse warning when z std has fallen far below the
    healthy 1/sqrt(PROJ_DIM)."""
    metrics["epochs"].append(epoch + 1)
    for key, value in summary.items():
        metrics[key].append(value)  # z_std is added below, from the samples
    # step_lr: every step; step, step_loss: every SAMPLE_EVERY
    for key in ("step", "step_loss", "step_lr"):
        metrics[key] += samples[key]
    summary["z_std"] = sum(samples["z_std"]) / len(samples["z_std"])  # sampled with the loss
    metrics["z_std"].append(summary["z_std"])
    metrics.update(versions=library_versions(), seed=SEED, **run_facts)
    healthy = run_facts["z_std_healthy"]
    line = (f"epoch {epoch + 1}/{NUM_EPOCHS} loss {summary['loss']:.4f} lr {summary['lr']:.5f} "
            f"z_std {summary['z_std']:.4f} (healthy {healthy:.4f}) "
            f"{summary['pairs_per_s']:.1f} pairs/s {summary['epoch_time_s']:.0f} s")
    line += f" knn {summary['knn_top1']:.1f}%" if summary["knn_top1"] is not None else ""
    line += f" skipped {summary['skipped_images']} unreadable" if summary["skipped_images"] else ""
    if summary["z_std"] < COLLAPSE_RATIO * healthy:
        line += (f"\nwarning: z_std {summary['z_std']:.4f} is far below the healthy "
                 f"{healthy:.4f}: the representation may be collapsing. Check the augmentations, "
                 "or lower --base_lr.")
    return line


def check_memory(device):
    """Stop at start-up when one training step cannot fit in the memory of `device` (a size typo
    such as --proj_dim=204800 or --image_size=22400), naming the settings; see step_memory."""
    with torch.device("meta"):
        model = SimSiam(ARCH, PROJ_DIM, PRED_DIM, IN_CHANNELS, SMALL_STEM, STEM_STRIDE)
        x = torch.empty(BATCH_SIZE, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    weights, activations = step_memory(model, (x, x))
    check_fits({"weights": (weights, {"PROJ_DIM": PROJ_DIM, "PRED_DIM": PRED_DIM}),
                "activations": (activations, {"BATCH_SIZE": BATCH_SIZE,
                                              "IMAGE_SIZE": IMAGE_SIZE})}, device)


def initial_model():
    """The SimSiam of this run at its initial weights, the same whenever it is built (seeded with
    SEED apart from the global generator): the kNN monitor's random-init floor can be measured
    again after a resume."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return SimSiam(ARCH, PROJ_DIM, PRED_DIM, IN_CHANNELS, SMALL_STEM, STEM_STRIDE)


def build_model(run):
    """The SimSiam model on the run's device, once it is sure to fit in its memory; rank 0 also
    makes sure OUTPUT_DIR can take its checkpoints, and locks it."""
    try:
        check_memory(run.device)
        model = initial_model()
    except ValueError as error:
        fail(f"{error}. Fix --arch / --small_stem / --stem_stride.", code=2)
    if run.main:
        need = checkpoint_bytes(sum(p.numel() for p in model.parameters()))
        prepare_output_dir(OUTPUT_DIR, "train_simsiam", need_bytes=need)
    return model.to(run.device, memory_format=run.memory_format)


def image_listing(paths):
    """{"count", "sha1"} of a list of images, by their paths relative to DATA_DIR: what every
    rank, and a resumed run, must see."""
    return {"count": len(paths),
            "sha1": data.names_digest(os.path.relpath(p, DATA_DIR) for p in paths)[:12]}


class Pretraining(NamedTuple):
    """The images of the run, decoded, and what its epochs are made of."""
    images: object  # the decoded-once array (fast pipeline), or None (reference pipeline)
    paths: list  # the usable images
    unreadable: list  # what decoding left out
    steps_per_epoch: int
    knn: dict  # the kNN monitor's {split: (images, labels)} on rank 0; None elsewhere, or off
    listing: dict  # image_listing of the images listed (readable or not): what a resume checks


def prepare_data(listed, knn_files, resumed_at, run):
    """The run's Pretraining. The kNN splits and the images are decoded once before the process
    group exists, so that a long decode cannot time out a collective; then every rank must see
    the same images and have resumed the same (epoch, step) `resumed_at`."""
    knn_data = decode_knn(knn_files, run.main, run.log) if knn_files else None
    images, paths, unreadable = decode_once(listed, run.main, run.log)
    world_size = run.world_size
    if unreadable:
        run.log(f"warning: skipping {len(unreadable)} unreadable image(s), e.g. {unreadable[0]}")
    if world_size > 1:
        join_process_group(run.rank, world_size, "nccl" if run.device.type == "cuda" else "gloo")
        ranks_agree(image_listing(paths), "the images of DATA_DIR (count, hash of the list)")
        ranks_agree(resumed_at, f"the (epoch, step) that {OUTPUT_DIR}/checkpoint_last.pth holds "
                                "((0, 0): none)")
    steps_per_epoch = len(paths) // (BATCH_SIZE * world_size)
    if steps_per_epoch == 0:
        raise DataError(f"only {len(paths)} usable images in {DATA_DIR!r}, fewer than one "
                        f"global batch of {BATCH_SIZE * world_size} pairs. Lower --batch_size "
                        f"(at most {max(2, len(paths) // world_size)}) or add images.")
    return Pretraining(images, paths, unreadable, steps_per_epoch,
                       knn_data if run.main else None, image_listing(listed))


def sample_step(samples, tensors, steps, run, where):
    """Every SAMPLE_EVERY steps: the running loss (a NaN stops the run: the last good state is on
    disk), the step's loss and z std, from `tensors`: (the epoch's loss sum, the step's loss, its
    z1). Each sample waits for the GPU once; returns the running loss."""
    loss_sum, loss, z1 = tensors
    running = loss_sum.clone()  # the running sum turns NaN as soon as one step does
    if run.world_size > 1:
        dist.all_reduce(running)  # every rank sees the same value, so all stop together
    running = running.item() / steps / run.world_size
    if not math.isfinite(running):
        fail(f"loss became {running} at {where}. Stopping; the last good state is kept in "
             f"{OUTPUT_DIR}/checkpoint_last.pth. Lower --base_lr.")
    samples["z_std"].append(normalized_std(z1))
    samples["step_loss"].append(loss.item())
    return running


def optimizer_for(model, base_lr):
    """SGD over two groups: the predictor's lr stays at base_lr when FIX_PRED_LR
    (the paper's +0.4 points)."""
    predictor = list(model.predictor.parameters())
    others = [p for name, p in model.named_parameters() if not name.startswith("predictor.")]
    return torch.optim.SGD([{"params": others, "fix_lr": False},
                            {"params": predictor, "fix_lr": FIX_PRED_LR}],
                           lr=base_lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def for_training(model, run):
    """(the module the steps call, whether its steps replay CUDA graphs): SyncBatchNorm (the paper
    normalises over all GPUs) and DDP under torchrun, torch.compile when asked. The parameters stay
    the model's own, so the optimiser needs no change.

    CUDA_GRAPHS compiles with mode="reduce-overhead": each step replays recorded CUDA graphs, so
    the host launches a few graphs instead of hundreds of kernels, which is what bounds a small
    batch's step. It needs one process on CUDA; elsewhere the run steps as COMPILE says."""
    device, world_size, log = run.device, run.world_size, run.log
    if CUDA_GRAPHS and device.type == "cuda" and world_size == 1:
        return torch.compile(model, mode="reduce-overhead"), True
    if CUDA_GRAPHS:
        log(f"note: CUDA_GRAPHS needs one process on a CUDA GPU; this run ({device.type}, "
            f"{world_size} process(es)) steps without them")
    if world_size > 1 and SYNC_BN and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif world_size > 1 and SYNC_BN:
        log("note: SyncBatchNorm needs GPUs; on the CPU each process normalises over its own "
            "batch")
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return (torch.compile(model) if COMPILE else model), False


# -------------------------------------------------------------------------------------------------

def describe_run(config, model, run, pretraining, start_epoch):
    """Print what this run does; return the facts that every epoch's metrics record."""
    num_images, world_size, log = len(pretraining.paths), run.world_size, run.log
    facts = dict(config=config, z_std_healthy=1 / math.sqrt(PROJ_DIM), num_images=num_images,
                 image_list=pretraining.listing,
                 param_count=sum(p.numel() for p in model.parameters()), world_size=world_size,
                 device=describe_device(run.device), precision=precision_name(run.amp_dtype),
                 compile_time_s=None)
    global_batch = BATCH_SIZE * world_size
    base_lr = BASE_LR * global_batch / 256
    log(f"config: {config}")
    log(f"device: {device_and_precision(run.device, run.amp_dtype, run.precision_reason)}; "
        f"processes: {world_size}")
    earlier = sorted(n for n in os.listdir(OUTPUT_DIR) if n.startswith("simsiam_")
                     and n.endswith(".pth") and "_epoch_" in n) if start_epoch == 0 else []
    if earlier:
        log(f"note: {OUTPUT_DIR} holds {len(earlier)} epoch file(s) of an earlier run "
            f"({', '.join(earlier[:4])}{'...' if len(earlier) > 4 else ''}); this run overwrites "
            "those of its own epochs, and evaluations take only this run's")
    log(f"model: SimSiam {ARCH}, {facts['param_count'] / 1e6:.2f} M parameters; {num_images} "
        f"images, global batch {global_batch}, {pretraining.steps_per_epoch} steps per epoch, lr "
        f"{base_lr:.5f} (= {BASE_LR} x {global_batch} / 256), epochs "
        f"{start_epoch + 1}..{NUM_EPOCHS}")
    return facts


def compile_time(step_started, run):
    """Seconds the first compiled step took (its compilation), printed apart from pairs/s."""
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    seconds = time.time() - step_started
    run.log(f"torch.compile: the first step took {seconds:.1f} s (compilation; not in pairs/s)")
    return seconds


def out_of_memory():
    fail(f"out of GPU memory at batch {BATCH_SIZE} x {IMAGE_SIZE} px with {ARCH}: try half the "
         "--batch_size (the lr scales with it), a smaller --image_size or --arch=resnet18.")


def main():
    config, _ = configure(globals())
    check_settings(config, settings_rules())
    run = start_run()  # rank, device, precision, seed
    model = build_model(run)
    global_batch = BATCH_SIZE * run.world_size
    base_lr = BASE_LR * global_batch / 256
    optimizer = optimizer_for(model, base_lr)
    scaler = torch.amp.GradScaler("cuda", enabled=run.amp_dtype == torch.float16)
    device, memory_format = run.device, run.memory_format

    # ---- at start-up, before any image is decoded: the lists, the kNN folder, the resume ----
    listed = list_pretraining_images(run.log)
    knn_files = knn_splits() if KNN_DATA_DIR else None
    metrics, start_epoch, global_step = resume_or_start((model, optimizer, scaler), config,
                                                        image_listing(listed), run)
    pretraining = prepare_data(listed, knn_files, (start_epoch, global_step), run)
    steps_per_epoch = pretraining.steps_per_epoch
    augment_pair = data.batch_augment_pair(IMAGE_SIZE, **data.augmentation_settings(config))
    knn_floors(model, metrics, pretraining, run, start_epoch)
    train_model, graphs = for_training(model, run)
    run_facts = describe_run(config, model, run, pretraining, start_epoch)

    # ---- training loop ----
    for epoch in range(start_epoch, NUM_EPOCHS):
        model.train()
        loss_sum = torch.zeros((), device=device)
        steps, skipped, samples = 0, [], {"step": [], "step_loss": [], "step_lr": [], "z_std": []}
        started, compiling = time.time(), 0.0  # compiling: the first compiled step
        bar = tqdm(epoch_batches(epoch, pretraining, run, augment_pair), total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{NUM_EPOCHS}", leave=False, disable=not run.main)
        try:
            for x1, x2, bad in bar:
                skipped += bad
                if x1 is None:  # no readable image in some rank's batch (reference pipeline)
                    continue
                step_started = time.time()
                lr = warmup_cosine(global_step, NUM_EPOCHS * steps_per_epoch,
                                   WARMUP_EPOCHS * steps_per_epoch, base_lr)
                for group in optimizer.param_groups:
                    group["lr"] = base_lr if group["fix_lr"] else lr
                x1 = x1.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                x2 = x2.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                if graphs:  # a new step: the graphs may now overwrite the last step's outputs
                    torch.compiler.cudagraph_mark_step_begin()
                with autocast_for(device, run.amp_dtype):
                    # z1, z2 come back detached: the stop-gradient
                    p1, p2, z1, z2 = train_model(x1, x2)
                    loss = negative_cosine_loss(p1.float(), p2.float(), z1.float(), z2.float())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()  # the scale is 1 and the scaler a no-op unless fp16
                scaler.step(optimizer)
                scaler.update()
                if (COMPILE or graphs) and run_facts["compile_time_s"] is None:
                    run_facts["compile_time_s"] = compiling = compile_time(step_started, run)
                loss_sum += loss.detach()
                steps += 1
                global_step += 1
                samples["step_lr"].append(lr)  # a host float: no wait for the GPU
                if (steps - 1) % SAMPLE_EVERY == 0 or steps == steps_per_epoch:
                    samples["step"].append(global_step)
                    running = sample_step(samples, (loss_sum, loss, z1), steps, run,
                                          f"epoch {epoch + 1}, step {global_step}")
                    bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr:.5f}")
        except torch.cuda.OutOfMemoryError:
            out_of_memory()
        if steps == 0:
            raise DataError(f"epoch {epoch + 1} produced no batch: every image of {DATA_DIR} was "
                            "unreadable?")

        # ---- the epoch's end: the kNN monitor, then rank 0 alone records and saves ----
        elapsed = time.time() - started
        if run.world_size > 1:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        for message in sorted(set(skipped))[:5]:
            run.log(f"warning: skipped unreadable image {message}")
        knn = (knn_monitor(model, pretraining.knn, run) if pretraining.knn
               and ((epoch + 1) % KNN_EVERY == 0 or epoch + 1 == NUM_EPOCHS) else None)
        if run.main:  # every write is atomic
            summary = {"loss": loss_sum.item() / steps, "lr": lr, "epoch_time_s": elapsed,
                       "knn_top1": knn,
                       "pairs_per_s": ((steps - (compiling > 0)) * global_batch
                                       / max(elapsed - compiling, 1e-9)),
                       "skipped_images": len(pretraining.unreadable) + len(set(skipped))}
            line = finish_epoch(metrics, epoch, summary, samples,
                                dict(run_facts, global_step=global_step))
            save_epoch((model, optimizer, scaler), metrics, config, epoch, global_step)
            print(line, flush=True)
    if run.main:  # the other ranks record no loss
        print(f"done: {NUM_EPOCHS} epochs, final loss {metrics['loss'][-1]:.4f}; outputs in "
              f"{OUTPUT_DIR}/" if start_epoch < NUM_EPOCHS else
              f"nothing to do: {OUTPUT_DIR}/checkpoint_last.pth already holds all {NUM_EPOCHS} "
              "epochs (pass --resume=False to train again, or a larger --num_epochs to go on)")
    if run.world_size > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    run(main)
