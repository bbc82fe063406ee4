"""Peak memory of `deepres serve` under hostile-but-valid requests: the server's peak resident set (VmHWM, from
/proc/PID/status) against the number of requests in flight at once. Each classifier request is the one of the
issue: 32 gray 6300 x 6300 PNGs of zeros (tens of kB each on the wire, 39.7 Mpx each decoded), to the demo
Fashion-MNIST ResNet-20; each segmentation request is one such image, to fcn_resnet20, whose class map used to be
made at the image's full size. Every row starts a fresh server with its default limits (--max-inflight-mb 1024 and
the rest), waits for its first answer, then sends the requests at once and reads VmHWM when all are answered.

    python benchmarks/serve_memory.py                        # 1, 2, 4, 8 requests at once; 1 and 4 segmentation
    python benchmarks/serve_memory.py --inflight 1 --src /tmp/before/src   # another checkout's server (before/after)

Memory, not time: it may run beside other work (the load warning is printed all the same). Linux only (/proc).
"""
import argparse
import asyncio
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # serve_helpers: `deepres serve` in a subprocess, its /proc figures

from deepres.core.device import load_warning, machine_line, machine_summary  # noqa: E402
from serve_helpers import EXAMPLES, fashion_run, serve_process  # noqa: E402

SIDE = 6300  # pixels: 39.7 Mpx, under the default --max-pixels 40000000


def hostile_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (SIDE, SIDE)).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


async def send_at_once(url: str, requests: int, images: list[bytes]) -> list[int]:
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        responses = await asyncio.gather(*(client.post("/v1/predict", files=files) for _ in range(requests)))
    return [response.status_code for response in responses]


def measure(model: str, label: str, requests: int, images: int, body: bytes, first: bytes, env: dict) -> dict:
    """One row: a fresh server, a first small request, then `requests` requests of `images` images at once."""
    with serve_process(model, "--precision", "fp32", env=env) as served:
        httpx.post(f"{served.url}/v1/predict", content=first, timeout=120).raise_for_status()
        idle = served.memory_kib("VmRSS")
        started = time.perf_counter()
        statuses = asyncio.run(send_at_once(served.url, requests, [body] * images))
        seconds = time.perf_counter() - started
        peak, after = served.memory_kib("VmHWM"), served.memory_kib("VmRSS")
    return {"model": label, "requests": requests, "images": images, "ok": statuses.count(200),
            "busy": statuses.count(503), "other": len(statuses) - statuses.count(200) - statuses.count(503),
            "idle": idle / 1024, "peak": peak / 1024, "after": after / 1024, "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inflight", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="requests at once, a row each (classifier)")
    parser.add_argument("--seg-inflight", type=int, nargs="*", default=[1, 4],
                        help="requests at once, a row each (segmentation; none: no segmentation rows)")
    parser.add_argument("--images", type=int, default=32, help="images per classifier request")
    parser.add_argument("--src", type=Path, default=ROOT / "src",
                        help="the src/ folder whose deepres the server runs (default this checkout's)")
    args = parser.parse_args()
    if not Path("/proc/self/status").exists():
        parser.error("needs Linux's /proc to read the server's memory")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(args.src.resolve()),
                                                                      os.environ.get("PYTHONPATH")]))}
    warning = load_warning()
    if warning:
        print(warning, file=sys.stderr)
    machine = machine_summary()
    body = hostile_png()
    print(f"{machine_line(machine)}; server from {args.src}; each image a {SIDE}x{SIDE} gray PNG of {len(body)} "
          f"bytes; default limits", file=sys.stderr)
    rows = []
    small = io.BytesIO()
    Image.new("RGB", (50, 40)).save(small, format="PNG")
    with tempfile.TemporaryDirectory() as tmp:
        demo = str(fashion_run(Path(tmp) / "demo"))
        first = (EXAMPLES / "t10k_0000_ankle_boot.png").read_bytes()
        for requests in args.inflight:
            rows.append(measure(demo, "demo ResNet-20 (classifier)", requests, args.images, body, first, env))
            print(rows[-1], file=sys.stderr)
        for requests in args.seg_inflight:
            rows.append(measure("fcn_resnet20", "fcn_resnet20 (segmentation)", requests, 1, body, small.getvalue(),
                                env))
            print(rows[-1], file=sys.stderr)
    print(machine_line(machine))
    print("| model | requests at once | images each | answered 200 / 503 / other | idle RSS MiB | peak RSS MiB | "
          "peak over idle MiB | RSS after MiB | seconds |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['requests']} | {r['images']} | {r['ok']} / {r['busy']} / {r['other']} | "
              f"{r['idle']:.0f} | {r['peak']:.0f} | {r['peak'] - r['idle']:.0f} | {r['after']:.0f} | "
              f"{r['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
