"""`deepres serve`'s memory under hostile-but-valid requests, with its default limits: small PNGs that decode to
40-megapixel images (gray and 16-bit gray), several requests at once, on a classifier and on a segmentation model.
The server's peak resident set (VmHWM in /proc/PID/status) may grow by at most PEAK_GROWTH_MIB over what it holds
idle after a first request: each request decodes one image at a time, straight to the model's size, so three
requests hold at most three 40 Mpx 16-bit decodes at once (80 MB as stored + 40 MB as 8-bit each; measured: 327 MiB
over idle for the classifier, 76 MiB for the segmentation model). Before the budgets and decoding at the model's size
the same classifier requests took it 5.7 GiB over idle (benchmarks/serve_memory.py measures the whole table)."""
import asyncio
import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from serve_helpers import EXAMPLES, fashion_run, serve_process

SIDE = 6300  # pixels: 39.7 Mpx, under the default --max-pixels 40000000
PEAK_GROWTH_MIB = 512  # the stated bound: peak resident set over idle, MiB
REQUESTS, IMAGES = 3, 8  # concurrent requests, images each


@pytest.fixture(scope="module")
def hostile_pngs() -> tuple[bytes, bytes]:
    """(8-bit gray, 16-bit gray) SIDE x SIDE PNGs of zeros: tens of kB on the wire, 40 Mpx decoded."""
    gray, deep = io.BytesIO(), io.BytesIO()
    Image.new("L", (SIDE, SIDE)).save(gray, format="PNG", compress_level=9)
    Image.new("I;16", (SIDE, SIDE)).save(deep, format="PNG", compress_level=9)
    return gray.getvalue(), deep.getvalue()


def files(images: list[bytes]) -> list:
    return [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]


async def post_all(url: str, requests: list[list], query: str = "") -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        return await asyncio.gather(*(client.post(f"/v1/predict{query}", files=files(images)) for images in requests))


def test_peak_memory_stays_bounded_under_concurrent_hostile_requests(tmp_path, hostile_pngs):
    gray, deep = hostile_pngs
    example = (EXAMPLES / "t10k_0000_ankle_boot.png").read_bytes()
    with serve_process(str(fashion_run(tmp_path / "run")), "--precision", "fp32") as served:
        assert httpx.post(f"{served.url}/v1/predict", content=example, timeout=60).status_code == 200
        idle = served.memory_kib("VmRSS")
        requests = [[gray] * (IMAGES - 1) + [deep] for _ in range(REQUESTS)]
        responses = asyncio.run(post_all(served.url, requests))
        growth_mib = (served.memory_kib("VmHWM") - idle) / 1024
        statuses = [r.status_code for r in responses]
    assert all(status == 200 for status in statuses), [r.text[:300] for r in responses]
    for response in responses:
        assert len(response.json()["results"]) == IMAGES
    assert growth_mib < PEAK_GROWTH_MIB, f"peak resident set {growth_mib:.0f} MiB over idle"


def test_segmentation_of_a_huge_image_returns_a_capped_class_map_in_bounded_memory(hostile_pngs):
    gray, _ = hostile_pngs
    with serve_process("fcn_resnet20", "--precision", "fp32") as served:
        small = io.BytesIO()
        Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(small, format="PNG")
        assert httpx.post(f"{served.url}/v1/predict", content=small.getvalue(), timeout=60).status_code == 200
        idle = served.memory_kib("VmRSS")
        limit = httpx.get(f"{served.url}/v1/model").json()["limits"]["max_output_pixels"]
        response = httpx.post(f"{served.url}/v1/predict", content=gray, timeout=300)
        growth_mib = (served.memory_kib("VmHWM") - idle) / 1024
    assert response.status_code == 200, response.text[:300]
    result = response.json()["results"][0]
    assert result["image_size"] == [SIDE, SIDE]
    assert result["height"] * result["width"] <= limit and result["height"] == result["width"]
    class_map = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["class_map_png"]))))
    assert class_map.shape == (result["height"], result["width"])
    assert growth_mib < PEAK_GROWTH_MIB, f"peak resident set {growth_mib:.0f} MiB over idle"
