"""From a config, a checkpoint or a published name to the model it describes.

`build_model(cfg)` builds the registered model a training config names (the data fills what the recipe left open:
`resolve_config`). `load_model(spec)` is the one reader of every kind of trained weights deepres accepts, and
returns the model with what it needs to be used: its config (if deepres trained it), class names and eval
transform (a Preprocess). `deepres eval`, `deepres predict` / init_model, `deepres export` and `deepres bench`
all go through it.
"""
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import safetensors
import torch
import torch.nn as nn

from deepres.core.checkpoint import load_weights, resolve_checkpoint
from deepres.core.config import Config, config_from_dict, load_config, resolve_recipe
from deepres.core.preprocess import Preprocess
from deepres.data import DataInfo, format_shape
from deepres.data.imagenet_classes import imagenet_class_names
from deepres.data.readers.seg_labels import VOC_CLASSES
from deepres.models import create_model, default_input_size, list_models, load_pretrained, read_state_dict
from deepres.models.bn import set_bn_momentum
from deepres.models.pretrained import get_pretrained, is_pretrained_name, load_pretrained_weights
from deepres.models.weights import remap_keys

from . import task_of

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- from a config
def model_shape(cfg: Config, info: DataInfo | None = None) -> tuple[int, int]:
    """(num_classes, in_chans) of the model a config describes: the model block's, else what the data gave (`info`,
    from build_loaders), else the data block's, else what the data format fixes; 0 classes = unknown."""
    fixed = format_shape(cfg.data) or (0, 3, None)
    num_classes = cfg.model.num_classes or (info.num_classes if info else 0) or cfg.data.num_classes or fixed[0]
    in_chans = cfg.model.in_chans or (info.in_chans if info else 0) or cfg.data.in_chans or fixed[1]
    return num_classes, in_chans


def resolve_config(cfg: Config, info: DataInfo) -> Config:
    """Fill what the data decides (build_loaders' DataInfo): model.num_classes and model.in_chans when 0."""
    num_classes, in_chans = model_shape(cfg, info)
    return replace(cfg, model=replace(cfg.model, num_classes=num_classes, in_chans=in_chans))


def build_model(cfg: Config, device: torch.device) -> nn.Module:
    """The registered model with the config's options, BN momentum, device and memory format."""
    m = cfg.model
    overrides = dict(m.kwargs)
    if m.drop_rate:
        overrides["drop_rate"] = m.drop_rate
    if m.zero_init_last:
        overrides["zero_init_last"] = True
    try:
        model = create_model(m.name, num_classes=m.num_classes, in_chans=m.in_chans, **overrides)
    except TypeError as e:
        raise ValueError(f"model {m.name!r} rejected the options {sorted(overrides)} "
                         f"(model.drop_rate/zero_init_last/kwargs): {e}") from None
    if m.bn_momentum is not None:
        set_bn_momentum(model, m.bn_momentum)
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def load_initial_weights(model: nn.Module, spec: str) -> dict:
    """model.pretrained: load published weights `arch.tag`, a run directory's or checkpoint's weights, or a state
    dict file into `model` (into model.backbone when the model has one and the weights are a classifier's);
    a classifier that does not fit stays at its init. Returns load_pretrained's report."""
    if is_pretrained_name(spec):
        state_dict = read_state_dict(load_pretrained_weights(spec))
    else:
        path = resolve_checkpoint(spec)
        state_dict = _read_weights(path)[0]
    backbone = getattr(model, "backbone", None)
    if backbone is not None and not any(key.startswith("backbone.") for key in state_dict):
        return load_pretrained(backbone, state_dict)
    return load_pretrained(model, state_dict)


# ---------------------------------------------------------------------------------------------- from weights
@dataclass
class LoadedModel:
    """A model with its weights loaded (CPU, fp32, eval mode) and what using it needs."""

    model: nn.Module
    class_names: list[str]  # index = output
    preprocess: Preprocess  # the eval transform it expects
    config: Config | None = None  # the training config, for weights deepres trained (None otherwise)
    source: dict = field(default_factory=dict)  # where it came from: kind, checkpoint, model, url, published top1
    int8_calibration: dict | None = None  # the checkpoint's stored int8 calibration (JSON), if it has one


def load_model(spec: str | Path, checkpoint: str | Path | None = None) -> LoadedModel:
    """The model `spec` names, with its weights:

    - a deepres run directory (its best, else last, checkpoint) or a deepres .safetensors checkpoint: config and
      class names come from the file;
    - published weights "arch.tag" (list_pretrained(); downloaded and verified into the cache);
    - a registered model name: random weights, or `checkpoint` (a deepres checkpoint of that model, or any
      .pth/.safetensors state dict: torchvision, timm, mmcls layouts; its classifier and stem decide num_classes and
      in_chans);
    - a recipe (name or YAML path): the model it trains, with `checkpoint`'s weights (random without one).
    """
    spec = str(spec)
    path = Path(spec)
    if path.is_dir():
        _refuse_checkpoint(checkpoint, f"{spec} is a run directory, which names its own weights; do not pass "
                                       f"checkpoint")
        return _from_deepres_checkpoint(resolve_checkpoint(spec))
    if path.is_file() and path.suffix not in (".yaml", ".yml"):
        _refuse_checkpoint(checkpoint, f"{spec} is a checkpoint file; pass the architecture as the model and this "
                                       f"file as checkpoint, e.g. init_model('resnet50', checkpoint={spec!r})")
        if not _is_deepres_checkpoint(path):
            raise ValueError(f"{spec} holds no deepres config; name its architecture: init_model('resnet50', "
                             f"checkpoint={spec!r}) (or --model resnet50 --checkpoint ...)")
        return _from_deepres_checkpoint(path)
    if is_pretrained_name(spec):
        _refuse_checkpoint(checkpoint, f"{spec} names published weights already; pass the architecture "
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


def _refuse_checkpoint(checkpoint, message: str) -> None:
    if checkpoint is not None:
        raise ValueError(message)


def _is_deepres_checkpoint(path: Path) -> bool:
    """A .safetensors file whose metadata holds a deepres config (read without loading its tensors)."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix != ".safetensors":
        return False
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            return bool((f.metadata() or {}).get("config"))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def _read_weights(path: Path) -> tuple[dict, dict]:
    """(state dict, deepres metadata or {}) of a deepres checkpoint or any .pth/.safetensors state dict."""
    return load_weights(path) if _is_deepres_checkpoint(path) else (read_state_dict(path), {})


def _from_deepres_checkpoint(path: Path) -> LoadedModel:
    state_dict, metadata = load_weights(path)
    cfg = config_from_dict(metadata["config"], where=f"{path} metadata")
    loaded = _from_config(cfg, state_dict, metadata.get("classes") or None, str(path))
    loaded.source = {"source": "deepres checkpoint", "checkpoint": str(path), "model": cfg.model.name}
    loaded.int8_calibration = metadata.get("int8_calibration")
    return loaded


def _from_recipe(spec: str, checkpoint) -> LoadedModel:
    cfg = load_config(spec)
    state_dict, names = None, None
    if checkpoint is not None:
        state_dict, metadata = _read_weights(Path(checkpoint))
        names = metadata.get("classes") or None
    elif not model_shape(cfg)[0]:
        raise ValueError(f"recipe {spec}: data.name={cfg.data.name} does not say how many classes and channels "
                         "the model has; pass a checkpoint or set model.num_classes and model.in_chans")
    else:
        log.warning("recipe %s without a checkpoint: the model has random weights", spec)
    loaded = _from_config(cfg, state_dict, names, str(checkpoint) if checkpoint is not None else f"recipe {spec}")
    loaded.source = {"source": "recipe", "recipe": spec, "checkpoint": str(checkpoint) if checkpoint else None,
                     "model": cfg.model.name}
    return loaded


def _from_config(cfg: Config, state_dict, names, where: str) -> LoadedModel:
    """cfg's model (plain layout, CPU), sized by the state dict where it says otherwise, with the weights loaded."""
    num_classes, in_chans = model_shape(cfg)
    if state_dict is not None:
        num_classes, in_chans = _state_dict_shape(cfg.model.name, state_dict, num_classes, in_chans)
    # channels_last is a training speed setting; inference builds the plain layout (a fast path may change it)
    model = build_model(replace(cfg, model=replace(cfg.model, num_classes=num_classes, in_chans=in_chans),
                                train=replace(cfg.train, channels_last=False)), torch.device("cpu"))
    if state_dict is not None:
        _load_exactly(model, state_dict, where)
    if names is None or len(names) != num_classes:
        known = (format_shape(cfg.data) or (0, 0, None))[2]
        names = known if known is not None and len(known) == num_classes else None
    preprocess = task_of(cfg.data).eval_transform(cfg.data, in_chans)
    return LoadedModel(model.eval(), _class_names(names, num_classes), preprocess, cfg)


def _from_pretrained(name: str) -> LoadedModel:
    record = get_pretrained(name)
    path = load_pretrained_weights(name)
    model = create_model(record.arch, num_classes=record.num_classes)
    _load_exactly(model, read_state_dict(path), str(path))
    names = {"imagenet-1k": imagenet_class_names, "voc-21": lambda: list(VOC_CLASSES)}.get(
        record.categories, lambda: None)()
    source = {"source": "pretrained", "name": name, "model": record.arch, "checkpoint": str(path),
              "url": record.url, **record.metrics}
    return LoadedModel(model.eval(), _class_names(names, record.num_classes), record.preprocess, None, source)


def _from_model_name(name: str, checkpoint) -> LoadedModel:
    if checkpoint is not None and _is_deepres_checkpoint(Path(checkpoint)):
        loaded = _from_deepres_checkpoint(Path(checkpoint))
        if loaded.source["model"] != name:
            raise ValueError(f"{checkpoint} is a deepres checkpoint of {loaded.source['model']}, not {name}")
        return loaded
    channels, height, _ = default_input_size(name)
    num_classes, in_chans = None, None
    state_dict = _read_weights(Path(checkpoint))[0] if checkpoint is not None else None
    if state_dict is None:
        log.warning("model %s without a checkpoint: random weights", name)
    else:
        num_classes, in_chans = _state_dict_shape(name, state_dict, None, None)
    model = create_model(name, num_classes=num_classes, in_chans=in_chans)
    if state_dict is not None:
        _load_exactly(model, state_dict, str(checkpoint))
    # ImageNet-sized nets: the standard 256 -> 224; small-image nets (CIFAR): the image at their own size
    resize = round(height / 0.875) if height >= 224 else height
    preprocess = Preprocess(resize=resize, crop_size=height, in_chans=in_chans or channels)
    if getattr(model, "task", "") == "segmentation":  # the whole image, its shorter side at the default crop's
        preprocess = Preprocess(resize=height, crop_size=0, in_chans=in_chans or channels)
    source = {"source": "model", "model": name, "checkpoint": str(checkpoint) if checkpoint is not None else None}
    return LoadedModel(model.eval(), _class_names(None, model.num_classes), preprocess, None, source)


# ---------------------------------------------------------------------------------------------- helpers
def _state_dict_shape(name: str, state_dict, num_classes, in_chans) -> tuple:
    """(num_classes, in_chans) a state dict was trained with, read from its classifier and stem conv for model
    `name` (their key names are the model's `classifier_key` and `first_conv`); the given values where it has
    neither. The classifier is a linear layer (2-D weight) or, in segmentation models, a conv (4-D)."""
    with torch.device("meta"):  # only the key names are needed: no memory, no init
        probe = create_model(name)
    keys = remap_keys(dict(state_dict), probe.state_dict())
    weight = keys.get(f"{getattr(probe, 'classifier_key', 'fc')}.weight")
    stem = keys.get(getattr(probe, "first_conv", "conv1.weight"))
    return (int(weight.shape[0]) if weight is not None and weight.dim() in (2, 4) else num_classes,
            int(stem.shape[1]) if stem is not None and stem.dim() == 4 else in_chans)


def _load_exactly(model: nn.Module, state_dict, where: str) -> None:
    report = load_pretrained(model, state_dict)
    if report["dropped"]:
        raise ValueError(f"{where}: its classifier does not fit the model ({', '.join(report['dropped'])} "
                         f"dropped); inference needs the trained classifier")


def _class_names(names: list[str] | None, num_classes: int) -> list[str]:
    if names is not None:
        return list(names)
    return imagenet_class_names() if num_classes == 1000 else [str(i) for i in range(num_classes)]
