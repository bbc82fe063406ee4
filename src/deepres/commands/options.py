"""Options several commands share, written once: the model to load and how to run it (`add_model_options`,
`predictor_from_args`: predict, serve), `--device`, `--batch-size`/`--amp`/`--set` (eval, robustness), the segmentation test-time views
(eval, predict) and the parsers of their values."""
import argparse
import sys
from pathlib import Path

import torch

from deepres.core.config import MAX_TEST_SCALE
from deepres.core.device import default_device, limit_compute_threads, resolve_amp
from deepres.inference.api import init_model
from deepres.inference.plan import BACKENDS, PRECISIONS
from deepres.inference.predictor import Predictor

MODEL_HELP = ("a deepres run directory or .safetensors checkpoint, published weights arch.tag (e.g. resnet50.tv_in1k), "
              "a registered model name (with --checkpoint), or a recipe")


def add_model_options(parser: argparse.ArgumentParser, *, positional: bool = False, compile: bool = True) -> None:
    """MODEL (positional, or --model), --checkpoint, --device, --precision, --calibration and --backend. compile:
    whether the command has its own --compile (the --backend help then says how the two go together)."""
    if positional:
        parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    else:
        parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--checkpoint", help="a .pth/.safetensors state dict for the MODEL architecture")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="the precision path (default auto: int8 where the checkpoint stores an int8 calibration "
                             "agreeing with fp32 on >= 99.5%% of its images (deepres calibrate) and the CPU runs "
                             "int8 well, else bf16 where the CPU/GPU computes it natively, else fp32; BatchNorm "
                             "folded and channels_last either way); int8: CPU post-training quantization, needs "
                             "--calibration; eager: the model as it is, fp32")
    parser.add_argument("--calibration", nargs="+", metavar="IMAGE|DIR",
                        help="int8: images to calibrate on, real ones like those you classify (at most 256 used, "
                             "evenly spaced)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="what runs an fp32 path on the CPU (default auto: ONNX Runtime, the model exported "
                             f"once and cached in $DEEPRES_CACHE/onnx{', unless --compile' if compile else ''}; "
                             "torch: PyTorch/oneDNN)")


def parse_device(text: str | None) -> torch.device:
    """--device -> a torch device (default: cuda if available, else cpu); a ValueError naming the option."""
    try:
        return torch.device(text) if text else default_device()
    except RuntimeError as e:
        raise ValueError(f"--device {text!r}: {e}") from None


def predictor_from_args(args: argparse.Namespace, *, compile: bool = False, processes: int = 1) -> Predictor:
    """The Predictor add_model_options' options describe, with the compute threads of `processes` side by side
    within the available cores (--threads where the command has it)."""
    device = parse_device(args.device)
    if args.calibration is not None and args.precision != "int8":
        raise ValueError(f"--calibration is used by --precision int8 only, not --precision {args.precision}")
    if args.precision == "int8" and not args.calibration:
        raise ValueError("--precision int8 needs --calibration IMAGE|DIR (a few hundred real images)")
    missing = [p for p in args.calibration or [] if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"--calibration: no such file or folder: {', '.join(missing)}")
    if device.type == "cpu":
        limit_compute_threads(getattr(args, "threads", None), processes=processes)
    return init_model(args.model, args.checkpoint, device=device, precision=args.precision, compile=compile,
                      calibration=args.calibration, backend=args.backend)


def add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    """--batch-size, --amp and --set of the commands that evaluate a checkpoint on a dataset (eval, robustness)."""
    parser.add_argument("--batch-size", type=int, help="data.eval_batch_size")
    parser.add_argument("--amp", choices=("none", "auto", "bf16"), default="none",
                        help="autocast for evaluation: none = fp32, the reference numbers (default); auto = bf16 "
                             "where the machine computes it natively, else fp32; bf16 (emulated, slow, on a CPU "
                             "without AVX-512 BF16 / AMX)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any other config override, e.g. --set data.limit_val=1000")


def amp_of(args: argparse.Namespace, device: torch.device):
    """--amp resolved on `device` (core.device.resolve_amp); a note on stderr when bf16 would be emulated."""
    amp = resolve_amp(args.amp, device)
    if amp.emulated:
        print(f"note: --amp {amp.reason}", file=sys.stderr)
    return amp


def add_view_arguments(parser) -> None:
    """Segmentation test-time options (eval.* and data.test_size); --flip is shared with classification. `parser`
    is a parser (the options get their own group) or a group of one (they join it: argparse deprecates nesting)."""
    group = (parser.add_argument_group("segmentation test-time views (default: the checkpoint's eval.* settings)")
             if isinstance(parser, argparse.ArgumentParser) else parser)
    group.add_argument("--mode", choices=("whole", "slide"), help="eval.mode: the whole image, or sliding windows")
    group.add_argument("--crop", type=int, help="eval.crop: sliding-window side, pixels")
    group.add_argument("--stride", type=int, help="eval.stride: sliding-window step, pixels")
    group.add_argument("--scale-ratios", metavar="R1,R2,...", help="eval.scale_ratios: multi-scale factors "
                                                                   "(e.g. 0.5,0.75,1.0,1.25,1.5,1.75)")
    group.add_argument("--test-steps", type=int, help="eval.test_steps: ademxapp shift-and-stitch, k x k passes")
    group.add_argument("--test-size", type=int, help="data.test_size: resize the images' data.base_side to this")


def view_overrides(args: argparse.Namespace) -> list[str]:
    """The --set overrides the test-time view options stand for."""
    pairs = (("eval.mode", args.mode), ("eval.crop", args.crop), ("eval.stride", args.stride),
             ("eval.test_steps", args.test_steps), ("data.test_size", args.test_size),
             ("eval.scale_ratios", parse_ratios(args.scale_ratios) if args.scale_ratios else None),
             ("eval.flip", "true" if args.flip else None))
    return [f"{key}={value}" for key, value in pairs if value is not None]


def parse_ratios(text: str | None) -> list[float]:
    """--scale-ratios "0.5,1,1.5" -> [0.5, 1.0, 1.5]; a ValueError naming the option otherwise."""
    try:
        return [float(part) for part in (text or "").split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--scale-ratios {text}: give factors separated by commas, e.g. 0.5,1.0,1.5") from None


def parse_test_scales(text: str) -> list[int]:
    """--test-scales "224,256" -> [224, 256]; a ValueError naming the option for anything but sizes in
    1..MAX_TEST_SCALE pixels."""
    scales = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"--test-scales {text}: {part!r} is not a whole number of pixels")
        if not 1 <= int(part) <= MAX_TEST_SCALE:
            raise ValueError(f"--test-scales {text}: {part} is not a test size; give sizes of 1 to at most "
                             f"{MAX_TEST_SCALE} pixels")
        scales.append(int(part))
    return scales
