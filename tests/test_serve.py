"""`deepres serve` against a real server on 127.0.0.1 (a subprocess on a free port, stopped at the end): every
endpoint, every bad input (and a good request after each), dynamic batching under concurrent requests, results equal
to `deepres predict`, segmentation responses."""
import asyncio
import base64
import csv
import io

import httpx
from prometheus_client.parser import text_string_to_metric_families
import numpy as np
import pytest
from PIL import Image

from serve_helpers import EXAMPLES, FASHION_CLASSES, fashion_run, running_server, serve_process
from deepres import init_model
from deepres.cli import main
from deepres.inference.cam import overlay_cam

LIMITS = ["--max-batch", "8", "--max-wait-ms", "50", "--max-upload-mb", "0.25", "--max-images", "4",
          "--max-pixels", "100000", "--max-request-pixels", "150000",
          "--workers", "2"]  # two model copies, each with its own queue and batcher
IMAGES = sorted(EXAMPLES.glob("*.png"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return fashion_run(tmp_path_factory.mktemp("serve") / "run")


@pytest.fixture(scope="module")
def served(run_dir):
    with serve_process(str(run_dir), "--precision", "fp32", *LIMITS) as server:
        yield server


@pytest.fixture(scope="module")
def url(served):
    return served.url


@pytest.fixture(scope="module")
def predictor(run_dir):
    return init_model(run_dir, precision="fp32")


def upload(paths) -> list:
    return [("files", (path.name, path.read_bytes(), "image/png")) for path in paths]


def assert_same(got: dict, want: dict) -> None:
    assert got["pred_class"] == want["pred_class"] and got["top_k_classes"] == want["top_k_classes"]
    assert got["top_k_scores"] == pytest.approx(want["top_k_scores"], abs=1e-4)


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value in a /metrics scrape, read with Prometheus' own text parser (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_predict_equals_deepres_predict(url, predictor, tmp_path):
    response = httpx.post(f"{url}/v1/predict?top_k=3", files=upload(IMAGES[:4]), timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "classification" and len(body["results"]) == 4
    assert [r["image_size"] for r in body["results"]] == [[28, 28]] * 4  # each image's size as uploaded
    for got, want in zip(body["results"], predictor.predict([str(p) for p in IMAGES[:4]], top_k=3)):
        assert_same(got, want)
    out = tmp_path / "preds.csv"  # the CLI on the same images
    assert main(["predict", *map(str, IMAGES[:4]), "--model", str(predictor.source["checkpoint"]), "--precision",
                 "fp32", "--top-k", "3", "--out", str(out)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["pred_class"] for r in rows] == [r["pred_class"] for r in body["results"]]
    assert [float(r["pred_score"]) for r in rows] == pytest.approx([r["pred_score"] for r in body["results"]],
                                                                   abs=1e-4)
    raw = httpx.post(f"{url}/v1/predict", content=IMAGES[5].read_bytes(), timeout=60)  # the body as the image
    assert raw.status_code == 200 and len(raw.json()["results"][0]["top_k_classes"]) == 5
    assert_same(raw.json()["results"][0], predictor.predict(str(IMAGES[5])))


def test_model_card_health_docs_and_page(url):
    card = httpx.get(f"{url}/v1/model").json()
    assert card["classes"] == FASHION_CLASSES and card["task"] == "classification" and card["name"] == "resnet20"
    assert card["preprocessing"]["input_size"] == [1, 28, 28] and card["preprocessing"]["crop_size"] == 28
    assert card["precision"]["precision"] == "fp32" and card["precision"]["max_abs_error"] < 1e-3
    assert "was asked for" in card["precision"]["reason"]
    assert card["precision"]["backend"] == "onnxruntime"
    assert card["accuracy"]["top1"] == 11.5 and card["cam_stages"] == ["layer1", "layer2", "layer3"]
    assert card["limits"]["max_batch"] == 8 and card["limits"]["max_images"] == 4 and card["limits"]["workers"] == 2
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v1/cam", "/v1/model", "/healthz", "/metrics"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/predict"]["post"]["requestBody"]["content"]
    assert httpx.get(f"{url}/docs").status_code == 200
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "<script src=\"/static/app.js\">" in page.text
    assert httpx.get(f"{url}/static/app.js").status_code == 200


def test_cam_endpoint_returns_the_libraries_overlay(url, predictor):
    image = IMAGES[0]
    response = httpx.post(f"{url}/v1/cam", content=image.read_bytes(), timeout=60)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    want = predictor.cam(str(image))
    assert response.headers["x-deepres-class"] == want["class"] == predictor.predict(str(image))["pred_class"]
    assert response.headers["x-deepres-stage"] == "layer3"
    got = np.asarray(Image.open(io.BytesIO(response.content)))
    assert got.shape == (28, 28, 3)
    assert np.abs(got.astype(int) - overlay_cam(want["image"], want["cam"]).astype(int)).max() <= 1
    response = httpx.post(f"{url}/v1/cam?class=bag&stage=layer1&view=heatmap", content=image.read_bytes(),
                          timeout=60)
    assert response.status_code == 200 and response.headers["x-deepres-class"] == "bag"
    assert response.headers["x-deepres-stage"] == "layer1"


def bad_requests(image: bytes):
    """(name, request kwargs, status, error kind) for each bad input."""
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(noise).save(jpeg, format="JPEG", quality=95)
    truncated = jpeg.getvalue()[:len(jpeg.getvalue()) // 2]
    bomb = png(np.zeros((1000, 1000), np.uint8))  # 1 Mpx > --max-pixels 100000, a few kB on the wire
    tall = png(np.zeros((3000, 28), np.uint8))  # 84,000 pixels at the model's 28 px: two are over 150,000
    unclosed = (b'--x\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
                b'Content-Type: image/png\r\n\r\n' + image)  # no closing --x-- after the file
    return [
        ("not an image", dict(url="/v1/predict", content=b"GIF89a, or so it says"), 400, "not_an_image"),
        ("truncated JPEG", dict(url="/v1/predict", content=truncated), 400, "corrupt_image"),
        ("decompression bomb", dict(url="/v1/predict", content=bomb), 413, "too_many_pixels"),
        ("upload over --max-upload-mb", dict(url="/v1/predict", content=image + bytes(300_000)), 413,
         "upload_too_large"),
        ("chunked upload over --max-upload-mb", dict(url="/v1/predict", content=iter([bytes(100_000)] * 3)), 413,
         "upload_too_large"),  # no Content-Length: counted while read
        ("too many images", dict(url="/v1/predict", files=[("files", (f"{i}.png", image))
                                                             for i in range(9)]), 413, "too_many_images"),
        ("malformed multipart form (a part without a name)",
         dict(url="/v1/predict", content=b"--x\r\nContent-Disposition: form-data\r\n\r\nab\r\n--x--\r\n",
              headers={"content-type": "multipart/form-data; boundary=x"}), 400, "bad_form"),
        ("multipart form without its closing boundary",
         dict(url="/v1/predict", content=unclosed, headers={"content-type": "multipart/form-data; boundary=x"}),
         400, "bad_form"),
        ("images over --max-request-pixels", dict(url="/v1/predict", files=[("files", ("a.png", tall)),
                                                                            ("files", ("b.png", tall))]),
         413, "over_pixel_budget"),
        ("empty body", dict(url="/v1/predict", content=b""), 400, "no_image"),
        ("unknown CAM class", dict(url="/v1/cam?class=zebra", content=image), 400, "unknown_class"),
        ("unknown CAM stage", dict(url="/v1/cam?stage=layer9", content=image), 400, "unknown_stage"),
        ("bad top_k", dict(url="/v1/predict?top_k=0", content=image), 422, "invalid_parameter"),
    ]


def test_bad_inputs_get_a_4xx_json_error_and_the_server_keeps_serving(served, url, predictor):
    image = IMAGES[1].read_bytes()
    want = predictor.predict(str(IMAGES[1]))
    for name, request, status, kind in bad_requests(image):
        request["url"] = url + request["url"]
        response = httpx.post(**request, timeout=60)
        assert response.status_code == status, (name, response.text)
        body = response.json()
        assert body["error"] == kind and body["detail"], name
        good = httpx.post(f"{url}/v1/predict", content=image, timeout=60)
        assert good.status_code == 200, (name, good.text)
        assert_same(good.json()["results"][0], want)
    text = httpx.get(f"{url}/metrics").text
    for _, _, status, kind in bad_requests(image):
        assert metric(text, "deepres_errors_total", kind=kind) >= 1, kind
    assert metric(text, "deepres_inflight_bytes") == 0  # every refused request gave its memory back
    assert "zebra" in httpx.post(f"{url}/v1/cam?class=zebra", content=image).json()["detail"]
    assert "100000" in httpx.post(f"{url}/v1/predict", content=png(np.zeros((1000, 1000), np.uint8))).text
    # each bad input is answered, not logged: no line of a parser's on the server's stderr
    assert not [line for line in served.stderr if "boundary" in line or "multipart" in line.lower()], served.stderr


def test_large_images_decoded_at_the_models_size_predict_as_deepres_predict(url, predictor, tmp_path):
    # 280 x 336 px: decoded straight to the model's 28 x 33 (Pillow's antialiased resize) instead of resized after
    # decoding (deepres.data.transforms.resize): the same to within a grey level, so the same predictions
    rng = np.random.default_rng(3)
    base = np.asarray(Image.fromarray(rng.integers(0, 256, (10, 12), dtype=np.uint8)).resize((336, 280),
                                                                                            Image.BICUBIC))
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"large_{i}.png")
        Image.fromarray(np.roll(base, 40 * i, axis=1)).save(paths[-1])
    response = httpx.post(f"{url}/v1/predict?top_k=3", files=upload(paths), timeout=60)
    assert response.status_code == 200, response.text
    for got, want in zip(response.json()["results"], predictor.predict([str(p) for p in paths], top_k=3)):
        assert got["pred_class"] == want["pred_class"]
        assert got["top_k_scores"] == pytest.approx(want["top_k_scores"], abs=1e-3)  # measured: <= 2.3e-4


def test_concurrent_requests_are_batched_and_answered_correctly(url, predictor):
    before = httpx.get(f"{url}/metrics").text
    images = IMAGES[:8]

    async def send_all():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/predict", content=p.read_bytes()) for p in images))

    responses = asyncio.run(send_all())
    assert all(r.status_code == 200 for r in responses)
    for response, want in zip(responses, predictor.predict([str(p) for p in images])):
        assert_same(response.json()["results"][0], want)
    after = httpx.get(f"{url}/metrics").text
    count = metric(after, "deepres_batch_size_count") - metric(before, "deepres_batch_size_count")
    singles = metric(after, "deepres_batch_size_bucket", le="1.0") - metric(before, "deepres_batch_size_bucket", le="1.0")
    assert count < 8 and count - singles >= 1  # 8 images in fewer model calls: some batch held several
    assert metric(after, "deepres_images_total") - metric(before, "deepres_images_total") == 8
    assert metric(after, "deepres_requests_total", route="/v1/predict", status="200") >= 8
    assert metric(after, "deepres_request_latency_seconds_bucket", route="/v1/predict", le="+Inf") >= 8


def test_segmentation_model_answers_class_maps(tmp_path):
    with running_server("fcn_resnet20", "--precision", "fp32", "--max-wait-ms", "1") as base:
        card = httpx.get(f"{base}/v1/model").json()
        assert card["task"] == "segmentation" and len(card["palette"]) == card["num_classes"] == 11
        image = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
        response = httpx.post(f"{base}/v1/predict", files=[("files", ("a.png", png(image))),
                                                           ("files", ("b.png", png(image[:30])))], timeout=60)
        assert response.status_code == 200, response.text
        first, second = response.json()["results"]
        class_map = np.asarray(Image.open(io.BytesIO(base64.b64decode(first["class_map_png"]))))
        assert class_map.shape == (40, 50) and (first["height"], first["width"]) == (40, 50)
        assert class_map.max() < 11 and sum(first["class_shares"].values()) == pytest.approx(1.0)
        shares = {str(c): float((class_map == c).mean()) for c in np.unique(class_map)}
        assert first["class_shares"] == pytest.approx(shares)
        assert (second["height"], second["width"]) == (30, 50)
        cam = httpx.post(f"{base}/v1/cam", content=png(image))
        assert cam.status_code == 400 and cam.json()["error"] == "not_a_classifier"


def test_serve_refuses_bad_options(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["serve", "resnet20", "--max-batch", "0"]) == 2
    assert "--max-batch must be >= 1" in capsys.readouterr().err
