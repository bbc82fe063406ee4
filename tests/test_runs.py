"""RunRecorder and read_metrics: files written, parsed back, refusal to overwrite, resume, truncation."""
import json
import math
import os
import socket
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
import torch
import yaml

from deepres.core.runs import RunRecorder, read_metrics

CONFIG = {"model": {"name": "resnet20", "num_classes": 10}, "train": {"lr": 0.1, "epochs": 3}}


def log_short_run(recorder, epochs=3, steps_per_epoch=4):
    step = 0
    for epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            step += 1
            recorder.log_step(step, train_loss=2.0 / step, lr=torch.tensor(0.1))
        recorder.log_epoch(epoch, train_loss=2.0 / step, test_error=50.0 / epoch, top1=100 - 50.0 / epoch,
                           step=step, images_per_s=np.float64(123.5))


def test_config_metrics_tensorboard(tmp_path):
    run_dir = tmp_path / "runs" / "a"
    with RunRecorder(run_dir, CONFIG) as recorder:
        log_short_run(recorder)
    config_text = (run_dir / "config.yaml").read_text()
    assert yaml.safe_load(config_text) == CONFIG
    assert config_text.index("model") < config_text.index("train")  # order kept, not sorted
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 15
    records = [json.loads(line) for line in lines]
    assert records[0]["kind"] == "step" and records[0]["step"] == 1 and records[0]["train_loss"] == 2.0
    assert records[0]["lr"] == pytest.approx(0.1)
    assert records[4] == {**records[4], "kind": "epoch", "epoch": 1, "test_error": 50.0, "step": 4,
                          "images_per_s": 123.5}
    steps, epochs = read_metrics(run_dir)
    assert [s["step"] for s in steps] == list(range(1, 13))
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert list(run_dir.glob("events.out.tfevents.*"))


def test_tensorboard_scalars_readable(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunRecorder(tmp_path, CONFIG) as recorder:
        log_short_run(recorder, epochs=2)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/train_loss", "train/lr", "epoch/test_error", "epoch/top1"} <= set(tags)
    assert [e.value for e in events.Scalars("epoch/test_error")] == [50.0, 25.0]
    assert [e.step for e in events.Scalars("train/train_loss")] == list(range(1, 9))


def test_non_finite_values_become_null(tmp_path):
    with RunRecorder(tmp_path, CONFIG, tensorboard=False) as recorder:
        recorder.log_step(1, train_loss=float("nan"), grad_norm=float("inf"), note="warmup")
    line = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in line and "Infinity" not in line
    record = json.loads(line)
    assert record["train_loss"] is None and record["grad_norm"] is None and record["note"] == "warmup"


def test_bad_values_rejected(tmp_path):
    with RunRecorder(tmp_path, CONFIG, tensorboard=False) as recorder:
        with pytest.raises(ValueError, match="'kind' is reserved"):
            recorder.log_step(1, kind="x")
        with pytest.raises(ValueError, match="not a number or string"):
            recorder.log_step(1, train_loss=[1.0, 2.0])


def test_refuses_existing_run_and_keeps_it(tmp_path):
    with RunRecorder(tmp_path, CONFIG, tensorboard=False) as recorder:
        recorder.log_step(1, train_loss=1.0)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(FileExistsError, match=str(tmp_path)):
        RunRecorder(tmp_path, {"other": 1}, tensorboard=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_resume_appends_and_replaces_replayed_steps(tmp_path):
    with RunRecorder(tmp_path, CONFIG, tensorboard=False) as recorder:
        for step in (1, 2, 3):
            recorder.log_step(step, train_loss=float(step))
        recorder.log_epoch(1, test_error=40.0, step=3)
    changed = {**CONFIG, "train": {"lr": 0.05, "epochs": 3}}
    with RunRecorder(tmp_path, changed, tensorboard=False, resume=True) as recorder:
        # resumed from a checkpoint at step 2: step 3 is logged again
        recorder.log_step(3, train_loss=30.0)
        recorder.log_step(4, train_loss=40.0)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 6
    steps, epochs = read_metrics(tmp_path)
    assert [(s["step"], s["train_loss"]) for s in steps] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    assert [e["epoch"] for e in epochs] == [1]
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == CONFIG  # original kept
    assert yaml.safe_load((tmp_path / "config.resume1.yaml").read_text()) == changed


def test_truncated_last_line(tmp_path):
    with RunRecorder(tmp_path, CONFIG, tensorboard=False) as recorder:
        recorder.log_step(1, train_loss=1.0)
        recorder.log_epoch(1, test_error=10.0)
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"kind": "step", "step": 2, "train_lo')  # killed mid-write
    steps, epochs = read_metrics(path)
    assert [s["step"] for s in steps] == [1] and len(epochs) == 1
    with pytest.warns(UserWarning, match="partial last line"):
        recorder = RunRecorder(tmp_path, CONFIG, tensorboard=False, resume=True)
    with recorder:
        recorder.log_step(2, train_loss=0.5)
    steps, _ = read_metrics(tmp_path)
    assert [s["step"] for s in steps] == [1, 2]


def test_corrupt_middle_line_and_missing_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "step", "step": 1}\nnot json\n{"kind": "step", "step": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(tmp_path)
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        read_metrics(tmp_path / "missing")


def test_env_json(tmp_path):
    with RunRecorder(tmp_path, CONFIG, tensorboard=False) as recorder:
        env = recorder.write_env()
    saved = json.loads((tmp_path / "env.json").read_text())
    assert saved == env
    for key in ("torch", "python", "platform", "device", "num_threads", "git_commit", "git_dirty", "argv",
                "hostname", "start_time"):
        assert key in saved
    assert saved["torch"] == torch.__version__
    assert saved["num_threads"] == torch.get_num_threads() and saved["device"]
    assert saved["git_commit"] is None or len(saved["git_commit"]) == 40


@pytest.mark.parametrize("epochs", [1, 3])
def test_curves_png(tmp_path, epochs):
    with RunRecorder(tmp_path, CONFIG, tensorboard=False) as recorder:
        log_short_run(recorder, epochs=epochs)
        path = recorder.plot_curves()
    data = path.read_bytes()
    assert path.name == "curves.png" and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    image = matplotlib.image.imread(path)
    assert image.shape[0] >= 300 and image.shape[1] >= 800 and image.shape[2] in (3, 4)
    assert not math.isclose(float(image[..., :3].std()), 0.0)  # something was drawn


def test_curves_without_records(tmp_path):
    with RunRecorder(tmp_path, CONFIG, tensorboard=False) as recorder:
        path = recorder.plot_curves()
    assert matplotlib.image.imread(path).shape[1] >= 800


def test_config_yaml_is_never_left_torn_by_a_full_disk(tmp_path, monkeypatch):
    import errno
    import pathlib

    import deepres.core.files

    def disk_full(*_, **__):
        raise OSError(errno.ENOSPC, "No space left on device")

    def write_nothing(self, *_, **__):  # what a full disk does to a plain write: an empty file, then the error
        open(self, "w").close()
        disk_full()

    with monkeypatch.context() as m:
        m.setattr(pathlib.Path, "write_text", write_nothing)
        m.setattr(deepres.core.files.os, "fsync", disk_full)
        with pytest.raises(OSError, match="No space"):
            RunRecorder(tmp_path, CONFIG, tensorboard=False)
    assert not (tmp_path / "config.yaml").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    (tmp_path / "config.yaml").write_text("")  # left by older versions
    with RunRecorder(tmp_path, CONFIG, tensorboard=False, resume=True):
        pass
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == CONFIG
    assert not (tmp_path / "config.resume1.yaml").exists()


# ------------------------------------------------------------------------------ one process per run directory

HOLD_LOCK = ("import sys, time\nfrom deepres.core.runs import lock_run_dir\nlock = lock_run_dir(sys.argv[1])\n"
             "print('locked', flush=True)\ntime.sleep(120)\n")


def hold_lock(run_dir):
    """Another process holding `run_dir`'s lock (until killed), as a training process holds it."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_run_directory_lock_names_its_holder_and_a_killed_holder_frees_it(tmp_path):
    from deepres.core.runs import lock_run_dir
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(FileExistsError) as refused:
            lock_run_dir(tmp_path)
        message = str(refused.value)
        assert "\n" not in message and str(tmp_path) in message, message
        assert f"pid {holder.pid} on {socket.gethostname()}" in message, message
    finally:
        holder.kill()  # kill -9: no chance to release; the OS frees the lock with the process
        holder.wait()
    with lock_run_dir(tmp_path) as lock:
        assert lock.held
        with pytest.raises(FileExistsError, match=f"pid {os.getpid()} "):  # one process, a second claim
            lock_run_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []  # a released lock leaves nothing behind
    lock.release()  # twice: nothing happens
    with lock_run_dir(tmp_path):  # released: free for the next run
        pass
