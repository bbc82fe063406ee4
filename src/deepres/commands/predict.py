"""`deepres predict IMAGE|DIR ... --model MODEL`: run a trained or published model on images; one line per image
(a classifier: path, top class, probability; a segmentation model: the classes covering most pixels), and with --out
the model's task's files (a classifier: every top-k prediction in a CSV file; a segmentation model: palette or
Cityscapes labelId PNGs and overlays), --cam DIR Grad-CAM overlays."""
import argparse
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from deepres.core.files import atomic_write
from deepres.inference.cam import cam_picture
from deepres.inference.predictor import Predictor
from deepres.inference.preprocess import at_test_size
from deepres.tasks import TASKS, PredictOptions
from deepres.tasks.segmentation import SegViews

from .options import add_model_options, add_view_arguments, parse_ratios, predictor_from_args

# every task's own `deepres predict` options: a model whose task does not read one refuses it
TASK_FLAGS = tuple(dict.fromkeys(flag for task in TASKS.values() for flag in task.predict_flags))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IMAGE|DIR",
                        help="image files and/or folders (every image below a folder, sorted, recursive)")
    add_model_options(parser)
    parser.add_argument("--top-k", type=int, default=5, help="classes kept per image (default 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--out", metavar="CSV|DIR", help="a classifier: write path, prediction and the top-k "
                                                         "classes/scores to this CSV file; a segmentation model: "
                                                         "this folder gets a PNG per image and an overlay JPEG")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    parser.add_argument("--skip-bad", action="store_true",
                        help="report undecodable images as failed and go on (default: stop at the first)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the precision path (compiles once per batch size; pays off on large "
                             "folders)")
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


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    missing = [p for p in args.inputs if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    model = predictor_from_args(args, compile=args.compile)
    task = model.task
    given = {flag: getattr(args, flag) for flag in TASK_FLAGS if getattr(args, flag) not in (None, False)}
    refused = [f"--{flag.replace('_', '-')}" for flag in given if flag not in task.predict_flags]
    if refused:
        raise ValueError(f"{', '.join(refused)}: not an option of {task.name} models; {args.model} is one")
    if args.cam_stage is not None and args.cam is None:
        raise ValueError("--cam-stage is used with --cam DIR only")
    if args.cam_stage is not None and args.cam_stage not in model.cam_stages:
        raise ValueError(f"--cam-stage {args.cam_stage!r}: the model's stages are {', '.join(model.cam_stages)}")
    if args.test_size is not None:  # as data.test_size: the base side to it, 0 = as stored
        base_side = model.config.data.base_side if model.config is not None else "longer"
        model.preprocess = at_test_size(model.preprocess, args.test_size, base_side)
    options = PredictOptions(top_k=args.top_k, probabilities=False, images=not args.no_overlay and bool(args.out),
                             views=SegViews(mode=args.mode or "whole", crop=args.crop or model.preprocess.resize,
                                            stride=args.stride or 0, scale_ratios=tuple(parse_ratios(args.scale_ratios)),
                                            flip=args.flip, test_steps=args.test_steps or 1))
    out = Path(args.out) if args.out else None
    writer = task.prediction_writer(out, options, force=args.force, class_names=model.class_names,
                                    config=model.config, **{flag: args_value for flag, args_value in given.items()})
    pp = model.preprocess
    size = (f"shorter side {pp.resize} -> centre {pp.crop_size} px" if pp.crop_size else
            "as stored, no crop" if pp.resize_side == "none" else f"{pp.resize_side} side {pp.resize} px, no crop")
    print(f"{args.model}: {task.name}, {len(model.class_names)} classes, {size} ({pp.interpolation}), "
          f"{pp.in_chans} channel(s)", file=sys.stderr)
    folders = any(Path(p).is_dir() for p in args.inputs)
    done, failed = [], 0
    # progress=None: tqdm shows its bar only when stderr is a terminal
    for result in model.iter_results(list(args.inputs), options, batch_size=args.batch_size, skip_bad=args.skip_bad,
                                     progress=None if folders else False):
        if result.get("failed"):
            failed += 1
            tqdm.write(f"{result['path']}\tFAILED\t{result['error']}", file=sys.stderr)
        else:
            tqdm.write(task.line(result))
            done.append(result.get("path"))
        writer.add(result)
    info = model.runner_info
    if info is not None:
        print(f"precision path: {info.dtype} on {info.device} ({', '.join(info.steps)}); largest logit difference "
              f"from fp32 on {info.check_batch} {info.max_abs_error:.3g}; why: {info.reason}", file=sys.stderr)
    elif done or failed:  # eager: no runner was built, but the line still says what ran
        print(f"precision path: eager fp32 on {model.device} (the model as it is); why: {model.plan.reason}",
              file=sys.stderr)
    wrote = writer.close()
    if wrote:
        print(wrote, file=sys.stderr)
    if args.cam is not None:
        write_cams(model, [path for path in done if path], Path(args.cam), args.cam_stage, args.batch_size)
    if failed:
        print(f"{failed} of {len(done) + failed} images could not be decoded (marked FAILED)", file=sys.stderr)
    return 0


def write_cams(model: Predictor, paths: list[str], folder: Path, stage: str | None, batch_size: int) -> None:
    """DIR/<stem>_cam.jpg for each image: its top class's Grad-CAM over the image the model saw, enlarged for viewing
    (cam_picture: a 28-px crop becomes a 280-px JPEG)."""
    stems: dict[str, str] = {}
    for path in paths:
        stem = Path(path).stem
        if stem in stems:
            raise ValueError(f"{path} and {stems[stem]} would both be written as {stem}_cam.jpg in --cam {folder}; "
                             f"predict them separately")
        stems[stem] = path
    folder.mkdir(parents=True, exist_ok=True)
    for result in model.cam(paths, stage=stage, batch_size=batch_size):
        picture = Image.fromarray(cam_picture(result["image"], result["cam"]))
        atomic_write(folder / f"{Path(result['path']).stem}_cam.jpg", lambda f: picture.save(f, format="JPEG",
                                                                                           quality=90))
    print(f"wrote {len(paths)} Grad-CAM overlays ({stage or model.cam_stages[-1]}) to {folder}", file=sys.stderr)
