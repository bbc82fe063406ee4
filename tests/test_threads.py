"""Threads never exceed the available cores (affinity, cgroup quota): torch compute threads plus DataLoader workers
fit them in training, and inference commands cap --threads; a warning when the load average exceeds the cores.
And the heap (core.device.keep_freed_memory): large blocks are reused, not faulted in again."""
import os
import subprocess
import sys

import pytest
import torch
from train_fakes import tiny_loaders

import deepres.core.device as device
from deepres.cli import main
from deepres.core.device import (available_cores, cgroup_cpu_quota, limit_compute_threads, load_warning,
                                 thread_plan)
from deepres.data.loaders import loader_workers
from deepres.train import fit
from test_int8_calibration import tiny_config


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cores(monkeypatch):
    """Pretend this process may run on `n` cores (its affinity mask), with no cgroup quota."""
    def set_cores(n):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)
        monkeypatch.setattr(device, "cgroup_cpu_quota", lambda: None)
    return set_cores


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_quota_v2_and_v1(tmp_path):
    assert cgroup_cpu_quota(str(tmp_path)) is None  # no files: no quota
    write(tmp_path / "v2" / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "v2")) == 1.5
    write(tmp_path / "v2max" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "v2max")) is None
    write(tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us", "200000\n")
    write(tmp_path / "v1" / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "v1")) == 2.0
    write(tmp_path / "v1none" / "cpu" / "cpu.cfs_quota_us", "-1\n")
    write(tmp_path / "v1none" / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "v1none")) is None


def test_available_cores_is_the_affinity_capped_by_the_quota(monkeypatch, cores):
    cores(4)
    assert available_cores() == 4
    monkeypatch.setattr(device, "cgroup_cpu_quota", lambda: 1.5)  # 1.5 cores of time: 2 threads can use it
    assert available_cores() == 2
    monkeypatch.setattr(device, "cgroup_cpu_quota", lambda: 0.2)
    assert available_cores() == 1


def test_workers_and_threads_together_fit_the_cores(cores):
    cores(1)
    assert thread_plan(4) == (0, 1) and loader_workers(4) == 0
    cores(2)
    assert thread_plan(4) == (1, 1) and thread_plan(0) == (0, 2)
    assert thread_plan(2, processes=2) == (0, 1)  # two torchrun processes on two cores
    cores(8)
    assert thread_plan(2) == (2, 6) and loader_workers(2) == 2


def test_compute_threads_never_exceed_one_core(cores):
    torch.set_num_threads(2)
    cores(1)
    assert limit_compute_threads() == 1 and torch.get_num_threads() == 1
    assert limit_compute_threads(8) == 1 and torch.get_num_threads() == 1  # an explicit --threads is capped too
    cores(4)
    torch.set_num_threads(1)
    assert limit_compute_threads() == 1  # never raised by default: a study may have set fewer on purpose
    assert limit_compute_threads(3) == 3
    with pytest.raises(ValueError, match="threads must be >= 1"):
        limit_compute_threads(0)


def test_training_on_one_core_uses_one_thread_and_restores_the_setting(tmp_path, cores):
    torch.set_num_threads(2)
    cores(1)
    seen = []

    class Recording:  # a train loader that notes torch's thread count while training reads it
        def __init__(self, loader):
            self.loader = loader

        def __len__(self):
            return len(self.loader)

        def set_epoch(self, epoch):
            self.loader.set_epoch(epoch)

        def __iter__(self):
            for batch in self.loader:
                seen.append(torch.get_num_threads())
                yield batch

    train, evaluation, info = tiny_loaders()
    fit(tiny_config(tmp_path, "one-core", epochs=1), device="cpu", loaders=(Recording(train), evaluation, info),
        log=lambda line: None)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2


def test_load_warning_when_the_load_average_exceeds_the_cores(monkeypatch, cores):
    cores(2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    assert load_warning() is None
    monkeypatch.setattr(os, "getloadavg", lambda: (7.25, 3.0, 1.0))
    warning = load_warning()
    assert "load average (7.2)" in warning and "2 available core(s)" in warning


def test_deepres_bench_prints_the_warning_before_its_table(monkeypatch, capsys, cores):
    cores(2)
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    argv = ["bench", "--case", "resnet20:16:1", "--paths", "eager_fp32", "--agreement-images", "1", "--seconds",
            "0", "--warmup", "0", "--min-iterations", "1", "--max-iterations", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.index("WARNING: the load average (9.0)") < out.index("| ")


class FakeClock:
    """time.monotonic / time.process_time for the governor, and a /proc/stat whose busy ticks we advance."""

    def __init__(self, stat_path, cpus=2):
        self.stat_path, self.cpus = stat_path, cpus
        self.wall = self.own = 0.0
        self.busy_ticks = [0] * cpus
        self.write()

    def write(self):
        lines = [f"cpu  {sum(self.busy_ticks)} 0 0 0 0 0 0 0 0 0"]
        lines += [f"cpu{i} {t} 0 0 1000 0 0 0 0 0 0" for i, t in enumerate(self.busy_ticks)]
        self.stat_path.write_text("\n".join(lines) + "\nintr 0\n")

    def advance(self, seconds, *, own_cores, other_cores):
        """`seconds` pass with this process busy on own_cores and other processes on other_cores."""
        hz = os.sysconf("SC_CLK_TCK")
        self.wall += seconds
        self.own += seconds * own_cores
        total = round(seconds * (own_cores + other_cores) * hz)
        for i in range(self.cpus):
            self.busy_ticks[i] += total // self.cpus
        self.write()

    def monotonic(self):
        return self.wall

    def process_time(self):
        return self.own


@pytest.fixture
def governed(tmp_path, monkeypatch, cores):
    cores(2)
    clock = FakeClock(tmp_path / "stat")
    monkeypatch.setattr(device.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(device.time, "process_time", clock.process_time)
    monkeypatch.delenv("DEEPRES_ADAPTIVE_THREADS", raising=False)
    torch.set_num_threads(2)
    return clock, device.ThreadGovernor(interval=1.0, stat_path=str(clock.stat_path))


def test_thread_governor_drops_to_the_free_cores_and_comes_back(governed):
    clock, governor = governed
    assert governor.enabled and governor.tick() is None and governor.ceiling == 2  # the first tick only samples
    clock.advance(1.0, own_cores=2, other_cores=0)
    assert governor.tick() is None and torch.get_num_threads() == 2  # alone on the machine: all cores
    clock.advance(1.0, own_cores=1, other_cores=1)  # a busy process arrives
    assert governor.tick() == 1 and torch.get_num_threads() == 1 and governor.others == pytest.approx(1, abs=0.02)
    clock.advance(0.5, own_cores=1, other_cores=0)
    assert governor.tick() is None  # within the interval: no /proc read, no change
    clock.advance(1.0, own_cores=1, other_cores=0.2)  # it left; a little background work does not count
    assert governor.tick() == 2 and torch.get_num_threads() == 2
    clock.advance(1.0, own_cores=0, other_cores=5)  # never fewer than 1 thread
    assert governor.tick() == 1
    clock.advance(1.0, own_cores=1, other_cores=0)
    assert governor.tick() == 2  # never more than the ceiling ...
    clock.advance(1.0, own_cores=1, other_cores=0)
    assert governor.tick() is None and torch.get_num_threads() <= device.available_cores()


def test_thread_governor_counts_the_jobs_own_workers_as_its_own(governed):
    clock, _ = governed
    governor = device.ThreadGovernor(interval=1.0, reserved=1.0, stat_path=str(clock.stat_path))
    governor.ceiling = 1  # limit_compute_threads: 1 compute thread + 1 loader worker on 2 cores
    torch.set_num_threads(1)
    governor.tick()
    clock.advance(1.0, own_cores=1, other_cores=1)  # the other busy core is our DataLoader worker
    assert governor.tick() is None and torch.get_num_threads() == 1 and governor.others == pytest.approx(0, abs=0.02)


def test_thread_governor_stays_off_where_it_cannot_see_the_cores(governed, monkeypatch):
    clock, _ = governed
    monkeypatch.setenv("DEEPRES_ADAPTIVE_THREADS", "0")
    assert not device.ThreadGovernor(stat_path=str(clock.stat_path)).enabled
    monkeypatch.delenv("DEEPRES_ADAPTIVE_THREADS")
    monkeypatch.setattr(device, "cgroup_cpu_quota", lambda: 1.5)  # a quota: the host's other tenants would count
    assert not device.ThreadGovernor(stat_path=str(clock.stat_path)).enabled
    monkeypatch.setattr(device, "cgroup_cpu_quota", lambda: None)
    assert not device.ThreadGovernor(stat_path=str(clock.stat_path.parent / "missing")).enabled
    governor = device.ThreadGovernor(stat_path=str(clock.stat_path))
    assert governor.enabled


def test_limit_compute_threads_sets_the_governors_ceiling(cores):
    cores(2)
    torch.set_num_threads(2)
    assert limit_compute_threads(workers=1) == 1
    assert device._GOVERNOR.ceiling == 1 and device._GOVERNOR.reserved == 1


@pytest.mark.parametrize("deterministic", [False, True])
def test_training_adapts_threads_per_step_unless_deterministic(tmp_path, monkeypatch, deterministic):
    import deepres.train.loop as loop

    calls = []
    monkeypatch.setattr(loop, "adapt_threads", lambda: calls.append(1))
    fit(tiny_config(tmp_path, "r", epochs=1, deterministic=deterministic), device="cpu", loaders=tiny_loaders(),
        log=lambda line: None)
    assert len(calls) == (0 if deterministic else 4)  # 64 images, batch 16: 4 optimizer steps


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt: Linux only")
def test_keep_freed_memory_stops_page_faults_on_large_blocks():
    """A 64 MB tensor allocated again after a free page-faults every page back in under glibc's defaults (the block
    is unmapped on free); with keep_freed_memory the heap keeps it, and once settled the allocations cost no faults.
    DEEPRES_KEEP_FREED_MEMORY=0 leaves malloc alone. Each case runs in a fresh interpreter: mallopt is per
    process."""
    script = ("import resource, torch\n"
              "from deepres.core.device import keep_freed_memory\n"
              "kept = keep_freed_memory()\n"
              "for _ in range(20):\n"
              "    torch.ones(16 << 20)\n"  # 64 MB, allocated, filled and freed: the heap settles in a few
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
              "for _ in range(5):\n"
              "    torch.ones(16 << 20)\n"
              "print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    results = {}
    for setting in ("1", "0"):
        env = {**os.environ, "DEEPRES_KEEP_FREED_MEMORY": setting}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        kept, faults = out.stdout.split()
        results[setting] = (kept, int(faults))
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert results["0"][0] == "False" and results["0"][1] > 5 * pages // 2  # every page faulted in, every time
    assert results["1"][0] == "True" and results["1"][1] < pages // 20


def test_onnxruntime_sessions_get_the_ceiling_not_a_moment_of_contention(governed, monkeypatch, tmp_path):
    """A peer ONNX Runtime session made while the governor has dropped torch to 1 thread still gets the
    uncontended count (core.device.thread_ceiling), or a benchmark would time it on 1 thread for good."""
    import onnxruntime as ort

    from deepres.inference.export import export_onnx, onnxruntime_runner

    clock, governor = governed
    monkeypatch.setattr(device, "_GOVERNOR", governor)
    assert device.thread_ceiling() == 2  # no tick yet: torch's count
    governor.tick()
    clock.advance(1.0, own_cores=1, other_cores=1)
    assert governor.tick() == 1 and torch.get_num_threads() == 1 and device.thread_ceiling() == 2
    made, real_session = [], ort.InferenceSession

    def session(path, options, providers):
        made.append(options.intra_op_num_threads)
        return real_session(path, options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", session)
    conv = torch.nn.Conv2d(3, 4, 3).eval()
    x = torch.randn(2, 3, 8, 8)
    export_onnx(conv, x, tmp_path / "m.onnx")
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(onnxruntime_runner(tmp_path / "m.onnx")(x)), conv(x), atol=1e-5)
    assert made == [2]
