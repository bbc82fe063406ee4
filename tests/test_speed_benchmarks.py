"""The issue-15 benchmark scripts run end to end at --quick sizes (their figures are for an idle machine: no timing
is checked here)."""
import importlib.util
import json
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_speed_quick_prints_the_machine_and_both_rows(tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "train_speed.json"
    assert load_script("train_speed").main(["--quick", "--out", str(out)]) == 0
    torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "CPU: " in printed and "ISA flags:" in printed and "| plain eager fp32 img/s |" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [r["case"] for r in rows] == ["resnet20 fashion-mnist", "resnet50 32px"]
    assert all(r["plain_images_per_s"] > 0 and r["deepres_images_per_s"] > 0 for r in rows)


def test_contention_quick_times_each_path_idle_and_loaded(tmp_path, capsys):
    out = tmp_path / "contention.json"
    assert load_script("contention").main(["--quick", "--paths", "eager_fp32,fp32", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| idle img/s | loaded img/s | slowdown |" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [r["path"] for r in rows] == ["eager_fp32", "fp32"]
    assert all(r["idle"] > 0 and r["loaded"] > 0 for r in rows)
