"""int8 calibration stored with the weights: `calibrate_int8` observes the int8 activation ranges on calibration
images and measures the top-1 agreement of the int8 model (rebuilt from those ranges alone, as a later load
rebuilds it) with fp32 on evaluation images; `calibrate_checkpoint` does it for a deepres checkpoint on its own
dataset and writes the result into the checkpoint's metadata (`deepres calibrate`, and `deepres train` with
train.calibrate_int8 through `calibrate_after_training`). precision="auto" then runs int8 where the stored agreement
clears the bar (deepres.inference.plan).
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn as nn

from deepres.core.checkpoint import resolve_checkpoint, set_weights_metadata
from deepres.core.config import Config
from deepres.core.device import cpu_int8_flags, cpu_model_name, nondeterministic_kernels_allowed
from deepres.data import build_loaders
from deepres.models.base import eval_mode
from deepres.tasks import task_of
from deepres.tasks.build import load_model

from .int8 import Int8Calibration, activation_ranges, observe_int8, run_calibration
from .plan import choose_path
from .predictor import Predictor
from .preprocess import expand_inputs, preprocess_image
from .runner import build_runner


def calibrate_int8(model: Predictor | nn.Module, calibration, eval_images, *, max_calibration_images: int = 256,
                   max_eval_images: int = 1000) -> Int8Calibration:
    """Int8 activation ranges from `calibration` and the int8-vs-fp32 top-1 agreement (%) on `eval_images`.

    With a Predictor, both may be anything its predict takes (paths, a folder, PIL images, uint8 arrays, a 4-D
    tensor), preprocessed by its Preprocess; with either, also an iterable of preprocessed float NCHW batches or
    of (images, labels) batches (a deepres loader). At most max_calibration_images / max_eval_images are used, in
    order. The agreement is measured on the int8 model rebuilt from the ranges alone, as a load rebuilds it.
    """
    preprocess = model.preprocess if isinstance(model, Predictor) else None
    module = model.model if isinstance(model, Predictor) else model
    calib = list(_float_batches(calibration, preprocess, max_calibration_images, "calibration"))
    if not calib:
        raise ValueError("calibrate_int8: the calibration images are empty")
    with eval_mode(module), nondeterministic_kernels_allowed():
        observed = observe_int8(module, calib[0][:2])
        seen = run_calibration(observed, calib)
        ranges = activation_ranges(observed)
        plan = choose_path(module, "cpu", ranges, "int8")  # the ranges alone, as a load rebuilds it
        runner, _ = build_runner(module, plan, calib[0][:2], verify=False)
        agree = total = 0
        with torch.inference_mode():
            for batch in _float_batches(eval_images, preprocess, max_eval_images, "evaluation"):
                expected = module(batch.to(next(module.parameters()).device)).argmax(1).cpu()
                agree += int((runner(batch).argmax(1).cpu() == expected).sum())
                total += batch.shape[0]
    if total == 0:
        raise ValueError("calibrate_int8: the evaluation images are empty")
    return Int8Calibration(ranges=ranges, agreement=100.0 * agree / total, eval_images=total,
                           calibration_images=seen, cpu=cpu_model_name(), cpu_int8=cpu_int8_flags(),
                           torch=torch.__version__)


def _float_batches(source, preprocess, limit: int, what: str) -> Iterable[torch.Tensor]:
    """Preprocessed float NCHW batches of at most `limit` images in all (see calibrate_int8 for the kinds)."""
    if limit < 1:
        raise ValueError(f"calibrate_int8: at most {limit} {what} images; must be >= 1")
    if preprocess is not None and isinstance(source, (str, os.PathLike, list, tuple, torch.Tensor)):
        items, _ = expand_inputs(source)
        items = items[:limit]
        source = (torch.stack([preprocess_image(item, preprocess) for item in items[start:start + 32]])
                  for start in range(0, len(items), 32))
    left = limit
    for batch in source:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"calibrate_int8: {what} batches must be preprocessed float NCHW tensors (or, with a "
                             f"Predictor, images of any kind predict takes); got "
                             f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
        images = images[:left].float().cpu()
        if images.shape[0]:
            yield images
        left -= images.shape[0]
        if left <= 0:
            return


def calibrate_checkpoint(target: str | Path, *, data_root: str | None = None, images: int = 256,
                         eval_images: int = 1000, loaders=None,
                         log: Callable[[str], None] = print) -> tuple[Path, Int8Calibration]:
    """Calibrate int8 for a deepres run directory (its best, else last, checkpoint: what predict loads) or
    .safetensors checkpoint on its own dataset (training images for the ranges, the evaluation split for the
    agreement; data_root overrides data.root) and store it in the checkpoint's metadata, rewritten atomically.
    loaders: (train, eval) batches to use instead of building them from the checkpoint's config."""
    path = resolve_checkpoint(str(target))
    loaded = load_model(path)
    if loaded.config is None:
        raise ValueError(f"{path}: no deepres config in this file; calibrate_checkpoint needs a deepres checkpoint")
    if loaders is None:
        data = loaded.config.data if data_root is None else replace(loaded.config.data, root=data_root)
        train_loader, eval_loader, info = build_loaders(data, torch.device("cpu"), seed=loaded.config.train.seed)
        if info.num_classes != len(loaded.class_names):
            raise ValueError(f"{path}: the model has {len(loaded.class_names)} classes, {data.name} at {data.root} "
                             f"has {info.num_classes}")
        loaders = train_loader, eval_loader
    log(f"{path}: calibrating int8 on up to {images} training images, agreement on up to {eval_images} evaluation "
        f"images")
    calibration = calibrate_int8(loaded.model, loaders[0], loaders[1], max_calibration_images=images,
                                 max_eval_images=eval_images)
    set_weights_metadata(path, "int8_calibration", calibration.to_json())
    log(f"{path}: int8 agrees with fp32 on {calibration.agreement:.2f}% of {calibration.eval_images} images "
        f"(ranges from {calibration.calibration_images} images); stored in the checkpoint")
    return path, calibration


def calibrate_after_training(cfg: Config, run_dir: str | Path, *, loaders=None,
                             log: Callable[[str], None] = print) -> None:
    """train.calibrate_int8's step after a finished run (`deepres train`): calibrate the run's checkpoint on its own
    data (train.int8_calibration_images / int8_agreement_images; loaders: (train, eval) batches to use instead of
    building them from cfg). A failure is logged, never raised: the trained run is complete and saved."""
    t = cfg.train
    if not t.calibrate_int8:
        return
    if not task_of(cfg.data).labels_images:
        log(f"train.calibrate_int8: int8 calibration measures top-1 agreement, which needs one label per image; "
            f"skipped for data.name={cfg.data.name}")
        return
    try:
        calibrate_checkpoint(run_dir, images=t.int8_calibration_images, eval_images=t.int8_agreement_images,
                             loaders=loaders, log=log)
    except Exception as e:  # the trained run is complete and saved; only the optional int8 step failed
        log(f"train.calibrate_int8: int8 calibration failed ({type(e).__name__}: {e}); the run and its checkpoints "
            f"are as they were, and predict runs bf16/fp32. Retry with `deepres calibrate {run_dir}`")
