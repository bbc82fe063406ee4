"""Decoding one image file into an RGB PIL image, and the errors a bad file raises."""
import contextlib
import io
import os
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# Lower-case suffixes treated as images when scanning folders (matched case-insensitively: ".JPEG" counts).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")

# Largest accepted image, width * height pixels: by default Pillow's own bomb limit (89.5 Mpx, ~268 MB as RGB);
# the largest ImageNet-1k training image is ~31 Mpx, so real datasets stay well below it. data.max_image_pixels
# replaces Pillow's limit while deepres decodes (pillow_limit_off), above it or below.
DEFAULT_MAX_PIXELS = 89_478_485


class BadImageError(ValueError):
    """A file that cannot be decoded into an image; `.path` names it, `.reason` says why."""

    def __init__(self, path, reason: str = ""):
        # Single-argument form keeps the class re-creatable from a message (DataLoader workers re-raise
        # exceptions in the main process as `type(e)(message)`).
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}" if reason else str(path))

    def __reduce__(self):
        # pickled whole (path and reason), so one sent back from a DataLoader worker is the same error
        return type(self), (self.path, self.reason)


def is_image_file(name: str | os.PathLike) -> bool:
    """True if the file name has an image extension (case-insensitive)."""
    return str(name).lower().endswith(IMAGE_EXTENSIONS)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; alpha is dropped (colours kept, as torchvision's convert('RGB'))."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow clips 16-bit values to 255 when converting; scale the full 0-65535 range to 0-255 instead.
        values = np.asarray(img, dtype=np.float64)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if img.mode == "F":
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        # Going through RGBA avoids Pillow's "palette with transparency" warning; the alpha is then dropped.
        img = img.convert("RGBA")
    return img.convert("RGB")


_pillow_limit_lock = threading.Lock()
_pillow_limit_users = 0  # threads inside pillow_limit_off()
_pillow_limit_saved = None  # Image.MAX_IMAGE_PIXELS as the user had it, put back when the last one leaves


@contextlib.contextmanager
def pillow_limit_off():
    """Pillow's own bomb limit (Image.MAX_IMAGE_PIXELS, an error at twice it) off for the duration, so that the
    caller's data.max_image_pixels is the limit that applies, above or below Pillow's; Pillow's setting is put
    back after. The caller must check the size itself before decoding (as load_image does). Counted, so that
    threads decoding at once restore the setting the user had, not one another's None."""
    global _pillow_limit_users, _pillow_limit_saved
    with _pillow_limit_lock:
        if _pillow_limit_users == 0:
            _pillow_limit_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _pillow_limit_users += 1
    try:
        yield  # with no limit Pillow neither warns nor raises
    finally:
        with _pillow_limit_lock:
            _pillow_limit_users -= 1
            if _pillow_limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _pillow_limit_saved


def load_image(path, *, exif_rotate: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file into an RGB PIL image; raise BadImageError naming the file and the reason."""
    img = open_image(path, max_pixels=max_pixels)
    if exif_rotate:
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def open_image(path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file as stored (its own mode: a palette mask stays "P"); BadImageError as load_image."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BadImageError(path, "no such file") from None
    if size == 0:
        raise BadImageError(path, "zero bytes")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise BadImageError(path, f"cannot read file ({e.strerror})") from None
    with f:
        return _decode(f, path, max_pixels)


def decode_image_bytes(data: bytes, name: str = "upload", *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image held in memory (an upload) into an RGB PIL image; BadImageError naming `name` as
    load_image does (not an image, truncated or corrupt, too many pixels)."""
    if not data:
        raise BadImageError(name, "zero bytes")
    return to_rgb(_decode(io.BytesIO(data), name, max_pixels))


def _decode(f, path, max_pixels: int) -> Image.Image:
    try:
        # The pixel limit is ours (max_pixels), checked on the header's size before any pixel is decoded, and
        # again after (a GIF's first frame may be larger than its header says).
        with pillow_limit_off():
            img = Image.open(f)
            _check_pixels(path, img, max_pixels)
            img.load()
            _check_pixels(path, img, max_pixels)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncated or corrupt data as OSError ("image file is truncated"), SyntaxError
        # ("broken PNG file") or ValueError depending on the codec.
        raise BadImageError(path, f"truncated or corrupt ({e})") from None
    return img


def _check_pixels(path, img: Image.Image, max_pixels: int) -> None:
    width, height = img.size
    if width * height > max_pixels:
        raise BadImageError(path, f"too many pixels ({width}x{height} = {width * height} > {max_pixels})")


def init_decode_worker(*_) -> None:
    """Initializer of a process that decodes images (DataLoader worker, packing pool): the processes are the
    parallel axis, so one intra-op thread each (more would oversubscribe the CPU). Arguments are ignored
    (DataLoader passes the worker id)."""
    torch.set_num_threads(1)


def pil_to_tensor(img: Image.Image):
    """RGB PIL image -> uint8 tensor (3, H, W)."""
    array = np.asarray(img, dtype=np.uint8)  # (H, W, 3), read-only: it shares Pillow's bytes
    return torch.from_numpy(array.transpose(2, 0, 1).copy())  # ndarray.copy: a new writable C-order array
