"""`deepres export CHECKPOINT --format onnx|torchscript|export|triton`: a checkpoint as a file another runtime loads,
checked against PyTorch (deepres.inference.export, deepres.inference.triton)."""
import argparse
from pathlib import Path

from deepres.core.checkpoint import resolve_checkpoint
from deepres.inference.export import DEFAULT_TOLERANCE, FORMATS, export_model, preprocessing_metadata
from deepres.inference.triton import export_triton
from deepres.tasks.build import load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a deepres run directory or .safetensors checkpoint (config inside), "
                                           "published weights arch.tag, or any .pth/.safetensors state dict "
                                           "together with --model")
    parser.add_argument("--format", choices=(*FORMATS, "triton"), default="onnx",
                        help="onnx (dynamic batch, checked with ONNX Runtime), torchscript (torch.jit.trace), "
                             "export (torch.export .pt2), or triton (a Triton Inference Server model repository: "
                             "--out DIR gets <name>/config.pbtxt and <name>/1/model.onnx)")
    parser.add_argument("--out", metavar="FILE|DIR", help="output file, or the model repository folder for triton "
                                                          "(default: the checkpoint's name with the format's "
                                                          "suffix, beside it; triton: model_repository)")
    parser.add_argument("--model", help="registered model name (needed for checkpoints without a deepres config)")
    parser.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    parser.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo",
                        help="ONNX exporter: dynamo (torch.export-based, the default of torch 2.9+) or legacy "
                             "(TorchScript-based, deprecated)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="max |exported - PyTorch| logit error allowed, times max(1, largest |logit|)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file (triton: model "
                                                             "folder)")
    triton = parser.add_argument_group("--format triton")
    triton.add_argument("--name", help="the model's name in the repository (default: the architecture, e.g. resnet50)")
    triton.add_argument("--max-batch", type=int, default=32, help="config.pbtxt max_batch_size (default 32)")
    triton.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="dynamic batching: longest a request waits for batch mates, ms (default 5)")


def default_output(checkpoint: str, format: str) -> Path:
    """Beside the checkpoint file (a run directory's best/last weights), named after it: best.onnx, ..."""
    path = Path(checkpoint)
    if not path.exists():  # published weights or a model name: the current directory
        return Path(checkpoint.replace("/", "_") + FORMATS[format])
    path = resolve_checkpoint(checkpoint)
    return path.with_name(path.name.split(".")[0] + FORMATS[format])


def run(args: argparse.Namespace) -> int:
    triton_only = [option for option, given in (("--name", args.name is not None), ("--max-batch",
                   args.max_batch != 32), ("--max-wait-ms", args.max_wait_ms != 5.0)) if given]
    if triton_only and args.format != "triton":
        raise ValueError(f"{', '.join(triton_only)}: options of --format triton, not --format {args.format}")
    loaded = load_model(args.model, args.checkpoint) if args.model else load_model(args.checkpoint)
    if args.format == "triton":
        result = export_triton(loaded, Path(args.out or "model_repository"), name=args.name, max_batch=args.max_batch,
                               max_wait_ms=args.max_wait_ms, force=args.force, opset=args.opset,
                               exporter=args.exporter, tolerance=args.tolerance)
        print(f"wrote the Triton model {result['model_dir']} (config.pbtxt, labels.txt, 1/model.onnx); max abs logit "
              f"error vs PyTorch {result['max_abs_error']:.3g}")
        return 0
    metadata = preprocessing_metadata(loaded)
    out = Path(args.out) if args.out else default_output(args.checkpoint, args.format)
    result = export_model(loaded.model, out, format=args.format, metadata=metadata, opset=args.opset,
                          exporter=args.exporter, force=args.force, tolerance=args.tolerance)
    c, h, w = metadata["input_size"]
    size = f"[batch, {c}, H, W] (any height and width)" if result.get("dynamic_size") else f"[batch, {c}, {h}, {w}]"
    print(f"wrote {result['path']} ({metadata['model']}, input {size}, {args.format}); max abs "
          f"logit error vs PyTorch {result['max_abs_error']:.3g} on batches "
          f"{', '.join(map(str, result['errors']))}")
    return 0
