"""Fast CPU inference: BatchNorm folding for every model family, choose_path as a pure function of what was asked,
the stored calibration, the model's structure and the machine, and each path build_runner builds against the plain
fp32 model (random weights for the logit error, a ResNet-20 trained on real Fashion-MNIST images for top-1
agreement)."""
import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import deepres.core.device
from deepres import init_model
from deepres.inference import fastpath
from deepres.inference.bn_fold import fold_batchnorm
from deepres.inference.int8 import PerShapeInt8
from deepres.inference.onnx_backend import OnnxRuntimeFp32, onnx_cache_path
from deepres.inference.plan import PRECISIONS, Request, choose_path
from deepres.inference.predictor import Predictor
from deepres.inference.runner import build_runner, example_batch
from deepres.models import create_model

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial statistics and affine parameters, so folding has something to get wrong."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.6 - 0.3)
    return model.eval()


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def build(model: nn.Module, request: Request | str = "auto", input_size=(3, 32, 32), *, calibration=None,
          batch_size: int = 2, verify: bool = True):
    """choose_path then build_runner, on the model's device."""
    plan = choose_path(model, None, calibration, request)
    return build_runner(model, plan, example_batch(input_size, batch_size), calibration=calibration, verify=verify)


# (model, overrides, input side, BNs that must stay: those not directly after a conv)
FAMILIES = [
    ("resnet18", {}, 64, 0),
    ("resnet18", {"bn_after_add": True, "relu_after_add": False}, 64, 8),  # bn2 after the addition, every block
    ("resnet50d", {}, 64, 0),  # deep stem conv1.0/1/3/4/6 + bn1, avg-pool downsample (pool, conv, bn)
    ("resnet20", {}, 32, 0),  # option A: zero-pad shortcut
    ("resnet20", {"shortcut": "B"}, 32, 0),  # projection shortcut Sequential(conv, bn)
    ("preact_resnet18", {}, 64, 9),  # each unit's bn1 (on its input) and bn_final stay
    ("wrn_16_8", {}, 32, 7),
    ("resnet38_a1", {}, 64, 17),  # pre-activation units; the stem conv1a absorbs b2's first BN
]


@pytest.mark.parametrize("name,overrides,size,kept", FAMILIES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}"
                              for n, o, _, _ in FAMILIES])
def test_fold_batchnorm_matches_unfolded_model(name, overrides, size, kept):
    model = randomize_bn(create_model(name, **overrides))
    before = copy.deepcopy(model.state_dict())
    folded, report = fold_batchnorm(model)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert max_error(got, expected) <= 1e-4 * max(1.0, float(expected.abs().max()))
    assert len(report.kept) == kept and bn_count(folded) == kept
    assert len(report.folded) == bn_count(model) - kept > 0
    # the user's model is untouched: same weights, still every BN
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fold_reports_why_a_bn_stays():
    _, report = fold_batchnorm(create_model("preact_resnet18"))
    assert "layer1.0.bn1" in report.kept and "bn_final" in report.kept
    assert "layer1.0.bn2" in report.folded  # BN-ReLU after a conv inside the unit does fold
    assert "pre-activation" in report.kept["layer1.0.bn1"]


def test_fold_keeps_bn_when_the_conv_output_is_used_twice():
    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # folding would change the second use of y

    model = randomize_bn(TwoUsers())
    folded, report = fold_batchnorm(model)
    assert report.folded == [] and "bn" in report.kept
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(folded(x), model(x))


# ------------------------------------------------------------------------------------------ fast paths


@pytest.fixture(scope="module")
def resnet20():
    return randomize_bn(create_model("resnet20"), seed=3)


@pytest.mark.parametrize("precision,bound", [("eager", 0.0), ("fp32", 1e-4), ("bf16", 0.1)])
def test_fast_paths_match_fp32_on_any_batch_size(resnet20, precision, bound):
    runner, info = build(resnet20, precision)
    scale = 0.0
    for batch in (1, 3, 8):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = resnet20(x)
        got = runner(x)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        scale = max(1.0, float(expected.abs().max()))
        assert max_error(got, expected) <= bound * scale, (precision, batch)
    assert info.max_abs_error is not None and info.max_abs_error <= bound * scale
    assert info.precision == precision and info.dtype == {"eager": "fp32"}.get(precision, precision)
    assert (info.bn_folded > 0) == (precision != "eager") and info.channels_last == (precision != "eager")


def test_request_switches_override_the_precision(resnet20):
    runner, info = build(resnet20, Request("fp32", fold_bn=False, channels_last=False, backend="torch"))
    assert info.bn_folded == 0 and not info.channels_last and info.steps == [] and info.backend == "torch"
    assert info.max_abs_error == 0.0


def assert_matches_on_one_thread(runner, model: nn.Module) -> None:
    """Call the ONNX Runtime module while torch has one thread (as the governor sets it under contention)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        x = torch.randn(4, 3, 32, 32)
        with torch.no_grad():
            assert max_error(runner.module(x), model(x)) <= 1e-4
    finally:
        torch.set_num_threads(threads)


def test_fp32_runs_on_onnxruntime_from_a_cached_export(resnet20, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPRES_CACHE", str(tmp_path))
    runner, info = build(resnet20, "fp32")
    assert info.backend == "onnxruntime" and "exported ONNX" in info.steps[-1]
    assert isinstance(runner.module, OnnxRuntimeFp32) and not runner.channels_last
    files = list((tmp_path / "onnx").iterdir())
    assert len(files) == 1 and files[0].suffix == ".onnx"  # no temporary file left beside it
    for shape in ((1, 3, 32, 32), (5, 3, 32, 32), (2, 3, 40, 40)):  # 40 px: not the exported size, runs on torch
        x = torch.randn(*shape)
        with torch.no_grad():
            assert max_error(runner(x), resnet20(x)) <= 1e-4, shape
    # what the thread governor does beside a busy process: ONNX Runtime follows with a session of its own
    assert_matches_on_one_thread(runner, resnet20)
    sessions = runner.module.sessions
    assert 1 in sessions and len(set(map(id, sessions.values()))) == len(sessions)
    assert sessions[1].get_session_options().intra_op_num_threads == 1
    stamp = files[0].stat().st_mtime_ns
    _, again = build(resnet20, "fp32")
    assert "cached ONNX" in again.steps[-1] and files[0].stat().st_mtime_ns == stamp
    changed = copy.deepcopy(resnet20)
    with torch.no_grad():
        changed.fc.bias.add_(1.0)
    runner, _ = build(changed, "fp32")
    assert len(list((tmp_path / "onnx").iterdir())) == 2  # other weights, another export
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_error(runner(x), changed(x)) <= 1e-4


def test_a_torn_cache_file_is_exported_again(resnet20, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPRES_CACHE", str(tmp_path))
    folded, _ = fold_batchnorm(resnet20)
    path = onnx_cache_path(folded, (3, 32, 32))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an onnx file")
    runner, info = build(resnet20, "fp32")
    assert info.backend == "onnxruntime" and "exported ONNX" in info.steps[-1] and path.stat().st_size > 10_000
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert max_error(runner(x), resnet20(x)) <= 1e-4


def test_an_unwritable_cache_still_runs_on_onnxruntime(resnet20, tmp_path, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("DEEPRES_CACHE", str(blocker))
    runner, info = build(resnet20, "fp32")
    assert info.backend == "onnxruntime" and info.max_abs_error <= 1e-4 and "not cached" in info.steps[-1]
    assert blocker.read_text() == "a file where the cache folder should be"
    assert_matches_on_one_thread(runner, resnet20)  # no file to make a 1-thread session from: the one serves
    assert len(set(map(id, runner.module.sessions.values()))) == 1


class DataDependent(nn.Module):
    """Branches on a value: neither torch.fx (BatchNorm folding) nor torch.export (the ONNX exporter) can capture it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 3)

    def forward(self, x):
        y = self.bn(self.conv(x)).mean((2, 3))
        return self.head(y if y.sum() > -1e9 else -y)


def test_backend_choice_and_a_model_onnxruntime_cannot_take(resnet20, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPRES_CACHE", str(tmp_path))
    monkeypatch.setattr(deepres.core.device, "cpu_has_native_bf16", lambda: False)
    for request in (Request("fp32"), Request("auto")):  # auto: fp32 here, without native bf16
        plan = choose_path(resnet20, "cpu", None, request)
        assert plan.backend == "onnxruntime" and plan.torch_fallback and "backend='torch'" in plan.notes[-1]
    assert not choose_path(resnet20, "cpu", None, Request("fp32", backend="onnxruntime")).torch_fallback
    for request in (Request("eager"), Request("fp32", compile=True), Request("bf16")):
        assert choose_path(resnet20, "cpu", None, request).backend == "torch"
        with pytest.raises(ValueError, match="backend='onnxruntime' runs the fp32 fast path"):
            choose_path(resnet20, "cpu", None, Request(request.precision, compile=request.compile,
                                                       backend="onnxruntime"))
    assert choose_path(resnet20, "meta", None, "fp32").backend == "torch"
    with pytest.raises(ValueError, match="backend must be one of auto, torch, onnxruntime, got 'ort'"):
        choose_path(resnet20, "cpu", None, Request("fp32", backend="ort"))

    model = DataDependent().eval()
    plan = choose_path(model, "cpu", None, "fp32")  # no fx graph: BatchNorm stays, and the plan says so
    assert not plan.fold_bn and "BatchNorm left unfolded: cannot trace DataDependent" in plan.notes[0]
    runner, info = build_runner(model, plan, example_batch((3, 8, 8)))
    assert info.backend == "torch" and "ONNX Runtime backend failed" in info.notes[-1]
    assert info.reason == plan.reason == "precision='fp32' was asked for"  # the plan's reason, as it was made
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert max_error(runner(x), model(x)) <= 1e-5
    with pytest.raises(ValueError, match="DataDependent does not run on ONNX Runtime"):
        build(model, Request("fp32", backend="onnxruntime"), (3, 8, 8))
    with pytest.raises(ValueError, match="fold_bn=True: cannot trace DataDependent"):
        choose_path(model, "cpu", None, Request("fp32", fold_bn=True))
    assert not any(p.name.endswith(".onnx") for p in (tmp_path / "onnx").iterdir())  # no torn file left


def test_auto_on_a_cpu_without_bf16_says_it_runs_on_onnxruntime(resnet20, monkeypatch):
    monkeypatch.setattr(deepres.core.device, "cpu_has_native_bf16", lambda: False)
    _, info = build(resnet20)
    assert info.dtype == "fp32" and info.backend == "onnxruntime" and "ONNX Runtime" in info.reason


def test_auto_picks_bf16_only_with_native_support(resnet20, monkeypatch):
    monkeypatch.setattr(deepres.core.device, "cpu_has_native_bf16", lambda: True)
    assert choose_path(resnet20, "cpu").dtype == "bf16"
    monkeypatch.setattr(deepres.core.device, "cpu_has_native_bf16", lambda: False)
    assert choose_path(resnet20, "cpu").dtype == "fp32"


def test_choose_path_is_pure(resnet20):
    """The same question gets the same plan; the model is only looked at."""
    before = copy.deepcopy(resnet20.state_dict())
    training = [m.training for m in resnet20.modules()]
    for precision in (p for p in PRECISIONS if p != "int8"):  # int8 needs calibration: below
        assert choose_path(resnet20, "cpu", None, precision) == choose_path(resnet20, "cpu", None, precision)
    assert all(torch.equal(before[k], v) for k, v in resnet20.state_dict().items())
    assert [m.training for m in resnet20.modules()] == training


def test_choose_path_names_what_a_request_misses(resnet20):
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, int8, eager, got 'fp16'"):
        choose_path(resnet20, "cpu", None, "fp16")
    with pytest.raises(ValueError, match="precision='int8' needs calibration images .* or an int8 calibration "
                                         "stored with the weights"):
        choose_path(resnet20, "cpu", None, "int8")
    images = [torch.randn(2, 3, 32, 32)]
    with pytest.raises(ValueError, match="runs on the CPU only"):
        choose_path(resnet20, "meta", images, "int8")
    with pytest.raises(ValueError, match="calibration images are used by precision='int8' only"):
        choose_path(resnet20, "cpu", images, "bf16")
    for precision, calibration in (("eager", None), ("int8", images)):
        with pytest.raises(ValueError, match=f"compile=True needs a fast path .* not precision='{precision}'"):
            choose_path(resnet20, "cpu", calibration, Request(precision, compile=True))
    plan = choose_path(resnet20, "cpu", images, "int8")
    assert plan.int8_source == "images" and plan.reason == "precision='int8' was asked for" and not plan.fold_bn
    with pytest.raises(ValueError, match="pass calibration="):  # the images the plan counts on
        build_runner(resnet20, plan, example_batch((3, 32, 32)))


def test_bad_arguments_are_named(resnet20):
    with pytest.raises(ValueError, match="input_size"):
        example_batch((32, 32))
    with pytest.raises(ValueError, match="float NCHW"):
        build_runner(resnet20, choose_path(resnet20, "cpu", None, "fp32"), torch.randn(3, 32, 32))
    runner, _ = build(resnet20, "fp32", verify=False)
    with pytest.raises(ValueError, match="NCHW"):
        runner(torch.randn(3, 32, 32))


def test_the_old_names_still_work_and_warn():
    """fast= (Predictor, init_model, set_fast_path), fast_info, fast_reason, fast_mode, InferenceInfo.mode and
    fastpath.MODES are the deprecated names of precision, runner_info, plan.reason, precision and PRECISIONS."""
    with pytest.warns(DeprecationWarning, match="init_model\\(fast=...\\) is deprecated"):
        predictor = init_model(create_model("resnet20"), fast=False)
    assert predictor.precision == "eager"
    with pytest.warns(DeprecationWarning, match="set_fast_path\\(fast=...\\)"):
        predictor.set_fast_path(fast=True)
    assert predictor.precision == "auto"
    predictor(torch.randn(2, 3, 32, 32))
    with pytest.warns(DeprecationWarning, match="use .runner_info"):
        assert predictor.fast_info is predictor.runner_info
    with pytest.warns(DeprecationWarning, match="use .plan.reason"):
        assert predictor.fast_reason == predictor.plan.reason
    with pytest.warns(DeprecationWarning, match="use .precision"):
        assert predictor.fast_mode == "auto"
    with pytest.warns(DeprecationWarning, match="use .precision"):
        assert predictor.runner_info.mode == "auto"
    with pytest.warns(DeprecationWarning, match="Predictor\\(fast=...\\)"):
        assert Predictor(predictor.model, predictor.preprocess, predictor.class_names, fast="fp32").precision == "fp32"
    with pytest.warns(DeprecationWarning, match="use PRECISIONS"):
        assert fastpath.MODES == PRECISIONS


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # raised inside torch.compile
def test_compile_path_matches_and_handles_new_batch_sizes():
    torch.manual_seed(0)
    tiny = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)))
    runner, info = build(tiny, Request("fp32", compile=True), (3, 8, 8))
    assert info.compiled and info.compile_seconds > 0
    for batch in (2, 5, 2):  # 5 compiles a second graph; 2 again reuses the first
        x = torch.randn(batch, 3, 8, 8)
        with torch.no_grad():
            assert max_error(runner(x), tiny(x)) <= 1e-4
    assert sorted(runner.compile_seconds) == [(2, 3, 8, 8), (5, 3, 8, 8)]
    with pytest.raises(ValueError, match="int8"):
        choose_path(tiny, "cpu", [x], Request("int8", compile=True))


# ------------------------------------------------------------------------------------------ real data


@pytest.fixture(scope="module")
def trained_fashion_mnist(tmp_path_factory):
    """ResNet-20 trained for one epoch on 2000 Fashion-MNIST images (about 74% test top-1), 1000 real test images
    (normalised) and 128 training images for int8 calibration."""
    if not (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST IDX files not found in {FASHION_MNIST} (Debian package fashion-mnist)")
    from deepres.data import build_loaders
    from deepres.core.checkpoint import load_weights
    from deepres.core.config import load_config
    from deepres.tasks.build import build_model
    from deepres.train import fit

    tmp = tmp_path_factory.mktemp("fm")
    recipe = tmp / "fm_tiny.yaml"
    recipe.write_text(f"""
model: {{name: resnet20}}
data: {{name: fashion_mnist, val_split: test, image_size: 28, hflip: false, mean: [0.2860], std: [0.3530],
        batch_size: 32, eval_batch_size: 500, limit_train: 2000, limit_val: 1000}}
optim: {{name: adam, lr: 0.003, weight_decay: 5.0e-4}}
schedule: {{name: cosine, warmup_iters: 5}}
train: {{epochs: 1, amp: bf16, channels_last: true, progress: false}}
run: {{out_dir: {tmp / 'runs'}, name: fm}}
""")
    cfg = load_config(recipe)
    fit(cfg, log=lambda line: None)
    state_dict, metadata = load_weights(tmp / "runs" / "fm" / "checkpoints" / "last.safetensors")
    from deepres.core.config import config_from_dict

    cfg = config_from_dict(metadata["config"])
    model = build_model(cfg, torch.device("cpu")).eval()
    model.load_state_dict(state_dict)
    model = model.to(memory_format=torch.contiguous_format)
    train_loader, eval_loader, _ = build_loaders(cfg.data, torch.device("cpu"), seed=0)
    images = torch.cat([x.float() for x, _ in eval_loader])
    labels = torch.cat([y for _, y in eval_loader])
    calibration = [x.float() for _, (x, _) in zip(range(4), train_loader)]
    with torch.no_grad():
        expected = model(images)
    return model, images, labels, expected, calibration


# int8: 97%, not 99%, because this briefly trained model has small logit margins (98.7% measured); on the fully
# trained demo model int8 agrees on 99.7% of the test set (README, `deepres bench --agreement-checkpoint`).
@pytest.mark.parametrize("precision,min_agreement", [("fp32", 99.9), ("bf16", 99.0), ("int8", 97.0)])
def test_fast_paths_agree_with_fp32_on_real_images(trained_fashion_mnist, precision, min_agreement):
    model, images, labels, expected, calibration = trained_fashion_mnist
    accuracy = (expected.argmax(1) == labels).float().mean().item() * 100
    assert accuracy > 50, "the fixture model should have learned something"
    runner, _ = build(model, precision, tuple(images.shape[1:]), verify=False,
                      calibration=calibration if precision == "int8" else None)
    got = torch.cat([runner(images[i:i + 500]) for i in range(0, len(images), 500)])
    agreement = (got.argmax(1) == expected.argmax(1)).float().mean().item() * 100
    assert len(images) == 1000 and agreement >= min_agreement, f"{precision}: {agreement:.1f}% agreement"


def test_int8_self_check_runs_on_real_calibration_images(trained_fashion_mnist):
    model, _, _, _, calibration = trained_fashion_mnist
    runner, info = build(model, "int8", (1, 28, 28), calibration=iter(calibration))  # a generator: read once, kept
    assert info.check_batch == "the first calibration batch"
    with torch.no_grad():
        expected = model(calibration[0])
    assert info.max_abs_error == pytest.approx(float((runner(calibration[0]) - expected).abs().max()))
    _, bf16 = build(model, "bf16", (1, 28, 28))
    assert bf16.check_batch == "a random batch"


def test_self_check_leaves_every_module_training_flag_as_it_was():
    model = create_model("resnet20").train()
    model.layer1.eval()  # e.g. a frozen first stage
    build(model, "fp32")
    assert model.training and not model.layer1.training and model.layer2.training


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")
def test_compile_path_freezes_its_weights_and_only_its_own():
    """The compiled path bakes the weights into the graph (inductor freezing, which torch 2.13 ignores when given
    as a torch.compile option): changing the prepared module's weights afterwards changes nothing. A model compiled
    beside it, as training compiles one, still sees its own weight updates."""
    torch.manual_seed(0)
    tiny = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval()
    runner, _ = build(tiny, Request("fp32", compile=True), (3, 8, 8), batch_size=2)
    x = torch.randn(2, 3, 8, 8)
    before = runner(x)
    with torch.no_grad():
        runner.module.module[0].weight.mul_(-1)  # the prepared private copy that was compiled
    assert torch.equal(runner(x), before)

    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    compiled = torch.compile(other, dynamic=False)
    with torch.no_grad():
        first = compiled(x)
        other[0].weight.mul_(-1)
        assert not torch.allclose(compiled(x), first)


def test_int8_keeps_one_quantized_copy_per_input_shape(resnet20, monkeypatch):
    """x86 quantized convolutions cache their oneDNN primitive for the first input shape and rebuild it at every
    call of another shape; the int8 runner therefore calls a copy per shape (up to MAX_SHAPES, then the first one),
    and every copy gives what a model that only ever saw that shape gives."""
    torch.manual_seed(0)
    calibration = [torch.randn(8, 3, 32, 32)]
    runner, _ = build(resnet20, "int8", calibration=calibration, verify=False)
    assert isinstance(runner.module, PerShapeInt8)
    one, five = torch.randn(1, 3, 32, 32), torch.randn(5, 3, 32, 32)
    fresh = {1: copy.deepcopy(runner.module.pristine)(one), 5: copy.deepcopy(runner.module.pristine)(five)}
    for x in (five, one, five, one):
        assert torch.equal(runner(x), fresh[len(x)])
    assert sorted(runner.module.by_shape) == [(1, 3, 32, 32), (5, 3, 32, 32)]
    assert runner.module.by_shape[(1, 3, 32, 32)] is not runner.module.by_shape[(5, 3, 32, 32)]

    monkeypatch.setattr(PerShapeInt8, "MAX_SHAPES", 1)
    capped, _ = build(resnet20, "int8", calibration=calibration, verify=False)
    assert torch.equal(capped(five), fresh[5]) and torch.allclose(capped(one), fresh[1], atol=1e-4)
    assert list(capped.module.by_shape) == [(5, 3, 32, 32)]
