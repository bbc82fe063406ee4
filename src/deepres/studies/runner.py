"""Run a planned study: every (variant, seed) is an ordinary `fit` in its own run directory.

A run's state is read from its files, so a study can be stopped at any point and started again:
finished (metrics.jsonl reaches the configured length) runs are skipped, interrupted ones (a checkpoint
`last` exists) resume exactly, and runs that diverged (diverged.json, written when fit stops on non-finite
losses) are reported, not retried. Several runs can share one machine (`parallel`): each gets its own
spawned process and cores // parallel torch threads.
"""
from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml

from deepres.core.runs import CONFIG_FILE, METRICS_FILE, lock_run_dir, read_metrics
from deepres.core.checkpoint import checkpoint_paths
from deepres.core.errors import NonFiniteLossError
from deepres.core.files import atomic_write_text
from deepres.core.config import RESUME_MAY_DIFFER, Config, config_diff, config_from_dict, config_to_dict

from deepres.train import fit

from .spec import PlannedRun

DIVERGED_FILE = "diverged.json"  # written by the study when fit stops on non-finite losses

# Run states, read from a run directory
NEW, FINISHED, INTERRUPTED, INCOMPLETE, DIVERGED = "new", "finished", "interrupted", "incomplete", "diverged"


@dataclass
class RunOutcome:
    variant: str
    seed: int
    run_dir: Path
    before: str  # state found when the study started (NEW, FINISHED, INTERRUPTED, INCOMPLETE, DIVERGED)
    after: str  # FINISHED, DIVERGED, or the state it was left in (not run: --max-runs, or a failure elsewhere)


# ------------------------------------------------------------------------------------------- run states


def run_state(run_dir: str | os.PathLike) -> str:
    """NEW, FINISHED, INTERRUPTED (a checkpoint to resume from), INCOMPLETE (files, no checkpoint) or DIVERGED."""
    run_dir = Path(run_dir)
    if (run_dir / DIVERGED_FILE).is_file():
        return DIVERGED
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return NEW
    if run_finished(run_dir):
        return FINISHED
    if all(p.is_file() for p in checkpoint_paths(run_dir / "checkpoints", "last")):
        return INTERRUPTED
    return INCOMPLETE


def run_finished(run_dir: str | os.PathLike) -> bool:
    """Whether metrics.jsonl reaches the length config.yaml asks for (train.max_iters steps, else epochs)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / METRICS_FILE).is_file():
        return False
    train = (yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}).get("train", {})
    return reached_length(train, read_metrics(run_dir)[1])


def reached_length(train: dict, epochs: list[dict]) -> bool:
    """Whether the epoch records reach the length a run config's `train` block asks for."""
    if not epochs:
        return False
    last = epochs[-1]
    if train.get("max_iters", 0) > 0:
        return int(last.get("step", 0)) >= train["max_iters"]
    return int(last["epoch"]) >= int(train.get("epochs", 0))


def check_same_settings(run: PlannedRun) -> None:
    """Refuse a run directory whose stored config differs from the planned one in anything that matters."""
    path = run.run_dir / CONFIG_FILE
    if not path.is_file():
        return
    # Through the schema: keys added to deepres since the run was made take their defaults, as on --resume
    saved = config_to_dict(config_from_dict(yaml.safe_load(path.read_text()) or {}))
    planned = config_to_dict(run.config)
    diffs = [(k, a, b) for k, a, b in config_diff(saved, planned, ignore=RESUME_MAY_DIFFER)
             # num_classes / in_chans 0 = "from the data": the stored config holds the resolved number
             if not (k in ("model.num_classes", "model.in_chans") and b == 0)]
    if diffs:
        listed = "; ".join(f"{k}: stored {a!r}, now {b!r}" for k, a, b in diffs[:6])
        more = f" (and {len(diffs) - 6} more)" if len(diffs) > 6 else ""
        raise ValueError(f"{run.run_dir} holds a run made with other settings ({listed}{more}); results made "
                         f"with different settings are never mixed: choose another --out, or delete that run "
                         f"folder to redo it")


# -------------------------------------------------------------------------------------------------- run


def run_study(runs: list[PlannedRun], *, parallel: int = 1, threads: int | None = None,
              max_runs: int | None = None, log: Callable[[str], None] = print) -> list[RunOutcome]:
    """Train every run that is not finished (at most `max_runs` of them); returns each run's outcome."""
    if parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {parallel}")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if max_runs is not None and max_runs < 0:
        raise ValueError(f"--max-runs must be >= 0, got {max_runs}")
    outcomes = []
    for run in runs:
        before = run_state(run.run_dir)
        if before in (FINISHED, INTERRUPTED, DIVERGED):
            check_same_settings(run)  # before anything trains: a wrong --out fails at once
        outcomes.append(RunOutcome(run.variant, run.seed, run.run_dir, before, before))
    todo = [(run, out) for run, out in zip(runs, outcomes) if out.before in (NEW, INTERRUPTED, INCOMPLETE)]
    for out in outcomes:
        if out.before == FINISHED:
            log(f"[{out.variant}/seed{out.seed}] finished earlier: skipped")
        elif out.before == DIVERGED:
            log(f"[{out.variant}/seed{out.seed}] diverged earlier (see {out.run_dir / DIVERGED_FILE}; delete the "
                f"run folder to retry): skipped")
    if max_runs is not None and len(todo) > max_runs:
        log(f"--max-runs {max_runs}: {len(todo) - max_runs} of {len(todo)} runs left for a later call")
        todo = todo[:max_runs]
    for run, out in todo:
        if out.before == INCOMPLETE:
            moved = _set_aside(run.run_dir)
            log(f"[{run.variant}/seed{run.seed}] stopped before its first checkpoint: its files were moved to "
                f"{moved}; starting it again")
    if parallel == 1 or len(todo) <= 1:
        _run_in_process(todo, threads, log)
    else:
        _run_in_pool(todo, parallel, threads or max(1, _cpu_count() // parallel), log)
    return outcomes


def _run_in_process(todo, threads: int | None, log) -> None:
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for run, out in todo:
            label = f"[{run.variant}/seed{run.seed}]"
            resume = out.before == INTERRUPTED
            log(f"{label} {'resuming' if resume else 'training'} in {run.run_dir}")
            out.after = _train(run.config, resume, lambda line, label=label: log(f"{label} {line}"))
    finally:
        torch.set_num_threads(previous)


def _run_in_pool(todo, parallel: int, threads: int, log) -> None:
    log(f"running {len(todo)} runs, {parallel} at a time, {threads} torch thread(s) each")
    context = multiprocessing.get_context("spawn")  # no forked torch state; works the same on every OS
    with concurrent.futures.ProcessPoolExecutor(parallel, mp_context=context, initializer=_init_worker,
                                                initargs=(threads,)) as pool:
        futures = {}
        for run, out in todo:
            label = f"[{run.variant}/seed{run.seed}]"
            resume = out.before == INTERRUPTED
            log(f"{label} {'resuming' if resume else 'training'} in {run.run_dir}")
            futures[pool.submit(_train_in_worker, run.config, resume, label)] = out
        try:
            for future in concurrent.futures.as_completed(futures):
                futures[future].after = future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # runs already going finish; they stay resumable
            raise


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _train_in_worker(cfg: Config, resume: bool, label: str) -> str:
    return _train(cfg, resume, lambda line: print(f"{label} {line}", flush=True))


def _train(cfg: Config, resume: bool, log) -> str:
    """fit one run; a stop on non-finite losses is a result (DIVERGED, recorded in diverged.json), not a crash."""
    try:
        result = fit(cfg, resume=resume, log=log)
    except NonFiniteLossError as e:
        run_dir = Path(cfg.run.out_dir) / cfg.run.name
        atomic_write_text(run_dir / DIVERGED_FILE, json.dumps({"error": str(e)}, indent=2) + "\n")
        log(f"diverged: {e}")
        return DIVERGED
    return FINISHED if result["finished"] else INTERRUPTED


def _set_aside(run_dir: Path) -> Path:
    """Move a run that stopped before its first checkpoint to RUN_DIR.incompleteN; FileExistsError naming the holder
    while another process trains in it (a second study process on the same folder)."""
    with lock_run_dir(run_dir):
        n = 1
        while (target := run_dir.with_name(f"{run_dir.name}.incomplete{n}")).exists():
            n += 1
        run_dir.rename(target)
    return target


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
