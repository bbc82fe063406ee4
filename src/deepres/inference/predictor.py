"""The Predictor: a classifier ready for images. It holds the fp32 model (eval mode), its eval transform (Preprocess),
its class names and where it came from, and runs every forward pass through deepres's fast path
(deepres.inference.fastpath: BatchNorm folded into the convolutions, channels_last, bf16 where the hardware computes
it natively; fp32, int8 or the model as it is on request).

The fast path runs a prepared copy of the model, made on first use. It is made again when the model's tensors are
replaced or moved (`.to()`, a new dtype) or loaded (`load_state_dict`, seen through a load-state-dict hook). An
in-place edit of the weights (an optimizer step, `param.data[...] = ...`) is not visible from outside the tensor:
call `refresh()` after one.
"""
import logging
import warnings

import torch
import torch.nn as nn
from tqdm import tqdm

from deepres.core.preprocess import Preprocess
from deepres.data.images import BadImageError
from deepres.models.base import eval_mode, module_device
from deepres.tasks import PredictOptions, task_of_model
from deepres.tasks.segmentation import SegViews

from .cam import cam_stages, grad_cam
from .int8 import Int8Calibration
from .plan import UNSET, Plan, Request, choose_path, precision_or_fast
from .preprocess import (expand_inputs, input_path, normalize_image, preprocess_image, preprocess_tensor,
                         resize_and_crop, to_image_tensor)
from .runner import InferenceInfo, build_runner, example_batch

log = logging.getLogger(__name__)

MAX_CALIBRATION_IMAGES = 256  # int8 calibration: more images than this are sampled evenly


class Predictor:
    """model + preprocess + class names + source, and the fast path it runs on (see `set_fast_path`)."""

    def __init__(self, model: nn.Module, preprocess: Preprocess, class_names: list[str], *, source: dict | None = None,
                 config=None, precision: str = "auto", compile: bool = False, calibration=None,
                 int8_calibration: Int8Calibration | None = None, backend: str = "auto", fast=UNSET):
        in_chans = stem_in_chans(model)
        if in_chans and preprocess.in_chans != in_chans:
            raise ValueError(f"preprocess gives {preprocess.in_chans}-channel images but the model's stem takes "
                             f"{in_chans}")
        num_classes = getattr(model, "num_classes", None)
        if num_classes and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for a model with {num_classes} classes")
        self.model = model.eval()
        self.preprocess = preprocess
        self.class_names = list(class_names)
        self.source = dict(source or {})  # where the weights came from (kind, checkpoint, model, url, top1, ...)
        self.config = config  # the deepres training config, for weights deepres trained
        self.task = task_of_model(model)  # the task row: what a prediction is, as JSON, as text, as files
        self.int8_calibration = int8_calibration  # stored with the weights: lets precision="auto" pick int8 (plan.py)
        self._runner, self._info, self._plan, self._prepared_for = None, None, None, None
        self._loads = _LoadCounter()  # load_state_dict calls on the model: each makes the prepared copy stale
        model.register_load_state_dict_post_hook(self._loads)
        self.set_fast_path(precision_or_fast(precision, fast, "Predictor"), compile=compile, calibration=calibration,
                           backend=backend)

    def __repr__(self) -> str:
        return (f"Predictor({type(self.model).__name__}, {len(self.class_names)} classes, {self.preprocess}, "
                f"precision={self.precision!r})")

    def __getstate__(self) -> dict:  # copies and pickles keep the setting, not the prepared copy
        return {**self.__dict__, "_runner": None, "_info": None, "_prepared_for": None}

    # ------------------------------------------------------------------------------------------ fast path
    def set_fast_path(self, precision: str = "auto", *, compile: bool = False, calibration=None,
                      backend: str = "auto", fast=UNSET) -> None:
        """precision: "auto" (int8 where the weights carry an int8 calibration that agrees with fp32 on >= 99.5% of
        its images and the CPU has VNNI/AMX; else bf16 where the CPU/GPU computes it natively, else fp32; BN folded and
        channels_last either way; `plan.reason` says which and why), "fp32", "bf16", "int8" (CPU; needs
        `calibration`, a few hundred images of any kind `predict` takes, or a calibration stored with the weights),
        or "eager" (the model as it is, fp32). compile: add torch.compile (once per batch size). backend: what runs
        an fp32 path on the CPU, "auto" (ONNX Runtime unless compiled), "torch" or "onnxruntime". The choice is
        deepres.inference.plan.choose_path's; a request it cannot meet raises ValueError here."""
        precision = precision_or_fast(precision, fast, "set_fast_path")
        if precision == "int8" and calibration is not None:
            calibration, _ = expand_inputs(calibration)
            if not calibration:
                raise ValueError("precision='int8': the calibration images are empty")
            if len(calibration) > MAX_CALIBRATION_IMAGES:  # evenly spaced, so a sorted class-folder tree mixes classes
                step = len(calibration) / MAX_CALIBRATION_IMAGES
                calibration = [calibration[int(i * step)] for i in range(MAX_CALIBRATION_IMAGES)]
        plan = self._choose(precision, compile, calibration, backend)  # raises before anything is changed
        self.precision, self.compile, self.calibration, self.backend = precision, compile, calibration, backend
        self.refresh()
        self._plan, self._prepared_for = plan, self._weights_key()

    def _choose(self, precision: str, compile: bool, calibration, backend: str) -> Plan:
        stored = self.int8_calibration
        request = Request(precision, backend=backend, compile=compile,
                          stale_calibration=stored is not None and self._loads.count > 0)
        return choose_path(self.model, self.device, stored if calibration is None else calibration, request)

    @property
    def plan(self) -> Plan:
        """The fast path the next forward pass runs, and why (choose_path); chosen again when the weights change."""
        key = self._weights_key()
        if self._plan is None or self._prepared_for != key:
            self.refresh()
            self._plan = self._choose(self.precision, self.compile, self.calibration, self.backend)
            self._prepared_for = key
        return self._plan

    @property
    def runner_info(self) -> InferenceInfo | None:
        """What the built fast path applied and its measured error (None before the first forward pass)."""
        return self._info

    @property
    def fast_info(self) -> InferenceInfo | None:
        """Deprecated: runner_info."""
        warnings.warn("Predictor.fast_info is deprecated: use .runner_info", DeprecationWarning, stacklevel=2)
        return self._info

    @property
    def fast_reason(self) -> str:
        """Deprecated: plan.reason."""
        warnings.warn("Predictor.fast_reason is deprecated: use .plan.reason", DeprecationWarning, stacklevel=2)
        return self.plan.reason

    @property
    def fast_mode(self) -> str:
        """Deprecated: precision."""
        warnings.warn("Predictor.fast_mode is deprecated: use .precision", DeprecationWarning, stacklevel=2)
        return self.precision

    def refresh(self) -> None:
        """Forget the fast path; the next forward pass chooses and builds it from the model's current weights."""
        self._runner, self._info, self._plan, self._prepared_for = None, None, None, None

    def _weights_key(self) -> tuple:
        # .to() and a new dtype replace the tensors; load_state_dict is counted by the hook
        tensors = (*self.model.parameters(), *self.model.buffers())
        return self._loads.count, tuple((id(t), t.device, t.dtype) for t in tensors)

    def fast_runner(self, batch_size: int = 2):
        """The built fast path (float NCHW batch -> logits) forward runs, building `plan` if needed; None for
        precision="eager"."""
        plan = self.plan
        if plan.precision == "eager":
            return None
        if self._runner is None:
            images = None
            if plan.int8_source == "images":
                images = [torch.stack([preprocess_image(item, self.preprocess) for item in chunk])
                          for chunk in _batches(self.calibration, 32)]
            example = example_batch(self.preprocess.input_size, batch_size if plan.compile else 2)
            self._runner, self._info = build_runner(self.model, plan, example, calibration=images)
            log.info("fast path: %s (%s)", ", ".join(self._info.steps) or plan.dtype, plan.reason)
        return self._runner

    # ------------------------------------------------------------------------------------------ running
    @property
    def device(self) -> torch.device:
        return module_device(self.model)

    def to(self, device) -> "Predictor":
        self.model.to(device)
        return self

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits of a preprocessed float batch (N, C, H, W): the single call site of the model for inference."""
        runner = self.fast_runner(batch.shape[0])
        if runner is None:
            with torch.inference_mode():
                return self.model(batch.to(self.device, non_blocking=True))
        compiled_for = max((shape[0] for shape in runner.compile_seconds), default=0)
        if compiled_for and batch.shape[0] < compiled_for:
            # A short (last) batch is padded to the compiled batch size rather than compiled again; in eval mode
            # every image's output depends on that image alone.
            padding = batch.new_zeros(compiled_for - batch.shape[0], *batch.shape[1:])
            return runner(torch.cat([batch, padding]))[:batch.shape[0]]
        return runner(batch)

    __call__ = forward

    def run(self, images, options: PredictOptions = PredictOptions()) -> list[dict]:
        """The model's results for a batch of images, one dict per image in order: what its task's predictor makes of
        them (deepres.tasks: a classifier's top-k classes, a segmentation model's class map). images: decoded images
        ((C, H, W) tensors, 0-255) or anything to_image_tensor takes. Every prediction goes through here: predict,
        segment, `deepres predict` and `deepres serve` alike."""
        return self._run_decoded([to_image_tensor(image) for image in images], options)

    def _run_decoded(self, decoded: list[torch.Tensor], options: PredictOptions) -> list[dict]:
        """`run` on to_image_tensor's images ((C, H, W), 0-255)."""
        if not decoded:
            return []
        results = self.run_inputs([preprocess_tensor(image, self.preprocess) for image in decoded],
                                  [tuple(image.shape[-2:]) for image in decoded], options)
        if options.images:
            for result, image in zip(results, decoded):
                result["image"] = image
        return results

    def run_inputs(self, inputs: list[torch.Tensor], sizes: list[tuple[int, int]],
                   options: PredictOptions = PredictOptions()) -> list[dict]:
        """`run` on images preprocessed already (preprocess_tensor's model inputs), each with the (height, width) of
        the decoded image it was made from (where a segmentation class map is brought back to): `deepres serve`
        preprocesses each upload as it decodes it, so the model's thread only runs the model."""
        if not inputs:
            return []
        inputs = [x.to(self.device, non_blocking=True) for x in inputs]
        with eval_mode(self.model), torch.inference_mode():
            return self.task.predict(self.forward, inputs, sizes, model=self.model, class_names=self.class_names,
                                     options=options)

    def iter_results(self, inputs, options: PredictOptions = PredictOptions(), *, batch_size: int = 32,
                     skip_bad: bool = False, progress: bool | None = False):
        """Yield `run`'s result for every image of `inputs` (files, folders, PIL images, arrays, tensors), in input
        order, `batch_size` images per call, with "path" for files. A file that cannot be decoded raises
        BadImageError naming it; with skip_bad=True its result is {"path", "failed": True, "error"}.
        progress=None: a bar on a terminal."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        items, _ = expand_inputs(inputs)
        disable = None if progress is None else not progress  # tqdm: None = only on a terminal
        with tqdm(total=len(items), unit="img", disable=disable) as bar:
            for chunk in _batches(items, batch_size):
                results, images, slots = [None] * len(chunk), [], []
                for slot, item in enumerate(chunk):
                    try:
                        images.append(to_image_tensor(item))
                        slots.append(slot)
                    except BadImageError as error:
                        if not skip_bad:
                            raise
                        results[slot] = {"path": input_path(item), "failed": True, "error": str(error)}
                for slot, result in zip(slots, self._run_decoded(images, options)):
                    path = input_path(chunk[slot])
                    results[slot] = result if path is None else {**result, "path": path}
                bar.update(len(chunk))
                yield from results

    def iter_predictions(self, inputs, *, top_k: int = 5, batch_size: int = 32, skip_bad: bool = False,
                         progress: bool | None = False):
        """Yield one result dict per image, in input order (see `predict`); progress=None: bar on a terminal."""
        return self.iter_results(inputs, PredictOptions(top_k=top_k), batch_size=batch_size, skip_bad=skip_bad,
                                 progress=progress)

    def iter_segmentations(self, inputs, *, views: SegViews = SegViews(), probabilities: bool = True,
                           images: bool = False, skip_bad: bool = False, progress: bool | None = False):
        """Yield one result dict per image, in input order (see `segment`); images=True adds "image", the decoded
        input (C, H, W) (for an overlay, without decoding it again)."""
        options = PredictOptions(views=views, probabilities=probabilities, images=images)
        return self.iter_results(inputs, options, batch_size=1, skip_bad=skip_bad, progress=progress)

    def segment(self, inputs, *, views: SegViews = SegViews(), probabilities: bool = True, skip_bad: bool = False,
                progress: bool | None = False):
        """Label every pixel of one image (-> dict) or several (-> list of dicts, in order), at each image's own size.

        Each dict: class_map (uint8 (H, W) class indices), class_shares ({class name: share of the pixels} for the
        classes present), probabilities (float32 (C, H, W), unless probabilities=False) and "path" for files.
        `views`: the test-time views (sliding windows, scales, flip, shift-and-stitch) as `deepres eval` runs them.
        The image is resized by the model's Preprocess (no crop), the prediction back to the image's size."""
        if self.task.labels_images:
            raise ValueError(f"{type(self.model).__name__} is a {self.task.name} model: use predict()")
        items, single = expand_inputs(inputs)
        results = list(self.iter_segmentations(items, views=views, probabilities=probabilities, skip_bad=skip_bad,
                                               progress=progress))
        return results[0] if single else results

    def predict(self, inputs, *, top_k: int = 5, batch_size: int = 32, skip_bad: bool = False,
                progress: bool | None = False):
        """Run the model on one image (-> dict) or several (a list, a 4-D tensor or a folder -> list of dicts, in
        order): a classifier's top-k classes, a segmentation model's class map (see `segment`).

        A classifier's dict: pred_label, pred_score (softmax probability), pred_class, top_k_labels, top_k_scores,
        top_k_classes, and "path" for files. Images: file paths, PIL images, numpy uint8 HxWx3 / HxW, tensors
        (C, H, W) uint8 0-255 or float 0-1 (see deepres.inference.preprocess.to_image_tensor). On the precision
        path (bf16 by default on CPUs with AVX-512 BF16) scores can differ from the fp32 model's in the third
        decimal; precision="eager" gives the fp32 model's. A file that cannot be decoded raises BadImageError naming
        it; with skip_bad=True its result is {"path", "failed": True, "error"} and the other images still come
        back."""
        if not self.task.labels_images:
            return self.segment(inputs, skip_bad=skip_bad, progress=progress)
        items, single = expand_inputs(inputs)
        results = list(self.iter_predictions(items, top_k=top_k, batch_size=batch_size, skip_bad=skip_bad,
                                             progress=progress))
        return results[0] if single else results

    def class_index(self, target) -> int:
        """A class given by name or index -> its index; ValueError naming the class if the model has no such one."""
        names = self.class_names
        if isinstance(target, str) and target not in names and target.lstrip("-").isdigit():
            target = int(target)
        if isinstance(target, str):
            if target not in names:
                shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
                raise ValueError(f"unknown class {target!r}; the model's classes are {shown}")
            return names.index(target)
        if not 0 <= int(target) < len(names):
            raise ValueError(f"class index {target} out of range 0..{len(names) - 1}")
        return int(target)

    @property
    def cam_stages(self) -> tuple[str, ...]:
        """The stages `cam` can read, last = default."""
        return cam_stages(self.model)

    def cam(self, inputs, *, target=None, stage: str | None = None, batch_size: int = 32):
        """Grad-CAM of one image (-> dict) or several (-> list of dicts): where the model saw `target` (a class name
        or index; None: each image's top class), read at `stage` (a name from cam_stages; default the last).

        Each dict: label, class, score (softmax probability of that class, fp32 model), stage, cam (float32 (H, W)
        in 0..1 at the model's input size) and image (uint8 (C, H, W): the resized and cropped image the model saw,
        for an overlay with deepres.inference.cam.overlay_cam), and "path" for files."""
        if not self.task.labels_images:
            raise ValueError(f"{type(self.model).__name__} is a {self.task.name} model: Grad-CAM explains classifiers")
        label = None if target is None else self.class_index(target)
        stage = self.cam_stages[-1] if stage is None else stage
        items, single = expand_inputs(inputs)
        results = []
        with eval_mode(self.model):
            for chunk in _batches(items, batch_size):
                images = [resize_and_crop(to_image_tensor(item), self.preprocess) for item in chunk]
                x = torch.stack([normalize_image(image, self.preprocess) for image in images]).to(self.device)
                targets = None if label is None else [label] * len(chunk)
                cams, logits = grad_cam(self.model, x, targets, stage=stage)
                probs = torch.softmax(logits, dim=1)
                labels = probs.argmax(dim=1).tolist() if label is None else [label] * len(chunk)
                for item, image, cam_map, prob, index in zip(chunk, images, cams, probs, labels):
                    result = {"label": index, "class": self.class_names[index], "score": float(prob[index]),
                              "stage": stage, "cam": cam_map,
                              "image": image if image.dtype == torch.uint8 else image.round().clamp(0, 255).byte()}
                    path = input_path(item)
                    if path is not None:
                        result["path"] = path
                    results.append(result)
        return results[0] if single else results

    def extract_feat(self, inputs, stage: str = "pre_logits", batch_size: int = 32):
        """Features of the images: "pre_logits" -> pooled (N, num_features); "stages" -> list of per-stage maps
        (N, C_i, H_i, W_i) from model.forward_stages. N counts the images (1 for a single image). Runs the fp32
        model (features may feed a trainable head, e.g. a linear probe)."""
        if stage not in ("pre_logits", "stages"):
            raise ValueError(f"stage must be 'pre_logits' or 'stages', got {stage!r}")
        model = self.model
        needed = ("forward_features", "forward_head") if stage == "pre_logits" else ("forward_stages",)
        missing = [name for name in needed if not hasattr(model, name)]
        if missing:
            raise ValueError(f"{type(model).__name__} has no {', '.join(missing)}; extract_feat needs a deepres model")
        items, _ = expand_inputs(inputs)
        outputs = []
        # no_grad, not inference_mode: the features may be trained on afterwards
        with eval_mode(model), torch.no_grad():
            for chunk in _batches(items, batch_size):
                x = torch.stack([preprocess_image(item, self.preprocess) for item in chunk]).to(self.device)
                if stage == "pre_logits":
                    outputs.append(model.forward_head(model.forward_features(x), pre_logits=True))
                else:
                    outputs.append(model.forward_stages(x))
        if stage == "pre_logits":
            return torch.cat(outputs)
        return [torch.cat(maps) for maps in zip(*outputs)]


class _LoadCounter:
    """A load_state_dict post-hook that counts loads: a plain object, so the model still deep-copies and pickles."""

    def __init__(self):
        self.count = 0

    def __call__(self, module, incompatible_keys) -> None:
        self.count += 1


def stem_in_chans(model: nn.Module) -> int | None:
    """Input channels of the model's stem conv (its `first_conv` key), or None for a model without one."""
    key = getattr(model, "first_conv", None)
    weight = model.state_dict().get(key) if key else None
    return int(weight.shape[1]) if weight is not None and weight.dim() == 4 else None


def _batches(items: list, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]
