"""`deepres compare RUN_DIR... [--out DIR [--force]] [--group-by-parent] [--metric top1|top5] [--band minmax|std]
[--best-epoch]`: the study report for any set of runs.

Runs are grouped into variants by their configs: runs whose config.yaml differ only in the seed (and in
bookkeeping: run.*, expect.*, eval batch size, data root, ...) form one variant, named by the keys that tell
the variants apart. --group-by-parent groups by the parent folder instead (a study's <variant>/seed<k>/).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from deepres.core.runs import METRICS_FILE
from deepres.core.config import RESUME_MAY_DIFFER

from .report import COLUMNS, print_table, read_run, write_report

# Keys that do not make two runs different variants
NOT_A_VARIANT = (*RESUME_MAY_DIFFER, "train.seed")
MAX_NAME_KEYS = 3  # a variant name lists at most this many differing keys


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
    print_table(summaries, args.metric, columns, args.best_epoch)
    print(f"\nreport: {args.out}/ (results.md, results.csv, runs.csv, curves.png, report.html); errors after the "
          f"last epoch, mean ± sample std (ddof=1) over runs")
    return 0


def group_by_parent(dirs: list[Path]) -> list[str]:
    """Each run's variant name: its parent folder's name."""
    return [d.resolve().parent.name for d in dirs]


def group_by_config(configs: list[dict], dirs: list[Path]) -> list[str]:
    """Each run's variant name: `key=value` for the config keys that differ between groups of runs."""
    flat = [_flatten(c) if c else {"run directory": str(d)} for c, d in zip(configs, dirs)]
    keys = [json.dumps(f, sort_keys=True, default=str) for f in flat]
    distinct = list(dict.fromkeys(keys))
    if len(distinct) == 1:
        name = (configs[0].get("run") or {}).get("name") or dirs[0].name
        return [str(name)] * len(dirs)
    first_of = {k: flat[keys.index(k)] for k in distinct}
    all_keys = list(dict.fromkeys(k for f in first_of.values() for k in f))
    differing = [k for k in all_keys if len({json.dumps(f.get(k), default=str) for f in first_of.values()}) > 1]
    names = {}
    for k in distinct:
        f = first_of[k]
        parts = [f"{key}={f.get(key, '(unset)')}" for key in differing[:MAX_NAME_KEYS]]
        more = f", +{len(differing) - MAX_NAME_KEYS} keys" if len(differing) > MAX_NAME_KEYS else ""
        names[k] = ", ".join(parts) + more
    if len(set(names.values())) < len(names):  # cut-off names collide: number them
        names = {k: f"{i + 1}: {v}" for i, (k, v) in enumerate(names.items())}
    return [names[k] for k in keys]


def _flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if any(dotted == k or dotted.startswith(k + ".") for k in NOT_A_VARIANT):
            continue
        if isinstance(value, dict):
            out.update(_flatten(value, dotted + "."))  # an empty mapping adds no key
        else:
            out[dotted] = value
    return out
