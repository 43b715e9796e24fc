"""Prepare the data: SSL4EO-S12 v1.1 Zarr files -> RGB PNGs for pre-training, EuroSAT split CSVs.

Mode "ssl4eo" (the default): every `*.zarr.zip` file or `*.zarr` folder under INPUT_DIR (searched
recursively, symlinked folders followed; FIFOs and names that are not UTF-8 left out with a
warning) becomes one RGB PNG per sample and season in OUTPUT_DIR, named
`<file stem>_<sample>_<time>.png` (e.g. `ssl4eos12_train_seasonal_data_000001_0080717_0.png`),
plus a MANIFEST CSV with one row per PNG: png, source_file, sample, time, center_lat,
center_lon, cloud_fraction.
  - Bands are picked by NAME from the `band` coordinate: B04, B03, B02 (red, green, blue).
  - S2L1C / S2L2A (int16 digital numbers): reflectance = (DN - 1000) / 10000 (v1.1 adds
    +1000), then the fixed true-colour stretch
        value = floor(clip(reflectance / MAX_REFLECTANCE, 0, 1) * 255 + 0.5),
    i.e. reflectance 0..0.3 -> 0..255 by default: deterministic and per-pixel, no per-image
    percentiles. DN 0 is no-data: a pixel with DN 0 in any of the three bands becomes (0, 0, 0).
    Saturated or negative values clip, never wrap.
  - S2RGB (uint8) is taken as it is. MODALITY "auto" tells the products apart by dtype; naming
    one also checks every file's dtype. Other dtypes (int8, float16 = S1GRD radar) are refused.
  - Skipped and counted in the summary line: PNGs that exist (their pixels are not read, so a
    rerun finishes a killed run), patches above MAX_CLOUD_FRACTION, and patches that hold no
    data at all (every pixel DN 0 or the array's fill value), which would be black.
  - Refused, named with what is wrong and counted as failed while the other files go on: a
    corrupt, truncated or wrongly shaped file; a dtype the spec does not have; a `bands` array
    that stores fewer than half of the chunks its shape declares (zarr would read the rest as
    fill values); a sample id that is not a plain name (letters, digits, `_`, `-`, and `.`
    after the first character), since ids become file names.
  - A sample id used twice in one file keeps both samples: the second and later ones are saved
    as `<file stem>_<sample>-<sample index>_<time>.png`, with a note.
  - Every constant is checked at start-up (exit status 2, naming it), and OUTPUT_DIR and the
    MANIFEST's folder are checked for writing before any file is read.
  - Safe to kill and to rerun: every file is written under a hidden temporary name, then
    renamed. OUTPUT_DIR is locked, so a second run on it is refused; temporary files of dead
    runs are removed at start; worker processes end with the script. The manifest is rewritten
    at the end of every run.
  The exit status is non-zero if INPUT_DIR holds no Zarr file, if every file failed, or if
  SEASONS matches no timestamp of any file. A tqdm bar runs over the files; the run ends with
    done: 8 files (0 failed), 512 samples, 2048 written, 0 skipped (existing),
    0 skipped (cloudy), 0 skipped (no data)
  on one line, and the time it took.

Mode "eurosat_splits": if train.csv / validation.csv / test.csv / label_map.json are missing in
EUROSAT_DIR (class folders of JPEGs), writes them: stratified per class, TRAIN_FRACTION /
VAL_FRACTION / the rest, fixed SPLIT_SEED, header `,Filename,Label,ClassName`, labels in
alphabetical class order. Existing files are never overwritten; an existing label_map.json must
give every class folder its own integer label; a class folder with no usable image is refused by
name. Mode "all" does both.

    python make_dataset.py                          # SSL4EO Zarr -> PNGs with the defaults below
    python make_dataset.py --mode=eurosat_splits    # EuroSAT CSVs
    python make_dataset.py --input_dir=demo_data/ssl4eo/train/S2L1C \\
        --output_dir=demo_data/pngs --num_processes=1
"""
import collections
import csv
import json
import multiprocessing as mp
import os
import re
import time
import zipfile

import numpy as np
from PIL import Image
from tqdm import tqdm

from runtime import (DataError, UserError, at_least, atomic_write, between, check_settings,
                     configure, die_with_parent, is_utf8, one_of, open_regular, prepare_output_dir,
                     report_skipped, run, shown, walk_data)

# -----------------------------------------------------------------------------
MODE = "ssl4eo"  # "ssl4eo": Zarr -> PNGs; "eurosat_splits": EuroSAT split CSVs; "all": both
INPUT_DIR = "data/ssl4eo-s12/train/S2L1C"  # *.zarr.zip files or *.zarr folders (recursive search)
OUTPUT_DIR = "barlow_data/train"  # RGB PNGs for pre-training land here
MANIFEST = "barlow_data/manifest.csv"  # one row per PNG: source, sample, time, lat/lon, clouds
SEASONS = "all"  # which timestamps to keep: "all" or a comma list of `time` values such as "0,2"
RGB_BANDS = "B04,B03,B02"  # band names for red, green, blue, looked up in the `band` coordinate
MODALITY = "auto"  # "auto" (uint8 -> S2RGB, int16 -> S2L1C/S2L2A) or "S2L1C", "S2L2A", "S2RGB"
DN_OFFSET = 1000  # v1.1 adds +1000 to L1C/L2A numbers; reflectance = (DN - DN_OFFSET) / 10000
MAX_REFLECTANCE = 0.3  # reflectance mapped to 255 (0.3: the usual true-colour clip)
OUTPUT_SIZE = 0  # side of the saved PNGs in pixels (bicubic resize); 0 keeps the native 264
MAX_CLOUD_FRACTION = 1.0  # skip patches with more cloud_mask > 0 (1.0 keeps all; no mask: kept)
PNG_COMPRESS_LEVEL = 6  # zlib level 0..9: 1 is faster to write, 9 smaller; 6 is PIL's default
NUM_PROCESSES = 0  # worker processes over files; 0 = one per CPU core, 1 = in this process
EUROSAT_DIR = "datae/EuroSAT"  # EuroSAT RGB class folders; split CSVs and label_map.json go here
SPLIT_SEED = 0  # seed of the stratified EuroSAT split (fixed: every run gives the same split)
TRAIN_FRACTION = 0.7  # per class; validation gets VAL_FRACTION and test the rest (0.1 by default)
VAL_FRACTION = 0.2  # per class
# -----------------------------------------------------------------------------

_ALIASES = {"B04": ("B04", "B4", "red", "r"), "B03": ("B03", "B3", "green", "g"),
            "B02": ("B02", "B2", "blue", "b")}
_SPEC_DTYPES = {"S2L1C": "int16", "S2L2A": "int16", "S2RGB": "uint8"}  # see the v1.1 spec
_PLAIN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")  # no separators, "..", hidden names

# What a worker needs to convert a file. Workers are spawned, so they do not see the overrides that
# configure() applied to this module's globals: the constants are resolved once and handed over.
Job = collections.namedtuple("Job", "output_dir seasons rgb_bands modality dn_offset "
                                    "max_reflectance output_size max_cloud compress_level "
                                    "parent_pid")


class BadFile(Exception):
    """A Zarr file that cannot be converted; the message says what is wrong with it."""


# -----------------------------------------------------------------------------
# settings

def band_list(text):
    return [b.strip() for b in text.split(",")]


def parse_seasons(text):
    """None for "all", else the set of `time` values in a list like "0,2"; ValueError otherwise."""
    if text.strip().lower() == "all":
        return None
    seasons = {int(s) for s in text.split(",") if s.strip()}
    if not seasons:
        raise ValueError(f"no time value in {text!r}")
    return seasons


def _parses(parse):
    def test(text):
        try:
            parse(text)
        except ValueError:
            return False
        return True
    return test


def check_constants(config):
    """Stop (exit status 2) on the first constant outside what it may be, before reading a file."""
    path = (lambda value: bool(value.strip())), "a path (not empty)"
    check_settings(config, {
        "MODE": one_of("ssl4eo", "eurosat_splits", "all"),
        "INPUT_DIR": path, "OUTPUT_DIR": path, "EUROSAT_DIR": path,
        "MANIFEST": ((lambda value: bool(value.strip()) and not os.path.isdir(value)),
                     "the path of a CSV file (not empty, not a folder)"),
        "SEASONS": (_parses(parse_seasons), "'all' or a comma list of time values such as '0,2'"),
        "RGB_BANDS": ((lambda value: len(band_list(value)) == 3 and all(band_list(value))),
                      "three band names for red, green, blue, such as 'B04,B03,B02'"),
        "MODALITY": one_of("auto", "S2L1C", "S2L2A", "S2RGB"),
        "DN_OFFSET": between(0, 10000),
        "MAX_REFLECTANCE": between(0.01, 3.0),  # DN 32767 is reflectance 3.18
        "OUTPUT_SIZE": between(0, 4096),  # a typo such as 26400 would need gigabytes per PNG
        "MAX_CLOUD_FRACTION": between(0.0, 1.0),
        "PNG_COMPRESS_LEVEL": between(0, 9),
        "NUM_PROCESSES": at_least(0),
        "SPLIT_SEED": at_least(0),
        "TRAIN_FRACTION": between(0.0, 1.0),
        # the three splits share each class, so train and validation together may not exceed it
        "VAL_FRACTION": ((lambda value: 0 <= value <= 1 - config["TRAIN_FRACTION"] + 1e-9),
                         f"between 0 and 1 - TRAIN_FRACTION = {1 - config['TRAIN_FRACTION']:g}"),
    })


# -----------------------------------------------------------------------------
# reading one SSL4EO-S12 v1.1 Zarr file

def find_zarr_files(root):
    """Every `*.zarr.zip` file and `*.zarr` folder under root, sorted (not inside a .zarr).
    Symlinked folders are followed; FIFOs and names that are not UTF-8 are left out, named in a
    warning (runtime.walk_data)."""
    found, skipped = [], []
    for dirpath, dirnames, filenames in walk_data(root, lambda f: f.endswith(".zarr.zip"),
                                                  skipped):
        found += [os.path.join(dirpath, d) for d in dirnames if d.endswith(".zarr")]
        dirnames[:] = [d for d in dirnames if not d.endswith(".zarr") and not d.startswith(".")]
        found += [os.path.join(dirpath, f) for f in filenames]
    report_skipped(skipped, root)
    return sorted(found)


def file_stem(path):
    name = os.path.basename(os.path.normpath(path))
    for suffix in (".zarr.zip", ".zarr"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def open_zarr(path):
    """Open a .zarr.zip (through ZipStore: zarr 3 cannot open a zip from a path) or a folder."""
    import zarr  # imported here so that the EuroSAT mode and `--help` work without touching zarr

    store = None
    try:
        if os.path.isdir(path):
            group = zarr.open_group(path, mode="r")
        else:
            store = zarr.storage.ZipStore(path, mode="r")
            group = zarr.open_group(store, mode="r")
    except zipfile.BadZipFile as error:
        raise BadFile(f"not a readable zip ({error}); the download is probably truncated: "
                      "delete it and download it again (bash scripts/data.sh)") from None
    except Exception as error:
        raise BadFile(f"not a readable Zarr group ({type(error).__name__}: {error})") from None
    return group, store


def stored_chunks(path, name):
    """How many chunks of array `name` the file holds (zarr reads a missing one as fill values).

    Counted by hand: zarr's nchunks_initialized compares every declared key with every stored one,
    which takes minutes on a file that declares a huge shape."""
    def is_chunk(key):
        return bool(key) and not key.startswith(".")

    if os.path.isdir(path):
        return sum(sum(map(is_chunk, files)) for _, _, files in os.walk(os.path.join(path, name)))
    with zipfile.ZipFile(path) as z:
        return sum(is_chunk(n[len(name) + 1:].rsplit("/", 1)[-1]) for n in z.namelist()
                   if n.startswith(name + "/"))


def strings(values):
    """A string coordinate as a list of str: fixed-width unicode, bytes, or variable length."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).tolist()]


def dims_of(array, default):
    """Axis names from xarray's `_ARRAY_DIMENSIONS` attribute, else the documented order."""
    dims = array.attrs.get("_ARRAY_DIMENSIONS")
    if dims is None:
        dims = list(default) if array.ndim == len(default) else None
    if dims is None or len(dims) != array.ndim:
        raise BadFile(f"array has {array.ndim} dims {list(dims or [])}, expected {len(default)} "
                      f"{tuple(default)}")
    return list(dims)


def band_indices(names, wanted):
    """Position of each wanted band in the `band` coordinate, by name (S2RGB may say red...)."""
    lowered = {n.strip().lower(): i for i, n in enumerate(names)}
    found = []
    for band in wanted:
        options = _ALIASES.get(band, (band,))
        hit = next((lowered[o.lower()] for o in options if o.lower() in lowered), None)
        if hit is None:
            raise BadFile(f"no band named {band!r} in the `band` coordinate "
                          f"(bands: {', '.join(names)})")
        found.append(hit)
    return found


def modality_of(dtype, wanted):
    """The product of a `bands` dtype; a dtype that the spec does not have gives black PNGs."""
    name = np.dtype(dtype).name
    if wanted == "auto":
        found = {"uint8": "S2RGB", "int16": "S2L1C"}.get(name)  # L1C, L2A: same scale, offset
        if found is None:
            raise BadFile(f"`bands` is {name}, which no optical SSL4EO-S12 v1.1 product has "
                          "(S2L1C and S2L2A are int16, S2RGB uint8; float16 is S1GRD radar)")
        return found
    if name != _SPEC_DTYPES[wanted]:
        raise BadFile(f"`bands` is {name}, but MODALITY = {wanted!r} files are "
                      f"{_SPEC_DTYPES[wanted]}")
    return wanted


def png_name_parts(samples):
    """The sample part of each PNG name, and the repeated ids as {id: sample indices}.

    Ids come from the file and become file names, so anything but a plain name is refused (`../x`
    would write elsewhere). Two samples with one id would share a PNG name and one would be lost
    silently, so the second and later samples of a repeated id get their index appended."""
    for i, sample in enumerate(samples):
        if not _PLAIN_ID.fullmatch(sample):
            raise BadFile(f"sample id {sample!r} (sample {i}) is not a plain name; ids become PNG "
                          "names, so only letters, digits, '_', '-' and '.' (not first), up to "
                          "100, are accepted")
    first = {}
    parts = [s if first.setdefault(s, i) == i else f"{s}-{i}" for i, s in enumerate(samples)]
    if len(set(parts)) < len(parts):
        raise BadFile("sample ids repeat, and appending the sample index leaves some alike")
    counts = collections.Counter(samples)
    repeated = {s: [i for i, x in enumerate(samples) if x == s]
                for s, n in counts.items() if n > 1}
    return parts, repeated


def describe(group, path, job):
    """Check the layout of one file and return what converting it needs, or raise BadFile."""
    if "bands" not in group:
        found = ", ".join(sorted(group.array_keys())) or "nothing"
        raise BadFile(f"no `bands` array (found: {found})")
    bands = group["bands"]
    if bands.ndim != 5:
        raise BadFile(f"`bands` has {bands.ndim} dims {bands.attrs.get('_ARRAY_DIMENSIONS', '')} "
                      f"(shape {bands.shape}), expected 5 (sample, time, band, y, x)")
    dims = dims_of(bands, ("sample", "time", "band", "y", "x"))
    if sorted(dims) != ["band", "sample", "time", "x", "y"]:
        raise BadFile(f"`bands` has dims {dims}, expected (sample, time, band, y, x)")
    shape = dict(zip(dims, bands.shape))
    declared, stored = bands.nchunks, stored_chunks(path, "bands")
    if stored * 2 < declared:
        raise BadFile(f"`bands` declares shape {bands.shape} ({declared} chunks) but stores only "
                      f"{stored} chunks; the rest would read as fill values (black PNGs). The "
                      "file is probably truncated or its metadata wrong: download it again")
    modality = modality_of(bands.dtype, job.modality)

    if "band" not in group:
        raise BadFile("no `band` coordinate, so the RGB bands cannot be found by name")
    names = strings(group["band"][:])
    if len(names) != shape["band"]:
        raise BadFile(f"`band` coordinate has {len(names)} names but `bands` has {shape['band']}")
    samples = (strings(group["sample"][:]) if "sample" in group
               else [f"{i:07d}" for i in range(shape["sample"])])
    if len(samples) != shape["sample"]:
        raise BadFile(f"`sample` coordinate has {len(samples)} ids but `bands` has "
                      f"{shape['sample']} samples")
    name_parts, repeated = png_name_parts(samples)
    times = ([int(t) for t in np.asarray(group["time"][:]).tolist()] if "time" in group
             else list(range(shape["time"])))
    if len(times) != shape["time"] or len(set(times)) != len(times):
        raise BadFile(f"`time` coordinate is {times}, but `bands` has {shape['time']} distinct "
                      "timestamps")
    per_sample = {}
    for name in ("center_lat", "center_lon"):
        values = np.asarray(group[name][:], dtype=np.float64).tolist() if name in group else None
        if values is not None and len(values) != len(samples):
            raise BadFile(f"`{name}` has {len(values)} values but `bands` has {len(samples)} "
                          "samples")
        per_sample[name] = values
    cloud = group["cloud_mask"] if "cloud_mask" in group else None
    cloud_dims = dims_of(cloud, ("sample", "time", "y", "x")) if cloud is not None else None
    if cloud is not None and any(shape.get(d) != n for d, n in zip(cloud_dims, cloud.shape)):
        raise BadFile(f"`cloud_mask` has shape {dict(zip(cloud_dims, cloud.shape))}, which does "
                      f"not match `bands` {shape}")
    return dict(bands=bands, dims=dims, band_index=band_indices(names, job.rgb_bands),
                samples=samples, name_parts=name_parts, repeated=repeated, times=times,
                modality=modality, fill=0 if bands.fill_value is None else bands.fill_value,
                cloud=cloud, cloud_dims=cloud_dims, **per_sample)


def read_rgb(info, i, t):
    """The RGB bands of sample i, time index t, as (3, y, x): one chunk is decoded."""
    dims = info["dims"]
    selection = tuple(i if d == "sample" else t if d == "time"
                      else info["band_index"] if d == "band" else slice(None) for d in dims)
    block = np.asarray(info["bands"].oindex[selection])
    rest = [d for d in dims if d not in ("sample", "time")]
    return block.transpose([rest.index("band"), rest.index("y"), rest.index("x")])


def cloud_fraction(info, i, t):
    """Fraction of the patch's pixels with cloud_mask > 0, or None if the file has no mask."""
    if info["cloud"] is None:
        return None
    selection = tuple(i if d == "sample" else t if d == "time" else slice(None)
                      for d in info["cloud_dims"])
    mask = np.asarray(info["cloud"][selection])
    return float(np.count_nonzero(mask)) / max(1, mask.size)


def is_no_data(rgb, info):
    """True if no pixel of the patch holds data: DN 0 (or the fill value that a missing chunk
    reads as) in some band for L1C/L2A, where to_uint8 blacks such a pixel out; in all three bands
    for S2RGB."""
    missing = (rgb == 0) | (rgb == info["fill"])
    return bool(missing.all() if info["modality"] == "S2RGB" else missing.any(axis=0).all())


# -----------------------------------------------------------------------------
# digital numbers -> 8-bit RGB -> PNG

def to_uint8(rgb, modality, dn_offset, max_reflectance):
    """(3, y, x) bands -> (y, x, 3) uint8, the fixed stretch of the docstring; no NaN, no wrap."""
    if modality == "S2RGB":
        return np.clip(rgb, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    dn = rgb.astype(np.float64)
    # (DN - offset) / 10000 / max_reflectance * 255, written so that round numbers stay exact
    scaled = (dn - dn_offset) * 255.0 / (max_reflectance * 10000.0)
    out = np.floor(np.clip(scaled, 0.0, 255.0) + 0.5).astype(np.uint8)
    out[:, (rgb == 0).any(axis=0)] = 0  # no-data in any band blacks out the whole pixel
    return out.transpose(1, 2, 0)


def save_png(array, path, size, compress_level):
    """Through a hidden temporary file and a rename, so a kill never leaves half a PNG. Not
    fsynced (too slow per PNG): only a power cut can leave a damaged PNG, which a rerun keeps."""
    image = Image.fromarray(array)
    if size and size != image.width:
        image = image.resize((size, size), Image.BICUBIC)
    with atomic_write(path, durable=False) as f:
        image.save(f, format="PNG", compress_level=compress_level)


def convert_file(path, source_name, job):
    """Convert one Zarr file; return counts, manifest rows and the error (None if none)."""
    result = dict(file=path, samples=0, written=0, existing=0, cloudy=0, no_data=0, stale_cloudy=0,
                  repeated={}, times=[], rows=[], error=None)
    out_dir = os.path.abspath(job.output_dir)
    store = None
    try:
        group, store = open_zarr(path)
        info = describe(group, path, job)
        stem, times = file_stem(path), info["times"]
        keep = [k for k, t in enumerate(times) if job.seasons is None or t in job.seasons]
        result.update(samples=len(info["samples"]), repeated=info["repeated"], times=times)
        for i, sample in enumerate(info["samples"]):
            for k in keep:
                name = f"{stem}_{info['name_parts'][i]}_{times[k]}.png"
                png = os.path.join(out_dir, name)
                if os.path.dirname(os.path.abspath(png)) != out_dir:  # a backstop: ids are checked
                    raise BadFile(f"PNG name {name!r} would be written outside OUTPUT_DIR")
                clouds = cloud_fraction(info, i, k)
                if clouds is not None and clouds > job.max_cloud:
                    result["cloudy"] += 1
                    result["stale_cloudy"] += os.path.exists(png)  # from a run with a looser limit
                    continue
                if os.path.exists(png):
                    result["existing"] += 1
                else:
                    rgb = read_rgb(info, i, k)
                    if is_no_data(rgb, info):
                        result["no_data"] += 1
                        continue
                    # A worker whose parent was killed stops before its next PNG. On Linux
                    # die_with_parent has already ended it; this covers the other platforms.
                    if job.parent_pid is not None and os.getppid() != job.parent_pid:
                        os._exit(1)
                    pixels = to_uint8(rgb, info["modality"], job.dn_offset, job.max_reflectance)
                    save_png(pixels, png, job.output_size, job.compress_level)
                    result["written"] += 1
                lat, lon = info["center_lat"], info["center_lon"]
                result["rows"].append([name, source_name, sample, times[k],
                                       "" if lat is None else lat[i],
                                       "" if lon is None else lon[i],
                                       "" if clouds is None else f"{clouds:.6f}"])
    except BadFile as error:
        result["error"] = str(error)
    except UserError:
        raise  # a PNG that cannot be written (disk full): every other file would fail the same way
    except Exception as error:  # a corrupt chunk, a bad CRC inside the zip, ...: name it, go on
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        if store is not None:
            store.close()
    return result


def _convert_star(args):
    return convert_file(*args)


def convert_all(files, job, workers):
    """convert_file over every (path, source name), here or in a pool of workers; the results."""
    results = []
    bar = tqdm(total=len(files), unit="file", dynamic_ncols=True)
    pool = None
    if workers == 1:
        outcomes = (convert_file(path, name, job) for path, name in files)
    else:
        # spawn, not fork: zarr 3 runs an event-loop thread, and forking a process that has one can
        # deadlock. die_with_parent: a SIGKILL of this process must not leave workers writing on.
        pool = mp.get_context("spawn").Pool(workers, initializer=die_with_parent)
        outcomes = pool.imap_unordered(_convert_star, [(path, name, job) for path, name in files])
    try:
        for result in outcomes:
            results.append(result)
            if result["error"]:
                tqdm.write(f"FAILED {result['file']}: {result['error']} (skipped)")
            bar.update(1)
            bar.set_postfix(written=sum(r["written"] for r in results))
    except BaseException:
        if pool is not None:
            pool.terminate()  # Ctrl-C or a full disk: stop the workers now
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return results


def write_manifest(results, path):
    rows = sorted(row for r in results for row in r["rows"])
    with atomic_write(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(["png", "source_file", "sample", "time", "center_lat", "center_lon",
                         "cloud_fraction"])
        writer.writerows(rows)
    print(f"saving manifest to {path} ({len(rows)} rows)")


def report(results, seconds):
    """Print the notes and the summary line; raise DataError if nothing could be converted."""
    total = {k: sum(r[k] for r in results)
             for k in ("samples", "written", "existing", "cloudy", "no_data", "stale_cloudy")}
    failed = [r for r in results if r["error"]]
    for r in results:
        for sample, indices in r["repeated"].items():
            renamed = f"{file_stem(r['file'])}_{sample}-<sample index>_<time>.png"
            print(f"note: {r['file']}: sample id {sample!r} is used by samples {indices}; the "
                  f"later ones were saved as {renamed}")
        if r["no_data"]:
            print(f"note: {r['file']}: {r['no_data']} patch(es) hold no data (every pixel DN 0 or "
                  "fill value) and were not written")
    if total["stale_cloudy"]:
        print(f"note: {total['stale_cloudy']} PNG(s) above MAX_CLOUD_FRACTION from an earlier run "
              f"are still in {OUTPUT_DIR} but not in the manifest; delete them (or the folder) if "
              "the training should not see them")
    for r in failed:
        print(f"failed: {r['file']}: {r['error']}")
    rate = f" ({total['written'] / max(seconds, 1e-9):.1f} patches/s)" if total["written"] else ""
    print(f"done: {len(results)} files ({len(failed)} failed), {total['samples']} samples, "
          f"{total['written']} written, {total['existing']} skipped (existing), "
          f"{total['cloudy']} skipped (cloudy), {total['no_data']} skipped (no data) "
          f"in {seconds:.1f} s{rate}")
    if len(failed) == len(results):
        raise DataError(f"every file under {INPUT_DIR} failed; nothing was converted")
    wanted, present = parse_seasons(SEASONS), sorted({t for r in results for t in r["times"]})
    if wanted is not None and not wanted <= set(present):
        message = (f"SEASONS = {SEASONS!r}: no file has time value(s) "
                   f"{', '.join(map(str, sorted(wanted - set(present))))}; the files have "
                   f"{', '.join(map(str, present))}")
        if not wanted & set(present):
            raise DataError(f"{message}, so nothing was converted. Pass --seasons=all or some of "
                            "those values.")
        print(f"warning: {message}")


def convert_ssl4eo():
    """MODE ssl4eo: every Zarr file of INPUT_DIR -> PNGs in OUTPUT_DIR and the MANIFEST."""
    # the inputs first: a wrong INPUT_DIR should not leave an empty output folder behind
    paths = find_zarr_files(INPUT_DIR) if os.path.isdir(INPUT_DIR) else []
    if not paths:
        state = ("does not exist" if not os.path.isdir(INPUT_DIR)
                 else "holds no *.zarr.zip file or *.zarr folder")
        raise DataError(f"INPUT_DIR {INPUT_DIR} {state}. Download SSL4EO-S12 v1.1 files with "
                        "`bash scripts/data.sh` (EuroSAT zips are unpacked by "
                        "`bash scripts/unzip_files.sh`), or point --input_dir at your copy.")
    prepare_output_dir(OUTPUT_DIR, lock_name="make_dataset")  # a second run on it is refused
    prepare_output_dir(os.path.dirname(os.path.abspath(MANIFEST)), setting="MANIFEST")

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = max(1, min(NUM_PROCESSES or cores or 1, len(paths)))
    job = Job(output_dir=OUTPUT_DIR, seasons=parse_seasons(SEASONS),
              rgb_bands=band_list(RGB_BANDS), modality=MODALITY, dn_offset=DN_OFFSET,
              max_reflectance=MAX_REFLECTANCE, output_size=OUTPUT_SIZE,
              max_cloud=MAX_CLOUD_FRACTION, compress_level=PNG_COMPRESS_LEVEL,
              parent_pid=os.getpid() if workers > 1 else None)
    files = [(path, os.path.relpath(path, INPUT_DIR)) for path in paths]
    print(f"converting {len(files)} Zarr file(s) from {INPUT_DIR} to {OUTPUT_DIR} "
          f"with {workers} process(es)")
    start = time.time()
    results = convert_all(files, job, workers)
    seconds = time.time() - start

    write_manifest(results, MANIFEST)
    report(results, seconds)


# -----------------------------------------------------------------------------
# EuroSAT split CSVs

_SPLIT_FILES = ("train.csv", "validation.csv", "test.csv")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def _natural_key(name):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def split_counts(n, fractions):
    """Per-class sizes: train and validation rounded, test the rest; each at least 1 if n >= 3."""
    n_train, n_val = int(n * fractions[0] + 0.5), int(n * fractions[1] + 0.5)
    n_val = min(n_val, n - n_train)
    if n >= 3:
        n_val = max(n_val, 1)
        n_train = min(n_train, n - n_val - 1)
    return n_train, n_val, n - n_train - n_val


def list_classes(root):
    """{class folder: its image names in natural order}. FIFOs and names that are not UTF-8 are
    left out, named in a warning; a class folder left with no image is refused by name, since the
    splits, written once, would silently lack its class."""
    try:
        classes = sorted(d for d in os.listdir(root)
                         if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    except OSError as error:
        raise DataError(f"cannot list the class folders of {root}: {error}") from None
    foreign = [shown(c) for c in classes if not is_utf8(c)]
    if foreign:
        raise DataError(f"class folder name(s) {foreign} in {root} are not valid UTF-8, and a "
                        "class name must be written to the split CSVs: rename them.")
    images, skipped = {}, []
    for c in classes:  # the class folder itself, not its sub-folders
        _, _, names = next(walk_data(os.path.join(root, c),
                                     lambda f: f.lower().endswith(_IMAGE_EXTENSIONS), skipped),
                           (None, None, []))
        images[c] = sorted(names, key=_natural_key)
    report_skipped(skipped, root)
    empty = [c for c in classes if not images[c]]
    if empty and len(empty) < len(classes):
        raise DataError(f"class folder(s) {empty} in {root} hold no usable image "
                        f"({', '.join(_IMAGE_EXTENSIONS)}), and splits without them would "
                        "silently have fewer classes. Add their images, or move the folder(s) out "
                        f"of {root}.")
    return {c: names for c, names in images.items() if names}


def read_label_map(path, classes):
    """An existing label_map.json, checked: a mapping giving every class its own integer label."""
    try:
        with open_regular(path, "r", encoding="utf-8") as f:
            label_map = json.load(f)
    except (OSError, ValueError) as error:  # ValueError: not JSON, or not UTF-8, or a FIFO
        raise DataError(f"{path} is not a readable JSON file ({error}). Fix it, or delete it to "
                        "have it written again (labels in alphabetical class order).") from None
    if not isinstance(label_map, dict):
        raise DataError(f"{path} holds a {type(label_map).__name__}, not a mapping from class "
                        "folder name to integer label. Fix it, or delete it to have it written "
                        "again.")
    missing = [c for c in classes if c not in label_map]
    if missing:
        raise DataError(f"{path} has no label for class folder(s) {missing}")
    wrong = {c: label_map[c] for c in classes if type(label_map[c]) is not int}
    if wrong:
        raise DataError(f"{path} gives non-integer label(s) {wrong}; labels are 0, 1, ...")
    uses = collections.Counter(label_map[c] for c in classes)
    shared = {c: label_map[c] for c in classes if uses[label_map[c]] > 1}
    if shared:
        raise DataError(f"{path} gives the same label to several classes ({shared}); each needs "
                        "its own")
    return label_map


def write_eurosat_splits(root, seed):
    """Write the missing split CSVs and label_map.json in root, split by TRAIN_FRACTION and
    VAL_FRACTION; never overwrite. Returns 0 (scripts/make_demo_data.py checks it); a problem
    raises DataError."""
    import pandas as pd

    if not os.path.isdir(root):
        state = "is a file, not a folder" if os.path.exists(root) else "does not exist"
        raise DataError(f"EUROSAT_DIR {root} {state}. Download and unpack EuroSAT with "
                        "`bash scripts/data.sh` (or `bash scripts/unzip_files.sh` if the zip is "
                        "already there), or set --eurosat_dir.")
    csv_paths = [os.path.join(root, f) for f in _SPLIT_FILES]
    map_path = os.path.join(root, "label_map.json")
    present = [os.path.basename(p) for p in csv_paths + [map_path] if os.path.exists(p)]
    if len(present) == 4:
        print(f"EuroSAT splits: {', '.join(present)} exist in {root} and were kept")
        return 0
    images = list_classes(root)
    classes = sorted(images)
    if not classes:
        raise DataError(f"no class folders with images in {root}. Unpack EuroSAT there with "
                        "`bash scripts/unzip_files.sh` (after `bash scripts/data.sh`).")
    if os.path.exists(map_path):
        label_map = read_label_map(map_path, classes)
        print(f"EuroSAT splits: {map_path} exists and was kept")
    else:
        label_map = {c: i for i, c in enumerate(classes)}  # alphabetical, as ImageFolder does
        with atomic_write(map_path, "w") as f:
            f.write(json.dumps(label_map, indent=2) + "\n")
        print(f"saving label map to {map_path} ({len(classes)} classes)")
    existing_csv = [os.path.basename(p) for p in csv_paths if os.path.exists(p)]
    if existing_csv:
        if len(existing_csv) < 3:
            # a fresh split could overlap the kept files, and test images would leak into training
            raise DataError(f"{root} has {', '.join(existing_csv)} but not all three split CSVs; "
                            "refusing to write a new split next to them. Restore the missing "
                            "ones, or delete all three.")
        print(f"EuroSAT splits: {', '.join(existing_csv)} exist in {root} and were kept")
        return 0
    rng = np.random.default_rng(seed)
    parts = ([], [], [])
    for c in classes:
        order = rng.permutation(len(images[c]))
        n_train, n_val, _ = split_counts(len(order), (TRAIN_FRACTION, VAL_FRACTION))
        chosen = (order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:])
        for part, indices in zip(parts, chosen):
            part += [(f"{c}/{images[c][j]}", label_map[c], c) for j in sorted(indices)]
    for part, path in zip(parts, csv_paths):
        frame = pd.DataFrame(part, columns=["Filename", "Label", "ClassName"])
        with atomic_write(path, "w") as f:
            f.write(frame.to_csv())  # a leading unnamed index column, as the published CSVs have
        print(f"saving {path} ({len(frame)} images)")
    return 0


# -----------------------------------------------------------------------------

def main():
    config, _ = configure(globals())
    check_constants(config)
    if MODE in ("eurosat_splits", "all"):
        write_eurosat_splits(EUROSAT_DIR, SPLIT_SEED)
    if MODE in ("ssl4eo", "all"):
        convert_ssl4eo()


if __name__ == "__main__":
    run(main)
