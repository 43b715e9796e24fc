"""make_dataset.py and scripts/make_demo_data.py on tiny generated files.

The SSL4EO-S12 v1.1 files are written here in Zarr format 2 as ../shared/docs/ssl4eo-s12-v1.1.md describes them
(int16 DN with the +1000 offset, named bands, fixed-width or variable-length string coordinates, consolidated
metadata, inside a zip or as a folder). CPU only, well under a minute on 2 cores.
"""
import csv
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import make_dataset as md  # noqa: E402
from make_demo_data import BAND_NAMES, EUROSAT_CLASSES, write_ssl4eo_zarr  # noqa: E402

L1C = BAND_NAMES["S2L1C"]
# DN -> expected 8-bit value with the default stretch: floor(clip((DN - 1000) / 10000 / 0.3, 0, 1) * 255 + 0.5)
KNOWN = {500: 0, 1000: 0, 1006: 1, 1012: 1, 1018: 2, 1600: 51, 2200: 102, 2800: 153, 2999: 170, 3400: 204,
         4000: 255, 20000: 255, 32767: 255, -5: 0}


def convert(input_dir, tmp_path, capsys=None, **overrides):
    """Run the ssl4eo mode in this process (NUM_PROCESSES=1); return (status, printed text, output dir)."""
    config = {k: getattr(md, k) for k in dir(md) if k.isupper()}
    config.update(INPUT_DIR=str(input_dir), OUTPUT_DIR=str(tmp_path / "png"), MANIFEST=str(tmp_path / "manifest.csv"),
                  NUM_PROCESSES=1)
    config.update({k.upper(): v for k, v in overrides.items()})
    status = md.convert_ssl4eo(config)
    text = ""
    if capsys is not None:
        captured = capsys.readouterr()
        text = captured.out + captured.err
    return status, text, tmp_path / "png"


def png(folder, stem, sample, t):
    return np.asarray(Image.open(folder / f"{stem}_{sample}_{t}.png"))


def summary(text):
    """The numbers of the final `done:` line."""
    line = [l for l in text.splitlines() if l.startswith("done:")][-1]
    words = line.replace(",", "").replace("(", "").split()
    return {"written": int(words[words.index("written") - 1]), "existing": int(words[words.index("skipped") - 1]),
            "failed": int(words[words.index("failed)") - 1]),
            "cloudy": int(line.split(" skipped (cloudy)")[0].split()[-1])}


# -----------------------------------------------------------------------------
# pixels

def test_stretch_of_known_values_is_exact(tmp_path, capsys):
    dns = np.array(list(KNOWN), np.int16)
    size = 4
    bands = np.full((2, 4, 13, size, size), 7777, np.int16)  # other bands hold a value that must not show up
    grid = np.resize(dns, size * size).reshape(size, size)
    for c, name in enumerate(["B04", "B03", "B02"]):
        bands[:, :, L1C.index(name)] = np.roll(grid, c, axis=1)  # different values per channel
    bands[1, 2, L1C.index("B03"), 0, 0] = 0  # no-data in a single band blacks out the whole pixel
    src = tmp_path / "in"
    src.mkdir()
    write_ssl4eo_zarr(str(src / "f_000001.zarr.zip"), bands=bands, sample_ids=["0080717", "0060573"])
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
    out = md.to_uint8(dn, "S2L1C")
    assert out.shape == (1, 5, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 255, 0, 0, 0])
    wide = md.to_uint8(np.full((3, 2, 2), 2500, np.int16), "S2L1C", max_reflectance=0.15)  # a constant is honoured
    assert (wide == 255).all()


def test_bands_are_selected_by_name_with_shuffled_order_and_variable_length_strings(tmp_path, capsys):
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
    write_ssl4eo_zarr(str(src / "rgb.zarr.zip"), modality="S2RGB", bands=bands, band_order=["B02", "B03", "B04"],
                      sample_ids=["0000007"])
    status, text, out = convert(src, tmp_path, capsys)
    assert status == 0, text
    for t in range(4):
        np.testing.assert_array_equal(png(out, "rgb", "0000007", t), bands[0, t, ::-1].transpose(1, 2, 0))


def test_seasons_and_output_size(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    write_ssl4eo_zarr(str(src / "s.zarr.zip"), n_samples=2, size=40, sample_ids=["0000001", "0000002"])
    status, text, out = convert(src, tmp_path, capsys, seasons="0,2", output_size=24)
    assert status == 0, text
    assert sorted(os.listdir(out)) == [f"s_{s}_{t}.png" for s in ("0000001", "0000002") for t in (0, 2)]
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
    assert counts["cloudy"] == 3 and counts["written"] == 9  # 0.75, 1.0 and 0.9 are above 0.5; 0.5 is kept
    rows = list(csv.DictReader(open(tmp_path / "manifest.csv")))
    assert list(rows[0]) == ["png", "source_file", "sample", "time", "center_lat", "center_lon", "cloud_fraction"]
    assert len(rows) == 9 and sorted(r["png"] for r in rows) == sorted(os.listdir(out))
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
    before = {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out)}
    victim = sorted(before)[5]
    reference = (out / victim).read_bytes()
    os.remove(out / victim)
    stale = out / f".{victim}.tmp12345"  # what a killed run leaves behind
    stale.write_bytes(b"half a png")
    status, text, out = convert(src, tmp_path, capsys)
    assert status == 0, text
    counts = summary(text)
    assert counts["written"] == 1 and counts["existing"] == 15
    assert "stale temp" in text and not stale.exists()
    assert (out / victim).read_bytes() == reference  # deterministic: the same bytes again
    after = {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out)}
    assert set(after) == set(before)
    assert all(after[f] == before[f] for f in before if f != victim)


def _write_four_dim_bands(path):
    import zarr

    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    a = g.create_array("bands", shape=(1, 13, 8, 8), dtype="int16",
                       attributes={"_ARRAY_DIMENSIONS": ["sample", "band", "y", "x"]})
    a[...] = 1500
    b = g.create_array("band", shape=(13,), dtype="<U3", attributes={"_ARRAY_DIMENSIONS": ["band"]})
    b[...] = np.array(L1C)
    zarr.consolidate_metadata(str(path))


def test_bad_files_are_named_and_skipped_while_others_convert(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    write_ssl4eo_zarr(str(src / "good.zarr.zip"), n_samples=1, size=16, sample_ids=["0000001"])
    write_ssl4eo_zarr(str(tmp_path / "whole.zarr.zip"), n_samples=1, size=16)
    data = (tmp_path / "whole.zarr.zip").read_bytes()
    (src / "truncated.zarr.zip").write_bytes(data[: len(data) // 2])
    write_ssl4eo_zarr(str(src / "nobands.zarr"), n_samples=1, size=16, as_zip=False, drop=["bands"])
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
    assert sorted(os.listdir(out)) == [f"good_0000001_{t}.png" for t in range(4)]


def test_exit_status_when_nothing_can_be_converted(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    run = subprocess.run([sys.executable, "make_dataset.py", f"--input_dir={missing}", f"--output_dir={tmp_path / 'o'}",
                          f"--manifest={tmp_path / 'm.csv'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert str(missing) in run.stderr and "scripts/data.sh" in run.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.zarr.zip").write_bytes(b"PK\x03\x04 not really a zip")
    status, text, _ = convert(bad, tmp_path, capsys)
    assert status == 1 and "x.zarr.zip" in text and "every file" in text


def test_two_processes_give_the_same_pngs_as_one(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for n in (1, 2, 3):
        write_ssl4eo_zarr(str(src / f"p{n}.zarr.zip"), n_samples=2, size=24, seed=n)
    status, text, out1 = convert(src, tmp_path, capsys)
    assert status == 0 and summary(text)["written"] == 24
    out2 = tmp_path / "out2"
    run = subprocess.run([sys.executable, "make_dataset.py", f"--input_dir={src}", f"--output_dir={out2}",
                          f"--manifest={tmp_path / 'm2.csv'}", "--num_processes=2"], cwd=ROOT,
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert "with 2 process(es)" in run.stdout and "24 written" in run.stdout
    pngs = [{f: (out / f).read_bytes() for f in os.listdir(out)} for out in (out1, out2)]
    assert pngs[0] == pngs[1]
    assert (tmp_path / "manifest.csv").read_text() == (tmp_path / "m2.csv").read_text()


def test_generated_file_follows_the_spec(tmp_path):
    import zarr

    path = tmp_path / "spec.zarr.zip"
    write_ssl4eo_zarr(str(path), n_samples=2, size=16)
    names = zipfile.ZipFile(path).namelist()
    assert ".zmetadata" in names and ".zgroup" in names and "bands/.zarray" in names  # plain v2 layout at the root
    store = zarr.storage.ZipStore(str(path), mode="r")
    g = zarr.open_group(store, mode="r")
    assert g.metadata.zarr_format == 2
    bands = g["bands"]
    assert bands.dtype == np.int16 and bands.shape == (2, 4, 13, 16, 16) and bands.chunks == (1, 1, 13, 16, 16)
    assert md.strings(g["band"][:]) == L1C
    for name in ("bands", "band", "sample", "time", "x", "y", "center_lat", "center_lon", "crs", "cloud_mask",
                 "file_id", "sample_id", "time_", "x_", "y_"):
        assert "_ARRAY_DIMENSIONS" in g[name].attrs, name
    assert str(np.asarray(g["sample_id"][:])[1, 3]) == md.strings(g["sample"][:])[1] + "_3"
    valid = bands[:][bands[:] > 0]
    assert 1000 < np.median(valid) < 4000  # reflectance x 10000 + 1000 for land
    store.close()


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
    assert json.loads((root / "label_map.json").read_text()) == {"AnnualCrop": 0, "Forest": 1, "SeaLake": 2}
    tables = {f: pd.read_csv(root / f"{f}.csv", index_col=0) for f in ("train", "validation", "test")}
    expected = {"AnnualCrop": (21, 6, 3), "Forest": (14, 4, 2), "SeaLake": (7, 2, 1)}
    for c, sizes in expected.items():
        assert tuple(int((tables[f]["ClassName"] == c).sum()) for f in ("train", "validation", "test")) == sizes
    every = pd.concat(tables.values())
    assert len(every) == 60 and every["Filename"].is_unique
    assert set(every["Filename"]) == {f"{c}/{c}_{k}.jpg" for c, n in counts.items() for k in range(1, n + 1)}
    assert (every["Label"] == every["ClassName"].map({"AnnualCrop": 0, "Forest": 1, "SeaLake": 2})).all()
    assert list(tables["train"].index) == list(range(len(tables["train"])))
    # a second call keeps everything as it is
    snapshot = {f: (root / f).read_text() for f in os.listdir(root) if not (root / f).is_dir()}
    capsys.readouterr()
    assert md.write_eurosat_splits(str(root), seed=123) == 0
    assert "kept" in capsys.readouterr().out
    assert snapshot == {f: (root / f).read_text() for f in os.listdir(root) if not (root / f).is_dir()}
    # with one split missing, a new split could overlap the kept ones: refused, nothing written
    os.remove(root / "test.csv")
    assert md.write_eurosat_splits(str(root), seed=0) != 0
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
        assert json.loads((root / "label_map.json").read_text()) == json.loads(open(real_map).read())
    from simsiam_data import read_eurosat_split
    paths, labels, class_names = read_eurosat_split(str(root), str(root / "train.csv"), str(root / "label_map.json"))
    assert len(paths) == 70 and class_names == sorted(EUROSAT_CLASSES) and sorted(set(labels)) == list(range(10))
    assert all(os.path.exists(p) for p in paths)


def test_eurosat_mode_from_the_command_line(tmp_path, capsys):
    root = tmp_path / "EuroSAT"
    _fake_eurosat(root, {"Highway": 10, "River": 10})
    run = subprocess.run([sys.executable, "make_dataset.py", "--mode=eurosat_splits", f"--eurosat_dir={root}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert len(pd.read_csv(root / "validation.csv")) == 4
    assert "PNG" not in run.stdout and "converting" not in run.stdout  # the ssl4eo mode did not run
    assert md.write_eurosat_splits(str(tmp_path / "none")) != 0
    assert "scripts/data.sh" in capsys.readouterr().err


# -----------------------------------------------------------------------------
# shell scripts

def test_demo_generator_runs(tmp_path):
    run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_demo_data.py"), "--eurosat_per_class=10",
                          "--zarr_size=32"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    zips = sorted(os.listdir(tmp_path / "demo_data/ssl4eo/train/S2L1C"))
    assert zips == ["ssl4eos12_train_seasonal_data_000001.zarr.zip", "ssl4eos12_train_seasonal_data_000002.zarr.zip"]
    eurosat = tmp_path / "demo_data/EuroSAT"
    assert len(pd.read_csv(eurosat / "train.csv")) == 70
    image = Image.open(eurosat / "Forest/Forest_3.jpg")
    assert image.size == (64, 64) and image.mode == "RGB"
