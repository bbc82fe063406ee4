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
    img = to_8bit(img)
    return img if img.mode == "RGB" else img.convert("RGB")


# Pillow modes of one channel deeper than 8 bits, brought to 8 bits by deep_to_gray
DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_BAND_PIXELS = 1 << 16  # pixels converted at a time by deep_to_gray: its temporaries stay under a MiB


def to_8bit(img: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit gray ("L": bilevel, gray with alpha, 16/32-bit and float gray) or RGB (the others),
    with the values to_rgb gives; an "L" or "RGB" image is returned as it is."""
    if img.mode in ("L", "RGB"):
        return img
    if img.mode in DEEP_MODES:
        return deep_to_gray(img)
    if img.mode in ("1", "LA"):
        return img.convert("L")
    if img.mode == "P" and "transparency" in img.info:
        # Going through RGBA avoids Pillow's "palette with transparency" warning; the alpha is then dropped.
        img = img.convert("RGBA")
    return img.convert("RGB")


def deep_to_gray(img: Image.Image) -> Image.Image:
    """A 16- or 32-bit integer image scaled from 0-65535 to 0-255 (Pillow would clip at 255 instead), or a float
    image clipped to 0-255, rounded to the nearest; a band of rows at a time in integers (float32 for "F"), so no
    float64 copy of the image is made (one was 8 bytes per pixel: 320 MB at 40 Mpx)."""
    width, height = img.size
    gray = np.empty((height, width), np.uint8)
    rows = max(1, _BAND_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        band = np.asarray(img.crop((0, top, width, min(top + rows, height))))
        if img.mode == "F":
            gray[top:top + rows] = np.clip(np.rint(band), 0, 255)
        else:
            # round(v / 257) in integers: v / 257 is never halfway between two integers, so (v + 128) // 257 rounds
            # the same way as the float division did
            wide = band.astype(np.int64 if img.mode == "I" else np.int32)
            gray[top:top + rows] = np.clip((wide + 128) // 257, 0, 255)
    return Image.fromarray(gray)


def stored_bytes_per_pixel(mode: str) -> int:
    """Bytes Pillow keeps per pixel of a mode: 1 for bilevel, gray and palette images, 2 for 16-bit gray, 4 for
    every other (Pillow stores RGB as RGBX)."""
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


def decoding_bytes(img: Image.Image, size: tuple[int, int] | None = None) -> int:
    """Bytes decoding an opened (not yet loaded) image holds at its peak, from its header: its pixels as stored, their
    8-bit copy where its mode needs one (to_8bit), and with a resize to `size` (height, width) Pillow's two passes."""
    width, height = img.size
    total = width * height * stored_bytes_per_pixel(img.mode)
    if img.mode not in ("L", "RGB"):
        total += width * height * (1 if img.mode in (*DEEP_MODES, "1", "LA") else 4)
    if size is not None:
        total += (size[1] * height + size[0] * size[1]) * 4
    return total


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


RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
DRAFT_MARGIN = 2  # a JPEG is scaled by its decoder to at least this many times the requested size, the rest by resize


def decode_image_bytes(data: bytes, name: str = "upload", *, max_pixels: int = DEFAULT_MAX_PIXELS,
                       resize_to=None, interpolation: str = "bilinear", hold=None) -> Image.Image:
    """Decode an image held in memory (an upload) into an RGB PIL image; BadImageError naming `name` as
    load_image does (not an image, truncated or corrupt, too many pixels).

    resize_to(height, width) -> (height, width) or None: given the size the header states (after the pixel check,
    before any pixel is decoded), the size to bring the image to as it is decoded, never larger than it (None: as
    stored). A JPEG is first scaled down by its decoder (DCT scaling: Image.draft) to no less than DRAFT_MARGIN times
    that size, then resized with Pillow's antialiased filter, which is deepres.data.transforms.resize's to within a
    grey level. hold(nbytes) -> a context manager held while the pixels are decoded, with the bytes that takes
    (decoding_bytes): a budget may refuse there, before they are."""
    if not data:
        raise BadImageError(name, "zero bytes")
    with _decoding_errors(name), pillow_limit_off():
        img = Image.open(io.BytesIO(data))
        _check_pixels(name, img, max_pixels)
        size = resize_to(img.height, img.width) if resize_to is not None else None
        if size is not None and (size[0] > img.height or size[1] > img.width or size == (img.height, img.width)):
            size = None
        box = None
        if size is not None:
            drafted = img.draft(None, (size[1] * DRAFT_MARGIN, size[0] * DRAFT_MARGIN))  # JPEG only, else None
            box = drafted[1] if drafted else None  # the whole image in the scaled pixels' coordinates
        with hold(decoding_bytes(img, size)) if hold is not None else contextlib.nullcontext():
            img.load()
            _check_pixels(name, img, max_pixels)
            img = to_8bit(img)
            if size is not None:
                img = img.resize((size[1], size[0]), RESAMPLING[interpolation], box=box)
            return img if img.mode == "RGB" else img.convert("RGB")


@contextlib.contextmanager
def _decoding_errors(path):
    """Pillow's errors while decoding as a BadImageError naming `path` and why."""
    try:
        yield
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, BadImageError):
            raise
        # Pillow reports truncated or corrupt data as OSError ("image file is truncated"), SyntaxError
        # ("broken PNG file") or ValueError depending on the codec.
        raise BadImageError(path, f"truncated or corrupt ({e})") from None


def _decode(f, path, max_pixels: int) -> Image.Image:
    # The pixel limit is ours (max_pixels), checked on the header's size before any pixel is decoded, and
    # again after (a GIF's first frame may be larger than its header says).
    with _decoding_errors(path), pillow_limit_off():
        img = Image.open(f)
        _check_pixels(path, img, max_pixels)
        img.load()
        _check_pixels(path, img, max_pixels)
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
