"""One training run: its state (`TrainState`, `Run`), how it is set up from a config (`setup_run`), and its
checkpoint: `save_run` writes checkpoints/last (and best), and `load_run`, next to it, reads the same keys back
as a `Checkpoint` record that `setup_run` restores for a resume (file layout: deepres.core.checkpoint).
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn as nn
import yaml
from safetensors import safe_open

from deepres.core.checkpoint import (capture_rng_state, checkpoint_paths, load_checkpoint, repair_checkpoints,
                                     restore_rng_state, save_checkpoint)
from deepres.core.config import RESUME_MAY_DIFFER, Config, config_diff, config_from_dict, config_to_dict
from deepres.core.device import AmpChoice, keep_freed_memory, resolve_amp, seed_everything, set_deterministic
from deepres.core.distributed import DistInfo, raise_if_any_failed, same_on_all_ranks
from deepres.core.runs import CONFIG_FILE, METRICS_FILE, RunLock, RunRecorder, lock_run_dir
from deepres.data import DataInfo, build_loaders
from deepres.models.base import freeze_stages
from deepres.tasks import Task, task_of
from deepres.tasks.build import build_model, load_initial_weights, load_model, resolve_config

from .compiled_bn import use_inductor_batch_norm
from .distill import read_teacher_logits
from .ema import ModelEMA
from .interrupts import StopRequest
from .optim import create_optimizer, scaled_lr

@dataclass
class TrainState:
    """The loop's counters; all but nonfinite_streak are saved in checkpoints (save_run / load_run)."""
    step: int = 0  # optimizer steps taken, skipped non-finite ones included
    epoch: int = 0  # epochs completed
    best: float = -1.0  # best value of the task's best_metric so far; -1 = not evaluated yet
    best_epoch: int = 0
    metrics: dict = field(default_factory=dict)  # the last evaluation (the task's evaluate)
    last_finite_loss: float = math.nan
    last_finite_step: int = -1
    nonfinite_streak: int = 0  # non-finite losses in a row (optimizer steps); a resumed run starts afresh
    # Where a checkpoint saved mid-epoch (an interrupt, train.checkpoint_every_iters) stands in epoch `epoch`:
    # micro-batches already trained, which a resume skips, and the batch-mixing generator's state after them
    batches_done: int = 0
    mix_rng: dict | None = None  # numpy bit_generator.state; None = fresh from (seed, epoch)


@dataclass
class Run:
    """One training run as fit holds it (built by setup_run); train_one_epoch needs only the first six fields."""
    cfg: Config  # resolved against the data (model.num_classes, in_chans)
    device: torch.device
    model: nn.Module  # the bare model: checkpoints, the EMA and evaluation use it
    optimizer: torch.optim.Optimizer
    task: Task
    train_loader: Iterable  # this rank's shard; len() = micro-batches per epoch
    train_model: nn.Module | None = None  # what the step calls: the model under DDP / torch.compile; None = model
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    ema: ModelEMA | None = None
    state: TrainState = field(default_factory=TrainState)
    dist: DistInfo = DistInfo()
    eval_loader: Iterable | None = None
    data: DataInfo | None = None
    recorder: RunRecorder | None = None  # rank 0 only
    lock: RunLock | None = None  # rank 0's claim on the run directory (setup_run takes it, fit releases it)
    progress: bool = False  # tqdm bar per epoch
    resumed: bool = False  # setup_run restored checkpoints/last into it
    stop: StopRequest = field(default_factory=StopRequest)  # set by SIGINT/SIGTERM (fit) to stop at the next step
    log: Callable[[str], None] | None = None  # progress lines when the bar is off (rank 0; set by fit)
    # the autocast precision this run computes in: cfg.train.amp resolved on this device, with its reason (the
    # start line and env.json say it)
    amp: AmpChoice = AmpChoice("none", "as asked")

    def __post_init__(self):
        if self.train_model is None:
            self.train_model = self.model

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.out_dir) / self.cfg.run.name

    @property
    def iters_per_epoch(self) -> int:
        return math.ceil(len(self.train_loader) / self.cfg.train.grad_accum_steps)

    @property
    def total_iters(self) -> int:
        t = self.cfg.train
        return t.max_iters if t.max_iters > 0 else t.epochs * self.iters_per_epoch

    @property
    def global_batch(self) -> int:  # images per optimizer step: all ranks, all accumulated micro-batches
        return self.cfg.data.batch_size * self.dist.world_size * self.cfg.train.grad_accum_steps

    @property
    def peak_lr(self) -> float:  # the lr the schedule starts from, scaled by the global batch per optim.lr_scaling
        return scaled_lr(self.cfg.optim, self.global_batch)


def setup_run(cfg: Config, *, resume: bool = False, device: torch.device, loaders=None,
              dist: DistInfo = DistInfo(), log: Callable[[str], None] = print) -> Run:
    """The run fit trains: data, the config resolved against it, model, optimizer, EMA, task, recorder (rank 0);
    with `resume`, checkpoints/last restored into them (repaired first when a killed save left it torn), RNG
    states last (a run stopped before its first checkpoint has none: it starts from step 0, with the config its
    config.yaml holds). Every rank calls it; `log` gets what was repaired.

    Rank 0 claims the run directory (core.runs.lock_run_dir) for the Run it returns (Run.lock; fit releases it):
    at once when the directory exists, before anything reads or repairs it; else when it creates the directory,
    after everything a bad config or input can fail (so a refused run leaves nothing behind). A run there that
    stopped before its first checkpoint or metrics record (a bad input on its first batch) is replaced, new or
    resumed, with a line saying so: it has nothing to keep, and its config may be the one that failed."""
    held: list[RunLock] = []
    try:
        run = _setup_run(cfg, resume, device, loaders, dist, log, held)
    except BaseException:
        for lock in held:
            lock.release()
        raise
    run.lock = held[0] if held else None
    return run


def _setup_run(cfg: Config, resume: bool, device: torch.device, loaders, dist: DistInfo, log: Callable[[str], None],
               held: list[RunLock]) -> Run:
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    ckpt_dir = run_dir / "checkpoints"
    error = None
    try:
        if dist.is_main and run_dir.is_dir():
            _claim(run_dir, held, log)
        # rank 0 completes pairs and removes temp files that killed saves left; the others wait for it
        for line in repair_checkpoints(ckpt_dir) if resume and dist.is_main else ():
            log(line)
    except Exception as e:
        error = e
    raise_if_any_failed(error)
    found = resume and any(p.exists() for p in checkpoint_paths(ckpt_dir, "last"))
    same_on_all_ranks(int(found), f"whether {ckpt_dir} holds a checkpoint 'last' (1) or not (0)",
                      "every process reads it: with several nodes, run.out_dir must be on a filesystem they all share")
    saved, replace_unstarted, error = None, False, None
    try:
        saved, cfg, loaders, replace_unstarted = _prepare(cfg, resume, found, device, loaders, dist)
    except Exception as e:  # may happen on one rank only: every rank must learn of it, or the others wait forever
        error = e
    raise_if_any_failed(error)
    train_loader, eval_loader, data = loaders
    same_on_all_ranks(len(train_loader), "batches per epoch (len(train_loader))")
    t = cfg.train
    if device.type == "cpu":
        keep_freed_memory()  # large activations and gradients reused, not page-faulted in at every step
    model = build_model(cfg, device)
    if saved is None and cfg.model.pretrained:  # a new run starts from these weights (a resume, from its own)
        report = load_initial_weights(model, cfg.model.pretrained)
        log(f"model.pretrained: loaded {cfg.model.pretrained}" + (
            f" (left at init: {', '.join(report['dropped'])})" if report["dropped"] else ""))
    if cfg.model.frozen_stages >= 0:  # before the optimizer, which takes only trainable parameters
        frozen = freeze_stages(model, cfg.model.frozen_stages)
        log(f"model.frozen_stages={cfg.model.frozen_stages}: {frozen:,} parameters frozen")
    if t.sync_bn and dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same state-dict keys as BatchNorm
    amp = resolve_amp(t.amp, device)  # train.amp=auto: bf16 where the device computes it natively, else fp32
    if amp.emulated:
        log(f"warning: train.amp={amp.reason}")
    task = task_of(cfg.data).from_config(cfg)  # it resolves train.amp on the model's device the same way
    if (t.kd_teacher or t.kd_logits) and not task.labels_images:
        raise ValueError(f"train.kd_teacher / kd_logits: knowledge distillation is for classification, not "
                         f"data.name={cfg.data.name}")
    error = None
    try:  # each rank reads the teacher (a file one node cannot see fails there): every rank must learn of it
        if t.kd_teacher:  # online distillation: the teacher, frozen, on the training device
            teacher = load_model(t.kd_teacher).model.to(device).eval().requires_grad_(False)
            task = replace(task, teacher=teacher)
        if t.kd_logits:  # offline distillation: the stored logits of this run's training images, checked whole
            stored = read_teacher_logits(t.kd_logits, num_images=data.train_size, classes=data.classes)
            task = replace(task, teacher_logits=stored.to(device))
    except Exception as e:
        error = e
    raise_if_any_failed(error)
    run = Run(cfg=cfg, device=device, model=model, optimizer=create_optimizer(model, cfg.optim),
              task=task, train_loader=train_loader, eval_loader=eval_loader, data=data,
              scaler=torch.amp.GradScaler("cuda") if amp.amp == "fp16" else None, amp=amp,
              ema=ModelEMA(model, t.ema_decay) if t.ema_decay > 0 else None, dist=dist,
              progress=t.progress and sys.stderr.isatty() and dist.is_main, resumed=saved is not None)
    if saved is not None:
        restore_run(run, saved)
    if dist.enabled:  # checkpoints and evaluation use the bare run.model
        run.train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    missing = _cpu_compiler_missing() if t.compile and device.type == "cpu" else ""
    if missing:  # a recipe that compiles still trains on a machine without a C++ compiler, at eager speed
        log(f"train.compile: off for this run, {missing} (inductor builds its CPU code with one: install g++)")
    elif t.compile:
        if t.inductor_bn and device.type == "cpu":
            swapped = use_inductor_batch_norm(model)
            log(f"train.inductor_bn: {swapped} BatchNorm2d layers use the inductor-friendly training form")
        run.train_model = torch.compile(run.train_model)
    error = None
    try:
        if dist.is_main:
            if not held:  # no directory when setup began: created and claimed only now
                run_dir.mkdir(parents=True, exist_ok=True)
                _claim(run_dir, held, log)
                if _run_files(run_dir):
                    raise FileExistsError(f"run directory {run_dir} was filled by another process while this run "
                                          f"was being set up; use --resume to continue that run, or choose another "
                                          f"run.name (--set run.name=NAME)")
            elif replace_unstarted:
                removed = _remove_run_files(run_dir)
                log(f"run directory {run_dir}: replacing the run there, which stopped before its first checkpoint "
                    f"or metrics record: removed {', '.join(removed)}")
            run.recorder = RunRecorder(run.run_dir, config_to_dict(cfg), resume=resume)
    except Exception as e:
        error = e
    raise_if_any_failed(error)
    if saved is not None:  # last: everything above may have drawn random numbers
        _restore_rng(saved.rng, device, dist.enabled)
    return run


def _claim(run_dir: Path, held: list[RunLock], log: Callable[[str], None]) -> None:
    lock = lock_run_dir(run_dir)
    held.append(lock)
    if lock.warning:
        log(f"warning: {lock.warning}")


# The files a run writes in its directory (core.runs.RunRecorder, save_run); what an unstarted run's replacement
# removes. Anything else there (a user's notes) is left alone.
RUN_FILES = ("config.yaml", "config.resume*.yaml", METRICS_FILE, "env.json", "curves.png", "events.out.tfevents.*",
             "checkpoints")


def _run_files(run_dir: Path) -> list[Path]:
    return sorted({path for pattern in RUN_FILES for path in run_dir.glob(pattern)})


def _run_started(run_dir: Path) -> bool:
    """Whether the run in `run_dir` got anywhere: any file under checkpoints/, or a complete metrics record."""
    ckpt_dir = run_dir / "checkpoints"
    if ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
        return True
    metrics = run_dir / METRICS_FILE
    # an unterminated last line is a write the kill cut short, not a record
    return metrics.is_file() and bool(metrics.read_bytes().rpartition(b"\n")[0].strip())


def _remove_run_files(run_dir: Path) -> list[str]:
    """Remove an unstarted run's own files (its checkpoints/ folder is empty); returns their names."""
    removed = []
    for path in _run_files(run_dir):
        if path.is_dir():
            path.rmdir()  # empty, or the run had started: never a tree
        else:
            path.unlink()
        removed.append(path.name)
    return removed


def _cpu_compiler_missing() -> str:
    """Why torch.compile cannot build CPU code on this machine ('' when it can): inductor needs a C++ compiler."""
    try:  # here, not at the top: torch._inductor takes ~1 s to import and only compiling runs need it
        from torch._inductor.cpp_builder import get_cpp_compiler
        from torch._inductor.exc import InvalidCxxCompiler
    except ImportError:  # another torch layout: torch.compile reports any problem itself
        return ""
    try:
        get_cpp_compiler()
    except InvalidCxxCompiler as e:
        return str(e)
    return ""


def _prepare(cfg: Config, resume: bool, found: bool, device: torch.device, loaders, dist: DistInfo):
    """Everything before the model: checkpoint, seeds, data, the resolved config, and whether the run directory
    holds a run that stopped before recording anything (replaced when this one starts); may fail on one rank only."""
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    saved, replace_unstarted = None, False
    if found:
        saved = load_run(run_dir / "checkpoints", task_of(cfg.data).best_metric, dist)  # every rank reads it
    elif _run_files(run_dir):
        replace_unstarted = not _run_started(run_dir)
        if not replace_unstarted and not resume:
            taken = [name for name in ("checkpoints", CONFIG_FILE, METRICS_FILE) if (run_dir / name).exists()]
            raise FileExistsError(f"run directory {run_dir} already holds a run ({', '.join(taken)}); use --resume "
                                  f"to continue it, or choose another run.name (--set run.name=NAME)")
    seed_everything(cfg.train.seed)
    set_deterministic(cfg.train.deterministic, device)
    if cfg.train.sync_bn and dist.enabled and device.type != "cuda":
        raise ValueError(f"train.sync_bn needs CUDA (torch.nn.SyncBatchNorm); this run is on {device.type}: "
                         f"set train.sync_bn=false")
    if loaders is None:
        loaders = build_loaders(cfg.data, device, seed=cfg.train.seed, rank=dist.rank, world_size=dist.world_size)
    cfg = resolve_config(cfg, loaders[2])
    if saved is not None:
        where = run_dir / "checkpoints"
        cfg = keep_stored_amp(saved.config, cfg)
        check_resume_config(saved.config, cfg, where)
        if saved.world_size != dist.world_size:
            raise ValueError(f"cannot resume from {where}: it was trained by {saved.world_size} process(es), "
                             f"this run has {dist.world_size}; the data shards and the global batch depend "
                             f"on it, so resume with the same number of processes")
    elif resume and not replace_unstarted:  # steps recorded, none saved: what was started must still start
        stored = run_dir / CONFIG_FILE
        text = stored.read_text() if stored.is_file() else ""
        if text.strip():
            cfg = keep_stored_amp(yaml.safe_load(text), cfg)
            check_resume_config(yaml.safe_load(text), cfg, stored)
    return saved, cfg, loaders, replace_unstarted


def keep_stored_amp(saved_config: dict, cfg: Config) -> Config:
    """train.amp=auto resuming a run that stored a precision of its own (a run from before auto was the default, whose
    recipe left amp out, stored 'none'): the run goes on in the stored one, so an old recipe still resumes exactly."""
    stored = (saved_config.get("train") or {}).get("amp") if isinstance(saved_config, dict) else None
    if cfg.train.amp == "auto" and stored in ("none", "bf16", "fp16"):
        return replace(cfg, train=replace(cfg.train, amp=stored))
    return cfg


def check_resume_config(saved_config: dict, cfg: Config, where) -> None:
    """Refuse to resume when anything but run/bookkeeping keys differs from the checkpoint's config."""
    saved = config_from_dict(saved_config, where=f"config stored in {where}")
    diffs = config_diff(saved, cfg, ignore=RESUME_MAY_DIFFER)
    if diffs:
        listed = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in diffs)
        raise ValueError(f"cannot resume from {where}: the config differs in {listed}. Resume with the same "
                         f"settings (only {', '.join(RESUME_MAY_DIFFER)} may change) or start a new run.name")


# ------------------------------------------------------------------------------------------- checkpoints


@dataclass
class Checkpoint:
    """checkpoints/last read back for a resume: the fields of `<name>.state.pt` that save_run writes."""
    weights: dict[str, torch.Tensor]  # the bare model's state_dict (<name>.safetensors)
    state: TrainState
    optimizer: dict
    scaler: dict | None  # GradScaler (fp16)
    ema: dict | None
    rng: dict  # capture_rng_state() of rank 0, plus "cuda_device": its own CUDA generator
    world_size: int  # processes that trained it; a resume must use as many
    config: dict  # the resolved config it was trained with


def save_run(run: Run, *, best: bool) -> None:
    """Write checkpoints/last (and best): the bare model, and the training state under the keys load_run reads."""
    s = run.state
    payload = {
        "step": s.step, "epoch": s.epoch, f"best_{run.task.best_metric}": s.best, "best_epoch": s.best_epoch,
        "last_finite_loss": s.last_finite_loss, "last_finite_step": s.last_finite_step,
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "rng": _capture_rng(run.device),
        "metrics": dict(s.metrics),
        "world_size": run.dist.world_size,
        # position inside epoch `epoch` (0 and None at epoch ends; older checkpoints lack both: 0)
        "batches_done": s.batches_done,
        "mix_rng": json.dumps(s.mix_rng) if s.mix_rng is not None else None,
    }
    save_checkpoint(run.run_dir / "checkpoints", "last", model=run.model, state=payload, config=config_to_dict(run.cfg),
                    classes=list(run.data.classes), also=("best",) if best else ())


def load_run(ckpt_dir: Path, best_metric: str, dist: DistInfo = DistInfo()) -> Checkpoint:
    """checkpoints/last as written by save_run (classification's best top-1 is under "best_top1", as always)."""
    try:
        weights, p = load_checkpoint(ckpt_dir, "last")
    except FileNotFoundError:
        shared = (" (every process reads it: with several nodes, run.out_dir must be on a filesystem they all "
                  "share)" if dist.enabled else "")
        raise FileNotFoundError(f"nothing to resume: no checkpoint 'last' in {ckpt_dir}{shared}") from None
    state = TrainState(step=p["step"], epoch=p["epoch"], best=p[f"best_{best_metric}"], best_epoch=p["best_epoch"],
                       last_finite_loss=p["last_finite_loss"], last_finite_step=p["last_finite_step"],
                       metrics=dict(p.get("metrics") or {}), batches_done=int(p.get("batches_done", 0)),
                       mix_rng=json.loads(p["mix_rng"]) if p.get("mix_rng") else None)
    return Checkpoint(weights=weights, state=state, optimizer=p["optimizer"], scaler=p.get("scaler"), ema=p["ema"],
                      rng=p["rng"], world_size=int(p.get("world_size", 1)), config=p["config"])


def restore_run(run: Run, saved: Checkpoint) -> None:
    """Load a Checkpoint into the run's model, optimizer, GradScaler, EMA and state (RNG: _restore_rng)."""
    run.model.load_state_dict(saved.weights)
    run.optimizer.load_state_dict(saved.optimizer)
    if run.scaler is not None and saved.scaler is not None:
        run.scaler.load_state_dict(saved.scaler)
    if run.ema is not None:
        run.ema.load_state_dict(saved.ema)
    run.state = saved.state


def _capture_rng(device: torch.device) -> dict:
    rng = capture_rng_state()
    if device.type == "cuda":
        # This process's own device: under DDP, rank k restores it into its device k (see _restore_rng).
        rng["cuda_device"] = torch.cuda.get_rng_state(device)
    return rng


def _restore_rng(rng: dict, device: torch.device, distributed: bool) -> None:
    """Restore rank 0's saved RNG states on this rank.

    Every rank seeds the same way and draws the same random numbers (dropout masks of equal shapes; data
    randomness comes from the loaders' own (seed, epoch, rank) generators), so rank 0's state is every rank's."""
    if distributed and "cuda_device" in rng:
        rng = {k: v for k, v in rng.items() if k != "cuda"}  # another node may see other devices: own one only
    restore_rng_state(rng)
    if device.type == "cuda" and "cuda_device" in rng:
        torch.cuda.set_rng_state(rng["cuda_device"], device)


# ------------------------------------------------------------------------------------------- run directory


def stored_run_config(run_dir: str | Path) -> Config:
    """The config the run in `run_dir` continues with (`deepres train --resume RUN_DIR`): the one its checkpoint
    'last' was saved with (resume-safe changes made by earlier resumes included), else its config.yaml; run.out_dir
    and run.name name `run_dir` itself, wherever it has been moved since."""
    run_dir = Path(run_dir)
    weights = checkpoint_paths(run_dir / "checkpoints", "last")[0]
    stored, where = None, weights
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            stored = json.loads((f.metadata() or {})["config"])
    except Exception:  # none yet, or torn by a kill: config.yaml says the same, and the resume repairs or reports it
        stored = None
    if not isinstance(stored, dict):
        where = run_dir / CONFIG_FILE
        if not where.is_file():
            raise FileNotFoundError(f"{run_dir} holds no run to resume (no {CONFIG_FILE})")
        try:
            stored = yaml.safe_load(where.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{where}: not valid YAML ({' '.join(str(e).split())})") from None
        if not isinstance(stored, dict):
            raise ValueError(f"{where}: expected the run's config (a mapping), got {type(stored).__name__}")
    cfg = config_from_dict(stored, where=f"config stored in {where}")
    return replace(cfg, run=replace(cfg.run, out_dir=str(run_dir.parent), name=run_dir.name))
