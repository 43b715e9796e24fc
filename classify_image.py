"""Classify one image, or every image in a folder, with a EuroSAT classifier from finetune_model.py
or Linear_evaluation.py.

    python classify_image.py path/to/image.jpg   # prints the predicted class, its confidence and
                                                 # the top 3
    python classify_image.py path/to/folder      # every image under it (recursive, sorted)
                                                 # -> OUTPUT_CSV
    python classify_image.py image.png --model_path=outputs/linear_eval_eurosat_best_model.pth

The model is rebuilt from the checkpoint alone (arch, image size, normalisation and class names
are stored in it), and each image gets the evaluation transform (resize to the checkpoint's size,
normalise). Any image PIL opens is converted to 8-bit RGB first (RGBA: alpha dropped; grayscale:
copied to 3 channels; 16-bit and float: Sentinel-2 reflectance, see simsiam_data.open_rgb), with a
one-line note when it was not RGB. Prints,
for one image:
    predicted class: Forest (98.7%)
    top 3: Forest 98.7%, Pasture 0.8%, HerbaceousVegetation 0.3%
For a folder, OUTPUT_CSV gets one row per image: path, predicted_class, confidence (0-1), top_3,
original_mode, and one probability column per class; unreadable images are skipped, named and
counted. Next to it, a .json file (predictions.json) records the settings, the model, the class
counts and the unreadable files.
"""
import csv
import json
import os

import torch
from PIL import Image
from tqdm import tqdm

import simsiam_data as data
from runtime import (CheckpointError, at_least, atomic_write, check_settings, configure, fail,
                     pick_device, prepare_output_dir, run)
from simsiam_model import classifier_from_checkpoint

# -------------------------------------------------------------------------------------------------
IMAGE_TO_CLASSIFY_PATH = "datae/EuroSAT/Forest/Forest_1.jpg"  # image/folder (recursive) or 1st arg
MODEL_PATH = "outputs/finetuned_eurosat_best_model.pth"  # or linear_eval_eurosat_best_model.pth
OUTPUT_CSV = "outputs/predictions.csv"  # folder mode: one row per image
TOP_K = 3  # classes listed per image
BATCH_SIZE = 64  # images per forward pass in folder mode
DEVICE = "auto"  # auto | cuda | cpu | mps
# -------------------------------------------------------------------------------------------------

MODE_NOTES = {"RGBA": "alpha dropped", "LA": "grayscale with alpha, alpha dropped",
              "L": "grayscale, copied to 3 channels", "1": "1-bit, copied to 3 channels",
              "P": "palette colours",
              "CMYK": "CMYK", "YCbCr": "YCbCr",
              "I;16": "16-bit, reflectance = DN / 10000",
              "I;16B": "16-bit, reflectance = DN / 10000",
              "I;16L": "16-bit, reflectance = DN / 10000",
              "I": "32-bit integer, reflectance = DN / 10000",
              "F": "floating point, taken as reflectance"}


def read_image(path):
    """(8-bit RGB PIL image, the file's original PIL mode)."""
    image = data.open_rgb(path)  # first: it refuses what must not be opened, such as a FIFO
    with Image.open(path) as original:
        return image, original.mode


def conversion_note(path, mode):
    return (f"note: {path} has PIL mode {mode} ({MODE_NOTES.get(mode, 'not RGB')}); "
            "converted to RGB")


def load_model(device):
    try:
        model, checkpoint, model_config = classifier_from_checkpoint(MODEL_PATH)
    except CheckpointError as error:
        hint = ("" if os.path.exists(MODEL_PATH) else " Train a classifier with "
                "`python finetune_model.py` or "
                "`python Linear_evaluation.py`, or pass --model_path=FILE.")
        raise CheckpointError(f"{error}{hint}") from None
    return model.to(device).eval(), checkpoint, model_config


@torch.no_grad()
def probabilities(model, images, device):
    return torch.softmax(model(torch.stack(images).to(device)).float(), dim=1).cpu()


def top_k(probs, class_names):
    values, indices = probs.topk(min(TOP_K, len(class_names)))
    return [(class_names[i], v.item()) for v, i in zip(values, indices)]


def classify_folder(folder, model, transform, class_names, device, run_info):
    paths = data.list_images(folder)
    if not paths:
        fail(f"no images (png/jpg/jpeg/tif) under {folder!r}.")
    # batch: (path, original mode, tensor) waiting for a forward pass
    rows, batch, bad, notes = [], [], [], 0

    def flush():
        for (path, mode, _), probs in zip(batch,
                                          probabilities(model, [t for _, _, t in batch], device)):
            ranked = top_k(probs, class_names)
            rows.append([path, ranked[0][0], f"{ranked[0][1]:.4f}",
                         "; ".join(f"{n} {p:.4f}" for n, p in ranked),
                         mode] + [f"{p:.4f}" for p in probs.tolist()])
        batch.clear()

    for path in tqdm(paths, desc="classifying"):
        try:
            image, mode = read_image(path)
        except data.IMAGE_READ_ERRORS as error:
            bad.append(path)
            tqdm.write(f"warning: skipping unreadable image {path} "
                       f"({type(error).__name__}: {error})")
            continue
        if mode != "RGB":
            notes += 1
            if notes <= 10:
                tqdm.write(conversion_note(path, mode))
        batch.append((path, mode, transform(image)))
        if len(batch) == BATCH_SIZE:
            flush()
    if batch:
        flush()
    if notes > 10:
        print(f"note: {notes} images in all were not RGB and were converted")
    if not rows:
        fail(f"none of the {len(paths)} images under {folder!r} could be read.")
    with atomic_write(OUTPUT_CSV, "w") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "predicted_class", "confidence", f"top_{TOP_K}", "original_mode"]
                        + [f"prob_{name}" for name in class_names])
        writer.writerows(rows)
    counts = {}
    for row in rows:
        counts[row[1]] = counts.get(row[1], 0) + 1
    # the settings and the model that produced the CSV, and the files that could not be read
    info_path = os.path.splitext(OUTPUT_CSV)[0] + ".json"
    with atomic_write(info_path, "w") as f:
        json.dump(dict(run_info, folder=folder, classified=len(rows), counts=counts,
                       unreadable=bad), f, indent=1)
    print(f"classified {len(rows)} of {len(paths)} images ({len(bad)} unreadable, skipped); "
          f"wrote {OUTPUT_CSV} and {info_path}")
    print("predicted classes: " + ", ".join(f"{name} {counts[name]}" for name in class_names
                                            if name in counts))


def main():
    global IMAGE_TO_CLASSIFY_PATH
    config, positional = configure(globals(), allow_positional=1)
    if positional:
        IMAGE_TO_CLASSIFY_PATH = config["IMAGE_TO_CLASSIFY_PATH"] = positional[0]
    check_settings(config, {"TOP_K": at_least(1), "BATCH_SIZE": at_least(1)})
    target = IMAGE_TO_CLASSIFY_PATH
    if not os.path.exists(target):
        fail(f"{target}: no such image or folder. Pass an image or a folder: "
             "python classify_image.py PATH")
    # folder mode writes OUTPUT_CSV: find out now, not after classifying everything
    if os.path.isdir(target):
        prepare_output_dir(os.path.dirname(os.path.abspath(OUTPUT_CSV)), setting="OUTPUT_CSV")
    device = pick_device(DEVICE)
    model, checkpoint, model_config = load_model(device)
    class_names = checkpoint["class_names"]
    transform = data.eval_transform(model_config["image_size"], checkpoint["mean"],
                                    checkpoint["std"])
    source = checkpoint.get("source", "classifier")
    val = (f", val {checkpoint['val_acc']:.1f}%"
           if isinstance(checkpoint.get("val_acc"), (int, float)) else "")
    print(f"model: {MODEL_PATH} ({model_config['arch']}, {model_config['image_size']} px, "
          f"{source} epoch {checkpoint.get('epoch', '?')}{val}; {len(class_names)} classes)")

    if os.path.isdir(target):
        run_info = {"config": config, "model_path": MODEL_PATH, "model": model_config,
                    "source": source, "epoch": checkpoint.get("epoch"),
                    "val_acc": checkpoint.get("val_acc"), "class_names": class_names}
        classify_folder(target, model, transform, class_names, device, run_info)
        return
    try:
        image, mode = read_image(target)
    except data.UnsupportedImage as error:  # its message says what is wrong and what to do
        fail(f"cannot read image {target}: {error}")
    except data.IMAGE_READ_ERRORS as error:
        fail(f"cannot read image {target} ({type(error).__name__}: {error}). "
             "Is it an image file PIL can open?")
    if mode != "RGB":
        print(conversion_note(target, mode))
    ranked = top_k(probabilities(model, [transform(image)], device)[0], class_names)
    print(f"image: {target} ({image.width}x{image.height} px)")
    print(f"predicted class: {ranked[0][0]} ({ranked[0][1] * 100:.1f}%)")
    print(f"top {len(ranked)}: " + ", ".join(f"{name} {p * 100:.1f}%" for name, p in ranked))


if __name__ == "__main__":
    run(main)
