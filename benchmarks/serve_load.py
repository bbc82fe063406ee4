"""Load test of `deepres serve` on 127.0.0.1: requests/s and p50/p95/p99 latency at 1, 8 and 32 concurrent clients,
with dynamic batching on (--max-batch 32 --max-wait-ms 5) and off (--max-batch 1), next to the offline images/s of
the same fast path at batch 32 (what `deepres bench` measures), so the table says how close serving gets to it,
and the CPU time per request of the server (its process and threads, from /proc) and of this load generator: on 2
cores they share, a client that costs as much as the server halves what the server can do.

Each client sends one image per request (POST /v1/predict, raw body) and waits for the answer before sending the
next; each cell runs for --seconds (at most --max-requests requests) after --warmup requests. The server runs in a
subprocess (tests/serve_helpers.py serve_subprocess), so client and server share the machine's cores: the numbers
are for one machine serving itself, a lower bound for a server with the machine to itself.

    python benchmarks/serve_load.py                          # resnet50 at 224 and the demo model, 10 s per cell
    python benchmarks/serve_load.py --models runs/demo-...   # any MODEL `deepres serve` takes
    python benchmarks/serve_load.py --quick                  # a random Fashion-MNIST ResNet-20, 1 and 8 clients, 1 s

The demo model defaults to a random-weight Fashion-MNIST ResNet-20 (the architecture and input of `make demo`;
speed does not depend on the weights). The load generator is a raw HTTP/1.1 client (RawClient): a request costs it
tens of microseconds of CPU. Time it with nothing else running.
"""
import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # serve_helpers: `deepres serve` in a subprocess

from deepres.core.checkpoint import save_checkpoint  # noqa: E402
from deepres.core.config import Config, config_to_dict  # noqa: E402
from deepres.core.device import (CPU_CLASSES, cpu_class_label, cpu_model_name, load_warning,  # noqa: E402
                                 reexec_as_cpu_class)
from deepres.inference import init_model  # noqa: E402
from deepres.inference.bench import percentile, time_calls  # noqa: E402
from deepres.models import create_model  # noqa: E402
from serve_helpers import serve_subprocess  # noqa: E402

BATCHING = {"on": ["--max-batch", "32", "--max-wait-ms", "5"], "off": ["--max-batch", "1", "--max-wait-ms", "0"]}
DEMO = "demo"  # --models entry: the random Fashion-MNIST ResNet-20 written to a temporary run directory


def demo_run(directory: Path) -> Path:
    cfg = Config()
    cfg.model.name, cfg.model.num_classes, cfg.model.in_chans, cfg.data.name = "resnet20", 10, 1, "fashion_mnist"
    save_checkpoint(directory / "checkpoints", "last", model=create_model("resnet20", num_classes=10, in_chans=1),
                    state={"step": 0, "epoch": 0}, config=config_to_dict(cfg), classes=[str(i) for i in range(10)])
    return directory


def request_image(model: str) -> bytes:
    """A JPEG the model's preprocessing has work to do on: a Fashion-MNIST example for 28 px models, else 320x240."""
    side = init_model(model, precision="eager").preprocess.input_size[-1]
    if side <= 32:
        return (ROOT / "examples" / "fashion_mnist" / "t10k_0000_ankle_boot.png").read_bytes()
    pixels = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def offline_images_per_s(model: str, batch: int, seconds: float) -> float:
    """Predictor.forward on a random batch, the default fast path: deepres bench's number for this model."""
    predictor = init_model(model)
    x = torch.randn(batch, *predictor.preprocess.input_size)
    times = time_calls(predictor.forward, x, warmup=2, seconds=seconds, min_iterations=3, max_iterations=200)
    return batch / statistics.median(times)


async def load(url: str, body: bytes, clients: int, seconds: float, max_requests: int, warmup: int) -> dict:
    """`clients` closed-loop clients (one keep-alive connection each) for `seconds` after `warmup` requests:
    requests/s, latency percentiles (ms), the mean images per model call while timed (from /metrics), and the CPU
    ms per request of the server and of this client."""
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    request = (f"POST /v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/octet-stream\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    connections = [(await loop.create_connection(lambda: RawClient(request), host, port))[1] for _ in range(clients)]
    try:
        await asyncio.gather(*(c.run(until=None, count=-(-warmup // clients)) for c in connections))
        images_before, calls_before = batch_totals(get_text(f"{url}/metrics"))
        server_cpu, client_cpu = children_cpu_seconds(), time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(c.run(until=started + seconds, count=-(-max_requests // clients))
                               for c in connections))
        elapsed = time.perf_counter() - started
        server_cpu, client_cpu = children_cpu_seconds() - server_cpu, time.process_time() - client_cpu
        images, calls = batch_totals(get_text(f"{url}/metrics"))
    finally:
        for c in connections:
            c.transport.close()
    latencies = [t for c in connections for t in c.latencies]
    requests = max(len(latencies), 1)
    return {"requests": len(latencies), "rps": len(latencies) / elapsed,
            **{f"p{q}": percentile(latencies, q) * 1e3 for q in (50, 95, 99)},
            "mean_batch": (images - images_before) / max(calls - calls_before, 1),
            "server_cpu_ms": server_cpu / requests * 1e3, "client_cpu_ms": client_cpu / requests * 1e3}


class RawClient(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection sending the same pre-encoded request again each time the previous answer
    has arrived whole (its Content-Length read, its body counted, nothing parsed): a load generator that spends
    tens of microseconds of CPU per request, where httpx spent 1.2-3.6 ms (its own table) on the cores the server
    needs. Any answer but 200 ends the run with its status line."""

    def __init__(self, request: bytes):
        self.request, self.buffer, self.needed = request, bytearray(), None
        self.latencies: list[float] = []
        self.transport = self.done = self.until = None
        self.left = self.sent_at = 0

    def connection_made(self, transport):
        self.transport = transport

    async def run(self, until: float | None, count: int) -> None:
        """Requests one after another until the clock passes `until` (None: no limit) or `count` have been
        answered; the latencies are kept only when `until` is set (a timed run)."""
        self.until, self.left = until, count
        self.done = asyncio.get_running_loop().create_future()
        self._send()
        await self.done

    def _send(self):
        self.sent_at = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data):
        self.buffer += data
        while True:
            if self.needed is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buffer[:end]).lower()
                if not head.startswith(b"http/1.1 200"):
                    status = bytes(self.buffer[:self.buffer.find(b"\r\n")]).decode("latin-1")
                    return self._fail(f"the server answered {status!r}")
                start = head.find(b"\r\ncontent-length:")
                if start < 0:
                    return self._fail("the server's answer has no Content-Length")
                self.needed = end + 4 + int(head[start + 17:head.find(b"\r\n", start + 2)])
            if len(self.buffer) < self.needed:
                return
            del self.buffer[:self.needed]
            self.needed = None
            now = time.perf_counter()
            if self.until is not None:
                self.latencies.append(now - self.sent_at)
            self.left -= 1
            if self.left <= 0 or (self.until is not None and now >= self.until):
                if not self.done.done():
                    self.done.set_result(None)
                return
            self._send()

    def _fail(self, message: str):
        if not self.done.done():
            self.done.set_exception(RuntimeError(message))

    def connection_lost(self, error):
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError(f"the server closed the connection ({error})"))


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


def children_cpu_seconds() -> float:
    """CPU seconds (user + system, all threads) used so far by this process's live child processes: the server
    that serve_subprocess started. From /proc/PID/stat (Linux); 0 elsewhere."""
    total, me, tick = 0.0, os.getpid(), os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == me:
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14 and 15 of stat)
    return total


def batch_totals(metrics: str) -> tuple[float, float]:
    """(images, model calls) so far, from the deepres_batch_size histogram."""
    values = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line.startswith("deepres_batch_size_"))
    return float(values["deepres_batch_size_sum"]), float(values["deepres_batch_size_count"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", DEMO],
                        help=f"MODEL specs as `deepres serve` takes them; {DEMO!r}: a random Fashion-MNIST ResNet-20")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients per cell")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per cell")
    parser.add_argument("--max-requests", type=int, default=5000, help="requests per cell at most")
    parser.add_argument("--warmup", type=int, default=8, help="untimed requests before each cell")
    parser.add_argument("--quick", action="store_true", help="the demo model only, 1 and 8 clients, 1 s per cell: "
                                                             "checks that the benchmark runs")
    parser.add_argument("--isa", choices=CPU_CLASSES, help="client and server run as a CPU of this class would "
                        "(kernels and deepres's choice rules restricted, core.device.isa_restriction_env)")
    args = parser.parse_args()
    reexec_as_cpu_class(args.isa)  # the server subprocess inherits the restricted environment
    if args.quick:
        args.models, args.clients, args.seconds, args.warmup, args.max_requests = [DEMO], [1, 8], 1.0, 2, 200
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    warning = load_warning()  # a busy machine makes every figure below slower
    if warning:
        print(warning)
    print(f"CPU: {cpu_model_name()}, class {cpu_class_label()}, {os.cpu_count()} logical cores, torch "
          f"{torch.__version__}; client and server on "
          f"one machine, one image per request, {args.seconds:g} s per cell", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models:
            model = str(demo_run(Path(tmp) / "demo")) if spec == DEMO else spec
            body = request_image(model)
            offline = offline_images_per_s(model, 32, min(args.seconds, 5.0))
            for batching, options in BATCHING.items():
                with serve_subprocess(model, *options, env=env) as url:
                    for clients in args.clients:
                        result = asyncio.run(load(url, body, clients, args.seconds, args.max_requests, args.warmup))
                        rows.append({"model": spec, "batching": batching, "clients": clients, **result,
                                     "offline": offline})
                        print(f"{spec} batching {batching} {clients} clients: {result['rps']:.1f} req/s",
                              file=sys.stderr)
    print("| model | batching | clients | requests/s | p50 ms | p95 ms | p99 ms | mean batch | "
          "offline img/s (batch 32) | served / offline | server CPU ms/request | client CPU ms/request |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['batching']} | {r['clients']} | {r['rps']:.1f} | {r['p50']:.1f} | "
              f"{r['p95']:.1f} | {r['p99']:.1f} | {r['mean_batch']:.1f} | {r['offline']:.0f} | "
              f"{r['rps'] / r['offline']:.0%} | {r['server_cpu_ms']:.2f} | {r['client_cpu_ms']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
