"""`deepres serve`'s bounds, each answered in the documented JSON shape {"error", "detail"}: the decoded-pixel budget
of a request, the server-wide budget of data in flight (503 + Retry-After), the segmentation class map's size cap
and its model-resolution option, header and body read timeouts, the cap on open connections, routes and methods
that do not exist, SIGTERM with a request in flight (drained, or answered 503 when the drain time is over), Ctrl-C,
what --help and the model card show, and the memory bound printed at start-up."""
import base64
import dataclasses
import io
import json
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from serve_helpers import EXAMPLES, fashion_run, serve_process
from deepres.cli import main
from deepres.inference.serving import Limits

EXAMPLE = (EXAMPLES / "t10k_0000_ankle_boot.png").read_bytes()


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def files(images: list[bytes]) -> list:
    return [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]


def assert_error(response: httpx.Response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == kind and body["detail"], body
    assert "\n" not in body["detail"]
    return body


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return fashion_run(tmp_path_factory.mktemp("limits") / "run")


# ------------------------------------------------------------------------------------------ budgets
def test_images_over_the_request_pixel_budget_get_413(run_dir):
    # 28 px models: a 28 x 3000 image keeps its 84,000 pixels (its shorter side is already the model's)
    tall = png(noise(3000, 28))
    with serve_process(str(run_dir), "--precision", "fp32", "--max-request-pixels", "150000") as served:
        assert httpx.post(f"{served.url}/v1/predict", files=files([tall]), timeout=60).status_code == 200
        body = assert_error(httpx.post(f"{served.url}/v1/predict", files=files([tall, tall]), timeout=60), 413,
                            "over_pixel_budget")
        assert "--max-request-pixels 150000" in body["detail"] and "1.png" in body["detail"]
        assert httpx.post(f"{served.url}/v1/predict", content=EXAMPLE, timeout=60).status_code == 200


def test_data_in_flight_over_the_server_budget_gets_503_with_retry_after():
    # fcn_resnet20 keeps the shorter side at 64 px: a 64 x 640 image is held as 123 kB of pixels and a 492 kB
    # float input while its request waits for its batch (--max-wait-ms 3000)
    wide = png(noise(64, 640))
    args = ["--precision", "fp32", "--max-batch", "64", "--max-wait-ms", "3000", "--max-inflight-mb", "8"]
    with serve_process("fcn_resnet20", *args) as served:
        first = {}
        sender = threading.Thread(target=lambda: first.update(response=httpx.post(
            f"{served.url}/v1/predict", files=files([wide] * 8), timeout=60)))
        sender.start()
        time.sleep(1.0)
        second = httpx.post(f"{served.url}/v1/predict", files=files([wide] * 8), timeout=60)
        sender.join()
        assert first["response"].status_code == 200, first["response"].text[:300]
        body = assert_error(second, 503, "server_busy")
        assert int(second.headers["retry-after"]) >= 1 and "--max-inflight-mb 8" in body["detail"]
        alone = assert_error(httpx.post(f"{served.url}/v1/predict", files=files([wide] * 30), timeout=60), 413,
                             "over_memory_budget")
        assert "--max-inflight-mb 8" in alone["detail"]
        assert httpx.post(f"{served.url}/v1/predict", files=files([wide]), timeout=60).status_code == 200


def test_segmentation_class_map_is_capped_and_given_at_model_resolution_on_request():
    image = noise(100, 120)
    with serve_process("fcn_resnet20", "--precision", "fp32", "--max-output-pixels", "6000") as served:
        card = httpx.get(f"{served.url}/v1/model").json()
        assert card["limits"]["max_output_pixels"] == 6000
        capped = httpx.post(f"{served.url}/v1/predict", content=png(image), timeout=60).json()["results"][0]
        model = httpx.post(f"{served.url}/v1/predict?class_map=model", content=png(image), timeout=60)
        bad = httpx.post(f"{served.url}/v1/predict?class_map=huge", content=png(image), timeout=60)
    assert capped["image_size"] == [100, 120]
    assert (capped["height"], capped["width"]) == (70, 84)  # 12,000 pixels scaled to fit 6,000, aspect kept
    class_map = np.asarray(Image.open(io.BytesIO(base64.b64decode(capped["class_map_png"]))))
    assert class_map.shape == (70, 84)
    shares = {str(c): float((class_map == c).mean()) for c in np.unique(class_map)}
    assert capped["class_shares"] == pytest.approx(shares)
    at_model = model.json()["results"][0]
    assert (at_model["height"], at_model["width"]) == (64, 77)  # the shorter side at the model's 64 px
    assert at_model["image_size"] == [100, 120]
    assert_error(bad, 422, "invalid_parameter")


# ------------------------------------------------------------------------------------------ connections
@pytest.fixture(scope="module")
def guarded(run_dir):
    args = ["--precision", "fp32", "--header-timeout-s", "2", "--body-timeout-s", "2", "--max-connections", "4"]
    with serve_process(str(run_dir), *args) as served:
        yield served


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port


def read_until_closed(sock: socket.socket, limit: float = 15.0) -> bytes:
    sock.settimeout(limit)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def parse_response(raw: bytes) -> tuple[int, dict, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body)


def test_half_sent_headers_are_answered_408_and_closed(guarded):
    with socket.create_connection(address(guarded.url)) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n")  # no blank line
        started = time.monotonic()
        raw = read_until_closed(sock)
        waited = time.monotonic() - started
    status, headers, body = parse_response(raw)
    assert status == 408 and body["error"] == "request_timeout" and "--header-timeout-s 2" in body["detail"]
    assert 1.5 < waited < 10 and headers["connection"] == "close"


def test_a_body_that_stops_arriving_is_answered_408_and_closed(guarded):
    with socket.create_connection(address(guarded.url)) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n"
                     b"\r\n" + EXAMPLE[:100])
        started = time.monotonic()
        raw = read_until_closed(sock)
        waited = time.monotonic() - started
    status, headers, body = parse_response(raw)
    assert status == 408 and body["error"] == "request_timeout" and "--body-timeout-s 2" in body["detail"]
    assert 1.5 < waited < 10 and headers["connection"] == "close"


def test_connections_over_the_cap_get_503(guarded):
    idle = [socket.create_connection(address(guarded.url)) for _ in range(4)]
    try:
        response = httpx.get(f"{guarded.url}/healthz", timeout=10)
        body = assert_error(response, 503, "too_many_connections")
        assert "--max-connections 4" in body["detail"] and int(response.headers["retry-after"]) >= 1
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    assert httpx.get(f"{guarded.url}/healthz", timeout=10).status_code == 200


def test_unknown_routes_and_methods_answer_in_the_documented_shape(guarded):
    with socket.create_connection(address(guarded.url)) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, _, body = parse_response(read_until_closed(sock))
    assert status == 400 and body["error"] == "bad_request" and body["detail"]
    assert_error(httpx.get(f"{guarded.url}/v2/nothing"), 404, "not_found")
    assert_error(httpx.get(f"{guarded.url}/static/missing.js"), 404, "not_found")
    body = assert_error(httpx.get(f"{guarded.url}/v1/predict"), 405, "method_not_allowed")
    assert "POST" in body["detail"]


# ------------------------------------------------------------------------------------------ stopping
def post_in_background(url: str) -> tuple[threading.Thread, dict]:
    result = {}

    def send():
        try:
            result["response"] = httpx.post(f"{url}/v1/predict", content=EXAMPLE, timeout=60)
        except httpx.HTTPError as error:
            result["error"] = error

    thread = threading.Thread(target=send)
    thread.start()
    return thread, result


@pytest.mark.parametrize("drain,status", [("20", 200), ("0.5", 503)], ids=["drained", "drain-time-over"])
def test_sigterm_with_a_request_in_flight_answers_it_in_the_documented_shape(run_dir, drain, status):
    # the request waits 3 s for batch mates; SIGTERM comes after 1 s
    args = ["--precision", "fp32", "--max-batch", "8", "--max-wait-ms", "3000", "--shutdown-timeout-s", drain]
    with serve_process(str(run_dir), *args) as served:
        thread, result = post_in_background(served.url)
        time.sleep(1.0)
        served.process.send_signal(signal.SIGTERM)
        thread.join(30)
        served.process.wait(30)
    response = result["response"]
    if status == 200:
        assert response.status_code == 200 and response.json()["results"][0]["pred_class"]
    else:
        assert_error(response, 503, "shutting_down")
    assert "Traceback" not in "".join(served.stderr), "".join(served.stderr)[-2000:]


@pytest.mark.parametrize("presses", [1, 2], ids=["once", "twice"])
def test_ctrl_c_stops_the_server_without_a_traceback(run_dir, presses):
    with serve_process(str(run_dir), "--precision", "fp32") as served:
        for _ in range(presses):  # twice: uvicorn's forced exit
            served.process.send_signal(signal.SIGINT)
        served.process.wait(30)
    stderr = "".join(served.stderr)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-2000:]


# ------------------------------------------------------------------------------------------ what it shows
def test_every_bound_is_an_option_with_its_default_and_in_the_model_card(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(Limits):
        option = f"--{field.name.replace('_', '-')}"
        assert option in text, option
        assert f"(default {getattr(Limits(), field.name)})" in text, option
    with serve_process(str(run_dir), "--precision", "fp32") as served:
        card = httpx.get(f"{served.url}/v1/model").json()
        time.sleep(0.2)
        printed = "".join(served.stdout)
    assert set(card["limits"]) == {field.name for field in dataclasses.fields(Limits)}
    assert card["source"]["checkpoint"] == "last.safetensors"  # the file name, not where it lies
    assert str(run_dir) not in json.dumps(card)
    assert "--max-inflight-mb 1024" in printed and "MiB" in printed and "machine" in printed, printed


def test_model_card_shows_paths_relative_to_where_the_server_started(run_dir):
    with serve_process(str(run_dir), "--precision", "fp32", "--show-paths", "relative",
                       cwd=run_dir.parent) as served:
        card = httpx.get(f"{served.url}/v1/model").json()
    assert card["source"]["checkpoint"] == "run/checkpoints/last.safetensors"
