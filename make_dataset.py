"""Prepare the data: SSL4EO-S12 v1.1 Zarr files -> RGB PNGs for pre-training, and EuroSAT split CSVs.

Mode "ssl4eo" (the default): every `*.zarr.zip` file or `*.zarr` folder under INPUT_DIR (searched recursively;
default data/ssl4eo-s12/train/S2L1C) becomes one RGB PNG per sample and season in OUTPUT_DIR (default
barlow_data/train), named `<file stem>_<sample>_<time>.png`, e.g. `ssl4eos12_train_seasonal_data_000001_0080717_0.png`,
plus a manifest CSV (default barlow_data/manifest.csv) with one row per PNG: png, source_file, sample, time,
center_lat, center_lon, cloud_fraction.
  - Bands are picked by NAME from the `band` coordinate: B04, B03, B02 (red, green, blue).
  - S2L1C / S2L2A digital numbers: reflectance = (DN - 1000) / 10000 (v1.1 adds a +1000 offset), then the fixed
    true-colour stretch  value = floor(clip(reflectance / MAX_REFLECTANCE, 0, 1) * 255 + 0.5),  i.e. reflectance
    0..0.3 -> 0..255 by default. Deterministic and per-pixel: no per-image percentiles. DN 0 is no-data: a pixel
    with DN 0 in any of the three bands becomes (0, 0, 0). Saturated or negative values clip, never wrap.
  - S2RGB files (uint8 bands) are taken as they are. The modality is detected from the dtype (uint8 -> S2RGB,
    integer -> S2L1C/S2L2A); MODALITY forces it.
  - Idempotent: PNGs that exist are skipped without reading their pixels; each PNG is written to a hidden temp
    file in OUTPUT_DIR and renamed, so a kill never leaves a half PNG, and a rerun finishes the job (stale temp
    files of a killed run are removed at start). The manifest is rewritten (atomically) at the end of every run.
  - A corrupt, truncated or wrongly shaped file is reported by name with what is wrong, and skipped.
    The exit status is non-zero only if every file failed or INPUT_DIR holds no Zarr file at all.
  Prints a tqdm bar over files and ends with a summary such as (8 generated files of 64 samples at 264 px)
    done: 8 files (0 failed), 512 samples, 2048 written, 0 skipped (existing), 0 skipped (cloudy) in 69.1 s
    (29.6 patches/s)
  Speed: about 24 ms of CPU per 264 px patch, half of it PNG encoding (--png_compress_level=1 halves that for
  ~15 % larger files): ~30 patches/s with one process on our 2-core machine while it was busy with other work.
  A rerun over finished files takes ~2 s for 2,048 patches.

Mode "eurosat_splits": if train.csv / validation.csv / test.csv / label_map.json are missing in EUROSAT_DIR
(default datae/EuroSAT, class folders of JPEGs), writes them: stratified per class, 70/20/10, fixed SPLIT_SEED,
header `,Filename,Label,ClassName`, labels in alphabetical class order. Existing files are never overwritten.
Mode "all" does both.

    python make_dataset.py                                  # SSL4EO Zarr -> PNGs with the defaults below
    python make_dataset.py --mode=eurosat_splits            # EuroSAT CSVs
    python make_dataset.py --input_dir=demo_data/ssl4eo/train/S2L1C --output_dir=demo_data/pngs --num_processes=1
"""
import csv
import json
import multiprocessing as mp
import os
import re
import sys
import time
import zipfile

import numpy as np
from PIL import Image
from tqdm import tqdm

from runtime import configure

# -----------------------------------------------------------------------------
MODE = "ssl4eo"  # "ssl4eo": Zarr -> PNGs; "eurosat_splits": write EuroSAT split CSVs; "all": both
INPUT_DIR = "data/ssl4eo-s12/train/S2L1C"  # folder of *.zarr.zip files or *.zarr folders (searched recursively)
OUTPUT_DIR = "barlow_data/train"  # RGB PNGs for pre-training land here
MANIFEST = "barlow_data/manifest.csv"  # one row per PNG: source file, sample, time, lat/lon, cloud fraction
SEASONS = "all"  # which timestamps to keep: "all" or a comma list of `time` values such as "0,2"
RGB_BANDS = "B04,B03,B02"  # band names for red, green, blue, looked up in the `band` coordinate
MODALITY = "auto"  # "auto" (uint8 -> S2RGB, integers -> S2L1C/S2L2A), or force "S2L1C", "S2L2A", "S2RGB"
DN_OFFSET = 1000  # v1.1 adds +1000 to the L1C/L2A digital numbers; reflectance = (DN - DN_OFFSET) / 10000
MAX_REFLECTANCE = 0.3  # reflectance mapped to 255 (0.3 is the usual true-colour clip); above it saturates
OUTPUT_SIZE = 0  # side of the saved PNGs in pixels (bicubic resize); 0 keeps the native 264
MAX_CLOUD_FRACTION = 1.0  # skip patches with a larger fraction of cloud_mask > 0 (1.0 keeps all; no mask: kept)
PNG_COMPRESS_LEVEL = 6  # zlib level 0..9 for the PNGs: 1 is faster to write, 9 smaller; 6 is PIL's default
NUM_PROCESSES = 0  # worker processes over files; 0 = one per CPU core, 1 = in this process (no pool)
EUROSAT_DIR = "datae/EuroSAT"  # EuroSAT RGB class folders; the split CSVs and label_map.json go here
SPLIT_SEED = 0  # seed of the stratified EuroSAT split (fixed so that every run gives the same split)
TRAIN_FRACTION = 0.7  # per class; validation gets VAL_FRACTION and test the rest (0.1 by default)
VAL_FRACTION = 0.2  # per class
# -----------------------------------------------------------------------------

_TMP_PATTERN = re.compile(r"^\..+\.tmp\d+$")  # our temp names: ".<final name>.tmp<pid>"
_ALIASES = {"B04": ("B04", "B4", "red", "r"), "B03": ("B03", "B3", "green", "g"), "B02": ("B02", "B2", "blue", "b")}


class BadFile(Exception):
    """A Zarr file that cannot be converted; the message says what is wrong with it."""


# -----------------------------------------------------------------------------
# reading one SSL4EO-S12 v1.1 Zarr file

def find_zarr_files(root):
    """Every `*.zarr.zip` file and `*.zarr` folder under root, sorted (we never descend into a .zarr folder)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for d in [d for d in dirnames if d.endswith(".zarr")]:
            found.append(os.path.join(dirpath, d))
        dirnames[:] = [d for d in dirnames if not d.endswith(".zarr") and not d.startswith(".")]
        found += [os.path.join(dirpath, f) for f in filenames if f.endswith(".zarr.zip")]
    return sorted(found)


def file_stem(path):
    name = os.path.basename(os.path.normpath(path))
    for suffix in (".zarr.zip", ".zarr"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def open_zarr(path):
    """Open a .zarr.zip (through ZipStore: zarr 3 cannot open a zip from a plain path) or a .zarr folder."""
    import zarr  # imported here so that the EuroSAT mode and `--help` work without touching zarr

    store = None
    try:
        if os.path.isdir(path):
            group = zarr.open_group(path, mode="r")
        else:
            store = zarr.storage.ZipStore(path, mode="r")
            group = zarr.open_group(store, mode="r")
    except zipfile.BadZipFile as error:
        raise BadFile(f"not a readable zip ({error}); the download is probably truncated: delete it and "
                      "download it again (bash scripts/data.sh)") from None
    except Exception as error:
        raise BadFile(f"not a readable Zarr group ({type(error).__name__}: {error})") from None
    return group, store


def strings(values):
    """A string coordinate as a list of str: fixed-width unicode, bytes, or variable-length objects."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).tolist()]


def dims_of(array, default):
    """Axis names from xarray's `_ARRAY_DIMENSIONS` attribute, else the documented default order."""
    dims = array.attrs.get("_ARRAY_DIMENSIONS")
    if dims is None:
        dims = list(default) if array.ndim == len(default) else None
    if dims is None or len(dims) != array.ndim:
        raise BadFile(f"array has {array.ndim} dims {list(dims or [])}, expected {len(default)} {tuple(default)}")
    return list(dims)


def band_indices(names, wanted):
    """Position of each wanted band in the `band` coordinate, by name (S2RGB may use red/green/blue aliases)."""
    lowered = {n.strip().lower(): i for i, n in enumerate(names)}
    found = []
    for band in wanted:
        options = _ALIASES.get(band, (band,))
        hit = next((lowered[o.lower()] for o in options if o.lower() in lowered), None)
        if hit is None:
            raise BadFile(f"no band named {band!r} in the `band` coordinate (bands: {', '.join(names)})")
        found.append(hit)
    return found


def describe(group, settings):
    """Check the layout of one file and return what converting it needs; raise BadFile naming the problem."""
    if "bands" not in group:
        raise BadFile(f"no `bands` array (found: {', '.join(sorted(group.array_keys())) or 'nothing'})")
    bands = group["bands"]
    if bands.ndim != 5:
        raise BadFile(f"`bands` has {bands.ndim} dims {bands.attrs.get('_ARRAY_DIMENSIONS', '')} (shape "
                      f"{bands.shape}), expected 5 (sample, time, band, y, x)")
    dims = dims_of(bands, ("sample", "time", "band", "y", "x"))
    if sorted(dims) != ["band", "sample", "time", "x", "y"]:
        raise BadFile(f"`bands` has dims {dims}, expected (sample, time, band, y, x)")
    shape = dict(zip(dims, bands.shape))
    if "band" not in group:
        raise BadFile("no `band` coordinate, so the RGB bands cannot be found by name")
    names = strings(group["band"][:])
    if len(names) != shape["band"]:
        raise BadFile(f"`band` coordinate has {len(names)} names but `bands` has {shape['band']} bands")
    index = band_indices(names, settings["rgb_bands"])
    samples = strings(group["sample"][:]) if "sample" in group else [f"{i:07d}" for i in range(shape["sample"])]
    if len(samples) != shape["sample"]:
        raise BadFile(f"`sample` coordinate has {len(samples)} ids but `bands` has {shape['sample']} samples")
    times = [int(t) for t in np.asarray(group["time"][:]).tolist()] if "time" in group else list(range(shape["time"]))
    if len(times) != shape["time"]:
        raise BadFile(f"`time` coordinate has {len(times)} values but `bands` has {shape['time']} timestamps")
    modality = settings["modality"]
    if modality == "auto":
        if bands.dtype == np.uint8:
            modality = "S2RGB"
        elif np.issubdtype(bands.dtype, np.integer):
            modality = "S2L1C"  # L1C and L2A share the scale and offset
        else:
            raise BadFile(f"`bands` is {bands.dtype}, not an optical product (S1GRD is float16; use S2L1C/S2RGB)")
    per_sample = {}
    for name in ("center_lat", "center_lon"):
        per_sample[name] = np.asarray(group[name][:], dtype=np.float64).tolist() if name in group else None
    cloud = group["cloud_mask"] if "cloud_mask" in group else None
    cloud_dims = dims_of(cloud, ("sample", "time", "y", "x")) if cloud is not None else None
    return dict(bands=bands, dims=dims, band_index=index, samples=samples, times=times, modality=modality,
                cloud=cloud, cloud_dims=cloud_dims, **per_sample)


def read_rgb(info, i, t):
    """The three RGB bands of sample i, time index t, as (3, y, x): one chunk (one timestamp) is decoded."""
    dims = info["dims"]
    selection = tuple(i if d == "sample" else t if d == "time" else info["band_index"] if d == "band"
                      else slice(None) for d in dims)
    block = np.asarray(info["bands"].oindex[selection])
    rest = [d for d in dims if d not in ("sample", "time")]
    return block.transpose([rest.index("band"), rest.index("y"), rest.index("x")])


def cloud_fraction(info, i, t):
    """Fraction of the patch's pixels with cloud_mask > 0, or None if the file has no cloud mask."""
    if info["cloud"] is None:
        return None
    selection = tuple(i if d == "sample" else t if d == "time" else slice(None) for d in info["cloud_dims"])
    mask = np.asarray(info["cloud"][selection])
    return float(np.count_nonzero(mask)) / max(1, mask.size)


# -----------------------------------------------------------------------------
# digital numbers -> 8-bit RGB

def to_uint8(rgb, modality, dn_offset=DN_OFFSET, max_reflectance=MAX_REFLECTANCE):
    """(3, y, x) bands -> (y, x, 3) uint8 with the fixed stretch of the docstring; never NaN, never wraps."""
    if modality == "S2RGB":
        return np.clip(rgb, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    dn = rgb.astype(np.float64)
    # (DN - offset) / 10000 / max_reflectance * 255, written so that round numbers stay exact in float64
    scaled = (dn - dn_offset) * 255.0 / (max_reflectance * 10000.0)
    out = np.floor(np.clip(scaled, 0.0, 255.0) + 0.5).astype(np.uint8)
    out[:, (rgb == 0).any(axis=0)] = 0  # no-data in any band blacks out the whole pixel
    return out.transpose(1, 2, 0)


def save_png_atomic(array, path, size=0, compress_level=6):
    """Write to a hidden temp file in the same folder, then rename: a kill never leaves a half PNG."""
    image = Image.fromarray(array)
    if size and size != image.width:
        image = image.resize((size, size), Image.BICUBIC)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp{os.getpid()}")
    image.save(tmp, format="PNG", compress_level=compress_level)
    os.replace(tmp, path)


def convert_file(path, settings):
    """Convert one Zarr file; return counts, manifest rows and the error (None if it went through)."""
    result = dict(file=path, samples=0, written=0, existing=0, cloudy=0, stale_cloudy=0, rows=[], error=None)
    store = None
    try:
        group, store = open_zarr(path)
        info = describe(group, settings)
        stem, out_dir = file_stem(path), settings["output_dir"]
        keep = [k for k, t in enumerate(info["times"]) if settings["seasons"] is None or t in settings["seasons"]]
        result["samples"] = len(info["samples"])
        for i, sample in enumerate(info["samples"]):
            for k in keep:
                name = f"{stem}_{sample}_{info['times'][k]}.png"
                png = os.path.join(out_dir, name)
                clouds = cloud_fraction(info, i, k)
                if clouds is not None and clouds > settings["max_cloud"]:
                    result["cloudy"] += 1
                    result["stale_cloudy"] += os.path.exists(png)  # left by a run with a looser limit
                    continue
                if os.path.exists(png):
                    result["existing"] += 1
                else:
                    rgb = to_uint8(read_rgb(info, i, k), info["modality"], settings["dn_offset"],
                                   settings["max_reflectance"])
                    save_png_atomic(rgb, png, settings["output_size"], settings["compress_level"])
                    result["written"] += 1
                lat, lon = info["center_lat"], info["center_lon"]
                result["rows"].append([name, settings["source_names"].get(path, path), sample, info["times"][k],
                                       "" if lat is None else lat[i], "" if lon is None else lon[i],
                                       "" if clouds is None else f"{clouds:.6f}"])
    except BadFile as error:
        result["error"] = str(error)
    except Exception as error:  # a corrupt chunk, a bad CRC inside the zip, ...: name it and carry on
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        if store is not None:
            store.close()
    return result


def _convert_star(args):
    return convert_file(*args)


def write_manifest(rows, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["png", "source_file", "sample", "time", "center_lat", "center_lon", "cloud_fraction"])
        writer.writerows(sorted(rows))
    os.replace(tmp, path)


def parse_seasons(text):
    if text.strip().lower() == "all":
        return None
    try:
        return {int(s) for s in text.split(",") if s.strip()}
    except ValueError:
        raise SystemExit(f"make_dataset.py: SEASONS must be 'all' or a comma list of integers, got {text!r}")


def convert_ssl4eo(config):
    """MODE ssl4eo: all Zarr files of INPUT_DIR -> PNGs + manifest. Returns the exit status."""
    input_dir, output_dir = config["INPUT_DIR"], config["OUTPUT_DIR"]
    files = find_zarr_files(input_dir) if os.path.isdir(input_dir) else []
    if not files:
        state = "does not exist" if not os.path.isdir(input_dir) else "holds no *.zarr.zip file or *.zarr folder"
        print(f"make_dataset.py: {input_dir} {state}. Download SSL4EO-S12 v1.1 files with `bash scripts/data.sh` "
              f"(EuroSAT zips are unpacked by `bash scripts/unzip_files.sh`), or point --input_dir at your copy.",
              file=sys.stderr)
        return 1
    if config["MODALITY"] not in ("auto", "S2L1C", "S2L2A", "S2RGB"):
        raise SystemExit(f"make_dataset.py: MODALITY must be auto, S2L1C, S2L2A or S2RGB, got {config['MODALITY']!r}")
    os.makedirs(output_dir, exist_ok=True)
    stale = [f for f in os.listdir(output_dir) if _TMP_PATTERN.match(f)]
    for f in stale:  # half-written PNGs of a killed run
        os.remove(os.path.join(output_dir, f))
    if stale:
        print(f"removed {len(stale)} stale temp file(s) of an interrupted run from {output_dir}")
    settings = dict(output_dir=output_dir, seasons=parse_seasons(config["SEASONS"]),
                    rgb_bands=[b.strip() for b in config["RGB_BANDS"].split(",")], modality=config["MODALITY"],
                    dn_offset=config["DN_OFFSET"], max_reflectance=config["MAX_REFLECTANCE"],
                    output_size=config["OUTPUT_SIZE"], max_cloud=config["MAX_CLOUD_FRACTION"],
                    compress_level=config["PNG_COMPRESS_LEVEL"],
                    source_names={f: os.path.relpath(f, input_dir) for f in files})
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(config["NUM_PROCESSES"] or cores, len(files)))
    print(f"converting {len(files)} Zarr file(s) from {input_dir} to {output_dir} with {workers} process(es)")
    start, results = time.time(), []
    bar = tqdm(total=len(files), unit="file", dynamic_ncols=True)
    if workers == 1:
        outcomes = (convert_file(f, settings) for f in files)
        pool = None
    else:
        # spawn, not fork: zarr 3 runs an event-loop thread, and forking a process that has one can deadlock
        pool = mp.get_context("spawn").Pool(workers)
        outcomes = pool.imap_unordered(_convert_star, [(f, settings) for f in files])
    try:
        for result in outcomes:
            results.append(result)
            if result["error"]:
                tqdm.write(f"FAILED {result['file']}: {result['error']} (skipped)")
            bar.update(1)
            bar.set_postfix(written=sum(r["written"] for r in results))
    except BaseException:
        if pool is not None:
            pool.terminate()  # Ctrl-C: stop the workers now; their temp files are removed by the next run
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    seconds = time.time() - start
    total = {k: sum(r[k] for r in results) for k in ("samples", "written", "existing", "cloudy", "stale_cloudy")}
    failed = [r for r in results if r["error"]]
    write_manifest([row for r in results for row in r["rows"]], config["MANIFEST"])
    print(f"saving manifest to {config['MANIFEST']} ({sum(len(r['rows']) for r in results)} rows)")
    if total["stale_cloudy"]:
        print(f"note: {total['stale_cloudy']} PNG(s) above MAX_CLOUD_FRACTION from an earlier run are still in "
              f"{output_dir} but not in the manifest; delete them (or the folder) if the training should not see them")
    for r in failed:
        print(f"failed: {r['file']}: {r['error']}")
    print(f"done: {len(files)} files ({len(failed)} failed), {total['samples']} samples, {total['written']} written, "
          f"{total['existing']} skipped (existing), {total['cloudy']} skipped (cloudy) in {seconds:.1f} s"
          + (f" ({total['written'] / max(seconds, 1e-9):.1f} patches/s)" if total["written"] else ""))
    if len(failed) == len(files):
        print(f"make_dataset.py: every file under {input_dir} failed; nothing was converted", file=sys.stderr)
        return 1
    return 0


# -----------------------------------------------------------------------------
# EuroSAT split CSVs

_SPLIT_FILES = ("train.csv", "validation.csv", "test.csv")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def _natural_key(name):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _atomic_write_text(text, path):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def split_counts(n, fractions):
    """Per-class sizes: train and validation rounded, test the rest; at least one each when n >= 3."""
    n_train, n_val = int(n * fractions[0] + 0.5), int(n * fractions[1] + 0.5)
    n_val = min(n_val, n - n_train)
    if n >= 3:
        n_val = max(n_val, 1)
        n_train = min(n_train, n - n_val - 1)
    return n_train, n_val, n - n_train - n_val


def write_eurosat_splits(root, seed=SPLIT_SEED, fractions=(TRAIN_FRACTION, VAL_FRACTION)):
    """Write the missing split CSVs and label_map.json in root; never overwrite. Returns the exit status."""
    import pandas as pd

    if not os.path.isdir(root):
        print(f"make_dataset.py: {root} does not exist. Download and unpack EuroSAT with `bash scripts/data.sh` "
              "(or `bash scripts/unzip_files.sh` if the zip is already there), or set --eurosat_dir.", file=sys.stderr)
        return 1
    csv_paths = [os.path.join(root, f) for f in _SPLIT_FILES]
    map_path = os.path.join(root, "label_map.json")
    present = [os.path.basename(p) for p in csv_paths + [map_path] if os.path.exists(p)]
    if len(present) == 4:
        print(f"EuroSAT splits: {', '.join(present)} exist in {root} and were kept")
        return 0
    classes = sorted(d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    images = {c: sorted((f for f in os.listdir(os.path.join(root, c)) if f.lower().endswith(_IMAGE_EXTENSIONS)),
                        key=_natural_key) for c in classes}
    classes = [c for c in classes if images[c]]
    if not classes:
        print(f"make_dataset.py: no class folders with images in {root}. Unpack EuroSAT there with "
              "`bash scripts/unzip_files.sh` (after `bash scripts/data.sh`).", file=sys.stderr)
        return 1
    if os.path.exists(map_path):
        with open(map_path) as f:
            label_map = json.load(f)
        missing = [c for c in classes if c not in label_map]
        if missing:
            print(f"make_dataset.py: {map_path} has no label for class folder(s) {missing}", file=sys.stderr)
            return 1
        print(f"EuroSAT splits: {map_path} exists and was kept")
    else:
        label_map = {c: i for i, c in enumerate(classes)}  # alphabetical, as torchvision's ImageFolder does
        _atomic_write_text(json.dumps(label_map, indent=2) + "\n", map_path)
        print(f"saving label map to {map_path} ({len(classes)} classes)")
    existing_csv = [os.path.basename(p) for p in csv_paths if os.path.exists(p)]
    if existing_csv:
        if len(existing_csv) < 3:
            # a fresh split could overlap the kept files, and test images would leak into training
            print(f"make_dataset.py: {root} has {', '.join(existing_csv)} but not all three split CSVs; refusing "
                  "to write a new split next to them. Restore the missing ones, or delete all three.", file=sys.stderr)
            return 1
        print(f"EuroSAT splits: {', '.join(existing_csv)} exist in {root} and were kept")
        return 0
    rng = np.random.default_rng(seed)
    parts = ([], [], [])
    for c in classes:
        order = rng.permutation(len(images[c]))
        n_train, n_val, _ = split_counts(len(order), fractions)
        for part, chosen in zip(parts, (order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:])):
            part += [(f"{c}/{images[c][j]}", label_map[c], c) for j in sorted(chosen)]
    for part, path in zip(parts, csv_paths):
        frame = pd.DataFrame(part, columns=["Filename", "Label", "ClassName"])
        _atomic_write_text(frame.to_csv(), path)  # leading unnamed index column, as the published CSVs have
        print(f"saving {path} ({len(frame)} images)")
    return 0


# -----------------------------------------------------------------------------

def main():
    config, _ = configure(globals())
    if MODE not in ("ssl4eo", "eurosat_splits", "all"):
        raise SystemExit(f"make_dataset.py: MODE must be ssl4eo, eurosat_splits or all, got {MODE!r}")
    status = 0
    if MODE in ("eurosat_splits", "all"):
        status |= write_eurosat_splits(EUROSAT_DIR, SPLIT_SEED, (TRAIN_FRACTION, VAL_FRACTION))
    if MODE in ("ssl4eo", "all"):
        status |= convert_ssl4eo(config)
    return status


if __name__ == "__main__":
    sys.exit(main())
