"""Optimizer factory: SGD (momentum, Nesterov), RMSprop, Adagrad, Adadelta, Adam, AdamW."""
import torch
import torch.nn as nn

from deepres.core.config import OptimConfig
from deepres.models.base import layer_depths


HEAD_MODULES = ("fc", "classifier", "aux_classifier")  # top-level modules that optim.head_lr_mult scales


def param_groups(model: nn.Module, weight_decay: float, exclude_bn_bias: bool, *, head_lr_mult: float = 1.0,
                 bias_lr_mult: float = 1.0, bias_decay_mult: float = 1.0, layer_decay: float = 1.0) -> list[dict]:
    """Trainable parameters grouped by (lr multiplier, weight decay); the loop sets each group's lr to the
    schedule's lr x its `lr_mult`. exclude_bn_bias: no decay on every parameter with ndim <= 1 (BN weights and
    biases); head_lr_mult: parameters of the HEAD_MODULES; bias_lr_mult / bias_decay_mult: conv and linear
    biases (BatchNorm's are not biases here: mmseg's and ademxapp's convention); layer_decay < 1: lr x
    layer_decay^(S + 1 - depth) by models.base.layer_depths (stem 0, stages 1..S, head S + 1)."""
    conv_biases = {id(m.bias) for m in model.modules()
                   if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None}
    depths, stages = layer_depths(model) if layer_decay != 1.0 else ({}, 0)
    groups: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr_mult, decay = 1.0, weight_decay
        if exclude_bn_bias and p.ndim <= 1:
            decay = 0.0
        if id(p) in conv_biases:
            lr_mult, decay = lr_mult * bias_lr_mult, decay * bias_decay_mult
        if name.split(".")[0] in HEAD_MODULES:
            lr_mult *= head_lr_mult
        if depths:
            lr_mult *= layer_decay ** (stages + 1 - depths[name])
        group = groups.setdefault((lr_mult, decay), {"params": [], "weight_decay": decay, "lr_mult": lr_mult})
        group["params"].append(p)
    out = list(groups.values())
    for group in out:
        group["group"] = ("all" if len(out) == 1 else "decay" if group["weight_decay"] else "no_decay") + (
            f" lr x{group['lr_mult']:g}" if group["lr_mult"] != 1.0 else "")
    return out


def create_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Build the optimizer named by cfg.name; lr is the peak lr (the schedule overwrites it each step)."""
    groups = param_groups(model, cfg.weight_decay, cfg.wd_exclude_bn_bias, head_lr_mult=cfg.head_lr_mult,
                          bias_lr_mult=cfg.bias_lr_mult, bias_decay_mult=cfg.bias_decay_mult,
                          layer_decay=cfg.layer_decay)
    eps = {} if cfg.eps is None else {"eps": cfg.eps}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "rmsprop":
        alpha = 0.99 if cfg.alpha is None else cfg.alpha
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=alpha, momentum=cfg.momentum, **eps)
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(groups, lr=cfg.lr, **eps)
    if cfg.name == "adadelta":
        rho = 0.9 if cfg.alpha is None else cfg.alpha
        return torch.optim.Adadelta(groups, lr=cfg.lr, rho=rho, **eps)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, **eps)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **eps)
    raise ValueError(f"optim.name={cfg.name!r}: expected sgd, rmsprop, adagrad, adadelta, adam or adamw")


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """The peak lr used: cfg.lr, or with lr_scaling="linear" cfg.lr x global_batch / lr_base_batch (Goyal et al.)."""
    if cfg.lr_scaling == "linear":
        return cfg.lr * global_batch / cfg.lr_base_batch
    if cfg.lr_scaling != "none":
        raise ValueError(f"optim.lr_scaling={cfg.lr_scaling!r}: expected 'none' or 'linear'")
    return cfg.lr
