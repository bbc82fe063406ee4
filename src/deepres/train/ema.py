"""Exponential moving average of a model's weights and buffers (Polyak averaging)."""
import copy

import torch
import torch.nn as nn

from deepres.core.checkpoint import unwrap_model


class ModelEMA:
    """ema = decay·ema + (1-decay)·model after each optimizer step, for parameters and float buffers.

    Integer buffers (BatchNorm's num_batches_tracked) are copied. `module` is a bare eval-mode copy that
    can be evaluated or saved like the model itself.

    The pairs of (EMA tensor, model tensor) are collected on the first `update` and reused, so a step is two
    fused foreach calls. They stay valid while both models keep their tensors (load_state_dict, optimizer steps
    and BatchNorm updates all work in place); moving or casting a model replaces its buffers, which is noticed
    and the pairs are collected again.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(unwrap_model(model)).eval().requires_grad_(False)
        self._source: nn.Module | None = None  # the bare model the cached pairs below belong to
        self._buffer_ids: list[int] = []  # its buffers and ours when paired: .to() replaces buffers
        self._floats: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self._others: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])

    def _pair_up(self, bare: nn.Module) -> None:
        # keep_vars: the Parameter objects themselves, which stay valid even if their .data is swapped
        ema_state, model_state = self.module.state_dict(keep_vars=True), bare.state_dict(keep_vars=True)
        floats = [k for k, v in ema_state.items() if v.is_floating_point()]
        others = [k for k, v in ema_state.items() if not v.is_floating_point()]
        self._floats = ([ema_state[k] for k in floats], [model_state[k] for k in floats])
        self._others = ([ema_state[k] for k in others], [model_state[k] for k in others])
        self._source = bare

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        bare = unwrap_model(model)
        buffers = [id(b) for m in (bare, self.module) for b in m.buffers()]
        if bare is not self._source or buffers != self._buffer_ids:  # a new model, or one moved/cast since
            self._pair_up(bare)
            self._buffer_ids = buffers
        if self._floats[0]:
            torch._foreach_lerp_(*self._floats, 1.0 - self.decay)
        if self._others[0]:
            torch._foreach_copy_(*self._others)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)  # copies into the existing tensors: the cached pairs stay valid
