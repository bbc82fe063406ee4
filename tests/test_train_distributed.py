"""Distributed training on CPU with gloo and 2 processes: DDP equals one process with the same global batch,
exact sharded evaluation, non-finite and setup errors stop every rank, and resume under the real torchrun CLI.

The rank-side code is the `task_*` functions below (spawned processes import this module to run them)."""
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from dist_helpers import NOBN_MODEL, RankPool
from train_fakes import EventAt, send_signal

from deepres.data import build_eval_loader, build_loaders
from deepres.data.readers.formats import ArrayDataset
from deepres.data.loaders import BatchTransform, Loader
from deepres.eval import evaluate
from deepres.core.checkpoint import load_checkpoint
from deepres.core.errors import TrainingInterrupted
from deepres.core.config import (Config, DataConfig, ModelConfig, OptimConfig, RunConfig, ScheduleConfig,
                                  TrainConfig, load_config, validate_config)
from deepres.core.distributed import DistInfo, torchrun_env
from deepres.core.runs import lock_run_dir
from deepres.tasks.classification import ClassificationTask
from deepres.train.loop import fit, train_one_epoch
from deepres.train.run import Run
from deepres.train.optim import scaled_lr

REPO = Path(__file__).resolve().parents[1]
WORLD = 2


@pytest.fixture(scope="module")
def pool():
    p = RankPool(WORLD)
    yield p
    p.close()


def quiet(_):
    pass


def values(results):
    """The per-rank results, failing with the rank's traceback if any rank raised."""
    for rank, (ok, value) in enumerate(results):
        assert ok, f"rank {rank} raised {value[0]}: {value[1]}\n{value[2]}"
    return [value for _, value in results]


def small_config(out_dir, name, *, batch_size, **train):
    """No-BN model on 64 synthetic 8x8 images (eval: 21, odd), no augmentation: the per-step sets of images
    are then the only thing that depends on how a global batch is split over ranks."""
    return Config(
        model=ModelConfig(name=NOBN_MODEL),
        data=DataConfig(name="synthetic", synthetic_size=(64, 21), synthetic_image_size=8, num_classes=4,
                        batch_size=batch_size, eval_batch_size=4, hflip=False, crop_padding=0),
        optim=OptimConfig(name="sgd", lr=0.2, momentum=0.9, weight_decay=5e-4),
        schedule=ScheduleConfig(name="constant"),
        # fp32 (not amp=auto's bf16 on a CPU with native bf16): the ranks' summed gradients are compared to 1e-5
        train=TrainConfig(**{"epochs": 2, "progress": False, "deterministic": True, "amp": "none", **train}),
        run=RunConfig(out_dir=str(out_dir), name=name),
    )


# ------------------------------------------------------------------------------------------ rank tasks


def task_fit(rank, world_size, cfg, stop_after_epochs=None):
    return fit(cfg, device="cpu", stop_after_epochs=stop_after_epochs, log=quiet)


def task_fit_rank_error(rank, world_size, cfg):
    """Rank 1 alone gets a data root that does not exist."""
    if rank == 1:  # the synthetic format's options back at their defaults: the folder format reads none of them
        defaults = DataConfig()
        cfg = replace(cfg, data=replace(cfg.data, name="folder", root="/nonexistent/deepres-test",
                                        synthetic_size=defaults.synthetic_size,
                                        synthetic_image_size=defaults.synthetic_image_size))
    return fit(cfg, device="cpu", log=quiet)


class NaNFromBatch:
    """Wraps a loader: from batch `first` on, images are NaN (on the rank that uses it)."""

    def __init__(self, loader, first):
        self.loader, self.first = loader, first

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch):
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for i, (images, labels) in enumerate(self.loader):
            yield (images * float("nan") if i >= self.first else images), labels


def task_fit_nan_on_rank_1(rank, world_size, cfg):
    train, val, info = build_loaders(cfg.data, "cpu", seed=cfg.train.seed, rank=rank, world_size=world_size)
    if rank == 1:
        train = NaNFromBatch(train, first=1)
    return fit(cfg, device="cpu", loaders=(train, val, info), log=quiet)


def task_fit_sigterm_on_rank_1(rank, world_size, cfg):
    train, val, info = build_loaders(cfg.data, "cpu", seed=cfg.train.seed, rank=rank, world_size=world_size)
    if rank == 1:
        train = EventAt(train, 1, send_signal(signal.SIGTERM), epoch=1)
    try:
        return fit(cfg, device="cpu", loaders=(train, val, info), log=quiet)
    except TrainingInterrupted as e:
        return "interrupted", e.exit_code


def task_fit_resume(rank, world_size, cfg):
    return fit(cfg, device="cpu", resume=True, log=quiet)


def task_count_gradient_allreduces(rank, world_size, accum):
    """Gradient all-reduce calls of DDP during one epoch of 4 micro-batches."""
    from dist_helpers import NoBNNet
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(NoBNNet(num_classes=4))
    calls = []

    def counting_hook(state, bucket):
        calls.append(bucket.index())
        return default_hooks.allreduce_hook(None, bucket)

    model.register_comm_hook(None, counting_hook)
    g = torch.Generator().manual_seed(rank)
    batches = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(4)]
    cfg = small_config("unused", "unused", batch_size=4, grad_accum_steps=accum, log_every_iters=100)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = Run(cfg, torch.device("cpu"), model.module, optimizer, ClassificationTask(4, cfg.train, cfg.eval), batches,
              train_model=model, dist=DistInfo(rank=rank, world_size=world_size))
    stats = train_one_epoch(run)
    return len(calls), stats["images"], [p.detach().clone() for p in model.parameters()]


class ValueTable(nn.Module):
    """Logits = row v of a fixed table for an image whose pixels equal v: identical for any batching."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].round().long()]


def eval_loader(num_images, labels, rank, world_size):
    images = torch.arange(num_images, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    dataset = ArrayDataset(images, labels, [f"c{i}" for i in range(6)])
    return Loader(dataset, batch_size=4, device=torch.device("cpu"), train=False, seed=0, rank=rank,
                  world_size=world_size, item_transform=None, on_device=True, workers=0,
                  batch_transform=BatchTransform(in_chans=1, normalize="mean", mean=(0.0,), std=(1.0,)))


def task_evaluate(rank, world_size, table, labels, flip):
    loader = eval_loader(len(labels), labels, rank, world_size)
    return len(list(loader)), evaluate(ValueTable(table), loader, num_classes=6, flip=flip)


def task_evaluate_folder_with_bad_images(rank, world_size, root):
    from dist_helpers import NoBNNet

    cfg = DataConfig(name="folder", root=root, image_size=8, eval_batch_size=2, workers=0, on_bad_image="skip")
    loader, _ = build_eval_loader(cfg, "cpu", classes=["cat", "dog"], rank=rank, world_size=world_size)
    torch.manual_seed(0)
    return evaluate(NoBNNet(num_classes=2), loader, num_classes=2)


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("accum", [1, 2])
def test_two_ranks_train_like_one_process_with_the_same_global_batch(pool, tmp_path, accum):
    # Rank r's batch j is the r-th half of one process's batch j at twice the size (the train shard strides the
    # shared permutation), the loss is a mean, and DDP averages gradients: without BatchNorm the two runs take
    # the same optimizer steps up to float summation order. With accum=2 the micro-batches that do not step run
    # under no_sync. (BatchNorm would normalise over per-rank halves; SyncBatchNorm needs CUDA.)
    two = values(pool.run(task_fit, small_config(tmp_path, "ddp", batch_size=8, grad_accum_steps=accum)))
    one = fit(small_config(tmp_path, "single", batch_size=16, grad_accum_steps=accum), device="cpu", log=quiet)
    fit(small_config(tmp_path, "half", batch_size=8, grad_accum_steps=accum), device="cpu", log=quiet)

    assert two[0] == two[1]  # every rank returns the same (all-reduced) metrics
    assert two[0]["step"] == one["step"] == 8 // accum
    assert two[0]["test_loss"] == pytest.approx(one["test_loss"], rel=1e-5)
    ddp_weights, ddp_state = load_checkpoint(tmp_path / "ddp" / "checkpoints")
    one_weights, _ = load_checkpoint(tmp_path / "single" / "checkpoints")
    half_weights, _ = load_checkpoint(tmp_path / "half" / "checkpoints")
    assert ddp_weights.keys() == one_weights.keys()
    for key in ddp_weights:
        torch.testing.assert_close(ddp_weights[key], one_weights[key], rtol=1e-4, atol=1e-6)
    # the comparison can fail: a single process at the per-rank batch size trains differently
    assert max((ddp_weights[k] - half_weights[k]).abs().max() for k in ddp_weights) > 1e-3
    assert ddp_state["world_size"] == 2

    records = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]  # rank 0 alone writes the record
    single_epochs = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()
                     if '"epoch"' in line and '"kind": "epoch"' in line]
    for a, b in zip(epochs, single_epochs):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)  # the mean over both ranks


def test_micro_batches_that_do_not_step_skip_the_gradient_all_reduce(pool):
    for accum, expected_calls in ((1, 4), (2, 2)):  # one bucket (a small model): one all-reduce per step
        (calls0, images, weights0), (calls1, _, weights1) = values(pool.run(task_count_gradient_allreduces, accum))
        assert calls0 == calls1 == expected_calls
        assert images == 2 * 4 * 4  # images over both ranks
        for a, b in zip(weights0, weights1):
            assert torch.equal(a, b)  # the ranks saw different data, yet hold the same weights


@pytest.mark.parametrize("num_images", [13, 1])  # 13: shards of 6 and 7 images; 1: rank 0's shard is empty
def test_two_rank_evaluation_is_exactly_the_single_process_one(pool, num_images):
    g = torch.Generator().manual_seed(num_images)
    table = torch.randn(num_images, 6, generator=g) * 3
    labels = torch.randint(0, 6, (num_images,), generator=g)
    for flip in (False, True):
        (batches0, r0), (batches1, r1) = values(pool.run(task_evaluate, table, labels, flip))
        assert batches0 + batches1 >= 2 if num_images > 1 else batches0 == 0
        _, single = task_evaluate(0, 1, table, labels, flip)
        for result in (r0, r1):
            assert result["n"] == num_images
            for key in ("top1", "top5", "loss", "per_class", "n"):
                assert result[key] == single[key] or (key == "per_class" and str(result[key]) == str(single[key])), key
            assert torch.equal(result["confusion"], single["confusion"])


def test_two_rank_evaluation_drops_bad_images_exactly_as_one_process(pool, tmp_path):
    """Rank 0's shard (the first 2 of 5 images) is all bad: its batch is dropped whole, and the counts still add up."""
    from data_helpers import write_image

    for cls, count in (("cat", 3), ("dog", 2)):
        for i in range(count):
            write_image(tmp_path / "val" / cls / f"{i}.png", size=(12, 10), seed=i)
    for name in ("0.png", "1.png"):
        (tmp_path / "val" / "cat" / name).write_bytes(b"")
    single = task_evaluate_folder_with_bad_images(0, 1, str(tmp_path))
    assert single["n"] == 3 and single["skipped"] == 2
    for result in values(pool.run(task_evaluate_folder_with_bad_images, str(tmp_path))):
        for key in ("top1", "loss", "n", "skipped"):
            assert result[key] == pytest.approx(single[key]), key
        assert torch.equal(result["confusion"], single["confusion"])


def test_nonfinite_loss_on_one_rank_stops_both_ranks_together(pool, tmp_path):
    cfg = small_config(tmp_path, "nan", batch_size=8, nonfinite_patience=2)
    results = pool.run(task_fit_nan_on_rank_1, cfg, timeout=60)
    messages = []
    for ok, value in results:
        assert not ok and value[0] == "NonFiniteLossError", value
        messages.append(value[1])
    assert messages[0] == messages[1]  # the same step on both ranks
    assert "stopping at step 2 (epoch 1): 2 non-finite losses in a row" in messages[0]
    assert not (tmp_path / "nan" / "checkpoints").exists()
    # the process group is still usable afterwards: no rank was left inside a collective
    assert values(pool.run(task_evaluate, torch.randn(3, 6), torch.tensor([0, 1, 2]), False))[0][1]["n"] == 3


def test_sigterm_on_one_rank_stops_both_at_the_same_step_and_the_resume_is_exact(pool, tmp_path):
    values(pool.run(task_fit, small_config(tmp_path, "straight", batch_size=8)))
    # 4 batches per epoch and rank; rank 1 alone gets SIGTERM during batch 2 of epoch 2
    stopped = values(pool.run(task_fit_sigterm_on_rank_1, small_config(tmp_path, "split", batch_size=8)))
    assert stopped == [("interrupted", 143)] * 2
    _, state = load_checkpoint(tmp_path / "split" / "checkpoints")
    assert (state["step"], state["epoch"], state["batches_done"]) == (6, 1, 2)
    values(pool.run(task_fit_resume, small_config(tmp_path, "split", batch_size=8)))
    a, _ = load_checkpoint(tmp_path / "straight" / "checkpoints")
    b, _ = load_checkpoint(tmp_path / "split" / "checkpoints")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_setup_error_on_one_rank_is_raised_on_every_rank(pool, tmp_path):
    results = pool.run(task_fit_rank_error, small_config(tmp_path, "bad", batch_size=8))
    (ok0, err0), (ok1, err1) = results
    assert not ok0 and not ok1
    assert err1[0] == err0[0] == "FileNotFoundError"
    assert "/nonexistent/deepres-test" in err1[1] and err0[1] == f"{err1[1]} (on rank 1)"
    sync_bn = pool.run(task_fit, small_config(tmp_path, "syncbn", batch_size=8, sync_bn=True))
    for ok, err in sync_bn:
        assert not ok and err[0] == "ValueError" and "train.sync_bn needs CUDA" in err[1]


def test_a_run_in_use_stops_every_rank_and_a_multi_rank_run_does_not_lock_itself_out(pool, tmp_path):
    cfg = small_config(tmp_path, "held", batch_size=8)
    assert not values(pool.run(task_fit, cfg, 1))[0]["finished"]  # two ranks of one job: rank 0 alone locks
    with lock_run_dir(tmp_path / "held"):  # another job training this run
        results = pool.run(task_fit_resume, cfg)
    for ok, error in results:
        assert not ok and error[0] == "FileExistsError" and f"in use by pid {os.getpid()}" in error[1], error
    assert results[1][1][1].endswith("(on rank 0)")
    assert [r["finished"] for r in values(pool.run(task_fit_resume, cfg))] == [True, True]
    assert not (tmp_path / "held" / ".lock").exists()


def test_lr_scaling_follows_the_global_batch(tmp_path):
    linear = OptimConfig(lr=0.1, lr_scaling="linear", lr_base_batch=256)
    assert scaled_lr(linear, 2048) == pytest.approx(0.8)
    assert scaled_lr(OptimConfig(lr=0.1), 2048) == 0.1  # "none": the lr is for the batch as run
    cfg = small_config(tmp_path, "scaled", batch_size=16, epochs=1, log_every_iters=1)
    cfg.optim = replace(cfg.optim, lr=0.05, lr_scaling="linear", lr_base_batch=8)
    lines = []
    fit(cfg, device="cpu", log=lines.append)
    steps = [json.loads(line) for line in (tmp_path / "scaled" / "metrics.jsonl").read_text().splitlines()]
    step_lrs = [r["lr"] for r in steps if r["kind"] == "step"]
    assert len(step_lrs) == 4 and step_lrs == pytest.approx([0.1] * 4)  # 0.05 x 16 / 8
    assert any("global batch 16 = 16 per process x 1 process(es)" in line and "0.05 x 16 / 8" in line
               for line in lines)
    with pytest.raises(ValueError, match="optim.lr_base_batch"):
        validate_config(replace(cfg, optim=replace(cfg.optim, lr_base_batch=0)))


def test_torchrun_environment_is_read_and_checked(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_env() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK=5 is not below WORLD_SIZE=4"):
        torchrun_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x'"):
        torchrun_env()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = torchrun_env()
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (3, 4, 1, False)


# -------------------------------------------------------------------------------------- torchrun CLI

RECIPE = """\
model: {name: resnet20}
data: {name: synthetic, synthetic_size: [64, 21], synthetic_image_size: 8, batch_size: 8, eval_batch_size: 8,
       crop_padding: 1, hflip: true}
optim: {name: sgd, lr: 0.05, momentum: 0.9, lr_scaling: linear, lr_base_batch: 8}
schedule: {name: cosine, warmup_iters: 4, warmup_start_factor: 0.0}
train: {epochs: 2, deterministic: true, progress: false, log_every_iters: 1}
"""


def torchrun(tmp_path, recipe, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "CUDA_VISIBLE_DEVICES": ""}  # CPU processes (gloo) on any machine: a 1-GPU box has no device for rank 1
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
               "-m", "deepres", "train", str(recipe), "--out", str(tmp_path), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_resume_under_torchrun_is_bit_identical_to_an_uninterrupted_run(pool, tmp_path):
    # Epoch 1 of "split" and the whole of "straight" run in the pool (one thread per rank, as torchrun sets
    # OMP_NUM_THREADS=1); the resume goes through the real `torchrun -m deepres train --resume`, where fit sets
    # up the process group from torchrun's environment and every rank reads the checkpoint. Each torchrun
    # launch costs ~10-20 s of process start-up on 2 cores, hence one.
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE)
    cfg = load_config(recipe, [f"run.out_dir={tmp_path}"])
    first = values(pool.run(task_fit, replace(cfg, run=replace(cfg.run, name="split")), 1))
    assert first[0]["epoch"] == 1 and not first[0]["finished"]
    out = torchrun(tmp_path, recipe, "--set", "run.name=split", "--resume")
    assert out.count("split: finished") == 1, out  # rank 0 alone prints
    values(pool.run(task_fit, replace(cfg, run=replace(cfg.run, name="straight"))))

    straight, split = tmp_path / "straight", tmp_path / "split"
    a_weights, a_state = load_checkpoint(straight / "checkpoints")
    b_weights, b_state = load_checkpoint(split / "checkpoints")
    assert a_state["epoch"] == b_state["epoch"] == 2 and a_state["world_size"] == b_state["world_size"] == 2
    for key in a_weights:
        assert torch.equal(a_weights[key], b_weights[key]), key
    for pid, buf in a_state["optimizer"]["state"].items():
        assert torch.equal(buf["momentum_buffer"], b_state["optimizer"]["state"][pid]["momentum_buffer"])
    # rank 0 alone recorded: one line per epoch; the peak lr is scaled by the global batch (0.05 x 8 x 2 / 8)
    for run in (straight, split):
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
        assert max(r["lr"] for r in records) == pytest.approx(0.1)
