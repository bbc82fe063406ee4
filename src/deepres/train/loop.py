"""The training loop: `train_one_epoch` and `fit`, plain functions.

One optimizer step = `train.grad_accum_steps` micro-batches; `state.step` counts optimizer steps (skipped
non-finite ones included) and drives the lr schedule. A run directory holds config.yaml, metrics.jsonl,
TensorBoard events, env.json, curves.png (deepres.core.runs.RunRecorder) and checkpoints/{last,best}.*.

Under torchrun (deepres.core.distributed) the same code runs once per process: the model is wrapped in
DistributedDataParallel, each rank reads its own shard of every epoch, and rank 0 alone logs, records and
writes checkpoints while the others wait. The global batch is data.batch_size x world_size x
train.grad_accum_steps; optim.lr_scaling decides whether the lr follows it.
"""
from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from deepres.core.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from deepres.core.config import RESUME_MAY_DIFFER, Config, config_diff, config_from_dict, config_to_dict
from deepres.core.device import AMP_DTYPES, default_device, seed_everything, set_deterministic
from deepres.core.distributed import (DistInfo, all_reduce_sum, broadcast_buffers, find_ddp, is_distributed,
                                      process_group, raise_if_any_failed, same_on_all_ranks)
from deepres.core.errors import NonFiniteLossError
from deepres.core.runs import RunRecorder
from deepres.data import build_loaders
from deepres.models.bn import reset_bn_running_stats
from deepres.tasks.build import build_model, resolve_config
from deepres.tasks.classification import classification_loss, mixup_cutmix
from deepres.tasks.evaluate import evaluate

from .ema import ModelEMA
from .optim import create_optimizer, scaled_lr
from .schedules import lr_at

@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken, skipped non-finite ones included
    epoch: int = 0  # epochs completed
    best_top1: float = -1.0  # best test top-1 (%) so far; -1 = not evaluated yet
    best_epoch: int = 0
    nonfinite_streak: int = 0  # non-finite losses in a row (optimizer steps)
    last_finite_loss: float = math.nan
    last_finite_step: int = -1


# ---------------------------------------------------------------------------------------------- one epoch


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, *, cfg: Config,
                    state: TrainState, num_classes: int, total_iters: int, scaler=None, ema: ModelEMA | None = None,
                    recorder: RunRecorder | None = None, progress: bool = False,
                    peak_lr: float | None = None) -> dict:
    """One pass over `loader` (stopping early at total_iters); returns train_loss, images_per_s, time_s, lr.

    peak_lr: the lr the schedule starts from (default cfg.optim.lr; fit passes it scaled by the global batch).
    Under DDP the returned loss and images/s are over all ranks."""
    t, amp_dtype = cfg.train, AMP_DTYPES[cfg.train.amp]
    peak_lr = cfg.optim.lr if peak_lr is None else peak_lr
    device_type = next(model.parameters()).device.type
    accum, n_batches = t.grad_accum_steps, len(loader)
    iters_per_epoch = math.ceil(n_batches / accum)
    ddp = find_ddp(model)
    world_size = torch.distributed.get_world_size() if is_distributed() else 1
    rng = np.random.default_rng([t.seed, state.epoch])  # mixing depends only on seed + epoch, like the data order
    model.train()
    bar = tqdm(total=max(min(iters_per_epoch, total_iters - state.step), 0), desc=f"epoch {state.epoch + 1}",
               disable=not progress, leave=False, unit="step", dynamic_ncols=True)
    epoch_loss, epoch_images, window_loss, window_n = 0.0, 0, 0.0, 0
    start = time.perf_counter()
    lr = group_size = group_loss = 0.0
    for i, (images, labels) in enumerate(loader):
        if i % accum == 0:  # first micro-batch of an optimizer step
            if state.step >= total_iters:
                break
            group_size, group_ok, group_loss = min(accum, n_batches - i), True, 0.0
            lr = lr_at(state.step, cfg.schedule, peak_lr, iters_per_epoch, total_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
        if t.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        images, targets, _, _ = mixup_cutmix(images, labels, num_classes=num_classes, mixup_alpha=t.mixup_alpha,
                                             cutmix_alpha=t.cutmix_alpha, mix_prob=t.mix_prob,
                                             switch_prob=t.mix_switch_prob, rng=rng)
        steps_now = i % accum + 1 >= group_size
        # DDP: gradients are averaged over ranks only in the backward of the micro-batch that steps
        with ddp.no_sync() if ddp is not None and not steps_now else nullcontext():
            with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(images)
            loss = classification_loss(logits, targets, kind=t.loss, label_smoothing=t.label_smoothing)
            loss_value, finite = _loss_on_all_ranks(loss, world_size)
            if finite:
                scaled = loss / group_size
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                group_loss += loss_value / group_size
                epoch_loss, epoch_images = epoch_loss + loss_value * len(labels), epoch_images + len(labels)
            else:
                group_ok = False  # no backward: NaN gradients must not reach the accumulated .grad
        if not steps_now:
            continue
        ok = optimizer_step(model, optimizer, grad_clip_norm=t.grad_clip_norm, scaler=scaler, ema=ema,
                            finite=group_ok)
        _count_nonfinite(state, ok, group_loss, t.nonfinite_patience)
        state.step += 1
        window_loss, window_n = (window_loss + group_loss, window_n + 1) if ok else (window_loss, window_n)
        if state.step % t.log_every_iters == 0 and window_n:
            images_per_s = epoch_images * world_size / max(time.perf_counter() - start, 1e-9)
            if recorder is not None:
                recorder.log_step(state.step, train_loss=window_loss / window_n, lr=lr, images_per_s=images_per_s)
            bar.set_postfix(loss=f"{window_loss / window_n:.4f}", lr=f"{lr:.4g}", img_s=f"{images_per_s:.0f}",
                            refresh=False)
            window_loss, window_n = 0.0, 0
        bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - start
    images = epoch_images * world_size  # train shards are equal, full batches only
    return {"train_loss": epoch_loss / epoch_images if epoch_images else math.nan, "lr": lr,
            "time_s": elapsed, "images": images, "images_per_s": images / max(elapsed, 1e-9)}


def _loss_on_all_ranks(loss: torch.Tensor, world_size: int) -> tuple[float, bool]:
    """(loss value, finite) of this micro-batch; under DDP the mean over ranks, finite only if finite on all.

    One host sync per micro-batch either way (single process: loss.item()). Under DDP it is one all_reduce
    of two numbers, before backward: a rank that skips backward while the others run it would leave them
    waiting in DDP's gradient all-reduce, so all ranks must agree to skip together."""
    if world_size == 1:
        value = loss.item()
        return value, math.isfinite(value)
    loss = loss.detach().double()
    finite = torch.isfinite(loss)
    stats = torch.stack([(~finite).double(), torch.where(finite, loss, torch.zeros_like(loss))])
    nonfinite_ranks, loss_sum = all_reduce_sum(stats).tolist()
    return loss_sum / world_size, nonfinite_ranks == 0


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
        log: Callable[[str], None] = print) -> dict:
    """Train `cfg` in cfg.run.out_dir/cfg.run.name; returns the final test metrics and where the run lives.

    resume: continue exactly from checkpoints/last (the config may differ only in RESUME_MAY_DIFFER keys).
    stop_after_epochs: stop once this many epochs are complete (the schedule still spans the whole run),
    to be continued with resume=True. loaders: (train, eval, DataInfo) instead of deepres.data.build_loaders.
    Under torchrun every process calls fit (see deepres.core.distributed); `loaders` must then hold this
    rank's shards, and every rank returns the same metrics.
    """
    device = torch.device(device) if device is not None else default_device()
    if cfg.train.amp == "fp16" and device.type != "cuda":
        raise ValueError(f"train.amp='fp16' needs CUDA (torch.amp.GradScaler); this run is on {device.type}: "
                         f"use train.amp=bf16 or none")
    if not cfg.run.name:
        cfg = replace(cfg, run=replace(cfg.run, name=f"{cfg.data.name}-{cfg.model.name}"))
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    ckpt_dir = run_dir / "checkpoints"
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with process_group(device) as (dist_info, device):
        if not dist_info.is_main:
            log = _silent
        try:
            prepared, error = None, None
            try:
                prepared = _prepare(cfg, resume, device, loaders, dist_info, run_dir, ckpt_dir)
            except Exception as e:  # every rank must learn of it, or the others wait forever
                error = e
            raise_if_any_failed(error)
            cfg, saved, (train_loader, eval_loader, info) = prepared
            same_on_all_ranks(len(train_loader), "batches per epoch (len(train_loader))")
            return _run(cfg, device, run_dir, ckpt_dir, saved, train_loader, eval_loader, info, stop_after_epochs,
                        log, dist_info)
        finally:
            torch.use_deterministic_algorithms(was_deterministic)


def _silent(_: str) -> None:
    pass


def _prepare(cfg: Config, resume: bool, device, loaders, dist_info: DistInfo, run_dir: Path, ckpt_dir: Path):
    """Everything before the model: checkpoint, seeds, data, the resolved config; may fail on one rank only."""
    saved = None
    if resume:
        saved = _load_for_resume(ckpt_dir, dist_info)  # every rank reads it
    elif dist_info.is_main:  # rank 0 alone creates the run directory
        _check_fresh_run_dir(run_dir)
    seed_everything(cfg.train.seed)
    set_deterministic(cfg.train.deterministic, device)
    if cfg.train.sync_bn and dist_info.enabled and device.type != "cuda":
        raise ValueError(f"train.sync_bn needs CUDA (torch.nn.SyncBatchNorm); this run is on {device.type}: "
                         f"set train.sync_bn=false")
    if loaders is None:
        loaders = build_loaders(cfg.data, device, seed=cfg.train.seed, rank=dist_info.rank,
                                world_size=dist_info.world_size)
    cfg = resolve_config(cfg, loaders[2])
    if saved is not None:
        check_resume_config(saved[1]["config"], cfg, ckpt_dir)
        saved_world_size = int(saved[1].get("world_size", 1))
        if saved_world_size != dist_info.world_size:
            raise ValueError(f"cannot resume from {ckpt_dir}: it was trained by {saved_world_size} process(es), "
                             f"this run has {dist_info.world_size}; the data shards and the global batch depend "
                             f"on it, so resume with the same number of processes")
    return cfg, saved, loaders


def _run(cfg, device, run_dir, ckpt_dir, saved, train_loader, eval_loader, info, stop_after_epochs, log,
         dist_info: DistInfo) -> dict:
    t = cfg.train
    num_classes, classes = cfg.model.num_classes, list(info.classes)
    model = build_model(cfg, device)
    if t.sync_bn and dist_info.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same state-dict keys as BatchNorm
    optimizer = create_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler("cuda") if t.amp == "fp16" else None
    ema = ModelEMA(model, t.ema_decay) if t.ema_decay > 0 else None
    state, metrics = TrainState(), {}
    if saved is not None:
        state, metrics = _restore(saved, model, optimizer, scaler, ema)
    train_model = model
    if dist_info.enabled:  # checkpoints and evaluation use the bare `model`
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        train_model = torch.compile(train_model)
    iters_per_epoch = math.ceil(len(train_loader) / t.grad_accum_steps)
    total_iters = t.max_iters if t.max_iters > 0 else t.epochs * iters_per_epoch
    global_batch = cfg.data.batch_size * dist_info.world_size * t.grad_accum_steps
    peak_lr = scaled_lr(cfg.optim, global_batch)
    config_dict = config_to_dict(cfg)
    recorder = RunRecorder(run_dir, config_dict, resume=saved is not None) if dist_info.is_main else None
    progress = t.progress and sys.stderr.isatty() and dist_info.is_main
    try:
        if recorder is not None:
            recorder.write_env()
        n_params = sum(p.numel() for p in model.parameters())
        log(f"run {run_dir}: {cfg.model.name} ({n_params / 1e6:.2f}M params) on {device}, amp={t.amp}, "
            f"{iters_per_epoch} steps/epoch, {total_iters} steps" +
            (f", resuming after epoch {state.epoch} (step {state.step})" if saved is not None else ""))
        log(_batch_line(cfg, dist_info, global_batch, peak_lr))
        if saved is not None:  # last: everything above may have drawn random numbers
            _restore_rng(saved[1]["rng"], device, dist_info.enabled)
        while state.step < total_iters and (stop_after_epochs is None or state.epoch < stop_after_epochs):
            train_loader.set_epoch(state.epoch)
            if cfg.model.bn_momentum == "dynamic":
                reset_bn_running_stats(model)  # running stats = average over this epoch's batches
            stats = train_one_epoch(train_model, train_loader, optimizer, cfg=cfg, state=state,
                                    num_classes=num_classes, total_iters=total_iters, scaler=scaler, ema=ema,
                                    recorder=recorder, progress=progress, peak_lr=peak_lr)
            state.epoch += 1
            finishing = state.step >= total_iters or state.epoch == stop_after_epochs
            record = {"train_loss": stats["train_loss"], "lr": stats["lr"], "epoch_time_s": stats["time_s"],
                      "images_per_s": stats["images_per_s"], "step": state.step}
            # Every rank evaluates and saves rank 0's BatchNorm statistics (each rank's own last batch is in its own).
            broadcast_buffers(model)
            if ema is not None:
                broadcast_buffers(ema.module)
            if state.epoch % t.eval_every_epochs == 0 or finishing:
                metrics = _evaluate(model, ema, eval_loader, cfg, num_classes)  # all ranks, summed over ranks
                record.update(test_error=100.0 - metrics["top1"], **metrics)
                is_best = metrics["top1"] > state.best_top1
                if is_best:
                    state.best_top1, state.best_epoch = metrics["top1"], state.epoch
            else:
                is_best = False
            error = None
            if recorder is not None:
                try:
                    recorder.log_epoch(state.epoch, **record)
                    _save(ckpt_dir, model, optimizer, scaler, ema, state, metrics, config_dict, classes,
                          best=is_best and cfg.run.keep == "last+best", device=device,
                          world_size=dist_info.world_size)
                    recorder.plot_curves()
                except Exception as e:
                    error = e
            raise_if_any_failed(error)  # the other ranks wait here until rank 0's checkpoint is written
            log(_epoch_line(state, total_iters, iters_per_epoch, record))
    finally:
        if recorder is not None:
            recorder.close()
    return {**metrics, "epoch": state.epoch, "step": state.step, "best_top1": state.best_top1,
            "best_epoch": state.best_epoch, "run_dir": str(run_dir), "finished": state.step >= total_iters}


def _batch_line(cfg: Config, dist_info: DistInfo, global_batch: int, peak_lr: float) -> str:
    o = cfg.optim
    line = (f"global batch {global_batch} = {cfg.data.batch_size} per process x {dist_info.world_size} "
            f"process(es) x {cfg.train.grad_accum_steps} accumulation step(s); peak lr {peak_lr:.6g}")
    if o.lr_scaling == "linear":
        line += f" = {o.lr:g} x {global_batch} / {o.lr_base_batch} (optim.lr_scaling=linear)"
    return line


def _evaluate(model, ema, eval_loader, cfg: Config, num_classes: int) -> dict:
    """top1, top5, test_loss (and ema_top1 with an EMA) on the eval loader."""
    kwargs = dict(num_classes=num_classes, scales=tuple(cfg.eval.scales), flip=cfg.eval.flip,
                  amp_dtype=AMP_DTYPES[cfg.train.amp])
    result = evaluate(model, eval_loader, **kwargs)
    out = {"top1": result["top1"], "top5": result["top5"], "test_loss": result["loss"]}
    if ema is not None:
        out["ema_top1"] = evaluate(ema.module, eval_loader, **kwargs)["top1"]
    return out


def _save(ckpt_dir, model, optimizer, scaler, ema, state: TrainState, metrics: dict, config: dict, classes,
          best: bool, device: torch.device, world_size: int = 1) -> None:
    rng = capture_rng_state()
    if device.type == "cuda":
        # This process's own device: under DDP, rank k restores it into its device k (see _restore_rng).
        rng["cuda_device"] = torch.cuda.get_rng_state(device)
    payload = {
        "step": state.step, "epoch": state.epoch, "best_top1": state.best_top1, "best_epoch": state.best_epoch,
        "last_finite_loss": state.last_finite_loss, "last_finite_step": state.last_finite_step,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "rng": rng,
        "metrics": dict(metrics),
        "world_size": world_size,  # processes that trained it; a resume must use as many
    }
    save_checkpoint(ckpt_dir, "last", model=model, state=payload, config=config, classes=classes,
                    also=("best",) if best else ())


def _restore_rng(rng: dict, device: torch.device, distributed: bool) -> None:
    """Restore rank 0's saved RNG states on this rank.

    Every rank seeds the same way and draws the same random numbers (dropout masks of equal shapes; data
    randomness comes from the loaders' own (seed, epoch, rank) generators), so rank 0's state is every rank's."""
    if distributed and "cuda_device" in rng:
        rng = {k: v for k, v in rng.items() if k != "cuda"}  # another node may see other devices: own one only
    restore_rng_state(rng)
    if device.type == "cuda" and "cuda_device" in rng:
        torch.cuda.set_rng_state(rng["cuda_device"], device)


def _restore(saved, model, optimizer, scaler, ema) -> tuple[TrainState, dict]:
    tensors, st = saved
    model.load_state_dict(tensors)
    optimizer.load_state_dict(st["optimizer"])
    if scaler is not None and st.get("scaler") is not None:
        scaler.load_state_dict(st["scaler"])
    if ema is not None:
        ema.load_state_dict(st["ema"])
    state = TrainState(step=st["step"], epoch=st["epoch"], best_top1=st["best_top1"], best_epoch=st["best_epoch"],
                       last_finite_loss=st["last_finite_loss"], last_finite_step=st["last_finite_step"])
    return state, dict(st.get("metrics") or {})


def _epoch_line(state: TrainState, total_iters: int, iters_per_epoch: int, r: dict) -> str:
    total_epochs = math.ceil(total_iters / iters_per_epoch)
    line = (f"epoch {state.epoch}/{total_epochs}  step {state.step}  loss {r['train_loss']:.4f}  lr {r['lr']:.4g}  "
            f"{r['images_per_s']:.0f} img/s  {r['epoch_time_s']:.1f} s")
    if "top1" in r:
        line += f"  test top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%"
    return line


# ------------------------------------------------------------------------------------------ setup helpers


def _check_fresh_run_dir(run_dir: Path) -> None:
    taken = [name for name in ("checkpoints", "config.yaml", "metrics.jsonl") if (run_dir / name).exists()]
    if taken:
        raise FileExistsError(f"run directory {run_dir} already holds a run ({', '.join(taken)}); use --resume "
                              f"to continue it, or choose another run.name (--set run.name=NAME)")


def _load_for_resume(ckpt_dir: Path, dist_info: DistInfo = DistInfo()):
    try:
        return load_checkpoint(ckpt_dir, "last")
    except FileNotFoundError:
        shared = (" (every process reads it: with several nodes, run.out_dir must be on a filesystem they all "
                  "share)" if dist_info.enabled else "")
        raise FileNotFoundError(f"nothing to resume: no checkpoint 'last' in {ckpt_dir}{shared}") from None


def check_resume_config(saved_config: dict, cfg: Config, where) -> None:
    """Refuse to resume when anything but run/bookkeeping keys differs from the checkpoint's config."""
    saved = config_from_dict(saved_config, where=f"config stored in {where}")
    diffs = config_diff(saved, cfg, ignore=RESUME_MAY_DIFFER)
    if diffs:
        listed = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in diffs)
        raise ValueError(f"cannot resume from {where}: the config differs in {listed}. Resume with the same "
                         f"settings (only {', '.join(RESUME_MAY_DIFFER)} may change) or start a new run.name")
