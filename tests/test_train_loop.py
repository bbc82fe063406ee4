"""fit / train_one_epoch on a tiny model and in-memory data: run directory, exact resume, failure modes."""
import json
import math

import pytest
import safetensors.torch
import torch
import torch.nn as nn
from train_fakes import TINY_MODEL, tiny_loaders

from deepres.core.checkpoint import load_checkpoint
from deepres.core.runs import read_metrics
from deepres.core.config import Config, DataConfig, ModelConfig, OptimConfig, RunConfig, ScheduleConfig, TrainConfig
from deepres.core.errors import NonFiniteLossError
from deepres.tasks import get_task
from deepres.train.loop import fit, optimizer_step, train_one_epoch
from deepres.train.run import Run


def tiny_config(tmp_path, name="run", **train):
    return Config(
        model=ModelConfig(name=TINY_MODEL, drop_rate=0.2),
        data=DataConfig(name="synthetic", batch_size=16),
        optim=OptimConfig(name="sgd", lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4, wd_exclude_bn_bias=True),
        schedule=ScheduleConfig(name="cosine", warmup_iters=2),
        train=TrainConfig(**{"epochs": 2, "progress": False, "log_every_iters": 2, **train}),
        run=RunConfig(out_dir=str(tmp_path), name=name),
    )


def quiet(_):
    pass


def test_one_epoch_fit_writes_the_run_directory(tmp_path):
    result = fit(tiny_config(tmp_path, epochs=1), loaders=tiny_loaders(), device="cpu", log=quiet)
    run = tmp_path / "run"
    assert result["epoch"] == 1 and result["step"] == 4 and result["finished"] and result["run_dir"] == str(run)
    assert 0 <= result["top1"] <= 100 and result["best_top1"] == result["top1"]
    for name in ("config.yaml", "metrics.jsonl", "env.json", "curves.png", "checkpoints/last.safetensors",
                 "checkpoints/last.state.pt", "checkpoints/best.safetensors"):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epoch = [r for r in records if r["kind"] == "epoch"]
    assert len(epoch) == 1 and epoch[0]["epoch"] == 1 and epoch[0]["step"] == 4
    assert epoch[0]["test_error"] == pytest.approx(100 - epoch[0]["top1"])
    for key in ("train_loss", "top5", "lr", "epoch_time_s", "images_per_s"):
        assert math.isfinite(epoch[0][key]), key
    assert [r["step"] for r in records if r["kind"] == "step"] == [2, 4]
    _, state = load_checkpoint(run / "checkpoints")
    assert state["config"]["model"]["num_classes"] == 4  # resolved from the data
    assert state["config"]["model"]["in_chans"] == 1


def test_training_learns_the_tiny_task(tmp_path):
    result = fit(tiny_config(tmp_path, epochs=6), loaders=tiny_loaders(), device="cpu", log=quiet)
    assert result["top1"] >= 90.0


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    extras = dict(deterministic=True, ema_decay=0.9, mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1,
                  grad_accum_steps=2, grad_clip_norm=5.0, epochs=3)
    straight = fit(tiny_config(tmp_path, "straight", **extras), loaders=tiny_loaders(), device="cpu", log=quiet)
    first = fit(tiny_config(tmp_path, "split", **extras), loaders=tiny_loaders(), device="cpu", stop_after_epochs=1,
                log=quiet)
    assert first["epoch"] == 1 and not first["finished"]
    resumed = fit(tiny_config(tmp_path, "split", **extras), loaders=tiny_loaders(), device="cpu", resume=True,
                  log=quiet)
    assert resumed["epoch"] == 3 and resumed["step"] == straight["step"] == 6

    a_weights, a_state = load_checkpoint(tmp_path / "straight" / "checkpoints")
    b_weights, b_state = load_checkpoint(tmp_path / "split" / "checkpoints")
    assert a_weights.keys() == b_weights.keys()
    for k in a_weights:
        assert torch.equal(a_weights[k], b_weights[k]), k
    for k in a_state["ema"]:
        assert torch.equal(a_state["ema"][k], b_state["ema"][k]), k
    for pid, buf in a_state["optimizer"]["state"].items():
        assert torch.equal(buf["momentum_buffer"], b_state["optimizer"]["state"][pid]["momentum_buffer"])
    assert torch.equal(a_state["rng"]["torch"], b_state["rng"]["torch"])
    assert straight["top1"] == resumed["top1"] and straight["test_loss"] == resumed["test_loss"]


def test_resume_refuses_a_changed_config_but_allows_bookkeeping(tmp_path):
    fit(tiny_config(tmp_path, epochs=2), loaders=tiny_loaders(), device="cpu", stop_after_epochs=1, log=quiet)
    changed = tiny_config(tmp_path, epochs=2)
    changed.optim.lr = 0.05
    changed.train.label_smoothing = 0.1
    with pytest.raises(ValueError) as err:
        fit(changed, loaders=tiny_loaders(), device="cpu", resume=True, log=quiet)
    assert "optim.lr: checkpoint 0.2, now 0.05" in str(err.value) and "train.label_smoothing" in str(err.value)
    fine = tiny_config(tmp_path, epochs=2, log_every_iters=1)  # bookkeeping only
    assert fit(fine, loaders=tiny_loaders(), device="cpu", resume=True, log=quiet)["epoch"] == 2


def test_existing_run_dir_is_never_overwritten(tmp_path):
    fit(tiny_config(tmp_path, epochs=1), loaders=tiny_loaders(), device="cpu", log=quiet)
    ckpt = tmp_path / "run" / "checkpoints" / "last.safetensors"
    before = ckpt.read_bytes(), (tmp_path / "run" / "metrics.jsonl").read_bytes()
    with pytest.raises(FileExistsError, match="--resume.*run.name"):
        fit(tiny_config(tmp_path, epochs=1), loaders=tiny_loaders(), device="cpu", log=quiet)
    assert (ckpt.read_bytes(), (tmp_path / "run" / "metrics.jsonl").read_bytes()) == before


def test_nonfinite_losses_stop_the_run_after_patience(tmp_path):
    cfg = tiny_config(tmp_path, epochs=3, nonfinite_patience=3)
    cfg.optim = OptimConfig(name="sgd", lr=1e30, momentum=0.0)
    cfg.schedule = ScheduleConfig(name="constant")
    with pytest.raises(NonFiniteLossError) as err:
        fit(cfg, loaders=tiny_loaders(), device="cpu", log=quiet)
    msg = str(err.value)
    assert "3 non-finite losses in a row" in msg and "stopping at step" in msg
    assert "the last finite loss was" in msg and "at step 0" in msg  # the first step was still finite
    assert not (tmp_path / "run" / "checkpoints" / "last.state.pt").exists()  # no epoch completed


class NaNAfter(nn.Module):
    """Finite outputs for the first `good` forward passes, NaN after."""

    def __init__(self, good):
        super().__init__()
        self.fc, self.calls, self.good = nn.Linear(64, 4), 0, good

    def forward(self, x):
        self.calls += 1
        out = self.fc(x.flatten(1))
        return out if self.calls <= self.good else out * float("nan")


def test_nonfinite_steps_are_skipped_and_the_streak_resets():
    cfg = Config(train=TrainConfig(nonfinite_patience=2, progress=False))
    model = NaNAfter(good=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train, _, _ = tiny_loaders(batch_size=16)
    task = get_task("classification")(num_classes=4, train=cfg.train, eval=cfg.eval)
    run = Run(cfg, torch.device("cpu"), model, opt, task, train)
    state = run.state
    model_before = None
    with pytest.raises(NonFiniteLossError, match="at step 3 .*2 non-finite.* at step 1"):
        try:
            train_one_epoch(run)
        finally:
            model_before = model.fc.weight.clone()
    assert torch.isfinite(model_before).all()  # NaN steps were skipped, weights untouched by them
    assert state.nonfinite_streak == 2 and state.last_finite_step == 1


def test_gradient_clipping_bounds_the_update():
    model = nn.Linear(3, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = model.weight.detach().clone()
    (model(torch.full((1, 3), 1e4)).sum()).backward()  # gradient norm ~1.7e4
    assert optimizer_step(model, opt, grad_clip_norm=0.5)
    assert (model.weight - before).norm().item() == pytest.approx(0.5, rel=1e-4)
    assert model.weight.grad is None  # zeroed for the next step
    (model(torch.full((1, 3), float("inf"))).sum()).backward()
    assert not optimizer_step(model, opt, grad_clip_norm=0.5)  # non-finite norm: skipped
    assert torch.isfinite(model.weight).all()


def test_max_iters_stops_mid_epoch_and_grad_accumulation_counts_steps(tmp_path):
    result = fit(tiny_config(tmp_path, max_iters=5), loaders=tiny_loaders(), device="cpu", log=quiet)
    assert result["step"] == 5 and result["epoch"] == 2 and result["finished"] and "top1" in result
    accum = fit(tiny_config(tmp_path, "accum", epochs=1, grad_accum_steps=3), loaders=tiny_loaders(), device="cpu",
                log=quiet)
    assert accum["step"] == 2  # 4 micro-batches: one step of 3, one of the last 1


def test_fp16_on_cpu_is_refused(tmp_path):
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        fit(tiny_config(tmp_path, amp="fp16"), loaders=tiny_loaders(), device="cpu", log=quiet)


def test_bf16_channels_last_and_dynamic_bn_run_and_save_plain_weights(tmp_path):
    cfg = tiny_config(tmp_path, epochs=1, amp="bf16", channels_last=True)
    cfg.model.bn_momentum = "dynamic"
    result = fit(cfg, loaders=tiny_loaders(), device="cpu", log=quiet)
    weights = safetensors.torch.load_file(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert set(weights) == {"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                            "bn1.num_batches_tracked", "fc.weight", "fc.bias"}
    assert int(weights["bn1.num_batches_tracked"]) == 4  # dynamic BN: reset at the epoch start
    assert math.isfinite(result["test_loss"])


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_cuda_fp16_with_grad_scaler_trains_saves_and_resumes(tmp_path):
    cfg = tiny_config(tmp_path, epochs=2, amp="fp16", channels_last=True, ema_decay=0.9)
    first = fit(cfg, loaders=tiny_loaders(device="cuda"), device="cuda", stop_after_epochs=1, log=quiet)
    _, state = load_checkpoint(tmp_path / "run" / "checkpoints")
    assert state["scaler"]["scale"] > 0 and first["epoch"] == 1
    done = fit(cfg, loaders=tiny_loaders(device="cuda"), device="cuda", resume=True, log=quiet)
    assert done["finished"] and math.isfinite(done["test_loss"])


@needs_cuda
def test_cuda_deterministic_resume_is_bit_identical(tmp_path):
    extras = dict(deterministic=True, amp="bf16", ema_decay=0.9, mixup_alpha=0.4, grad_accum_steps=2, epochs=2)
    fit(tiny_config(tmp_path, "straight", **extras), loaders=tiny_loaders(device="cuda"), device="cuda", log=quiet)
    fit(tiny_config(tmp_path, "split", **extras), loaders=tiny_loaders(device="cuda"), device="cuda",
        stop_after_epochs=1, log=quiet)
    fit(tiny_config(tmp_path, "split", **extras), loaders=tiny_loaders(device="cuda"), device="cuda", resume=True,
        log=quiet)
    a, _ = load_checkpoint(tmp_path / "straight" / "checkpoints")
    b, _ = load_checkpoint(tmp_path / "split" / "checkpoints")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # raised inside torch.compile
def test_compiled_training_step_follows_the_eager_loss_trajectory(tmp_path):
    """train.compile (forward and backward through inductor) with bf16 autocast and channels_last, with and
    without train.inductor_bn's BatchNorm: the same per-step losses as the eager step, within bf16 rounding, over
    8 optimizer steps."""
    losses, lines = {}, {}
    for name, train in (("eager", {}), ("compiled", {"compile": True}),
                        ("compiled_torch_bn", {"compile": True, "inductor_bn": False})):
        cfg = tiny_config(tmp_path, name, epochs=2, log_every_iters=1, amp="bf16", channels_last=True, **train)
        cfg.model.drop_rate = 0.0  # dropout masks come from different generators eagerly and compiled
        lines[name] = []
        fit(cfg, device="cpu", loaders=tiny_loaders(), log=lines[name].append)
        steps, _ = read_metrics(tmp_path / name)
        losses[name] = torch.tensor([s["train_loss"] for s in steps])
    assert len(losses["eager"]) == len(losses["compiled"]) == len(losses["compiled_torch_bn"]) == 8  # 64 / 16, 2 epochs
    assert losses["eager"][-1] < losses["eager"][0]  # it trains
    for name in ("compiled", "compiled_torch_bn"):
        torch.testing.assert_close(losses[name], losses["eager"], rtol=0.05, atol=0.02)
    converted = "train.inductor_bn: 1 BatchNorm2d layers use the inductor-friendly training form"
    assert converted in lines["compiled"]
    assert not any("inductor_bn" in line for line in lines["eager"] + lines["compiled_torch_bn"])


def test_compile_without_a_cpp_compiler_trains_eagerly_and_says_so(tmp_path, monkeypatch):
    """A recipe with train.compile still trains on a machine where inductor finds no C++ compiler."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("deepres-test-no-such-compiler",))
    lines = []
    result = fit(tiny_config(tmp_path, epochs=1, compile=True), device="cpu", loaders=tiny_loaders(),
                 log=lines.append)
    assert result["finished"] and result["step"] == 4
    off = [line for line in lines if line.startswith("train.compile: off for this run")]
    assert len(off) == 1 and "No working C++ compiler" in off[0] and "install g++" in off[0]
    assert not any("inductor_bn" in line for line in lines)  # nothing was compiled or converted
