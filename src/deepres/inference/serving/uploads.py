"""Reading a request's images: each file of a multipart/form-data upload, or the raw body as one image, read up
to --max-upload-mb and no further, and each decoded with its pixel count checked first (--max-pixels)."""
import torch
from fastapi import Request
from starlette.datastructures import UploadFile

from deepres.data.images import BadImageError, decode_image_bytes, pil_to_tensor

from .limits import Limits, RequestError


async def read_images(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
    """(name, bytes) of every image in the request: each file of a multipart/form-data upload, or the raw body
    as one image. The body is read up to --max-upload-mb, never further."""
    limit = int(limits.max_upload_mb * 2**20)
    too_large = RequestError(413, "upload_too_large", f"the request body is over --max-upload-mb "
                                                      f"{limits.max_upload_mb:g} MiB ({limit} bytes)")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    body = b"".join(chunks)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        if not body:
            raise RequestError(400, "no_image", "the request holds no image: send one as the body, or several as "
                                                "multipart/form-data files")
        return [("body", body)]

    async def replay():  # the form parser reads the body from here, as it has been read already
        return {"type": "http.request", "body": body, "more_body": False}

    too_many = RequestError(413, "too_many_images", f"more images in one request than --max-images "
                                                    f"{limits.max_images}")
    try:
        form = await Request(request.scope, replay).form(max_files=limits.max_images, max_fields=100)
    except Exception as error:  # starlette reports a malformed or oversized form as an HTTPException
        detail = str(getattr(error, "detail", error))
        raise too_many if "Too many files" in detail else RequestError(400, "bad_form", f"cannot parse the "
                                                                                       f"multipart form: {detail}")
    files = [(value.filename or key, await value.read()) for key, value in form.multi_items()
             if isinstance(value, UploadFile)]
    await form.close()
    if not files:
        raise RequestError(400, "no_image", "the multipart form holds no file")
    if len(files) > limits.max_images:
        raise too_many
    return files


def decode(files: list[tuple[str, bytes]], max_pixels: int) -> list[torch.Tensor]:
    """Decode every upload to a uint8 (3, H, W) tensor; RequestError names the first bad one and why."""
    images = []
    for name, data in files:
        try:
            images.append(pil_to_tensor(decode_image_bytes(data, name, max_pixels=max_pixels)))
        except BadImageError as error:
            reason = error.reason
            kind = ("too_many_pixels" if reason.startswith("too many pixels") else
                    "not_an_image" if reason.startswith(("not an image", "zero bytes")) else "corrupt_image")
            raise RequestError(413 if kind == "too_many_pixels" else 400, kind,
                               f"{error}" + (f" (--max-pixels {max_pixels})" if kind == "too_many_pixels" else ""))
    return images
