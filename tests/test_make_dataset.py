"""make_dataset.py and scripts/make_demo_data.py on tiny generated files.

The SSL4EO-S12 v1.1 files are written here in Zarr format 2 as ../shared/docs/ssl4eo-s12-v1.1.md
describes them (int16 DN with the +1000 offset, named bands, fixed-width or variable-length string
coordinates, consolidated metadata, inside a zip or as a folder). CPU only, well under a minute on
2 cores.
"""
import csv
import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import make_dataset as md  # noqa: E402
import runtime  # noqa: E402
from conftest import children_of, run_in_process  # noqa: E402
from make_demo_data import BAND_NAMES, EUROSAT_CLASSES, write_ssl4eo_zarr  # noqa: E402

L1C = BAND_NAMES["S2L1C"]
# DN -> expected 8-bit value with the default stretch:
# floor(clip((DN - 1000) / 10000 / 0.3, 0, 1) * 255 + 0.5)
KNOWN = {500: 0, 1000: 0, 1006: 1, 1012: 1, 1018: 2, 1600: 51, 2200: 102, 2800: 153, 2999: 170,
         3400: 204, 4000: 255, 20000: 255, 32767: 255, -5: 0}


def convert(input_dir, tmp_path, capsys=None, **overrides):
    """Run the ssl4eo mode in this process (NUM_PROCESSES=1);
    return (status, printed text, output dir).

    The constants are set on the module, as configure() does, and put back afterwards; a DataError
    (what run(main) turns into `error: ...` and exit status 1) becomes status 1."""
    settings = dict(INPUT_DIR=str(input_dir), OUTPUT_DIR=str(tmp_path / "png"),
                    MANIFEST=str(tmp_path / "manifest.csv"), NUM_PROCESSES=1)
    settings.update({k.upper(): v for k, v in overrides.items()})
    saved = {k: getattr(md, k) for k in settings}
    try:
        for k, v in settings.items():
            setattr(md, k, v)
        md.convert_ssl4eo()
        status = 0
    except md.UserError as error:
        print(f"error: {error}", file=sys.stderr)
        status = 1
    finally:
        for k, v in saved.items():
            setattr(md, k, v)
        # the OUTPUT_DIR lock, which a real run holds until it exits
        for handle in runtime._held_locks:
            handle.close()
        runtime._held_locks.clear()
    text = ""
    if capsys is not None:
        captured = capsys.readouterr()
        text = captured.out + captured.err
    return status, text, tmp_path / "png"


def pngs_in(folder):
    """The PNG names in folder (not the hidden lock and temp files)."""
    return sorted(f for f in os.listdir(folder) if not f.startswith("."))


def png(folder, stem, sample, t):
    return np.asarray(Image.open(folder / f"{stem}_{sample}_{t}.png"))


def summary(text):
    """The numbers of the final `done:` line."""
    line = [l for l in text.splitlines() if l.startswith("done:")][-1]
    words = line.replace(",", "").replace("(", "").split()
    return {"written": int(words[words.index("written") - 1]),
            "existing": int(words[words.index("skipped") - 1]),
            "failed": int(words[words.index("failed)") - 1]),
            "cloudy": int(line.split(" skipped (cloudy)")[0].split()[-1]),
            "no_data": int(line.split(" skipped (no data)")[0].split()[-1])}


# -----------------------------------------------------------------------------
# pixels

def test_stretch_of_known_values_is_exact(tmp_path, capsys):
    dns = np.array(list(KNOWN), np.int16)
    size = 4
    # other bands hold a value that must not show up
    bands = np.full((2, 4, 13, size, size), 7777, np.int16)
    grid = np.resize(dns, size * size).reshape(size, size)
    for c, name in enumerate(["B04", "B03", "B02"]):
        bands[:, :, L1C.index(name)] = np.roll(grid, c, axis=1)  # different values per channel
    bands[1, 2, L1C.index("B03"), 0, 0] = 0  # no-data in a single band blacks out the whole pixel
    src = tmp_path / "in"
    src.mkdir()
    write_ssl4eo_zarr(str(src / "f_000001.zarr.zip"), bands=bands,
                      sample_ids=["0080717", "0060573"])
    status, text, out = convert(src, tmp_path, capsys)
    assert status == 0, text
    expected = np.vectorize(KNOWN.get)(grid)
    for i, sample in enumerate(["0080717", "0060573"]):
        for t in range(4):
            image = png(out, "f_000001", sample, t)
            assert image.shape == (size, size, 3) and image.dtype == np.uint8
            want = np.stack([np.roll(expected, c, axis=1) for c in range(3)], axis=-1)
            if (i, t) == (1, 2):
                want[0, 0] = 0
            np.testing.assert_array_equal(image, want)
    assert summary(text)["written"] == 8


def test_no_data_and_saturation_never_wrap():
    dn = np.array([[[0, 32767, -32768, 1000, 999]]] * 3, np.int16)
    out = md.to_uint8(dn, "S2L1C", dn_offset=1000, max_reflectance=0.3)
    assert out.shape == (1, 5, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 255, 0, 0, 0])
    wide = md.to_uint8(np.full((3, 2, 2), 2500, np.int16), "S2L1C", 1000, max_reflectance=0.15)
    assert (wide == 255).all()


def test_bands_are_selected_by_name_with_shuffled_order_and_variable_length_strings(tmp_path,
                                                                                     capsys):
    order = list(np.random.default_rng(3).permutation(L1C))
    assert order.index("B04") != L1C.index("B04")
    size = 6
    bands = np.full((1, 4, 13, size, size), 4000, np.int16)
    for name, dn in (("B04", 1600), ("B03", 2200), ("B02", 2800)):
        bands[:, :, order.index(name)] = dn
    src = tmp_path / "in"
    src.mkdir()
    write_ssl4eo_zarr(str(src / "shuffled.zarr"), bands=bands, band_order=order, as_zip=False,
                      variable_length_strings=True, sample_ids=["0000042"])
    status, text, out = convert(src, tmp_path, capsys)
    assert status == 0, text
    image = png(out, "shuffled", "0000042", 3)
    assert (image.reshape(-1, 3) == [51, 102, 153]).all()


def test_s2rgb_is_taken_as_is(tmp_path, capsys):
    rng = np.random.default_rng(0)
    bands = rng.integers(0, 256, (1, 4, 3, 8, 8)).astype(np.uint8)
    src = tmp_path / "in"
    src.mkdir()
    # stored blue, green, red: the reader must still put B04 first
    write_ssl4eo_zarr(str(src / "rgb.zarr.zip"), modality="S2RGB", bands=bands,
                      band_order=["B02", "B03", "B04"], sample_ids=["0000007"])
    status, text, out = convert(src, tmp_path, capsys)
    assert status == 0, text
    for t in range(4):
        np.testing.assert_array_equal(png(out, "rgb", "0000007", t),
                                      bands[0, t, ::-1].transpose(1, 2, 0))


def test_seasons_and_output_size(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    write_ssl4eo_zarr(str(src / "s.zarr.zip"), n_samples=2, size=40,
                      sample_ids=["0000001", "0000002"])
    status, text, out = convert(src, tmp_path, capsys, seasons="0,2", output_size=24)
    assert status == 0, text
    assert pngs_in(out) == [f"s_{s}_{t}.png" for s in ("0000001", "0000002") for t in (0, 2)]
    assert Image.open(out / "s_0000001_2.png").size == (24, 24)


# -----------------------------------------------------------------------------
# manifest, clouds, idempotence, bad files

def test_manifest_and_cloud_filter(tmp_path, capsys):
    import zarr

    src = tmp_path / "in"
    src.mkdir()
    clouds = np.array([[0.0, 0.25, 0.75, 1.0], [0.5, 0.5, 0.5, 0.9]])
    write_ssl4eo_zarr(str(src / "c.zarr.zip"), n_samples=2, size=16, cloud_fractions=clouds,
                      sample_ids=["0000011", "0000022"])
    write_ssl4eo_zarr(str(src / "nocloud.zarr.zip"), n_samples=1, size=16, drop=["cloud_mask"],
                      sample_ids=["0000033"], seed=5)
    status, text, out = convert(src, tmp_path, capsys, max_cloud_fraction=0.5)
    assert status == 0, text
    counts = summary(text)
    # 0.75, 1.0 and 0.9 are above 0.5; 0.5 is kept
    assert counts["cloudy"] == 3 and counts["written"] == 9
    rows = list(csv.DictReader(open(tmp_path / "manifest.csv")))
    assert list(rows[0]) == ["png", "source_file", "sample", "time", "center_lat", "center_lon",
                             "cloud_fraction"]
    assert len(rows) == 9 and sorted(r["png"] for r in rows) == pngs_in(out)
    store = zarr.storage.ZipStore(str(src / "c.zarr.zip"), mode="r")
    lat = zarr.open_group(store, mode="r")["center_lat"][:]
    store.close()
    by_name = {r["png"]: r for r in rows}
    row = by_name["c_0000022_1.png"]
    assert row["source_file"] == "c.zarr.zip" and row["sample"] == "0000022" and row["time"] == "1"
    assert float(row["center_lat"]) == pytest.approx(lat[1], abs=1e-9)
    assert float(row["cloud_fraction"]) == pytest.approx(0.5, abs=1e-3)
    assert float(by_name["c_0000011_1.png"]["cloud_fraction"]) == pytest.approx(0.25, abs=1e-3)
    assert "c_0000011_2.png" not in by_name and not (out / "c_0000011_2.png").exists()
    assert by_name["nocloud_0000033_0.png"]["cloud_fraction"] == ""


def test_rerun_skips_existing_and_resumes_after_a_kill(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for n in (1, 2):
        write_ssl4eo_zarr(str(src / f"f{n}.zarr.zip"), n_samples=2, size=16, seed=n)
    status, text, out = convert(src, tmp_path, capsys)
    assert status == 0 and summary(text)["written"] == 16
    before = {f: os.stat(out / f).st_mtime_ns for f in pngs_in(out)}
    victim = sorted(before)[5]
    reference = (out / victim).read_bytes()
    os.remove(out / victim)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = out / f".{victim}.tmp{dead}"  # what a killed run leaves behind
    stale.write_bytes(b"half a png")
    status, text, out = convert(src, tmp_path, capsys)
    assert status == 0, text
    counts = summary(text)
    assert counts["written"] == 1 and counts["existing"] == 15
    assert "temporary file(s) of an interrupted run" in text and not stale.exists()
    assert (out / victim).read_bytes() == reference  # deterministic: the same bytes again
    after = {f: os.stat(out / f).st_mtime_ns for f in pngs_in(out)}
    assert set(after) == set(before)
    assert all(after[f] == before[f] for f in before if f != victim)


def _write_four_dim_bands(path):
    import zarr

    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    a = g.create_array("bands", shape=(1, 13, 8, 8), dtype="int16",
                       attributes={"_ARRAY_DIMENSIONS": ["sample", "band", "y", "x"]})
    a[...] = 1500
    b = g.create_array("band", shape=(13,), dtype="<U3",
                       attributes={"_ARRAY_DIMENSIONS": ["band"]})
    b[...] = np.array(L1C)
    zarr.consolidate_metadata(str(path))


def test_bad_files_are_named_and_skipped_while_others_convert(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    write_ssl4eo_zarr(str(src / "good.zarr.zip"), n_samples=1, size=16, sample_ids=["0000001"])
    write_ssl4eo_zarr(str(tmp_path / "whole.zarr.zip"), n_samples=1, size=16)
    data = (tmp_path / "whole.zarr.zip").read_bytes()
    (src / "truncated.zarr.zip").write_bytes(data[: len(data) // 2])
    write_ssl4eo_zarr(str(src / "nobands.zarr"), n_samples=1, size=16, as_zip=False,
                      drop=["bands"])
    write_ssl4eo_zarr(str(src / "nob04.zarr.zip"), n_samples=1, size=16, drop_bands=["B04"])
    _write_four_dim_bands(src / "fourdims.zarr")
    status, text, out = convert(src, tmp_path, capsys)
    assert status == 0, text
    assert summary(text)["failed"] == 4 and summary(text)["written"] == 4
    failed = {os.path.basename(l[len("failed: "):].split(": ", 1)[0]): l for l in text.splitlines()
              if l.startswith("failed: ")}
    assert set(failed) == {"truncated.zarr.zip", "nobands.zarr", "nob04.zarr.zip", "fourdims.zarr"}
    assert "zip" in failed["truncated.zarr.zip"] and "truncated" in failed["truncated.zarr.zip"]
    assert "no `bands` array" in failed["nobands.zarr"]
    assert "'B04'" in failed["nob04.zarr.zip"]
    assert "4 dims" in failed["fourdims.zarr"]
    assert pngs_in(out) == [f"good_0000001_{t}.png" for t in range(4)]


def test_exit_status_when_nothing_can_be_converted(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    run = subprocess.run([sys.executable, "make_dataset.py", f"--input_dir={missing}",
                          f"--output_dir={tmp_path / 'o'}", f"--manifest={tmp_path / 'm.csv'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert str(missing) in run.stderr and "scripts/data.sh" in run.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.zarr.zip").write_bytes(b"PK\x03\x04 not really a zip")
    status, text, _ = convert(bad, tmp_path, capsys)
    assert status == 1 and "x.zarr.zip" in text and "every file" in text


@pytest.mark.slow
def test_two_processes_give_the_same_pngs_as_one(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for n in (1, 2, 3):
        write_ssl4eo_zarr(str(src / f"p{n}.zarr.zip"), n_samples=2, size=24, seed=n)
    status, text, out1 = convert(src, tmp_path, capsys)
    assert status == 0 and summary(text)["written"] == 24
    out2 = tmp_path / "out2"
    run = subprocess.run([sys.executable, "make_dataset.py", f"--input_dir={src}",
                          f"--output_dir={out2}", f"--manifest={tmp_path / 'm2.csv'}",
                          "--num_processes=2"], cwd=ROOT,
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert "with 2 process(es)" in run.stdout and "24 written" in run.stdout
    pngs = [{f: (out / f).read_bytes() for f in pngs_in(out)} for out in (out1, out2)]
    assert pngs[0] == pngs[1]
    assert (tmp_path / "manifest.csv").read_text() == (tmp_path / "m2.csv").read_text()


def test_generated_file_follows_the_spec(tmp_path):
    import zarr

    path = tmp_path / "spec.zarr.zip"
    write_ssl4eo_zarr(str(path), n_samples=2, size=16)
    names = zipfile.ZipFile(path).namelist()
    # plain v2 layout at the root
    assert ".zmetadata" in names and ".zgroup" in names and "bands/.zarray" in names
    store = zarr.storage.ZipStore(str(path), mode="r")
    g = zarr.open_group(store, mode="r")
    assert g.metadata.zarr_format == 2
    bands = g["bands"]
    assert (bands.dtype == np.int16 and bands.shape == (2, 4, 13, 16, 16)
            and bands.chunks == (1, 1, 13, 16, 16))
    assert md.strings(g["band"][:]) == L1C
    for name in ("bands", "band", "sample", "time", "x", "y", "center_lat", "center_lon", "crs",
                 "cloud_mask", "file_id", "sample_id", "time_", "x_", "y_"):
        assert "_ARRAY_DIMENSIONS" in g[name].attrs, name
    assert str(np.asarray(g["sample_id"][:])[1, 3]) == md.strings(g["sample"][:])[1] + "_3"
    valid = bands[:][bands[:] > 0]
    assert 1000 < np.median(valid) < 4000  # reflectance x 10000 + 1000 for land
    store.close()


# -----------------------------------------------------------------------------
# bad input: sample ids, repeated ids, missing chunks, no-data patches, foreign dtypes

def test_sample_ids_with_path_parts_are_refused(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "png"
    src.mkdir()
    write_ssl4eo_zarr(str(src / "good.zarr.zip"), n_samples=1, size=8, sample_ids=["0000001"])
    bad = {"esc": "../../../escaped", "slash": "a/b", "absolute": "/tmp/x", "backslash": "a\\b",
           "empty": "", "nul": "a\x00b", "dots": "..", "hidden": ".x"}
    for stem, sample in bad.items():
        write_ssl4eo_zarr(str(src / f"{stem}.zarr.zip"), n_samples=2, size=8,
                          sample_ids=["0000002", sample], variable_length_strings=stem == "nul")
    # with it, the unchecked name esc_../../../escaped_0.png escaped
    (out / "esc_..").mkdir(parents=True)
    status, text, _ = convert(src, tmp_path, capsys)
    assert status == 0, text
    assert summary(text)["failed"] == len(bad) and summary(text)["written"] == 4
    failed = [l for l in text.splitlines() if l.startswith("failed: ")]
    for stem, sample in bad.items():
        line = next(l for l in failed if f"/{stem}.zarr.zip: " in l)
        assert f"sample id {sample!r}" in line and "not a plain name" in line
    everywhere = [os.path.relpath(os.path.join(d, f), tmp_path)
                  for d, _, files in os.walk(tmp_path)
                  for f in files if f.endswith(".png")]
    assert sorted(everywhere) == [f"png/good_0000001_{t}.png" for t in range(4)]
    for sample in bad.values():
        with pytest.raises(md.BadFile):
            md.png_name_parts(["0000001", sample])
    assert md.png_name_parts(["0080717", "a.b", "x-1_y"]) == (["0080717", "a.b", "x-1_y"], {})


def test_repeated_sample_ids_keep_every_sample(tmp_path, capsys):
    bands = np.zeros((3, 4, 13, 4, 4), np.int16)
    for i, dn in enumerate((1600, 2200, 2800)):  # one grey level per sample: 51, 102, 153
        bands[i] = dn
    src = tmp_path / "in"
    src.mkdir()
    write_ssl4eo_zarr(str(src / "d.zarr.zip"), bands=bands,
                      sample_ids=["0000005", "0000005", "0000006"])
    status, text, out = convert(src, tmp_path, capsys)
    assert status == 0, text
    assert summary(text)["written"] == 12
    assert pngs_in(out) == sorted(f"d_{s}_{t}.png" for s in ("0000005", "0000005-1", "0000006")
                                  for t in range(4))
    assert ((png(out, "d", "0000005", 0) == 51).all()
            and (png(out, "d", "0000005-1", 0) == 102).all())
    assert ("sample id '0000005' is used by samples [0, 1]" in text
            and "d_0000005-<sample index>" in text)
    rows = list(csv.DictReader(open(tmp_path / "manifest.csv")))
    assert len(rows) == 12 and len({r["png"] for r in rows}) == 12
    # the manifest keeps the id as the file has it
    assert sum(r["sample"] == "0000005" for r in rows) == 8


def _declare_more_samples(folder, n_samples):
    """Edit a .zarr folder's metadata so that `bands` declares n_samples,
    far more than it stores."""
    for name, key in (("bands/.zarray", None), (".zmetadata", "bands/.zarray")):
        path = folder / name
        meta = json.loads(path.read_text())
        (meta["metadata"][key] if key else meta)["shape"][0] = n_samples
        path.write_text(json.dumps(meta))


def test_missing_chunks_are_refused_or_skipped_as_no_data(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    # declared 60,000 samples, 2 stored: once 240,000 black PNGs; now refused at once
    write_ssl4eo_zarr(str(src / "huge.zarr"), n_samples=2, size=8, as_zip=False,
                      drop=["sample", "cloud_mask", "center_lat", "center_lon"])
    _declare_more_samples(src / "huge.zarr", 60_000)
    # one chunk (sample 1, time 2) lost:
    # that patch reads as fill values and is skipped, the rest convert
    write_ssl4eo_zarr(str(src / "holed.zarr"), n_samples=2, size=8, as_zip=False,
                      sample_ids=["0000001", "0000002"])
    os.remove(src / "holed.zarr" / "bands" / "1.2.0.0.0")
    status, text, out = convert(src, tmp_path, capsys)
    assert status == 0, text
    counts = summary(text)
    assert counts["failed"] == 1 and counts["written"] == 7 and counts["no_data"] == 1
    line = next(l for l in text.splitlines() if l.startswith("failed: "))
    assert "huge.zarr" in line and "60000" in line and "stores only 8 chunks" in line
    assert pngs_in(out) == sorted(f"holed_{s}_{t}.png" for s in ("0000001", "0000002")
                                  for t in range(4) if (s, t) != ("0000002", 2))
    assert len(list(csv.DictReader(open(tmp_path / "manifest.csv")))) == 7


def test_empty_patches_and_foreign_dtypes_are_reported(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    bands = np.full((2, 4, 13, 4, 4), 2200, np.int16)
    bands[0] = 0  # sample 0 holds no data at all
    # sample 1, time 3: no data in one band is no data in the pixel
    bands[1, 3, L1C.index("B03")] = 0
    write_ssl4eo_zarr(str(src / "zeros.zarr.zip"), bands=bands, sample_ids=["0000001", "0000002"])
    write_ssl4eo_zarr(str(src / "int8.zarr.zip"), bands=np.full((1, 4, 13, 4, 4), 50, np.int8))
    status, text, out = convert(src, tmp_path, capsys)
    assert status == 0, text
    counts = summary(text)
    assert counts["written"] == 3 and counts["no_data"] == 5 and counts["failed"] == 1
    assert pngs_in(out) == [f"zeros_0000002_{t}.png" for t in range(3)]
    assert "zeros.zarr.zip: 5 patch(es) hold no data" in text
    assert "int8" in next(l for l in text.splitlines() if l.startswith("failed: ")
                          and "int8.zarr.zip" in l)
    # a named MODALITY is checked against each file's dtype: uint8 S2RGB pixels are not L1C numbers
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    write_ssl4eo_zarr(str(rgb / "r.zarr.zip"), modality="S2RGB", n_samples=1, size=4)
    (tmp_path / "r").mkdir()
    status, text, _ = convert(rgb, tmp_path / "r", capsys, modality="S2L1C")
    assert status == 1 and "uint8" in text and "S2L1C" in text and "every file" in text
    # S2RGB: a pixel is no data only where all three bands are 0
    info = {"modality": "S2RGB", "fill": 0}
    assert md.is_no_data(np.zeros((3, 2, 2), np.uint8), info)
    assert not md.is_no_data(np.stack([np.zeros((2, 2)), np.ones((2, 2)), np.zeros((2, 2))]), info)


# -----------------------------------------------------------------------------
# settings and output locations, checked at start-up

@pytest.mark.parametrize("override, name", [
    ("--png_compress_level=99", "PNG_COMPRESS_LEVEL"), ("--rgb_bands=B04", "RGB_BANDS"),
    ("--max_reflectance=0", "MAX_REFLECTANCE"), ("--output_size=-1", "OUTPUT_SIZE"),
    ("--max_cloud_fraction=2", "MAX_CLOUD_FRACTION"), ("--num_processes=-1", "NUM_PROCESSES"),
    ("--train_fraction=1.5", "TRAIN_FRACTION"), ("--val_fraction=0.5", "VAL_FRACTION"),
    ("--mode=pngs", "MODE"), ("--modality=S1GRD", "MODALITY"), ("--seasons=spring", "SEASONS"),
    ("--seasons=,", "SEASONS"), ("--dn_offset=-1000", "DN_OFFSET"),
    ("--split_seed=-1", "SPLIT_SEED"), ("--output_dir=", "OUTPUT_DIR"),
    ("--manifest=.", "MANIFEST"),
])
def test_every_setting_is_checked_at_start_up(tmp_path, override, name):
    # INPUT_DIR does not exist: a check that came after looking for input files would exit 1, not 2
    run = run_in_process("make_dataset.py", f"--input_dir={tmp_path / 'none'}",
                         f"--output_dir={tmp_path / 'out'}", f"--manifest={tmp_path / 'm.csv'}",
                         override)
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"error: {name} = " in run.stderr  # and no traceback: run_in_process checks
    assert not (tmp_path / "out").exists()


def test_seasons_that_no_file_has(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    write_ssl4eo_zarr(str(src / "s.zarr.zip"), n_samples=1, size=8, sample_ids=["0000001"])
    status, text, out = convert(src, tmp_path, capsys, seasons="7")
    assert (status == 1 and "SEASONS = '7'" in text and "have 0, 1, 2, 3" in text
            and "nothing" in text)
    assert pngs_in(out) == []
    status, text, out = convert(src, tmp_path, capsys, seasons="0,7")
    assert status == 0 and "warning: SEASONS = '0,7': no file has time value(s) 7" in text
    assert pngs_in(out) == ["s_0000001_0.png"]


def test_output_locations_are_checked_before_converting(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_ssl4eo_zarr(str(src / "f.zarr.zip"), n_samples=1, size=8)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    cases = [(dict(output_dir=a_file), ["OUTPUT_DIR", "is a file"]),
             (dict(output_dir=a_file / "png"), ["cannot write to OUTPUT_DIR"]),
             (dict(manifest=a_file / "m.csv"), ["MANIFEST", "is a file"])]
    if os.geteuid() != 0:  # root writes into read-only folders
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases.append((dict(manifest=locked / "m.csv"), ["cannot write to MANIFEST"]))
    for overrides, needles in cases:
        settings = {"input_dir": src, "output_dir": tmp_path / "png",
                    "manifest": tmp_path / "m.csv", **overrides}
        args = [f"--{k}={v}" for k, v in settings.items()]
        run = run_in_process("make_dataset.py", *args)
        assert run.returncode == 1, run.stdout + run.stderr
        assert all(n in run.stderr for n in needles), run.stderr
        # nothing converted
        assert not (tmp_path / "png").exists() or pngs_in(tmp_path / "png") == []


# -----------------------------------------------------------------------------
# two runs, killed runs

def _slow_run(src, out, manifest, processes):
    """make_dataset.py in the background, slow on purpose
    (512 px PNGs at level 9: about 1 s each)."""
    return subprocess.Popen([sys.executable, "make_dataset.py", f"--input_dir={src}",
                             f"--output_dir={out}", f"--manifest={manifest}",
                             f"--num_processes={processes}", "--output_size=512",
                             "--png_compress_level=9"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _wait_for_first_png(process, out, seconds=60):
    deadline = time.time() + seconds
    while not (out.exists() and pngs_in(out)):
        assert process.poll() is None, "the run ended before it wrote a PNG"
        assert time.time() < deadline, "no PNG appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_second_run_on_the_same_output_dir_is_refused(tmp_path):
    src, out = tmp_path / "in", tmp_path / "png"
    src.mkdir()
    write_ssl4eo_zarr(str(src / "f.zarr.zip"), n_samples=8, size=8)  # 32 PNGs: it is still running
    first = _slow_run(src, out, tmp_path / "m.csv", 1)
    try:
        _wait_for_first_png(first, out)
        second = subprocess.run([sys.executable, "make_dataset.py", f"--input_dir={src}",
                                 f"--output_dir={out}", f"--manifest={tmp_path / 'm2.csv'}",
                                 "--num_processes=1"], cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 1, second.stdout + second.stderr
        assert ("in use by another make_dataset run" in second.stderr
                and f"pid {first.pid}" in second.stderr)
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()


def test_temp_files_of_live_processes_are_kept(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "png"
    src.mkdir()
    out.mkdir()
    write_ssl4eo_zarr(str(src / "f.zarr.zip"), n_samples=1, size=8)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = out / f".other.png.tmp{alive.pid}"  # another process is writing it right now
        live.write_bytes(b"half")
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout.strip()
        stale = out / f".other2.png.tmp{dead}"
        stale.write_bytes(b"half")
        status, text, _ = convert(src, tmp_path, capsys)
        assert status == 0, text
        assert live.exists() and not stale.exists()
    finally:
        alive.kill()
        alive.wait()


def _running(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid):
    try:
        return open(f"/proc/{pid}/cmdline").read()
    except OSError:
        return ""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_killing_the_script_leaves_no_worker_writing(tmp_path):
    src, out = tmp_path / "in", tmp_path / "png"
    src.mkdir()
    for n in (1, 2):  # 16 PNGs per worker: seconds of work left when the script is killed
        write_ssl4eo_zarr(str(src / f"f{n}.zarr.zip"), n_samples=4, size=16, seed=n)
    parent = _slow_run(src, out, tmp_path / "m.csv", 2)
    try:
        _wait_for_first_png(parent, out)
        workers = [pid for pid in children_of(parent.pid) if "spawn_main" in _cmdline(pid)]
        assert len(workers) == 2
    finally:
        parent.kill()
        parent.wait()
    time.sleep(2)
    written = pngs_in(out)
    assert [pid for pid in workers if _running(pid)] == []
    time.sleep(1)
    assert pngs_in(out) == written  # nothing writes on


# -----------------------------------------------------------------------------
# EuroSAT split CSVs

def _fake_eurosat(root, counts):
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for k in range(1, n + 1):
            (root / name / f"{name}_{k}.jpg").write_bytes(b"")  # the splitter only lists names


def test_eurosat_splits_are_stratified_and_never_overwritten(tmp_path, capsys):
    root = tmp_path / "EuroSAT"
    counts = {"Forest": 20, "AnnualCrop": 30, "SeaLake": 10}
    _fake_eurosat(root, counts)
    assert md.write_eurosat_splits(str(root), seed=0) == 0
    for f in ("train.csv", "validation.csv", "test.csv"):
        assert (root / f).read_text().splitlines()[0] == ",Filename,Label,ClassName"
    assert (json.loads((root / "label_map.json").read_text())
            == {"AnnualCrop": 0, "Forest": 1, "SeaLake": 2})
    tables = {f: pd.read_csv(root / f"{f}.csv", index_col=0)
              for f in ("train", "validation", "test")}
    expected = {"AnnualCrop": (21, 6, 3), "Forest": (14, 4, 2), "SeaLake": (7, 2, 1)}
    for c, sizes in expected.items():
        assert tuple(int((tables[f]["ClassName"] == c).sum())
                     for f in ("train", "validation", "test")) == sizes
    every = pd.concat(tables.values())
    assert len(every) == 60 and every["Filename"].is_unique
    assert set(every["Filename"]) == {f"{c}/{c}_{k}.jpg" for c, n in counts.items()
                                      for k in range(1, n + 1)}
    assert (every["Label"]
            == every["ClassName"].map({"AnnualCrop": 0, "Forest": 1, "SeaLake": 2})).all()
    assert list(tables["train"].index) == list(range(len(tables["train"])))
    # a second call keeps everything as it is
    snapshot = {f: (root / f).read_text() for f in os.listdir(root) if not (root / f).is_dir()}
    capsys.readouterr()
    assert md.write_eurosat_splits(str(root), seed=123) == 0
    assert "kept" in capsys.readouterr().out
    assert snapshot == {f: (root / f).read_text() for f in os.listdir(root)
                        if not (root / f).is_dir()}
    # with one split missing, a new split could overlap the kept ones: refused, nothing written
    os.remove(root / "test.csv")
    with pytest.raises(md.DataError, match="not all three split CSVs"):
        md.write_eurosat_splits(str(root), seed=0)
    assert not (root / "test.csv").exists()
    assert (root / "train.csv").read_text() == snapshot["train.csv"]


def test_eurosat_splits_are_deterministic_and_readable(tmp_path):
    counts = {c: 10 for c in EUROSAT_CLASSES}
    texts = []
    for run in ("a", "b"):
        root = tmp_path / run / "EuroSAT"
        _fake_eurosat(root, counts)
        md.write_eurosat_splits(str(root), seed=7)
        texts.append([(root / f).read_text() for f in ("train.csv", "validation.csv", "test.csv")])
    assert texts[0] == texts[1]
    real_map = "/work/shared/data/EuroSAT/label_map.json"
    if os.path.exists(real_map):  # the same class order as the published files
        assert (json.loads((root / "label_map.json").read_text())
                == json.loads(open(real_map).read()))
    from simsiam_data import read_eurosat_split
    paths, labels, class_names = read_eurosat_split(str(root), str(root / "train.csv"),
                                                    str(root / "label_map.json"))
    assert (len(paths) == 70 and class_names == sorted(EUROSAT_CLASSES)
            and sorted(set(labels)) == list(range(10)))
    assert all(os.path.exists(p) for p in paths)


def test_eurosat_mode_from_the_command_line(tmp_path, capsys):
    root = tmp_path / "EuroSAT"
    _fake_eurosat(root, {"Highway": 10, "River": 10})
    run = subprocess.run([sys.executable, "make_dataset.py", "--mode=eurosat_splits",
                          f"--eurosat_dir={root}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert len(pd.read_csv(root / "validation.csv")) == 4
    # the ssl4eo mode did not run
    assert "PNG" not in run.stdout and "converting" not in run.stdout
    with pytest.raises(md.DataError, match="scripts/data.sh"):
        md.write_eurosat_splits(str(tmp_path / "none"), seed=0)


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not a readable JSON file"),
    (json.dumps(["AnnualCrop", "Forest"]), "holds a list, not a mapping"),
    (json.dumps({"AnnualCrop": 0}), "no label for class folder(s) ['Forest']"),
    (json.dumps({"AnnualCrop": "0", "Forest": 1}), "non-integer label(s) {'AnnualCrop': '0'}"),
    (json.dumps({"AnnualCrop": 1, "Forest": 1}), "the same label to several classes"),
])
def test_bad_label_map_is_named(tmp_path, content, needle):
    root = tmp_path / "EuroSAT"
    _fake_eurosat(root, {"AnnualCrop": 5, "Forest": 5})
    (root / "label_map.json").write_text(content)
    with pytest.raises(md.DataError, match="label_map.json") as error:
        md.write_eurosat_splits(str(root), seed=0)
    assert needle in str(error.value)
    assert not (root / "train.csv").exists()


@pytest.mark.slow
def test_eurosat_mode_failures_from_the_command_line(tmp_path):
    root = tmp_path / "EuroSAT"
    _fake_eurosat(root, {"AnnualCrop": 5, "Forest": 5})
    (root / "label_map.json").write_text("{not json")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for folder, needles in ((root, ["label_map.json", "not a readable JSON file"]),
                            (a_file, ["EUROSAT_DIR", "is a file, not a folder"])):
        run = subprocess.run([sys.executable, "make_dataset.py", "--mode=eurosat_splits",
                              f"--eurosat_dir={folder}"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
        assert (run.stderr.startswith("error: ")
                and all(n in run.stderr for n in needles)), run.stderr


def test_split_fractions_are_read_when_the_split_is_written(tmp_path, monkeypatch):
    # configure() sets the module's constants after import;
    # a default taken at import would ignore them
    monkeypatch.setattr(md, "TRAIN_FRACTION", 0.5)
    monkeypatch.setattr(md, "VAL_FRACTION", 0.3)
    root = tmp_path / "EuroSAT"
    _fake_eurosat(root, {"Forest": 10})
    md.write_eurosat_splits(str(root), seed=0)
    assert [len(pd.read_csv(root / f))
            for f in ("train.csv", "validation.csv", "test.csv")] == [5, 3, 2]


# -----------------------------------------------------------------------------
# shell scripts

@pytest.mark.slow
def test_demo_generator_runs(tmp_path):
    run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_demo_data.py"),
                          "--eurosat_per_class=10", "--zarr_size=32"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    zips = sorted(os.listdir(tmp_path / "demo_data/ssl4eo/train/S2L1C"))
    assert zips == ["ssl4eos12_train_seasonal_data_000001.zarr.zip",
                    "ssl4eos12_train_seasonal_data_000002.zarr.zip"]
    eurosat = tmp_path / "demo_data/EuroSAT"
    assert len(pd.read_csv(eurosat / "train.csv")) == 70
    image = Image.open(eurosat / "Forest/Forest_3.jpg")
    assert image.size == (64, 64) and image.mode == "RGB"


@pytest.mark.slow
def test_overrides_reach_the_worker_processes(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for n in (1, 2):
        write_ssl4eo_zarr(str(src / f"o{n}.zarr.zip"), n_samples=1, size=16, seed=n)
    overrides = dict(max_reflectance=0.15, dn_offset=900, output_size=12, seasons="1",
                     png_compress_level=1)
    status, text, out1 = convert(src, tmp_path, capsys, **overrides)
    assert status == 0 and summary(text)["written"] == 2
    out2 = tmp_path / "out2"
    run = subprocess.run([sys.executable, "make_dataset.py", f"--input_dir={src}",
                          f"--output_dir={out2}", f"--manifest={tmp_path / 'm2.csv'}",
                          "--num_processes=2", *[f"--{k}={v}" for k, v in overrides.items()]],
                         cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0 and "with 2 process(es)" in run.stdout, run.stderr
    pngs = [{f: (out / f).read_bytes() for f in pngs_in(out)} for out in (out1, out2)]
    assert pngs[0] == pngs[1] and len(pngs[0]) == 2
    assert Image.open(out2 / pngs_in(out2)[0]).size == (12, 12)


def test_help_lists_the_constants_and_no_timings():
    run = subprocess.run([sys.executable, "make_dataset.py", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert ("--png_compress_level" in run.stdout and "--seasons" in run.stdout
            and "ssl4eo" in run.stdout)
    assert "patches/s" not in md.__doc__ and " ms " not in md.__doc__  # timings live in the README


@pytest.mark.slow
def test_a_worker_whose_parent_died_stops_before_its_next_png(tmp_path):
    # where die_with_parent does nothing (not Linux),
    # the worker itself notices that its parent changed
    src, out = tmp_path / "in", tmp_path / "png"
    src.mkdir()
    out.mkdir()
    write_ssl4eo_zarr(str(src / "f.zarr.zip"), n_samples=1, size=8)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import make_dataset as md\n"
            "job = md.Job(output_dir=sys.argv[3], seasons=None, rgb_bands=['B04', 'B03', 'B02'],\n"
            "             modality='auto', dn_offset=1000, max_reflectance=0.3, output_size=0, "
            "max_cloud=1.0,\n"
            "             compress_level=6, parent_pid=-1)  # never its parent\n"
            "md.convert_file(sys.argv[2], 'f.zarr.zip', job)\n"
            "print('went on')\n")
    run = subprocess.run([sys.executable, "-c", code, ROOT, str(src / "f.zarr.zip"), str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "went on" not in run.stdout, run.stdout + run.stderr
    assert os.listdir(out) == []
