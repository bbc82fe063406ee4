"""A tiny model registry: a dict of builders, a decorator, `create_model` and `list_models`."""
from fnmatch import fnmatch
from typing import Callable

import torch.nn as nn

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


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style `pattern`, sorted."""
    return sorted(n for n in _model_builders if fnmatch(n, pattern))


def default_input_size(name: str) -> tuple[int, int, int]:
    _check_known(name)
    return _default_input_size[name]


def create_model(name: str, num_classes: int = 1000, in_chans: int = 3, **overrides) -> nn.Module:
    """Build a registered model; `overrides` go to the family's constructor (e.g. drop_rate=0.2)."""
    _check_known(name)
    return _model_builders[name](num_classes=num_classes, in_chans=in_chans, **overrides)


def _check_known(name: str) -> None:
    if name not in _model_builders:
        close = [n for n in _model_builders if name.split("_")[0] in n][:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise KeyError(f"unknown model {name!r}{hint}. See `deepres models` for the list.")
