"""From a config to the model it describes: the data fills what the recipe left open (num_classes, in_chans),
then the registered model is built with the config's options, BN momentum, device and memory format."""
from dataclasses import replace

import torch
import torch.nn as nn

from deepres.core.config import Config
from deepres.data import DataInfo
from deepres.models import create_model
from deepres.models.bn import set_bn_momentum


def resolve_config(cfg: Config, info: DataInfo) -> Config:
    """Fill what the data decides (build_loaders' DataInfo): model.num_classes and model.in_chans when 0."""
    model = replace(cfg.model, num_classes=cfg.model.num_classes or info.num_classes,
                    in_chans=cfg.model.in_chans or info.in_chans)
    return replace(cfg, model=model)


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
