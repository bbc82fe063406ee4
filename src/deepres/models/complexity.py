"""Parameter and FLOP counts. FLOPs are counted by torch.utils.flop_counter on the meta device (no compute) and
reported as multiply-accumulates (GMACs), the convention of torchvision and mmcls tables (resnet50 = 4.1)."""
import torch
from torch.utils.flop_counter import FlopCounterMode

from .base import module_device
from .registry import create_model, default_input_size


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: torch.nn.Module, input_size: tuple[int, int, int]) -> float:
    """Multiply-accumulates (x1e9) of one forward pass of one image of `input_size` (C, H, W)."""
    model = model.eval()
    device = module_device(model)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, *input_size, device=device))
    return counter.get_total_flops() / 2 / 1e9


def model_complexity(name: str, num_classes: int | None = None, input_size=None, flops: bool = True,
                     **overrides) -> dict:
    """Params and GMACs (nan if not `flops`) of a registered model at `input_size` (C, H, W; default: its own
    resolution), built on the meta device (no memory, no compute); `overrides` go to create_model."""
    input_size = tuple(input_size or default_input_size(name))
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_chans=input_size[0], **overrides)
    gmacs = count_gmacs(model, input_size) if flops else float("nan")
    return {"name": name, "params": count_params(model), "gmacs": gmacs, "input_size": input_size}
