"""What a classifier expects as input, and turning one image of any accepted kind into that input.

The steps and their order are those of deepres' evaluation loaders, so a trained model sees the same numbers
as in `deepres eval`: decode to RGB (deepres.data.load_image) -> uint8 (C, H, W) -> shorter side to `resize`
and centre crop to `crop_size` (antialiased bilinear, rounded back to uint8; without a crop the segmentation eval
loader's own SegEvalTransform) -> 1 <-> 3 channels (deepres.data.augment.transforms.adapt_channels: gray repeated,
RGB to ITU-R 601 luma as Pillow's "L") -> float -> normalise.

An upload (`deepres serve`) is decoded straight to the size the resize step would give (decode_for_model), so a
40-megapixel image never exists in memory as more than its pixels as stored; the resize step then has nothing left
to do, and the model sees what it sees from the full decode to within a grey level (a JPEG scaled by its decoder:
a few).
"""
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepres.core.preprocess import Preprocess
from deepres.data import SegEvalTransform
from deepres.data import transforms as T
from deepres.data.augment.seg_transforms import base_factor, scaled_size
from deepres.data.images import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, decode_image_bytes, load_image, pil_to_tensor,
                                 to_rgb)
from deepres.data.readers.folders import list_image_files


# ------------------------------------------------------------------------------------------ input kinds
def expand_inputs(inputs) -> tuple[list, bool]:
    """(list of single images, whether one image was given); folders become their image files, sorted."""
    if isinstance(inputs, (str, os.PathLike)):
        if Path(inputs).is_dir():
            return _folder_images(Path(inputs)), False
        return [inputs], True
    if isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
        return list(inputs), False
    if isinstance(inputs, (list, tuple)):
        items = []
        for item in inputs:
            is_dir = isinstance(item, (str, os.PathLike)) and Path(item).is_dir()
            items.extend(_folder_images(Path(item)) if is_dir else [item])
        return items, False
    return [inputs], True


def _folder_images(folder: Path) -> list[Path]:
    files = list_image_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no image files in this folder or below ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def input_path(item) -> str | None:
    """The file path of an input given as a path, else None."""
    return str(item) if isinstance(item, (str, os.PathLike)) else None


def to_image_tensor(item) -> torch.Tensor:
    """One image -> tensor (C, H, W), C in {1, 3}: uint8 (0-255), or float32 on the 0-255 scale.

    Accepted: a file path (decoded by deepres.data.load_image; BadImageError names an unreadable file), a PIL
    image (any mode, converted to RGB as files are), a numpy uint8 array HxWx3 (RGB), HxWx4 (alpha dropped),
    HxWx1 or HxW (gray), or a torch tensor (C, H, W) with C in {1, 3}: uint8 0-255, or floating point 0-1.
    """
    if isinstance(item, (str, os.PathLike)):
        return pil_to_tensor(load_image(Path(item)))
    if isinstance(item, Image.Image):
        return pil_to_tensor(to_rgb(item))
    if isinstance(item, np.ndarray):
        return _array_to_tensor(item)
    if isinstance(item, torch.Tensor):
        return _tensor_to_image(item)
    raise TypeError(f"cannot use a {type(item).__name__} as an image; give a file path, PIL image, numpy uint8 "
                    "array (HxWx3 or HxW) or tensor (C, H, W)")


def _array_to_tensor(array: np.ndarray) -> torch.Tensor:
    if array.dtype != np.uint8:
        raise ValueError(f"numpy images must be uint8 (0-255), got dtype {array.dtype}; for float data pass a "
                         "torch tensor (C, H, W) on the 0-1 scale")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"numpy images must be HxW (gray) or HxWxC with C in 1, 3, 4; got shape {array.shape}")
    array = array[:, :, :3]  # RGBA: alpha dropped, as load_image does
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()


def _tensor_to_image(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dim() != 3 or tensor.shape[0] not in (1, 3):
        raise ValueError(f"image tensors must be (C, H, W) with C in 1, 3; got shape {tuple(tensor.shape)}")
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.uint8:
        return tensor
    if not tensor.is_floating_point():
        raise ValueError(f"image tensors must be uint8 (0-255) or floating point (0-1), got {tensor.dtype}")
    low, high = tensor.min().item(), tensor.max().item()
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(f"float image tensors must be on the 0-1 scale, got values in [{low:.3g}, {high:.3g}]; "
                         "pass uint8 for 0-255 data, and do not normalise (init_model's preprocess does)")
    return tensor.float() * 255.0


# ------------------------------------------------------------------------------------------ transform
def resize_and_crop(image: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    """Shorter side to pp.resize, then the centre pp.crop_size square (same dtype as the input): the eval
    loaders' own function, with the preprocess's interpolation. Without a crop (crop_size 0, segmentation): the
    segmentation eval loader's SegEvalTransform, the pp.resize_side side to pp.resize (aspect ratio kept) or, with
    resize_side "none", the image as stored."""
    if pp.crop_size:
        return T.resize_center_crop(image, pp.resize, pp.crop_size, pp.interpolation)
    return SegEvalTransform.from_preprocess(pp)(image)[0]


def resized_size(height: int, width: int, pp: Preprocess) -> tuple[int, int]:
    """(height, width) resize_and_crop resizes an image of that size to, before any crop: the shorter side to
    pp.resize with a crop, else SegEvalTransform's size (the image's own for resize_side "none")."""
    if pp.crop_size:
        return T.shorter_side_size(height, width, pp.resize)
    if pp.resize_side == "none":
        return height, width
    factor = base_factor(height, width, pp.resize, pp.resize_side)
    return (height, width) if math.isclose(factor, 1.0) else scaled_size(height, width, factor)


def model_input_size(height: int, width: int, pp: Preprocess) -> tuple[int, int]:
    """(height, width) of the model input made from an image of that size: the crop, else resized_size."""
    return (pp.crop_size, pp.crop_size) if pp.crop_size else resized_size(height, width, pp)


def decode_for_model(data: bytes, name: str, pp: Preprocess, *, max_pixels: int = DEFAULT_MAX_PIXELS, hold=None,
                     check=None) -> torch.Tensor:
    """An encoded image (an upload) -> uint8 (3, H, W), brought to resized_size as it is decoded where that is
    smaller than the image (deepres.data.images.decode_image_bytes: a JPEG by its decoder's DCT scaling, then
    Pillow's antialiased resize with pp.interpolation), else as stored; resize_and_crop then only crops.
    check(height, width): called with the stored size before any pixel is decoded (a budget may refuse there);
    hold: decode_image_bytes's. BadImageError names `name`."""
    def resize_to(height: int, width: int) -> tuple[int, int]:
        if check is not None:
            check(height, width)
        return resized_size(height, width, pp)

    return pil_to_tensor(decode_image_bytes(data, name, max_pixels=max_pixels, resize_to=resize_to,
                                            interpolation=pp.interpolation, hold=hold))


def at_test_size(pp: Preprocess, test_size: int, base_side: str = "longer") -> Preprocess:
    """A segmentation Preprocess at another data.test_size (`deepres predict --test-size`): its resize side to
    test_size pixels, or the images as stored for 0; `base_side` (data.base_side) where pp keeps them as stored."""
    if test_size == 0:
        return replace(pp, resize_side="none")
    return replace(pp, resize=test_size, resize_side=base_side if pp.resize_side == "none" else pp.resize_side)


def preprocess_image(item, pp: Preprocess) -> torch.Tensor:
    """One image of any accepted kind -> normalised float32 tensor pp.input_size."""
    return preprocess_tensor(to_image_tensor(item), pp)


def preprocess_tensor(image: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    """A decoded image (to_image_tensor's (C, H, W), 0-255) -> normalised float32 model input."""
    return normalize_image(resize_and_crop(image, pp), pp)


def normalize_image(image: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    """An image already resized and cropped (resize_and_crop's output, 0-255) -> normalised float32 model input."""
    x = T.adapt_channels(image, pp.in_chans).float()
    if pp.normalize == "mean":
        return T.subtract_mean(x, pp.mean)
    return T.normalize(x, pp.mean, pp.std)
