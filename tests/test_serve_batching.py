"""How `deepres serve` shares the CPU between decoding and the model (inference/serving/batching.py): decodes and
model calls take turns, a model call takes what the decodes under way queued, every batch runs on the worker's one
thread, the model inputs are made as the uploads are decoded, the server runs on uvloop and keeps what it loaded out
of the garbage collector's full collections, and allocates every thread's memory from one malloc arena."""
import asyncio
import gc
import subprocess
import sys
import threading
import time

import pytest
import torch

from serve_helpers import EXAMPLES, fashion_run
from deepres import init_model
from deepres.inference.preprocess import preprocess_tensor, to_image_tensor
from deepres.inference.serving import batching
from deepres.inference.serving.app import create_app
from deepres.inference.serving.batching import Turns, Worker
from deepres.inference.serving.connections import event_loop
from deepres.inference.serving.limits import Limits
from deepres.inference.serving.metrics import Metrics
from deepres.inference.serving.uploads import Upload
from deepres.tasks import PredictOptions


def test_a_decode_waits_while_a_model_call_runs():
    async def scenario():
        turns, order = Turns(), []
        release = asyncio.Event()

        async def model():
            async with turns.model_call():
                order.append("model starts")
                await release.wait()
                order.append("model ends")

        async def decode():
            async with turns.decode():
                order.append("decode")

        model_task = asyncio.create_task(model())
        await asyncio.sleep(0.01)
        decode_task = asyncio.create_task(decode())
        await asyncio.sleep(0.05)
        assert order == ["model starts"]  # the decode has not begun
        release.set()
        await asyncio.gather(model_task, decode_task)
        return order

    assert asyncio.run(scenario()) == ["model starts", "model ends", "decode"]


def test_a_model_call_waits_for_the_decodes_under_way_and_no_longer_than_its_bound(monkeypatch):
    async def scenario(finish_decode: bool):
        turns, order = Turns(), []
        release = asyncio.Event()

        async def decode():
            async with turns.decode():
                order.append("decode starts")
                await release.wait()
                order.append("decode ends")

        decode_task = asyncio.create_task(decode())
        await asyncio.sleep(0.01)
        if finish_decode:
            asyncio.get_running_loop().call_later(0.1, release.set)
        started = time.perf_counter()
        async with turns.model_call():
            order.append("model")
        waited = time.perf_counter() - started
        release.set()
        await decode_task
        return order, waited

    order, waited = asyncio.run(scenario(finish_decode=True))
    assert order == ["decode starts", "decode ends", "model"] and waited >= 0.09
    monkeypatch.setattr(batching, "DECODES_WAIT_MS", 50.0)
    order, waited = asyncio.run(scenario(finish_decode=False))  # a decode that does not end: the model goes ahead
    assert order == ["decode starts", "model", "decode ends"] and 0.04 <= waited < 1.0


class RecordingPredictor:
    """Predictor.run_inputs's stand-in: records each call's thread and batch size, answers each input's sum."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def run_inputs(self, inputs, sizes, options):
        self.calls.append((threading.current_thread().name, len(inputs)))
        time.sleep(0.02)
        return [{"sum": float(x.sum()), "size": size} for x, size in zip(inputs, sizes)]


def upload(value: float) -> Upload:
    pixels = torch.full((1, 4, 4), int(value), dtype=torch.uint8)
    return Upload(f"{value}", pixels, (4, 4), pixels.float())


def test_worker_runs_every_batch_on_its_one_thread_and_takes_the_images_decoded_while_it_waited():
    async def scenario():
        predictor, turns = RecordingPredictor(), Turns()
        worker = Worker(predictor, Limits(max_batch=8, max_wait_ms=1), Metrics(), turns)
        worker.start()
        options = PredictOptions()

        async def slow_decode(value):  # decoding while the batcher is ready: the model call waits for it
            async with turns.decode():
                await asyncio.sleep(0.05)
            return await worker.run(upload(value), options)

        first = asyncio.create_task(worker.run(upload(1), options))
        late = [asyncio.create_task(slow_decode(v)) for v in (2, 3, 4)]
        results = await asyncio.gather(first, *late)
        more = await asyncio.gather(*(worker.run(upload(v), options) for v in range(5, 8)))
        await worker.stop()
        return predictor.calls, results + more

    calls, results = asyncio.run(scenario())
    assert [r["sum"] for r in results] == [16.0 * v for v in range(1, 8)]
    assert calls[0][1] == 4  # the first image and the three whose decodes were under way
    assert len({thread for thread, _ in calls}) == 1 and calls[0][0].startswith("deepres-model")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return fashion_run(tmp_path_factory.mktemp("batching") / "run")


def test_run_inputs_of_preprocessed_images_equals_run(run_dir):
    predictor = init_model(run_dir, precision="fp32")
    decoded = [to_image_tensor(path) for path in sorted(EXAMPLES.glob("*.png"))[:4]]
    want = predictor.run(decoded)
    got = predictor.run_inputs([preprocess_tensor(image, predictor.preprocess) for image in decoded],
                               [tuple(image.shape[-2:]) for image in decoded])
    assert [g["pred_class"] for g in got] == [w["pred_class"] for w in want]
    for g, w in zip(got, want):
        assert g["top_k_classes"] == w["top_k_classes"]
        assert g["top_k_scores"] == pytest.approx(w["top_k_scores"], abs=1e-6)


def test_the_server_keeps_what_it_loaded_out_of_full_collections(run_dir):
    app = create_app(init_model(run_dir, precision="fp32"))

    async def started() -> int:
        async with app.router.lifespan_context(app):  # the app's start and stop, as uvicorn runs them
            return gc.get_freeze_count()

    gc.unfreeze()
    try:
        assert asyncio.run(started()) > 10_000  # torch, the model and the app: a full collection skips them
    finally:
        gc.unfreeze()


def test_the_server_runs_on_uvloop():
    assert event_loop() == "uvloop"  # a dependency where uvloop runs (pyproject.toml)


ARENAS = """
import ctypes, os, re, sys, tempfile, threading
if sys.argv[1] == "serve":
    import deepres.commands.serve  # noqa: F401 - what `deepres serve` imports first
import torch

def work():
    x = torch.empty(8 * 2**20)  # 32 MB
    x.fill_(1.0)
    del x

threads = [threading.Thread(target=work) for _ in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
path = tempfile.mktemp()
stream = libc.fopen(path.encode(), b"w")
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.malloc_info(0, stream)
libc.fclose.argtypes = [ctypes.c_void_p]
libc.fclose(stream)
print(len(re.findall(r'<heap nr="', open(path).read())))
os.remove(path)
"""


@pytest.mark.parametrize("importing,arenas", [("serve", "one"), ("torch", "several")])
def test_deepres_serve_allocates_every_threads_memory_from_one_arena(importing, arenas):
    """`deepres serve` runs the model on a worker thread: glibc's malloc_info lists one heap (arena) after three
    threads allocated 32 MB each, where torch alone gets an arena per thread (whose freed blocks are unmapped)."""
    done = subprocess.run([sys.executable, "-c", ARENAS, importing], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    heaps = int(done.stdout.strip().splitlines()[-1])
    assert heaps == 1 if arenas == "one" else heaps > 1
