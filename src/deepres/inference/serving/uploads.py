"""Reading a request's images: each file of a multipart/form-data upload, or the raw body as one image, read up
to --max-upload-mb and no further, within --body-timeout-s, counted on the request's memory ticket as it arrives;
then each decoded straight to the size the model's preprocessing resizes it to (inference.preprocess.
decode_for_model), its pixel count checked first (--max-pixels per image, --max-request-pixels per request at that
size) and its decoding and its decoded pixels counted on the ticket."""
import asyncio
import logging
from dataclasses import dataclass

import torch
from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from deepres.core.preprocess import Preprocess
from deepres.data.images import BadImageError

from ..preprocess import decode_for_model, model_input_size, preprocess_tensor, resized_size
from .budget import Ticket
from .limits import Limits, RequestError, option

BODY_COPIES = 2  # a body is held twice at most: as read, and as the files (or the one image) it holds
MAX_FORM_FIELDS = 100  # non-file parts of a form, each skipped unread
FLOAT_BYTES = 4  # per value of a model input (float32)

# python-multipart logs each malformed form it sees; the answer names the problem already (bad_form), so its line on
# stderr would say it twice. A handler here stops Python's last-resort one; a logging setup of the user's still sees it
logging.getLogger("python_multipart").addHandler(logging.NullHandler())


@dataclass
class Upload:
    """One decoded image of a request: its name, uint8 (3, H, W) pixels at the model's size, its size as stored,
    and its model input."""

    name: str
    pixels: torch.Tensor
    size: tuple[int, int]  # (height, width) as uploaded
    input: torch.Tensor  # the model input made from the pixels (preprocess_tensor), float32 pp.input_size


async def read_images(request: Request, limits: Limits, ticket: Ticket) -> tuple[list[tuple[str, bytes]], int]:
    """((name, bytes) of every image in the request, bytes held for them on `ticket`): each file of a
    multipart/form-data upload, or the raw body as one image. The body is read up to --max-upload-mb, never
    further, and within --body-timeout-s of the request's start."""
    limit = int(limits.max_upload_mb * 2**20)
    too_large = RequestError(413, "upload_too_large", f"the request body is over --max-upload-mb "
                                                      f"{limits.max_upload_mb:g} MiB ({limit} bytes)")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large
    content_type = request.headers.get("content-type", "")
    form = FormFiles(content_type, limits.max_images) if content_type.startswith("multipart/form-data") else None
    chunks, size, held = [], 0, 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                held += ticket.hold(BODY_COPIES * len(chunk), "the request body")
                if form is not None:
                    form.write(chunk)
                else:
                    chunks.append(chunk)
    except TimeoutError:
        raise RequestError(408, "request_timeout", f"the request body did not arrive within "
                                                   f"{option('body_timeout_s')} {limits.body_timeout_s:g} s") from None
    except ClientDisconnect:
        raise RequestError(400, "client_disconnected", "the client closed the connection before sending the whole "
                                                       "body") from None
    if form is not None:
        return form.files(), held
    body = b"".join(chunks)
    if not body:
        raise RequestError(400, "no_image", "the request holds no image: send one as the body, or several as "
                                            "multipart/form-data files")
    return [("body", body)], held


def bad_form(detail: str) -> RequestError:
    return RequestError(400, "bad_form", f"cannot parse the multipart form: {detail}")


class FormFiles:
    """The files of a multipart/form-data body, parsed as it arrives (python-multipart), kept in memory: the body
    is bounded already. A malformed form, one that ends before its closing boundary, or more files than max_files
    raise RequestError naming the problem; fields other than files are skipped."""

    def __init__(self, content_type: str, max_files: int):
        _, params = parse_options_header(content_type)
        self.boundary = params.get(b"boundary")
        if not self.boundary:
            raise bad_form("the Content-Type header names no boundary")
        self.max_files = max_files
        self._files: list[tuple[str, bytearray]] = []
        self._fields = 0
        self._header, self._value, self._disposition = b"", b"", None
        self._data: bytearray | None = None  # the file part being read, None in a field
        self.ended = False
        self.parser = MultipartParser(self.boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_end": self._end})

    def write(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except MultipartParseError as error:
            raise bad_form(str(error)) from None

    def files(self) -> list[tuple[str, bytes]]:
        """(file name, bytes) of every file part, in order, once the whole body has been written."""
        if not self.ended:
            raise bad_form(f"the body ends before its closing boundary --{self.boundary.decode('latin-1')}--")
        if not self._files:
            raise RequestError(400, "no_image", "the multipart form holds no file")
        files = [(name, bytes(data)) for name, data in self._files]
        self._files.clear()
        return files

    def _part_begin(self) -> None:
        self._disposition, self._data = None, None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def _headers_finished(self) -> None:
        if self._disposition is None:
            raise bad_form("a part has no Content-Disposition header")
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise bad_form('a part\'s Content-Disposition has no "name"')
        if b"filename" not in options:
            self._fields += 1
            if self._fields > MAX_FORM_FIELDS:
                raise bad_form(f"more than {MAX_FORM_FIELDS} fields")
            return
        if len(self._files) == self.max_files:
            raise RequestError(413, "too_many_images", f"more images in one request than --max-images "
                                                       f"{self.max_files}")
        name = _text(options[b"filename"]) or _text(options[b"name"])
        self._data = bytearray()
        self._files.append((name, self._data))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._data is not None:
            self._data += data[start:end]

    def _end(self) -> None:
        self.ended = True


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def decode(files: list[tuple[str, bytes]], limits: Limits, pp: Preprocess, ticket: Ticket) -> list[Upload]:
    """Decode every upload for the model (decode_for_model) to an Upload; RequestError names the first bad one and
    why. Each image's pixels at the model's size count on --max-request-pixels (checked on its header, before it
    is decoded); while it decodes it holds its pixels as stored on `ticket`, then its decoded pixels and model input
    (made here, preprocess_tensor: the model's thread then only runs the model) until the request ends."""
    uploads, pixels, names, stored = [], 0, [], []
    channels = pp.in_chans

    def check(height: int, width: int) -> None:
        nonlocal pixels
        stored.append((height, width))
        resized = resized_size(height, width, pp)
        pixels += resized[0] * resized[1]
        if pixels > limits.max_request_pixels:
            shown = ", ".join(names[-3:]) + (f" (and {len(names) - 3} before)" if len(names) > 3 else "")
            raise RequestError(413, "over_pixel_budget",
                               f"{shown}: the request's images come to {pixels} pixels at the size the model's "
                               f"preprocessing resizes them to, over {option('max_request_pixels')} "
                               f"{limits.max_request_pixels}")

    for name, data in files:
        names.append(name)
        try:
            image = decode_for_model(data, name, pp, max_pixels=limits.max_pixels, check=check,
                                     hold=lambda nbytes: ticket.holding(nbytes, f"decoding {name}"))
        except BadImageError as error:
            reason = error.reason
            kind = ("too_many_pixels" if reason.startswith("too many pixels") else
                    "not_an_image" if reason.startswith(("not an image", "zero bytes")) else "corrupt_image")
            raise RequestError(413 if kind == "too_many_pixels" else 400, kind,
                               f"{error}" + (f" (--max-pixels {limits.max_pixels})"
                                             if kind == "too_many_pixels" else "")) from None
        height, width = model_input_size(*image.shape[-2:], pp)
        ticket.hold(image.numel() + FLOAT_BYTES * channels * height * width, f"{name} decoded")
        uploads.append(Upload(name, image, stored[-1], preprocess_tensor(image, pp)))
    return uploads
