"""Data for SimSiam pre-training and EuroSAT evaluation.
Pure definitions: no paths of its own, no device.

Two pre-training pipelines give the same augmentation distribution:
- reference (the write-up's): `PretrainImageDataset` decodes each image in DataLoader workers and
  applies `simsiam_transform_v1` / `simsiam_transform_v2` per sample with PIL;
- fast (the default): `build_image_cache` decodes every image once into a uint8 memory map, then
  `BatchAugment` augments whole batches as tensors on the training device, with per-sample random
  parameters.

Images: `list_images` and `open_rgb` read a folder as what it holds (16-bit and float rasters as
reflectance, in a few times their size in memory; FIFOs, names that are not UTF-8, bands that would
be dropped and images too large for the memory left refused by name).

EuroSAT: `read_eurosat_split` reads train.csv / validation.csv / test.csv through label_map.json
and checks them, `read_eurosat_splits` also that no image is in two of them; `load_eurosat_cached`
returns a split as a named record (images, labels, paths, class_names).

Problems with the user's files are raised as runtime.DataError, whose message names the file and
the fix.
"""
import contextlib
import errno
import functools
import hashlib
import json
import math
import multiprocessing as mp
import os
import queue
import shutil
import sys
import threading
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from runtime import (DataError, NotRegularFile, atomic_write, between, die_with_parent,
                     free_memory, open_regular, remove_stale_temp_files, report_skipped,
                     temp_path_for, walk_data, write_error)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2, as PIL and torchvision use
JITTER = (0.4, 0.4, 0.4, 0.1)  # ColorJitter brightness/contrast/saturation/hue (write-up, paper)
# what reading one image can raise: broken or foreign files, and images over PIL's
# decompression-bomb limit
IMAGE_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError,
                     Image.DecompressionBombError)
PARALLEL_CACHE_MIN = 4096  # below this many images, decode in-process: starting workers costs more
# Images of more than 8 bits are Sentinel-2 reflectance, shown with make_dataset.py's true-colour
# stretch (reflectance 0..MAX_REFLECTANCE -> 0..255): integers are digital numbers, reflectance =
# DN / REFLECTANCE_DN (an image file records no v1.1 offset, so none is taken off); floats are
# reflectance itself, NaN and inf no-data.
REFLECTANCE_DN = 10000  # the digital number of reflectance 1.0 (Sentinel-2 L1C and L2A)
MAX_REFLECTANCE = 0.3  # reflectance shown as 255 (make_dataset.py's default)
MAX_FLOAT_REFLECTANCE = 6.5535  # a float image above this is no reflectance (65535 / 10000)
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # PIL's modes of grey images wider than 8 bits
# Reading an image takes at most this many bytes per pixel at its peak (8-bit: PIL's decoded copy
# and the RGB one, 8 measured; wide: the decoded values, the RGB array and PIL's copy of it, 11
# for 16-bit grey, 15 for floats, 16-19 for 16-bit RGB); an image that needs more than the memory
# the process may take is refused from its header. Checked from MEMORY_CHECK_FROM bytes on; wide
# images are converted CONVERT_PIXELS at a time.
READ_BYTES_PER_PIXEL = {"8-bit": 10, "wide": 20}
MEMORY_CHECK_FROM = 2**28
CONVERT_PIXELS = 2**18
SPLITS = ("train", "validation", "test")  # the EuroSAT split files, <split>.csv
LABEL_SUBSET_SEED = 0  # the labelled subset of a label fraction: the same for every evaluation


# -------------------------------------------------------------------------------------------------
# reading images

class UnsupportedImage(DataError):
    """An image that cannot be read as RGB without a silent change: bands that would be dropped, no
    pixel with data, floats that are no reflectance. A ValueError, so that the pipelines count it
    with the unreadable images."""


def list_images(root, log=print):
    """Every image file under `root` (recursive, symlinked folders followed), sorted so the order
    is the same on every machine; FIFOs and names that are not UTF-8 are left out, with a warning
    through `log` (runtime.walk_data)."""
    found, skipped = [], []
    for folder, _, files in walk_data(root, lambda name: name.lower().endswith(IMAGE_EXTENSIONS),
                                      skipped):
        found += [os.path.join(folder, f) for f in files]
    report_skipped(skipped, root, log)
    return sorted(found)


def open_rgb(path):
    """An image file as 8-bit RGB, each kind read as what it is:
    - 8 bits: RGB as it is; grey, palette and CMYK converted; the alpha of RGBA and grey + alpha
      dropped;
    - wider (16- or 32-bit integers, grey or 16-bit RGB at full precision; floats): reflectance,
      shown as make_dataset.py shows it (see REFLECTANCE_DN); NaN and inf are no-data, black.
    Refused with UnsupportedImage, which the pipelines count with the unreadable images: a band
    count PIL would cut silently (a 4-band multispectral TIFF), an image with no finite pixel,
    floats above MAX_FLOAT_REFLECTANCE, an image too large for the memory this process may still
    take (from its header, before it is decoded); with runtime.NotRegularFile: a FIFO, socket or
    device.
    """
    with open_regular(path) as f, Image.open(f) as image:
        # a TIFF says how many bands it stores; PIL keeps only those its mode has
        stored = getattr(image, "tag_v2", {}).get(277, len(image.getbands()))
        if stored != len(image.getbands()):
            raise UnsupportedImage(
                f"{stored} bands, of which PIL would keep {len(image.getbands())} ({image.mode}) "
                "and drop the rest: only grey, RGB and their alpha versions are read. Save the "
                "red, green and blue bands in a file of their own.")
        wide = image.mode in WIDE_MODES or ";16" in _raw_mode(image)
        _check_memory(image, READ_BYTES_PER_PIXEL["wide" if wide else "8-bit"])
        if not wide:
            image.load()
            return image.convert("RGB")
        values = _wide_values(image, f)
    return _true_colour(values, is_float=image.mode == "F")


def _check_memory(image, bytes_per_pixel):
    """Refuse an image whose reading needs more than the memory this process may still take
    (runtime.free_memory), from its header alone: a Sentinel-2 scene on a small machine is then
    one unreadable image, named, not a MemoryError traceback or the kernel's out-of-memory kill."""
    need = image.width * image.height * bytes_per_pixel
    if need < MEMORY_CHECK_FROM:  # the usual image: not worth reading /proc for
        return
    free = free_memory()
    if need > free:
        raise UnsupportedImage(
            f"{image.width} x {image.height} px ({image.mode}) needs about {need / 2**30:.1f} GiB "
            f"to read, and this process may take {free / 2**30:.1f} GiB more: cut it into tiles "
            "(or downsample it) first, or free memory.")


def _raw_mode(image):
    """How PIL unpacks the file's pixels, e.g. "RGB;16B" for a 16-bit big-endian RGB PNG."""
    args = image.tile[0][3] if image.tile else ""
    return args if isinstance(args, str) else str(args[0])


def _wide_values(image, f):
    """The pixels of a grey image wider than 8 bits, or of 16-bit RGB at full precision, as an
    (H, W) or (H, W, bands) array of their own type (16-bit RGB as uint16). PIL reads 16-bit RGB
    as its high bytes only, so it is decoded a second time with the byte order swapped, which gives
    the low bytes. Each decoded copy is let go as soon as its values are taken."""
    image.load()
    high = np.asarray(image)
    if image.mode in WIDE_MODES:
        return high
    Image.Image.close(image)  # its pixels are in `high`; ImageFile.close would close `f` too
    f.seek(0)
    swap = {"B": "L", "L": "B", "N": "B" if sys.byteorder == "little" else "L"}
    with Image.open(f) as again:
        again.tile = [_swapped(tile, swap) for tile in again.tile]
        again.load()
        low = np.asarray(again)
    values = high.astype(np.uint16)
    del high
    values <<= 8
    values |= low
    return values


def _swapped(tile, swap):
    """A decoder tile of PIL, its raw mode's byte order swapped ("RGB;16B" -> "RGB;16L")."""
    args = tile[3]
    raw = args if isinstance(args, str) else args[0]
    raw = raw[:-1] + swap[raw[-1]]
    args = raw if isinstance(args, str) else (raw, *args[1:])
    # Pillow 11 and later: a named tuple; before: a plain one
    return tile._replace(args=args) if hasattr(tile, "_replace") else (*tile[:3], args)


def _true_colour(values, is_float):
    """Wide pixel values -> 8-bit RGB: reflectance 0..MAX_REFLECTANCE -> 0..255, rounded as
    make_dataset.py rounds; no-data (NaN, inf) black; alpha dropped, grey copied to 3 bands.
    Converted CONVERT_PIXELS at a time, so that the float64 arithmetic needs a few megabytes
    whatever the size of the image."""
    bands = (values if values.ndim == 2 else values[..., 0] if values.shape[2] == 2
             else values[..., :3])
    if is_float:
        _check_reflectance(bands)
    elif bands.size == 0:
        raise UnsupportedImage("no data: the image has no pixel")
    rgb = np.empty(bands.shape[:2] + (3,), np.uint8)
    rows = max(1, CONVERT_PIXELS // max(1, bands.shape[1]))
    for start in range(0, len(bands), rows):
        part = _to_8_bits(bands[start:start + rows], is_float)
        rgb[start:start + rows] = part if part.ndim == 3 else part[..., None]
    return Image.fromarray(rgb)


def _check_reflectance(values):
    """Refuse float pixels with no finite value, or above MAX_FLOAT_REFLECTANCE (no
    reflectance)."""
    top = -math.inf
    for part in np.array_split(values, max(1, values.size // CONVERT_PIXELS)):
        finite = part[np.isfinite(part)]
        top = max(top, float(finite.max())) if finite.size else top
    if top == -math.inf:
        raise UnsupportedImage("no data: every pixel is NaN or inf")
    if top > MAX_FLOAT_REFLECTANCE:
        raise UnsupportedImage(f"values up to {top:g}, which are not reflectance (0 to about 1): "
                               "float images are read as reflectance. Save digital numbers as "
                               "16-bit integers.")


def _to_8_bits(values, is_float):
    """Some rows of wide values -> uint8, in float64 as make_dataset.py computes: reflectance
    (DN / REFLECTANCE_DN, or the floats themselves) x 255 / MAX_REFLECTANCE, clipped to 0..255,
    rounded half up; a pixel with a band that is NaN or inf is 0. In place, on one float64 copy."""
    x = values.astype(np.float64)
    if not is_float:
        x /= REFLECTANCE_DN
    finite = np.isfinite(x) if x.ndim == 2 else np.isfinite(x).all(axis=2)
    x[~finite] = 0.0
    x *= 255.0
    x /= MAX_REFLECTANCE
    np.clip(x, 0.0, 255.0, out=x)
    x += 0.5
    return np.floor(x, out=x).astype(np.uint8)


def gaussian_kernel_size(image_size):
    """Odd kernel about 10% of the image side (23 at 224 px), as in BYOL / SimSiam
    implementations."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


# -------------------------------------------------------------------------------------------------
# reference pipeline: the write-up's per-sample PIL transforms

class RandomRotate90(torch.nn.Module):
    """Rotate by 0, 90, 180 or 270 degrees, each with probability 1/4: overhead imagery has no
    "up". Exact (a transpose of the pixel grid), for PIL images and tensors."""

    def forward(self, image):
        quarter_turns = int(torch.randint(4, (1,)))
        return TF.rotate(image, 90.0 * quarter_turns) if quarter_turns else image


def simsiam_transform_v1(image_size=224, crop_scale_min=0.2, jitter_strength=1.0, jitter_p=0.8,
                         gray_p=0.2, blur_p=0.5, vflip_p=0.0, rotate90=False):
    """View 1 as the write-up lists it; the keyword defaults are the write-up's (and the paper's)
    values. vflip_p and rotate90 add the free augmentations of overhead imagery (write-up: off)."""
    b, c, s, h = (jitter_strength * v for v in JITTER)
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=(crop_scale_min, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomVerticalFlip(p=vflip_p),
        *([RandomRotate90()] if rotate90 else []),
        T.RandomApply([T.ColorJitter(b, c, s, h)], p=jitter_p),
        T.RandomGrayscale(p=gray_p),
        T.RandomApply([T.GaussianBlur(gaussian_kernel_size(image_size), sigma=(0.1, 2.0))],
                      p=blur_p),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def simsiam_transform_v2(image_size=224, crop_scale_min=0.2, solarize=True, **strengths):
    """View 2: v1 plus solarisation (p=0.2) on the PIL image before ToTensor (as BYOL);
    solarize=False is the paper's symmetric recipe."""
    steps = simsiam_transform_v1(image_size, crop_scale_min, **strengths).transforms
    if solarize:
        steps.insert(len(steps) - 2, T.RandomSolarize(threshold=128, p=0.2))
    return T.Compose(steps)


def simsiam_transform_pair(image_size=224, solarize=True, **settings):
    """The two views of the reference pipeline, with the same arguments as batch_augment_pair."""
    return (simsiam_transform_v1(image_size, **settings),
            simsiam_transform_v2(image_size, solarize=solarize, **settings))


# The augmentation settings of train_simsiam.py and scripts/bench_pretrain.py (constants of the
# same names) at the write-up's values, which a pre-training config that predates one was run with.
WRITEUP_VIEWS = {"CROP_SCALE_MIN": 0.2, "SOLARIZE": True, "JITTER_STRENGTH": 1.0, "JITTER_P": 0.8,
                 "GRAY_P": 0.2, "BLUR_P": 0.5, "VFLIP_P": 0.0, "ROTATE90": False}


def augmentation_rules():
    """check_settings rules of the augmentation settings (both scripts)."""
    return {"CROP_SCALE_MIN": between(0.01, 1.0),
            "JITTER_STRENGTH": between(0.0, 2.5),  # above 2.5 brightness would go below 0
            "JITTER_P": between(0.0, 1.0), "GRAY_P": between(0.0, 1.0),
            "BLUR_P": between(0.0, 1.0), "VFLIP_P": between(0.0, 1.0)}


def augmentation_settings(config):
    """The keyword arguments of simsiam_transform_v2 / batch_augment_pair (the settings' names in
    lower case) from a pre-training config; WRITEUP_VIEWS for the settings it predates."""
    return {name.lower(): config.get(name, value) for name, value in WRITEUP_VIEWS.items()}


class PretrainImageDataset(torch.utils.data.Dataset):
    """Two augmented views of each image in a folder. An unreadable image yields None (see
    `collate_skipping`)."""

    def __init__(self, paths, transform1, transform2):
        self.paths, self.transform1, self.transform2 = list(paths), transform1, transform2

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        try:
            image = open_rgb(self.paths[index])
        except IMAGE_READ_ERRORS as error:
            return None, f"{self.paths[index]}: {type(error).__name__}: {error}"
        return (self.transform1(image), self.transform2(image)), None


def collate_skipping(items):
    """Batch the readable samples; pass the unreadable ones on by name so the training loop can
    count them."""
    good = [views for views, _ in items if views is not None]
    bad = [message for views, message in items if views is None]
    if len(good) < 2:  # BatchNorm cannot train on one sample: the step is skipped
        return None, None, bad
    return torch.stack([v[0] for v in good]), torch.stack([v[1] for v in good]), bad


# -------------------------------------------------------------------------------------------------
# decode once: a uint8 memory map of all images

def _cache_key(paths, size):
    digest = hashlib.sha1(str(size).encode())
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError as error:
            raise DataError(f"{path}: cannot read it ({error.strerror}); was it moved or "
                            "deleted while the run started? Fix the file or the list that "
                            "names it.") from None
        # fsencode: a name that is not UTF-8 is hashed as its bytes
        digest.update(os.fsencode(os.path.abspath(path))
                      + f"|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _common_size(paths):
    """The side of the cached images when none is asked for: the images' own when all share one
    square size (a sample of headers decides: EuroSAT 64 px, SSL4EO 264 px), otherwise 256 px."""
    sizes = set()
    for path in paths[:: max(1, len(paths) // 200)]:
        with (contextlib.suppress(*IMAGE_READ_ERRORS), open_regular(path) as f,
              Image.open(f) as image):
            sizes.add(image.size)
    only = sizes.pop() if len(sizes) == 1 else (256, 256)
    return only[0] if only[0] == only[1] else 256


def _decode_into(task):
    """Decode paths into rows start.. of the .npy at npy_path; returns [(row, message)] of
    unreadable ones. Runs in worker processes, each opening the shared file itself."""
    npy_path, start, paths, size = task
    array = np.load(npy_path, mmap_mode="r+")
    bad = []
    for row, path in enumerate(paths, start):
        try:
            image = open_rgb(path)
            if image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            array[row] = np.asarray(image)
        except IMAGE_READ_ERRORS as error:
            bad.append((row, f"{path}: {type(error).__name__}: {error}"))
    array.flush()
    return bad


def build_image_cache(paths, cache_dir, size=0, workers=0, desc=None, log=print):
    """Decode every image once into `cache_dir/images_<key>.npy` (N, H, W, 3) uint8; returns
    (array, kept, bad).

    size=0 keeps the native size when all images share one, else 256 px; size>0 resizes to
    size x size. Unreadable images are left out of `array` (a KeptRows view when there are any)
    and listed in `bad`. The key covers the file list,
    sizes, modification times and `size`, so changed data builds a new cache. workers=0 decodes
    with one process per core (in-process below PARALLEL_CACHE_MIN images). One process builds a
    given cache; any other (another rank under torchrun, another run) waits for it, then opens the
    result. The free disk space is checked first; a killed build leaves only a temporary file,
    which the next build removes.
    """
    paths = list(paths)
    if not paths:
        raise DataError("no images to cache")
    size = size or _common_size(paths)
    stem = os.path.join(cache_dir, f"images_{_cache_key(paths, size)}")
    try:
        os.makedirs(cache_dir, exist_ok=True)
        lock = open(os.path.join(cache_dir, f".{os.path.basename(stem)}.lock"), "a")
    except OSError as error:
        raise DataError(f"cannot write the image cache in CACHE_DIR {cache_dir!r} "
                        f"({error.strerror}): pass --cache_dir=FOLDER "
                        "on a writable disk.") from None
    with lock:
        import fcntl
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log(f"waiting for another process that is building {stem}.npy")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not (os.path.exists(stem + ".npy") and os.path.exists(stem + ".json")):
            _build(paths, stem, size, workers, desc, log)
    with open(stem + ".json") as f:
        index = json.load(f)
    array = np.load(stem + ".npy", mmap_mode="r")
    # caches written before bad_rows was recorded hold the readable rows alone
    if index.get("bad_rows"):
        array = KeptRows(array, index["bad_rows"])
    return array, index["kept"], index["bad"]


class KeptRows:
    """The readable rows of a cache that also holds unreadable ones (left as zeros), indexed like
    an array of those rows alone: `kept[rows]`, `len(kept)`, `kept.shape`. Compacting the file
    instead would need its size again in free disk, and a 51 GB cache may not have that."""

    def __init__(self, array, bad_rows):
        bad = set(bad_rows)
        self.array = array
        self.rows = np.array([row for row in range(len(array)) if row not in bad], dtype=np.int64)
        self.shape, self.dtype = (len(self.rows),) + array.shape[1:], array.dtype

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, rows):
        return self.array[self.rows[rows]]


def _build(paths, stem, size, workers, desc, log):
    cache_dir = os.path.dirname(stem)
    remove_stale_temp_files(cache_dir)
    need = len(paths) * size * size * 3
    free = shutil.disk_usage(cache_dir).free
    if free < need * 1.02:
        raise DataError(f"the decoded-once image cache needs {need / 2**30:.2f} GiB in CACHE_DIR "
                        f"{cache_dir!r} ({len(paths)} images x {size} x {size} x 3 bytes), but "
                        f"only {free / 2**30:.2f} GiB is free. Pass --cache_dir=FOLDER on a "
                        "bigger disk (or, for pre-training, --pipeline=reference, which needs "
                        "no cache).")
    if workers == 0:
        cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else (os.cpu_count() or 1))
        workers = cores if len(paths) >= PARALLEL_CACHE_MIN else 1
    log(f"decoding {len(paths)} images once into {stem}.npy ({size}x{size} px, "
        f"{need / 2**30:.2f} GiB, {workers} process(es))")
    tmp = temp_path_for(stem + ".npy")
    pool = None
    try:
        _reserve_cache(tmp, (len(paths), size, size, 3), stem + ".npy")
        chunk = 256
        tasks = [(tmp, start, paths[start:start + chunk], size)
                 for start in range(0, len(paths), chunk)]
        if workers > 1:
            # spawn, not fork: the caller may hold CUDA or OpenMP state that a forked child must
            # not inherit
            pool = mp.get_context("spawn").Pool(workers, initializer=die_with_parent)
            results = pool.imap(_decode_into, tasks)
        else:
            results = map(_decode_into, tasks)
        bad = []
        with tqdm(total=len(paths), desc=desc or "decoding images once",
                  disable=desc is False) as bar:
            for task, chunk_bad in zip(tasks, results):
                bad += chunk_bad
                bar.update(len(task[2]))
        bad_rows = sorted(row for row, _ in bad)
        unreadable = set(bad_rows)
        kept = [path for row, path in enumerate(paths) if row not in unreadable]
        os.replace(tmp, stem + ".npy")
    finally:
        if pool is not None:
            pool.terminate()
        with contextlib.suppress(OSError):
            os.remove(tmp)
    # the .json is written last: its presence says the .npy beside it is complete. The unreadable
    # rows stay in the .npy (see KeptRows)
    with atomic_write(stem + ".json", "w") as f:
        json.dump({"kept": kept, "bad": [message for _, message in sorted(bad)],
                   "bad_rows": bad_rows, "size": size}, f)


def _reserve_cache(tmp, shape, path):
    """Create the cache's .npy at `tmp` with all of its disk blocks: the workers write into a memory
    map of it, where a full disk would be a crash (SIGBUS), not an error. A full disk or a
    file-size limit met here is a WriteError that names `path`."""
    try:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).flush()
        if hasattr(os, "posix_fallocate"):  # not on macOS
            with open(tmp, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    except OSError as error:
        if error.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve
            return
        raise write_error(path, error) from None


def batch_rows(order, batch_size, drop_last=True):
    """The rows of each batch of `order`, sorted within a batch (a memory map reads sorted rows
    faster): the one definition of the batches, for iterate_batches and for whatever walks them
    over another array."""
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    return [np.sort(np.asarray(order[start:start + batch_size]))
            for start in range(0, stop, batch_size)]


def iterate_batches(array, order, batch_size, device, drop_last=True, prefetch=2,
                    rows_on_device=False):
    """Yield (rows, batch) for each batch of `order` (see batch_rows): the array rows and those
    images as a uint8 NHWC tensor on `device`. Labels of the batch are labels[rows].

    A background thread reads ahead (into pinned memory on CUDA), so both copies to the GPU are
    asynchronous. With rows_on_device the rows come as an int64 tensor on `device` too: a step
    that indexes labels on the GPU with them then never waits for a copy from pageable memory
    (which waits for the GPU's queued work). An error in the thread is raised here, in the loop
    that consumes the batches, instead of leaving it waiting forever.
    """
    pin = device.type == "cuda"
    ready = queue.Queue(maxsize=prefetch)
    done = threading.Event()  # set when the consumer stops early: the reader then ends too

    def hand_over(item):
        while not done.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read_ahead():
        try:
            for rows in batch_rows(order, batch_size, drop_last):
                index = torch.from_numpy(rows)
                batch = torch.from_numpy(np.ascontiguousarray(array[rows]))
                if pin:
                    index, batch = index.pin_memory(), batch.pin_memory()
                if not hand_over((rows, index, batch)):
                    return
            hand_over(None)
        except BaseException as error:  # noqa: B036 - handed to the consumer, which raises it
            hand_over(error)

    threading.Thread(target=read_ahead, daemon=True).start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                if isinstance(item, OSError):
                    raise DataError("reading a batch of cached images failed "
                                    f"({type(item).__name__}: {item}). If CACHE_DIR is damaged, "
                                    "delete it; it is rebuilt on the next run.") from item
                raise item
            rows, index, batch = item
            yield (index.to(device, non_blocking=True) if rows_on_device else rows,
                   batch.to(device, non_blocking=True))
    finally:
        done.set()


def augmented_pairs(array, order, batch_size, device, augment_pair, generator, side_stream=True):
    """(x1, x2) for each batch of `order`: the rows read from the cache and copied to `device`
    (iterate_batches), then both views made by `augment_pair` with `generator`.

    On CUDA with side_stream, this data work for batch n + 1 runs on a second stream while the
    caller's step n runs on the current one, instead of adding to every step; the views, and the
    random numbers they draw, are the same either way. Elsewhere each batch is made in turn.
    """
    augment1, augment2 = augment_pair
    batches = iterate_batches(array, order, batch_size, device)

    def views(batch):
        return augment1(batch, generator), augment2(batch, generator)
    if device.type != "cuda" or not side_stream:
        return (views(batch) for _, batch in batches)
    return _one_ahead_on_side_stream(batches, views, device)


def _one_ahead_on_side_stream(batches, views, device):
    """Make each batch's views on a side stream, one batch ahead of the caller, who gets them on
    the current stream: that stream waits (on the GPU, the host does not) for that batch's work
    alone, and the allocator keeps the views' memory until the current stream is done with it."""
    side, current = torch.cuda.Stream(device), torch.cuda.current_stream(device)
    ahead = None
    while True:
        with torch.cuda.stream(side):  # the batch's copy to the GPU is queued here too
            item = next(batches, None)
            made = None if item is None else (views(item[1]), side.record_event())
        if ahead is not None:
            pair, ready = ahead
            current.wait_event(ready)
            for x in pair:
                x.record_stream(current)
            yield pair
        if made is None:
            return
        ahead = made


# -------------------------------------------------------------------------------------------------
# fast pipeline: the same augmentations on whole batches, per-sample random parameters

def _to_gray(x):
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x, other, factor):
    return (factor.view(-1, 1, 1, 1) * x + (1 - factor.view(-1, 1, 1, 1)) * other).clamp(0, 1)


def _rgb_to_hsv(x):
    r, g, b = x.unbind(1)
    maxc, minc = x.max(1).values, x.min(1).values
    delta = maxc - minc
    flat = delta == 0
    saturation = delta / torch.where(flat, torch.ones_like(maxc), maxc)
    safe = torch.where(flat, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(flat, torch.zeros_like(hue), hue)
    return torch.fmod(hue / 6.0 + 1.0, 1.0), saturation, maxc


def _hsv_to_rgb(hue, saturation, value):
    sector = torch.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    sector = sector.long() % 6
    p = (value * (1 - saturation)).clamp(0, 1)
    q = (value * (1 - saturation * fraction)).clamp(0, 1)
    t = (value * (1 - saturation * (1 - fraction))).clamp(0, 1)
    # channel values for sectors 0..5 of the hue circle
    table = {0: (value, t, p), 1: (q, value, p), 2: (p, value, t), 3: (p, q, value),
             4: (t, p, value), 5: (value, p, q)}
    out = torch.zeros(hue.shape[0], 3, *hue.shape[1:], device=hue.device, dtype=hue.dtype)
    for s, channels in table.items():
        mask = (sector == s).unsqueeze(1)
        out = torch.where(mask, torch.stack(channels, 1), out)
    return out


def _adjust(x, op, factor):
    if op == 0:  # brightness
        return _blend(x, torch.zeros_like(x), factor)
    if op == 1:  # contrast: blend with the mean grey level of each image
        return _blend(x, _to_gray(x).mean(dim=(1, 2, 3), keepdim=True), factor)
    if op == 2:  # saturation
        return _blend(x, _to_gray(x), factor)
    hue, saturation, value = _rgb_to_hsv(x)
    hue = torch.remainder(hue + factor.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(hue, saturation, value)


def sample_crop_boxes(n, height, width, scale, ratio, generator):
    """torchvision's RandomResizedCrop.get_params for n samples at once:
    (n, 4) boxes x0, y0, x1, y1."""
    tries = 10
    area = height * width
    target = area * torch.empty(n, tries).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                               generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = ok.float().argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    # fallback when no try fits: the central crop at the closest allowed aspect ratio, as
    # torchvision does
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fallback_w, fallback_h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fallback_w, fallback_h = round(height * ratio[1]), height
    else:
        fallback_w, fallback_h = width, height
    fitted = ok.any(dim=1)
    w = torch.where(fitted, w, torch.full_like(w, fallback_w))
    h = torch.where(fitted, h, torch.full_like(h, fallback_h))
    u = torch.rand(n, 2, generator=generator)
    top = torch.where(fitted, torch.floor(u[:, 0] * (height - h + 1)),
                      torch.floor((height - h) / 2))
    left = torch.where(fitted, torch.floor(u[:, 1] * (width - w + 1)),
                       torch.floor((width - w) / 2))
    return torch.stack([left, top, left + w, top + h], dim=1)


def _resize_weights(start, stop, length, size):
    """(n, size, length): the weight of each input pixel of one axis in each output pixel, for
    crops [start, stop) of n images resized to `size` px. PIL's antialiased bilinear filter, as
    torchvision's resized_crop(antialias=True) applies it: a triangle around each output pixel's
    centre, widened by the shrink factor so that every input pixel counts, over the crop alone."""
    scale = ((stop - start) / size).view(-1, 1, 1)
    steps = torch.arange(size, device=start.device, dtype=start.dtype).view(1, -1, 1)
    centers = start.view(-1, 1, 1) + (steps + 0.5) * scale
    pixels = torch.arange(length, device=start.device, dtype=start.dtype).view(1, 1, -1) + 0.5
    weights = (1 - (pixels - centers).abs() / scale.clamp(min=1)).clamp(min=0)
    inside = (pixels > start.view(-1, 1, 1)) & (pixels < stop.view(-1, 1, 1))
    weights = torch.where(inside, weights, 0.0)
    return weights / weights.sum(2, keepdim=True)


def resized_crops(x, boxes, size):
    """Crop each NCHW image to its box (x0, y0, x1, y1 on pixel borders) and resize it to
    size x size, antialiased like PIL at any shrink factor: one matrix product per axis."""
    _, _, height, width = x.shape
    rows = _resize_weights(boxes[:, 1], boxes[:, 3], height, size)
    columns = _resize_weights(boxes[:, 0], boxes[:, 2], width, size)
    return torch.matmul(torch.matmul(rows.unsqueeze(1), x), columns.transpose(1, 2).unsqueeze(1))


def batch_augment_pair(image_size, crop_scale_min=0.2, solarize=True, jitter_strength=1.0,
                       jitter_p=0.8, gray_p=0.2, blur_p=0.5, vflip_p=0.0, rotate90=False):
    """The two views of pre-training as BatchAugments, with the same arguments as
    simsiam_transform_v1/v2."""
    common = dict(crop_scale=(crop_scale_min, 1.0), vflip_p=vflip_p, rotate90=rotate90,
                  jitter_p=jitter_p, jitter=tuple(jitter_strength * v for v in JITTER),
                  gray_p=gray_p, blur_p=blur_p)
    return (BatchAugment(image_size, **common),
            BatchAugment(image_size, solarize_p=0.2 if solarize else 0.0, **common))


class BatchAugment:
    """SimSiam augmentations for a uint8 NHWC batch on any device, each sample with its own random
    parameters.

    Same distribution as `simsiam_transform_v1/v2`: random resized crop (bilinear, antialiased
    as PIL's), horizontal flip, colour jitter in a random order per sample, grayscale,
    Gaussian blur, optional solarisation, normalisation. Random numbers come from a CPU generator,
    so results do not depend on the device; they reach the device in one non-blocking copy, and
    every per-sample choice is a mask, so a training step on CUDA never waits for the GPU here.
    Autocast is off inside: the same fp32 result whatever context calls it.
    Set jitter_p = gray_p = blur_p = 0 for the light augmentation of fine-tuning.
    """

    # columns of the packed parameter tensor that travels to the device
    COLUMNS = ("x0", "y0", "x1", "y1", "flip", "vflip", "jitter",
               "brightness", "contrast", "saturation", "hue",
               "order0", "order1", "order2", "order3", "gray", "blur", "sigma", "solarize",
               "turns")

    def __init__(self, image_size, crop_scale=(0.2, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_p=0.5,
                 vflip_p=0.0, jitter_p=0.8, jitter=JITTER, gray_p=0.2, blur_p=0.5,
                 blur_sigma=(0.1, 2.0), solarize_p=0.0, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 rotate90=False):
        self.image_size, self.crop_scale, self.crop_ratio = image_size, crop_scale, crop_ratio
        self.rotate90 = rotate90
        self.flip_p, self.vflip_p, self.jitter_p, self.jitter = flip_p, vflip_p, jitter_p, jitter
        self.gray_p, self.blur_p, self.blur_sigma, self.solarize_p = (
            gray_p, blur_p, blur_sigma, solarize_p)
        self.kernel_size = gaussian_kernel_size(image_size)
        self.mean, self.std = tuple(mean), tuple(std)

    def sample_params(self, n, height, width, generator):
        b, c, s, h = self.jitter
        u = lambda low, high: torch.empty(n).uniform_(low, high, generator=generator)  # noqa: E731
        coin = lambda p: torch.rand(n, generator=generator) < p  # noqa: E731
        params = {"boxes": sample_crop_boxes(n, height, width, self.crop_scale, self.crop_ratio,
                                             generator),
                  "flip": coin(self.flip_p), "vflip": coin(self.vflip_p),
                  "jitter": coin(self.jitter_p),
                  "factors": torch.stack([u(1 - b, 1 + b), u(1 - c, 1 + c), u(1 - s, 1 + s),
                                          u(-h, h)], 1),
                  "order": torch.argsort(torch.rand(n, 4, generator=generator), dim=1),
                  "gray": coin(self.gray_p), "blur": coin(self.blur_p),
                  "sigma": u(*self.blur_sigma), "solarize": coin(self.solarize_p)}
        # drawn last, and only when used: the other draws stay those of the write-up's recipe
        params["turns"] = (torch.randint(4, (n,), generator=generator) if self.rotate90
                           else torch.zeros(n, dtype=torch.long))
        return params

    def __call__(self, images, generator=None, return_params=False):
        n, height, width, _ = images.shape
        params = self.sample_params(n, height, width, generator)
        packed = self.pack(params)
        if images.device.type == "cuda":
            # from pinned memory a copy is asynchronous: no stream synchronisation
            packed = packed.pin_memory()
        x = self.apply(images, packed.to(images.device, non_blocking=True))
        return (x, params) if return_params else x

    @staticmethod
    def pack(params):
        """The sampled parameters as one float tensor, a row per sample, in COLUMNS order."""
        return torch.cat([params["boxes"],
                          torch.stack([params[k].float() for k in ("flip", "vflip", "jitter")], 1),
                          params["factors"], params["order"].float(),
                          torch.stack([params[k].float()
                                       for k in ("gray", "blur", "sigma", "solarize", "turns")],
                                      1)], 1)

    def apply(self, images, packed):
        """The augmentation itself, on the device, given the packed parameters (one row per sample,
        COLUMNS)."""
        p = dict(zip(self.COLUMNS, packed.unbind(1)))
        guard = (torch.autocast(images.device.type, enabled=False)
                 if images.device.type in ("cuda", "cpu") else contextlib.nullcontext())
        with guard:
            x = images.permute(0, 3, 1, 2).float().div_(255)
            x = resized_crops(x, packed[:, 0:4], self.image_size)
            x = torch.where(_per_sample(p["flip"]), x.flip(3), x)
            x = torch.where(_per_sample(p["vflip"]), x.flip(2), x)
            if self.rotate90:  # counter-clockwise quarter turns, as TF.rotate; views are square
                for turns in (1, 2, 3):
                    x = torch.where(_per_sample(p["turns"] == turns), x.rot90(turns, (2, 3)), x)
            if self.jitter_p > 0:
                x = _color_jitter(x, p["jitter"] > 0, packed[:, 7:11], packed[:, 11:15].long())
            if self.gray_p > 0:
                x = torch.where(_per_sample(p["gray"]), _to_gray(x).expand_as(x), x)
            if self.blur_p > 0:
                x = torch.where(_per_sample(p["blur"]), self._blur(x, p["sigma"]), x)
            if self.solarize_p > 0:
                # PIL solarize inverts pixels >= 128 of 255
                x = torch.where(_per_sample(p["solarize"]) & (x >= 128 / 255), 1.0 - x, x)
            mean, std = _normalization(x.device, self.mean, self.std)
            return (x - mean) / std

    def _blur(self, x, sigma):
        """Separable Gaussian blur with one sigma per image (grouped convolution), reflect
        padding."""
        n, c, h, w = x.shape
        k = self.kernel_size
        offsets = torch.arange(k, device=x.device, dtype=x.dtype) - (k - 1) / 2
        kernel = torch.exp(-0.5 * (offsets.view(1, -1) / sigma.view(-1, 1)) ** 2)
        kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*c, k)
        flat = x.reshape(1, n * c, h, w)
        flat = F.pad(flat, (k // 2, k // 2, k // 2, k // 2), mode="reflect")
        flat = F.conv2d(flat, kernel.view(n * c, 1, k, 1), groups=n * c)
        flat = F.conv2d(flat, kernel.view(n * c, 1, 1, k), groups=n * c)
        return flat.view(n, c, h, w)


def _per_sample(flag):
    """A per-sample 0/1 column as a boolean mask that broadcasts over NCHW images."""
    return (flag > 0).view(-1, 1, 1, 1)


def _color_jitter(x, jitter, factors, order):
    """ColorJitter with a random order of its four operations per sample, by masks alone.

    Brightness, contrast and saturation are each a blend with something (black, the mean grey, the
    grey image), so the three of one position are one masked blend, and a blend with factor 1 is
    exactly the identity. Hue, the costly one, is applied once to the whole batch; each sample gets
    the blends ordered before its hue, then hue, then the blends after: the same sequence, per
    sample, as torchvision's ColorJitter.
    """
    hue_position = (order == 3).int().argmax(1)
    for before_hue in (True, False):
        for position in range(4):
            op = order[:, position]
            in_turn = position < hue_position if before_hue else position > hue_position
            active = jitter & (op != 3) & in_turn
            factor = torch.where(active, factors.gather(1, op.clamp(max=2).view(-1, 1)).squeeze(1),
                                 1.0)
            gray = _to_gray(x)
            other = torch.where(_per_sample(op == 0), 0.0,
                                torch.where(_per_sample(op == 1),
                                            gray.mean(dim=(1, 2, 3), keepdim=True), gray))
            x = _blend(x, other, factor)
        if before_hue:
            hue, saturation, value = _rgb_to_hsv(x)
            shifted = _hsv_to_rgb(torch.remainder(hue + factors[:, 3].view(-1, 1, 1), 1.0),
                                  saturation, value)
            x = torch.where(_per_sample(jitter), shifted, x)
    return x


@functools.lru_cache(maxsize=16)
def _normalization(device, mean, std):
    """Mean and std as (1, 3, 1, 1) tensors on `device`, made once: a new copy at every batch would
    wait for the GPU each time."""
    return (torch.tensor(mean, device=device).view(1, 3, 1, 1),
            torch.tensor(std, device=device).view(1, 3, 1, 1))


def eval_batch(images, image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The evaluation transform on a uint8 NHWC batch: resize to image_size (antialiased bilinear),
    normalise."""
    x = images.permute(0, 3, 1, 2).float().div_(255)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True,
                          align_corners=False)
    mean, std = _normalization(x.device, tuple(mean), tuple(std))
    return (x - mean) / std


def eval_transform(image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The same evaluation transform for PIL images (classify_image.py, on-the-fly evaluation)."""
    return T.Compose([T.Resize((image_size, image_size)), T.ToTensor(), T.Normalize(mean, std)])


def image_statistics(images, chunk=2048):
    """The floor of every results table: for each image of a uint8 NHWC array, at its stored
    size, the mean, std (population), min and max of each RGB channel on the 0-255 scale, as
    (N, 12) float32 in that order (means R G B, stds R G B, mins R G B, maxs R G B). Colour alone
    separates most EuroSAT classes; a learned representation has to beat these 12 numbers."""
    rows = []
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(np.array(images[start:start + chunk])).float()
        x = x.flatten(1, 2)  # (n, pixels, 3)
        rows.append(torch.cat([x.mean(1), x.std(1, unbiased=False), x.amin(1), x.amax(1)], 1))
    return torch.cat(rows) if rows else torch.zeros(0, 12)


def standardization(reference):
    """(mean, std) per dimension of `reference` (the train split's features), for
    (features - mean) / std: one scale for every dimension. The std is floored at a thousandth of
    the typical (median) std, so a dimension that hardly varies is not blown up to unit
    variance."""
    mean, std = reference.mean(dim=0), reference.std(dim=0)
    return mean, std.clamp_min(max(1e-3 * std.median().item(), 1e-12))


# -------------------------------------------------------------------------------------------------
# EuroSAT splits

class SplitFiles(NamedTuple):
    """One EuroSAT split as its CSV lists it."""
    paths: list  # absolute image paths
    labels: list  # integer labels, label_map.json's numbering
    class_names: list  # class names in label order


class EuroSATSplit(NamedTuple):
    """One EuroSAT split, decoded once."""
    images: np.ndarray  # (N, H, W, 3) uint8 memory map, rows in CSV order
    labels: list
    paths: list
    class_names: list


def read_label_map(label_map_path):
    try:
        with open_regular(label_map_path, "r") as f:
            label_map = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{label_map_path}: missing. Run "
                        "`python make_dataset.py --mode=eurosat_splits` to write the EuroSAT "
                        "split files.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{label_map_path}: not valid JSON ({error}).") from None
    except OSError as error:
        raise DataError(f"{label_map_path}: cannot read it ({error.strerror}).") from None
    if (not isinstance(label_map, dict) or not label_map
            or not all(isinstance(v, int) and not isinstance(v, bool)
                       for v in label_map.values())):
        raise DataError(f"{label_map_path}: must be a JSON mapping of class name to integer "
                        'label, e.g. {"AnnualCrop": 0, "Forest": 1}.')
    if sorted(label_map.values()) != list(range(len(label_map))):
        raise DataError(f"{label_map_path}: labels must be 0..{len(label_map) - 1}, each once; "
                        f"found {sorted(label_map.values())}.")
    return label_map


def read_eurosat_split(root, csv_path, label_map_path, require_files=True):
    """A split CSV as SplitFiles (absolute image paths, integer labels, class names in label
    order).

    Uses the `Filename` and `ClassName` columns (a leading unnamed index column is fine). Every
    problem, including an image that does not exist (unless require_files=False), is a DataError
    naming the file, the line and the fix.
    """
    label_map = read_label_map(label_map_path)
    class_names = [name for name, _ in sorted(label_map.items(), key=lambda item: item[1])]
    try:
        # as text: a numeric file name must not turn into a number
        with open_regular(csv_path) as f:
            table = pd.read_csv(f, dtype={"Filename": str, "ClassName": str})
    except NotRegularFile:
        raise
    except FileNotFoundError:
        raise DataError(f"{csv_path}: missing. Run "
                        "`python make_dataset.py --mode=eurosat_splits` to write the EuroSAT "
                        "split files.") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
            ValueError) as error:
        raise DataError(f"{csv_path}: not a readable CSV ({error}).") from None
    except OSError as error:
        raise DataError(f"{csv_path}: cannot read it ({error.strerror}).") from None
    missing = [c for c in ("Filename", "ClassName") if c not in table.columns]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {missing}; found {list(table.columns)}. "
                        "Expected the header ,Filename,Label,ClassName.")
    if table.empty:
        raise DataError(f"{csv_path}: has a header but no rows.")
    # abspath, not realpath: symlinked class folders are fine, ".." is not
    root_abs = os.path.abspath(root)
    paths, labels, first_line = [], [], {}
    for row, (filename, class_name) in enumerate(zip(table["Filename"], table["ClassName"])):
        line = row + 2  # 1-based, after the header
        if not isinstance(filename, str) or not filename.strip():
            raise DataError(f"{csv_path}: line {line} has an empty Filename.")
        path = os.path.normpath(os.path.join(root_abs, filename))
        if os.path.isabs(filename) or not path.startswith(root_abs + os.sep):
            raise DataError(f"{csv_path}: line {line}: Filename {filename!r} points outside the "
                            f"data folder {root}. Filenames must be relative paths inside it.")
        if path in first_line:  # also under another spelling: ./Forest/x.jpg is Forest/x.jpg
            raise DataError(f"{csv_path}: line {line} repeats {filename!r}, the image of line "
                            f"{first_line[path]}; each image may appear once. Remove the "
                            "duplicate rows.")
        first_line[path] = line
        if class_name not in label_map:
            raise DataError(f"{csv_path}: line {line}: class {class_name!r} is not in "
                            f"{label_map_path} (known: {', '.join(class_names)}).")
        if "Label" in table.columns and table["Label"][row] != label_map[class_name]:
            raise DataError(f"{csv_path}: line {line}: Label {table['Label'][row]} disagrees with "
                            f"{label_map_path}, which maps {class_name!r} to "
                            f"{label_map[class_name]}.")
        if require_files and not os.path.isfile(path):
            raise DataError(f"{csv_path}: line {line}: image {filename!r} does not exist in "
                            f"{root}. Restore it, or remove the line (make_dataset.py "
                            "--mode=eurosat_splits writes the split files afresh when all three "
                            "are deleted).")
        paths.append(path)
        labels.append(label_map[class_name])
    return SplitFiles(paths, labels, class_names)


def read_eurosat_splits(eurosat_dir, splits=SPLITS):
    """{split: SplitFiles} of the split CSVs in eurosat_dir, each checked by read_eurosat_split,
    and no image in two of them (also under another spelling): a test image seen in training, or a
    validation image scored again as a test image, would raise the accuracy silently."""
    if not os.path.isdir(eurosat_dir):
        raise DataError(f"EuroSAT folder {eurosat_dir!r} does not exist. Download it with "
                        "`bash scripts/data.sh`, write the split files with "
                        "`python make_dataset.py --mode=eurosat_splits`, or pass "
                        "--eurosat_dir=FOLDER.")
    files = {split: read_eurosat_split(eurosat_dir, os.path.join(eurosat_dir, f"{split}.csv"),
                                       os.path.join(eurosat_dir, "label_map.json"))
             for split in splits}
    seen = {}
    for split, found in files.items():
        for row, path in enumerate(found.paths):
            if path in seen:
                other, other_row = seen[path]
                raise DataError(
                    f"image {os.path.relpath(path, eurosat_dir)} is in both {other}.csv (line "
                    f"{other_row + 2}) and {split}.csv (line {row + 2}) of {eurosat_dir}: the "
                    "splits must not share images. Remove it from one of them, or delete the "
                    "three CSVs to have `python make_dataset.py --mode=eurosat_splits` write "
                    "fresh ones.")
            seen[path] = (split, row)
    return files


def check_classes(labels_by_split, class_names, source, log=print):
    """Stop when a class has images in an evaluated split but none among the training labels: a
    classifier trained on them can never predict it, and the evaluation would score all of its
    images wrong without a word (SeaLake left out of train.csv: test accuracy capped at 90 %).
    Warn, naming it, when a class of the training labels has no image in an evaluated split.

    labels_by_split: {split: integer labels}, the training labels under "train" (all of
    train.csv, or the labelled subset of a label fraction), every other split one that is scored
    (the message names it as <split>.csv); class_names: the names of the labels, in label order;
    source: where the training labels come from, as a message names them (e.g. the path of
    train.csv)."""
    counts = {split: np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
              for split, labels in labels_by_split.items()}
    trained = counts["train"] > 0
    scored = {split: count for split, count in counts.items() if split != "train"}
    unseen = [k for k in range(len(class_names)) if not trained[k]
              and any(count[k] for count in scored.values())]
    if unseen:
        it, its = ("it", "its") if len(unseen) == 1 else ("them", "their")
        where = "; ".join(f"{class_names[k]!r} (" + ", ".join(
            f"{split}.csv {count[k]}" for split, count in scored.items() if count[k]) + ")"
            for k in unseen)
        files = " and ".join(f"{split}.csv" for split, count in scored.items()
                             if any(count[k] for k in unseen))
        raise DataError(
            f"{'class' if it == 'it' else 'classes'} {where} {'has' if it == 'it' else 'have'} "
            f"images to score but none among the training labels ({source}): a classifier "
            f"trained on these can never predict {it}, so each of {its} images would be scored "
            f"wrong. Give the training labels images of {it}, or take {its} rows out of {files} "
            "(`python make_dataset.py --mode=eurosat_splits` writes all three split files "
            "afresh, stratified per class, when they are deleted).")
    for split, count in scored.items():
        missing = [class_names[k] for k in range(len(class_names)) if trained[k] and not count[k]]
        if missing:
            log(f"warning: {split}.csv has no image of {', '.join(missing)}: the {split} accuracy "
                f"says nothing about {'that class' if len(missing) == 1 else 'those classes'}.")


def load_eurosat_splits(eurosat_dir, cache_dir, device, splits=SPLITS, label_fraction=1.0):
    """({split: EuroSATSplit}, {split: labels as a tensor on device}) of the three splits, checked
    by read_eurosat_splits and check_classes before any image is decoded. With label_fraction < 1
    the train split is its labelled subset (label_subset); validation and test stay whole."""
    files = read_eurosat_splits(eurosat_dir, splits)
    if "train" in files:
        check_classes({split: found.labels for split, found in files.items()},
                      files["train"].class_names, os.path.join(eurosat_dir, "train.csv"))
    loaded = {split: _decoded(files[split], split, cache_dir) for split in splits}
    if label_fraction < 1:
        train = loaded["train"]
        rows = label_subset(train.labels, label_fraction)
        loaded["train"] = EuroSATSplit(np.asarray(train.images[rows]),
                                       [train.labels[r] for r in rows],
                                       [train.paths[r] for r in rows], train.class_names)
        # (label_subset keeps at least one image of every class: check_classes still holds)
    return loaded, {split: torch.tensor(loaded[split].labels, device=device) for split in splits}


def names_digest(names):
    """sha1 (hex) of a list of image names, in order: whether two runs saw the same images (a
    resumed pre-training, the ranks of one, the evaluations of one label fraction)."""
    return hashlib.sha1("\n".join(names).encode()).hexdigest()


def label_subset(labels, fraction, seed=LABEL_SUBSET_SEED):
    """The sorted rows of a stratified `fraction` of a split: round(fraction x class size) images
    of each class, at least one, drawn with a fixed seed, so that every initialisation is scored on
    the same labelled images. Each class's draw is one permutation whatever the fraction, so a
    smaller fraction's images are among a larger one's (1 % within 10 %)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    rows = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        rows.append(members[:max(1, round(fraction * len(members)))])
    return np.sort(np.concatenate(rows))


def subset_passes(label_fraction):
    """How many times an epoch walks the labelled subset of a label fraction (epoch_order)."""
    return max(1, round(1 / label_fraction))


def describe_splits(splits, label_fraction):
    """The evaluations' line about their images, e.g. "images: train 189, validation 2700, ..."."""
    return ("images: " + ", ".join(f"{s} {len(split.labels)}" for s, split in splits.items())
            + f"; {len(splits['train'].class_names)} classes"
            + (f"; {label_fraction:g} of train.csv's labels, each epoch walks them "
               f"{subset_passes(label_fraction)} times" if label_fraction < 1 else ""))


def epoch_order(num_rows, passes, generator):
    """The rows of one training epoch: `passes` shuffles of range(num_rows), one after another. A
    labelled subset of a fraction f is walked round(1 / f) times, so that an epoch takes the steps
    of one pass over the whole split: the schedule and the validation points are those of 100 %
    of the labels, only the labels differ. One pass is torch.randperm itself."""
    return torch.cat([torch.randperm(num_rows, generator=generator)
                      for _ in range(passes)]).numpy()


def load_eurosat_cached(eurosat_dir, split, cache_dir):
    """One split as a EuroSATSplit, decoded once into cache_dir."""
    return _decoded(read_eurosat_splits(eurosat_dir, (split,))[split], split, cache_dir)


def _decoded(files, split, cache_dir):
    """A split's SplitFiles decoded once. Raises DataError naming the problem and the fix; an
    unreadable image is an error here, since an evaluation set with holes would give a silently
    different accuracy."""
    images, _, bad = build_image_cache(files.paths, cache_dir, desc=f"decoding {split}")
    if bad:
        raise DataError(f"{len(bad)} unreadable image(s) in {split}.csv, first: {bad[0]}. "
                        "Evaluation sets must be complete: "
                        "re-download EuroSAT or remove the rows.")
    return EuroSATSplit(images, files.labels, files.paths, files.class_names)
