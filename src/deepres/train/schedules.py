"""Learning-rate schedules as pure functions of the optimizer step.

`step` counts optimizer steps already taken (0 = the first step), so with milestones [32000, 48000] the
steps 0..31999 use lr, 32000..47999 use lr/10 (He et al. 2015: "divide it by 10 at 32k and 48k iterations").
The loop sets every param_group['lr'] = lr_at(step, ...) before each optimizer step.
"""
import math

from deepres.core.config import ScheduleConfig


def lr_at(step: int, cfg: ScheduleConfig, base_lr: float, iters_per_epoch: int, total_iters: int) -> float:
    """The learning rate for optimizer step `step` (0-based)."""
    if step < cfg.warm_start_iters:
        return cfg.warm_start_lr  # ResNet-110: a small constant lr first, then the schedule as if from step 0
    lr = _decayed_lr(step, cfg, base_lr, iters_per_epoch, total_iters)
    if step < cfg.warmup_iters:
        lr *= warmup_factor(step, cfg.warmup_iters, cfg.warmup_start_factor)
    return lr


def warmup_factor(step: int, warmup_iters: int, start_factor: float) -> float:
    """Linear ramp from start_factor at step 0 to 1.0 at step warmup_iters."""
    return start_factor + (1.0 - start_factor) * min(step, warmup_iters) / warmup_iters


def _decayed_lr(step: int, cfg: ScheduleConfig, base_lr: float, iters_per_epoch: int, total_iters: int) -> float:
    if cfg.name == "constant":
        return base_lr
    if cfg.name in ("multistep", "step"):
        # position in the milestone unit; with unit=epoch the lr changes only at epoch boundaries
        position = step if cfg.unit == "iter" else step // max(iters_per_epoch, 1)
        if cfg.name == "multistep":
            n_decays = sum(position >= m for m in cfg.milestones)
        else:
            n_decays = position // cfg.step_size
        return base_lr * cfg.gamma**n_decays
    # cosine / linear / poly: smooth per step, from base_lr after warmup to min_lr at total_iters
    span = max(total_iters - cfg.warmup_iters, 1)
    progress = min(max(step - cfg.warmup_iters, 0) / span, 1.0)
    if cfg.name == "cosine":
        return cfg.min_lr + (base_lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.name == "linear":
        return cfg.min_lr + (base_lr - cfg.min_lr) * (1.0 - progress)
    if cfg.name == "poly":  # mmseg's PolyLR / torchvision's segmentation reference, power 0.9
        return cfg.min_lr + (base_lr - cfg.min_lr) * (1.0 - progress) ** cfg.power
    raise ValueError(f"schedule.name={cfg.name!r}: unknown schedule")
