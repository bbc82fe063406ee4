"""`deepres predict IMAGE|DIR ... --model MODEL`: classify images with a trained or published model; prints one
line per image (path, top class, probability) and optionally writes every top-k prediction to a CSV file."""
import argparse
import csv
import io
import sys
from pathlib import Path

import torch
from tqdm import tqdm


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IMAGE|DIR",
                        help="image files and/or folders (every image below a folder, sorted, recursive)")
    parser.add_argument("--model", required=True,
                        help="a deepres run directory or .safetensors checkpoint, published weights arch.tag "
                             "(e.g. resnet50.tv_in1k), a registered model name (with --checkpoint), or a recipe")
    parser.add_argument("--checkpoint", help="a .pth/.safetensors state dict for the --model architecture")
    parser.add_argument("--top-k", type=int, default=5, help="classes kept per image (default 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--out", metavar="CSV", help="write path, prediction and the top-k classes/scores here")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    parser.add_argument("--skip-bad", action="store_true",
                        help="report undecodable images as failed and go on (default: stop at the first)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32", "int8", "eager"],
                        help="the fast path (default auto: bf16 where the CPU/GPU computes it natively, else fp32; "
                             "BatchNorm folded and channels_last either way); int8: CPU post-training "
                             "quantization, needs --calibration; eager: the model as it is, fp32")
    parser.add_argument("--calibration", nargs="+", metavar="IMAGE|DIR",
                        help="int8: images to calibrate on, real ones like those you classify (at most 256 used, "
                             "evenly spaced)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the fast path (compiles once per batch size; pays off on large folders)")


def csv_header(top_k: int) -> list[str]:
    ranks = [f"top{rank}_{field}" for rank in range(1, top_k + 1) for field in ("label", "class", "score")]
    return ["path", "pred_label", "pred_class", "pred_score", *ranks, "error"]


def csv_row(result: dict, top_k: int) -> list:
    if result.get("failed"):
        return [result["path"], *[""] * (3 + 3 * top_k), result["error"]]
    ranks = []
    for rank in range(top_k):
        if rank < len(result["top_k_labels"]):
            score = result["top_k_scores"][rank]
            ranks += [result["top_k_labels"][rank], result["top_k_classes"][rank], f"{score:.6f}"]
        else:  # fewer classes than --top-k
            ranks += ["", "", ""]
    return [result["path"], result["pred_label"], result["pred_class"], f"{result['pred_score']:.6f}", *ranks, ""]


def run(args: argparse.Namespace) -> int:
    from deepres.inference import init_model, iter_predictions
    from deepres.train.checkpoint import atomic_write_text
    from deepres.train.loop import default_device

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.force:
        raise ValueError(f"--out {out} already exists; choose another file or pass --force")
    missing = [p for p in args.inputs if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")

    try:
        device = torch.device(args.device) if args.device else default_device()
    except RuntimeError as e:
        raise ValueError(f"--device {args.device!r}: {e}") from None
    if args.calibration is not None and args.precision != "int8":
        raise ValueError(f"--calibration is used by --precision int8 only, not --precision {args.precision}")
    if args.precision == "int8" and not args.calibration:
        raise ValueError("--precision int8 needs --calibration IMAGE|DIR (a few hundred real images)")
    missing = [p for p in args.calibration or [] if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"--calibration: no such file or folder: {', '.join(missing)}")
    model = init_model(args.model, args.checkpoint, device=device, fast=args.precision, compile=args.compile,
                       calibration=args.calibration)
    pp = model.preprocess
    print(f"{args.model}: {len(model.class_names)} classes, shorter side {pp.resize} -> centre {pp.crop_size} px "
          f"({pp.interpolation}), {pp.in_chans} channel(s)", file=sys.stderr)
    folders = any(Path(p).is_dir() for p in args.inputs)
    rows, failed = [], 0
    # progress=None: tqdm shows its bar only when stderr is a terminal
    for result in iter_predictions(model, list(args.inputs), top_k=args.top_k, batch_size=args.batch_size,
                                   skip_bad=args.skip_bad, progress=None if folders else False):
        if result.get("failed"):
            failed += 1
            tqdm.write(f"{result['path']}\tFAILED\t{result['error']}", file=sys.stderr)
        else:
            tqdm.write(f"{result['path']}\t{result['pred_class']}\t{result['pred_score']:.4f}")
        rows.append(csv_row(result, args.top_k))
    info = model.fast_path.info if model.fast_path is not None else None
    if info is not None:
        print(f"fast path: {info.dtype} on {info.device} ({', '.join(info.steps)}); largest logit difference from "
              f"fp32 on {info.check_batch} {info.max_abs_error:.3g}", file=sys.stderr)
    if out is not None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(csv_header(args.top_k))
        writer.writerows(rows)
        atomic_write_text(out, buffer.getvalue())
        print(f"wrote {len(rows)} predictions to {out}", file=sys.stderr)
    if failed:
        print(f"{failed} of {len(rows)} images could not be decoded (marked FAILED)", file=sys.stderr)
    return 0
