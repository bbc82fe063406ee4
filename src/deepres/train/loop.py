"""The training loop: `train_one_epoch` and `fit`, plain functions over a `Run` (deepres.train.run.setup_run).

One optimizer step = `train.grad_accum_steps` micro-batches; `state.step` counts optimizer steps (skipped
non-finite ones included) and drives the lr schedule. A run directory holds config.yaml, metrics.jsonl,
TensorBoard events, env.json, curves.png (deepres.core.runs.RunRecorder) and checkpoints/{last,best}.*, and .lock
while a process trains there (one at a time: a second one is refused, naming the first).
Everything task-specific (batch mixing, loss, metrics, which metric is "best") comes from the run's task
(deepres.tasks).

Under torchrun (deepres.core.distributed) the same code runs once per process: the model is wrapped in
DistributedDataParallel, each rank reads its own shard of every epoch, and rank 0 alone logs, records and
writes checkpoints while the others wait. The global batch is data.batch_size x world_size x
train.grad_accum_steps; optim.lr_scaling decides whether the lr follows it.
"""
from __future__ import annotations

import itertools
import math
import shlex
import signal
import time
from contextlib import nullcontext
from dataclasses import replace
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from deepres.core.config import Config
from deepres.core.device import adapt_threads, default_device, limit_compute_threads, local_processes
from deepres.core.distributed import all_reduce_sum, broadcast_buffers, find_ddp, process_group, raise_if_any_failed
from deepres.core.errors import NonFiniteLossError, TrainingInterrupted
from deepres.models.base import frozen_modules
from deepres.models.bn import freeze_bn_stats, reset_bn_running_stats
from deepres.models.layers import set_drop_block_keep

from .ema import ModelEMA
from .interrupts import stop_on_signals
from .run import Run, TrainState, save_run, setup_run
from .schedules import lr_at


# ---------------------------------------------------------------------------------------------- one epoch


def train_one_epoch(run: Run) -> dict:
    """One pass over run.train_loader (stopping early at run.total_iters); returns train_loss, lr, time_s,
    images, images_per_s. Under DDP the loss and images/s are over all ranks.

    A checkpoint saved mid-epoch (state.batches_done > 0) continues the epoch after the micro-batches it had
    trained (the returned loss and images are then those of the rest). After an optimizer step it saves
    checkpoints/last when train.checkpoint_every_iters asks, or when run.stop was requested (SIGINT/SIGTERM:
    see fit), and then raises TrainingInterrupted."""
    cfg, t, state, task = run.cfg, run.cfg.train, run.state, run.task
    model, optimizer, amp_dtype = run.train_model, run.optimizer, run.amp.dtype
    accum, n_batches, world_size = t.grad_accum_steps, len(run.train_loader), run.dist.world_size
    iters_per_epoch, total_iters, peak_lr = run.iters_per_epoch, run.total_iters, run.peak_lr
    ddp = find_ddp(model)
    # stored per-image targets (train.kd_logits) are looked up by the batch's training-image indices
    needs_indices = task.needs_indices and hasattr(run.train_loader, "batch_indices")
    first = state.batches_done  # > 0: resuming inside this epoch
    rng = np.random.default_rng([t.seed, state.epoch])  # mixing depends only on seed + epoch, like the data order
    if first and state.mix_rng is not None:
        rng.bit_generator.state = state.mix_rng
    model.train()
    if cfg.model.freeze_bn:
        freeze_bn_stats(model)
    for module in frozen_modules(run.model, cfg.model.frozen_stages):  # frozen stages keep their BN statistics
        module.eval()
    bar = tqdm(total=max(min(iters_per_epoch - -(-first // accum), total_iters - state.step), 0),
               desc=f"epoch {state.epoch + 1}", disable=not run.progress, leave=False, unit="step", dynamic_ncols=True)
    progress = _ProgressLines(run, every=t.log_every_iters) if not run.progress and run.log is not None else None
    epoch_loss, epoch_images, window_loss, window_n = 0.0, 0, 0.0, 0
    start = time.perf_counter()
    lr = group_size = group_loss = 0.0
    stopping = False
    for i, (images, labels) in enumerate(_batches_from(run.train_loader, first), start=first):
        if i % accum == 0:  # first micro-batch of an optimizer step
            if state.step >= total_iters:
                break
            if run.device.type == "cpu" and not t.deterministic:  # a thread count change changes the sums' order
                adapt_threads()  # fewer threads while other processes hold cores (core.device.ThreadGovernor)
            group_size, group_ok, group_loss = min(accum, n_batches - i), True, 0.0
            lr = lr_at(state.step, cfg.schedule, peak_lr, iters_per_epoch, total_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)
            if min(t.dropblock_keep, t.dropblock_keep_start) < 1.0:  # DropBlock keep: start -> end, linear in steps
                keep = t.dropblock_keep_start
                set_drop_block_keep(model, keep - (keep - t.dropblock_keep) * state.step / total_iters)
        if t.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        indices = run.train_loader.batch_indices(i) if needs_indices else None
        images, targets = task.mix(images, labels, rng, indices)
        steps_now = i % accum + 1 >= group_size
        # DDP: gradients are averaged over ranks only in the backward of the micro-batch that steps
        with ddp.no_sync() if ddp is not None and not steps_now else nullcontext():
            with torch.autocast(run.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(images)
            loss = task.loss(logits, targets)
            loss_value, finite, stopping = _loss_on_all_ranks(loss, world_size, run.stop.signum != 0)
            if finite:
                scaled = loss / group_size
                (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
                group_loss += loss_value / group_size
                epoch_loss, epoch_images = epoch_loss + loss_value * len(labels), epoch_images + len(labels)
            else:
                group_ok = False  # no backward: NaN gradients must not reach the accumulated .grad
        if not steps_now:
            continue
        ok = optimizer_step(model, optimizer, grad_clip_norm=t.grad_clip_norm, scaler=run.scaler, ema=run.ema,
                            finite=group_ok)
        _count_nonfinite(state, ok, group_loss, t.nonfinite_patience)
        state.step += 1
        window_loss, window_n = (window_loss + group_loss, window_n + 1) if ok else (window_loss, window_n)
        if state.step % t.log_every_iters == 0 and window_n:
            images_per_s = epoch_images * world_size / max(time.perf_counter() - start, 1e-9)
            if run.recorder is not None:
                run.recorder.log_step(state.step, train_loss=window_loss / window_n, lr=lr, images_per_s=images_per_s)
            bar.set_postfix(loss=f"{window_loss / window_n:.4f}", lr=f"{lr:.4g}", img_s=f"{images_per_s:.0f}",
                            refresh=False)
            window_loss, window_n = 0.0, 0
        bar.update(1)
        if progress is not None:
            progress.after_step(group_loss if ok else math.nan, lr, epoch_images * world_size)
        # ranks agree on `stopping` (one all-reduce with the loss), so they stop at the same step
        if stopping or (t.checkpoint_every_iters and state.step % t.checkpoint_every_iters == 0):
            state.batches_done, state.mix_rng = i + 1, rng.bit_generator.state
            _record_and_save(run, None, best=False)
            if stopping:
                bar.close()
                signum = run.stop.signum or signal.SIGTERM  # the signal may have reached another rank only
                raise TrainingInterrupted(_interrupted_line(run, signum, n_batches), signum)
    bar.close()
    state.batches_done, state.mix_rng = 0, None  # the epoch is complete
    elapsed = time.perf_counter() - start
    images = epoch_images * world_size  # train shards are equal, full batches only
    return {"train_loss": epoch_loss / epoch_images if epoch_images else math.nan, "lr": lr,
            "time_s": elapsed, "images": images, "images_per_s": images / max(elapsed, 1e-9)}


def _batches_from(loader, first: int) -> Iterator:
    """The loader's batches of the current epoch from micro-batch `first` on: deepres loaders skip the rest
    without reading them (iter_from); any other iterable is read and the first ones dropped."""
    if first == 0:
        return iter(loader)
    if hasattr(loader, "iter_from"):
        return loader.iter_from(first)
    return itertools.islice(iter(loader), first, None)


class _ProgressLines:
    """Plain progress lines through run.log when the tqdm bar is off (stderr not a terminal: SLURM logs): every
    `every` optimizer steps, and after any step that ends 60 s without one."""

    def __init__(self, run: Run, every: int, seconds: float = 60.0):
        self.run, self.every, self.seconds = run, every, seconds
        self.start = self.last = time.perf_counter()
        self.loss, self.n = 0.0, 0

    def after_step(self, loss: float, lr: float, images: int) -> None:
        if math.isfinite(loss):
            self.loss, self.n = self.loss + loss, self.n + 1
        now, s = time.perf_counter(), self.run.state
        if s.step % self.every and now - self.last < self.seconds:
            return
        loss_text = f"{self.loss / self.n:.4f}" if self.n else "nan"
        self.run.log(f"epoch {s.epoch + 1}  step {s.step}/{self.run.total_iters}  loss {loss_text}  lr {lr:.4g}  "
                     f"{images / max(now - self.start, 1e-9):.0f} img/s")
        self.last, self.loss, self.n = now, 0.0, 0


def _interrupted_line(run: Run, signum: int, n_batches: int) -> str:
    s = run.state
    launcher = " (under torchrun, with the same launcher options)" if run.dist.enabled else ""
    return (f"stopped by {signal.Signals(signum).name} at step {s.step} (epoch {s.epoch + 1}, {s.batches_done} of "
            f"{n_batches} batches): saved {run.run_dir / 'checkpoints'}/last; continue exactly from there with "
            f"`{resume_command(run.run_dir)}`{launcher}")


def resume_command(run_dir) -> str:
    """The command that continues the run in `run_dir` with the config it stored, overrides included."""
    return f"deepres train --resume {shlex.quote(str(run_dir))}"


def _loss_on_all_ranks(loss: torch.Tensor, world_size: int, stop: bool = False) -> tuple[float, bool, bool]:
    """(loss value, finite, stop) of this micro-batch; under DDP the mean over ranks, finite only if finite on all,
    stop if asked on any.

    One host sync per micro-batch either way (single process: loss.item()). Under DDP it is one all_reduce
    of three numbers, before backward: a rank that skips backward (or stops) while the others run it would leave
    them waiting in DDP's gradient all-reduce, so all ranks must agree to skip, and to stop, together."""
    if world_size == 1:
        value = loss.item()
        return value, math.isfinite(value), stop
    loss = loss.detach().double()
    finite = torch.isfinite(loss)
    stats = torch.stack([(~finite).double(), torch.where(finite, loss, torch.zeros_like(loss)),
                         torch.tensor(float(stop), dtype=torch.float64, device=loss.device)])
    nonfinite_ranks, loss_sum, stopping_ranks = all_reduce_sum(stats).tolist()
    return loss_sum / world_size, nonfinite_ranks == 0, stopping_ranks > 0


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, *, grad_clip_norm: float = 0.0,
                   scaler=None, ema: ModelEMA | None = None, finite: bool = True) -> bool:
    """Clip, step and update the EMA; returns False (stepping nothing) if the loss or gradient norm is non-finite."""
    if finite and grad_clip_norm > 0:
        if scaler is not None:
            scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
        # under fp16 inf gradients are the GradScaler's business: it skips the step and lowers the scale
        finite = scaler is not None or bool(torch.isfinite(norm))
    if finite:
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if ema is not None:
            ema.update(model)
    optimizer.zero_grad(set_to_none=True)
    return finite


def _count_nonfinite(state: TrainState, ok: bool, loss: float, patience: int) -> None:
    if ok:
        state.nonfinite_streak, state.last_finite_loss, state.last_finite_step = 0, loss, state.step
        return
    state.nonfinite_streak += 1
    if state.nonfinite_streak >= patience:
        last = (f"the last finite loss was {state.last_finite_loss:.6g} at step {state.last_finite_step}"
                if state.last_finite_step >= 0 else "no finite loss was seen in this run")
        raise NonFiniteLossError(
            f"stopping at step {state.step} (epoch {state.epoch + 1}): {state.nonfinite_streak} non-finite losses "
            f"in a row (train.nonfinite_patience={patience}; those steps were skipped); {last}. Try a lower "
            f"optim.lr, train.grad_clip_norm, or amp=bf16 instead of fp16. Checkpoints were left as they were.")


# --------------------------------------------------------------------------------------------------- fit


def fit(cfg: Config, *, resume: bool = False, stop_after_epochs: int | None = None, device=None, loaders=None,
        log: Callable[[str], None] | None = None) -> dict:
    """Train `cfg` in cfg.run.out_dir/cfg.run.name; returns the final test metrics and where the run lives.

    resume: continue exactly from checkpoints/last (the config may differ only in RESUME_MAY_DIFFER keys); with
    no checkpoint yet (a new run, or one stopped during its first epoch), start it, in the same directory.
    stop_after_epochs: stop once this many epochs are complete (the schedule still spans the whole run),
    to be continued with resume=True. loaders: (train, eval, DataInfo) instead of deepres.data.build_loaders.
    Under torchrun every process calls fit (see deepres.core.distributed); `loaders` must then hold this
    rank's shards, and every rank returns the same metrics. log: where its lines go (None: stdout, flushed
    line by line, so a SLURM log shows them as they come). SIGINT/SIGTERM stop it at the next optimizer step,
    after saving checkpoints/last there, with TrainingInterrupted.
    """
    device = torch.device(device) if device is not None else default_device()
    if cfg.train.amp == "fp16" and device.type != "cuda":
        raise ValueError(f"train.amp='fp16' needs CUDA (torch.amp.GradScaler); this run is on {device.type}: "
                         f"use train.amp=bf16 or none")
    if not cfg.run.name:
        cfg = replace(cfg, run=replace(cfg.run, name=f"{cfg.data.name}-{cfg.model.name}"))
    was_deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    try:
        with process_group(device) as (dist, device):
            log = (log or _print_line) if dist.is_main else _silent
            run = setup_run(cfg, resume=resume, device=device, loaders=loaders, dist=dist, log=log)
            state, task = run.state, run.task
            # rank 0's lock on the run directory and its recorder: released and closed however the loop ends
            with run.lock or nullcontext(), run.recorder or nullcontext():
                if device.type == "cpu":  # compute threads + DataLoader workers within the cores (core.device)
                    limit_compute_threads(workers=getattr(run.train_loader, "workers", 0),
                                          processes=local_processes())
                if run.recorder is not None:
                    run.recorder.write_env(train_precision={"requested": cfg.train.amp, "resolved": run.amp.amp,
                                                            "reason": run.amp.reason})
                log(_start_line(run))
                if resume and not run.resumed:
                    log(f"--resume: no checkpoint in {run.run_dir / 'checkpoints'} yet (stopped before its first "
                        f"one): starting the run from step 0")
                log(_batch_line(run))
                if run.cfg.schedule.warmup_iters > run.total_iters:
                    log(_warmup_warning(run))
                run.log = log if dist.is_main else None
                try:  # SIGINT/SIGTERM only set run.stop: the loop stops at the next step and saves checkpoints/last
                    with stop_on_signals(run.stop):
                        # an epoch a checkpoint left unfinished (batches_done > 0) is finished, even at total_iters
                        while ((state.step < run.total_iters or state.batches_done)
                               and (stop_after_epochs is None or state.epoch < stop_after_epochs)):
                            _epoch(run, stop_after_epochs, log)
                except TrainingInterrupted as e:
                    log(str(e))
                    raise
            return {**state.metrics, "epoch": state.epoch, "step": state.step, f"best_{task.best_metric}": state.best,
                    "best_epoch": state.best_epoch, "run_dir": str(run.run_dir),
                    "finished": state.step >= run.total_iters}
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)


def _epoch(run: Run, stop_after_epochs: int | None, log: Callable[[str], None]) -> None:
    """Train the epoch (or its rest), evaluate when due, save checkpoints and the epoch record, log a line."""
    state, task = run.state, run.task
    run.train_loader.set_epoch(state.epoch)
    if run.cfg.model.bn_momentum == "dynamic" and not state.batches_done:
        reset_bn_running_stats(run.model)  # running stats = average over this epoch's batches
    stats = train_one_epoch(run)
    state.epoch += 1
    finishing = state.step >= run.total_iters or state.epoch == stop_after_epochs
    record = {"train_loss": stats["train_loss"], "lr": stats["lr"], "epoch_time_s": stats["time_s"],
              "images_per_s": stats["images_per_s"], "step": state.step}
    # Every rank evaluates and saves rank 0's BatchNorm statistics (each rank's last batch is in its own).
    broadcast_buffers(run.model)
    if run.ema is not None:
        broadcast_buffers(run.ema.module)
    evaluated = state.epoch % run.cfg.train.eval_every_epochs == 0 or finishing
    if evaluated:  # on every rank, each its own shard; the task sums its metrics over ranks
        state.metrics = task.evaluate(run.model, run.eval_loader,
                                      ema_model=run.ema.module if run.ema is not None else None)
        record.update(task.record(state.metrics))
    is_best = evaluated and state.metrics[task.best_metric] > state.best
    if is_best:
        state.best, state.best_epoch = state.metrics[task.best_metric], state.epoch
    _record_and_save(run, record, best=is_best and run.cfg.run.keep == "last+best")
    log(_epoch_line(run, stats, task.summary(state.metrics) if evaluated else ""))
    signum = _stop_on_any_rank(run)  # a signal during evaluation or saving: checkpoints/last was just saved
    if signum and not finishing:
        raise TrainingInterrupted(_interrupted_line(run, signum, len(run.train_loader)), signum)


def _silent(_: str) -> None:
    pass


def _print_line(line: str) -> None:
    print(line, flush=True)  # stdout to a file (a SLURM log) is block-buffered


def _stop_on_any_rank(run: Run) -> int:
    """run.stop's signal number if it was requested on any rank (SIGTERM where it reached others only), else 0."""
    if run.dist.world_size == 1:
        return run.stop.signum
    asked = all_reduce_sum(torch.tensor([float(run.stop.signum != 0)], device=run.device)).item()
    return (run.stop.signum or signal.SIGTERM) if asked else 0


def _record_and_save(run: Run, record: dict | None, *, best: bool) -> None:
    """Rank 0 writes the epoch record, the checkpoint and curves.png (record None: the checkpoint only, mid-epoch);
    every rank waits and raises if it failed."""
    error = None
    if run.recorder is not None:
        try:
            if record is not None:
                run.recorder.log_epoch(run.state.epoch, **record)
            save_run(run, best=best)
            if record is not None:
                run.recorder.plot_curves()
        except Exception as e:
            error = e
    raise_if_any_failed(error)


def _start_line(run: Run) -> str:
    cfg, s = run.cfg, run.state
    n_params = sum(p.numel() for p in run.model.parameters())
    return (f"run {run.run_dir}: {cfg.model.name} ({n_params / 1e6:.2f}M params) on {run.device}, "
            f"amp={run.amp.amp} ({run.amp.reason}), {run.iters_per_epoch} steps/epoch, {run.total_iters} steps" +
            (f", resuming after epoch {s.epoch} (step {s.step})" if run.resumed else ""))


def _batch_line(run: Run) -> str:
    cfg, o = run.cfg, run.cfg.optim
    line = (f"global batch {run.global_batch} = {cfg.data.batch_size} per process x {run.dist.world_size} "
            f"process(es) x {cfg.train.grad_accum_steps} accumulation step(s); peak lr {run.peak_lr:.6g}")
    if o.lr_scaling == "linear":
        line += f" = {o.lr:g} x {run.global_batch} / {o.lr_base_batch} (optim.lr_scaling=linear)"
    return line


def _warmup_warning(run: Run) -> str:
    """A warm-up longer than the run (a shortened smoke run of a recipe) never lets the lr reach its peak."""
    s, total = run.cfg.schedule, run.total_iters
    last_lr = lr_at(total - 1, s, run.peak_lr, run.iters_per_epoch, total)
    return (f"warning: schedule.warmup_iters={s.warmup_iters} is longer than the run's {total} steps: the lr never "
            f"reaches its peak {run.peak_lr:.6g} (its last step uses {last_lr:.4g}); lower schedule.warmup_iters "
            f"or train longer")


def _epoch_line(run: Run, stats: dict, summary: str) -> str:
    s, total_epochs = run.state, math.ceil(run.total_iters / run.iters_per_epoch)
    return (f"epoch {s.epoch}/{total_epochs}  step {s.step}  loss {stats['train_loss']:.4f}  lr {stats['lr']:.4g}  "
            f"{stats['images_per_s']:.0f} img/s  {stats['time_s']:.1f} s" + (f"  {summary}" if summary else ""))


