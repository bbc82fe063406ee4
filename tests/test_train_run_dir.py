"""One run directory, one process: a second fit or `deepres train` on a run in progress is refused naming the holder,
a run that failed before its first step is replaced by the fixed command, and the stop hint is a command that
continues the same run (`deepres train --resume RUN_DIR`, which reads the run's stored config)."""
import json
import os
import shlex
import signal
import socket
import threading

import pytest
from test_runs import hold_lock
from test_train_cli import recipe
from test_train_loop import quiet, tiny_config
from train_fakes import EventAt, raise_, send_signal, tiny_loaders

from deepres.cli import main
from deepres.train.loop import fit


def epoch_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines if json.loads(line)["kind"] == "epoch"]


def files(run_dir):
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- 1. one process per run directory


def test_a_second_fit_on_a_run_in_progress_is_refused_and_changes_nothing(tmp_path):
    """Two fits in one process (threads): a resume and a fresh start of the same run.name while it trains."""
    fit(tiny_config(tmp_path, epochs=3), loaders=tiny_loaders(), device="cpu", stop_after_epochs=1, log=quiet)
    run = tmp_path / "run"
    inside, go_on = threading.Event(), threading.Event()

    def pause():  # the first fit stops inside epoch 2 until the test lets it go on
        inside.set()
        assert go_on.wait(60)

    train, test, info = tiny_loaders()
    outcome = {}
    first = threading.Thread(target=lambda: outcome.update(fit(
        tiny_config(tmp_path, epochs=3), loaders=(EventAt(train, 1, pause, epoch=1), test, info), device="cpu",
        resume=True, log=quiet)))
    first.start()
    try:
        assert inside.wait(60)
        during = files(run)
        for resume in (True, False):
            with pytest.raises(FileExistsError) as refused:
                fit(tiny_config(tmp_path, epochs=3), loaders=tiny_loaders(), device="cpu", resume=resume, log=quiet)
            message = str(refused.value)
            assert f"in use by pid {os.getpid()} on {socket.gethostname()}" in message and str(run) in message
        assert files(run) == during  # the refused runs wrote nothing
    finally:
        go_on.set()
        first.join(120)
    assert outcome["finished"] and outcome["epoch"] == 3
    assert epoch_records(run) == [1, 2, 3]  # one run's records, not two
    assert not (run / ".lock").exists()  # released with the run


def test_deepres_train_on_a_locked_run_exits_2_naming_the_holder_and_a_killed_holder_frees_it(tmp_path, capsys):
    args = ["train", str(recipe(tmp_path)), "--out", str(tmp_path / "runs")]
    assert main([*args, "--max-epochs", "1"]) == 0
    run = tmp_path / "runs" / "tiny"
    holder = hold_lock(run)  # another `deepres train --resume` of this run, still training
    before = files(run)
    try:
        capsys.readouterr()
        for extra in (["--resume"], ["--resume", "--set", "train.log_every_iters=1"], []):
            assert main([*args, *extra]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"in use by pid {holder.pid} on {socket.gethostname()}" in err, err
        assert files(run) == before
    finally:
        holder.kill()  # kill -9 (or a SLURM requeue): the lock goes with the process
        holder.wait()
    assert main([*args, "--resume"]) == 0
    assert epoch_records(run) == [1, 2]


# ------------------------------------------------- 2. a run that failed before its first step


def test_a_run_that_failed_before_its_first_step_is_replaced_by_the_fixed_command(tmp_path):
    def fails_at_once():
        train, test, info = tiny_loaders()
        return EventAt(train, 0, raise_(OSError("bad mask: 0001.png"))), test, info

    for resume in (False, True):  # rerun as it was, or with --resume and a changed setting
        name = f"resume{int(resume)}"
        with pytest.raises(OSError, match="bad mask"):
            fit(tiny_config(tmp_path, name, epochs=1), loaders=fails_at_once(), device="cpu", log=quiet)
        run = tmp_path / name
        assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").read_text() == ""
        (run / "notes.txt").write_text("mine")
        fixed = tiny_config(tmp_path, name, epochs=1)
        fixed.optim.lr = 0.1
        lines = []
        result = fit(fixed, loaders=tiny_loaders(), device="cpu", resume=resume, log=lines.append)
        assert result["finished"] and epoch_records(run) == [1]
        said = [line for line in lines if "replac" in line]
        assert len(said) == 1 and str(run) in said[0], lines
        assert "before its first checkpoint or metrics record" in said[0], said
        assert "lr: 0.1" in (run / "config.yaml").read_text() and not list(run.glob("config.resume*"))
        assert (run / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


# -------------------------------------------------------------------------------- 3. the stop hint


def test_the_stop_hint_is_a_command_that_continues_the_same_run(tmp_path, capsys, monkeypatch):
    import deepres.train.run

    build = deepres.train.run.build_loaders

    def sigterm_in_epoch_2(*args, **kwargs):
        train, test, info = build(*args, **kwargs)
        return EventAt(train, 1, send_signal(signal.SIGTERM), epoch=1), test, info

    out = tmp_path / "runs"
    args = ["train", str(recipe(tmp_path)), "--out", str(out), "--set", "optim.lr=0.05", "--set", "run.name=exp"]
    with monkeypatch.context() as m:
        m.setattr(deepres.train.run, "build_loaders", sigterm_in_epoch_2)
        assert main(args) == 143
    said = [line for line in capsys.readouterr().out.splitlines() if "stopped by SIGTERM" in line]
    assert len(said) == 1, said
    hint = said[0].split("`")[1]
    assert hint == f"deepres train --resume {shlex.quote(str(out / 'exp'))}", said[0]
    assert main(shlex.split(hint)[1:]) == 0  # run literally: the --set overrides come from the run itself
    printed = capsys.readouterr().out
    assert "resuming after epoch 1" in printed and "exp: finished" in printed, printed
    assert sorted(p.name for p in out.iterdir()) == ["exp"] and epoch_records(out / "exp") == [1, 2]


def test_resume_of_a_run_directory_reads_its_config_and_keeps_resume_safe_overrides(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", str(recipe(tmp_path)), "--out", str(out), "--set", "optim.lr=0.05", "--set",
                 "run.name=exp", "--max-epochs", "1"]) == 0
    run = out / "exp"
    printed = capsys.readouterr().out
    assert f"continue with `deepres train --resume {run}`" in printed, printed
    assert main(["train", "--resume", str(run), "--set", "optim.lr=0.1"]) == 2  # not a resume-safe change
    assert "optim.lr: checkpoint 0.05, now 0.1" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--out", str(tmp_path / "elsewhere")]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["train", str(run)]) == 2  # a run directory is not a recipe
    assert f"deepres train --resume {run}" in capsys.readouterr().err
    assert main(["train", str(run), "--resume", "--set", "train.log_every_iters=1"]) == 0
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["kind"] == "step"][-4:] == [5, 6, 7, 8]  # every step from epoch 2 on
    assert epoch_records(run) == [1, 2]


def test_a_name_that_is_both_a_run_directory_and_a_recipe_is_refused(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", str(recipe(tmp_path)), "--out", str(out), "--max-epochs", "1"]) == 0
    (out / "tiny.yaml").write_text(recipe(tmp_path).read_text())
    capsys.readouterr()
    assert main(["train", str(out / "tiny"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "both" in err and "tiny.yaml" in err, err
