"""The fast batched augmentation (BatchAugment) draws from the same distribution as the write-up's
PIL pipeline."""
import math

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF

import simsiam_data as data

N = 4000  # parameter draws: rates then hold to about +-0.02 (3 sigma)


def _params(**kwargs):
    return data.BatchAugment(32, **kwargs).sample_params(N, 64, 48,
                                                         torch.Generator().manual_seed(1))


def test_crop_area_and_aspect_ratio_match_torchvision():
    boxes = _params()["boxes"]
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area, aspect = (w * h / (64 * 48)).numpy(), (w / h).numpy()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 48).all() and (boxes[:, 3] <= 64).all()
    torch.manual_seed(1)
    reference = [T.RandomResizedCrop.get_params(torch.zeros(3, 64, 48), (0.2, 1.0), (3 / 4, 4 / 3))
                 for _ in range(N)]
    ref_area = np.array([hh * ww / (64 * 48) for _, _, hh, ww in reference])
    ref_aspect = np.array([ww / hh for _, _, hh, ww in reference])
    # rounding to whole pixels lets the area stray slightly outside [0.2, 1], in torchvision too
    assert area.min() >= 0.18 and area.max() <= 1.0 and ref_area.min() >= 0.18
    assert 0.70 <= aspect.min() and aspect.max() <= 1.40
    for ours, theirs in ((area, ref_area), (aspect, ref_aspect)):
        assert abs(ours.mean() - theirs.mean()) < 0.02
        assert np.abs(np.quantile(ours, [0.1, 0.5, 0.9])
                      - np.quantile(theirs, [0.1, 0.5, 0.9])).max() < 0.04


def test_rates_and_value_ranges():
    view1, view2 = _params(), _params(solarize_p=0.2)
    for key, rate in (("flip", 0.5), ("jitter", 0.8), ("gray", 0.2), ("blur", 0.5)):
        assert abs(view1[key].float().mean().item() - rate) < 0.03, key
    assert (view1["solarize"].sum() == 0
            and abs(view2["solarize"].float().mean().item() - 0.2) < 0.03)
    factors = view1["factors"]
    for column, (low, high) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1)]):
        assert low <= factors[:, column].min() and factors[:, column].max() <= high
        assert abs(factors[:, column].mean().item() - (low + high) / 2) < 0.02
    assert 0.1 <= view1["sigma"].min() and view1["sigma"].max() <= 2.0
    orders = view1["order"]
    # a permutation of the 4 jitter ops per sample
    assert (orders.sort(dim=1).values == torch.arange(4)).all()
    assert len({tuple(o) for o in orders.tolist()}) == 24


def _gradient_images(n=8, size=24):
    g = torch.Generator().manual_seed(0)
    base = torch.rand(n, 1, 1, 3, generator=g) * 200
    ramp = torch.linspace(0, 55, size).view(1, 1, size, 1)
    return (base + ramp
            + torch.rand(n, size, size, 3, generator=g) * 20).clamp(0, 255).to(torch.uint8)


def test_each_operation_matches_torchvision_functional():
    images = _gradient_images()
    x = images.permute(0, 3, 1, 2).float() / 255
    factor = torch.full((len(x),), 1.3)
    for op, reference in ((0, TF.adjust_brightness), (1, TF.adjust_contrast),
                          (2, TF.adjust_saturation)):
        ours = data._adjust(x.clone(), op, factor)
        theirs = torch.stack([reference(img, 1.3) for img in x])
        assert torch.allclose(ours, theirs, atol=1e-5), op
    ours = data._adjust(x.clone(), 3, torch.full((len(x),), 0.07))
    theirs = torch.stack([TF.adjust_hue(img, 0.07) for img in x])
    assert torch.allclose(ours, theirs, atol=1e-4)
    gray = data._to_gray(x)
    assert torch.allclose(gray, TF.rgb_to_grayscale(x), atol=1e-6)
    augment = data.BatchAugment(24)
    sigma = torch.full((len(x),), 1.2)
    blurred = augment._blur(x.clone(), sigma)
    theirs = torch.stack([TF.gaussian_blur(img, augment.kernel_size, [1.2, 1.2]) for img in x])
    assert torch.allclose(blurred, theirs, atol=1e-5)


def _striped_images(n, size):
    """The gradient images with fine stripes added (periods of 2.5-4 px, in any direction): the
    texture that a resize which shrinks without antialiasing turns into moire."""
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    angle = torch.rand(n, 1, 1, generator=g) * math.pi
    period = 2.5 + 1.5 * torch.rand(n, 1, 1, generator=g)
    phase = (xx * torch.cos(angle) + yy * torch.sin(angle)) / period
    stripes = 60 * torch.sin(2 * math.pi * phase).unsqueeze(-1)
    return (_gradient_images(n, size).float() + stripes).clamp(0, 255).to(torch.uint8)


def test_crop_resize_matches_torchvision_resized_crop():
    """Up to a 4x shrink (SSL4EO-S12's 264 px patches read at 64 px): antialiased like PIL."""
    for source, size, crop_scale in ((64, 32, (0.2, 1.0)), (128, 32, (0.6, 1.0)),
                                     (24, 32, (0.2, 1.0))):  # shrink 2x, 4x, and enlarge
        images = _striped_images(n=6, size=source)
        x = images.permute(0, 3, 1, 2).float() / 255
        augment = data.BatchAugment(size, crop_scale=crop_scale, flip_p=0, jitter_p=0, gray_p=0,
                                    blur_p=0, mean=(0, 0, 0), std=(1, 1, 1))
        out, params = augment(images, torch.Generator().manual_seed(5), return_params=True)
        for i in range(6):
            left, top, right, bottom = params["boxes"][i].int().tolist()
            theirs = TF.resized_crop(x[i], top, left, bottom - top, right - left, [size, size],
                                     antialias=True)
            assert (out[i] - theirs).abs().max() < 1e-4, (source, i, params["boxes"][i])


def test_output_statistics_match_the_reference_pipeline():
    """Over many views of the same images, both pipelines give the same per-channel mean and std.

    The tolerance (0.1 in normalised units, about 0.02 on the 0..1 scale) covers sampling noise and
    PIL's uint8 rounding inside ColorJitter; against torchvision's float tensor path the means
    agree to about 0.004.
    """
    images = _gradient_images(n=16, size=48)
    pil_images = [TF.to_pil_image(img.permute(2, 0, 1)) for img in images]
    torch.manual_seed(0)
    for solarize in (False, True):
        transform = data.simsiam_transform_v2(32, solarize=solarize)
        reference = torch.stack([transform(img) for img in pil_images for _ in range(48)])
        augment = data.BatchAugment(32, solarize_p=0.2 if solarize else 0.0)
        fast = augment(images.repeat(48, 1, 1, 1), torch.Generator().manual_seed(2))
        ref_mean, fast_mean = reference.mean(dim=(0, 2, 3)), fast.mean(dim=(0, 2, 3))
        ref_std, fast_std = reference.std(dim=(0, 2, 3)), fast.std(dim=(0, 2, 3))
        assert (ref_mean - fast_mean).abs().max() < 0.1, (ref_mean, fast_mean)
        assert (ref_std - fast_std).abs().max() < 0.08, (ref_std, fast_std)
        assert math.isclose(reference.min().item(), fast.min().item(), abs_tol=0.05)
        assert math.isclose(reference.max().item(), fast.max().item(), abs_tol=0.05)


def test_overhead_imagery_draws_match_their_settings():
    """Vertical flips, quarter turns and the colour-jitter probability are drawn at the rates asked
    for; turned off, they draw nothing (the write-up's recipe keeps its random stream)."""
    on = _params(vflip_p=0.5, rotate90=True, jitter_p=0.2)
    assert abs(on["vflip"].float().mean().item() - 0.5) < 0.03
    assert abs(on["jitter"].float().mean().item() - 0.2) < 0.03
    quarters = torch.bincount(on["turns"], minlength=4).float() / N
    assert (quarters - 0.25).abs().max() < 0.03, quarters
    off, write_up = _params(), _params()
    assert not off["vflip"].any() and not off["turns"].any()
    assert torch.equal(off["boxes"], write_up["boxes"])
    shared = ("boxes", "flip", "jitter", "factors", "order", "gray", "blur", "sigma")
    assert all(torch.equal(off[k], _params(rotate90=True)[k]) for k in shared)


def test_flips_and_quarter_turns_match_torchvision_functional():
    images = _gradient_images(n=16, size=24)
    augment = data.BatchAugment(20, vflip_p=0.5, rotate90=True, jitter_p=0, gray_p=0, blur_p=0,
                                mean=(0, 0, 0), std=(1, 1, 1))
    params = augment.sample_params(16, 24, 24, torch.Generator().manual_seed(3))
    packed = augment.pack(params)
    plain = packed.clone()
    for column in ("flip", "vflip", "turns"):
        plain[:, data.BatchAugment.COLUMNS.index(column)] = 0
    out, cropped = augment.apply(images, packed), augment.apply(images, plain)
    assert len({int(t) for t in params["turns"]}) == 4 and params["vflip"].any()
    for i in range(16):
        expected = TF.hflip(cropped[i]) if params["flip"][i] else cropped[i]
        expected = TF.vflip(expected) if params["vflip"][i] else expected
        expected = TF.rotate(expected, 90.0 * int(params["turns"][i]))
        assert torch.equal(out[i], expected), i


# the CPU preset's overhead-imagery recipe: vertical flips, quarter turns, weak colour jitter
OVERHEAD = dict(vflip_p=0.5, rotate90=True, jitter_strength=0.25, jitter_p=0.2, gray_p=0.0,
                blur_p=0.0, crop_scale_min=0.5)


def test_overhead_imagery_views_match_the_reference_pipeline():
    """Both pipelines, with vertical flips, quarter turns and weak colour jitter, move a horizontal
    brightness ramp into every orientation equally often (the reference uses
    T.RandomVerticalFlip and RandomRotate90), and give the same colour statistics."""
    images = _gradient_images(n=16, size=48)
    pil_images = [TF.to_pil_image(img.permute(2, 0, 1)) for img in images]
    settings = OVERHEAD
    torch.manual_seed(0)
    first, _ = data.simsiam_transform_pair(32, solarize=False, **settings)
    reference = torch.stack([first(img) for img in pil_images for _ in range(48)])
    fast, _ = data.batch_augment_pair(32, solarize=False, **settings)
    fast = fast(images.repeat(48, 1, 1, 1), torch.Generator().manual_seed(2))

    def ramps(views):  # mean |left - right| and |top - bottom| brightness difference
        gray = views.mean(dim=1)
        return torch.stack([(gray[:, :, :16].mean((1, 2)) - gray[:, :, 16:].mean((1, 2))).abs(),
                            (gray[:, :16].mean((1, 2)) - gray[:, 16:].mean((1, 2))).abs()]).mean(1)

    ref_ramps, fast_ramps = ramps(reference), ramps(fast)
    # half the views show the ramp across, half along: both directions about equally strong
    assert ref_ramps.min() / ref_ramps.max() > 0.8
    assert fast_ramps.min() / fast_ramps.max() > 0.8
    assert (ref_ramps - fast_ramps).abs().max() < 0.08, (ref_ramps, fast_ramps)
    assert (reference.mean(dim=(0, 2, 3)) - fast.mean(dim=(0, 2, 3))).abs().max() < 0.1
    assert (reference.std(dim=(0, 2, 3)) - fast.std(dim=(0, 2, 3))).abs().max() < 0.08


def test_weak_colour_jitter_matches_the_reference_pipeline_in_rate_and_strength():
    """On images of one flat colour each, crops, flips and turns change nothing, so a view whose
    mean colour moved was jittered: both pipelines jitter the same share of views (JITTER_P 0.2)
    by about as much (JITTER_STRENGTH 0.25). The mean and std compared above hardly move at this
    weak a jitter: a BatchAugment that used the write-up's p 0.8 or strength 1 passed them."""
    views = 32
    colours = (30 + torch.rand(16, 3, generator=torch.Generator().manual_seed(4)) * 195)
    images = colours.to(torch.uint8).view(16, 1, 1, 3).expand(16, 40, 40, 3).contiguous()
    torch.manual_seed(0)
    first, _ = data.simsiam_transform_pair(32, solarize=False, **OVERHEAD)
    reference = torch.stack([first(TF.to_pil_image(img.permute(2, 0, 1)))
                             for img in images for _ in range(views)])
    fast, _ = data.batch_augment_pair(32, solarize=False, **OVERHEAD)
    fast = fast(images.repeat_interleave(views, 0), torch.Generator().manual_seed(2))
    mean, std = torch.tensor(data.IMAGENET_MEAN), torch.tensor(data.IMAGENET_STD)
    flat = images[:, 0, 0].float().repeat_interleave(views, 0) / 255

    def moved(views):  # how far each view's mean colour moved, on the 0..1 scale
        return (views.mean(dim=(2, 3)) * std + mean - flat).abs().max(dim=1).values

    rates, sizes = [], []
    for change in (moved(reference), moved(fast)):
        jittered = change > 1.5 / 255  # PIL rounds to whole uint8 levels
        rates.append(jittered.float().mean().item())
        sizes.append(change[jittered].mean().item())
    # 512 views a pipeline: a rate holds to about +-0.05 (3 sigma); p 0.8 gives 0.8
    assert all(abs(rate - 0.2) < 0.06 for rate in rates), rates
    assert abs(rates[0] - rates[1]) < 0.07, rates
    # a jittered view moves ~0.05 at strength 0.25, four times that at the write-up's 1
    assert 0.75 < sizes[1] / sizes[0] < 1.33, sizes


def test_both_scripts_start_from_the_writeup_views_and_each_setting_reaches_the_augmentation():
    """train_simsiam.py and bench_pretrain.py write the augmentation constants out (to be edited
    and overridden); they default to the write-up's values, and each one changes what
    augmentation_settings passes on, under the keyword the augmentation takes."""
    import bench_pretrain
    import train_simsiam
    for script in (train_simsiam, bench_pretrain):
        assert {name: getattr(script, name) for name in data.WRITEUP_VIEWS} == data.WRITEUP_VIEWS
    changed = {"CROP_SCALE_MIN": 0.3, "SOLARIZE": False, "JITTER_STRENGTH": 0.25,
               "JITTER_P": 0.2, "GRAY_P": 0.0, "BLUR_P": 0.0, "VFLIP_P": 0.5, "ROTATE90": True}
    assert changed.keys() == data.WRITEUP_VIEWS.keys()
    settings = data.augmentation_settings(changed)
    assert settings == {name.lower(): value for name, value in changed.items()}
    data.batch_augment_pair(32, **settings)  # every keyword is one it takes
    data.simsiam_transform_pair(32, **settings)
    assert data.augmentation_settings({}) == data.augmentation_settings(data.WRITEUP_VIEWS)
