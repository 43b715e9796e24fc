"""scripts/unzip_files.sh and scripts/data.sh: safe unpacking, clean failures offline
(no network is used)."""
import os
import random
import struct
import subprocess
import zipfile

import numpy as np
from PIL import Image

from conftest import ROOT
from make_demo_data import write_ssl4eo_zarr


def _bash(script, *args, env=None, timeout=120):
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def _eurosat_zip(path, jpg, extra=()):
    """A small EuroSAT-like zip: 2750/<Class>/<Class>_<k>.jpg, plus (name, bytes) entries EXTRA."""
    with zipfile.ZipFile(path, "w") as z:
        for c in ("AnnualCrop", "Forest"):
            for k in (1, 2):
                z.write(jpg, f"2750/{c}/{c}_{k}.jpg")
        for name, data in extra:
            z.writestr(name, data, zipfile.ZIP_DEFLATED)


def _jpg(tmp_path):
    jpg = tmp_path / "a.jpg"
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(jpg)
    return jpg


def _files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder)
                  for f in fs)


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
    # a Zarr zip: never unpacked
    write_ssl4eo_zarr(str(zips / "EuroSAT_like.zarr.zip"), n_samples=1, size=8)
    run = _bash("unzip_files.sh", str(zips), str(dest))
    assert run.returncode != 0
    assert ("EuroSAT_broken.zip" in run.stderr and "EuroSAT_slip.zip" in run.stderr
            and "zip-slip" in run.stderr)
    assert "EuroSAT.zip" not in run.stderr.replace("EuroSAT_", "")
    got = sorted(os.path.relpath(os.path.join(d, f), dest) for d, _, fs in os.walk(dest)
                 for f in fs)
    assert got == [".extracted_EuroSAT.zip", "EuroSAT/AnnualCrop/AnnualCrop_1.jpg",
                   "EuroSAT/AnnualCrop/AnnualCrop_2.jpg", "EuroSAT/Forest/Forest_1.jpg",
                   "EuroSAT/Forest/Forest_2.jpg"]
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
    env = {"DATA_DIR": str(data), "EXTRACT_DIR": str(tmp_path / "datae"),
           "SSL4EO_BASE_URL": "http://127.0.0.1:9/",
           "EUROSAT_URLS": "http://127.0.0.1:9/EuroSAT.zip "
                           "http://127.0.0.1:9/other/EuroSAT_RGB.zip"}
    run = _bash("data.sh", env=env)
    assert run.returncode != 0
    assert ("http://127.0.0.1:9/EuroSAT.zip" in run.stderr
            and "http://127.0.0.1:9/other/EuroSAT_RGB.zip" in run.stderr)
    run = _bash("data.sh", "--skip-eurosat", "--count", "2", env=env)
    assert run.returncode != 0
    url = "http://127.0.0.1:9/train/S2L1C/ssl4eos12_train_seasonal_data_000001.zarr.zip"
    assert url in run.stderr
    files = [p for p in data.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".zip")]
    # a .part that is already complete is verified and renamed even when the host is unreachable;
    # the next stops
    folder = data / "ssl4eo-s12" / "train" / "S2L1C"
    write_ssl4eo_zarr(str(folder / "ssl4eos12_train_seasonal_data_000001.zarr.zip.part"),
                      n_samples=1, size=8)
    (folder / "ssl4eos12_train_seasonal_data_000002.zarr.zip.part").write_bytes(
        b"PK\x03\x04 half a download")
    run = _bash("data.sh", "--skip-eurosat", "--count=2", "--download-only", env=env)
    assert run.returncode != 0 and "seasonal_data_000002.zarr.zip" in run.stderr
    assert (folder / "ssl4eos12_train_seasonal_data_000001.zarr.zip").exists()
    assert not (folder / "ssl4eos12_train_seasonal_data_000002.zarr.zip").exists()
    # kept for resuming
    assert (folder / "ssl4eos12_train_seasonal_data_000002.zarr.zip.part").exists()


def test_unzip_refuses_archive_names_and_target_links_that_leave_extract_dir(tmp_path):
    zips, work = tmp_path / "zips", tmp_path / "work"
    dest = work / "datae"
    zips.mkdir()
    jpg = _jpg(tmp_path)
    # would unpack into datae itself, into work/ and into work/ again
    bad = (".zip", "..zip", "...zip")
    for name in bad + ("EuroSAT.zip",):
        _eurosat_zip(zips / name, jpg)
    run = _bash("unzip_files.sh", str(zips), str(dest), env={"ZIP_PATTERN": "*.zip"})
    assert run.returncode != 0 and "Traceback" not in run.stderr
    for name in bad:
        assert f"FAILED {zips / name}:" in run.stderr and "rename the archive" in run.stderr
    assert os.listdir(work) == ["datae"]
    assert _files(dest) == [".extracted_EuroSAT.zip", "EuroSAT/AnnualCrop/AnnualCrop_1.jpg",
                            "EuroSAT/AnnualCrop/AnnualCrop_2.jpg", "EuroSAT/Forest/Forest_1.jpg",
                            "EuroSAT/Forest/Forest_2.jpg"]
    # a target folder that is a link to elsewhere is not a plain child of EXTRACT_DIR either
    elsewhere, dest2 = tmp_path / "elsewhere", tmp_path / "datae2"
    elsewhere.mkdir()
    dest2.mkdir()
    (dest2 / "EuroSAT").symlink_to(elsewhere)
    run = _bash("unzip_files.sh", str(zips), str(dest2))
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert f"{dest2 / 'EuroSAT'} is a link" in run.stderr
    assert os.listdir(elsewhere) == [] and not (dest2 / ".extracted_EuroSAT.zip").exists()


def test_unzip_refuses_zip_bombs_by_ratio_and_by_free_space(tmp_path):
    zips, dest = tmp_path / "zips", tmp_path / "datae"
    zips.mkdir()
    jpg = _jpg(tmp_path)
    _eurosat_zip(zips / "EuroSAT.zip", jpg)
    zeros = ("2750/Forest/zeros.bin", bytes(4 << 20))  # 4 MiB that deflate to about 4 kB
    _eurosat_zip(zips / "EuroSAT_bomb.zip", jpg, [zeros])
    with zipfile.ZipFile(zips / "EuroSAT_huge.zip", "w") as z:
        z.writestr("2750/Forest/Forest_1.jpg", jpg.read_bytes())
        # the central directory (written at close) declares 1 PiB
        z.filelist[0].file_size = 1 << 50
    assert (zips / "EuroSAT_bomb.zip").stat().st_size < 50_000
    run = _bash("unzip_files.sh", str(zips), str(dest))
    assert run.returncode != 0 and "Traceback" not in run.stderr
    bomb, huge = (line for line in run.stderr.splitlines() if line.startswith("FAILED"))
    assert str(zips / "EuroSAT_bomb.zip") in bomb and "zip bomb" in bomb and "over 100x" in bomb
    assert str(zips / "EuroSAT_huge.zip") in huge and "free on the disk" in huge
    assert _files(dest) == [".extracted_EuroSAT.zip", "EuroSAT/AnnualCrop/AnnualCrop_1.jpg",
                            "EuroSAT/AnnualCrop/AnnualCrop_2.jpg", "EuroSAT/Forest/Forest_1.jpg",
                            "EuroSAT/Forest/Forest_2.jpg"]


def _declare_size(path, name, size):
    """Set entry NAME's uncompressed size to SIZE,
    in its local header and in the central directory."""
    with zipfile.ZipFile(path) as z:
        local, central = z.getinfo(name).header_offset, z.start_dir
    data = bytearray(path.read_bytes())
    struct.pack_into("<L", data, local + 22, size)
    # walk the central directory to NAME's record
    while data[central:central + 4] == b"PK\x01\x02":
        n, m, k = struct.unpack_from("<3H", data, central + 28)
        if data[central + 46:central + 46 + n].decode() == name:
            struct.pack_into("<L", data, central + 24, size)
            break
        central += 46 + n + m + k
    path.write_bytes(bytes(data))


def test_unzip_stops_an_entry_that_grows_past_its_declared_size(tmp_path):
    zips, dest = tmp_path / "zips", tmp_path / "datae"
    zips.mkdir()
    long_data = random.Random(0).randbytes(64 << 10)
    _eurosat_zip(zips / "EuroSAT.zip", _jpg(tmp_path), [("2750/Forest/long.bin", long_data)])
    # declares 1,000 bytes, holds 64 KiB
    _declare_size(zips / "EuroSAT.zip", "2750/Forest/long.bin", 1000)
    run = _bash("unzip_files.sh", str(zips), str(dest))
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert f"FAILED {zips / 'EuroSAT.zip'}" in run.stderr
    assert "'2750/Forest/long.bin' grows past its declared size of 1,000 bytes" in run.stderr
    got = _files(dest)
    assert "EuroSAT/Forest/long.bin" not in got and not [f for f in got if f.endswith(".part")]
    assert ".extracted_EuroSAT.zip" not in got


def test_unzip_reports_garbled_compressed_data_without_a_traceback(tmp_path):
    zips, dest = tmp_path / "zips", tmp_path / "datae"
    zips.mkdir()
    x_bin = ("2750/Forest/x.bin", random.Random(0).randbytes(1000) * 50)
    _eurosat_zip(zips / "EuroSAT.zip", _jpg(tmp_path), [x_bin])
    with zipfile.ZipFile(zips / "EuroSAT.zip") as z:
        start = z.getinfo("2750/Forest/x.bin").header_offset + 60
    data = bytearray((zips / "EuroSAT.zip").read_bytes())
    # garble the deflate stream: zlib.error, not a bad CRC
    for k in range(start + 200, start + 260):
        data[k] ^= 0x55
    (zips / "EuroSAT.zip").write_bytes(bytes(data))
    run = _bash("unzip_files.sh", str(zips), str(dest))
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert f"FAILED {zips / 'EuroSAT.zip'}" in run.stderr and "delete it and rerun" in run.stderr
    assert not [f for f in _files(dest) if f.endswith((".part", "x.bin"))]


def test_unzip_never_writes_through_a_link_at_the_temp_or_final_name(tmp_path):
    zips, dest = tmp_path / "zips", tmp_path / "datae"
    zips.mkdir()
    jpg = _jpg(tmp_path)
    _eurosat_zip(zips / "EuroSAT.zip", jpg)
    forest = dest / "EuroSAT" / "Forest"
    forest.mkdir(parents=True)
    outside, outside2 = tmp_path / "outside.txt", tmp_path / "outside2.txt"
    outside.write_text("keep me")
    outside2.write_text("keep me too")
    (forest / "Forest_1.jpg.part").symlink_to(outside)  # a leftover or planted temp name
    # a link at the final name: replaced, not written through
    (forest / "Forest_2.jpg").symlink_to(outside2)
    run = _bash("unzip_files.sh", str(zips), str(dest))
    assert run.returncode == 0, run.stderr
    assert outside.read_text() == "keep me" and outside2.read_text() == "keep me too"
    for name in ("Forest_1.jpg", "Forest_2.jpg"):
        assert (not (forest / name).is_symlink()
                and (forest / name).read_bytes() == jpg.read_bytes())
    assert os.readlink(forest / "Forest_1.jpg.part") == str(outside)  # left alone, never opened


def test_unzip_zip_dir_or_extract_dir_that_is_a_file_gets_a_message(tmp_path):
    zips, a_file = tmp_path / "zips", tmp_path / "datae"
    zips.mkdir()
    _eurosat_zip(zips / "EuroSAT.zip", _jpg(tmp_path))
    a_file.write_text("not a folder")
    run = _bash("unzip_files.sh", str(zips), str(a_file))
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert (f"EXTRACT_DIR {a_file} is a file, not a folder" in run.stderr
            and "EXTRACT_DIR=" in run.stderr)
    assert a_file.read_text() == "not a folder"
    env = {"ZIP_DIR": str(zips / "EuroSAT.zip"), "EXTRACT_DIR": str(tmp_path / "d")}
    run = _bash("unzip_files.sh", env=env)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert f"ZIP_DIR {zips / 'EuroSAT.zip'} is a file, not a folder" in run.stderr
    run = _bash("unzip_files.sh", str(zips), str(a_file / "sub"))  # a parent that is a file
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert f"cannot create EXTRACT_DIR {a_file / 'sub'}" in run.stderr


def test_data_sh_option_without_a_value_is_a_usage_error(tmp_path):
    env = {"DATA_DIR": str(tmp_path / "data"), "SSL4EO_BASE_URL": "http://127.0.0.1:9/",
           "EUROSAT_URLS": "http://127.0.0.1:9/EuroSAT.zip"}
    for args in (["--count"], ["--modality"], ["--split"], ["--skip-eurosat", "--count"]):
        run = _bash("data.sh", *args, env=env)
        assert run.returncode == 2, (args, run.stderr)
        assert f"{args[-1]} needs a value" in run.stderr and "unbound variable" not in run.stderr
    assert not (tmp_path / "data").exists()


def test_data_sh_downloads_again_what_a_mirror_cannot_resume(tmp_path):
    """A mirror without byte ranges (Python's http.server) cannot resume a .part: the file is
    downloaded again from the start, where the .part used to make every rerun fail."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    name = "ssl4eos12_train_seasonal_data_000001.zarr.zip"
    served = tmp_path / "mirror" / "train" / "S2L1C"
    served.mkdir(parents=True)
    write_ssl4eo_zarr(str(served / name), n_samples=1, size=8)
    folder = tmp_path / "data" / "ssl4eo-s12" / "train" / "S2L1C"
    folder.mkdir(parents=True)
    (folder / f"{name}.part").write_bytes(b"PK\x03\x04 half a download from another mirror")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path / "mirror")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        run = _bash("data.sh", "--skip-eurosat", "--count=1", "--download-only",
                    env={"DATA_DIR": str(tmp_path / "data"),
                         "SSL4EO_BASE_URL": f"http://127.0.0.1:{server.server_port}/"})
    finally:
        server.shutdown()
    assert run.returncode == 0, run.stderr
    assert (folder / name).read_bytes() == (served / name).read_bytes()
    assert not (folder / f"{name}.part").exists() and "from the start" in run.stderr


def test_data_sh_names_a_full_or_read_only_folder_not_the_network(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "curl").write_text('#!/bin/sh\necho "curl: (23) Failure writing output to '
                               'destination" >&2\nexit 23\n')
    os.chmod(fake / "curl", 0o755)
    run = _bash("data.sh", "--download-only",
                env={"PATH": f"{fake}:{os.environ['PATH']}", "DATA_DIR": str(tmp_path / "data"),
                     "SSL4EO_BASE_URL": "http://127.0.0.1:9/",
                     "EUROSAT_URLS": "http://127.0.0.1:9/EuroSAT.zip "
                                     "http://127.0.0.1:9/other/EuroSAT_RGB.zip"})
    assert run.returncode == 1
    assert "full or not writable" in run.stderr and "DATA_DIR" in run.stderr, run.stderr
    assert "network" not in run.stderr and "mirror" not in run.stderr, run.stderr
