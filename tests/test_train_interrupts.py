"""Issue 11, every interrupted run restarts: a run stopped before its first checkpoint, SIGTERM / Ctrl-C
mid-epoch, leftover and half-renamed checkpoint files, and what the loop says while it runs."""
import signal
import threading

import pytest
import torch
from train_fakes import EventAt, raise_, send_signal, tiny_loaders

from deepres.core.checkpoint import load_checkpoint
from deepres.core.config import validate_config
from deepres.core.errors import TrainingInterrupted
from deepres.train.loop import fit

from test_train_loop import quiet, tiny_config


def failing_loaders(after):
    train, test, info = tiny_loaders()
    return EventAt(train, after, raise_(OSError("bad image: broken.jpg"))), test, info


def same_weights(a_dir, b_dir):
    a, _ = load_checkpoint(a_dir / "checkpoints")
    b, _ = load_checkpoint(b_dir / "checkpoints")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ 1. stopped before the first checkpoint


def test_resume_starts_a_run_stopped_before_its_first_checkpoint(tmp_path):
    extras = dict(deterministic=True, epochs=2)
    fit(tiny_config(tmp_path, "straight", **extras), loaders=tiny_loaders(), device="cpu", log=quiet)
    with pytest.raises(OSError, match="bad image"):
        fit(tiny_config(tmp_path, **extras), loaders=failing_loaders(after=2), device="cpu", log=quiet)
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and not (run / "checkpoints" / "last.state.pt").exists()
    with pytest.raises(FileExistsError, match="already holds a run.*--resume"):  # a plain rerun still refuses
        fit(tiny_config(tmp_path, **extras), loaders=tiny_loaders(), device="cpu", log=quiet)
    changed = tiny_config(tmp_path, **extras)
    changed.optim.lr = 0.05
    with pytest.raises(ValueError, match="optim.lr"):  # a differing config is refused, checkpoint or not
        fit(changed, loaders=tiny_loaders(), device="cpu", resume=True, log=quiet)
    lines = []
    result = fit(tiny_config(tmp_path, **extras), loaders=tiny_loaders(), device="cpu", resume=True,
                 log=lines.append)
    assert result["finished"] and result["step"] == 8
    said = [line for line in lines if "no checkpoint" in line]
    assert len(said) == 1 and "starting" in said[0], lines
    assert same_weights(tmp_path / "straight", run)


def test_resume_of_a_run_that_never_started_starts_it(tmp_path):
    # the SLURM recipe passes --resume to the first job as well as to the requeued ones
    result = fit(tiny_config(tmp_path, epochs=1), loaders=tiny_loaders(), device="cpu", resume=True, log=quiet)
    assert result["finished"] and (tmp_path / "run" / "checkpoints" / "last.state.pt").is_file()


# ------------------------------------------------------------------------- 2. SIGTERM / Ctrl-C mid-epoch


EXACT = dict(deterministic=True, ema_decay=0.9, mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1,
             grad_accum_steps=2, epochs=3)


def eight_batch_loaders():  # 8 micro-batches, 4 optimizer steps per epoch
    return tiny_loaders(n_train=128)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_epoch_saves_last_and_the_resume_is_bit_identical(tmp_path, signum, code):
    fit(tiny_config(tmp_path, "straight", **EXACT), loaders=eight_batch_loaders(), device="cpu", log=quiet)
    before = signal.getsignal(signum)
    train, test, info = eight_batch_loaders()
    lines = []
    with pytest.raises(TrainingInterrupted) as stopped:
        fit(tiny_config(tmp_path, **EXACT), loaders=(EventAt(train, 2, send_signal(signum), epoch=1), test, info),
            device="cpu", log=lines.append)
    assert stopped.value.exit_code == code
    assert signal.getsignal(signum) is before  # the previous handler is back
    # the signal came during micro-batch 2 of epoch 2: the step of micro-batches 2 and 3 finished, then it stopped
    _, state = load_checkpoint(tmp_path / "run" / "checkpoints")
    assert (state["step"], state["epoch"], state["batches_done"]) == (6, 1, 4)
    assert any("--resume" in line and "deepres train" in line for line in lines), lines
    resumed = fit(tiny_config(tmp_path, **EXACT), loaders=eight_batch_loaders(), device="cpu", resume=True, log=quiet)
    assert resumed["finished"] and resumed["step"] == 12 and resumed["epoch"] == 3
    assert same_weights(tmp_path / "straight", tmp_path / "run")
    _, a = load_checkpoint(tmp_path / "straight" / "checkpoints")
    _, b = load_checkpoint(tmp_path / "run" / "checkpoints")
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])


def test_checkpoint_every_iters_saves_mid_epoch_and_a_crash_resumes_from_there(tmp_path):
    fit(tiny_config(tmp_path, "straight", **EXACT), loaders=eight_batch_loaders(), device="cpu", log=quiet)
    train, test, info = eight_batch_loaders()
    with pytest.raises(OSError, match="bad image"):  # a crash after step 7 (epoch 2, micro-batch 6)
        fit(tiny_config(tmp_path, **EXACT, checkpoint_every_iters=3),
            loaders=(EventAt(train, 6, raise_(OSError("bad image: broken.jpg")), epoch=1), test, info), device="cpu",
            log=quiet)
    _, state = load_checkpoint(tmp_path / "run" / "checkpoints")
    assert (state["step"], state["epoch"], state["batches_done"]) == (6, 1, 4)
    fit(tiny_config(tmp_path, **EXACT), loaders=eight_batch_loaders(), device="cpu", resume=True, log=quiet)
    assert same_weights(tmp_path / "straight", tmp_path / "run")
    with pytest.raises(ValueError, match="checkpoint_every_iters"):
        validate_config(tiny_config(tmp_path, checkpoint_every_iters=-1))


def test_fit_in_a_worker_thread_installs_no_signal_handler(tmp_path):
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(fit(tiny_config(tmp_path, epochs=1),
                                                                loaders=tiny_loaders(), device="cpu", log=quiet)))
    worker.start()
    worker.join()
    assert outcome.get("finished")


# ------------------------------------------------------------------------ 3. what killed saves leave behind


def test_leftover_temp_files_are_removed_when_the_run_resumes(tmp_path):
    fit(tiny_config(tmp_path, epochs=2), loaders=tiny_loaders(), device="cpu", stop_after_epochs=1, log=quiet)
    checkpoints = tmp_path / "run" / "checkpoints"
    for i in range(30):  # 30 kills during a save
        (checkpoints / f".last.safetensors.{i:06d}.tmp").write_bytes(b"\0" * 1000)
        (checkpoints / f".best.state.pt.{i:06d}.tmp").write_bytes(b"\0" * 1000)
    fit(tiny_config(tmp_path, epochs=2), loaders=tiny_loaders(), device="cpu", resume=True, log=quiet)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.safetensors", "best.state.pt",
                                                             "last.safetensors", "last.state.pt"]


def test_a_resume_repairs_a_last_pair_torn_by_a_kill_between_its_renames(tmp_path):
    fit(tiny_config(tmp_path, "straight", **EXACT), loaders=eight_batch_loaders(), device="cpu", log=quiet)
    fit(tiny_config(tmp_path, **EXACT), loaders=eight_batch_loaders(), device="cpu", stop_after_epochs=1, log=quiet)
    checkpoints = tmp_path / "run" / "checkpoints"
    older = {p.name: p.read_bytes() for p in checkpoints.glob("last.*")}
    fit(tiny_config(tmp_path, **EXACT), loaders=eight_batch_loaders(), device="cpu", resume=True,
        stop_after_epochs=2, log=quiet)
    # kill -9 between the renames of the epoch-2 save: its state is in place, its weights still in the temp file
    (checkpoints / "last.safetensors").replace(checkpoints / ".last.safetensors.a1b2c3.tmp")
    (checkpoints / "last.safetensors").write_bytes(older["last.safetensors"])
    lines = []
    fit(tiny_config(tmp_path, **EXACT), loaders=eight_batch_loaders(), device="cpu", resume=True, log=lines.append)
    assert any("completed it (step 8)" in line for line in lines), lines
    assert same_weights(tmp_path / "straight", tmp_path / "run")


# ------------------------------------------------------------------------------ 4. what the loop tells you


def test_a_warmup_longer_than_the_run_is_one_warning_line(tmp_path):
    cfg = tiny_config(tmp_path, epochs=1)
    cfg.schedule.warmup_iters = 10
    lines = []
    fit(cfg, loaders=tiny_loaders(), device="cpu", log=lines.append)
    warned = [line for line in lines if "warmup_iters" in line]
    assert len(warned) == 1 and "schedule.warmup_iters=10" in warned[0] and "4 steps" in warned[0], lines
    lines.clear()
    fit(tiny_config(tmp_path, "fine", epochs=1), loaders=tiny_loaders(), device="cpu", log=lines.append)
    assert not [line for line in lines if "warmup_iters" in line]


@pytest.mark.parametrize("progress", [True, False])  # True: stderr is no terminal under pytest, the bar is off
def test_without_a_bar_the_epoch_prints_plain_progress_lines(tmp_path, progress):
    lines = []
    fit(tiny_config(tmp_path, epochs=2, log_every_iters=2, progress=progress), loaders=tiny_loaders(), device="cpu",
        log=lines.append)
    steps = [line for line in lines if line.startswith("epoch ") and " step " in line and "img/s" in line
             and "/" in line.split(" step ")[1].split()[0]]
    assert [line.split(" step ")[1].split()[0] for line in steps] == ["2/8", "4/8", "6/8", "8/8"], lines
    assert all(" loss " in line and " lr " in line for line in steps)


def test_slow_steps_print_a_progress_line_at_least_every_minute(tmp_path, monkeypatch):
    import deepres.train.loop

    def step_lines(name):
        lines = []
        fit(tiny_config(tmp_path, name, epochs=1, log_every_iters=100), loaders=tiny_loaders(), device="cpu",
            log=lines.append)
        return [line for line in lines if " step " in line and "img/s" in line and "/4 " in line]

    assert step_lines("fast") == []  # 4 quick steps, no log_every_iters boundary: nothing to say
    monkeypatch.setattr(deepres.train.loop._ProgressLines.__init__, "__defaults__", (0.0,))  # "a minute" = 0 s
    assert len(step_lines("slow")) == 4
