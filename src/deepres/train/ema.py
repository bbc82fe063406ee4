"""Exponential moving average of a model's weights and buffers (Polyak averaging)."""
import copy

import torch
import torch.nn as nn

from .checkpoint import unwrap_model


class ModelEMA:
    """ema = decay·ema + (1-decay)·model after each optimizer step, for parameters and float buffers.

    Integer buffers (BatchNorm's num_batches_tracked) are copied. `module` is a bare eval-mode copy that
    can be evaluated or saved like the model itself.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(unwrap_model(model)).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_state, model_state = self.module.state_dict(), unwrap_model(model).state_dict()
        floats = [k for k, v in ema_state.items() if v.is_floating_point()]
        torch._foreach_lerp_([ema_state[k] for k in floats], [model_state[k].detach() for k in floats],
                             1.0 - self.decay)
        for k, v in ema_state.items():
            if not v.is_floating_point():
                v.copy_(model_state[k])

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
