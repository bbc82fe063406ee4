"""A tiny model registry: a dict of builders, a decorator, `create_model` and `list_models`. Published weights
are named `arch.tag` (deepres.models.pretrained), timm style: `create_model("resnet50.tv2_in1k", pretrained=True)`."""
from fnmatch import fnmatch
from typing import Callable

import torch.nn as nn

from .pretrained import default_pretrained, get_pretrained, load_pretrained_weights
from .weights import load_pretrained

_model_builders: dict[str, Callable[..., nn.Module]] = {}
_default_input_size: dict[str, tuple[int, int, int]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, input_size=(3, 224, 224)):
    """Register a builder under its function name; `input_size` (C, H, W) is its default resolution."""

    def wrap(builder):
        name = builder.__name__
        if name in _model_builders:
            raise ValueError(f"model {name!r} is already registered")
        _model_builders[name] = builder
        _default_input_size[name] = tuple(input_size)
        return builder

    return wrap(fn) if fn is not None else wrap


def builder_module(name: str) -> str:
    """The module that defines a registered model's builder (deepres.models.* for the built-in ones)."""
    _check_known(name)
    return _model_builders[name].__module__


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style `pattern`, sorted."""
    return sorted(n for n in _model_builders if fnmatch(n, pattern))


def default_input_size(name: str) -> tuple[int, int, int]:
    _check_known(name)
    return _default_input_size[name]


def create_model(name: str, pretrained: bool = False, num_classes: int | None = None, in_chans: int | None = None,
                 **overrides) -> nn.Module:
    """Build a registered model; `overrides` go to the family's constructor (e.g. drop_rate=0.2).

    name: a registered model, or published weights `arch.tag` (list_pretrained()). pretrained: load the weights of
    `arch.tag`, or of the arch's first registered tag when the name has none (downloaded and verified into the
    cache); a num_classes other than theirs gets a fresh classifier, in_chans=1 a stem summed over RGB.
    num_classes / in_chans default to the variant's own (1000 and 3 for ImageNet nets, 10 and 3 for CIFAR nets).
    """
    record = None
    if name not in _model_builders and "." in name:
        record = get_pretrained(name)  # KeyError naming the known tags of this arch
        name = record.arch
    _check_known(name)
    if pretrained and record is None:
        record = default_pretrained(name)  # KeyError when no weights are published for it
    if record is not None and num_classes is None:
        num_classes = record.num_classes
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if in_chans is not None:
        overrides["in_chans"] = in_chans
    try:
        model = _model_builders[name](**overrides)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise ValueError(f"model {name!r} does not accept option {str(e).split('argument')[-1].strip()}") from None
    if pretrained:
        load_pretrained(model, load_pretrained_weights(record.name))
    return model


def _check_known(name: str) -> None:
    if name not in _model_builders:
        close = [n for n in _model_builders if name.split("_")[0] in n][:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise KeyError(f"unknown model {name!r}{hint}. See `deepres models` for the list.")


def register_variant(name: str, constructor: Callable[..., nn.Module], *, input_size, doc: str, **settings):
    """Register `name` as `constructor(**settings)`: a variant is a row of data. Caller keywords win."""

    def build(**overrides):
        return constructor(**{**settings, **overrides})

    build.__name__ = build.__qualname__ = name
    build.__module__ = constructor.__module__  # where the variant's code lives (builder_module)
    build.__doc__ = doc
    return register_model(build, input_size=input_size)
