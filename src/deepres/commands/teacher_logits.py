"""`deepres teacher-logits TEACHER RECIPE --out FILE`: store a teacher's logits on every training image of a recipe,
for offline distillation (train.kd_logits; deepres.train.distill)."""
import argparse
from pathlib import Path

from deepres.core.config import load_config
from deepres.train.distill import compute_teacher_logits, write_teacher_logits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("teacher", help="the teacher: a run directory, deepres checkpoint or published arch.tag")
    parser.add_argument("recipe", help="the student's recipe (its data section names the training images)")
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the logits (.safetensors)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key of the recipe, e.g. --set data.root=DIR (repeatable)")
    parser.add_argument("--device", default="cpu", help="torch device for the teacher (default cpu)")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.recipe, args.overrides)
    if Path(args.out).exists():  # before the work, not after
        raise FileExistsError(f"{args.out} exists; remove it or choose another --out")
    logits, classes = compute_teacher_logits(args.teacher, cfg, device=args.device)
    write_teacher_logits(args.out, logits, classes, teacher=args.teacher, cfg=cfg)
    print(f"wrote {args.out}: {len(logits)} training images x {len(classes)} classes "
          f"(train with --set train.kd_logits={args.out})")
    return 0
