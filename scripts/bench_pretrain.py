"""Pre-training throughput: the model alone (ceiling), the write-up's pipeline (reference) and the
default (fast).

    python scripts/bench_pretrain.py --arch=resnet18 --image_size=64 --batch_size=64   # CPU
    python scripts/bench_pretrain.py --arch=resnet50 --image_size=224 --batch_size=256 # GPU (bf16)
    # the CPU preset's step in fp32, with channels_last flipped and with torch.compile:
    python scripts/bench_pretrain.py --arch=resnet18 --small_stem=True --image_size=32 \
        --batch_size=32 --amp=off --rows=default --variants=True

Every row runs the same SimSiam training step (forward, backward, SGD step) on the same images:
- ceiling:       batches already on the device, normalised; no data work at all
- reference:     PNG decode + per-sample PIL transforms (simsiam_transform_pair) in DataLoader
                 workers, fp32, NCHW (the write-up's pipeline as written; on CUDA its convolutions
                 run in TF32, as PyTorch's default allows, so the row says tf32)
- reference_amp: the same pipeline with the default's precision and memory format: what precision
                 alone gains
- default:       train_simsiam.py's PIPELINE="fast": decoded-once uint8 memory map, BatchAugment on
                 the device (on CUDA made one batch ahead on a side stream, as OVERLAP_DATA does),
                 AMP as train_simsiam.py chooses it (bf16 where native: a GPU of compute
                 capability 8.0+, a CPU with AVX512-BF16 or AMX), channels_last
- default_serial (CUDA, with OVERLAP_DATA): the default with each batch's data work on the
                 model's stream (OVERLAP_DATA = False makes the default itself serial)
- default_data_only: the default's data work (cache read, copy, both augmented views) without
                 the model: what the default pays over the ceiling, in ms per step
- ceiling_graphs, default_graphs (with --graphs=True, CUDA only): the ceiling and the default with
                 the step compiled into CUDA graphs, as train_simsiam.py's CUDA_GRAPHS does (its
                 compilation is in warmup_s, not in the rate)
- ceiling_<format>, default_<format> (with --variants=True): the ceiling and the default in the
                 other memory format (channels_last where theirs is NCHW, or nchw), and
                 ceiling_compile, default_compile: in theirs, with torch.compile (COMPILE of
                 train_simsiam.py; compilation in warmup_s): the ratios to the ceiling and the
                 default say which of CHANNELS_LAST and COMPILE pay off on this machine
Every row makes the views train_simsiam.py would make with the same augmentation settings (the
write-up's by default; scripts/plan_quality.py passes the GPU preset's).
How the steps are timed (time_window): warm-up steps are left out; the window opens when the
first timed batch is in hand and closes when the batch after the last is, so it holds as many
batch fetches as steps (all the default's data work), and the DataLoader's batches, which land in
waves of NUM_WORKERS, are timed over whole waves from one wave's landing to another's. Prints a
table; OUTPUT_JSON is rewritten after each row, so a late failure (out of memory at a large batch,
a killed run) keeps the rows already measured.
"""
import atexit
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import simsiam_data as data  # noqa: E402
from runtime import (AMP_MODES, amp_dtype_for, at_least, atomic_write, autocast_for,  # noqa: E402
                     check_settings, configure, describe_device, fail, library_versions, one_of,
                     pick_device, precision_name, run, speed_up_cuda)
from simsiam_model import SimSiam, negative_cosine_loss  # noqa: E402

# -------------------------------------------------------------------------------------------------
DATA_DIR = ""  # folder of images; "" = NUM_IMAGES generated PNGs of SOURCE_SIZE px (GENERATED_DIR)
GENERATED_DIR = ""  # where generated PNGs go; "" = a temp folder, removed at the end; a folder
#                     that already holds them (a second run at another batch size) is reused
NUM_IMAGES = 512  # generated images (when DATA_DIR is "")
SOURCE_SIZE = 0  # generated image side, px; 0 = 264 (SSL4EO-S12 patch) if IMAGE_SIZE > 64, else 64
ARCH = "resnet18"  # resnet18 | resnet34 | resnet50
SMALL_STEM = False  # 3x3 stride-1 first conv, no max-pool (train_simsiam.py's option for 32-64 px)
STEM_STRIDE = 1  # the small stem's conv stride (train_simsiam.py's STEM_STRIDE)
ROWS = "all"  # all | default: only the ceiling and the default (what gpu_check.sh plans with)
IMAGE_SIZE = 64  # crop size fed to the network
BATCH_SIZE = 64  # pairs per step
STEPS = 10  # timed steps per pipeline
WARMUP_STEPS = 3  # untimed steps first (allocations, cudnn autotune, worker start-up)
NUM_WORKERS = 2  # DataLoader workers, reference pipeline (the write-up's way of feeding the GPU)
AMP = "auto"  # train_simsiam.py's AMP (auto: bf16 where native) for all but reference (fp32)
CHANNELS_LAST = True  # channels_last for ceiling, reference_amp, default (faster on CUDA and CPU)
VARIANTS = False  # also time ceiling and default in the other memory format and with torch.compile
CACHE_DIR = ""  # where the default pipeline keeps its decoded array; "" = a temp folder
GRAPHS = False  # also time ceiling and default with CUDA graphs (CUDA; compiles first, minutes)
OVERLAP_DATA = True  # CUDA: the default makes the next batch on a side stream (train_simsiam.py's)
# the augmentations, as train_simsiam.py's settings of the same names (defaults: the write-up's,
# simsiam_data.WRITEUP_VIEWS)
CROP_SCALE_MIN = 0.2  # RandomResizedCrop lower area bound
SOLARIZE = True  # solarise view 2 with p=0.2
JITTER_STRENGTH = 1.0  # scales ColorJitter(0.4, 0.4, 0.4, 0.1)
JITTER_P = 0.8  # probability of colour jitter
GRAY_P = 0.2  # probability of random grayscale
BLUR_P = 0.5  # probability of Gaussian blur
VFLIP_P = 0.0  # probability of a vertical flip
ROTATE90 = False  # rotate each view by a random multiple of 90 degrees
DEVICE = "auto"  # auto | cuda | cpu
OUTPUT_JSON = "bench_results/bench_pretrain.json"  # the table as JSON
# -------------------------------------------------------------------------------------------------


def peak_memory_mib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # process peak RSS (Linux: KiB)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generated_images(folder, count, size):
    """Paths of `count` smooth random PNGs of `size` px in `folder` (seed 0), written unless the
    folder already holds them."""
    paths = [os.path.join(folder, f"img_{i:05d}.png") for i in range(count)]
    if all(os.path.isfile(p) for p in paths) and data.open_rgb(paths[0]).size == (size, size):
        print(f"reusing {count} generated PNGs of {size} px in {folder}")
        return paths
    print(f"generating {count} PNGs of {size} px in {folder}")
    rng = np.random.default_rng(0)
    for path in paths:
        yy, xx = np.mgrid[0:size, 0:size] / size
        base = rng.uniform(40, 200, size=3)
        pixels = base + 40 * np.sin(2 * np.pi * (rng.uniform(1, 6) * xx
                                                 + rng.uniform(1, 6) * yy))[..., None]
        pixels = np.clip(pixels + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        # whole files only: a killed run leaves nothing that a later one would reuse half-written
        with atomic_write(path, "wb", durable=False) as f:
            Image.fromarray(pixels).save(f, format="PNG")
    return paths


def precision_label(device, amp_dtype):
    """What a row computes in: an fp32 step on CUDA runs its convolutions in TF32 wherever cuDNN
    may (PyTorch's default, and speed_up_cuda's), so it is named tf32 there."""
    if amp_dtype is None and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return precision_name(amp_dtype)


def training_step(model, optimizer, scaler, device, amp_dtype, channels_last, graphs=False):
    """One SimSiam step on a pair of views, as train_simsiam.py takes it."""
    def step(views):
        x1, x2 = (x.to(device, non_blocking=True) for x in views)
        if channels_last:
            x1, x2 = (x.contiguous(memory_format=torch.channels_last) for x in (x1, x2))
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with autocast_for(device, amp_dtype):
            p1, p2, z1, z2 = model(x1, x2)
            loss = negative_cosine_loss(p1.float(), p2.float(), z1.float(), z2.float())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def time_window(name, batches, step, skip, count, device):
    """(seconds of the `skip` untimed steps, seconds of the next `count` steps) over `batches`.

    The window opens when the first timed batch is in hand and closes when the batch after the
    last timed step is: it holds `count` steps and `count` batch fetches, so a pipeline's data
    work is all inside it. For a DataLoader whose batches land in waves of W (the W workers make
    one batch each per interval), with `skip` ending a wave and `count` a multiple of W, the
    window runs from one wave's landing to another's: whole worker intervals, and no wave that
    was already queued when it opened.
    """
    iterator = iter(batches)
    try:
        started = time.perf_counter()
        for _ in range(skip):
            step(next(iterator))
        batch = next(iterator)
        synchronize(device)
        warmed = time.perf_counter()
        for _ in range(count):
            step(batch)
            batch = next(iterator)
        synchronize(device)
    except StopIteration:
        fail(f"too few batches for {name}: use more --num_images or fewer --steps")
    return warmed - started, time.perf_counter() - warmed


def timed(name, batches, step, device, precision, skip=None, count=None):
    """Time `count` (default STEPS) steps after `skip` (default WARMUP_STEPS); print and return
    the row."""
    skip = WARMUP_STEPS if skip is None else skip
    count = STEPS if count is None else count
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup_s, elapsed = time_window(name, batches, step, skip, count, device)
    row = {"pairs_per_s": count * BATCH_SIZE / elapsed, "ms_per_step": elapsed / count * 1000,
           "peak_mib": peak_memory_mib(device), "timed_steps": count, "warmup_s": warmup_s,
           "precision": precision_label(device, precision)}
    print(f"{name:<15} {row['pairs_per_s']:8.1f} pairs/s  ({row['ms_per_step']:.0f} ms/step over "
          f"{count} steps, {row['precision']}, peak {row['peak_mib']:.0f} MiB)", flush=True)
    return row


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_json(summary):
    with atomic_write(OUTPUT_JSON, "w") as f:
        json.dump(summary, f, indent=2)


def benchmark_images(workdir):
    """The images every row reads: DATA_DIR's, or generated ones; repeated (same work per image)
    to cover the most batches a row takes: the reference's skipped wave, its timed waves and the
    batch that closes its window, or the default's warm-up, timed steps and closing batch."""
    if DATA_DIR:
        paths = data.list_images(DATA_DIR)
        if not paths:
            fail(f"DATA_DIR = {DATA_DIR!r} holds no images; point --data_dir at a folder of "
                 "images, or leave it empty to generate some", code=2)
    else:
        paths = generated_images(GENERATED_DIR or os.path.join(workdir, "images"), NUM_IMAGES,
                                 SOURCE_SIZE or (264 if IMAGE_SIZE > 64 else 64))
    workers, waves = loader_waves()
    needed = max(workers * (1 + waves) + 1, WARMUP_STEPS + STEPS + 1) * BATCH_SIZE
    return (paths * (needed // len(paths) + 1))[:needed] if len(paths) < needed else paths


def loader_waves():
    """(W, timed waves) of the reference rows: the DataLoader's batches land in waves of W =
    NUM_WORKERS (one per worker and interval); at least two waves, and at least STEPS steps.
    Without workers each batch is made when it is asked for: STEPS "waves" of one."""
    if NUM_WORKERS == 0:
        return 1, STEPS
    return NUM_WORKERS, max(2, math.ceil(STEPS / NUM_WORKERS))


def fresh_step(device, use_channels_last, precision, graphs=False, compiled=False):
    """training_step of a new SimSiam, with its SGD and grad scaler; with graphs, the model is
    compiled into CUDA graphs (torch.compile mode="reduce-overhead"), as CUDA_GRAPHS does; with
    compiled, by plain torch.compile, as COMPILE does."""
    model = SimSiam(ARCH, small_stem=SMALL_STEM, stem_stride=STEM_STRIDE)
    model = model.to(device, memory_format=torch.channels_last if use_channels_last
                     else torch.preserve_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05 * BATCH_SIZE / 256, momentum=0.9,
                                weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == torch.float16)
    model.train()
    if graphs:
        model = torch.compile(model, mode="reduce-overhead")
    elif compiled:
        model = torch.compile(model)
    return training_step(model, optimizer, scaler, device, precision, use_channels_last, graphs)


class Bench(NamedTuple):
    """What every row needs: where and how its steps run, and the table it adds to."""
    device: torch.device
    amp_dtype: object  # the autocast dtype of every row but the reference, or None (fp32)
    channels_last: bool  # the memory format of those rows
    views: dict  # the augmentation settings (train_simsiam.py's, by name)
    summary: dict  # what OUTPUT_JSON holds; its "results" are the rows

    def record(self, name, row):
        """Add a row to the table and rewrite OUTPUT_JSON: a later failure keeps it."""
        self.summary["results"][name] = row
        write_json(self.summary)
        return row


def reference_rows(paths, warm_batch, bench):
    """reference (the write-up's pipeline as written) and reference_amp (with the default's
    precision and memory format).

    The DataLoader asks 2 x NUM_WORKERS batches ahead. Had the workers started with the model's
    warm-up (cuDNN autotuning of a fresh model takes seconds), they would have queued them, and
    timed steps served from that queue measure the GPU, not the pipeline. So the model warms up on
    device tensors first, the workers start only then, their first wave is skipped, and whole
    waves are timed from one wave's landing to another's (time_window)."""
    dataset = data.PretrainImageDataset(paths,
                                        *data.simsiam_transform_pair(IMAGE_SIZE, **bench.views))
    workers, waves = loader_waves()

    def batches():
        yield from (warm_batch for _ in range(WARMUP_STEPS))
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=BATCH_SIZE, shuffle=True, drop_last=True,
            num_workers=NUM_WORKERS, pin_memory=bench.device.type == "cuda",
            collate_fn=data.collate_skipping, persistent_workers=False)
        yield from ((x1, x2) for x1, x2, _ in loader)

    for name, precision, memory_format in (("reference", None, False),
                                           ("reference_amp", bench.amp_dtype, bench.channels_last)):
        bench.record(name, timed(name, batches(), fresh_step(bench.device, memory_format,
                                                             precision),
                                 bench.device, precision, skip=WARMUP_STEPS + workers,
                                 count=waves * workers))


def default_rows(paths, workdir, bench):
    """default (as train_simsiam.py runs it), default_serial on CUDA with OVERLAP_DATA (its data
    work on the model's stream), default_data_only; returns the default's batches,
    pairs(side_stream)."""
    started = time.perf_counter()
    array, kept, _ = data.build_image_cache(sorted(set(paths)),
                                            CACHE_DIR or os.path.join(workdir, "cache"), log=print)
    decode_s = time.perf_counter() - started
    position = {p: i for i, p in enumerate(kept)}
    index = [position[p] for p in paths]  # the same (possibly repeated) file list as the reference
    order = np.random.default_rng(0).permutation(index)
    pair = data.batch_augment_pair(IMAGE_SIZE, **bench.views)
    device, amp_dtype = bench.device, bench.amp_dtype

    def pairs(side_stream):
        return data.augmented_pairs(array, order, BATCH_SIZE, device, pair,
                                    torch.Generator().manual_seed(0), side_stream)

    row = timed("default", pairs(OVERLAP_DATA), fresh_step(device, bench.channels_last, amp_dtype),
                device, amp_dtype)
    bench.record("default", dict(row, one_time_decode_s=decode_s))
    if device.type == "cuda" and OVERLAP_DATA:
        bench.record("default_serial", timed("default_serial", pairs(False),
                                             fresh_step(device, bench.channels_last, amp_dtype),
                                             device, amp_dtype))
    _, elapsed = time_window("default_data_only", pairs(False), lambda views: None, WARMUP_STEPS,
                             STEPS, device)
    bench.record("default_data_only", {"ms_per_step": elapsed / STEPS * 1000})
    print(f"default data work alone: {elapsed / STEPS * 1000:.0f} ms/step")
    return pairs


def graphs_rows(fixed, pairs, bench):
    """ceiling_graphs and default_graphs: one model compiled into CUDA graphs, its compilation in
    the warm-up steps (warmup_s)."""
    if bench.device.type != "cuda":
        print("note: GRAPHS needs a CUDA GPU; ceiling_graphs and default_graphs not measured")
        return
    step = fresh_step(bench.device, bench.channels_last, bench.amp_dtype, graphs=True)
    for name, batches in (("ceiling_graphs", iter(lambda: fixed, None)),
                          ("default_graphs", pairs(OVERLAP_DATA))):
        bench.record(name, timed(name, batches, step, bench.device, bench.amp_dtype))


def variant_rows(fixed, pairs, bench):
    """ceiling and default in the other memory format, then with torch.compile in theirs: one
    fresh model each, so each row is the step train_simsiam.py would take with that setting. A
    machine where torch.compile cannot build (no C++ compiler for the CPU) gets a note, not a
    traceback, and keeps the rows measured."""
    device, amp_dtype, channels_last = bench.device, bench.amp_dtype, bench.channels_last
    other = "nchw" if channels_last else "channels_last"
    for suffix, memory_format, compiled in ((other, not channels_last, False),
                                            ("compile", channels_last, True)):
        for name, batches in (("ceiling", lambda: iter(lambda: fixed, None)),
                              ("default", lambda: pairs(OVERLAP_DATA))):
            step = fresh_step(device, memory_format, amp_dtype, compiled=compiled)
            try:
                row = timed(f"{name}_{suffix}", batches(), step, device, amp_dtype)
            except Exception as error:  # torch.compile's many error types, raised at first call
                if not compiled:
                    raise
                print(f"note: torch.compile failed here ({type(error).__name__}: "
                      f"{str(error).splitlines()[0][:200]}); {name}_{suffix} not measured")
                continue
            bench.record(f"{name}_{suffix}", row)


def print_table(results, summary, decoded):
    ratios = {"default_over_reference": ("default", "reference"),
              "default_over_ceiling": ("default", "ceiling"),
              "reference_amp_over_reference": ("reference_amp", "reference"),
              "default_serial_over_ceiling": ("default_serial", "ceiling"),
              "default_graphs_over_ceiling": ("default_graphs", "ceiling"),
              "ceiling_graphs_over_ceiling": ("ceiling_graphs", "ceiling")}
    ratios.update({f"{name}_over_{name.split('_')[0]}": (name, name.split("_")[0])
                   for name in results if name.endswith(("_nchw", "_channels_last", "_compile"))})
    summary.update({key: results[a]["pairs_per_s"] / results[b]["pairs_per_s"]
                    for key, (a, b) in ratios.items() if a in results and b in results})
    write_json(summary)
    print("\n| pipeline | pairs/s | ms/step | precision | peak memory (MiB) |")
    print("| --- | --- | --- | --- | --- |")
    for name, row in results.items():
        if "pairs_per_s" in row:
            print(f"| {name} | {row['pairs_per_s']:.1f} | {row['ms_per_step']:.0f} | "
                  f"{row['precision']} | {row['peak_mib']:.0f} |")
    print("\n" + ", ".join(f"{key.replace('_over_', ' / ')} = {summary[key]:.2f}"
                           for key in ratios if key in summary)
          + f" (one-time decode of {decoded} images: "
          f"{results['default']['one_time_decode_s']:.1f} s, not in the rates); the default's "
          f"data work alone: {results['default_data_only']['ms_per_step']:.0f} ms/step")
    print(f"wrote {OUTPUT_JSON}")


def main():
    config, _ = configure(globals())
    check_settings(config, {"ARCH": one_of("resnet18", "resnet34", "resnet50"),
                            "IMAGE_SIZE": at_least(8), "BATCH_SIZE": at_least(2),
                            "STEPS": at_least(1), "WARMUP_STEPS": at_least(1),
                            "NUM_IMAGES": at_least(1), "NUM_WORKERS": at_least(0),
                            "AMP": one_of(*AMP_MODES), "ROWS": one_of("all", "default"),
                            **data.augmentation_rules(),
                            "STEM_STRIDE": ((lambda v: v == 1 or (v == 2 and SMALL_STEM)),
                                            "1, or 2 with --small_stem=True")})
    device = pick_device(DEVICE)
    amp_dtype, precision_reason = amp_dtype_for(device, AMP)
    views = data.augmentation_settings(config)  # the same views as train_simsiam.py's
    tuned = speed_up_cuda(device)
    torch.manual_seed(0)
    workdir = tempfile.mkdtemp(prefix="bench_pretrain_")  # generated images, the default's cache
    atexit.register(shutil.rmtree, workdir, True)
    paths = benchmark_images(workdir)
    print(f"device: {describe_device(device)}; {ARCH} at {IMAGE_SIZE} px, batch {BATCH_SIZE} "
          f"pairs, {STEPS} timed steps after {WARMUP_STEPS} warm-up; "
          f"precision {precision_name(amp_dtype)} ({precision_reason}; reference: "
          f"{precision_label(device, None)}){'; ' + tuned if tuned else ''}")
    summary = {"config": config, "device": describe_device(device), "versions": library_versions(),
               "precision": precision_name(amp_dtype), "precision_reason": precision_reason,
               "results": {}}
    bench = Bench(device, amp_dtype, CHANNELS_LAST, views, summary)

    # ---- ceiling: the model step on tensors already on the device ----
    fixed = [torch.randn(BATCH_SIZE, 3, IMAGE_SIZE, IMAGE_SIZE, device=device) for _ in range(2)]
    bench.record("ceiling", timed("ceiling", iter(lambda: fixed, None),
                                  fresh_step(device, CHANNELS_LAST, amp_dtype), device, amp_dtype))
    # ---- the write-up's pipeline, the default, and the default with CUDA graphs ----
    if ROWS == "all":
        reference_rows(paths, fixed, bench)
    pairs = default_rows(paths, workdir, bench)
    if GRAPHS:
        graphs_rows(fixed, pairs, bench)
    if VARIANTS:
        variant_rows(fixed, pairs, bench)
    print_table(summary["results"], summary, len(set(paths)))


if __name__ == "__main__":
    run(main)
