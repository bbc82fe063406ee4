"""Grad-CAM (Selvaraju et al., ICCV 2017): where in the image a classifier found the evidence for a class.

For a stage's output maps A_k (k = channels) and a class score y_c (the logit), each map is weighted by the mean
over its pixels of dy_c/dA_k, and CAM = ReLU(sum_k w_k A_k), upsampled bilinearly to the model's input and scaled
to 0..1 per image. The stage is read with a forward hook on the stage module (`model.stage_names`: layer1..layer4
for ResNets), so any deepres network works without changes; the last stage is the default, as in the paper.
The fp32 model runs (gradients are needed; the fast path is inference-only). `cam_picture` is the overlay enlarged
for a person to look at (a 28-px input becomes 280 px), as `deepres predict --cam` writes it.
"""
import threading

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib import colormaps

from deepres.tasks.segmentation import enlarge_for_viewing

# One hook at a time per model: two threads computing CAMs of one model would read each other's activations.
_hook_lock = threading.Lock()


def cam_stages(model: nn.Module) -> tuple[str, ...]:
    """The stage names Grad-CAM can read (the model's `stage_names`), last = default."""
    stages = tuple(getattr(model, "stage_names", ()))
    if not stages:
        raise ValueError(f"{type(model).__name__} has no stage_names; Grad-CAM needs a deepres classifier")
    return stages


def grad_cam(model: nn.Module, x: torch.Tensor, targets=None, *, stage: str | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(cams (N, H, W) float32 in 0..1 at x's size, logits (N, classes)) of a preprocessed batch x (N, C, H, W).

    targets: class index per image (a sequence or tensor of N ints), or None for each image's top class.
    stage: a name from cam_stages(model) (default: the last). A map with no positive evidence is all zeros."""
    stages = cam_stages(model)
    stage = stages[-1] if stage is None else stage
    if stage not in stages:
        raise ValueError(f"unknown stage {stage!r} for Grad-CAM; {type(model).__name__} has {', '.join(stages)}")
    maps = []
    with _hook_lock:
        handle = getattr(model, stage).register_forward_hook(lambda module, args, output: maps.append(output))
        try:
            with torch.enable_grad():
                # the input carries the gradient, so frozen weights (requires_grad=False) still give one
                logits = model(x.detach().float().requires_grad_(True))
        finally:
            handle.remove()
    activations = maps[-1]
    if targets is None:
        targets = logits.argmax(dim=1)
    targets = torch.as_tensor(targets, device=logits.device).long().view(-1)
    if targets.numel() != x.shape[0]:
        raise ValueError(f"{targets.numel()} CAM targets for {x.shape[0]} images")
    if targets.min() < 0 or targets.max() >= logits.shape[1]:
        raise ValueError(f"CAM target class out of range 0..{logits.shape[1] - 1}: {targets.tolist()}")
    score = logits.gather(1, targets[:, None]).sum()  # images are independent in eval mode: one backward for all
    (gradients,) = torch.autograd.grad(score, activations)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cams = F.relu((weights * activations).sum(dim=1, keepdim=True))
    cams = F.interpolate(cams, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0].detach()
    peaks = cams.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return (cams / peaks).clamp(0, 1).float().cpu(), logits.detach().float().cpu()


def heatmap_rgb(cam: torch.Tensor, colormap: str = "jet") -> np.ndarray:
    """A CAM (H, W) in 0..1 as an RGB uint8 array (H, W, 3) through a matplotlib colormap."""
    return (colormaps[colormap](cam.numpy())[..., :3] * 255).round().astype(np.uint8)


def overlay_cam(image: torch.Tensor, cam: torch.Tensor, *, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """The image (C, H, W) 0-255, C in {1, 3}, with its CAM (H, W) blended in (`alpha` of the colour): uint8 HxWx3.
    The CAM is resized to the image if their sizes differ."""
    if cam.shape != image.shape[-2:]:
        cam = F.interpolate(cam[None, None].float(), size=image.shape[-2:], mode="bilinear", align_corners=False)
        cam = cam[0, 0].clamp(0, 1)
    rgb = image.float().expand(3, -1, -1).permute(1, 2, 0).numpy()
    blended = rgb * (1 - alpha) + heatmap_rgb(cam, colormap).astype(np.float32) * alpha
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def cam_picture(image: torch.Tensor, cam: torch.Tensor, *, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """overlay_cam enlarged for viewing (enlarge_for_viewing: nearest-neighbour by an integer factor until the shorter
    side is >= 256 px, so each pixel the model saw is a visible block; larger crops as they are): uint8 HxWx3."""
    return enlarge_for_viewing(overlay_cam(image, cam, alpha=alpha, colormap=colormap))
