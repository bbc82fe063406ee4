"""`deepres study STUDY [--data PRESET] [--budget NAME] [--seeds 0,1] [--variants a,b] [--set k=v ...]
[--out DIR] [--parallel N] [--threads T] [--max-runs N] [--dry-run] [--report-only]`."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import yaml

from deepres.core.errors import TrainingInterrupted
from deepres.core.runs import METRICS_FILE

from deepres.studies.report import RunResult, read_run, text_table, write_report
from deepres.studies.runner import DIVERGED, FINISHED, run_state, run_study
from deepres.studies.spec import (DATA_PRESETS, PlannedRun, StudyConfig, common_overrides, default_study_dir, load_study,
                                  missing_files, plan_study, resolved_study_dict, with_selection)

STUDY_FILE = "study.yaml"  # the resolved study, in the study's output folder
REPORT_DIR = "report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="study YAML file, or a name under studies/ (e.g. block_variants)")
    parser.add_argument("--data", metavar="PRESET",
                        help=f"run every variant on this dataset: {', '.join(DATA_PRESETS)} (the dataset's image "
                             f"size, padding, mean/std); 'base' = the base recipe's data")
    parser.add_argument("--budget", metavar="NAME", help="one of the study's `budgets` (e.g. a short schedule for "
                                                         "CPU); 'base' = the base recipe's own schedule")
    parser.add_argument("--seeds", type=_int_list, metavar="0,1,...", help="seeds instead of the study's `seeds`")
    parser.add_argument("--variants", type=_name_list, metavar="A,B,...", help="run only these variants")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key in every run, e.g. --set data.root=$HOME/cifar (repeatable)")
    parser.add_argument("--out", metavar="DIR", help="the study's output folder (default: studies_out/<study name>); "
                                                     "runs go to DIR/<variant>/seed<k>/, the report to DIR/report/")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="train N runs at once, each in its own process with cores/N torch threads")
    parser.add_argument("--threads", type=int, metavar="T", help="torch threads per run (default: cores/N)")
    parser.add_argument("--max-runs", type=int, metavar="N",
                        help="train at most N unfinished runs in this call; a later call does the rest")
    parser.add_argument("--dry-run", action="store_true",
                        help="check every run's config and the files it reads (model.pretrained, train.kd_teacher, "
                             "train.kd_logits, data.root), list what would run, and exit 2 if a run would fail on a "
                             "missing file (marked MISSING)")
    parser.add_argument("--report-only", action="store_true", help="train nothing; write the report from the runs "
                                                                   "that exist")


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def run(args: argparse.Namespace) -> int:
    study = with_selection(load_study(args.study), data=args.data, budget=args.budget, seeds=args.seeds,
                           variants=args.variants)
    study_dir = Path(args.out) if args.out else default_study_dir(study)
    runs = plan_study(study, study_dir, args.overrides)  # every config is checked before anything trains
    if args.dry_run:
        return print_plan(study, study_dir, runs, args.overrides, run_state)
    if not args.report_only:
        write_resolved_study(study_dir, study, args.overrides)
        try:
            run_study(runs, parallel=args.parallel, threads=args.threads, max_runs=args.max_runs)
        except TrainingInterrupted as e:  # checkpoints/last of the run in progress is saved
            print(f"study stopped by {signal.Signals(e.signum).name}; the same command again resumes it")
            return e.exit_code
        except (FileNotFoundError, ValueError) as e:
            if "data.root" not in str(e):
                raise
            raise type(e)(f"{e} (or run the study on another dataset: --data {'|'.join(DATA_PRESETS)})") from None
    report = study.report
    summaries = write_report(study_dir / REPORT_DIR, collect_study_runs(runs, report.metric),
                             title=f"Study: {study.name or Path(study.path).stem}",
                             intro=study_intro(study, args.overrides), metric=report.metric,
                             columns=report.columns, best_epoch=report.best_epoch, band=report.band)
    print()
    print(text_table(summaries, report.metric, report.columns, report.best_epoch))
    print(f"\nreport: {study_dir / REPORT_DIR}/ (results.md, results.csv, runs.csv, curves.png, report.html); "
          f"errors after the last epoch, mean ± sample std (ddof=1) over seeds")
    return 0


def collect_study_runs(runs: list[PlannedRun], metric: str) -> dict:
    """{variant: [RunResult per seed]} in the study's order; runs never started count as 'not run'."""
    groups: dict[str, list] = {}
    for run in runs:
        if (run.run_dir / METRICS_FILE).is_file():
            result = read_run(run.run_dir, variant=run.variant, seed=run.seed, metric=metric)
        else:
            result = RunResult(run.variant, run.seed, run.run_dir, "not run", {}, None, None, None, 0, 0, 0.0,
                               ([], []), ([], []))
        groups.setdefault(run.variant, []).append(result)
    return groups


def study_intro(study: StudyConfig, cli_overrides: list[str]) -> list[str]:
    """The report's opening paragraphs: the question, and exactly how every run was configured."""
    out = [study.description.strip()] if study.description.strip() else []
    data = f"preset `{study.data}`" if study.data else "as in the base recipe"
    budget = f"`{study.budget}` ({_code(study.budgets[study.budget])})" if study.budget else "the base recipe's"
    setup = [f"Base recipe `{study.base}`", f"data: {data}", f"budget: {budget}", f"seeds {study.seeds}"]
    out.append("; ".join(setup) + ".")
    common = [*study.overrides, *study.set, *cli_overrides]
    if common:
        out.append(f"Every run also: {_code(common)}.")
    out.append("Variants: " + "; ".join(f"{name} = {_code(items) if items else 'the base recipe'}"
                                         for name, items in study.variants.items()) + ".")
    return out


def _code(items: list[str]) -> str:
    return ", ".join(f"`{i}`" for i in items)


def write_resolved_study(study_dir: Path, study: StudyConfig, cli_overrides: list[str]) -> Path:
    """study.yaml in the output folder; an earlier, different one is kept as study.previous<N>.yaml."""
    study_dir.mkdir(parents=True, exist_ok=True)
    path = study_dir / STUDY_FILE
    resolved = resolved_study_dict(study, cli_overrides)
    if path.is_file() and yaml.safe_load(path.read_text()) == resolved:
        return path  # the same study again (perhaps called through this very file): leave it as it is
    text = (f"# Resolved from {study.path} (selections and --set applied); "
            f"`deepres study {path} --out {study_dir}` continues it.\n"
            + yaml.safe_dump(resolved, sort_keys=False, width=120))
    if path.is_file():
        n = 1
        while (study_dir / f"study.previous{n}.yaml").exists():
            n += 1
        path.rename(study_dir / f"study.previous{n}.yaml")
    path.write_text(text)
    return path


def print_plan(study: StudyConfig, study_dir: Path, runs: list[PlannedRun], cli_overrides: list[str],
               run_state) -> int:
    """The dry run: every run with its state and overrides, and MISSING for each file a run still to train would
    not find; 2 (with one line on stderr) when any run would fail on one, else 0."""
    common = [*common_overrides(study), *study.set, *cli_overrides]
    print(f"study {study.path}: base {study.base}, {len(study.variants)} variants x {len(study.seeds)} seeds "
          f"= {len(runs)} runs in {study_dir}")
    print("every run: " + (" ".join(common) or "(no overrides)"))
    failing = 0
    for run in runs:
        own = " ".join(study.variants[run.variant]) or "(base)"
        state = run_state(run.run_dir)
        # a finished or diverged run is not trained again; another run of this study may make what this one reads
        made = tuple(other.run_dir for other in runs if other is not run)
        missing = [] if state in (FINISHED, DIVERGED) else missing_files(run.config, made)
        failing += bool(missing)
        print(f"  {state:<11} {run.variant}/seed{run.seed}: {own}" + "".join(f"  MISSING {m}" for m in missing))
    if failing:
        print(f"deepres study: error: {failing} of {len(runs)} runs would fail on a missing file (marked MISSING)",
              file=sys.stderr)
        return 2
    return 0
