"""The issue-15 benchmark scripts run end to end at --quick sizes (their figures are for an idle machine: no timing
is checked here)."""
import importlib.util
import json
import os
import subprocess
import sys
import time
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


def test_train_speed_runs_as_a_lower_cpu_class_in_a_new_process(tmp_path):
    """--isa re-executes the script once with the restriction (a loop of re-executions once hung it)."""
    out = tmp_path / "train_speed.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "train_speed.py"), "--quick", "--isa", "avx2",
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "class avx2 (restricted from" in done.stdout or "class avx2 " in done.stdout
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_class"].startswith("avx2")
    assert all("amp=auto -> none" in r["deepres_setup"] for r in report["rows"])  # no native bf16 on AVX2


def test_contention_quick_times_each_path_idle_and_loaded(tmp_path, capsys):
    out = tmp_path / "contention.json"
    assert load_script("contention").main(["--quick", "--paths", "eager_fp32,fp32", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| idle img/s | loaded img/s | slowdown |" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [r["path"] for r in rows] == ["eager_fp32", "fp32"]
    assert all(r["idle"] > 0 and r["loaded"] > 0 for r in rows)


def test_serve_load_counts_the_cpu_time_of_its_child_processes():
    """The server's CPU ms per request come from its process's /proc stat: a child that burns about 0.5 s of CPU
    shows up there, and the count never includes this process itself."""
    children_cpu_seconds = load_script("serve_load").children_cpu_seconds
    before = children_cpu_seconds()
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 0.5\n"
                              "while time.process_time() < end: pass\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while children_cpu_seconds() - before < 0.4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert 0.4 <= children_cpu_seconds() - before < 5
    finally:
        child.kill()
        child.wait()


def test_serve_load_quick_serves_the_demo_model_and_prints_its_table():
    """benchmarks/serve_load.py --quick end to end: its raw HTTP/1.1 client gets every answer from a real `deepres
    serve` (a non-200 would end the run) and the table has a row per cell with what was measured."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / "serve_load.py"), "--quick"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| demo |")]
    assert [(r[1].strip(), r[2].strip()) for r in rows] == [("on", "1"), ("on", "8"), ("off", "1"), ("off", "8")]
    for row in rows:
        requests_per_s, server_ms, client_ms = float(row[3]), float(row[10]), float(row[11])
        assert requests_per_s > 0 and server_ms > 0 and 0 <= client_ms < server_ms
