"""`deepres compare RUN_DIR... [--out DIR [--force]] [--group-by-parent] [--metric top1|top5] [--band minmax|std]
[--best-epoch]`: the study report for any set of runs (variants grouped by deepres.studies.compare)."""
import argparse
from pathlib import Path

from deepres.core.runs import METRICS_FILE
from deepres.studies.compare import group_by_config, group_by_parent
from deepres.studies.report import COLUMNS, read_run, text_table, write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (each with metrics.jsonl)")
    parser.add_argument("--out", default="compare_out", metavar="DIR",
                        help="where results.md/.csv, runs.csv, curves.png and report.html go (default: compare_out)")
    parser.add_argument("--group-by-parent", action="store_true",
                        help="one variant per parent folder (e.g. studies_out/S/<variant>/seed<k>)")
    parser.add_argument("--metric", choices=("top1", "top5"), default="top1", help="error = 100 - this accuracy")
    parser.add_argument("--band", choices=("minmax", "std"), default="minmax",
                        help="shaded band around the seed mean: min-max or ± sample std")
    parser.add_argument("--best-epoch", action="store_true",
                        help="also show the best epoch's error (optimistic: selected on the test set)")
    parser.add_argument("--title", default="Comparison", help="report title")
    parser.add_argument("--force", action="store_true",
                        help="write into an existing --out directory (replacing only the report's files)")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is not a directory")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise ValueError(f"--out {out} is not empty; choose another directory or pass --force (which replaces "
                         "only the report's files)")
    dirs = [Path(d) for d in args.runs]
    for d in dirs:
        if not (d / METRICS_FILE).is_file():
            raise FileNotFoundError(f"{d}: not a run directory (no metrics.jsonl)")
    if len({d.resolve() for d in dirs}) != len(dirs):
        raise ValueError("the same run directory is listed twice")
    runs = [read_run(d, metric=args.metric) for d in dirs]
    names = group_by_parent(dirs) if args.group_by_parent else group_by_config([r.config for r in runs], dirs)
    groups: dict[str, list] = {}
    for name, result in zip(names, runs):
        result.variant = name
        groups.setdefault(name, []).append(result)
    for members in groups.values():
        members.sort(key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0, str(r.run_dir)))
    robustness = any(r.robustness for r in runs)  # its columns only where some run was measured
    columns = [c for c in COLUMNS if robustness or c not in ("corruption_error", "mce")]
    summaries = write_report(args.out, groups, title=args.title, metric=args.metric, columns=columns,
                             best_epoch=args.best_epoch, band=args.band,
                             intro=[f"{len(runs)} runs in {len(groups)} variants, grouped by "
                                    f"{'parent folder' if args.group_by_parent else 'config differences'}."])
    print(text_table(summaries, args.metric, columns, args.best_epoch))
    print(f"\nreport: {args.out}/ (results.md, results.csv, runs.csv, curves.png, report.html); errors after the "
          f"last epoch, mean ± sample std (ddof=1) over runs")
    return 0
