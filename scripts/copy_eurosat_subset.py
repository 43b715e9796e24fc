"""Copy EuroSAT, or a fixed subset of it, to another folder: all of validation.csv and test.csv,
and TRAIN_IMAGES rows of train.csv (0: all; N: those `bench_quality.py --pretrain_images=N` picks,
seed 0), with their images and label_map.json. For machines that can only receive a small working
tree (the lent GPU machine takes 64 MiB in all): copy, carry the folder, point --eurosat_dir at it.

    python scripts/copy_eurosat_subset.py --source_dir=../EuroSAT --target_dir=datae/EuroSAT \\
        --train_images=0 --jpeg_quality=95      # every image, re-encoded to fit

JPEG_QUALITY = 0 copies each file's bytes as they are; 1-100 re-encodes every JPEG at that quality
with its own chroma subsampling (EuroSAT's JPEGs are stored at quality 100, every quantisation step
1, which is most of their size). Prints the counts, the folder's size and the largest per-pixel
difference of a re-encoded image from its original, and records them in the copy's
eurosat_copy.json (scripts/plan_quality.py reports which quality travelled). The copied train.csv
lists only the copied rows, so pre-training and the linear probe see only those; validation and
test are complete. Every CSV is checked as the evaluations check it. The copy is made in
TARGET_DIR.partial and renamed to TARGET_DIR when whole: a copy that is stopped leaves no half
folder under TARGET_DIR, and its rerun starts the .partial folder afresh.
"""
import json
import os
import shutil
import sys

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import simsiam_data as data  # noqa: E402
from bench_quality import write_subset  # noqa: E402
from runtime import (at_least, atomic_write, between, check_settings, configure,  # noqa: E402
                     fail, run, write_error)

# -------------------------------------------------------------------------------------------------
SOURCE_DIR = "datae/EuroSAT"  # EuroSAT RGB with train/validation/test CSVs and label_map.json
TARGET_DIR = ""  # where the copy goes (must not exist yet, or be empty)
TRAIN_IMAGES = 10000  # rows of train.csv to copy; 0 = all
JPEG_QUALITY = 0  # 0 = the files' bytes as they are; 1-100 = JPEGs re-encoded at this quality
# -------------------------------------------------------------------------------------------------

COPY_INFO = "eurosat_copy.json"  # what was copied, and how, inside the copy


def copy_image(source, target):
    """Copy one image, re-encoded at JPEG_QUALITY when it is a JPEG and that is set; returns the
    absolute differences of what was written from the original, per pixel and channel (None for
    a plain copy)."""
    if JPEG_QUALITY:
        with Image.open(source) as image:
            if image.format == "JPEG":
                original = np.asarray(image.convert("RGB"), dtype=np.int16)
                # "keep": the original's chroma subsampling, so only the quantisation changes
                image.save(target, format="JPEG", quality=JPEG_QUALITY, subsampling="keep")
                with Image.open(target) as written:
                    copy = np.asarray(written.convert("RGB"), dtype=np.int16)
                return np.abs(copy - original)
    shutil.copy2(source, target)
    return None


def folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(folder) for name in names)


def main():
    config, _ = configure(globals())
    check_settings(config, {"TRAIN_IMAGES": at_least(0), "JPEG_QUALITY": between(0, 100)})
    source, target = os.path.abspath(SOURCE_DIR), os.path.abspath(TARGET_DIR)
    if not TARGET_DIR:
        fail("set --target_dir (where the copy goes)", code=2)
    if os.path.realpath(source) == os.path.realpath(target):
        fail("--target_dir must differ from --source_dir", code=2)
    if os.path.exists(target) and os.listdir(target):
        fail(f"{target} is not empty: remove it or choose another --target_dir", code=2)
    label_map = os.path.join(source, "label_map.json")
    # every split checked as the evaluations check it, before anything is copied
    splits = data.read_eurosat_splits(source)
    if TRAIN_IMAGES > len(splits["train"].paths):
        fail(f"TRAIN_IMAGES must be at most {len(splits['train'].paths)} (the rows of "
             f"{source}/train.csv), got {TRAIN_IMAGES}", code=2)
    partial = target + ".partial"  # renamed to target when the copy is whole
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        shutil.copy2(label_map, partial)
        for split in ("validation", "test"):
            shutil.copy2(os.path.join(source, f"{split}.csv"), partial)
    except OSError as error:
        raise write_error(partial, error) from None
    if TRAIN_IMAGES:
        write_subset(os.path.join(source, "train.csv"), TRAIN_IMAGES,
                     os.path.join(partial, "train.csv"), setting="TRAIN_IMAGES")
        splits["train"] = data.read_eurosat_split(source, os.path.join(partial, "train.csv"),
                                                  label_map)
    else:
        shutil.copy2(os.path.join(source, "train.csv"), partial)
    largest, total, values = 0, 0, 0  # of the re-encoded images' differences
    for path in tqdm([p for files in splits.values() for p in files.paths], desc="copying"):
        copy = os.path.join(partial, os.path.relpath(path, source))
        try:
            os.makedirs(os.path.dirname(copy), exist_ok=True)
            difference = copy_image(path, copy)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            if getattr(error, "errno", None):  # the system's: disk full, not writable, ...
                raise write_error(copy, error) from None
            fail(f"{path}: cannot be read as an image ({error}); replace it from the original "
                 "download (bash scripts/data.sh) and copy again")
        if difference is not None:
            largest = max(largest, int(difference.max()))
            total, values = total + int(difference.sum()), values + difference.size
    counts = {split: len(files.paths) for split, files in splits.items()}
    info = {"source_dir": source, "images": counts, "jpeg_quality": JPEG_QUALITY or None,
            "max_pixel_difference": largest, "mean_pixel_difference": total / max(1, values),
            "bytes": folder_bytes(partial)}
    with atomic_write(os.path.join(partial, COPY_INFO), "w") as f:
        json.dump(info, f, indent=2)
    if os.path.isdir(target):
        os.rmdir(target)  # empty: checked at start-up
    os.rename(partial, target)
    how = (f"re-encoded at JPEG quality {JPEG_QUALITY}; per-pixel difference from the originals: "
           f"largest {largest}, mean {info['mean_pixel_difference']:.2f}" if JPEG_QUALITY
           else "bytes as they are")
    print(f"copied {', '.join(f'{split} {n:,}' for split, n in counts.items())} images ({how}) "
          f"to {target}: {info['bytes'] / 2**20:.1f} MiB in all")


if __name__ == "__main__":
    run(main)
