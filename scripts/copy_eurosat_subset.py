"""Copy a fixed subset of EuroSAT to another folder: all of validation.csv and test.csv, and
TRAIN_IMAGES rows of train.csv drawn with a fixed seed (pandas sample, random_state=SEED), with
their images and label_map.json. For machines that can only receive a small working tree (the lent
GPU machine takes 64 MiB in all): copy, carry the folder, point --eurosat_dir at it.

    python scripts/copy_eurosat_subset.py --source_dir=../EuroSAT --target_dir=datae/EuroSAT \
        --train_images=12000

The copied train.csv lists only the copied rows (same index, columns and order as drawn), so
pre-training and the linear probe see only those; validation and test are complete.
"""
import os
import shutil
import sys

import pandas as pd
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from runtime import at_least, atomic_write, check_settings, configure, fail, run  # noqa: E402

# -------------------------------------------------------------------------------------------------
SOURCE_DIR = "datae/EuroSAT"  # EuroSAT RGB with train/validation/test CSVs and label_map.json
TARGET_DIR = ""  # where the subset goes (must not exist yet, or be empty)
TRAIN_IMAGES = 10000  # rows of train.csv to copy; 0 = all
SEED = 0  # pandas random_state for the train.csv rows
# -------------------------------------------------------------------------------------------------


def main():
    config, _ = configure(globals())
    check_settings(config, {"TRAIN_IMAGES": at_least(0)})
    source, target = os.path.abspath(SOURCE_DIR), os.path.abspath(TARGET_DIR or "")
    if not TARGET_DIR:
        fail("set --target_dir (where the subset goes)", code=2)
    if os.path.realpath(source) == os.path.realpath(target):
        fail("--target_dir must differ from --source_dir", code=2)
    if os.path.exists(target) and os.listdir(target):
        fail(f"{target} is not empty: remove it or choose another --target_dir", code=2)
    tables = {}
    for split in ("train", "validation", "test"):
        path = os.path.join(source, f"{split}.csv")
        try:
            tables[split] = pd.read_csv(path, index_col=0, dtype={"Filename": str})
        except (OSError, pd.errors.ParserError, ValueError) as e:
            fail(f"cannot read {path} ({e}): point --source_dir at EuroSAT with its split CSVs")
        if "Filename" not in tables[split].columns:
            fail(f"{path} has no Filename column: is it a EuroSAT split file?")
    if TRAIN_IMAGES:
        if TRAIN_IMAGES > len(tables["train"]):
            fail(f"TRAIN_IMAGES must be at most {len(tables['train'])} (rows of train.csv)",
                 code=2)
        tables["train"] = tables["train"].sample(TRAIN_IMAGES, random_state=SEED)
    os.makedirs(target, exist_ok=True)
    shutil.copy2(os.path.join(source, "label_map.json"), target)
    copied_bytes = 0
    for split, table in tables.items():
        for name in table["Filename"]:
            relative = os.path.normpath(name)
            if os.path.isabs(relative) or relative.startswith(".."):
                fail(f"{source}/{split}.csv names {name!r}, outside the data folder")
            os.makedirs(os.path.join(target, os.path.dirname(relative)), exist_ok=True)
            shutil.copy2(os.path.join(source, relative), os.path.join(target, relative))
            copied_bytes += os.path.getsize(os.path.join(target, relative))
        with atomic_write(os.path.join(target, f"{split}.csv"), "w") as f:
            table.to_csv(f)
    counts = ", ".join(f"{split} {len(table)}" for split, table in tables.items())
    print(f"copied {counts} images ({copied_bytes / 2**20:.1f} MiB) to {target}")


if __name__ == "__main__":
    run(main)
