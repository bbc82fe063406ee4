"""Dynamic batching: each worker owns one Predictor (a model copy), one thread that runs it, and one asyncio queue
of decoded images (their model inputs made as they were decoded, uploads.decode); its batcher task takes the first
image waiting, then whatever arrives within max_wait_ms, up to max_batch images, and runs them as one
`Predictor.run_inputs` on the worker's thread, so the event loop never waits for the model (one call per kind of
request among them: a segmentation class map at the image's size or at the model's). A request's images are queued
one by one on the least busy worker and may share batches with other requests' images; in eval mode an image's
output does not depend on its batch mates.

Decoding and the model take turns on the CPU (Turns): a model call first waits for the decodes under way (at most
DECODES_WAIT_MS) and takes, up to max_batch, every image they queued; a decode waits while a model call runs. Side
by side, decodes preempted the model's intra-op threads, which wait for each other at every layer: on 2 cores
ResNet-50 served 56 requests/s at 32 clients against 94 images/s offline, its batches split into two alternating
halves of 16."""
import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from deepres.tasks import PredictOptions

from ..predictor import Predictor
from .limits import Limits
from .metrics import Metrics
from .uploads import Upload

DECODES_WAIT_MS = 100.0  # a model call waits at most this long for the decodes under way when it is ready to run


class Turns:
    """The turns of one server's decodes and model calls: any number of decodes at once, or of model calls, not
    both. A decode waits while a model call runs; a model call waits for the decodes under way when it is ready (at
    most DECODES_WAIT_MS: a stream of decodes cannot hold the model back longer), then runs beside any still going.
    Events and futures, so a turn wakes each waiter once."""

    def __init__(self):
        self.calls = 0
        self.no_calls = asyncio.Event()
        self.no_calls.set()
        self.decoding: set[asyncio.Future] = set()

    @contextlib.asynccontextmanager
    async def decode(self):
        while self.calls:
            await self.no_calls.wait()
        done = asyncio.get_running_loop().create_future()
        self.decoding.add(done)
        try:
            yield
        finally:
            self.decoding.discard(done)
            done.set_result(None)

    @contextlib.asynccontextmanager
    async def model_call(self):
        if self.decoding:
            await asyncio.wait(list(self.decoding), timeout=DECODES_WAIT_MS / 1000)
        self.calls += 1
        self.no_calls.clear()
        try:
            yield
        finally:
            self.calls -= 1
            if not self.calls:
                self.no_calls.set()


class Worker:
    """One model copy, its queue of (image, options, future) and the batcher task that empties it."""

    def __init__(self, predictor: Predictor, limits: Limits, metrics: Metrics, turns: Turns):
        self.predictor, self.limits, self.metrics, self.turns = predictor, limits, metrics, turns
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.thread: ThreadPoolExecutor | None = None
        self.busy = 0  # images queued or running

    def start(self) -> None:
        self.queue = asyncio.Queue()
        # The model always runs on this one thread: OpenMP gives each thread that calls into it a team of its own,
        # and the idle teams of asyncio.to_thread's other threads spun beside the running one
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="deepres-model")
        self.task = asyncio.create_task(self._batcher())

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        self.thread.shutdown(wait=True)

    async def run(self, upload: Upload, options: PredictOptions) -> dict:
        """`Predictor.run`'s result for one decoded image (its model input made already, Upload.input)."""
        future = asyncio.get_running_loop().create_future()
        self.busy += 1
        await self.queue.put((upload, options, future))
        try:
            return await future
        finally:
            self.busy -= 1

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.limits.max_wait_ms / 1000
            while len(batch) < self.limits.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            async with self.turns.model_call():
                while len(batch) < self.limits.max_batch and not self.queue.empty():  # decoded while it waited
                    batch.append(self.queue.get_nowait())
                await self._run_batch(batch)

    async def _run_batch(self, batch: list) -> None:
        batch = [entry for entry in batch if not entry[2].done()]  # a client gone: skip its images
        # one call per kind of request in the batch (a segmentation class map at the image's size or the
        # model's), for the most classes any of its requests keeps (each answer keeps its own top_k)
        groups: dict[PredictOptions, list] = {}
        for entry in batch:
            groups.setdefault(replace(entry[1], top_k=1), []).append(entry)
        for kind, entries in groups.items():
            await self._run(entries, replace(kind, top_k=max(entry[1].top_k for entry in entries)))

    async def _run(self, batch: list, options: PredictOptions) -> None:
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self.thread, self.predictor.run_inputs, [upload.input for upload, _, _ in batch],
                [tuple(upload.pixels.shape[-2:]) for upload, _, _ in batch], options)
        except Exception as error:  # the model failed: every waiting request gets the error
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self.metrics.record_batch(len(batch))
        for (_, _, future), output in zip(batch, outputs):
            if not future.done():
                future.set_result(output)
