"""The choice rules per CPU class (issue 25): training precision, inference path (choose_path: the precision, its
backend and the int8 default, with the reason) decided from the machine's flags, and DEEPRES_CPU_ISA, which makes a
higher class decide as a lower one."""
import json

import pytest
import torch
import torch.nn as nn
from test_train_loop import tiny_config
from train_fakes import tiny_loaders

import deepres.core.device as device_facts
from deepres.core.device import (CPU_ISA_ENV, auto_dtype, cpu_class, cpu_class_label, cpu_int8_flags,
                                 isa_restriction_env, resolve_amp)
from deepres.inference.int8 import Int8Calibration
from deepres.inference.plan import Request, choose_path
from deepres.train.loop import fit

CPU = torch.device("cpu")
# /proc/cpuinfo flags of the three classes seen (abridged to what the rules read)
AVX2_EPYC = frozenset({"sse4_2", "fma", "avx", "avx2"})
ZEN4 = AVX2_EPYC | {"avx512f", "avx512bw", "avx512_bf16", "avx512_vnni"}
XEON_AMX = ZEN4 | {"avx_vnni", "amx_bf16", "amx_int8", "amx_tile"}
CLASSES = {"avx2": AVX2_EPYC, "avx512": ZEN4, "amx": XEON_AMX}
OLD_X86 = frozenset({"sse4_2"})  # class "baseline": no AVX2


@pytest.fixture
def flags(monkeypatch):
    """Pretend this machine has the given /proc/cpuinfo flags."""
    monkeypatch.delenv(CPU_ISA_ENV, raising=False)

    def use(flag_set):
        monkeypatch.setattr(device_facts, "_proc_cpu_flags", lambda: frozenset(flag_set))
    return use


def calibration(agreement=99.8, cpu_int8=("amx_int8",)):
    return Int8Calibration(ranges={}, agreement=agreement, eval_images=1000, calibration_images=256,
                           cpu_int8=list(cpu_int8))


@pytest.mark.parametrize("name, train_amp, inference, int8_flags", [
    ("avx2", "none", "fp32", []),
    ("avx512", "bf16", "bf16", ["avx512_vnni"]),
    ("amx", "bf16", "bf16", ["amx_int8", "avx512_vnni", "avx_vnni"]),
])
def test_each_class_picks_its_precision(flags, name, train_amp, inference, int8_flags):
    flags(CLASSES[name])
    assert cpu_class() == name
    assert resolve_amp("auto", CPU).amp == train_amp
    assert auto_dtype(CPU) == inference
    assert cpu_int8_flags() == int8_flags
    # an explicit bf16 runs everywhere; only where it is emulated does it say so
    explicit = resolve_amp("bf16", CPU)
    assert explicit.amp == "bf16" and explicit.emulated == (name == "avx2")
    if name == "avx2":
        assert "emulated" in explicit.reason and "10x slower" in explicit.reason
    assert resolve_amp("none", CPU).amp == "none"


@pytest.fixture
def model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2)).eval()


NO_CALIBRATION = "not int8: no int8 calibration stored"


@pytest.mark.parametrize("name, stored, dtype, says", [
    ("avx2", None, "fp32", ["auto: fp32 because this cpu lacks bf16", "run by ONNX Runtime", NO_CALIBRATION]),
    ("avx512", None, "bf16", ["auto: bf16 because this cpu computes bf16", NO_CALIBRATION]),
    ("amx", None, "bf16", ["auto: bf16 because this cpu computes bf16", NO_CALIBRATION]),
    ("baseline", calibration(cpu_int8=[]), "fp32", ["not int8: this CPU has no AVX2"]),
    # no VNNI: int8 only with a calibration measured without VNNI too (its kernels' rounding)
    ("avx2", calibration(cpu_int8=[]), "int8", ["auto: int8 because", "this CPU (class avx2) runs int8 faster"]),
    ("avx2", calibration(cpu_int8=["amx_int8"]), "fp32", ["not int8: this CPU has no VNNI", "`deepres calibrate`"]),
    ("avx512", calibration(), "int8", ["agrees with fp32 on 99.80% of 1000 images", "this CPU has avx512_vnni"]),
    ("amx", calibration(cpu_int8=["avx512_vnni"]), "int8", ["this CPU has amx_int8, avx512_vnni, avx_vnni"]),
    ("amx", calibration(cpu_int8=[]), "int8", ["auto: int8"]),  # measured on int16-summing kernels: VNNI is exact
    ("amx", calibration(agreement=99.0), "bf16", ["not int8: the stored int8 calibration agrees with fp32 on 99.00%",
                                                  "below the 99.5% bar"]),
])
def test_choose_path_per_class_and_calibration(flags, model, name, stored, dtype, says):
    flags({**CLASSES, "baseline": OLD_X86}[name])
    plan = choose_path(model, CPU, stored)
    assert plan.precision == "auto" and plan.dtype == dtype
    assert all(part in plan.reason for part in says), plan.reason
    assert plan.int8_source == ("stored" if dtype == "int8" else "") and plan.channels_last and not plan.compile
    assert plan.fold_bn == (dtype != "int8")  # int8 fuses conv-BN-ReLU itself
    assert plan.backend == ("onnxruntime" if dtype == "fp32" else "torch")


def test_an_explicit_precision_wins_over_the_class_rules(flags, model):
    flags(XEON_AMX)  # where a good calibration makes auto int8
    assert choose_path(model, CPU, calibration()).dtype == "int8"
    for precision, dtype in (("fp32", "fp32"), ("bf16", "bf16"), ("eager", "fp32")):
        plan = choose_path(model, CPU, calibration(), precision)
        assert plan.dtype == dtype and plan.reason == f"precision={precision!r} was asked for"
    assert not choose_path(model, CPU, calibration(), "eager").fold_bn
    flags(AVX2_EPYC)  # emulated bf16, and int8 from a calibration auto would not take here: both run when asked
    assert choose_path(model, CPU, None, "bf16").dtype == "bf16"
    plan = choose_path(model, CPU, calibration(agreement=50.0), "int8")
    assert plan.dtype == "int8" and plan.int8_source == "stored" and plan.reason == "precision='int8' was asked for"


def test_auto_names_why_a_good_calibration_is_not_used(flags, model):
    flags(XEON_AMX)
    cases = ((Request(stale_calibration=True), CPU, "the stored int8 calibration is of the weights before load_"),
             (Request(compile=True), CPU, "compile=True was asked and int8 does not compile"),
             (Request(), torch.device("meta"), "int8 runs on the CPU only, not meta"))
    for request, device, why in cases:
        plan = choose_path(model, device, calibration(), request)
        assert plan.dtype != "int8" and f"not int8: {why}" in plan.reason


def test_the_override_hides_the_higher_classes(flags, monkeypatch):
    flags(XEON_AMX)
    monkeypatch.setenv(CPU_ISA_ENV, "avx2")
    assert cpu_class() == "avx2" and cpu_int8_flags() == [] and auto_dtype(CPU) == "fp32"
    assert resolve_amp("auto", CPU).amp == "none"
    assert cpu_class_label().startswith("avx2 (restricted from amx")
    monkeypatch.setenv(CPU_ISA_ENV, "avx512")
    assert cpu_class() == "avx512" and auto_dtype(CPU) == "bf16" and cpu_int8_flags() == ["avx512_vnni"]
    assert resolve_amp("auto", CPU).amp == "bf16"
    monkeypatch.setenv(CPU_ISA_ENV, "amx")
    assert cpu_class() == "amx"
    flags(AVX2_EPYC)  # a restriction never adds what the machine lacks
    assert cpu_class() == "avx2"
    monkeypatch.setenv(CPU_ISA_ENV, "avx1024")
    with pytest.raises(ValueError, match="DEEPRES_CPU_ISA='avx1024': must be one of avx2, avx512, amx"):
        cpu_class()


def test_restriction_env_limits_every_kernel_library_and_keeps_its_own_inductor_cache(monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/cache/inductor")
    env = isa_restriction_env("avx2")
    assert env == {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
                   "MKL_ENABLE_INSTRUCTIONS": "AVX2", CPU_ISA_ENV: "avx2",
                   # inductor's cache mixes vector widths up (see isa_restriction_env): never the shared one
                   "TORCHINDUCTOR_CACHE_DIR": "/cache/inductor-isa-avx2"}
    assert isa_restriction_env("avx512")["TORCHINDUCTOR_CACHE_DIR"] == "/cache/inductor-isa-avx512"
    for name, value in env.items():  # the re-executed process finds its environment complete: no second exec
        monkeypatch.setenv(name, value)
    assert isa_restriction_env("avx2") == env
    assert isa_restriction_env("avx512")["TORCHINDUCTOR_CACHE_DIR"] == "/cache/inductor-isa-avx512"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert isa_restriction_env("avx2")["TORCHINDUCTOR_CACHE_DIR"].endswith("-isa-avx2")
    assert isa_restriction_env("amx") == {CPU_ISA_ENV: "amx"}  # nothing restricted: the machine's own cache
    with pytest.raises(ValueError, match="CPU class 'sse'"):
        isa_restriction_env("sse")


def test_bad_amp_is_named():
    with pytest.raises(ValueError, match="amp='fp8': must be one of auto, none, bf16, fp16"):
        resolve_amp("fp8", CPU)


@pytest.mark.parametrize("name, resolved", [("avx2", "none"), ("avx512", "bf16"), ("amx", "bf16")])
def test_training_records_the_precision_it_resolved(tmp_path, flags, name, resolved):
    flags(CLASSES[name])
    lines = []
    fit(tiny_config(tmp_path, epochs=1), loaders=tiny_loaders(), device="cpu", log=lines.append)
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["train_precision"]["requested"] == "auto" and env["train_precision"]["resolved"] == resolved
    assert env["cpu_class"] == name
    assert any(f"amp={resolved} (auto:" in line for line in lines)
    assert not any("emulated" in line for line in lines)


def test_explicit_bf16_on_an_avx2_cpu_trains_and_warns(tmp_path, flags):
    flags(AVX2_EPYC)
    lines = []
    result = fit(tiny_config(tmp_path, epochs=1, amp="bf16"), loaders=tiny_loaders(), device="cpu",
                 log=lines.append)
    assert result["finished"]
    warnings = [line for line in lines if line.startswith("warning: train.amp=bf16 as asked")]
    assert len(warnings) == 1 and "emulated" in warnings[0]
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["train_precision"]["resolved"] == "bf16"
