"""The segmentation eval transform is one piece of code: `deepres eval`'s loader and the Predictor (its Preprocess
from the task's eval_transform) turn a stored image into the same model input, at data.test_size 0 (the image as
stored) and > 0, on either base side, for RGB and gray models."""
import dataclasses

import pytest
import torch
from data_helpers import blob_mask, write_gray_png, write_image

from deepres.core.preprocess import Preprocess
from deepres.data import DataConfig, SegEvalTransform, build_eval_loader
from deepres.inference import Predictor
from deepres.inference.preprocess import at_test_size, preprocess_tensor, resize_and_crop, to_image_tensor
from deepres.models import create_model
from deepres.tasks.segmentation import seg_preprocess

SIZES = [(20, 30), (40, 24), (16, 16)]  # stored (height, width): wide, tall, and image_size itself


@pytest.fixture
def pairs(tmp_path):
    for i, (h, w) in enumerate(SIZES):
        write_image(tmp_path / "val" / "images" / f"{i}.png", size=(w, h), seed=i)
        write_gray_png(tmp_path / "val" / "masks" / f"{i}.png", blob_mask(h, w, [0, 1, 2, 255], seed=i))
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    return tmp_path


def _loader_inputs(cfg: DataConfig) -> list[torch.Tensor]:
    loader, _ = build_eval_loader(cfg, "cpu")
    inputs = []
    for images, _ in loader:
        inputs.extend(x for batch in (images if isinstance(images, list) else [images]) for x in batch)
    return inputs


@pytest.mark.parametrize("test_size, base_side, in_chans", [(0, "longer", 3), (10, "longer", 3), (12, "shorter", 3),
                                                            (0, "shorter", 1), (13, "longer", 1)])
def test_eval_loader_and_predictor_preprocess_a_segmentation_image_identically(pairs, test_size, base_side, in_chans):
    cfg = DataConfig(name="pairs", root=str(pairs), val_split="val", image_size=16, test_size=test_size,
                     base_side=base_side, in_chans=in_chans, eval_batch_size=2, workers=0)
    pp = seg_preprocess(cfg, in_chans)
    loaded = _loader_inputs(cfg)
    paths = [pairs / "val" / "images" / f"{i}.png" for i in range(len(SIZES))]
    assert len(loaded) == len(paths)
    for path, (h, w), x in zip(paths, SIZES, loaded):
        if test_size == 0:
            assert x.shape[-2:] == (h, w)  # as stored
        assert torch.equal(preprocess_tensor(to_image_tensor(path), pp), x), path.name

    seen = []  # what the model is given by Predictor.segment
    model = create_model("fcn_resnet20", num_classes=3, in_chans=in_chans)
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0][0].clone()))
    predictor = Predictor(model, pp, ["a", "b", "c"], precision="eager")
    predictor.segment([str(p) for p in paths], probabilities=False)
    assert len(seen) == len(loaded)
    for path, given, x in zip(paths, seen, loaded):
        assert torch.equal(given, x), path.name


@pytest.mark.parametrize("test_size, base_side", [(0, "longer"), (0, "shorter"), (10, "longer"), (12, "shorter")])
def test_the_config_and_its_preprocess_describe_one_transform(test_size, base_side):
    cfg = DataConfig(name="pairs", image_size=16, test_size=test_size, base_side=base_side)
    pp = seg_preprocess(cfg, 3)
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(SegEvalTransform.from_preprocess(pp)(image)[0], SegEvalTransform.from_config(cfg)(image)[0])
    assert pp.input_size == (3, test_size or 16, test_size or 16)  # example inputs: test size, else image_size
    with pytest.raises(ValueError, match="takes no crop"):
        SegEvalTransform.from_preprocess(dataclasses.replace(pp, resize_side="longer", crop_size=8))


def test_predict_test_size_overrides_as_data_test_size_does():
    stored = seg_preprocess(DataConfig(name="pairs", image_size=16, base_side="shorter"), 3)
    image = torch.zeros(3, 20, 30, dtype=torch.uint8)
    assert resize_and_crop(image, stored).shape == (3, 20, 30)
    assert resize_and_crop(image, at_test_size(stored, 10, "shorter")).shape == (3, 10, 15)
    sized = seg_preprocess(DataConfig(name="pairs", image_size=16, test_size=12, base_side="longer"), 3)
    assert resize_and_crop(image, at_test_size(sized, 15)).shape == (3, 10, 15)  # its own side kept
    assert resize_and_crop(image, at_test_size(sized, 0)).shape == (3, 20, 30)
    with pytest.raises(ValueError, match="resize_side none .* takes no crop"):
        Preprocess(resize=16, crop_size=8, resize_side="none")
