"""Training curves as PNG files (matplotlib, Agg): a run's loss and test error against epochs, and the helpers
studies use for their seed-averaged curves."""
import os

import numpy as np


def plot_curves(steps: list[dict], epochs: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """Two panels against epochs: training loss (smoothed steps, or epoch means) and test error (%; for a
    segmentation run, whose records hold mIoU, 100 - mIoU)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    loss_ax, error_ax = fig.subplots(1, 2)
    step_x, step_loss = _step_loss_curve(steps, epochs)
    if step_x:
        loss_ax.plot(step_x, step_loss, lw=1.0, label="train (smoothed steps)")
    epoch_x, epoch_loss = _series(epochs, "epoch", "train_loss")
    if epoch_x:
        loss_ax.plot(epoch_x, epoch_loss, "o-" if len(epoch_x) < 50 else "-", ms=3, label="train (epoch mean)")
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="training loss")
    error_x, error = _series(epochs, "epoch", "test_error")
    if not error_x:  # derive from top-1 accuracy when only that was logged
        top1_x, top1 = _series(epochs, "epoch", "top1")
        error_x, error = top1_x, [100.0 - a for a in top1]
    if error_x:
        error_ax.plot(error_x, error, "o-" if len(error_x) < 50 else "-", ms=3, color="tab:red", label="test")
        best = min(range(len(error)), key=error.__getitem__)
        error_ax.annotate(f"best {error[best]:.2f}% (epoch {error_x[best]})", (error_x[best], error[best]),
                          textcoords="offset points", xytext=(0, 10), ha="center", fontsize=8)
    name = "100 - mIoU" if any("miou" in r for r in epochs) else "test error"
    error_ax.set(xlabel="epoch", ylabel=f"{name} (%)", title=name)
    save_panels(fig, (loss_ax, error_ax), path, title=title, empty_text="no data yet")


def save_panels(fig, axes, path, *, title: str = "", empty_text: str = "no data", grid_which: str = "major") -> None:
    """Finish a figure of curve panels and write it: grid, a legend (or `empty_text` on a panel with no curve),
    the title, then a tight layout at 100 dpi."""
    for ax in axes:
        ax.grid(True, alpha=0.3, which=grid_which)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, empty_text, ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _series(records: list[dict], x_key: str, y_key: str) -> tuple[list, list]:
    pairs = [(r[x_key], r[y_key]) for r in records if isinstance(r.get(y_key), (int, float))]
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def epoch_ends(epochs: list[dict]) -> tuple[list[int], list[int]] | None:
    """(global steps, epochs) at each epoch's end, starting from step 0: interpolating a step between them gives
    its fractional epoch. None when the epoch records carry no `step`."""
    ends = [(int(r["step"]), int(r["epoch"])) for r in epochs if isinstance(r.get("step"), int)]
    if not ends:
        return None
    return [0] + [s for s, _ in ends], [ends[0][1] - 1] + [e for _, e in ends]


def _step_loss_curve(steps: list[dict], epochs: list[dict]) -> tuple[list[float], list[float]]:
    """Step losses smoothed by an exponential moving average, with x in epochs.

    Steps map to epochs through the epoch records' `step` (global step at each epoch's end), interpolated
    linearly; without that mapping there is no epoch axis for steps and the curve is left out.
    """
    key = "train_loss" if any("train_loss" in s for s in steps) else "loss"
    step_x, losses = _series(steps, "step", key)
    ends = epoch_ends(epochs)
    if not step_x or ends is None:
        return [], []
    end_steps, end_epochs = ends
    # beyond the last epoch end, extrapolate with the last epoch's steps per epoch
    per_epoch = max(end_steps[-1] - end_steps[-2], 1) / max(end_epochs[-1] - end_epochs[-2], 1)
    x = [float(np.interp(s, end_steps, end_epochs)) if s <= end_steps[-1]
         else end_epochs[-1] + (s - end_steps[-1]) / per_epoch for s in step_x]
    return x, ema_smooth(losses)


def ema_smooth(values) -> list[float]:
    """Exponential moving average with a span of about 2% of the curve, so short curves are not flattened."""
    alpha = min(1.0, 2.0 / (max(len(values) // 50, 1) + 1))
    smoothed, value = [], values[0]
    for v in values:
        value = alpha * v + (1 - alpha) * value
        smoothed.append(float(value))
    return smoothed
