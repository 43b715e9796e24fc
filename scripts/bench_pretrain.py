"""Pre-training throughput: the model alone (ceiling), the write-up's pipeline (reference) and the
default (fast).

    python scripts/bench_pretrain.py --arch=resnet18 --image_size=64 --batch_size=64   # CPU
    python scripts/bench_pretrain.py --arch=resnet50 --image_size=224 --batch_size=256 # GPU (bf16)

All four run the same SimSiam training step (forward, backward, SGD step) on the same images:
- ceiling:       batches already on the device, normalised; no data work at all
- reference:     PNG decode + per-sample PIL transforms (simsiam_transform_v1/v2) in DataLoader
                 workers, fp32, NCHW (the write-up's pipeline as written)
- reference_amp: the same pipeline with the default's precision and memory format: what precision
                 alone gains
- default:       train_simsiam.py's PIPELINE="fast": decoded-once uint8 memory map, BatchAugment on
                 the device, AMP as train_simsiam.py chooses it, channels_last on CUDA (and under
                 bf16 on a CPU)
- default_data_only: the default's data work (cache read, copy, both augmented views) without
                 the model: what the default pays over the ceiling, in ms per step
Warm-up steps are excluded; the reference rows also skip the DataLoader's first wave of batches
and time at least two more (see the comment there). Prints a table; OUTPUT_JSON is rewritten after
each pipeline, so a late failure (out of memory at a large batch, a killed run) keeps the rows
already measured.
"""
import atexit
import json
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import simsiam_data as data  # noqa: E402
from runtime import (AMP_MODES, amp_dtype_for, at_least, atomic_write, autocast_for,  # noqa: E402
                     channels_last_for, check_settings, configure, describe_device, fail,
                     library_versions, one_of, pick_device, precision_name, run, speed_up_cuda)
from simsiam_model import SimSiam, negative_cosine_loss  # noqa: E402

# -------------------------------------------------------------------------------------------------
DATA_DIR = ""  # folder of images; "" = NUM_IMAGES generated PNGs of SOURCE_SIZE px (GENERATED_DIR)
GENERATED_DIR = ""  # where generated PNGs go; "" = a temp folder, removed at the end; a folder
#                     that already holds them (a second run at another batch size) is reused
NUM_IMAGES = 512  # generated images (when DATA_DIR is "")
SOURCE_SIZE = 0  # generated image side, px; 0 = 264 (SSL4EO-S12 patch) if IMAGE_SIZE > 64, else 64
ARCH = "resnet18"  # resnet18 | resnet34 | resnet50
SMALL_STEM = False  # 3x3 stride-1 first conv, no max-pool (train_simsiam.py's option for 32-64 px)
IMAGE_SIZE = 64  # crop size fed to the network
BATCH_SIZE = 64  # pairs per step
STEPS = 10  # timed steps per pipeline
WARMUP_STEPS = 3  # untimed steps first (allocations, cudnn autotune, worker start-up)
NUM_WORKERS = 2  # DataLoader workers, reference pipeline (the write-up's way of feeding the GPU)
AMP = "auto"  # as train_simsiam.py's AMP, for ceiling, reference_amp, default (reference: fp32)
CHANNELS_LAST = True  # channels_last on CUDA (and bf16 on CPU) for ceiling, reference_amp, default
CACHE_DIR = ""  # where the default pipeline keeps its decoded array; "" = a temp folder
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


def timed(name, batches, model, optimizer, device, amp_dtype, channels_last, scaler,
          warmup=None, steps=None):
    """Run `warmup` (default WARMUP_STEPS) + `steps` (default STEPS) training steps over `batches`;
    return pairs/s of the timed steps."""
    warmup = WARMUP_STEPS if warmup is None else warmup
    steps = STEPS if steps is None else steps
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    count, started = 0, None
    for x1, x2 in batches:
        if count == warmup:
            synchronize(device)
            started = time.perf_counter()
        x1, x2 = x1.to(device, non_blocking=True), x2.to(device, non_blocking=True)
        if channels_last:
            x1, x2 = (x1.contiguous(memory_format=torch.channels_last),
                      x2.contiguous(memory_format=torch.channels_last))
        with autocast_for(device, amp_dtype):
            p1, p2, z1, z2 = model(x1, x2)
            loss = negative_cosine_loss(p1.float(), p2.float(), z1.float(), z2.float())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        count += 1
        if count == warmup + steps:
            break
    loss.item()  # waits for the device
    if count < warmup + steps:
        fail(f"only {count} batches for {name}; use more images or fewer --steps")
    elapsed = time.perf_counter() - started
    pairs_per_s = steps * BATCH_SIZE / elapsed
    print(f"{name:<10} {pairs_per_s:8.1f} pairs/s  ({elapsed / steps * 1000:.0f} ms/step over "
          f"{steps} steps, peak {peak_memory_mib(device):.0f} MiB)", flush=True)
    return {"pairs_per_s": pairs_per_s, "ms_per_step": elapsed / steps * 1000,
            "peak_mib": peak_memory_mib(device), "timed_steps": steps}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_json(summary):
    with atomic_write(OUTPUT_JSON, "w") as f:
        json.dump(summary, f, indent=2)


def main():
    config, _ = configure(globals())
    check_settings(config, {"ARCH": one_of("resnet18", "resnet34", "resnet50"),
                            "IMAGE_SIZE": at_least(8), "BATCH_SIZE": at_least(2),
                            "STEPS": at_least(1), "WARMUP_STEPS": at_least(1),
                            "NUM_IMAGES": at_least(1), "NUM_WORKERS": at_least(0),
                            "AMP": one_of(*AMP_MODES)})
    device = pick_device(DEVICE)
    amp_dtype, precision_reason = amp_dtype_for(device, AMP)
    channels_last = channels_last_for(device, amp_dtype, CHANNELS_LAST)
    tuned = speed_up_cuda(device)
    torch.manual_seed(0)
    workdir = tempfile.mkdtemp(prefix="bench_pretrain_")  # generated images, the default's cache
    atexit.register(shutil.rmtree, workdir, True)
    if DATA_DIR:
        paths = data.list_images(DATA_DIR)
        if not paths:
            fail(f"DATA_DIR = {DATA_DIR!r} holds no images; point --data_dir at a folder of "
                 "images, or leave it empty to generate some", code=2)
    else:
        paths = generated_images(GENERATED_DIR or os.path.join(workdir, "images"), NUM_IMAGES,
                                 SOURCE_SIZE or (264 if IMAGE_SIZE > 64 else 64))
    # The reference rows skip the DataLoader's first wave and time at least two more (see there);
    # every pipeline reads this one list, repeated as needed (same work per image)
    skipped = WARMUP_STEPS + max(1, NUM_WORKERS)
    loader_steps = max(STEPS, 2 * NUM_WORKERS)
    needed = (skipped + loader_steps) * BATCH_SIZE
    if len(paths) < needed:
        paths = (paths * (needed // len(paths) + 1))[:needed]
    print(f"device: {describe_device(device)}; {ARCH} at {IMAGE_SIZE} px, batch {BATCH_SIZE} "
          f"pairs, {STEPS} timed steps after {WARMUP_STEPS} warm-up; "
          f"precision {precision_name(amp_dtype)} "
          f"({precision_reason}; reference: fp32){'; ' + tuned if tuned else ''}")

    def fresh_model(use_channels_last, precision):
        model = SimSiam(ARCH, small_stem=SMALL_STEM)
        model = model.to(device, memory_format=torch.channels_last if use_channels_last
                         else torch.preserve_format)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05 * BATCH_SIZE / 256, momentum=0.9,
                                    weight_decay=1e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=precision == torch.float16)
        return model, optimizer, scaler

    results = {}
    summary = {"config": config, "device": describe_device(device), "versions": library_versions(),
               "precision": precision_name(amp_dtype), "precision_reason": precision_reason,
               "results": results}
    # ---- ceiling: the model step on tensors already on the device ----
    model, optimizer, scaler = fresh_model(channels_last, amp_dtype)
    fixed = [torch.randn(BATCH_SIZE, 3, IMAGE_SIZE, IMAGE_SIZE, device=device) for _ in range(2)]
    results["ceiling"] = timed("ceiling", iter(lambda: fixed, None), model, optimizer, device,
                               amp_dtype, channels_last, scaler)
    write_json(summary)

    # ---- reference: the write-up's pipeline as written (fp32), then with the default's
    # precision ----
    # The DataLoader fills NUM_WORKERS x 2 batches ahead. Had the workers started with the model's
    # warm-up (cuDNN autotuning takes seconds), the timed steps would be served from that cushion
    # and measure the GPU, not the pipeline. So the model warms up on device tensors first, the
    # workers start only then, their first wave of batches is skipped, and the timed steps span at
    # least two further waves (one wave of NUM_WORKERS batches arrives nearly at once).
    def loader_batches(model_warmup):
        yield from (model_warmup for _ in range(WARMUP_STEPS))
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=BATCH_SIZE, shuffle=True, drop_last=True,
            num_workers=NUM_WORKERS, pin_memory=device.type == "cuda",
            collate_fn=data.collate_skipping, persistent_workers=False)
        yield from ((x1, x2) for x1, x2, _ in loader)

    dataset = data.PretrainImageDataset(paths, data.simsiam_transform_v1(IMAGE_SIZE),
                                        data.simsiam_transform_v2(IMAGE_SIZE))
    for name, precision, memory_format in (("reference", None, False),
                                           ("reference_amp", amp_dtype, channels_last)):
        model, optimizer, scaler = fresh_model(memory_format, precision)
        results[name] = timed(name, loader_batches(fixed), model, optimizer, device, precision,
                              memory_format, scaler, warmup=skipped, steps=loader_steps)
        write_json(summary)

    # ---- default: decode once, batched augmentation on the device ----
    model, optimizer, scaler = fresh_model(channels_last, amp_dtype)
    started = time.perf_counter()
    array, kept, _ = data.build_image_cache(sorted(set(paths)),
                                            CACHE_DIR or os.path.join(workdir, "cache"), log=print)
    decode_s = time.perf_counter() - started
    position = {p: i for i, p in enumerate(kept)}
    index = [position[p] for p in paths]  # the same (possibly repeated) file list as the reference
    augment1, augment2 = data.batch_augment_pair(IMAGE_SIZE)
    generator = torch.Generator().manual_seed(0)
    order = np.random.default_rng(0).permutation(index)
    batches = ((augment1(b, generator), augment2(b, generator))
               for _, b in data.iterate_batches(array, order, BATCH_SIZE, device))
    results["default"] = timed("default", batches, model, optimizer, device, amp_dtype,
                               channels_last, scaler)
    results["default"]["one_time_decode_s"] = decode_s
    write_json(summary)

    # ---- the default's data work alone (cache read, copy, both views): its cost over ceiling ----
    views = ((augment1(b, generator), augment2(b, generator))
             for _, b in data.iterate_batches(array, order, BATCH_SIZE, device))
    for count, _ in enumerate(views):
        if count == WARMUP_STEPS:
            synchronize(device)
            started = time.perf_counter()
        if count == WARMUP_STEPS + STEPS:
            break
    synchronize(device)
    results["default_data_only"] = {
        "ms_per_step": (time.perf_counter() - started) / STEPS * 1000}
    print(f"default data work alone: {results['default_data_only']['ms_per_step']:.0f} ms/step")

    ratio_reference = results["default"]["pairs_per_s"] / results["reference"]["pairs_per_s"]
    ratio_ceiling = results["default"]["pairs_per_s"] / results["ceiling"]["pairs_per_s"]
    summary.update(default_over_reference=ratio_reference, default_over_ceiling=ratio_ceiling,
                   reference_amp_over_reference=results["reference_amp"]["pairs_per_s"]
                   / results["reference"]["pairs_per_s"])
    write_json(summary)
    print()
    print("| pipeline | pairs/s | ms/step | peak memory (MiB) |")
    print("| --- | --- | --- | --- |")
    for name in ("ceiling", "reference", "reference_amp", "default"):
        r = results[name]
        print(f"| {name} | {r['pairs_per_s']:.1f} | {r['ms_per_step']:.0f} | "
              f"{r['peak_mib']:.0f} |")
    print(f"\ndefault / reference = {ratio_reference:.2f}x, "
          f"default / ceiling = {ratio_ceiling:.2f}, "
          f"reference_amp / reference = {summary['reference_amp_over_reference']:.2f}x "
          f"(one-time decode of {len(kept)} images: {decode_s:.1f} s, not in the rates); "
          f"the default's data work alone: "
          f"{results['default_data_only']['ms_per_step']:.0f} ms/step")
    print(f"wrote {OUTPUT_JSON}")


if __name__ == "__main__":
    run(main)
