"""The inference commands:
- `deepres predict IMAGE|DIR ... --model MODEL`: classify images with a trained or published model; one line per
  image (path, top class, probability), optionally every top-k prediction in a CSV file;
- `deepres export CHECKPOINT --format onnx|torchscript|export` (deepres.inference.export);
- `deepres bench` (deepres.inference.bench)."""
import argparse
import csv
import io
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from deepres.core.checkpoint import resolve_checkpoint
from deepres.core.device import CPU_CLASSES, default_device, limit_compute_threads, load_warning, reexec_as_cpu_class
from deepres.core.files import atomic_write, atomic_write_text
from deepres.data.seg_labels import CITYSCAPES_CLASSES, cityscapes_train_to_label, palette_for, write_mask_png
from deepres.eval.cli import add_view_arguments, parse_ratios
from deepres.models import list_models
from deepres.tasks.build import load_model
from deepres.tasks.segmentation import SegViews

from .api import init_model
from .bench import (DEFAULT_CASES, DEFAULT_PATHS, PATHS, agreement_table, benchmark, checkpoint_agreement,
                    environment, markdown_table)
from .cam import overlay_cam
from .export import DEFAULT_TOLERANCE, FORMATS, export_model, preprocessing_metadata
from .fastpath import BACKENDS
from .predictor import Predictor
from .triton import export_triton


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
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
                        help="the fast path (default auto: int8 where the checkpoint stores an int8 calibration "
                             "agreeing with fp32 on >= 99.5%% of its images (deepres calibrate) and the CPU has "
                             "VNNI/AMX, else bf16 where the CPU/GPU computes it natively, else fp32; "
                             "BatchNorm folded and channels_last either way); int8: CPU post-training "
                             "quantization, needs --calibration; eager: the model as it is, fp32")
    parser.add_argument("--calibration", nargs="+", metavar="IMAGE|DIR",
                        help="int8: images to calibrate on, real ones like those you classify (at most 256 used, "
                             "evenly spaced)")
    add_backend_argument(parser)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the fast path (compiles once per batch size; pays off on large folders)")
    parser.add_argument("--cam", metavar="DIR",
                        help="also write a Grad-CAM overlay of each image's top class to DIR/<stem>_cam.jpg (the "
                             "resized and cropped image the model saw, the heat map blended in)")
    parser.add_argument("--cam-stage", metavar="NAME",
                        help="the stage Grad-CAM reads (default: the last, e.g. layer4; layer1..layer3 are finer)")
    seg = parser.add_argument_group("segmentation models (--out is then a folder: a palette PNG per image and an "
                                    "overlay JPEG)")
    seg.add_argument("--label-ids", action="store_true",
                     help="write Cityscapes labelId PNGs (what the official evaluator reads) instead of palette PNGs")
    seg.add_argument("--no-overlay", action="store_true", help="do not write <stem>_overlay.jpg")
    seg.add_argument("--flip", action="store_true", help="also average over the horizontally flipped image")
    add_view_arguments(seg)


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="what runs an fp32 path on the CPU (default auto: ONNX Runtime, the model exported "
                             "once and cached in $DEEPRES_CACHE/onnx, unless --compile; torch: PyTorch/oneDNN)")


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


def predict(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out) if args.out else None
    if out is not None and out.is_file() and not args.force:
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
    if device.type == "cpu":
        limit_compute_threads()
    model = init_model(args.model, args.checkpoint, device=device, fast=args.precision, compile=args.compile,
                       calibration=args.calibration, backend=args.backend)
    if model.is_segmentation:
        if args.cam is not None:
            raise ValueError(f"--cam: {args.model} is a segmentation model; Grad-CAM explains classifiers")
        return predict_segmentation(args, model, out)
    seg_options = [f"--{k.replace('_', '-')}" for k in ("label_ids", "no_overlay", "flip") if getattr(args, k)]
    seg_options += [f"--{k.replace('_', '-')}" for k in ("mode", "crop", "stride", "scale_ratios", "test_steps",
                                                          "test_size") if getattr(args, k) is not None]
    if seg_options:
        raise ValueError(f"{', '.join(seg_options)}: options of segmentation models; {args.model} is a classifier")
    if out is not None and out.is_dir():
        raise ValueError(f"--out {out} is a folder; a classifier's predictions go to a CSV file")
    if args.cam_stage is not None and args.cam is None:
        raise ValueError("--cam-stage is used with --cam DIR only")
    if args.cam_stage is not None and args.cam_stage not in model.cam_stages:
        raise ValueError(f"--cam-stage {args.cam_stage!r}: the model's stages are {', '.join(model.cam_stages)}")
    pp = model.preprocess
    print(f"{args.model}: {len(model.class_names)} classes, shorter side {pp.resize} -> centre {pp.crop_size} px "
          f"({pp.interpolation}), {pp.in_chans} channel(s)", file=sys.stderr)
    folders = any(Path(p).is_dir() for p in args.inputs)
    rows, failed = [], 0
    # progress=None: tqdm shows its bar only when stderr is a terminal
    for result in model.iter_predictions(list(args.inputs), top_k=args.top_k, batch_size=args.batch_size,
                                         skip_bad=args.skip_bad, progress=None if folders else False):
        if result.get("failed"):
            failed += 1
            tqdm.write(f"{result['path']}\tFAILED\t{result['error']}", file=sys.stderr)
        else:
            tqdm.write(f"{result['path']}\t{result['pred_class']}\t{result['pred_score']:.4f}")
        rows.append(csv_row(result, args.top_k))
    info = model.fast_info
    if info is not None:
        print(f"fast path: {info.dtype} on {info.device} ({', '.join(info.steps)}); largest logit difference from "
              f"fp32 on {info.check_batch} {info.max_abs_error:.3g}; why: {info.reason}", file=sys.stderr)
    if out is not None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(csv_header(args.top_k))
        writer.writerows(rows)
        atomic_write_text(out, buffer.getvalue())
        print(f"wrote {len(rows)} predictions to {out}", file=sys.stderr)
    if args.cam is not None:
        write_cams(model, [r[0] for r in rows if not r[-1]], Path(args.cam), args.cam_stage, args.batch_size)
    if failed:
        print(f"{failed} of {len(rows)} images could not be decoded (marked FAILED)", file=sys.stderr)
    return 0


def write_cams(model: Predictor, paths: list[str], folder: Path, stage: str | None, batch_size: int) -> None:
    """DIR/<stem>_cam.jpg for each image: its top class's Grad-CAM over the image the model saw."""
    stems: dict[str, str] = {}
    for path in paths:
        stem = Path(path).stem
        if stem in stems:
            raise ValueError(f"{path} and {stems[stem]} would both be written as {stem}_cam.jpg in --cam {folder}; "
                             f"predict them separately")
        stems[stem] = path
    folder.mkdir(parents=True, exist_ok=True)
    for result in model.cam(paths, stage=stage, batch_size=batch_size):
        picture = Image.fromarray(overlay_cam(result["image"], result["cam"]))
        atomic_write(folder / f"{Path(result['path']).stem}_cam.jpg", lambda f: picture.save(f, format="JPEG",
                                                                                           quality=90))
    print(f"wrote {len(paths)} Grad-CAM overlays ({stage or model.cam_stages[-1]}) to {folder}", file=sys.stderr)


def predict_segmentation(args: argparse.Namespace, model: Predictor, out: Path | None) -> int:
    """`deepres predict` for a segmentation model: per image the classes covering most pixels; with --out DIR a
    palette PNG of the class map (or Cityscapes labelIds), and an overlay JPEG, named after the image."""
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise ValueError(f"--out {out} exists and is not an empty folder; choose another or pass --force")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    names = model.class_names
    dataset = model.config.data.name if model.config is not None else ""
    if args.label_ids and len(names) != len(CITYSCAPES_CLASSES):
        raise ValueError(f"--label-ids writes Cityscapes labelIds: the model has {len(names)} classes, not the 19 "
                         f"Cityscapes train classes")
    palette = palette_for(dataset or ("cityscapes" if args.label_ids else "voc"), len(names))
    views = SegViews(mode=args.mode or "whole", crop=args.crop or model.preprocess.resize, stride=args.stride or 0,
                     scale_ratios=tuple(parse_ratios(args.scale_ratios)), flip=args.flip,
                     test_steps=args.test_steps or 1)
    if args.test_size is not None:
        model.preprocess = replace(model.preprocess, resize=args.test_size)
    folders = any(Path(p).is_dir() for p in args.inputs)
    written: dict[str, str] = {}
    failed = 0
    for result in model.iter_segmentations(list(args.inputs), views=views, probabilities=False,
                                           images=not args.no_overlay, skip_bad=args.skip_bad,
                                           progress=None if folders else False):
        path = result.get("path", "")
        if result.get("failed"):
            failed += 1
            tqdm.write(f"{path}\tFAILED\t{result['error']}", file=sys.stderr)
            continue
        shares = sorted(result["class_shares"].items(), key=lambda kv: -kv[1])[:3]
        tqdm.write(f"{path}\t" + "  ".join(f"{name} {share:.1%}" for name, share in shares))
        if out is None:
            continue
        stem = Path(path).stem
        if stem in written:
            raise ValueError(f"{path} and {written[stem]} would both be written as {stem}.png in --out {out}; "
                             f"predict them into separate folders")
        written[stem] = path
        class_map = result["class_map"]
        if args.label_ids:
            write_mask_png(out / f"{stem}.png", cityscapes_train_to_label(class_map.numpy()), palette)
        else:
            write_mask_png(out / f"{stem}.png", class_map, palette)
        if not args.no_overlay:
            write_overlay(out / f"{stem}_overlay.jpg", result["image"], class_map, palette)
    if out is not None:
        kind = "Cityscapes labelId" if args.label_ids else "palette"
        print(f"wrote {len(written)} {kind} PNGs{'' if args.no_overlay else ' and overlays'} to {out}",
              file=sys.stderr)
    if failed:
        print(f"{failed} images could not be decoded (marked FAILED)", file=sys.stderr)
    return 0


def write_overlay(path: Path, image: torch.Tensor, class_map: torch.Tensor, palette, alpha: float = 0.5) -> None:
    """The image with its class map's colours blended in (`alpha` of the colour), as a JPEG."""
    image = image.float().expand(3, -1, -1) if image.shape[0] == 1 else image.float()
    colours = torch.as_tensor(palette, dtype=torch.float32)[class_map.long()].permute(2, 0, 1)
    blended = (image * (1 - alpha) + colours * alpha).round().clamp(0, 255).to(torch.uint8)
    picture = Image.fromarray(blended.permute(1, 2, 0).numpy())
    atomic_write(path, lambda f: picture.save(f, format="JPEG", quality=90))


# ------------------------------------------------------------------------------------- deepres export


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
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


def export(args: argparse.Namespace) -> int:
    triton_only = [option for option, given in (("--name", args.name is not None), ("--max-batch",
                   args.max_batch != 32), ("--max-wait-ms", args.max_wait_ms != 5.0)) if given]
    if triton_only and args.format != "triton":
        raise ValueError(f"{', '.join(triton_only)}: options of --format triton, not --format {args.format}")
    loaded = load_model(args.model, args.checkpoint) if args.model else load_model(args.checkpoint)
    if args.format == "triton":
        result = export_triton(loaded, Path(args.out or "model_repository"), name=args.name, max_batch=args.max_batch,
                               max_wait_ms=args.max_wait_ms, force=args.force, opset=args.opset,
                               exporter=args.exporter, tolerance=args.tolerance)
        print(f"wrote the Triton model {result['model_dir']} (config.pbtxt, 1/model.onnx); max abs logit error vs "
              f"PyTorch {result['max_abs_error']:.3g}")
        return 0
    metadata = preprocessing_metadata(loaded)
    out = Path(args.out) if args.out else default_output(args.checkpoint, args.format)
    result = export_model(loaded.model, out, format=args.format, metadata=metadata, opset=args.opset,
                          exporter=args.exporter, force=args.force, tolerance=args.tolerance)
    c, h, w = metadata["input_size"]
    print(f"wrote {result['path']} ({metadata['model']}, input [batch, {c}, {h}, {w}], {args.format}); max abs "
          f"logit error vs PyTorch {result['max_abs_error']:.3g} on batches "
          f"{', '.join(map(str, result['errors']))}")
    return 0


# -------------------------------------------------------------------------------------- deepres bench


def parse_case(text: str) -> tuple[str, int, int]:
    parts = text.split(":")
    try:
        name, size, batch = parts[0], int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        raise ValueError(f"--case {text!r}: expected MODEL:SIZE:BATCH, e.g. resnet50:224:16") from None
    if name not in list_models():
        raise ValueError(f"--case {text!r}: unknown model {name!r} (see `deepres models`)")
    if size < 1 or batch < 1:
        raise ValueError(f"--case {text!r}: size and batch must be positive")
    return name, size, batch


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--case", action="append", metavar="MODEL:SIZE:BATCH",
                        help="a case to time, repeatable (default: resnet50:224:1, resnet50:224:16, resnet20:32:1, "
                             "resnet20:32:128); `none`: only --agreement-checkpoint")
    parser.add_argument("--paths", default=",".join(DEFAULT_PATHS),
                        help=f"comma-separated paths from {', '.join(PATHS)} (default: %(default)s)")
    parser.add_argument("--compile", action="store_true", help="also time fp32_compile and bf16_compile "
                        "(torch.compile, inductor with freezing; compile time reported apart)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default 2)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time each path and batch for about this long, s "
                        "(default 2)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time every path and batch of the --case models in this many interleaved rounds of "
                             "--seconds each, the median over all of them reported: a machine whose speed drifts "
                             "then slows every path alike (default 1; the --agreement-checkpoint timing is one "
                             "pass per path)")
    parser.add_argument("--min-iterations", type=int, default=5, help="timed calls at least (default 5)")
    parser.add_argument("--max-iterations", type=int, default=200, help="timed calls at most (default 200)")
    parser.add_argument("--agreement-images", type=int, default=32,
                        help="random images per model for the agreement column, rounded up to a multiple of the "
                             "model's largest batch (default 32)")
    parser.add_argument("--agreement-checkpoint", metavar="RUN_DIR",
                        help="also measure top-1 and agreement of each path on the test set of this trained model")
    parser.add_argument("--agreement-limit", type=int, default=0, metavar="N",
                        help="use only the first N test images for --agreement-checkpoint (default 0: all)")
    parser.add_argument("--checkpoint-batch", type=int, default=0, metavar="N",
                        help="also time each path on --agreement-checkpoint's model with batches of N real test "
                             "images, plus `default` (what predict runs for it: int8 from its stored calibration "
                             "where that clears the bar); 0 = no timing (default)")
    parser.add_argument("--threads", type=int, help="torch (and ONNX Runtime) intra-op threads (default: torch's; "
                                                    "at most the available cores)")
    parser.add_argument("--isa", choices=CPU_CLASSES,
                        help="run as a CPU of this class would: torch's kernels (oneDNN, ATen, inductor, fbgemm, "
                             "MKL) and deepres's choice rules restricted to it; ONNX Runtime keeps the real CPU's")
    parser.add_argument("--out", metavar="FILE", help="write the rows and environment as JSON here")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def bench(args: argparse.Namespace) -> int:
    reexec_as_cpu_class(args.isa)  # a new process: torch reads the restriction when it loads
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.force:
        raise ValueError(f"--out {out} already exists; choose another file or pass --force")
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    for name in ("fp32", "bf16") if args.compile else ():  # each compiled path right after its eager one
        if f"{name}_compile" not in paths:
            paths.insert(paths.index(name) + 1 if name in paths else len(paths), f"{name}_compile")
    if args.checkpoint_batch < 0:
        raise ValueError("--checkpoint-batch must be >= 0")
    if args.case == ["none"]:
        if not args.agreement_checkpoint:
            raise ValueError("--case none leaves nothing to measure without --agreement-checkpoint")
        cases = []
    else:
        cases = [parse_case(c) for c in args.case] if args.case else list(DEFAULT_CASES)
    limit_compute_threads(args.threads)  # never more threads than this process may use (core.device)
    for name in ("warmup", "min_iterations", "max_iterations", "agreement_images", "rounds"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'warmup' else '>= 1'}")
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731  progress to stderr, table to stdout
    started = time.perf_counter()
    rows = benchmark(cases, paths, warmup=args.warmup, seconds=args.seconds, min_iterations=args.min_iterations,
                     max_iterations=args.max_iterations, agreement_images=args.agreement_images, rounds=args.rounds,
                     log=log)
    checkpoint_paths = (["default", *paths] if args.checkpoint_batch else paths)
    results = (checkpoint_agreement(args.agreement_checkpoint, checkpoint_paths, limit=args.agreement_limit,
                                    timing_batch=args.checkpoint_batch, seconds=args.seconds, log=log)
               if args.agreement_checkpoint else [])
    env = environment()
    warning = load_warning()
    if warning:
        print(warning)
    print(f"CPU inference, {env.get('cpu', '?')}, class {env['cpu_class']} (ISA flags: "
          f"{', '.join(env['isa']) or 'none'}), {env['threads']} "
          f"threads, torch {env['torch']}, onnxruntime {env.get('onnxruntime', '-')}; warm-up {args.warmup} calls "
          f"excluded")
    if rows:
        print(f"Random weights, {args.rounds} interleaved round(s) of about {args.seconds:g} s per path and batch; "
              f"agreement = top-1 agreement with eager fp32 on random images")
        print(markdown_table(rows))
    if results:
        print(f"\nOn real data: {results[0]['model']} {results[0]['checkpoint']}, test set")
        print(agreement_table(results))
    if out is not None:
        report = {"environment": env, "command": " ".join(sys.argv), "seconds": time.perf_counter() - started,
                  "rows": [asdict(r) for r in rows], "checkpoint_agreement": results}
        out.write_text(json.dumps(report, indent=2))
        print(f"wrote {out}")
    return 0


# The commands this module serves (deepres.cli): name -> (add its arguments, run it)
COMMANDS = {"predict": (add_predict_arguments, predict), "export": (add_export_arguments, export),
            "bench": (add_bench_arguments, bench)}
