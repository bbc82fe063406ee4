"""fp32 on ONNX Runtime: a prepared (BN-folded) fp32 model exported to ONNX once, kept in deepres's cache, and run
by ONNX Runtime's MLAS kernels for one image size, the torch model for other sizes. plan.choose_path decides when
(backend "auto": every fast fp32 path on the CPU that is not compiled); runner.build_runner builds it."""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from deepres.core.device import thread_ceiling
from deepres.core.files import cache_dir, temp_file

from .export import export_onnx, onnxruntime_session

log = logging.getLogger(__name__)


class OnnxRuntimeFp32:
    """A prepared fp32 model run by ONNX Runtime for `input_size` images (any batch size), the torch model
    (`fallback`, set by build_runner) for other sizes. The ONNX file is exported once per weights, architecture,
    image size and torch version and kept in deepres's cache (`$DEEPRES_CACHE/onnx`), so later runs only load it;
    it is checked against the torch model on `example` before use.

    Each call runs with as many ONNX Runtime threads as the thread governor gives torch at that moment
    (core.device.adapt_threads, ticked by the InferenceRunner): a session per thread count, the others made from
    the cached file when first needed. A single session keeps its thread count for good, and beside a busy process
    its spinning threads wait on the one that shares a core."""

    def __init__(self, model: nn.Module, input_size: Sequence[int], example: torch.Tensor, *,
                 tolerance: float = 1e-4):
        self.input_size = tuple(input_size)
        self.fallback: Callable | None = None
        start = time.perf_counter()
        path, cached = onnx_cache_path(model, self.input_size), True
        session = None
        if path.is_file():
            try:
                session = onnxruntime_session(path)
            except Exception as error:  # a torn or foreign file: export it again
                log.warning("fast path: %s does not load in ONNX Runtime (%s); exporting it again", path, error)
        if session is None:
            cached = False
            session, kept = _export_and_load(model, example, path)
            path = path if kept else None
        if len(session.get_outputs()) != 1:
            raise ValueError(f"the exported model has {len(session.get_outputs())} outputs, the fast path takes one")
        self.path, self.name = path, session.get_inputs()[0].name  # path: None where the cache was not writable
        self.sessions = {thread_ceiling(): session}  # intra-op threads -> session
        self.source = (f"{'cached' if cached else 'exported'} ONNX {time.perf_counter() - start:.1f} s"
                       f"{f', {path.name}' if path else ', not cached'}")
        with torch.inference_mode():
            expected = model(example.cpu().float())
        error = float((self(example.cpu().float()) - expected).abs().max())
        if not error <= tolerance * max(1.0, float(expected.abs().max())):
            raise ValueError(f"ONNX Runtime's output differs from PyTorch's by {error:.3g} on the example batch")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_size and self.fallback is not None:
            return self.fallback(x.contiguous(memory_format=torch.channels_last))
        return torch.from_numpy(self.session().run(None, {self.name: x.float().contiguous().numpy()})[0])

    def session(self):
        """The session with the thread count the governor gives torch now (made on first need)."""
        threads = torch.get_num_threads()
        session = self.sessions.get(threads)
        if session is None:
            try:
                session = onnxruntime_session(self.path, threads) if self.path else None
            except Exception as error:  # the cached file was removed or replaced since
                log.warning("fast path: no %d-thread ONNX Runtime session from %s (%s)", threads, self.path, error)
            # the ceiling's session otherwise; kept under this count either way, so a failure is not retried
            session = self.sessions[threads] = session or self.sessions[max(self.sessions)]
        return session


def onnx_cache_path(model: nn.Module, input_size: Sequence[int]) -> Path:
    """Where OnnxRuntimeFp32 keeps `model`'s export: named by a hash of its architecture (class and module tree),
    every state-dict tensor, the image size and the torch version."""
    digest = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}\n{model}\n{tuple(input_size)}\n"
                            f"{torch.__version__}\n".encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return cache_dir() / "onnx" / f"{type(model).__name__.lower()}-{digest.hexdigest()[:24]}.onnx"


def _export_and_load(model: nn.Module, example: torch.Tensor, path: Path):
    """(session, kept): export `model` to `path` (written under a temporary name and renamed, so a crash leaves no
    torn file) and load it; where the cache cannot be written, the export goes to a temporary folder and is loaded
    from there (kept False)."""
    # batch 2: torch.export makes a batch dimension of size 0 or 1 static
    example = example[:2].cpu().float().expand(2, -1, -1, -1).contiguous()

    def export_and_load(target: Path):
        with contextlib.redirect_stderr(io.StringIO()):  # the exporter's progress lines, not the user's business
            export_onnx(model, example, target)
        return onnxruntime_session(target)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file(path.parent, prefix=f".{path.name}.", suffix=".tmp.onnx")
        os.close(fd)
    except OSError as error:
        log.warning("fast path: cannot write the ONNX cache %s (%s); exporting to a temporary folder", path.parent,
                    error)
        with tempfile.TemporaryDirectory() as folder:
            return export_and_load(Path(folder) / path.name), False
    try:
        session = export_and_load(Path(tmp))
        os.replace(tmp, path)
        return session, True
    finally:
        Path(tmp).unlink(missing_ok=True)
