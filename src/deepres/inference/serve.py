"""`deepres serve MODEL`: an HTTP inference server (FastAPI on uvicorn) with dynamic batching and a browser page.

Endpoints: POST /v1/predict (top-k classes, or a segmentation model's class map), POST /v1/cam (Grad-CAM PNG),
GET /v1/model (the model card), GET /healthz, GET /metrics (Prometheus text), GET / (the page, package data in
deepres/inference/static/), GET /docs (OpenAPI).

Dynamic batching: each worker owns one Predictor (a model copy) and one asyncio queue of decoded images; its batcher
task takes the first image waiting, then whatever arrives within max_wait_ms, up to max_batch images, and runs them as
one batch on the fast path in a thread (asyncio.to_thread), so the event loop never waits for the model. A request's
images are queued one by one on the least busy worker and may share batches with other requests' images; in eval mode
an image's output does not depend on its batch mates. Decoding and Grad-CAM run in threads too.

The server keeps no state between requests, so N replicas behind any load balancer scale it out.
"""
import argparse
import asyncio
import base64
import copy
import dataclasses
import io
import contextlib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.datastructures import UploadFile

from deepres.core.checkpoint import checkpoint_paths
from deepres.core.device import default_device, limit_compute_threads
from deepres.core.typed import plain
from deepres.data.images import BadImageError, decode_image_bytes, pil_to_tensor
from deepres.data.seg_labels import palette_for

from .api import init_model
from .cam import heatmap_rgb, overlay_cam
from .cli import add_backend_argument
from .predictor import Predictor
from .preprocess import preprocess_tensor

STATIC = Path(__file__).with_name("static")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # images per batch
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds
ROUTES = ("/", "/v1/predict", "/v1/cam", "/v1/model", "/healthz", "/metrics")  # metric labels; others: "other"


@dataclass(frozen=True)
class Limits:
    """What one server accepts and how it batches (the `deepres serve` options)."""

    max_batch: int = 32  # images per model call
    max_wait_ms: float = 5.0  # how long a batch waits for more images after its first, ms
    workers: int = 1  # model copies, each with its own queue and batcher
    max_upload_mb: float = 16.0  # request body, MiB
    max_images: int = 32  # images per request
    max_pixels: int = 40_000_000  # width x height of one image, checked before decoding (decompression bombs)

    def __post_init__(self):
        for name in ("max_batch", "workers", "max_images", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.max_upload_mb <= 0:
            raise ValueError(f"--max-wait-ms must be >= 0 and --max-upload-mb > 0, got {self.max_wait_ms} and "
                             f"{self.max_upload_mb}")


class RequestError(Exception):
    """A request the server refuses: HTTP `status`, a machine-readable `kind` and a sentence naming the problem."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


# ------------------------------------------------------------------------------------------ metrics
class Histogram:
    """A Prometheus histogram: cumulative bucket counts, sum and count."""

    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        rows = [f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {n}' for bound, n in zip(self.buckets, self.counts)]
        rows.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        suffix = f"{{{labels}}}" if labels else ""
        return rows + [f"{name}_sum{suffix} {self.sum:.6g}", f"{name}_count{suffix} {self.count}"]


class Metrics:
    """Requests by route and status, errors by kind, images, batch sizes and request latency (Prometheus text)."""

    def __init__(self):
        self.requests: dict[tuple[str, int], int] = {}
        self.errors: dict[str, int] = {}
        self.images = 0
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.latency: dict[str, Histogram] = {}

    def record_request(self, route: str, status: int, seconds: float) -> None:
        self.requests[route, status] = self.requests.get((route, status), 0) + 1
        self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def record_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def render(self) -> str:
        out = ["# HELP deepres_requests_total HTTP requests answered, by route and status code.",
               "# TYPE deepres_requests_total counter"]
        out += [f'deepres_requests_total{{route="{route}",status="{status}"}} {n}'
                for (route, status), n in sorted(self.requests.items())]
        out += ["# HELP deepres_errors_total Requests refused or failed, by kind.",
                "# TYPE deepres_errors_total counter"]
        out += [f'deepres_errors_total{{kind="{kind}"}} {n}' for kind, n in sorted(self.errors.items())]
        out += ["# HELP deepres_images_total Images run through the model.", "# TYPE deepres_images_total counter",
                f"deepres_images_total {self.images}",
                "# HELP deepres_batch_size Images per model call (dynamic batching).",
                "# TYPE deepres_batch_size histogram", *self.batch_sizes.lines("deepres_batch_size"),
                "# HELP deepres_request_latency_seconds Time from request to response, by route.",
                "# TYPE deepres_request_latency_seconds histogram"]
        for route, histogram in sorted(self.latency.items()):
            out += histogram.lines("deepres_request_latency_seconds", f'route="{route}"')
        return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------ batching
class Worker:
    """One model copy, its queue of (image, future) and the batcher task that empties it."""

    def __init__(self, predictor: Predictor, limits: Limits, metrics: Metrics):
        self.predictor, self.limits, self.metrics = predictor, limits, metrics
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.busy = 0  # images queued or running

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._batcher())

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass

    async def run(self, image: torch.Tensor):
        """The model's output for one decoded image (C, H, W): class probabilities, or a segmentation result."""
        future = asyncio.get_running_loop().create_future()
        self.busy += 1
        await self.queue.put((image, future))
        try:
            return await future
        finally:
            self.busy -= 1

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.limits.max_wait_ms / 1000
            while len(batch) < self.limits.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            batch = [(image, future) for image, future in batch if not future.done()]  # a client gone: skip
            if not batch:
                continue
            try:
                outputs = await asyncio.to_thread(self._compute, [image for image, _ in batch])
            except Exception as error:  # the model failed: every waiting request gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.metrics.batch_sizes.observe(len(batch))
            self.metrics.images += len(batch)
            for (_, future), output in zip(batch, outputs):
                if not future.done():
                    future.set_result(output)

    def _compute(self, images: list[torch.Tensor]) -> list:
        """Runs in a thread: softmax probabilities (one row per image), or segmentation results."""
        predictor = self.predictor
        if predictor.is_segmentation:
            return list(predictor.iter_segmentations(images, probabilities=False))
        x = torch.stack([preprocess_tensor(image, predictor.preprocess) for image in images])
        return list(torch.softmax(predictor.forward(x).float(), dim=1).cpu())


def classification_result(probs: torch.Tensor, top_k: int, names: list[str]) -> dict:
    """Predictor.predict's dict for one image's probabilities."""
    scores, labels = probs.topk(min(top_k, probs.numel()))
    scores, labels = scores.tolist(), labels.tolist()
    return {"pred_label": labels[0], "pred_score": scores[0], "pred_class": names[labels[0]],
            "top_k_labels": labels, "top_k_scores": scores, "top_k_classes": [names[i] for i in labels]}


def segmentation_result(result: dict, palette: np.ndarray) -> dict:
    """A segmentation result as JSON: the class map as a palette PNG (base64; pixel values are class indices)
    and the share of the pixels each present class covers."""
    class_map = result["class_map"].numpy()
    picture = Image.fromarray(class_map, mode="P")
    picture.putpalette(palette.astype(np.uint8).tobytes())
    return {"height": int(class_map.shape[0]), "width": int(class_map.shape[1]),
            "class_shares": result["class_shares"], "class_map_png": base64.b64encode(png_bytes(picture)).decode()}


def png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ requests
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


# ------------------------------------------------------------------------------------------ the app
def model_card(predictor: Predictor, limits: Limits) -> dict:
    """What GET /v1/model answers: the model, its classes and preprocessing, the precision path and its measured
    error, the accuracy recorded with the weights, and the server's limits."""
    pp = predictor.preprocess
    info = predictor.fast_info
    card = {"name": predictor.source.get("name") or predictor.source.get("model") or type(predictor.model).__name__,
            "architecture": type(predictor.model).__name__,
            "task": "segmentation" if predictor.is_segmentation else "classification",
            "classes": predictor.class_names, "num_classes": len(predictor.class_names),
            "preprocessing": {**plain(dataclasses.asdict(pp)), "input_size": list(pp.input_size)},
            "precision": {"mode": predictor.fast_mode,
                          **({} if info is None else {"dtype": info.dtype, "device": info.device,
                                                      "backend": info.backend, "steps": info.steps,
                                                      "max_abs_error": info.max_abs_error,
                                                      "check_batch": info.check_batch})},
            "accuracy": recorded_accuracy(predictor.source),
            "source": {k: v for k, v in predictor.source.items() if isinstance(v, (str, int, float)) or v is None},
            "cam_stages": [] if predictor.is_segmentation else list(predictor.cam_stages),
            "limits": dataclasses.asdict(limits)}
    if predictor.is_segmentation:
        card["palette"] = seg_palette(predictor)[:len(predictor.class_names)].tolist()
    return card


def recorded_accuracy(source: dict) -> dict:
    """The accuracy that came with the weights: published weights' top1/top5 (or mIoU), or a deepres run's last
    evaluation and best value from the checkpoint's training state (<name>.state.pt beside the weights)."""
    published = {k: source[k] for k in ("top1", "top5", "miou", "pixel_acc") if source.get(k) is not None}
    if published or source.get("source") != "deepres checkpoint":
        return published
    weights = Path(source["checkpoint"])
    state_path = checkpoint_paths(weights.parent, weights.name.removesuffix(".safetensors"))[1]
    if not state_path.is_file():
        return {}
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    recorded = {k: v for k, v in (state.get("metrics") or {}).items() if isinstance(v, (int, float))}
    recorded.update({k: v for k, v in state.items() if k.startswith("best_") and isinstance(v, (int, float))})
    return {**recorded, "epoch": state.get("epoch")}


def seg_palette(predictor: Predictor) -> np.ndarray:
    dataset = predictor.config.data.name if predictor.config is not None else "voc"
    return palette_for(dataset, len(predictor.class_names))


def route_of(request: Request) -> str:
    path = request.url.path
    return path if path in ROUTES else "docs" if path.startswith(("/docs", "/openapi", "/static")) else "other"


_IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def create_app(predictor: Predictor, limits: Limits = Limits()) -> FastAPI:
    """The FastAPI app serving `predictor` (copied once per extra worker). The fast path is prepared here, so the
    model card shows its measured error from the first request on."""
    predictors = [predictor] + [copy.deepcopy(predictor) for _ in range(limits.workers - 1)]
    for each in predictors:
        with torch.inference_mode():
            each.forward(torch.zeros(1, *each.preprocess.input_size, device=each.device))
    metrics = Metrics()
    workers = [Worker(each, limits, metrics) for each in predictors]
    card = model_card(predictor, limits)
    names = predictor.class_names
    palette = seg_palette(predictor) if predictor.is_segmentation else None
    cams = 0  # round robin of the CAM requests over the model copies

    async def lifespan(app):
        for worker in workers:
            worker.start()
        yield
        for worker in workers:
            await worker.stop()

    app = FastAPI(title="deepres serve", version="1", lifespan=lifespan,
                  description=f"{card['name']}: {card['task']}, {len(names)} classes")

    @app.middleware("http")
    async def count(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        metrics.record_request(route_of(request), response.status_code, time.perf_counter() - started)
        return response

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError):
        metrics.record_error(error.kind)
        return JSONResponse({"error": error.kind, "detail": error.message}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        metrics.record_error("invalid_parameter")
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return JSONResponse({"error": "invalid_parameter", "detail": detail}, status_code=422)

    async def images_of(request: Request) -> list[torch.Tensor]:
        files = await read_images(request, limits)
        return await asyncio.to_thread(decode, files, limits.max_pixels)

    @app.post("/v1/predict", openapi_extra=_IMAGE_BODY,
              summary="Classify images (top-k), or segment them (class map PNG and pixel shares)")
    async def predict(request: Request, top_k: int = Query(5, ge=1, description="classes per image")):
        images = await images_of(request)
        worker = min(workers, key=lambda w: w.busy)
        try:
            outputs = await asyncio.gather(*(worker.run(image) for image in images))
        except Exception as error:
            raise RequestError(500, "model_error", f"the model failed: {error}") from None
        if palette is not None:
            results = [segmentation_result(output, palette) for output in outputs]
        else:
            results = [classification_result(output, top_k, names) for output in outputs]
        return {"model": card["name"], "task": card["task"], "results": results}

    @app.post("/v1/cam", openapi_extra=_IMAGE_BODY, response_class=Response,
              responses={200: {"content": {"image/png": {}}}},
              summary="Grad-CAM of one image for a class (default: the top one), as a PNG")
    async def cam(request: Request, target: str | None = Query(None, alias="class", description="name or index"),
                  stage: str | None = Query(None, description="a stage from /v1/model cam_stages (default last)"),
                  view: str = Query("overlay", pattern="^(overlay|heatmap)$")):
        nonlocal cams
        if palette is not None:
            raise RequestError(400, "not_a_classifier", "Grad-CAM explains classifiers; this is a segmentation model")
        if target is not None:
            try:
                predictor.class_index(target)
            except ValueError as error:
                raise RequestError(400, "unknown_class", str(error)) from None
        if stage is not None and stage not in card["cam_stages"]:
            raise RequestError(400, "unknown_stage", f"unknown stage {stage!r}; the model has "
                                                     f"{', '.join(card['cam_stages'])}")
        images = await images_of(request)
        if len(images) != 1:
            raise RequestError(400, "too_many_images", f"/v1/cam takes one image, got {len(images)}")
        cams += 1
        chosen = predictors[cams % len(predictors)]
        result = await asyncio.to_thread(chosen.cam, images[0], target=target, stage=stage)
        pixels = overlay_cam(result["image"], result["cam"]) if view == "overlay" else heatmap_rgb(result["cam"])
        headers = {"X-Deepres-Class": result["class"], "X-Deepres-Label": str(result["label"]),
                   "X-Deepres-Score": f"{result['score']:.6f}", "X-Deepres-Stage": result["stage"]}
        return Response(png_bytes(Image.fromarray(pixels)), media_type="image/png", headers=headers)

    @app.get("/v1/model", summary="The model card: classes, preprocessing, precision path, recorded accuracy")
    async def model():
        return card

    @app.get("/healthz", summary="200 while the server answers")
    async def healthz():
        return {"status": "ok", "model": card["name"]}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


# ------------------------------------------------------------------------------------------ the command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="what `deepres predict --model` takes: a run directory or .safetensors checkpoint, "
                             "published weights arch.tag, a registered model name (with --checkpoint), or a recipe")
    parser.add_argument("--checkpoint", help="a .pth/.safetensors state dict for the MODEL architecture")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; put a TLS and "
                             "authenticating reverse proxy in front before listening on others)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free one, printed)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8", "eager"],
                        help="the fast path, as in `deepres predict` (int8 needs --calibration)")
    parser.add_argument("--calibration", nargs="+", metavar="IMAGE|DIR", help="int8: images to calibrate on")
    add_backend_argument(parser)
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    defaults = Limits()
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch,
                        help="images per model call (default %(default)s; 1 turns batching off)")
    parser.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                        help="how long a batch waits for more images after its first, ms (default %(default)s)")
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help="model copies in this process, each with its own queue (default %(default)s)")
    parser.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_mb,
                        help="largest request body, MiB (default %(default)s)")
    parser.add_argument("--max-images", type=int, default=defaults.max_images,
                        help="images per request (default %(default)s)")
    parser.add_argument("--max-pixels", type=int, default=defaults.max_pixels,
                        help="largest image, width x height, checked before decoding (default %(default)s)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; at most the "
                                                    "available cores shared by the --workers)")


def run(args: argparse.Namespace) -> int:
    limits = Limits(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, workers=args.workers,
                    max_upload_mb=args.max_upload_mb, max_images=args.max_images, max_pixels=args.max_pixels)
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be 0..65535, got {args.port}")
    # each worker runs its own forward passes side by side: their threads together within the cores
    limit_compute_threads(args.threads, processes=limits.workers)
    if (args.calibration is not None) != (args.precision == "int8"):
        raise ValueError("--precision int8 needs --calibration IMAGE|DIR, and --calibration is for int8 only")
    try:
        device = torch.device(args.device) if args.device else default_device()
    except RuntimeError as e:
        raise ValueError(f"--device {args.device!r}: {e}") from None
    predictor = init_model(args.model, args.checkpoint, device=device, fast=args.precision,
                           calibration=args.calibration, backend=args.backend)
    app = create_app(predictor, limits)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it. Without it, on a socket handed to uvicorn, a keep-alive client waited ~40 ms
    # per response (Nagle's algorithm against delayed ACKs; measured with httpx: /healthz 44 ms -> 0.7 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        raise ValueError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    # the line a supervisor (or a test) waits for; --port 0 is resolved here
    print(f"deepres serve: {predictor.source.get('model', args.model)} on {url} (page {url}/, API docs "
          f"{url}/docs)", flush=True)
    # uvicorn stops on SIGINT/SIGTERM, then re-raises the signal: the process ends the way it was asked to
    uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)).run(sockets=[sock])
    return 0


@contextlib.contextmanager
def serve_subprocess(*args: str, timeout: float = 120.0, env: dict | None = None):
    """`deepres serve ARGS --port 0` in a subprocess on 127.0.0.1 (for tests and benchmarks): yields its base URL
    once /healthz answers; SIGTERM (then SIGKILL) when the block ends. `env`: the child's environment."""
    if "--host" in args or "--port" in args:
        raise ValueError("serve_subprocess listens on 127.0.0.1 and a free port; do not pass --host or --port")
    process = subprocess.Popen([sys.executable, "-m", "deepres", "serve", *args, "--port", "0"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)  # never fills the pipe
    reader.start()
    try:
        line = process.stdout.readline()  # run()'s "deepres serve: MODEL on http://127.0.0.1:PORT (...)", "" if it died
        if " on http://" not in line:
            process.wait(timeout=30)
            reader.join(5)
            raise RuntimeError(f"deepres serve did not start (exit {process.returncode}): {''.join(stderr)[-3000:]}")
        url = line.split(" on ")[1].split()[0]
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"deepres serve at {url} never became healthy: {''.join(stderr)[-3000:]}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
        reader.join(5)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
