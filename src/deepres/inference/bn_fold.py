"""BatchNorm folding: each BN that reads only a convolution's output is merged into that convolution's weight and
bias. Whether a model can be folded at all is decided from its torch.fx graph: `untraceable(model)` says why not,
and `find_conv_bn_pairs` raises NotTraceable (not a bare error text) for such a model."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


class NotTraceable(ValueError):
    """torch.fx cannot trace the model (data-dependent control flow and the like), so its conv-BN pairs are unknown."""


@dataclass
class FoldReport:
    folded: list[str] = field(default_factory=list)  # BN modules merged into the conv before them
    kept: dict[str, str] = field(default_factory=dict)  # BN module -> why it stays (no conv right before it, ...)


def trace(model: nn.Module) -> torch.fx.Graph:
    """The model's torch.fx graph; NotTraceable where torch.fx cannot capture it."""
    try:
        return torch.fx.symbolic_trace(model).graph
    except Exception as e:  # data-dependent control flow and the like
        raise NotTraceable(f"cannot trace {type(model).__name__} with torch.fx to find conv-BN pairs: {e}") from None


def untraceable(model: nn.Module) -> str:
    """Why `model`'s BatchNorm layers cannot be folded ('' when its graph can be traced)."""
    try:
        trace(model)
    except NotTraceable as error:
        return str(error)
    return ""


def find_conv_bn_pairs(model: nn.Module) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(conv, bn) module names where the BN reads only that conv's output; and the other BNs with the reason.

    The graph comes from torch.fx tracing, so any block layout is handled: BN after the addition (bn_after_add) and
    the pre-activation BN-ReLU-conv (BN on a block's input) have no conv directly before them and are kept.
    """
    graph = trace(model)
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs, kept = [], {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        bn = model.get_submodule(node.target)
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        source = node.args[0] if node.args else None
        conv = model.get_submodule(source.target) if getattr(source, "op", None) == "call_module" else None
        if not isinstance(conv, nn.Conv2d):
            kept[node.target] = "its input is not a convolution's output (pre-activation or BN after an addition)"
        elif bn.running_mean is None or bn.running_var is None:
            kept[node.target] = "it has no running statistics (track_running_stats=False)"
        elif len(source.users) != 1 or calls[source.target] != 1 or calls[node.target] != 1:
            kept[node.target] = f"{source.target}'s output is used elsewhere too, or a module is called twice"
        else:
            pairs.append((source.target, node.target))
    return pairs, kept


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, FoldReport]:
    """An eval-mode copy of `model` with each BN that directly follows a conv merged into that conv's weight and
    bias (the BN becomes nn.Identity); the model itself is left unchanged."""
    folded = copy.deepcopy(model).eval()
    return folded, fold_batchnorm_inplace(folded)


def fold_batchnorm_inplace(model: nn.Module) -> FoldReport:
    """fold_batchnorm in place, on an eval-mode model that is already a private copy."""
    pairs, kept = find_conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        _replace_submodule(model, conv_name, fuse_conv_bn_eval(conv, bn))
        _replace_submodule(model, bn_name, nn.Identity())
    return FoldReport(folded=[bn for _, bn in pairs], kept=kept)


def _replace_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
