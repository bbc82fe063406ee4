"""The app: POST /v1/predict (the model's results through its task's JSON: top-k classes, or a segmentation model's
class map), POST /v1/cam (Grad-CAM PNG), GET /v1/model (the model card), GET /healthz, GET /metrics (Prometheus
text), GET / (the page, package data in deepres/inference/static/), GET /docs (OpenAPI).

The server keeps no state between requests, so N replicas behind any load balancer scale it out."""
import asyncio
import copy
import dataclasses
import io
import time
from pathlib import Path

import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image

from deepres.core.checkpoint import read_training_state
from deepres.core.typed import plain
from deepres.tasks import PredictOptions

from ..cam import heatmap_rgb, overlay_cam
from ..predictor import Predictor
from .batching import Worker
from .limits import Limits, RequestError
from .metrics import CONTENT_TYPE, Metrics
from .uploads import decode, read_images

STATIC = Path(__file__).resolve().parents[1] / "static"

_IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def model_card(predictor: Predictor, limits: Limits) -> dict:
    """What GET /v1/model answers: the model, its classes and preprocessing, the precision path and its measured
    error, the accuracy recorded with the weights, and the server's limits."""
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
            "source": {k: v for k, v in predictor.source.items() if isinstance(v, (str, int, float)) or v is None},
            "cam_stages": list(predictor.cam_stages) if task.labels_images else [],
            "limits": dataclasses.asdict(limits),
            **task.card(predictor.class_names, predictor.config)}


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


def create_app(predictor: Predictor, limits: Limits = Limits()) -> FastAPI:
    """The FastAPI app serving `predictor` (copied once per extra worker). The precision path is prepared here, so
    the model card shows its measured error from the first request on."""
    predictors = [predictor] + [copy.deepcopy(predictor) for _ in range(limits.workers - 1)]
    for each in predictors:
        with torch.inference_mode():
            each.forward(torch.zeros(1, *each.preprocess.input_size, device=each.device))
    metrics = Metrics()
    workers = [Worker(each, limits, metrics) for each in predictors]
    card = model_card(predictor, limits)
    task = predictor.task
    cams = 0  # round robin of the CAM requests over the model copies

    async def lifespan(app):
        for worker in workers:
            worker.start()
        yield
        for worker in workers:
            await worker.stop()

    app = FastAPI(title="deepres serve", version="1", lifespan=lifespan,
                  description=f"{card['name']}: {card['task']}, {len(predictor.class_names)} classes")

    @app.middleware("http")
    async def count(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        metrics.record_request(request.url.path, response.status_code, time.perf_counter() - started)
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
        options = PredictOptions(top_k=top_k, probabilities=False)
        worker = min(workers, key=lambda w: w.busy)
        try:
            outputs = await asyncio.gather(*(worker.run(image, options) for image in images))
        except Exception as error:
            raise RequestError(500, "model_error", f"the model failed: {error}") from None
        return {"model": card["name"], "task": card["task"],
                "results": [task.to_json(output, options, card) for output in outputs]}

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

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
