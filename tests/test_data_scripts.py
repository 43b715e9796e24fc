"""scripts/unzip_files.sh and scripts/data.sh: safe unpacking, clean failures offline (no network is used)."""
import os
import subprocess
import zipfile

import numpy as np
from PIL import Image

from conftest import ROOT
from make_demo_data import write_ssl4eo_zarr


def _bash(script, *args, env=None, timeout=120):
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, **(env or {})))


def test_unzip_strips_2750_refuses_zip_slip_and_reports_corrupt_archives(tmp_path):
    zips, dest = tmp_path / "zips", tmp_path / "datae"
    zips.mkdir()
    jpg = tmp_path / "a.jpg"
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(jpg)
    with zipfile.ZipFile(zips / "EuroSAT.zip", "w") as z:
        z.writestr("2750/", "")
        for c in ("AnnualCrop", "Forest"):
            for k in (1, 2):
                z.write(jpg, f"2750/{c}/{c}_{k}.jpg")
    with zipfile.ZipFile(zips / "EuroSAT_slip.zip", "w") as z:
        z.writestr("2750/Forest/Forest_9.jpg", b"fine")
        z.writestr("2750/../../evil.txt", b"outside")
    whole = (zips / "EuroSAT.zip").read_bytes()
    (zips / "EuroSAT_broken.zip").write_bytes(whole[: len(whole) // 2])
    write_ssl4eo_zarr(str(zips / "EuroSAT_like.zarr.zip"), n_samples=1, size=8)  # a Zarr zip: never unpacked
    run = _bash("unzip_files.sh", str(zips), str(dest))
    assert run.returncode != 0
    assert "EuroSAT_broken.zip" in run.stderr and "EuroSAT_slip.zip" in run.stderr and "zip-slip" in run.stderr
    assert "EuroSAT.zip" not in run.stderr.replace("EuroSAT_", "")
    got = sorted(os.path.relpath(os.path.join(d, f), dest) for d, _, fs in os.walk(dest) for f in fs)
    assert got == [".extracted_EuroSAT.zip", "EuroSAT/AnnualCrop/AnnualCrop_1.jpg",
                   "EuroSAT/AnnualCrop/AnnualCrop_2.jpg", "EuroSAT/Forest/Forest_1.jpg", "EuroSAT/Forest/Forest_2.jpg"]
    assert (dest / "EuroSAT/Forest/Forest_2.jpg").read_bytes() == jpg.read_bytes()
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*"))
    # a rerun skips what is done and reports the broken ones again
    os.remove(zips / "EuroSAT_broken.zip")
    os.remove(zips / "EuroSAT_slip.zip")
    run = _bash("unzip_files.sh", env={"ZIP_DIR": str(zips), "EXTRACT_DIR": str(dest)})
    assert run.returncode == 0, run.stderr
    assert "already extracted" in run.stdout


def test_data_sh_offline_fails_cleanly_and_leaves_no_complete_file(tmp_path):
    data = tmp_path / "data"
    env = {"DATA_DIR": str(data), "EXTRACT_DIR": str(tmp_path / "datae"), "SSL4EO_BASE_URL": "http://127.0.0.1:9/",
           "EUROSAT_URLS": "http://127.0.0.1:9/EuroSAT.zip http://127.0.0.1:9/other/EuroSAT_RGB.zip"}
    run = _bash("data.sh", env=env)
    assert run.returncode != 0
    assert "http://127.0.0.1:9/EuroSAT.zip" in run.stderr and "http://127.0.0.1:9/other/EuroSAT_RGB.zip" in run.stderr
    run = _bash("data.sh", "--skip-eurosat", "--count", "2", env=env)
    assert run.returncode != 0
    url = "http://127.0.0.1:9/train/S2L1C/ssl4eos12_train_seasonal_data_000001.zarr.zip"
    assert url in run.stderr
    files = [p for p in data.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".zip")]
    # a .part that is already complete is verified and renamed even when the host is unreachable; the next stops
    folder = data / "ssl4eo-s12" / "train" / "S2L1C"
    write_ssl4eo_zarr(str(folder / "ssl4eos12_train_seasonal_data_000001.zarr.zip.part"), n_samples=1, size=8)
    (folder / "ssl4eos12_train_seasonal_data_000002.zarr.zip.part").write_bytes(b"PK\x03\x04 half a download")
    run = _bash("data.sh", "--skip-eurosat", "--count=2", "--download-only", env=env)
    assert run.returncode != 0 and "seasonal_data_000002.zarr.zip" in run.stderr
    assert (folder / "ssl4eos12_train_seasonal_data_000001.zarr.zip").exists()
    assert not (folder / "ssl4eos12_train_seasonal_data_000002.zarr.zip").exists()
    assert (folder / "ssl4eos12_train_seasonal_data_000002.zarr.zip.part").exists()  # kept for resuming
