"""AutoAugment family: each op against hand-computed pixels, both magnitude conventions, per-image draws,
determinism, gray images, the config key and the training loader."""
import numpy as np
import pytest
import torch
from data_helpers import write_gray_png, write_image

from deepres.core.config import DataConfig, validate_data_config
from deepres.data import build_loaders
from deepres.data.augment.autoaugment import (OP_NAMES, OPS, AutoAugment, apply_plan, tf_argument,
                                              torchvision_argument)
from deepres.data.augment.transforms import luma


def img(rows, channels=1) -> torch.Tensor:
    """(1, C, H, W) uint8 from nested rows (the same plane in every channel)."""
    plane = torch.tensor(rows, dtype=torch.uint8)
    return plane.expand(1, channels, *plane.shape).contiguous()


def op(name, x, arg=0.0, aux=(0.0, 0.0), fill=0):
    return OPS[name](x, torch.tensor([float(arg)]), torch.tensor([aux]), fill)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


GRID = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
F = 200  # fill in the geometry tests


# ----------------------------------------------------------------------------------------------- ops
def test_pixel_value_ops():
    x = img([[0, 37, 127], [128, 200, 255]])
    assert torch.equal(op("Invert", x), img([[255, 218, 128], [127, 55, 0]]))
    assert torch.equal(op("Solarize", x, 128), img([[0, 37, 127], [127, 55, 0]]))  # >= 128 inverted
    assert torch.equal(op("Solarize", x, 256), x)
    assert torch.equal(op("Posterize", x, 3), img([[0, 32, 96], [128, 192, 224]]))  # keep the 3 high bits
    assert torch.equal(op("Posterize", x, 8), x)
    assert torch.equal(op("Posterize", x, 0), torch.zeros_like(x))
    assert torch.equal(op("SolarizeAdd", x, 30), img([[30, 67, 157], [128, 200, 255]]))  # only below 128
    assert torch.equal(op("SolarizeAdd", img([[120]]), 200), img([[255]]))  # clamped
    assert torch.equal(op("Identity", x), x)


def test_autocontrast_stretches_each_channel_and_leaves_flat_ones():
    x = torch.stack([torch.tensor([[10, 20], [30, 17]]), torch.full((2, 2), 9)]).to(torch.uint8)[None]
    out = op("AutoContrast", x)
    # (v - 10) * 255 // 20: 0, 127, 255, 89; the flat second channel unchanged
    assert torch.equal(out[0, 0], torch.tensor([[0, 127], [255, 89]], dtype=torch.uint8))
    assert torch.equal(out[0, 1], x[0, 1])


def test_equalize_on_a_known_histogram():
    values = torch.tensor([0, 100, 200, 250], dtype=torch.uint8).repeat_interleave(256).view(1, 1, 32, 32)
    # step = (1024 - 256) // 255 = 3; lut[v] = (3 // 2 + pixels below v) // 3: 0, 257//3, 513//3, 769//3 -> 255
    out = op("Equalize", values)
    expected = torch.tensor([0, 85, 171, 255], dtype=torch.uint8).repeat_interleave(256).view(1, 1, 32, 32)
    assert torch.equal(out, expected)
    small = img([[0, 1], [2, 3]])
    assert torch.equal(op("Equalize", small), small)  # step 0 (fewer than 256 pixels): PIL leaves it


def test_enhance_ops_blend_with_pils_degenerate_images():
    x = img([[10, 255], [3, 100]])
    assert torch.equal(op("Brightness", x, 0.5), img([[5, 127], [1, 50]]))  # blend with black, truncated
    assert torch.equal(op("Brightness", x, 1.5), img([[15, 255], [4, 150]]))  # clamped
    g = img([[0, 100], [50, 51]])  # gray mean 50.25 -> 50
    assert torch.equal(op("Contrast", g, 2.0), img([[0, 150], [50, 52]]))
    assert torch.equal(op("Contrast", g, 0.0), img([[50, 50], [50, 50]]))
    red = torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1)
    assert luma(red).item() == 76  # Pillow "L": (255 * 19595 + 2^15) >> 16
    assert torch.equal(op("Color", red, 0.0).flatten(), torch.tensor([76, 76, 76], dtype=torch.uint8))
    assert torch.equal(op("Color", red, 0.5).flatten(), torch.tensor([165, 38, 38], dtype=torch.uint8))
    assert torch.equal(op("Color", g, 0.0), g)  # gray images: their gray image is themselves
    spike = img([[0, 0, 0], [0, 130, 0], [0, 0, 0]])  # SMOOTH: centre 5 * 130 / 13 = 50, border kept
    assert torch.equal(op("Sharpness", spike, 0.0), img([[0, 0, 0], [0, 50, 0], [0, 0, 0]]))
    assert torch.equal(op("Sharpness", spike, 2.0), img([[0, 0, 0], [0, 210, 0], [0, 0, 0]]))


def test_geometry_nearest_pixel_with_fill():
    x = img(GRID)
    # ShearX 0.5: output (x, y) <- input floor(x + 0.5 + 0.5 (y + 0.5)) as PIL's affine (1, 0.5, 0, 0, 1, 0)
    assert torch.equal(op("ShearX", x, 0.5, fill=F), img([[1, 2, 3], [5, 6, F], [8, 9, F]]))
    assert torch.equal(op("ShearY", x, 0.5, fill=F), img([[1, 5, 6], [4, 8, 9], [7, F, F]]))  # ShearX transposed
    assert torch.equal(op("TranslateX", x, 1, fill=F), img([[F, 1, 2], [F, 4, 5], [F, 7, 8]]))
    assert torch.equal(op("TranslateY", x, -1, fill=F), img([[4, 5, 6], [7, 8, 9], [F, F, F]]))
    assert torch.equal(op("Rotate", x, 90), torch.rot90(x, 1, (-2, -1)))  # counter-clockwise
    assert torch.equal(op("Rotate", x, -90), torch.rot90(x, -1, (-2, -1)))
    ones = torch.ones(1, 3, 5, 5, dtype=torch.uint8)
    turned = op("Rotate", ones, 45, fill=128)
    assert turned[0, :, 0, 0].tolist() == [128] * 3 and turned[0, :, 0, 2].tolist() == [1] * 3


def test_cutout_fills_a_square_around_the_drawn_centre():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    out = op("Cutout", x, 1, aux=(0.5, 0.5), fill=128)  # centre (2, 2), rows and columns 1..2
    expected = torch.zeros(4, 4, dtype=torch.uint8)
    expected[1:3, 1:3] = 128
    assert torch.equal(out[0, 0], expected)
    corner = op("Cutout", x, 2, aux=(0.0, 0.0), fill=128)  # clipped to the image
    assert corner[0, 0, :2, :2].eq(128).all() and corner.eq(128).sum() == 4


# ---------------------------------------------------------------------------------------- magnitudes
def test_torchvision_magnitudes():
    bits = [torchvision_argument("Posterize", i, 10, 32, 32)[0] for i in range(10)]
    assert bits == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
    assert torchvision_argument("Solarize", 0, 10, 32, 32) == (255.0, 255.0)
    assert torchvision_argument("Solarize", 9, 10, 32, 32) == (0.0, 0.0)
    assert torchvision_argument("Rotate", 9, 10, 32, 32) == (30.0, -30.0)
    assert torchvision_argument("ShearX", 9, 10, 32, 32) == pytest.approx((0.3, -0.3))
    assert torchvision_argument("Brightness", 9, 10, 32, 32) == pytest.approx((1.9, 0.1))
    assert torchvision_argument("TranslateX", 9, 10, 100, 331) == (150.0, -150.0)  # 150/331 of the width
    assert torchvision_argument("TranslateY", 9, 10, 100, 331) == (45.0, -45.0)  # int(150/331 * 100)
    assert torchvision_argument("Rotate", 9, 31, 32, 32) == pytest.approx((9.0, -9.0))  # RandAugment M=9
    assert torchvision_argument("Rotate", 30, 31, 32, 32, wide=True) == (135.0, -135.0)  # TrivialAugmentWide
    assert torchvision_argument("Posterize", 30, 31, 32, 32, wide=True) == (2.0, 2.0)
    assert torchvision_argument("TranslateX", 30, 31, 8, 8, wide=True) == (32.0, -32.0)
    assert torchvision_argument("Color", None, 10, 8, 8) == (0.0, 0.0)


def test_tf_magnitudes():
    assert tf_argument("Posterize", 8, 250, 100) == (3.0, 3.0)  # int(0.8 * 4): level 8 keeps 3 bits
    assert tf_argument("Posterize", 10, 250, 100) == (4.0, 4.0)
    assert tf_argument("Posterize", 2, 250, 100) == (0.0, 0.0)
    assert tf_argument("Solarize", 5, 250, 100) == (128.0, 128.0)
    assert tf_argument("SolarizeAdd", 10, 250, 100) == (110.0, 110.0)
    assert tf_argument("Contrast", 0, 250, 100) == pytest.approx((0.1, 0.1))  # l/10 * 1.8 + 0.1, no sign
    assert tf_argument("Sharpness", 5, 250, 100) == pytest.approx((1.0, 1.0))
    assert tf_argument("Color", 10, 250, 100) == pytest.approx((1.9, 1.9))
    assert tf_argument("Rotate", 10, 250, 100) == (30.0, -30.0)
    assert tf_argument("ShearY", 5, 250, 100) == pytest.approx((0.15, -0.15))
    assert tf_argument("TranslateX", 5, 250, 100) == (125.0, -125.0)  # AutoAugment's translate_const
    assert tf_argument("TranslateX", 5, 100, 40) == (50.0, -50.0)  # RandAugment's
    assert tf_argument("Cutout", 10, 100, 40) == (40.0, 40.0)


# ------------------------------------------------------------------------------------------- policies
POLICIES = [(spec, convention) for spec in ("autoaugment", "randaugment:2:9", "trivialaugment")
            for convention in ("torchvision", "tf")]


@pytest.mark.parametrize("spec,convention", POLICIES)
def test_every_image_gets_its_own_draw_and_equals_its_plan_alone(spec, convention):
    aa = AutoAugment.from_spec(spec, convention)
    image = torch.randint(0, 256, (3, 8, 8), generator=gen(1), dtype=torch.uint8)
    batch = image.expand(24, -1, -1, -1).contiguous()
    plan = aa.plan(24, 8, 8, gen(2))
    out = apply_plan(batch, plan, aa.fill)
    assert torch.equal(aa(batch, gen(2)), out)  # __call__ is plan + apply
    assert len({bytes(o.flatten().tolist()) for o in out}) > 3  # identical inputs, different outputs
    for i in range(24):
        assert torch.equal(apply_plan(batch[i:i + 1], plan.row(i), aa.fill), out[i:i + 1])
    assert torch.equal(batch, image.expand(24, -1, -1, -1))  # the input is not modified


def test_policy_tables_and_op_sets_follow_the_convention():
    tv = {OP_NAMES[i] for i in AutoAugment("randaugment", "torchvision").plan(2000, 8, 8, gen()).ops.unique()}
    tf = {OP_NAMES[i] for i in AutoAugment("randaugment", "tf").plan(2000, 8, 8, gen()).ops.unique()}
    assert len(tv) == 14 and "Invert" not in tv and "Cutout" not in tv
    assert len(tf) == 16 and "Identity" not in tf and {"Cutout", "SolarizeAdd", "Invert"} <= tf
    aa_tf = {OP_NAMES[i] for i in AutoAugment("autoaugment", "tf").plan(2000, 8, 8, gen()).ops.unique()}
    assert "SolarizeAdd" in aa_tf  # policy_v0
    assert AutoAugment("autoaugment", "tf").fill == 128 and AutoAugment("autoaugment").fill == 0


@pytest.mark.parametrize("spec,convention", POLICIES)
def test_same_seed_same_output_and_gray_images_work(spec, convention):
    aa = AutoAugment.from_spec(spec, convention)
    x = torch.randint(0, 256, (16, 3, 12, 12), generator=gen(3), dtype=torch.uint8)
    assert torch.equal(aa(x, gen(7)), aa(x, gen(7)))
    assert not torch.equal(aa(x, gen(7)), aa(x, gen(8)))
    g = x[:, :1].contiguous()
    out = aa(g, gen(7))
    assert out.shape == g.shape and out.dtype == torch.uint8


def test_rejects_float_batches():
    with pytest.raises(ValueError, match="uint8"):
        AutoAugment("trivialaugment")(torch.zeros(2, 3, 4, 4), gen())


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("spec,convention,message", [
    ("autoaugmentt", "torchvision", "data.auto_augment"),
    ("randaugment:2", "torchvision", "data.auto_augment"),
    ("randaugment:a:9", "torchvision", "integers"),
    ("randaugment:0:9", "torchvision", "N >= 1"),
    ("randaugment:2:31", "torchvision", "0..30"),
    ("randaugment:2:11", "tf", "0..10"),
    ("trivialaugment", "keras", "data.auto_augment_convention"),
])
def test_config_key_validation(spec, convention, message):
    with pytest.raises(ValueError, match=message):
        validate_data_config(DataConfig(auto_augment=spec, auto_augment_convention=convention))


def test_config_accepts_the_documented_values():
    for spec in ("", "autoaugment", "randaugment", "randaugment:2:9", "randaugment:3:30", "trivialaugment"):
        validate_data_config(DataConfig(auto_augment=spec))
    assert AutoAugment.from_spec("") is None
    assert AutoAugment.from_spec("randaugment", "tf") == AutoAugment("randaugment", "tf", 2, 9)


# ---------------------------------------------------------------------------------------------- loader
def test_training_batches_change_and_eval_batches_do_not():
    base = dict(name="synthetic", synthetic_size=(64, 20), synthetic_image_size=8, batch_size=16,
                eval_batch_size=10, workers=0, hflip=False, normalize="mean", mean=(0.0,), std=(1.0,))
    plain_train, plain_eval, _ = build_loaders(DataConfig(**base), "cpu", seed=4)
    cfg = DataConfig(**base, auto_augment="randaugment:2:9", auto_augment_convention="tf")
    train, val, _ = build_loaders(cfg, "cpu", seed=4)
    plain_x, plain_y = next(iter(plain_train))
    x, y = next(iter(train))
    assert torch.equal(y, plain_y) and not torch.equal(x, plain_x)  # same images, augmented
    assert torch.equal(x, x.round()) and x.min() >= 0 and x.max() <= 255  # uint8 values, raw scale
    assert torch.equal(next(iter(train))[0], x)  # the batch generator replays
    for (a, _), (b, _) in zip(val, plain_eval):
        assert torch.equal(a, b)


def test_segmentation_formats_refuse_it(tmp_path):
    (tmp_path / "classes.txt").write_text("background\nthing\n")
    for n, stem in enumerate("ab"):
        write_image(tmp_path / "train" / "images" / f"{stem}.png", size=(6, 5), seed=n)
        write_gray_png(tmp_path / "train" / "masks" / f"{stem}.png", np.zeros((5, 6), np.uint8))
    cfg = DataConfig(name="pairs", root=str(tmp_path), val_split="train", image_size=4, batch_size=1,
                     auto_augment="trivialaugment")
    with pytest.raises(ValueError, match="data.auto_augment moves the image without its mask"):
        build_loaders(cfg, "cpu")
