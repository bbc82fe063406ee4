"""mmpretrain-style inference: `init_model` builds a classifier with its preprocessing and class names,
`inference_model` classifies images, `extract_feat` returns pooled or per-stage features.

Every classification forward pass goes through `forward_batch`. By default it runs deepres's CPU/GPU fast path
(deepres.inference.fastpath: BatchNorm folded into the convolutions, channels_last, bf16 where the hardware computes it
natively), prepared on first use from the model's current weights and prepared again whenever those weights,
their device or dtype change. `init_model(..., fast=False)` (or `set_fast_path(model, False)`) runs the model as
it is, in fp32.
"""
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import safetensors
import torch
import torch.nn as nn
from tqdm import tqdm

from deepres.core.checkpoint import load_weights, resolve_checkpoint
from deepres.core.config import config_from_dict, load_config, resolve_recipe
from deepres.data import eval_preprocess
from deepres.data.folders import list_image_files
from deepres.data.formats import CIFAR10_CLASSES, FASHION_MNIST_CLASSES, MNIST_CLASSES, STORED_SIDE
from deepres.data.images import IMAGE_EXTENSIONS, BadImageError
from deepres.data.imagenet_classes import imagenet_class_names
from deepres.data import transforms as T
from deepres.models import create_model, default_input_size, list_models, load_pretrained, module_device, \
    read_state_dict
from deepres.models.base import eval_mode
from deepres.models.pretrained import get_pretrained, is_pretrained_name, load_pretrained_weights
from deepres.models.weights import remap_keys

from deepres.tasks.build import build_model

from .fastpath import MODES, prepare_for_inference
from .preprocess import Preprocess, input_path, preprocess_image

log = logging.getLogger(__name__)


def _format_defaults(data) -> tuple[int, int, list[str] | None] | None:
    """(num_classes, in_chans, class names or None) that a data format fixes, or None if the data decides."""
    if data.name == "fashion_mnist":
        return 10, 1, FASHION_MNIST_CLASSES
    if data.name == "mnist":
        return 10, 1, MNIST_CLASSES
    if data.name == "cifar10":
        return 10, 3, CIFAR10_CLASSES
    if data.name == "cifar100":
        return (20 if data.coarse_labels else 100), 3, None
    if data.name == "imagenet":
        return 1000, 3, imagenet_class_names()
    return None


# ---------------------------------------------------------------------------------------------- init_model
def init_model(model_or_recipe, checkpoint=None, device="cpu", *, preprocess: Preprocess | None = None,
               class_names: list[str] | None = None, fast: bool | str = "auto", compile: bool = False,
               calibration=None) -> nn.Module:
    """A classifier in eval mode on `device`, with `model.preprocess` (Preprocess), `model.class_names` and
    `model.pretrained_cfg` (where the weights came from).

    fast: how inference_model runs it (see set_fast_path): "auto" (default; bf16 where the CPU/GPU computes it
    natively, else fp32, BN folded and channels_last either way), "fp32", "bf16", "int8" (CPU; needs
    `calibration`: a few hundred images of any kind inference_model takes), or False (the model as is, fp32).
    compile: add torch.compile (compiles once per batch size: worth it for large jobs). The model itself keeps
    its fp32 weights: extract_feat, export and training use it unchanged.

    model_or_recipe: a deepres run directory or .safetensors checkpoint (config and classes inside), a weights
    name "arch.tag" (list_pretrained(); downloaded and verified), a registered model name (random weights unless
    `checkpoint` is given), a recipe name or YAML path, or an nn.Module. checkpoint: any .pth/.safetensors state
    dict for that architecture (num_classes and in_chans are read from it). preprocess / class_names override
    what was derived.
    """
    if isinstance(model_or_recipe, nn.Module):
        model, pp, names, source = model_or_recipe, None, None, {"source": "module"}
        if checkpoint is not None:
            _load_strict(model, read_state_dict(checkpoint), str(checkpoint))
            source["checkpoint"] = str(checkpoint)
    else:
        model, pp, names, source = _resolve(str(model_or_recipe), checkpoint)
    in_chans = _stem_in_chans(model)
    pp = preprocess or pp or Preprocess(in_chans=in_chans or 3)
    if in_chans and pp.in_chans != in_chans:
        raise ValueError(f"preprocess gives {pp.in_chans}-channel images but the model's stem takes {in_chans}")
    num_classes = getattr(model, "num_classes", None)
    names = class_names if class_names is not None else names
    if names is None:
        names = imagenet_class_names() if num_classes == 1000 else [str(i) for i in range(num_classes or 0)]
    if num_classes and len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a model with {num_classes} classes")
    model.preprocess, model.class_names, model.pretrained_cfg = pp, list(names), source
    model = model.to(device).eval()
    set_fast_path(model, fast, compile=compile, calibration=calibration)
    return model


def _resolve(spec: str, checkpoint):
    """(model, preprocess or None, class names or None, source info) for a string spec."""
    path = Path(spec)
    if path.is_dir():
        if checkpoint is not None:
            raise ValueError(f"{spec} is a run directory, which names its own weights; do not pass checkpoint")
        return _from_deepres_checkpoint(resolve_checkpoint(spec))
    if path.is_file():
        if path.suffix in (".yaml", ".yml"):
            return _from_recipe(spec, checkpoint)
        if checkpoint is not None:
            raise ValueError(f"{spec} is a checkpoint file; pass the architecture as the model and this file as "
                             f"checkpoint, e.g. init_model('resnet50', checkpoint={spec!r})")
        if _deepres_metadata(path) is None:
            raise ValueError(f"{spec} holds no deepres config; name its architecture: "
                             f"init_model('resnet50', checkpoint={spec!r}) (or --model resnet50 --checkpoint ...)")
        return _from_deepres_checkpoint(path)
    if is_pretrained_name(spec):
        if checkpoint is not None:
            raise ValueError(f"{spec} names published weights already; pass the architecture "
                             f"({spec.partition('.')[0]}) to load your own checkpoint")
        return _from_pretrained(spec)
    if spec in list_models():
        return _from_model_name(spec, checkpoint)
    if "." in spec and spec.partition(".")[0] in list_models() and not spec.endswith((".yaml", ".yml")):
        get_pretrained(spec)  # raises KeyError listing the known tags of this architecture
    try:
        resolve_recipe(spec)
    except FileNotFoundError:
        raise FileNotFoundError(f"{spec!r} is not a run directory, checkpoint file, registered model, pretrained "
                                f"weights name (deepres.list_pretrained()) or recipe") from None
    return _from_recipe(spec, checkpoint)


def _deepres_metadata(path: Path) -> dict | None:
    """The metadata of a deepres .safetensors checkpoint (with its config), else None."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix != ".safetensors":
        return None
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    return metadata if metadata.get("config") else None


def _from_deepres_checkpoint(path: Path):
    state_dict, metadata = load_weights(path)
    cfg = config_from_dict(metadata["config"], where=f"{path} metadata")
    model, pp, names = _from_config(cfg, state_dict, metadata.get("classes") or None, str(path))
    return model, pp, names, {"source": "deepres checkpoint", "checkpoint": str(path), "model": cfg.model.name}


def _from_recipe(spec: str, checkpoint):
    cfg = load_config(spec)
    state_dict, names, where = None, None, f"recipe {spec}"
    if checkpoint is not None:
        metadata = _deepres_metadata(Path(checkpoint))
        if metadata is not None:
            state_dict, metadata = load_weights(checkpoint)
            names = metadata.get("classes") or None
        else:
            state_dict = read_state_dict(checkpoint)
        where = str(checkpoint)
    elif not _recipe_fixes_shape(cfg):
        raise ValueError(f"recipe {spec}: data.name={cfg.data.name} does not say how many classes and channels "
                         "the model has; pass a checkpoint or set model.num_classes and model.in_chans")
    model, pp, names = _from_config(cfg, state_dict, names, where)
    if state_dict is None:
        log.warning("recipe %s without a checkpoint: the model has random weights", spec)
    source = {"source": "recipe", "recipe": spec, "checkpoint": str(checkpoint) if checkpoint else None}
    return model, pp, names, source


def _recipe_fixes_shape(cfg) -> bool:
    classes = cfg.model.num_classes or cfg.data.num_classes
    chans = cfg.model.in_chans or cfg.data.in_chans
    return _format_defaults(cfg.data) is not None or bool(classes and chans)


def _from_config(cfg, state_dict, names, where: str):
    """Build cfg's model (plain layout, CPU), sized by the state dict where it differs, and load the weights."""
    defaults = _format_defaults(cfg.data)
    num_classes = cfg.model.num_classes or cfg.data.num_classes or (defaults[0] if defaults else 0)
    in_chans = cfg.model.in_chans or cfg.data.in_chans or (defaults[1] if defaults else 3)
    model = _build_from_config(cfg, num_classes, in_chans)
    if state_dict is not None:
        found_classes, found_chans = _shape_from_state_dict(model, state_dict)
        wanted = (found_classes or num_classes, found_chans or in_chans)
        if wanted != (num_classes, in_chans):
            num_classes, in_chans = wanted
            model = _build_from_config(cfg, num_classes, in_chans)
        _load_strict(model, state_dict, where)
    if names is None or len(names) != num_classes:
        default = defaults[2] if defaults else None
        names = default if default is not None and len(default) == num_classes else None
    return model, eval_preprocess(cfg.data, in_chans), names


def _build_from_config(cfg, num_classes: int, in_chans: int) -> nn.Module:
    # channels_last is a training speed setting; inference builds the plain layout (a fast path may change it)
    cfg = replace(cfg, model=replace(cfg.model, num_classes=num_classes, in_chans=in_chans),
                  train=replace(cfg.train, channels_last=False))
    return build_model(cfg, torch.device("cpu"))


def _from_pretrained(name: str):
    record = get_pretrained(name)
    path = load_pretrained_weights(name)
    model = create_model(record.arch, num_classes=record.num_classes)
    _load_strict(model, read_state_dict(path), str(path))
    pp = Preprocess(resize=record.resize, crop_size=record.crop_size, interpolation=record.interpolation,
                    mean=record.mean, std=record.std, in_chans=3)
    names = imagenet_class_names() if record.categories == "imagenet-1k" else None
    source = {"source": "pretrained", "name": name, "checkpoint": str(path), "url": record.url,
              "top1": record.top1, "top5": record.top5}
    return model, pp, names, source


def _from_model_name(name: str, checkpoint):
    if checkpoint is not None and _deepres_metadata(Path(checkpoint)) is not None:
        model, pp, names, source = _from_deepres_checkpoint(Path(checkpoint))
        if source["model"] != name:
            raise ValueError(f"{checkpoint} is a deepres checkpoint of {source['model']}, not {name}")
        return model, pp, names, source
    channels, height, _ = default_input_size(name)
    model = create_model(name)
    if checkpoint is None:
        log.warning("model %s without a checkpoint: random weights", name)
    else:
        state_dict = read_state_dict(checkpoint)
        found_classes, found_chans = _shape_from_state_dict(model, state_dict)
        if (found_classes or model.num_classes, found_chans or channels) != (model.num_classes, channels):
            model = create_model(name, num_classes=found_classes, in_chans=found_chans)
        _load_strict(model, state_dict, str(checkpoint))
    in_chans = _stem_in_chans(model) or channels
    # ImageNet-sized nets: the standard 256 -> 224; small-image nets (CIFAR): the image at their own size
    resize = round(height / 0.875) if height >= 224 else height
    pp = Preprocess(resize=resize, crop_size=height, in_chans=in_chans)
    return model, pp, None, {"source": "model", "model": name,
                             "checkpoint": str(checkpoint) if checkpoint is not None else None}


def _shape_from_state_dict(model: nn.Module, state_dict) -> tuple[int | None, int | None]:
    """(num_classes, in_chans) a state dict was trained with, from its classifier and stem conv for `model`."""
    keys = remap_keys(dict(state_dict))
    classifier = getattr(model, "classifier", None)
    first_conv = getattr(model, "first_conv", None)
    weight = keys.get(f"{classifier}.weight") if classifier else None
    stem = keys.get(first_conv) if first_conv else None
    return (int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None,
            int(stem.shape[1]) if stem is not None and stem.dim() == 4 else None)


def _stem_in_chans(model: nn.Module) -> int | None:
    key = getattr(model, "first_conv", None)
    weight = model.state_dict().get(key) if key else None
    return int(weight.shape[1]) if weight is not None and weight.dim() == 4 else None


def _load_strict(model: nn.Module, state_dict, where: str) -> None:
    report = load_pretrained(model, state_dict)
    if report["dropped"]:
        raise ValueError(f"{where}: its classifier does not fit the model ({', '.join(report['dropped'])} "
                         f"dropped); inference needs the trained classifier")


# ------------------------------------------------------------------------------------------ the fast path
MAX_CALIBRATION_IMAGES = 256  # int8 calibration: more images than this are sampled evenly


@dataclass
class FastPath:
    """How forward_batch runs a model (deepres.inference.fastpath.prepare_for_inference options) and, once prepared, the
    runner with the weights it was prepared from: `info` says what was applied."""

    mode: str
    compile: bool = False
    calibration: list | None = None  # int8: the images to calibrate on (any kind inference_model takes)
    runner: object = None
    info: object = None
    prepared_from: tuple = field(default=(), repr=False)  # (tensor identity, version, device, dtype) of the weights

    def __deepcopy__(self, memo):  # a copied model keeps the setting and prepares its own runner
        return FastPath(self.mode, self.compile, self.calibration)

    def __getstate__(self):  # torch.save(model) / pickling: the setting, not the prepared copy
        return {**self.__dict__, "runner": None, "info": None, "prepared_from": ()}


def set_fast_path(model: nn.Module, fast: bool | str = "auto", *, compile: bool = False, calibration=None) -> None:
    """Choose how inference_model / forward_batch run `model`: fast = "auto" | "fp32" | "bf16" | "int8" (see
    deepres.inference.fastpath.prepare_for_inference), or False / "eager" for the model as is. The fast runner is a
    prepared copy, made on the next forward pass and made again when the model's weights change (in place, by
    load_state_dict, or by moving the model), so it never runs stale weights."""
    mode = "auto" if fast is True else "eager" if fast is False or fast is None else fast
    if mode not in MODES:
        raise ValueError(f"fast must be one of {', '.join(MODES)} or True/False, got {fast!r}")
    if mode == "int8":
        if calibration is None:
            raise ValueError("fast='int8' needs calibration images (a few hundred real images of the kind you will "
                             "classify: paths, a folder, PIL images, arrays or tensors): pass calibration=...")
        calibration, _ = expand_inputs(calibration)
        if not calibration:
            raise ValueError("fast='int8': the calibration images are empty")
        if len(calibration) > MAX_CALIBRATION_IMAGES:  # evenly spaced, so a sorted class-folder tree mixes classes
            step = len(calibration) / MAX_CALIBRATION_IMAGES
            calibration = [calibration[int(i * step)] for i in range(MAX_CALIBRATION_IMAGES)]
    elif calibration is not None:
        raise ValueError(f"calibration images are used by fast='int8' only, not fast={fast!r}")
    if compile and mode in ("eager", "int8"):
        raise ValueError(f"compile=True needs a fast path to compile (fast='auto', 'fp32' or 'bf16'), not {fast!r}")
    if not isinstance(getattr(model, "preprocess", None), Preprocess):
        raise ValueError("set_fast_path needs model.preprocess (the input size); build the model with init_model()")
    model.fast_path = None if mode == "eager" else FastPath(mode, compile, calibration)


def _weights_signature(model: nn.Module) -> tuple:
    # Tensor version counters move on every in-place write (load_state_dict, an optimizer step, copy_), and
    # .to() makes new tensors: any of these makes the prepared copy stale.
    return tuple((id(t), t._version, t.device, t.dtype) for t in (*model.parameters(), *model.buffers()))


def _fast_runner(model: nn.Module, batch_size: int):
    """The prepared fast-path runner of `model`, made (again) when its weights changed; None: run it as is."""
    state = getattr(model, "fast_path", None)
    if state is None:
        return None
    signature = _weights_signature(model)
    if state.runner is not None and state.prepared_from == signature:
        return state.runner
    pp = _preprocess_of(model)
    calibration = None
    if state.mode == "int8":
        calibration = [torch.stack([preprocess_image(item, pp) for item in chunk])
                       for chunk in _batches(state.calibration, 32)]
    options = dict(example_input_size=(pp.in_chans, pp.crop_size, pp.crop_size), mode=state.mode,
                   compile=state.compile, calibration=calibration, device=module_device(model),
                   example_batch_size=batch_size if state.compile else 2)
    try:
        state.runner, state.info = prepare_for_inference(model, **options)
    except ValueError as error:
        if "cannot trace" not in str(error):
            raise
        log.warning("fast path without BatchNorm folding: %s", error)
        state.runner, state.info = prepare_for_inference(model, fold_bn=False, **options)
    state.prepared_from = signature
    log.info("fast path: %s", ", ".join(state.info.steps) or state.info.mode)
    return state.runner


# ------------------------------------------------------------------------------------------ running models
def forward_batch(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Logits of a preprocessed float batch (N, C, H, W); the single call site of the model for inference. Runs
    the model's fast path (set_fast_path) when it has one, else the model itself."""
    runner = _fast_runner(model, batch.shape[0])
    if runner is not None:
        compiled_for = max((shape[0] for shape in runner.compile_seconds), default=0)
        if compiled_for and batch.shape[0] < compiled_for:
            # A short (last) batch is padded to the compiled batch size rather than compiled again; in eval mode
            # every image's output depends on that image alone.
            padding = batch.new_zeros(compiled_for - batch.shape[0], *batch.shape[1:])
            return runner(torch.cat([batch, padding]))[:batch.shape[0]]
        return runner(batch)
    device = module_device(model)
    with torch.inference_mode():
        return model(batch.to(device, non_blocking=True))


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


def _preprocess_of(model: nn.Module) -> Preprocess:
    pp = getattr(model, "preprocess", None)
    if not isinstance(pp, Preprocess):
        raise ValueError("the model has no `preprocess` (a deepres.inference.Preprocess); build it with "
                         "init_model(), or set model.preprocess and model.class_names")
    return pp


def _batches(items: list, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


def iter_predictions(model: nn.Module, inputs, *, top_k: int = 5, batch_size: int = 32, skip_bad: bool = False,
                     progress: bool | None = False):
    """Yield one result dict per image, in input order (see inference_model); progress=None: bar on a terminal."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    items, _ = expand_inputs(inputs)
    pp = _preprocess_of(model)
    names = list(getattr(model, "class_names", None) or [])
    disable = None if progress is None else not progress  # tqdm: None = only on a terminal
    with eval_mode(model), tqdm(total=len(items), unit="img", disable=disable) as bar:
        for chunk in _batches(items, batch_size):
            results, tensors, slots = [None] * len(chunk), [], []
            for slot, item in enumerate(chunk):
                try:
                    tensors.append(preprocess_image(item, pp))
                    slots.append(slot)
                except BadImageError as error:
                    if not skip_bad:
                        raise
                    results[slot] = {"path": input_path(item), "failed": True, "error": str(error)}
            if tensors:
                probs = torch.softmax(forward_batch(model, torch.stack(tensors)).float(), dim=1).cpu()
                scores, labels = probs.topk(min(top_k, probs.shape[1]), dim=1)
                if len(names) != probs.shape[1]:
                    names = [str(i) for i in range(probs.shape[1])]
                for slot, score_row, label_row in zip(slots, scores.tolist(), labels.tolist()):
                    results[slot] = _result(chunk[slot], score_row, label_row, names)
            bar.update(len(chunk))
            yield from results


def _result(item, scores: list[float], labels: list[int], names: list[str]) -> dict:
    result = {"pred_label": labels[0], "pred_score": scores[0], "pred_class": names[labels[0]],
              "top_k_labels": labels, "top_k_scores": scores, "top_k_classes": [names[i] for i in labels]}
    path = input_path(item)
    if path is not None:
        result["path"] = path
    return result


def inference_model(model: nn.Module, inputs, top_k: int = 5, batch_size: int = 32, skip_bad: bool = False,
                    progress: bool | None = False):
    """Classify one image (-> dict) or several (a list, a 4-D tensor or a folder -> list of dicts, in order).

    Each dict: pred_label, pred_score (softmax probability), pred_class, top_k_labels, top_k_scores,
    top_k_classes, and "path" for files. Images: file paths, PIL images, numpy uint8 HxWx3 / HxW, tensors
    (C, H, W) uint8 0-255 or float 0-1 (see deepres.inference.preprocess.to_image_tensor). The model runs on its
    fast path (set_fast_path; bf16 by default on CPUs with AVX-512 BF16), so scores can differ from the fp32 model
    in the third decimal; init_model(..., fast=False) gives the fp32 model's. A file that cannot
    be decoded raises BadImageError naming it; with skip_bad=True its result is
    {"path", "failed": True, "error"} and the other images still come back, in order.
    """
    items, single = expand_inputs(inputs)
    results = list(iter_predictions(model, items, top_k=top_k, batch_size=batch_size, skip_bad=skip_bad,
                                    progress=progress))
    return results[0] if single else results


def extract_feat(model: nn.Module, inputs, stage: str = "pre_logits", batch_size: int = 32):
    """Features of the images: "pre_logits" -> pooled (N, num_features); "stages" -> list of per-stage maps
    (N, C_i, H_i, W_i) from model.forward_stages. N counts the images (1 for a single image)."""
    if stage not in ("pre_logits", "stages"):
        raise ValueError(f"stage must be 'pre_logits' or 'stages', got {stage!r}")
    needed = ("forward_features", "forward_head") if stage == "pre_logits" else ("forward_stages",)
    missing = [name for name in needed if not hasattr(model, name)]
    if missing:
        raise ValueError(f"{type(model).__name__} has no {', '.join(missing)}; extract_feat needs a deepres model")
    items, _ = expand_inputs(inputs)
    pp = _preprocess_of(model)
    device = module_device(model)
    outputs = []
    # no_grad, not inference_mode: features may feed a trainable head (e.g. a linear probe) afterwards
    with eval_mode(model), torch.no_grad():
        for chunk in _batches(items, batch_size):
            x = torch.stack([preprocess_image(item, pp) for item in chunk]).to(device)
            if stage == "pre_logits":
                outputs.append(model.forward_head(model.forward_features(x), pre_logits=True))
            else:
                outputs.append(model.forward_stages(x))
    if stage == "pre_logits":
        return torch.cat(outputs)
    return [torch.cat(maps) for maps in zip(*outputs)]
