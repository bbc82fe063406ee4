"""Grad-CAM: it points at the evidence, has the image's shape and range, reads any named stage, and `deepres predict
--cam DIR` writes overlays enlarged for viewing."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from deepres import init_model
from deepres.cli import main
from deepres.core.checkpoint import save_checkpoint
from deepres.core.config import Config, config_to_dict
from deepres.core.preprocess import Preprocess
from deepres.inference.cam import cam_picture, grad_cam, overlay_cam
from deepres.models import create_model
from deepres.tasks.segmentation import enlarge_for_viewing
from serve_helpers import fashion_run

CLASSES = ["cat", "dog", "cow", "owl"]


class BrightSpotNet(nn.Module):
    """Class 0's logit grows with bright pixels (a fixed detector), class 1's falls: two stages, the second
    pooled to half size so the CAM has to be upsampled."""

    stage_names = ("layer1", "layer2")

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
        self.layer2 = nn.AvgPool2d(2)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.layer1[0].weight.copy_(torch.tensor([1.0, 1.0, 1.0, 0.5, 0.5, 0.5]).view(2, 3, 1, 1))
            self.layer1[0].bias.fill_(-1.0)  # pixels summing to < 1 (dark ones) do not fire
            self.fc.weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.layer2(self.layer1(x)).mean(dim=(2, 3)))


def spot_image(size=32, top=20, left=4, side=8) -> torch.Tensor:
    """Dim noise with one bright square at (top, left)."""
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 0.2
    x[:, :, top:top + side, left:left + side] = 1.0
    return x


@pytest.mark.parametrize("stage", ["layer1", "layer2"])
def test_cam_peaks_where_the_evidence_is(stage):
    x = spot_image()
    cams, logits = grad_cam(BrightSpotNet().eval(), x, [0], stage=stage)
    assert cams.shape == (1, 32, 32) and logits.shape == (1, 2)
    cam = cams[0]
    assert cam.max() == pytest.approx(1.0) and cam.min() >= 0
    row, col = divmod(int(cam.argmax()), 32)
    assert 20 <= row < 28 and 4 <= col < 12
    assert cam[20:28, 4:12].mean() > 5 * cam[:16, 16:].mean()  # far from the square the map is (nearly) zero


def test_cam_of_a_class_without_positive_evidence_is_zero():
    cams, _ = grad_cam(BrightSpotNet().eval(), spot_image(), [1])  # the spot lowers class 1's logit
    assert float(cams.abs().max()) == 0.0


def test_cam_errors_name_the_stage_or_class():
    model = BrightSpotNet().eval()
    with pytest.raises(ValueError, match="unknown stage 'layer9'.*layer1, layer2"):
        grad_cam(model, spot_image(), stage="layer9")
    with pytest.raises(ValueError, match="out of range"):
        grad_cam(model, spot_image(), [5])


def test_overlay_has_the_image_size():
    image = torch.zeros(1, 40, 40, dtype=torch.uint8)
    picture = overlay_cam(image, torch.ones(10, 10))
    assert picture.shape == (40, 40, 3) and picture.dtype == np.uint8
    assert tuple(picture[0, 0]) == tuple(np.array([64, 0, 0]))  # jet's top (dark red, 127) at alpha 0.5


@pytest.fixture
def predictor():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=4, in_chans=3)
    return init_model(model, preprocess=Preprocess(resize=20, crop_size=16), class_names=CLASSES, precision="eager")


def test_predictor_cam_every_stage_and_class_by_name(predictor):
    image = np.random.default_rng(0).integers(0, 256, (24, 30, 3), dtype=np.uint8)
    top = predictor.predict(image)
    for stage in predictor.cam_stages:
        result = predictor.cam(image, stage=stage)
        assert result["stage"] == stage and result["class"] == top["pred_class"]
        assert result["cam"].shape == (16, 16) and 0 <= float(result["cam"].min()) <= float(result["cam"].max()) <= 1
        assert result["image"].shape == (3, 16, 16) and result["image"].dtype == torch.uint8
        assert result["score"] == pytest.approx(top["pred_score"], abs=1e-5)
    assert predictor.cam(image, target="owl")["label"] == 3 and predictor.cam(image, target=2)["class"] == "cow"
    with pytest.raises(ValueError, match="unknown class 'zebra'.*cat, dog, cow, owl"):
        predictor.cam(image, target="zebra")
    with pytest.raises(ValueError, match="unknown stage"):
        predictor.cam(image, stage="fc")


def test_predict_cli_writes_cam_overlays(tmp_path, capsys):
    cfg = Config()
    cfg.model.name, cfg.model.num_classes, cfg.model.in_chans = "resnet20", 4, 3
    cfg.data.name, cfg.data.synthetic_image_size = "synthetic", 16
    save_checkpoint(tmp_path / "run" / "checkpoints", "last", model=create_model("resnet20", num_classes=4),
                    state={"step": 1, "epoch": 1}, config=config_to_dict(cfg), classes=CLASSES)
    for i in range(2):
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(tmp_path / f"img{i}.png")
    images = [str(tmp_path / "img0.png"), str(tmp_path / "img1.png")]
    args = ["predict", *images, "--model", str(tmp_path / "run"), "--cam", str(tmp_path / "cams")]
    assert main([*args, "--cam-stage", "layer2"]) == 0
    assert "2 Grad-CAM overlays (layer2)" in capsys.readouterr().err
    for i in range(2):
        with Image.open(tmp_path / "cams" / f"img{i}_cam.jpg") as picture:
            assert picture.size == (256, 256) and picture.mode == "RGB"  # the 16-px crop, 16 x 16 blocks
    assert main([*args, "--cam-stage", "layer7"]) == 2
    assert "--cam-stage 'layer7'" in capsys.readouterr().err


def test_cam_picture_is_the_overlay_with_each_pixel_a_block():
    image = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cam = torch.rand(28, 28, generator=torch.Generator().manual_seed(1))
    small = overlay_cam(image, cam)
    big = cam_picture(image, cam)
    assert big.shape == (280, 280, 3)  # 28 px x 10: the smallest integer factor reaching 256
    assert np.array_equal(big, small.repeat(10, axis=0).repeat(10, axis=1))


@pytest.mark.parametrize("shape, expected", [
    ((28, 28, 3), (280, 280, 3)), ((20, 36), (260, 468)), ((256, 300, 3), (256, 300, 3)),
    ((600, 400, 3), (600, 400, 3)), ((2, 3000), (2, 3000))])
def test_enlarge_for_viewing_by_an_integer_factor_never_shrinking(shape, expected):
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    big = enlarge_for_viewing(pixels)
    assert big.shape == expected  # large images as they are; a 2 x 3000 strip is not blown up to 512 x 768000
    factor = expected[0] // shape[0]
    assert np.array_equal(big[::factor, ::factor], pixels) and np.array_equal(big[factor - 1::factor], big[::factor])


def test_predict_cli_cam_of_a_28px_model_is_280px(tmp_path, capsys):
    run = fashion_run(tmp_path / "run")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "a.png"), "--model", str(run), "--cam", str(tmp_path / "cams"),
                 "--precision", "eager"]) == 0
    with Image.open(tmp_path / "cams" / "a_cam.jpg") as picture:
        assert picture.size == (280, 280)
        written = np.asarray(picture.convert("RGB"), dtype=np.float32)
    predictor = init_model(str(run), precision="eager")
    result = predictor.cam(str(tmp_path / "a.png"))
    expected = cam_picture(result["image"], result["cam"]).astype(np.float32)
    assert np.abs(written - expected).mean() < 4  # JPEG quality 90 of the same picture
