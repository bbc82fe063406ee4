"""Study reports: results.csv / results.md (one row per variant), runs.csv (one row per run), curves.png and a
self-contained report.html, from the run directories alone (config.yaml, metrics.jsonl, env.json).

The number reported for a run is its test error after the LAST epoch. Across the runs of a variant: mean,
sample standard deviation (ddof=1; "–" for a single run), min and max, and every run's own value: no run is
ever selected. The best epoch's error is available only as an extra column labelled optimistic, because that
epoch is chosen by looking at the test set.
"""
from __future__ import annotations

import base64
import csv
import dataclasses
import datetime
import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from deepres.core.config import DataConfig
from deepres.data import list_formats, stored_side
from deepres.core.plots import ema_smooth, epoch_ends, save_panels
from deepres.core.runs import CONFIG_FILE, read_metrics
from deepres.models.complexity import model_complexity

from .runner import DIVERGED_FILE, reached_length
from .spec import COLUMNS

DASH = "–"
METRIC_NAMES = {"top1": "top-1", "top5": "top-5", "miou": "mIoU"}  # error = 100 - the metric (%)


@dataclass
class RunResult:
    variant: str
    seed: int | None
    run_dir: Path
    status: str  # finished | unfinished | diverged
    config: dict
    final_error: float | None  # % after the last evaluated epoch
    best_error: float | None  # % at the best epoch (optimistic)
    best_epoch: int | None
    epochs: int  # epochs completed
    steps: int  # optimizer steps taken
    train_time_s: float  # sum of epoch_time_s (training only; evaluation excluded)
    final_train_loss: float | None  # the last epoch's mean training loss
    loss_curve: tuple[list[float], list[float]]  # (x in epochs, training loss)
    error_curve: tuple[list[float], list[float]]  # (epoch, test error %)
    env: dict = field(default_factory=dict)
    robustness: dict = field(default_factory=dict)  # corruption_error, mce (%) from RUN/robustness/robustness.json


@dataclass
class VariantSummary:
    name: str
    runs: list[RunResult]  # all of them, in seed order
    used: list[RunResult]  # finished runs: the statistics are over these
    errors: list[float]
    mean: float | None
    std: float | None  # sample std (ddof=1); None when fewer than 2 runs
    min: float | None
    max: float | None
    best_mean: float | None  # mean best-epoch error (optimistic)
    params: int | None
    gmacs: float | None
    train_time_s: float | None  # mean per used run
    epochs: list[int]
    steps: list[int]
    robustness: dict = field(default_factory=dict)  # key -> (mean, std or None, runs with it)
    train_loss: tuple = (None, None, 0)  # the last epoch's training loss: (mean, std or None, runs with it)

    @property
    def excluded(self) -> str:
        """'1 diverged, 1 unfinished' for the runs left out of the statistics ('' if none)."""
        counts: dict[str, int] = {}
        for r in self.runs:
            if r.status != "finished":
                counts[r.status] = counts.get(r.status, 0) + 1
        return ", ".join(f"{n} {s}" for s, n in counts.items())


# ------------------------------------------------------------------------------------------ reading runs


def read_run(run_dir: str | os.PathLike, *, variant: str = "", seed: int | None = None,
             metric: str = "top1") -> RunResult:
    """One run's final and best error, length, training time and curves, from its directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    config = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) if (run_dir / CONFIG_FILE).is_file() else {}
    steps, epochs = read_metrics(run_dir)
    if seed is None and isinstance(config.get("train", {}).get("seed"), int):
        seed = config["train"]["seed"]
    evaluated = [(r["epoch"], 100.0 - float(r[metric])) for r in epochs if isinstance(r.get(metric), (int, float))]
    final_error = evaluated[-1][1] if evaluated else None
    best_epoch, best_error = min(evaluated, key=lambda p: p[1]) if evaluated else (None, None)
    if (run_dir / DIVERGED_FILE).is_file():
        status = "diverged"
    elif not config or reached_length(config.get("train", {}), epochs):  # the records read above
        status = "finished"  # without a config.yaml the length cannot be checked: taken as it is
    else:
        status = "unfinished"
    if status == "finished" and final_error is None:
        status = "unfinished"  # never evaluated: nothing to report
    env_path = run_dir / "env.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    robustness = read_robustness(run_dir / ROBUSTNESS_FILE)
    return RunResult(
        variant=variant or run_dir.name, seed=seed, run_dir=run_dir, status=status, config=config,
        final_error=final_error, best_error=best_error, best_epoch=best_epoch,
        epochs=int(epochs[-1]["epoch"]) if epochs else 0,
        steps=int(epochs[-1].get("step", 0)) if epochs else 0,
        train_time_s=sum(float(r.get("epoch_time_s") or 0.0) for r in epochs),
        final_train_loss=next((float(r["train_loss"]) for r in reversed(epochs)
                               if isinstance(r.get("train_loss"), (int, float))), None),
        loss_curve=_loss_curve(steps, epochs), error_curve=([float(e) for e, _ in evaluated],
                                                            [err for _, err in evaluated]),
        env=env, robustness=robustness)


ROBUSTNESS_FILE = "robustness/robustness.json"  # where `deepres robustness RUN` writes its report


def read_robustness(path: Path) -> dict:
    """{corruption_error: mean top-1 error over every evaluated (corruption, severity), mce: mCE over the
    evaluated corruptions against the report's baseline (absent without one)}, in %; {} without the file."""
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    scale = 1.0 if report.get("version", 1) >= 2 else 100.0  # version 2 reports are in percent, version 1 fractions
    errors = [e for by_severity in report.get("errors", {}).values() for e in by_severity.values()]
    out = {"corruption_error": scale * float(np.mean(errors))} if errors else {}
    mce = (report.get("summary") or {}).get("mce_evaluated")
    if mce is not None:
        out["mce"] = scale * mce
    return out


def _loss_curve(steps: list[dict], epochs: list[dict]) -> tuple[list[float], list[float]]:
    """Training loss against epochs: the logged step losses (x = fractional epoch), else the epoch means."""
    ends = epoch_ends(epochs)
    points = [(int(s["step"]), float(s["train_loss"])) for s in steps if isinstance(s.get("train_loss"), (int, float))]
    if points and ends is not None:
        end_steps, end_epochs = ends
        points = [(s, v) for s, v in points if s <= end_steps[-1]]
        x = np.interp([s for s, _ in points], end_steps, end_epochs).tolist()
        return x, [v for _, v in points]
    pairs = [(float(r["epoch"]), float(r["train_loss"])) for r in epochs
             if isinstance(r.get("train_loss"), (int, float))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def summarize(name: str, runs: list[RunResult]) -> VariantSummary:
    """Statistics over the finished runs of one variant (sample std, ddof=1)."""
    used = [r for r in runs if r.status == "finished"]
    errors = [r.final_error for r in used]
    arr = np.array(errors, dtype=float)
    params, gmacs = model_cost(used[0].config if used else runs[0].config if runs else {})
    return VariantSummary(
        name=name, runs=runs, used=used, errors=errors,
        mean=float(arr.mean()) if len(arr) else None,
        std=float(arr.std(ddof=1)) if len(arr) >= 2 else None,
        min=float(arr.min()) if len(arr) else None, max=float(arr.max()) if len(arr) else None,
        best_mean=float(np.mean([r.best_error for r in used])) if used else None,
        params=params, gmacs=gmacs,
        train_time_s=float(np.mean([r.train_time_s for r in used])) if used else None,
        epochs=sorted({r.epochs for r in used}), steps=sorted({r.steps for r in used}),
        robustness={key: _mean_std([r.robustness[key] for r in used if key in r.robustness])
                    for key in ("corruption_error", "mce")},
        train_loss=_mean_std([r.final_train_loss for r in used if r.final_train_loss is not None]))


def _mean_std(values: list[float]) -> tuple[float | None, float | None, int]:
    arr = np.array(values, dtype=float)
    return (float(arr.mean()) if len(arr) else None, float(arr.std(ddof=1)) if len(arr) >= 2 else None, len(arr))


_COST_CACHE: dict[str, tuple[int | None, float | None]] = {}


def model_cost(config: dict) -> tuple[int | None, float | None]:
    """(params, GMACs of one image at the training size) of the model a run config describes; None if unknown."""
    model_cfg, data_cfg = config.get("model") or {}, config.get("data") or {}
    if not model_cfg.get("name") or not model_cfg.get("num_classes") or not model_cfg.get("in_chans"):
        return None, None
    side = input_side(data_cfg)
    key = json.dumps([model_cfg, side], sort_keys=True)
    if key not in _COST_CACHE:
        options = dict(model_cfg.get("kwargs") or {})
        if model_cfg.get("drop_rate"):
            options["drop_rate"] = model_cfg["drop_rate"]
        try:
            cost = model_complexity(model_cfg["name"], model_cfg["num_classes"],
                                    (model_cfg["in_chans"], side, side), **options)
            _COST_CACHE[key] = (cost["params"], cost["gmacs"])
        except (KeyError, TypeError, ValueError, RuntimeError):
            _COST_CACHE[key] = (None, None)  # a model this install does not know: the columns show "–"
    return _COST_CACHE[key]


def input_side(data_cfg: dict) -> int:
    """Side (pixels) of the training images: as stored for in-memory sets unless randomly resized-cropped, else
    data.image_size."""
    keys = {f.name for f in dataclasses.fields(DataConfig)}
    cfg = DataConfig(**{k: v for k, v in data_cfg.items() if k in keys})  # a run's config, maybe from older code
    as_stored = data_cfg.get("name") in list_formats() and not cfg.random_resized_crop
    return int((stored_side(cfg) if as_stored else None) or cfg.image_size)


# -------------------------------------------------------------------------------------------- formatting


def _num(x: float | None, digits: int = 2) -> str:
    return DASH if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _params(n: int | None) -> str:
    return DASH if n is None else f"{n / 1e6:.3f}M" if n >= 1e5 else f"{n:,}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else \
        f"{seconds / 3600:.2f} h"


def _mean_pm(stat: tuple[float | None, float | None, int], runs: int, digits: int = 2) -> str:
    """'mean ± std', with '(k of n runs)' when only some runs have the number."""
    mean, std, n = stat
    if mean is None:
        return DASH
    return f"{_num(mean, digits)} ± {_num(std, digits)}" + (f" ({n} of {runs} runs)" if n != runs else "")


def _spread(values: list[int]) -> str:
    return DASH if not values else str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def table_rows(summaries: list[VariantSummary], metric: str, columns: list[str], best_epoch: bool):
    """(headers, rows of display strings) shared by results.md and report.html."""
    err = f"{METRIC_NAMES.get(metric, metric)} error (%)"
    headers = ["variant", "n", f"{err}: mean ± std", "min", "max", "per run (seed: error)"]
    if best_epoch:
        headers.append("best-epoch error, mean (optimistic: epoch chosen on the test set)")
    headers += [COLUMNS[c][0] for c in columns]
    headers.append("left out")
    rows = []
    for s in summaries:
        row = [s.name, str(len(s.used)),
               f"{_num(s.mean)} ± {_num(s.std)}" if s.mean is not None else DASH,
               _num(s.min), _num(s.max),
               ", ".join(f"{r.seed}: {_num(r.final_error)}" for r in s.used) or DASH]
        if best_epoch:
            row.append(_num(s.best_mean))
        for c in columns:
            row.append({"params": lambda: _params(s.params), "gmacs": lambda: _num(s.gmacs, 4),
                        "epochs": lambda: _spread(s.epochs), "steps": lambda: _spread(s.steps),
                        "train_time": lambda: _duration(s.train_time_s),
                        "train_loss": lambda: _mean_pm(s.train_loss, len(s.used), 3),
                        "corruption_error": lambda: _mean_pm(s.robustness["corruption_error"], len(s.used)),
                        "mce": lambda: _mean_pm(s.robustness["mce"], len(s.used))}[c]())
        row.append(s.excluded or DASH)
        rows.append(row)
    return headers, rows


def write_results_csv(path: Path, summaries: list[VariantSummary], metric: str, best_epoch: bool) -> None:
    """One row per variant, full precision; per-run errors as `seed:error` joined by ';'."""
    fields = ["variant", "n", f"{metric}_error_mean", f"{metric}_error_std", f"{metric}_error_min",
              f"{metric}_error_max", f"{metric}_errors"]
    fields += [f"{metric}_best_epoch_error_mean_optimistic"] if best_epoch else []
    fields += ["params", "gmacs", "epochs", "steps", "train_time_s", "corruption_error_mean", "corruption_error_std",
               "mce_mean", "mce_std", "train_loss_mean", "train_loss_std", "left_out"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for s in summaries:
            row = [s.name, len(s.used), _csv(s.mean), _csv(s.std), _csv(s.min), _csv(s.max),
                   ";".join(f"{r.seed}:{r.final_error:.4f}" for r in s.used)]
            row += [_csv(s.best_mean)] if best_epoch else []
            row += [s.params if s.params is not None else "", _csv(s.gmacs, 6), ";".join(map(str, s.epochs)),
                    ";".join(map(str, s.steps)), _csv(s.train_time_s, 1),
                    *(_csv(x) for key in ("corruption_error", "mce") for x in s.robustness[key][:2]),
                    *(_csv(x, 4) for x in s.train_loss[:2]), s.excluded]
            writer.writerow(row)


def write_runs_csv(path: Path, summaries: list[VariantSummary], metric: str) -> None:
    """One row per run, including the ones left out of the statistics."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "seed", "status", "epochs", "steps", f"{metric}_final_error",
                         f"{metric}_best_error_optimistic", "best_epoch", "train_time_s", "run_dir"])
        for s in summaries:
            for r in s.runs:
                writer.writerow([s.name, "" if r.seed is None else r.seed, r.status, r.epochs, r.steps,
                                 _csv(r.final_error), _csv(r.best_error), r.best_epoch or "",
                                 _csv(r.train_time_s, 1), str(r.run_dir)])


def _csv(x: float | None, digits: int = 4) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def method_notes(summaries: list[VariantSummary], metric: str, band: str) -> list[str]:
    """The sentences that say how every number in the report was made."""
    envs = [r.env for s in summaries for r in s.used if r.env]
    devices = sorted({f"{e.get('device', '?')} ({e.get('num_threads', '?')} torch threads)" for e in envs})
    notes = [
        f"Final error = 100 − {METRIC_NAMES.get(metric, metric)}{'' if metric == 'miou' else ' accuracy'} (%) on the "
        f"test split after the last "
        f"epoch of each run, not the best epoch. Mean ± sample standard deviation (ddof=1; {DASH} when n = 1), "
        f"min and max over the n finished runs (one per seed) of each variant; every run is listed (runs.csv), "
        f"none was selected.",
        "Runs that diverged (stopped on non-finite losses) or did not finish are left out of the statistics and "
        "counted under “left out”.",
        f"Curves: mean over the finished runs, shaded band = {'min–max' if band == 'minmax' else '± sample std'} "
        f"over seeds; training loss as logged every train.log_every_iters steps, test error once per evaluation.",
        "Params and GMACs (multiply-accumulates of one forward pass at the training image size, "
        "torch.utils.flop_counter) of the model each variant trains, with its options.",
    ]
    if devices:
        notes.append(f"Train time: sum of the per-epoch training time (evaluation excluded), mean per run, measured "
                     f"on {'; '.join(devices)}; runs sharing a machine (--parallel) slow each other down.")
    return notes


def write_markdown(path: Path, title: str, intro: list[str], summaries: list[VariantSummary], metric: str,
                   columns: list[str], best_epoch: bool, band: str, figure: str | None) -> None:
    headers, rows = table_rows(summaries, metric, columns, best_epoch)
    lines = [f"# {title}", "", *[line for p in intro for line in (p, "")]]
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    lines += ["", *[f"- {n}" for n in method_notes(summaries, metric, band)], ""]
    if figure:
        lines += [f"![training loss and test error]({figure})", ""]
    path.write_text("\n".join(lines))


def write_html(path: Path, title: str, intro: list[str], summaries: list[VariantSummary], metric: str,
               columns: list[str], best_epoch: bool, band: str, figure_png: Path | None) -> None:
    """One page with no external resources: the figure is a base64 data URI, the style is inline."""
    headers, rows = table_rows(summaries, metric, columns, best_epoch)
    e = html.escape
    table = ["<table>", "<tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>"]
    table += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
    table.append("</table>")
    runs = ["<table>", "<tr><th>variant</th><th>seed</th><th>status</th><th>epochs</th>"
            f"<th>final {e(metric)} error (%)</th><th>train time</th><th>run directory</th></tr>"]
    runs += [f"<tr><td>{e(s.name)}</td><td>{e(str(r.seed))}</td><td>{e(r.status)}</td><td>{r.epochs}</td>"
             f"<td>{e(_num(r.final_error))}</td><td>{e(_duration(r.train_time_s))}</td>"
             f"<td><code>{e(str(r.run_dir))}</code></td></tr>" for s in summaries for r in s.runs]
    runs.append("</table>")
    image = ""
    if figure_png is not None and figure_png.is_file():
        data = base64.b64encode(figure_png.read_bytes()).decode("ascii")
        image = f'<img alt="training loss and test error" src="data:image/png;base64,{data}">'
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;"
             "text-align:left;font-size:14px}th{background:#f3f3f3}img{max-width:100%}code{font-size:12px}")
    page = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
            f"<style>{style}</style></head><body>", f"<h1>{e(title)}</h1>",
            *[f"<p>{_inline_code(e(p))}</p>" for p in intro], *table,
            "<ul>" + "".join(f"<li>{e(n)}</li>" for n in method_notes(summaries, metric, band)) + "</ul>",
            image, "<h2>Runs</h2>", *runs,
            f"<p><small>Written {e(datetime.datetime.now().astimezone().isoformat(timespec='seconds'))}"
            f"</small></p>", "</body></html>"]
    path.write_text("\n".join(page) + "\n", encoding="utf-8")


def _inline_code(escaped: str) -> str:
    """Markdown `code` spans as <code> (the intro paragraphs are shared with results.md)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


# ------------------------------------------------------------------------------------------------ curves


def plot_study_curves(summaries: list[VariantSummary], path: Path, *, metric: str = "top1", band: str = "minmax",
                      title: str = "") -> None:
    """Two panels against epochs, one line per variant: training loss and test error (%)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.6))
    FigureCanvasAgg(fig)
    loss_ax, error_ax = fig.subplots(1, 2)
    colors = [f"C{i % 10}" for i in range(len(summaries))]
    for s, color in zip(summaries, colors):
        if not s.used:
            continue
        label = f"{s.name} (n={len(s.used)})"
        for ax, curves, smooth in ((loss_ax, [r.loss_curve for r in s.used], True),
                                   (error_ax, [r.error_curve for r in s.used], False)):
            x, mean, low, high = aggregate_curves(curves, band=band, smooth=smooth)
            if not x:
                continue
            ax.plot(x, mean, "-" if len(x) > 30 else "o-", ms=3, lw=1.2, color=color, label=label)
            if len(s.used) > 1:
                ax.fill_between(x, low, high, color=color, alpha=0.2, lw=0)
    band_text = "min–max over seeds" if band == "minmax" else "± sample std over seeds"
    loss_ax.set(xlabel="epoch", ylabel="training loss", title=f"training loss (seed mean; band: {band_text})")
    low, high = loss_ax.get_ylim()
    if low > 0 and high / low > 10:  # long runs: the late, small losses stay readable
        loss_ax.set_yscale("log")
    error_ax.set(xlabel="epoch", ylabel=f"test {METRIC_NAMES.get(metric, metric)} error (%)",
                 title=f"test error (seed mean; band: {band_text})")
    save_panels(fig, (loss_ax, error_ax), path, title=title, empty_text="no finished runs", grid_which="both")


def aggregate_curves(curves: list[tuple[list[float], list[float]]], *, band: str = "minmax", smooth: bool = False):
    """(x, mean, low, high) of several runs' curves on the x of the shortest one, over the range all cover."""
    curves = [(np.asarray(x, float), np.asarray(y, float)) for x, y in curves if len(x)]
    if not curves:
        return [], [], [], []
    if smooth:
        curves = [(x, np.asarray(ema_smooth(y))) for x, y in curves]
    grid = min((x for x, _ in curves), key=len)
    grid = grid[grid <= min(x[-1] for x, _ in curves)]
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    mean = ys.mean(axis=0)
    if band == "std" and len(curves) > 1:
        std = ys.std(axis=0, ddof=1)
        low, high = mean - std, mean + std
    else:
        low, high = ys.min(axis=0), ys.max(axis=0)
    return grid.tolist(), mean.tolist(), low.tolist(), high.tolist()


# ---------------------------------------------------------------------------------------------- the lot


def write_report(out_dir: str | os.PathLike, groups: dict[str, list[RunResult]], *, title: str,
                 intro: list[str] = (), metric: str = "top1", columns: list[str] = ("params", "gmacs", "epochs",
                                                                                     "train_time"),
                 best_epoch: bool = False, band: str = "minmax") -> list[VariantSummary]:
    """results.csv, results.md, runs.csv, curves.png and report.html in out_dir; returns the summaries."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = list(columns)
    summaries = [summarize(name, runs) for name, runs in groups.items()]
    write_results_csv(out_dir / "results.csv", summaries, metric, best_epoch)
    write_runs_csv(out_dir / "runs.csv", summaries, metric)
    plot_study_curves(summaries, out_dir / "curves.png", metric=metric, band=band, title=title)
    write_markdown(out_dir / "results.md", title, list(intro), summaries, metric, columns, best_epoch, band,
                   "curves.png")
    write_html(out_dir / "report.html", title, list(intro), summaries, metric, columns, best_epoch, band,
               out_dir / "curves.png")
    return summaries


def text_table(summaries: list[VariantSummary], metric: str, columns: list[str], best_epoch: bool = False) -> str:
    """The results table as aligned text (the terminal's version of results.md), for the commands to print."""
    headers, rows = table_rows(summaries, metric, columns, best_epoch)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in [headers, *rows])
