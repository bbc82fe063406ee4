"""The app: POST /v1/predict (the model's results through its task's JSON: top-k classes, or a segmentation model's
class map), POST /v1/cam (Grad-CAM PNG), GET /v1/model (the model card), GET /healthz, GET /metrics (Prometheus
text), GET / (the page, package data in deepres/inference/static/), GET /docs (OpenAPI).

Every error is answered {"error": kind, "detail": sentence}: refused requests, unknown routes and methods, a request
still in flight when the shutdown's drain time is over (503 shutting_down). The Guard middleware holds each
request's memory ticket (budget.py) until its answer has been sent.

The server keeps no state between requests, so N replicas behind any load balancer scale it out."""
import asyncio
import copy
import dataclasses
import gc
import io
import time
from pathlib import Path
from typing import Literal

import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException

from deepres.core.checkpoint import read_training_state
from deepres.core.typed import plain
from deepres.tasks import PredictOptions

from ..cam import heatmap_rgb, overlay_cam
from ..predictor import Predictor
from .batching import Turns, Worker
from .budget import MemoryBudget
from .limits import Limits, RequestError, option
from .metrics import CONTENT_TYPE, Metrics
from .uploads import Upload, decode, read_images

SHOW_PATHS = ("name", "relative")  # how the model card shows the checkpoint's path (`--show-paths`)

STATIC = Path(__file__).resolve().parents[1] / "static"

_IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def model_card(predictor: Predictor, limits: Limits, show_paths: str = "name", start: Path | None = None) -> dict:
    """What GET /v1/model answers: the model, its classes and preprocessing, the precision path and its measured
    error, the accuracy recorded with the weights, and the server's limits. File paths in its source are shown as
    their file name, or with show_paths "relative" relative to `start` (default: the current folder) where they
    lie below it: where the server's files are is not the clients' business."""
    pp = predictor.preprocess
    info = predictor.runner_info
    task = predictor.task
    return {"name": predictor.source.get("name") or predictor.source.get("model") or type(predictor.model).__name__,
            "architecture": type(predictor.model).__name__,
            "task": task.name,
            "classes": predictor.class_names, "num_classes": len(predictor.class_names),
            "preprocessing": {**plain(dataclasses.asdict(pp)), "input_size": list(pp.input_size)},
            "precision": {"precision": predictor.precision, "reason": predictor.plan.reason,
                          **({} if info is None else {"dtype": info.dtype, "device": info.device,
                                                      "backend": info.backend, "steps": info.steps,
                                                      "max_abs_error": info.max_abs_error,
                                                      "check_batch": info.check_batch})},
            "accuracy": recorded_accuracy(predictor.source),
            "source": {k: shown_path(v, show_paths, start) if k in ("checkpoint", "recipe") else v
                       for k, v in predictor.source.items() if isinstance(v, (str, int, float)) or v is None},
            "cam_stages": list(predictor.cam_stages) if task.labels_images else [],
            "limits": dataclasses.asdict(limits),
            **task.card(predictor.class_names, predictor.config)}


def shown_path(value, show_paths: str, start: Path | None = None):
    """A path of the model's source as the card shows it: its file name, or ("relative") its path relative to
    `start` where it lies below it. A value that names no file (a recipe's registered name) is shown as it is."""
    if not isinstance(value, str) or not Path(value).exists():
        return value
    path = Path(value).resolve()
    if show_paths == "relative":
        try:
            return str(path.relative_to((start or Path.cwd()).resolve()))
        except ValueError:
            pass
    return path.name


def recorded_accuracy(source: dict) -> dict:
    """The accuracy that came with the weights: published weights' top1/top5 (or mIoU), or a deepres run's last
    evaluation and best value from the checkpoint's training state (core.checkpoint.read_training_state)."""
    published = {k: source[k] for k in ("top1", "top5", "miou", "pixel_acc") if source.get(k) is not None}
    if published or source.get("source") != "deepres checkpoint":
        return published
    state = read_training_state(source["checkpoint"])
    if state is None:
        return {}
    recorded = {k: v for k, v in (state.get("metrics") or {}).items() if isinstance(v, (int, float))}
    recorded.update({k: v for k, v in state.items() if k.startswith("best_") and isinstance(v, (int, float))})
    return {**recorded, "epoch": state.get("epoch")}


def png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def create_app(predictor: Predictor, limits: Limits = Limits(), *, show_paths: str = "name") -> FastAPI:
    """The FastAPI app serving `predictor` (copied once per extra worker). The precision path is prepared here, so
    the model card shows its measured error from the first request on. show_paths: how the card shows the
    checkpoint's path (SHOW_PATHS)."""
    if show_paths not in SHOW_PATHS:
        raise ValueError(f"--show-paths must be one of {', '.join(SHOW_PATHS)}, got {show_paths!r}")
    predictors = [predictor] + [copy.deepcopy(predictor) for _ in range(limits.workers - 1)]
    for each in predictors:
        with torch.inference_mode():
            each.forward(torch.zeros(1, *each.preprocess.input_size, device=each.device))
    metrics = Metrics()
    budget = MemoryBudget(limits.inflight_bytes)
    metrics.watch_inflight(lambda: budget.used)
    turns = Turns()  # decodes and model calls take turns on the CPU
    workers = [Worker(each, limits, metrics, turns) for each in predictors]
    card = model_card(predictor, limits, show_paths)
    task = predictor.task
    cams = 0  # round robin of the CAM requests over the model copies

    async def lifespan(app):
        for worker in workers:
            worker.start()
        # What is loaded by now (the model, torch, the app) lives as long as the server: out of the garbage
        # collector's sight, a full collection no longer walks it. It took 150-160 ms, every request waited it out,
        # and it set the p99 at 32 clients (the demo model: 160-220 ms, p50 45-55 ms).
        gc.freeze()
        yield
        for worker in workers:
            await worker.stop()

    app = FastAPI(title="deepres serve", version="1", lifespan=lifespan,
                  description=f"{card['name']}: {card['task']}, {len(predictor.class_names)} classes")
    app.add_middleware(Guard, budget=budget, metrics=metrics, limits=limits)

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError):
        metrics.record_error(error.kind)
        return error_response(error.status, error.kind, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        metrics.record_error("invalid_parameter")
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return error_response(422, "invalid_parameter", detail)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        if error.status_code == 404:
            kind, detail = "not_found", f"no such route: {request.url.path} (the API is described at /docs)"
        elif error.status_code == 405:
            allowed = (error.headers or {}).get("Allow", "")
            kind, detail = "method_not_allowed", f"{request.url.path} takes {allowed or 'another method'}, not " \
                                                 f"{request.method}"
        else:
            kind, detail = "http_error", str(error.detail)
        metrics.record_error(kind)
        return error_response(error.status_code, kind, detail, error.headers)

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception):  # a bug: answered in the documented shape, then logged
        metrics.record_error("internal_error")
        return error_response(500, "internal_error", f"the server failed ({type(error).__name__}); its log has the "
                                                     f"traceback")

    async def images_of(request: Request) -> list[Upload]:
        ticket = request.state.ticket
        files, body = await read_images(request, limits, ticket)
        try:
            async with turns.decode():
                return await asyncio.to_thread(decode, files, limits, predictor.preprocess, ticket)
        finally:
            del files
            ticket.release(body)  # the bodies are dropped: the decoded images stay counted

    @app.post("/v1/predict", openapi_extra=_IMAGE_BODY,
              summary="Classify images (top-k), or segment them (class map PNG and pixel shares)")
    async def predict(request: Request, top_k: int = Query(5, ge=1, description="classes per image"),
                      class_map: Literal["image", "model"] = Query(
                          "image", description="segmentation: the class map at the image's size or at the size "
                                               "the model saw, either scaled down to fit --max-output-pixels")):
        images = await images_of(request)
        options = PredictOptions(top_k=top_k, probabilities=False, class_map=class_map,
                                 max_map_pixels=limits.max_output_pixels)
        worker = min(workers, key=lambda w: w.busy)
        try:
            outputs = await asyncio.gather(*(worker.run(image, options) for image in images))
        except Exception as error:
            raise RequestError(500, "model_error", f"the model failed: {error}") from None
        results = [task.to_json({**output, "image_size": image.size}, options, card)
                   for image, output in zip(images, outputs)]
        del images, outputs
        response = JSONResponse({"model": card["name"], "task": card["task"], "results": results})
        request.state.ticket.hold(len(response.body), "the answer", refuse=False)  # made already: counted
        return response

    @app.post("/v1/cam", openapi_extra=_IMAGE_BODY, response_class=Response,
              responses={200: {"content": {"image/png": {}}}},
              summary="Grad-CAM of one image for a class (default: the top one), as a PNG")
    async def cam(request: Request, target: str | None = Query(None, alias="class", description="name or index"),
                  stage: str | None = Query(None, description="a stage from /v1/model cam_stages (default last)"),
                  view: str = Query("overlay", pattern="^(overlay|heatmap)$")):
        nonlocal cams
        if not task.labels_images:
            raise RequestError(400, "not_a_classifier", f"Grad-CAM explains classifiers; this is a {task.name} "
                                                        f"model")
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
        result = await asyncio.to_thread(chosen.cam, images[0].pixels, target=target, stage=stage)
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

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def error_response(status: int, kind: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": detail}, status_code=status, headers=headers)


class Guard:
    """ASGI middleware around every HTTP request: its memory ticket (scope state "ticket", closed once the answer
    has been sent), its metrics, Connection: close on an answer sent before the request's body was read (so a
    client cannot keep the connection by sending the rest slowly), and 503 shutting_down for a request the server
    stops when the shutdown's drain time (--shutdown-timeout-s) is over, instead of a 500 and a traceback."""

    def __init__(self, app, budget: MemoryBudget, metrics: Metrics, limits: Limits):
        self.app, self.budget, self.metrics, self.limits = app, budget, metrics, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        ticket = self.budget.ticket()
        scope.setdefault("state", {})["ticket"] = ticket
        headers = dict(scope.get("headers") or ())
        has_body = headers.get(b"content-length", b"0") not in (b"", b"0") or b"transfer-encoding" in headers
        state = {"status": 500, "answering": False, "body_read": not has_body}

        async def tracked_receive():
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                state["body_read"] = True
            return message

        async def tracked_send(message):
            if message["type"] == "http.response.start":
                state["status"], state["answering"] = message["status"], True
                headers = list(message.get("headers", []))
                if not state["body_read"] and not any(name.lower() == b"connection" for name, _ in headers):
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, tracked_receive, tracked_send)
        except asyncio.CancelledError:
            if state["answering"]:
                raise
            self.metrics.record_error("shutting_down")
            detail = (f"the server is shutting down and stopped this request after {option('shutdown_timeout_s')} "
                      f"{self.limits.shutdown_timeout_s:g} s; send it again (to another replica)")
            await error_response(503, "shutting_down", detail, {"Connection": "close", "Retry-After": "1"})(
                scope, tracked_receive, tracked_send)
        finally:
            ticket.close()
            self.metrics.record_request(scope["path"], state["status"], time.perf_counter() - started)
