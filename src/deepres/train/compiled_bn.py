"""BatchNorm's training step written for inductor's CPU code generator (`train.compile` on CPU, `train.inductor_bn`).

Inductor decomposes nn.BatchNorm2d's training forward into a Welford reduction and one loop that normalises and
applies ReLU/add. In that loop it recomputes the per-channel factors, a division and a square root, for every
row of a channels_last tensor: with ResNet-20's 16 channels a row is a single vector, so the loop runs at about a
third of memory speed (1.1 ms per 128x16x28x28 bf16 layer on a Xeon core pair, against 0.15 ms to copy the tensor).

`InductorBatchNorm2d` computes the same function in a form the generated code runs well:
  - the statistics are plain sums of x - s and (x - s)^2, where s is each channel's first value in the batch
    (the shifted-data variance: no cancellation whatever the channel's mean, unlike a plain sum of squares);
  - 1/sqrt(var + eps) is written exp(-log(var + eps) / 2). Inductor stores a reused exp/log result in a buffer
    instead of inlining it into every consumer, so the normalising loop reads one scale and one shift per
    channel and does one multiply-add per element;
  - the backward is two sums (dy, dy * (x - mean)) and one multiply-add loop dx = a*dy + b*x + c whose
    per-channel a, b, c are computed once.
Outputs, gradients and running statistics equal nn.BatchNorm2d's within float rounding
(tests/test_compiled_bn.py). Outside training (eval, or no running statistics, or no affine weights) it is
nn.BatchNorm2d itself; the state-dict keys do not change.
"""
import torch
import torch.nn as nn


def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, *([1] * (x.dim() - 2)))


class _BatchNormTrain(torch.autograd.Function):
    """(y, batch mean, biased batch variance) of training-mode batch norm; fp32 arithmetic, y in x's dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        dims = [0, *range(2, x.dim())]
        shift = x[(0, slice(None)) + (0,) * (x.dim() - 2)].float()  # a value of each channel's own distribution
        centred = x.float() - _per_channel(shift, x)
        offset = centred.mean(dims)
        var = (centred.square().mean(dims) - offset.square()).clamp_min(0)
        mean = shift + offset
        invstd = torch.exp(-0.5 * torch.log(var + eps))  # = rsqrt; stored once (module docstring)
        scale = weight * invstd
        y = x.float() * _per_channel(scale, x) + _per_channel(bias - mean * scale, x)
        ctx.save_for_backward(x, weight, mean, invstd)
        return y.to(x.dtype), mean, var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        x, weight, mean, invstd = ctx.saved_tensors
        dims = [0, *range(2, x.dim())]
        g = grad_y.float()
        sum_g = g.sum(dims)
        sum_g_centred = (g * (x.float() - _per_channel(mean, x))).sum(dims)
        inv_count = x.shape[1] / x.numel()
        a = weight * invstd
        b = -a * invstd * invstd * sum_g_centred * inv_count
        c = -a * sum_g * inv_count - b * mean
        grad_x = g * _per_channel(a, x) + x.float() * _per_channel(b, x) + _per_channel(c, x)
        return grad_x.to(x.dtype), sum_g_centred * invstd, sum_g, None


class InductorBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training forward and backward are `_BatchNormTrain` (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        count = x.numel() // max(x.shape[1], 1)  # values per channel
        if not (self.training and self.track_running_stats and self.affine) or count <= 1:
            return super().forward(x)  # including its error for a single value per channel
        self._check_input_dim(x)
        y, mean, var = _BatchNormTrain.apply(x, self.weight, self.bias, self.eps)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            # momentum None: the cumulative average, weight 1/n at the n-th batch (as nn.BatchNorm2d)
            factor = 1.0 / self.num_batches_tracked if self.momentum is None else self.momentum
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
            unbiased = var * (count / (count - 1))
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return y


def use_inductor_batch_norm(model: nn.Module) -> int:
    """Make every plain nn.BatchNorm2d in `model` an InductorBatchNorm2d (in place; subclasses such as
    SyncBatchNorm or frozen BatchNorms are left alone); returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = InductorBatchNorm2d
            count += 1
    return count
