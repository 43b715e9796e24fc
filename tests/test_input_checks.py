"""Nothing silently wrong: rasters read as what they are, files that are not regular files or whose
names are not UTF-8, symlinked folders, images in two splits, empty class folders, a batch of one,
sizes that cannot fit, torchrun variables without torchrun, checkpoints with NaN weights.

Readers that a FIFO could block run under `within(seconds)`: a regression fails, it never hangs."""
import contextlib
import json
import os
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import simsiam_data as data
import test_bad_inputs
from conftest import ROOT, TINY_PRETRAIN, run_in_process, run_script, write_images
from runtime import CheckpointError, DataError
from test_bad_inputs import _assert_clear_failure, _copy_eurosat

corpus = test_bad_inputs.corpus  # the tiny EuroSAT folder and checkpoints of the bad-input corpus
BAD_NAME = os.fsdecode(b"bad\xff.png")  # not valid UTF-8 (a Latin-1 name from an old zip)


class StillBlocked(BaseException):
    """Raised by the alarm: a BaseException, so that no `except OSError` or `except Exception` of
    the code under test can take it for an unreadable file."""


@contextlib.contextmanager
def within(seconds):
    """Stop the block with StillBlocked after `seconds` (an open() waiting on a FIFO included)."""
    def stop(signum, frame):
        raise StillBlocked(f"still running after {seconds} s: blocked on a FIFO?")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _png16(path, pixels, level=6):
    """A 16-bit PNG (grey or RGB), which PIL cannot write: (H, W) or (H, W, 3) uint16."""
    import zlib
    height, width = pixels.shape[:2]
    colour = 0 if pixels.ndim == 2 else 2

    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows, level)) + chunk(b"IEND", b""))


def _multiband_tiff(path, pixels):
    """An uncompressed TIFF of (H, W, bands) uint8 or uint16 pixels, with no alpha among bands
    past the third, as a 4-band multispectral export has (PIL writes neither: only RGBA, and 8-bit
    RGB)."""
    height, width, bands = pixels.shape
    body = pixels.astype(f"<u{pixels.itemsize}").tobytes()
    shorts = struct.pack(f"<{bands}H", *[8 * pixels.itemsize] * bands)
    short_at = 8 + len(body)
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, bands, short_at),
               (259, 3, 1, 1), (262, 3, 1, 2), (273, 4, 1, 8), (277, 3, 1, bands),
               (278, 4, 1, height), (279, 4, 1, len(body)), (284, 3, 1, 1)]
    entries += [(338, 3, bands - 3, 0)] * (bands > 3)  # ExtraSamples 0: not alpha
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII" if kind == 4 or count > 2 else "<HHIH2x", tag, kind, count, value)
        for tag, kind, count, value in entries)
    path.write_bytes(b"II*\x00" + struct.pack("<I", short_at + len(shorts)) + body + shorts
                     + ifd + b"\x00\x00\x00\x00")


# -------------------------------------------------------------------------------------------------
# rasters read as what they are

def test_earth_observation_rasters_are_read_as_what_they_are(tmp_path):
    # 16-bit grey: reflectance 0.15 (DN 1500) of the 0..0.3 stretch is mid-grey, not near black
    _png16(tmp_path / "grey16.png", np.full((4, 4), 1500, np.uint16))
    assert data.open_rgb(tmp_path / "grey16.png").getpixel((0, 0)) == (128, 128, 128)
    # 16-bit RGB at full precision: 1030 is 87.55 -> 88, its high byte alone (1024) gives 87
    rgb16 = np.tile(np.array([1030, 2000, 3000], np.uint16), (4, 4, 1))
    _png16(tmp_path / "rgb16.png", rgb16)
    _multiband_tiff(tmp_path / "rgb16.tif", rgb16)
    for name in ("rgb16.png", "rgb16.tif"):
        assert data.open_rgb(tmp_path / name).getpixel((1, 1)) == (88, 170, 255)
    # float reflectance with NaN and inf no-data: masked (black), the rest as it is
    reflectance = np.full((4, 4), 0.15, np.float32)
    reflectance[0, 0], reflectance[1, 1] = np.nan, np.inf
    Image.fromarray(reflectance).save(tmp_path / "float.tif")
    image = data.open_rgb(tmp_path / "float.tif")
    assert (image.getpixel((0, 0)), image.getpixel((1, 1)), image.getpixel((2, 2))) == (
        (0, 0, 0), (0, 0, 0), (128, 128, 128))
    # refused by name: no pixel with data; floats that are no reflectance; a 4th band
    Image.fromarray(np.full((4, 4), np.nan, np.float32)).save(tmp_path / "nodata.tif")
    Image.fromarray(np.full((4, 4), 200.0, np.float32)).save(tmp_path / "float255.tif")
    _multiband_tiff(tmp_path / "four.tif", np.full((4, 4, 4), 100, np.uint8))
    for name, needle in (("nodata.tif", "no data"), ("float255.tif", "not reflectance"),
                         ("four.tif", "4 bands")):
        with pytest.raises(data.IMAGE_READ_ERRORS, match=needle):
            data.open_rgb(tmp_path / name)
    # what worked keeps working: 8-bit RGB exactly, RGBA (alpha dropped), grey, palette
    rgb = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.array_equal(np.asarray(data.open_rgb(tmp_path / "rgb.png")), rgb)
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(np.asarray(data.open_rgb(tmp_path / "rgba.png")), rgb)
    Image.new("L", (4, 4), 77).save(tmp_path / "grey.png")
    assert data.open_rgb(tmp_path / "grey.png").getpixel((0, 0)) == (77, 77, 77)
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    assert data.open_rgb(tmp_path / "palette.png").mode == "RGB"


def _as_read_before(values, is_float):
    """The conversion of wide values as open_rgb computed it before issue 31, on whole float64
    copies (about 128 bytes a pixel): the chunked one must give the same bytes."""
    values = np.asarray(values, dtype=np.float64)
    values = np.repeat(values[..., None], 3, axis=2) if values.ndim == 2 else values[..., :3]
    finite = np.isfinite(values).all(axis=2)
    reflectance = values if is_float else values / data.REFLECTANCE_DN
    scaled = np.where(finite[..., None], reflectance, 0.0) * 255.0 / data.MAX_REFLECTANCE
    return np.floor(np.clip(scaled, 0.0, 255.0) + 0.5).astype(np.uint8)


def test_wide_values_give_the_same_bytes_as_before_across_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    monkeypatch.setattr(data, "CONVERT_PIXELS", 100)  # many chunks, the last one short
    edges = [0, 1, 5, 6, 1176, 1177, 11764, 11765, 32767, 65535]  # around .5 after scaling
    grey = rng.choice(np.r_[edges, rng.integers(0, 65536, 50)], (37, 23)).astype(np.uint16)
    rgb = rng.integers(0, 65536, (37, 23, 3)).astype(np.uint16)
    signed = rng.integers(-5000, 70000, (37, 23)).astype(np.int32)  # mode I
    floats = rng.uniform(-0.1, 0.4, (37, 23)).astype(np.float32)
    floats[0, :5] = [np.nan, np.inf, -np.inf, 0.3, 0.1505]
    for values, is_float in ((grey, False), (rgb, False), (signed, False), (floats, True)):
        assert np.array_equal(np.asarray(data._true_colour(values, is_float)),
                              _as_read_before(values, is_float)), values.dtype


# the peak memory of reading each image: VmHWM, set back to the resident size just before each
# (clear_refs 5); ru_maxrss would also count the memory of the process that started this one
_PEAKS = """
import json, sys
sys.path.insert(0, sys.argv[1])
import simsiam_data as data
def status(name):
    with open("/proc/self/status") as f:
        return int(f.read().split(name + ":")[1].split()[0]) * 1024
for path in sys.argv[2:]:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    image = data.open_rgb(path)
    print(json.dumps({"before": before, "peak": status("VmHWM"), "size": image.size}))
    del image
"""


def test_large_wide_rasters_are_read_in_a_few_times_their_size(tmp_path):
    """Issue 31: a 16-bit grey image took about 128 bytes a pixel to read (10000 x 10000: 12.8 GB).
    The peak of a process that reads one, over what it held before, per pixel: 2 (grey) to 6 (RGB)
    bytes a pixel decoded, 3 of 8-bit RGB read out, and PIL's RGB copy of 4, with a little room."""
    side = 4000
    ramp = (np.arange(side * side * 3) % 3001).astype(np.uint16).reshape(side, side, 3)
    kinds = {"16-bit grey": tmp_path / "grey.png", "16-bit RGB": tmp_path / "rgb.png",
             "float": tmp_path / "float.tif"}
    _png16(kinds["16-bit grey"], ramp[..., 0], level=1)
    _png16(kinds["16-bit RGB"], ramp, level=1)
    Image.fromarray(ramp[..., 0].astype(np.float32) / 10000).save(kinds["float"])
    del ramp
    result = subprocess.run([sys.executable, "-c", _PEAKS, ROOT, *map(str, kinds.values())],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    for kind, line in zip(kinds, result.stdout.splitlines()):
        read = json.loads(line)
        per_pixel = (read["peak"] - read["before"]) / side**2
        assert read["size"] == [side, side] and per_pixel <= data.READ_BYTES_PER_PIXEL["wide"], (
            f"{kind}: {per_pixel:.1f} bytes a pixel at the peak")
    assert len(result.stdout.splitlines()) == len(kinds)


def test_an_image_too_large_for_the_memory_left_is_refused_from_its_header(tmp_path, monkeypatch):
    _png16(tmp_path / "scene.png", np.full((4000, 4000), 1500, np.uint16))
    monkeypatch.setattr(data, "_wide_values",
                        lambda *args: pytest.fail("decoded before its size was checked"))
    monkeypatch.setattr(data, "free_memory", lambda: 200 * 2**20)
    with pytest.raises(data.UnsupportedImage, match=r"4000 x 4000 px \(I;16\) needs about 0\.3 "
                                                    r"GiB to read, and this process may take 0\.2 "
                                                    r"GiB more: cut it into tiles"):
        data.open_rgb(tmp_path / "scene.png")
    # the memory left is what an address-space limit (ulimit -v) leaves, too
    # (256 MiB above what the process maps now: far below MemAvailable on any machine)
    probe = ("import resource, runtime; size = 1024 * runtime._numbers('/proc/self/status', ':')"
             "['VmSize']; resource.setrlimit(resource.RLIMIT_AS, (size + 2**28, size + 2**28)); "
             "print(runtime.free_memory() < 2**28 + 2**24)")
    assert subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=60).stdout.strip() == "True"


# -------------------------------------------------------------------------------------------------
# FIFOs, symlinked folders, names that are not UTF-8: from train_simsiam.py to plot_results.py

@pytest.mark.slow
def test_no_reader_opens_a_fifo_and_unusable_names_are_skipped_by_name(corpus, tmp_path):
    images = tmp_path / "images"
    write_images(str(images), 16)
    os.mkfifo(images / "pipe.png")
    _multiband_tiff(images / "four.tif", np.full((40, 40, 4), 100, np.uint8))
    (images / BAD_NAME).write_bytes((images / "part0" / "img_000.png").read_bytes())
    out = tmp_path / "out"
    with within(60):
        code, printed, err = run_in_process(
            "train_simsiam.py", f"--data_dir={images}", f"--output_dir={out}",
            f"--cache_dir={tmp_path / 'cache'}", *TINY_PRETRAIN, "--num_epochs=1")
    assert code == 0, err
    assert "pipe.png" in printed and "named pipe (FIFO)" in printed
    assert "bad\\xff.png" in printed and "not valid UTF-8" in printed
    assert "four.tif" in printed and "4 bands" in printed and "skipped 1 unreadable" in printed
    # plot_results.py: augmentations.png from a folder with a FIFO, every image chosen
    os.mkfifo(images / "part0" / "pipe.png")
    with within(60):
        code, printed, err = run_in_process(
            "plot_results.py", f"--output_dir={out}", f"--figures_dir={tmp_path / 'figures'}",
            f"--augment_images_dir={images / 'part0'}", "--augment_images=40")
    assert code == 0 and "augmentations.png" in printed, printed + err
    # classify_image.py: a folder with a FIFO and a name that is not UTF-8 (the predictions CSV
    # used to fail on it after all the work was done), and a FIFO named as the image
    with within(60):
        code, printed, err = run_in_process("classify_image.py", str(images),
                                            f"--model_path={corpus['classifier']}",
                                            f"--output_csv={tmp_path / 'p.csv'}")
        assert code == 0 and "pipe.png" in printed and "bad\\xff.png" in printed, err
        assert "classified 16 of 17 images (1 unreadable" in printed  # four.tif
        _assert_clear_failure(run_in_process("classify_image.py", str(images / "pipe.png"),
                                             f"--model_path={corpus['classifier']}"),
                              "pipe.png", "not a regular file")
        # the split files and the label map that plot_results.py and the evaluations read
        eurosat = _copy_eurosat(corpus, tmp_path)
        os.remove(eurosat / "label_map.json")
        os.mkfifo(eurosat / "label_map.json")
        with pytest.raises(DataError, match="label_map.json.*named pipe"):
            data.read_eurosat_split(str(eurosat), str(eurosat / "test.csv"),
                                    str(eurosat / "label_map.json"))


def test_make_dataset_skips_fifos_and_follows_symlinked_folders(tmp_path, capsys):
    import make_dataset as md
    from make_demo_data import write_ssl4eo_zarr
    real = tmp_path / "elsewhere"
    real.mkdir()
    write_ssl4eo_zarr(str(real / "a.zarr.zip"), n_samples=1, size=8)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    os.symlink(real, inputs / "linked")
    os.symlink(inputs, inputs / "linked" / "loop")  # a link back up: listed once, named
    os.mkfifo(inputs / "pipe.zarr.zip")
    # a process of its own: a FIFO would block zarr's I/O thread, which no alarm interrupts
    run = run_script("make_dataset.py", f"--input_dir={inputs}",
                     f"--output_dir={tmp_path / 'png'}", f"--manifest={tmp_path / 'manifest.csv'}",
                     "--num_processes=1", timeout=120)
    printed = run.stdout + run.stderr
    assert run.returncode == 0 and "1 files (0 failed)" in printed, printed
    assert "pipe.zarr.zip" in printed and "named pipe (FIFO)" in printed
    assert "loop" in printed and "listed already" in printed
    # EuroSAT class folders: a FIFO and a name that is not UTF-8 are left out of the splits, named
    root = tmp_path / "EuroSAT"
    for name in ("Forest", "River"):
        (root / name).mkdir(parents=True)
        for k in range(1, 6):
            (root / name / f"{name}_{k}.jpg").write_bytes(b"")
    os.mkfifo(root / "Forest" / "Forest_9.jpg")
    (root / "River" / os.fsdecode(b"River_\xe9.jpg")).write_bytes(b"")
    md.write_eurosat_splits(str(root), seed=0)
    printed = capsys.readouterr().out
    listed = "".join((root / f).read_text() for f in ("train.csv", "validation.csv", "test.csv"))
    assert "Forest_9" not in listed and "River_" in listed and listed.count(".jpg") == 10
    assert "Forest_9.jpg" in printed and "River_\\xe9.jpg" in printed


def test_symlinked_subfolders_are_listed_and_loops_named(tmp_path, capsys):
    images = tmp_path / "images"
    write_images(str(images / "own"), 2)
    write_images(str(tmp_path / "elsewhere"), 4)
    os.symlink(tmp_path / "elsewhere", images / "linked")
    os.symlink(images, images / "own" / "loop")
    os.symlink(tmp_path / "elsewhere", images / "again")  # a second way to the same folder
    paths = data.list_images(str(images))
    printed = capsys.readouterr().out
    assert len(paths) == 6 and len(set(map(os.path.realpath, paths))) == 6, paths
    assert "loop" in printed and "again" in printed and "listed already" in printed


def test_file_names_that_are_not_utf8(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(good)
    bad = tmp_path / BAD_NAME
    bad.write_bytes(good.read_bytes())
    # the cache key and its index of kept files handle them
    images, kept, unreadable = data.build_image_cache([str(good), str(bad)],
                                                      str(tmp_path / "cache"), desc=False)
    assert len(images) == 2 and kept == [str(good), str(bad)] and not unreadable
    # a setting, or the image named on the command line, is refused at start-up
    code, _, err = run_in_process("classify_image.py", str(bad))
    assert code == 2 and "not valid UTF-8" in err and "bad\\xff.png" in err


# -------------------------------------------------------------------------------------------------
# splits and data

def test_an_image_in_two_splits_or_twice_in_one_is_refused(corpus, tmp_path):
    eurosat = _copy_eurosat(corpus, tmp_path)
    train, test = eurosat / "train.csv", eurosat / "test.csv"
    original = {f: f.read_text() for f in (train, test)}
    row = original[train].splitlines()[1].split(",")  # index, Filename, Label, ClassName
    test.write_text(original[test] + ",".join(["99", "./" + row[1], *row[2:]]) + "\n")
    with pytest.raises(DataError) as error:
        data.load_eurosat_splits(str(eurosat), str(tmp_path / "cache"), torch.device("cpu"))
    assert all(n in str(error.value) for n in (row[1], "train.csv", "test.csv")), error.value
    test.write_text(original[test])
    train.write_text(original[train] + ",".join(["99", "./" + row[1], *row[2:]]) + "\n")
    with pytest.raises(DataError, match=f"train.csv: line .* repeats .*{row[1]}"):
        data.read_eurosat_split(str(eurosat), str(train), str(eurosat / "label_map.json"))


def test_a_class_folder_with_no_usable_image_is_refused(tmp_path):
    import make_dataset as md
    root = tmp_path / "EuroSAT"
    for name in ("Forest", "River"):
        (root / name).mkdir(parents=True)
        (root / name / f"{name}_1.jpg").write_bytes(b"")
    (root / "Highway").mkdir()
    (root / "Highway" / "notes.txt").write_text("the images are still downloading")
    with pytest.raises(DataError, match="Highway"):
        md.write_eurosat_splits(str(root), seed=0)
    assert not (root / "train.csv").exists() and not (root / "label_map.json").exists()


@pytest.mark.slow
def test_a_reference_batch_with_one_readable_image_is_skipped(tmp_path):
    images = tmp_path / "images"
    write_images(str(images), 3)
    (images / "broken.png").write_bytes(b"not an image")
    # batches of 2 from 4 images: the broken one shares a batch with one readable image, which
    # alone cannot pass BatchNorm; that step is skipped and the epoch ends
    code, printed, err = run_in_process(
        "train_simsiam.py", f"--data_dir={images}", f"--output_dir={tmp_path / 'out'}",
        *TINY_PRETRAIN, "--batch_size=2", "--pipeline=reference", "--num_epochs=2")
    assert code == 0, err
    assert "epoch 2/2" in printed and "skipped 1 unreadable" in printed


# -------------------------------------------------------------------------------------------------
# start-up: sizes that cannot fit, torchrun variables, non-finite checkpoints

@pytest.mark.parametrize("script, setting, names", [
    ("train_simsiam.py", "--proj_dim=204800", ["PROJ_DIM"]),
    ("train_simsiam.py", "--image_size=22400", ["IMAGE_SIZE", "BATCH_SIZE"]),
    ("Linear_evaluation.py", "--image_size=22400", ["IMAGE_SIZE", "BATCH_SIZE"]),
    ("finetune_model.py", "--image_size=22400", ["IMAGE_SIZE", "BATCH_SIZE"]),
])
def test_a_size_that_cannot_fit_is_refused_at_start_up(tmp_path, script, setting, names):
    nowhere = tmp_path / "nowhere"
    where = ([f"--data_dir={nowhere}"] if script == "train_simsiam.py"
             else [f"--eurosat_dir={nowhere}", "--pretrained_path=random"])
    code, _, err = run_in_process(script, *where, f"--output_dir={tmp_path / 'out'}",
                                  "--arch=resnet18", setting)
    assert code == 2 and "GiB" in err and all(n in err for n in names), err
    assert "nowhere" not in err and not (tmp_path / "out").exists()


def test_the_defaults_fit_an_8_gb_gpu_and_the_estimate_is_no_trifle(monkeypatch):
    import runtime
    import train_simsiam  # its constants are the defaults: ResNet-50, 224 px, batch 32, dim 2048
    monkeypatch.setattr(runtime, "device_memory", lambda device: 8 * 2**30)
    train_simsiam.check_memory(torch.device("cuda"))
    monkeypatch.setattr(runtime, "device_memory", lambda device: 2 * 2**30)
    with pytest.raises(SystemExit):
        train_simsiam.check_memory(torch.device("cuda"))


@pytest.mark.parametrize("variables", [{"WORLD_SIZE": "2", "RANK": "0"}, {"RANK": "1"},
                                       {"WORLD_SIZE": "two"}])
def test_torchrun_variables_without_torchrun_are_named(tmp_path, monkeypatch, variables):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    images = tmp_path / "images"
    write_images(str(images), 8)
    with within(60):
        code, _, err = run_in_process("train_simsiam.py", f"--data_dir={images}",
                                      f"--output_dir={tmp_path / 'out'}",
                                      f"--cache_dir={tmp_path / 'cache'}", *TINY_PRETRAIN,
                                      "--num_epochs=1")
    assert code == 2 and "torchrun" in err and "unset" in err, err
    assert all(name in err for name in variables)


def test_non_finite_weights_are_refused_by_name_at_load(corpus, tmp_path):
    from simsiam_model import backbone_from_checkpoint, check_finite, classifier_from_checkpoint
    pretrained = torch.load(corpus["checkpoint"], weights_only=True)
    model = dict(pretrained["model"])
    model["backbone.layer2.0.conv1.weight"] = model["backbone.layer2.0.conv1.weight"].clone()
    model["backbone.layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(dict(pretrained, model=model), tmp_path / "diverged.pth")
    with pytest.raises(CheckpointError, match=r"diverged\.pth.*layer2\.0\.conv1\.weight.*NaN"):
        backbone_from_checkpoint(str(tmp_path / "diverged.pth"))
    classifier = torch.load(corpus["classifier"], weights_only=True)
    head = {k: v.clone() for k, v in classifier["head"].items()}
    head["bias"][0] = float("inf")
    torch.save(dict(classifier, head=head), tmp_path / "head.pth")
    with pytest.raises(CheckpointError, match=r"head\.pth.*bias.*inf"):
        classifier_from_checkpoint(str(tmp_path / "head.pth"))
    check_finite(classifier["head"], "fine.pth")  # finite weights pass
    # the evaluation scripts stop with the message, not with "lower --base_lr"
    code, _, err = run_in_process("Linear_evaluation.py", f"--eurosat_dir={corpus['eurosat']}",
                                  f"--output_dir={tmp_path / 'out'}",
                                  f"--cache_dir={tmp_path / 'cache'}",
                                  f"--pretrained_path={tmp_path / 'diverged.pth'}")
    assert code == 1 and "diverged.pth" in err and "NaN" in err and "base_lr" not in err
