"""train.inductor_bn: InductorBatchNorm2d trains exactly like nn.BatchNorm2d (values, gradients, running stats)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from deepres.train.compiled_bn import InductorBatchNorm2d, use_inductor_batch_norm


def bn_pair(channels=6, momentum=0.1, seed=0):
    torch.manual_seed(seed)
    reference = nn.BatchNorm2d(channels, momentum=momentum)
    with torch.no_grad():  # not the identity: weight, bias and running stats all away from their defaults
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-1, 1)
        reference.running_mean.uniform_(-1, 1)
        reference.running_var.uniform_(0.5, 2)
    ours = copy.deepcopy(reference)
    assert use_inductor_batch_norm(ours) == 1 and type(ours) is InductorBatchNorm2d
    return reference, ours


def batches(channels, steps, dtype, channels_last, offset=0.0):
    """Per-channel means far from zero (offset) and unequal spreads: what a plain sum of squares gets wrong."""
    generator = torch.Generator().manual_seed(1)
    spread = torch.linspace(0.5, 3, channels).view(1, -1, 1, 1)
    shift = offset + torch.linspace(-2, 2, channels).view(1, -1, 1, 1)
    out = []
    for _ in range(steps):
        x = (torch.randn(5, channels, 7, 9, generator=generator) * spread + shift).to(dtype)
        out.append(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    return out


def train_steps(bn, xs):
    """Forward and backward over each batch; returns the outputs and the gradients of x, weight and bias."""
    outs, grads = [], []
    for i, x in enumerate(xs):
        x = x.clone().requires_grad_()
        y = bn(x)
        (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y) * (i + 1)).sum().backward()
        outs.append(y.detach())
        grads.append((x.grad, bn.weight.grad.clone(), bn.bias.grad.clone()))
        bn.weight.grad = bn.bias.grad = None
    return outs, grads


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_training_matches_batch_norm_fp32(momentum, channels_last, offset):
    reference, ours = bn_pair(momentum=momentum)
    xs = batches(6, 3, torch.float32, channels_last, offset)
    (ref_out, ref_grads), (our_out, our_grads) = train_steps(reference, xs), train_steps(ours, xs)
    # offset 1000: a variance of ~1-9 on a mean of 1000; fp32 sums of x^2 alone would lose it entirely
    tol = dict(rtol=1e-4, atol=1e-4) if offset == 0 else dict(rtol=1e-3, atol=2e-3)
    for a, b in zip(our_out, ref_out):
        torch.testing.assert_close(a, b, **tol)
    for ours_g, ref_g in zip(our_grads, ref_grads):
        for a, b in zip(ours_g, ref_g):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * b.abs().max().item())
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(ours, name), getattr(reference, name), rtol=1e-5, atol=1e-5)
    assert ours.num_batches_tracked.item() == reference.num_batches_tracked.item() == 3
    assert our_out[0].is_contiguous(memory_format=torch.channels_last) == channels_last


def test_bf16_input_gives_bf16_output_close_to_batch_norm():
    """Under bf16 autocast BatchNorm sees bf16 conv outputs with fp32 weights; both compute in fp32."""
    reference, ours = bn_pair()
    xs = batches(6, 2, torch.bfloat16, channels_last=True)
    (ref_out, ref_grads), (our_out, our_grads) = train_steps(reference, xs), train_steps(ours, xs)
    assert our_out[0].dtype == torch.bfloat16 and our_grads[0][0].dtype == torch.bfloat16
    for a, b in zip(our_out, ref_out):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)
    for ours_g, ref_g in zip(our_grads, ref_grads):
        for a, b in zip(ours_g, ref_g):
            torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2 * b.float().abs().max().item())
    torch.testing.assert_close(ours.running_var, reference.running_var, rtol=1e-3, atol=1e-3)


def test_compiled_conv_bn_relu_matches_eager_batch_norm():
    """The point of the class: under torch.compile (bf16, channels_last), the same outputs and gradients."""
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                              nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
    reference = reference.to(memory_format=torch.channels_last)
    ours = copy.deepcopy(reference)
    assert use_inductor_batch_norm(ours) == 2
    compiled = torch.compile(ours)
    x = torch.randn(8, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    target = torch.randn(8, 16, 12, 12)
    for step in range(2):
        results = []
        for model in (reference, compiled):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = model(x)
            F.mse_loss(F.relu(y).float(), target).backward()
            results.append((y.detach().float(), [p.grad.clone() for p in model.parameters()]))
            model.zero_grad(set_to_none=True)
        (ref_y, ref_grads), (our_y, our_grads) = results
        torch.testing.assert_close(our_y, ref_y, rtol=3e-2, atol=3e-2)
        for a, b in zip(our_grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-2 * b.abs().max().item())
    torch.testing.assert_close(ours[1].running_var, reference[1].running_var, rtol=1e-2, atol=1e-3)
    assert ours[4].num_batches_tracked.item() == 2


def test_outside_training_it_is_batch_norm_itself():
    reference, ours = bn_pair()
    x = batches(6, 1, torch.float32, channels_last=False)[0]
    assert torch.equal(ours.eval()(x), reference.eval()(x))  # eval: the running statistics, bit for bit
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # nn.BatchNorm2d's own error
        ours.train()(torch.randn(1, 6, 1, 1))
    plain = nn.BatchNorm2d(4, affine=False)
    use_inductor_batch_norm(plain)
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(plain(x), F.batch_norm(x, None, None, training=True))


def test_only_plain_batch_norms_are_converted_and_keys_stay():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.SyncBatchNorm(4), nn.BatchNorm1d(4),
                          nn.Sequential(nn.BatchNorm2d(4)))
    keys = list(model.state_dict())
    assert use_inductor_batch_norm(model) == 2
    assert [type(m).__name__ for m in model.modules()][2:] == [
        "InductorBatchNorm2d", "SyncBatchNorm", "BatchNorm1d", "Sequential", "InductorBatchNorm2d"]
    assert list(model.state_dict()) == keys
    assert use_inductor_batch_norm(model) == 0  # already converted
