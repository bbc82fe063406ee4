"""Dynamic batching: each worker owns one Predictor (a model copy) and one asyncio queue of decoded images; its
batcher task takes the first image waiting, then whatever arrives within max_wait_ms, up to max_batch images, and
runs them as one `Predictor.run` in a thread (asyncio.to_thread), so the event loop never waits for the model (one
call per kind of request among them: a segmentation class map at the image's size or at the model's). A request's
images are queued one by one on the least busy worker and may share batches with other requests' images; in eval
mode an image's output does not depend on its batch mates."""
import asyncio
from dataclasses import replace

import torch

from deepres.tasks import PredictOptions

from ..predictor import Predictor
from .limits import Limits
from .metrics import Metrics


class Worker:
    """One model copy, its queue of (image, options, future) and the batcher task that empties it."""

    def __init__(self, predictor: Predictor, limits: Limits, metrics: Metrics):
        self.predictor, self.limits, self.metrics = predictor, limits, metrics
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.busy = 0  # images queued or running

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._batcher())

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass

    async def run(self, image: torch.Tensor, options: PredictOptions) -> dict:
        """`Predictor.run`'s result for one decoded image (C, H, W)."""
        future = asyncio.get_running_loop().create_future()
        self.busy += 1
        await self.queue.put((image, options, future))
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
            outputs = await asyncio.to_thread(self.predictor.run, [image for image, _, _ in batch], options)
        except Exception as error:  # the model failed: every waiting request gets the error
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self.metrics.record_batch(len(batch))
        for (_, _, future), output in zip(batch, outputs):
            if not future.done():
                future.set_result(output)
