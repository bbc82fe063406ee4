"""Grad-CAM: it points at the evidence, has the image's shape and range, reads any named stage, and `deepres predict
--cam DIR` writes overlays."""
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
from deepres.inference.cam import grad_cam, overlay_cam
from deepres.models import create_model

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
            assert picture.size == (16, 16) and picture.mode == "RGB"
    assert main([*args, "--cam-stage", "layer7"]) == 2
    assert "--cam-stage 'layer7'" in capsys.readouterr().err
