"""Write small fake data in the real on-disk formats, for the demo and the tests (a few seconds on
2 cores).

- demo_data/ssl4eo/train/S2L1C/ssl4eos12_train_seasonal_data_00000N.zarr.zip: SSL4EO-S12 v1.1 files
  as described in ../shared/docs/ssl4eo-s12-v1.1.md (Zarr format 2 inside a zip, consolidated
  metadata, int16 DN with the +1000 offset, 13 named bands, 4 seasons, one chunk per timestamp),
  with smooth land-like textures, a strip of no-data (DN 0) and a few saturated pixels so that the
  PNG conversion is exercised. Only smaller (ZARR_SIZE, default 64 px).
- demo_data/EuroSAT/<Class>/<Class>_<n>.jpg: the 10 EuroSAT classes with class-dependent colour and
  stripes (so a linear probe can beat chance), plus train.csv / validation.csv / test.csv /
  label_map.json in the real format.

    python scripts/make_demo_data.py   # it prints the make_dataset.py command that converts the
                                       # fake Zarr files
Generated data is overwritten on every run.
"""
import os
import shutil
import sys
import tempfile
import zipfile

import numpy as np
from PIL import Image

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
from runtime import configure  # noqa: E402

# -----------------------------------------------------------------------------
OUT_DIR = "demo_data"  # everything goes under this folder (relative to the current directory)
N_ZARR_FILES = 2  # number of fake SSL4EO-S12 .zarr.zip files
SAMPLES_PER_FILE = 4  # locations per file (real files: 64)
ZARR_SIZE = 64  # patch side in pixels (real files: 264; kept small for speed)
MODALITY = "S2L1C"  # "S2L1C" (int16 DN + 1000), "S2L2A" (12 bands) or "S2RGB" (uint8, 3 bands)
EUROSAT_PER_CLASS = 20  # JPEGs per class (split 70/20/10 -> 14/4/2)
IMAGE_SIZE = 64  # EuroSAT image side in pixels (real: 64)
SEED = 0  # everything generated is a function of this seed
# -----------------------------------------------------------------------------

S2L1C_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
               "B12"]
BAND_NAMES = {"S2L1C": S2L1C_BANDS, "S2L2A": [b for b in S2L1C_BANDS if b != "B10"],
              "S2RGB": ["B04", "B03", "B02"]}
# rough surface reflectance per band of three covers; each fake patch blends them with smooth
# random weights
_SPECTRA = {  # B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12
    "vegetation": [.06, .04, .07, .04, .10, .25, .30, .33, .34, .10, .003, .18, .09],
    "soil": [.09, .10, .14, .18, .21, .23, .25, .26, .27, .10, .004, .32, .26],
    "water": [.07, .06, .05, .03, .02, .015, .01, .01, .01, .005, .002, .005, .003],
}
EUROSAT_CLASSES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
                   "Pasture", "PermanentCrop", "River", "Residential", "SeaLake"]


# -----------------------------------------------------------------------------
# SSL4EO-S12 v1.1 Zarr files

def _texture(rng, size):
    """A smooth field in about [-1, 1]: a few random low-frequency waves (fields, slopes,
    rivers)."""
    yy, xx = np.meshgrid(np.linspace(0, 1, size, dtype=np.float32),
                         np.linspace(0, 1, size, dtype=np.float32), indexing="ij")
    field = np.zeros((size, size), np.float32)
    for _ in range(4):
        fy, fx = rng.uniform(0.5, 6, 2)
        field += np.sin(2 * np.pi * (fy * yy + fx * xx)
                        + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    return field / 4


def fake_bands(rng, n_samples, size, names, modality, n_times=4):
    """(sample, time, band, y, x) pixels: int16 DN (reflectance x 10000 + 1000) or uint8 for
    S2RGB."""
    dtype = np.uint8 if modality == "S2RGB" else np.int16
    out = np.empty((n_samples, n_times, len(names), size, size), dtype)
    spectra = {k: np.array([v[S2L1C_BANDS.index(n)] for n in names], np.float32)[:, None, None]
               for k, v in _SPECTRA.items()}
    for i in range(n_samples):
        veg, soil = np.exp(2 * _texture(rng, size)), np.exp(2 * _texture(rng, size))
        water = np.exp(3 * _texture(rng, size) - 2)
        for t in range(n_times):
            green = 1 + 0.3 * np.sin(np.pi * t / 2)  # more vegetation in some seasons
            refl = (spectra["vegetation"] * veg * green + spectra["soil"] * soil
                    + spectra["water"] * water) / (
                veg * green + soil + water) + rng.normal(0, 0.004, (len(names), size, size))
            if modality == "S2RGB":
                pixels = np.clip(refl / 0.3 * 255, 0, 255)
            else:
                pixels = np.clip(refl * 10000 + 1000, 1, 32767)
            pixels = pixels.astype(dtype)
            pixels[:, -2:, : size // 4] = 0  # a strip of no-data along the bottom edge
            if modality != "S2RGB":
                # saturated (clouds, glint)
                pixels[:, rng.integers(0, size, 3), rng.integers(0, size, 3)] = 20000
            out[i, t] = pixels
    return out


def _string_array(group, name, values, dims, variable_length):
    values = np.asarray(values)
    dtype = str if variable_length else f"<U{max(1, max(len(v) for v in values.ravel()))}"
    array = group.create_array(name, shape=values.shape, dtype=dtype, chunks=values.shape,
                               attributes={"_ARRAY_DIMENSIONS": dims})
    array[...] = values.astype(object) if variable_length else values.astype(dtype)


def write_ssl4eo_zarr(path, n_samples=4, size=264, modality="S2L1C", seed=0, as_zip=True,
                      band_order=None, variable_length_strings=False, drop=(), drop_bands=(),
                      bands=None, sample_ids=None, cloud_fractions=None, n_times=4):
    """Write one SSL4EO-S12 v1.1 file (Zarr format 2) to `path` (.zarr.zip if as_zip else a .zarr
    folder).

    band_order: band names in the order to store them (default the real order for the modality).
    drop: variable names to leave out (e.g. ["bands"]);
    drop_bands: band names to leave out (e.g. ["B04"]).
    bands: explicit (sample, time, band, y, x) pixels in `band_order`; else smooth fake land.
    cloud_fractions: (sample, time) fraction of each patch covered by cloud_mask = 1 (default
    about 10 %).
    Returns the pixels written, in stored band order.
    """
    import zarr

    rng = np.random.default_rng(seed)
    names = list(band_order) if band_order is not None else list(BAND_NAMES[modality])
    names = [n for n in names if n not in drop_bands]
    if bands is None:
        bands = fake_bands(rng, n_samples, size, names, modality, n_times)
    n_samples, n_times, _, size, _ = bands.shape
    if sample_ids is None:
        sample_ids = [f"{seed * 1000 + 80717 + 37 * i:07d}" for i in range(n_samples)]
    ids = list(sample_ids)
    if cloud_fractions is None:
        cloud_fractions = np.full((n_samples, n_times), 0.1)
    cloud = np.zeros((n_samples, n_times, size, size), np.uint8)
    for i in range(n_samples):
        for t in range(n_times):
            # top rows cloudy
            cloud[i, t].reshape(-1)[: int(round(cloud_fractions[i][t] * size * size))] = 1

    work = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(path)) or ".")
    root = os.path.join(work, "store.zarr") if as_zip else path
    try:
        if not as_zip and os.path.exists(path):
            shutil.rmtree(path)
        g = zarr.open_group(root, mode="w", zarr_format=2)

        def numeric(name, values, dims, dtype, chunks=None):
            if name in drop:
                return
            values = np.asarray(values, dtype=dtype)
            array = g.create_array(name, shape=values.shape, dtype=dtype,
                                   chunks=chunks or values.shape,
                                   attributes={"_ARRAY_DIMENSIONS": dims})
            array[...] = values

        if "bands" not in drop:
            # one chunk per (sample, timestamp), as in the real files: one season decodes alone
            attributes = {"_ARRAY_DIMENSIONS": ["sample", "time", "band", "y", "x"],
                          # as xarray writes
                          "coordinates": "center_lat center_lon crs file_id sample_id time_ x_ y_"}
            array = g.create_array("bands", shape=bands.shape, dtype=bands.dtype,
                                   chunks=(1, 1, bands.shape[2], size, size),
                                   attributes=attributes)
            for i in range(n_samples):
                array[i] = bands[i]
        numeric("cloud_mask", cloud, ["sample", "time", "y", "x"], np.uint8, (1, 1, size, size))
        if "band" not in drop:
            _string_array(g, "band", names, ["band"], variable_length_strings)
        if "sample" not in drop:
            _string_array(g, "sample", ids, ["sample"], variable_length_strings)
        numeric("time", np.arange(n_times), ["time"], np.int64)
        numeric("x", np.arange(size), ["x"], np.int64)
        numeric("y", np.arange(size), ["y"], np.int64)
        numeric("center_lat", rng.uniform(-60, 70, n_samples), ["sample"], np.float64)
        numeric("center_lon", rng.uniform(-180, 180, n_samples), ["sample"], np.float64)
        numeric("crs", rng.integers(32601, 32660, n_samples), ["sample"], np.int64)
        # the real files' file_id is per (sample, time) (a Sentinel-2 product id), like sample_id
        if "file_id" not in drop:
            _string_array(g, "file_id",
                          [[f"20200{t + 1}16T023001_20200{t + 1}16T022955_T51TXH"
                            for t in range(n_times)]
                           for _ in ids], ["sample", "time"], variable_length_strings)
        if "sample_id" not in drop:
            _string_array(g, "sample_id", [[f"{s}_{t}" for t in range(n_times)] for s in ids],
                          ["sample", "time"], variable_length_strings)
        # zarr 3 writes datetime64 in format 2 (dtype "<M8[ns]"), as xarray does
        days = np.array([[f"2020-{3 * t + 2:02d}-{10 + i % 15:02d}T10:30:00"
                          for t in range(n_times)]
                         for i in range(n_samples)], dtype="datetime64[ns]")
        numeric("time_", days, ["sample", "time"], "datetime64[ns]")
        east, north = rng.uniform(2e5, 8e5, n_samples), rng.uniform(1e6, 9e6, n_samples)
        numeric("x_", east[:, None] + 10.0 * np.arange(size), ["sample", "x"], np.float64)
        numeric("y_", north[:, None] - 10.0 * np.arange(size), ["sample", "y"], np.float64)
        zarr.consolidate_metadata(root)
        if as_zip:
            # a plain Zarr v2 layout at the zip root; chunks are already compressed, so store them
            # as they are
            tmp_zip = os.path.join(work, "store.zip")
            with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_STORED) as z:
                for dirpath, _, filenames in os.walk(root):
                    for f in sorted(filenames):
                        full = os.path.join(dirpath, f)
                        z.write(full, os.path.relpath(full, root).replace(os.sep, "/"))
            os.replace(tmp_zip, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return bands


# -----------------------------------------------------------------------------
# EuroSAT-like JPEGs

def eurosat_image(rng, class_index, size):
    """Class-specific mean colour, stripe orientation and frequency, plus noise: linearly separable
    on average."""
    # the class look is fixed, the noise is per image
    hue = np.random.default_rng(1000 + class_index)
    colour = hue.uniform(40, 200, 3)
    angle = np.pi * class_index / 10
    freq = 2 + class_index % 5 * 2
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) / size + phase)
    image = (colour[None, None] + 35 * stripes[..., None] + rng.normal(0, 12, (size, size, 3))
             + rng.normal(0, 10, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_eurosat_like(root, n_per_class=20, size=64, seed=0):
    """10 class folders of JPEGs plus split CSVs and label_map.json in the real format (rewritten
    every time)."""
    sys.path.insert(0, _ROOT)
    from make_dataset import write_eurosat_splits

    rng = np.random.default_rng(seed)
    for k, name in enumerate(EUROSAT_CLASSES):
        folder = os.path.join(root, name)
        os.makedirs(folder, exist_ok=True)
        for n in range(1, n_per_class + 1):
            Image.fromarray(eurosat_image(rng, k, size)).save(
                os.path.join(folder, f"{name}_{n}.jpg"), quality=95)
    # generated data: start afresh
    for f in ("train.csv", "validation.csv", "test.csv", "label_map.json"):
        if os.path.exists(os.path.join(root, f)):
            os.remove(os.path.join(root, f))
    if write_eurosat_splits(root, seed=seed) != 0:
        raise RuntimeError(f"could not write the split CSVs in {root}")


def main():
    configure(globals())
    zarr_dir = os.path.join(OUT_DIR, "ssl4eo", "train", MODALITY)
    os.makedirs(zarr_dir, exist_ok=True)
    for n in range(1, N_ZARR_FILES + 1):
        path = os.path.join(zarr_dir, f"ssl4eos12_train_seasonal_data_{n:06d}.zarr.zip")
        write_ssl4eo_zarr(path, n_samples=SAMPLES_PER_FILE, size=ZARR_SIZE, modality=MODALITY,
                          seed=SEED + n)
    print(f"wrote {N_ZARR_FILES} SSL4EO-S12 v1.1 {MODALITY} file(s) of {SAMPLES_PER_FILE} "
          f"samples x 4 seasons at "
          f"{ZARR_SIZE} px to {zarr_dir}")
    eurosat = os.path.join(OUT_DIR, "EuroSAT")
    write_eurosat_like(eurosat, n_per_class=EUROSAT_PER_CLASS, size=IMAGE_SIZE, seed=SEED)
    print(f"wrote {len(EUROSAT_CLASSES)} x {EUROSAT_PER_CLASS} EuroSAT-like JPEGs with split CSVs "
          f"to {eurosat}")
    print(f"next: python make_dataset.py --input_dir={zarr_dir} --output_dir={OUT_DIR}/pngs "
          f"--manifest={OUT_DIR}/manifest.csv")


if __name__ == "__main__":
    main()
