"""Copy a fixed subset of EuroSAT to another folder: all of validation.csv and test.csv, and
TRAIN_IMAGES rows of train.csv (those `bench_quality.py --pretrain_images=N` picks: seed 0), with
their images and label_map.json. For machines that can only receive a small working tree (the lent
GPU machine takes 64 MiB in all): copy, carry the folder, point --eurosat_dir at it.

    python scripts/copy_eurosat_subset.py --source_dir=../EuroSAT --target_dir=datae/EuroSAT \
        --train_images=12000

The copied train.csv lists only the copied rows, so pre-training and the linear probe see only
those; validation and test are complete. Every CSV is checked as the evaluations check it.
"""
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import simsiam_data as data  # noqa: E402
from bench_quality import write_subset  # noqa: E402
from runtime import at_least, check_settings, configure, fail, run  # noqa: E402

# -------------------------------------------------------------------------------------------------
SOURCE_DIR = "datae/EuroSAT"  # EuroSAT RGB with train/validation/test CSVs and label_map.json
TARGET_DIR = ""  # where the subset goes (must not exist yet, or be empty)
TRAIN_IMAGES = 10000  # rows of train.csv to copy; 0 = all
# -------------------------------------------------------------------------------------------------


def main():
    config, _ = configure(globals())
    check_settings(config, {"TRAIN_IMAGES": at_least(0)})
    source, target = os.path.abspath(SOURCE_DIR), os.path.abspath(TARGET_DIR)
    if not TARGET_DIR:
        fail("set --target_dir (where the subset goes)", code=2)
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
    os.makedirs(target, exist_ok=True)
    shutil.copy2(label_map, target)
    for split in ("validation", "test"):
        shutil.copy2(os.path.join(source, f"{split}.csv"), target)
    if TRAIN_IMAGES:
        write_subset(os.path.join(source, "train.csv"), TRAIN_IMAGES,
                     os.path.join(target, "train.csv"), setting="TRAIN_IMAGES")
        splits["train"] = data.read_eurosat_split(source, os.path.join(target, "train.csv"),
                                                  label_map)
    else:
        shutil.copy2(os.path.join(source, "train.csv"), target)
    copied_bytes = 0
    for files in splits.values():
        for path in files.paths:
            copy = os.path.join(target, os.path.relpath(path, source))
            os.makedirs(os.path.dirname(copy), exist_ok=True)
            shutil.copy2(path, copy)
            copied_bytes += os.path.getsize(copy)
    counts = ", ".join(f"{split} {len(files.paths)}" for split, files in splits.items())
    print(f"copied {counts} images ({copied_bytes / 2**20:.1f} MiB) to {target}")


if __name__ == "__main__":
    run(main)
