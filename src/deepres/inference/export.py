"""`deepres export CHECKPOINT --format onnx|torchscript|export`: write a deployable model file that records its own
preprocessing, and check it against PyTorch on the spot.

ONNX uses torch.onnx's torch.export-based exporter (`dynamo=True`, needs onnxscript; the legacy TorchScript-based
one, deprecated in torch 2.9+, is available as `--exporter legacy`) with a dynamic batch dimension, and is checked
with ONNX Runtime on batches of 1 and 3 images. A model whose Preprocess has no crop (segmentation: it sees each image
at its own size) also gets a dynamic height and width (ONNX and .pt2), as mmsegmentation deploys its models, and is
checked at a second, non-square size too; a model with a centre crop keeps the crop's fixed height and width
(any other size is a client's mistake, refused by the runtime rather than answered differently). TorchScript
(`torch.jit.trace`, deprecated in torch 2.13 but still the format C++ LibTorch loads; its trace follows the input's
size) and torch.export (.pt2) are loaded back and checked the same way.

The preprocessing a caller must apply (input size, resize/crop, normalisation, class names) is stored inside the
file: ONNX `metadata_props` (one key each, JSON values), TorchScript and .pt2 an extra file `deepres.json`;
`read_metadata(path)` reads it back from any of the three.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from deepres.core.device import thread_ceiling
from deepres.core.errors import RunFailedError
from deepres.core.files import temp_file
from deepres.core.preprocess import Preprocess
from deepres.core.typed import plain
from deepres.data import transforms as T
from deepres.tasks.build import LoadedModel

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "export": ".pt2"}
METADATA_FILE = "deepres.json"  # extra file inside TorchScript and .pt2 archives
# Every metadata key; values are JSON. They are deepres.inference.Preprocess's fields: shorter side to `resize`,
# centre `crop_size` square (0: no crop, the `resize_side` side to `resize`: segmentation), then `normalize`
# ("meanstd": (x/255 - mean)/std; "mean": x - 255*mean); "input_layout" states the whole transform with this model's
# numbers (preprocessing_formula).
METADATA_KEYS = ("model", "input_size", "resize", "crop_size", "interpolation", "normalize", "mean", "std",
                 "resize_side", "class_names", "num_classes", "input_layout", "deepres_format")


class ExportCheckError(RunFailedError):
    """The exported model's outputs differ from PyTorch's beyond the tolerance (nothing was written)."""


DEFAULT_TOLERANCE = 1e-4  # max |exported - PyTorch| logit error allowed, times max(1, largest |logit|)


# ---------------------------------------------------------------------------------- metadata
# The Preprocess fields stored one key each (in_chans is input_size[0])
_PREPROCESS_KEYS = tuple(f.name for f in dataclasses.fields(Preprocess) if f.name != "in_chans")


def preprocessing_metadata(loaded: LoadedModel) -> dict:
    """What an image goes through before the exported model sees it (its Preprocess), and its classes."""
    pp = loaded.preprocess
    return {
        "model": loaded.source.get("model") or loaded.source.get("name") or type(loaded.model).__name__,
        "input_size": list(pp.input_size),
        **{key: plain(getattr(pp, key)) for key in _PREPROCESS_KEYS},
        "class_names": list(loaded.class_names),
        "num_classes": len(loaded.class_names),
        "input_layout": preprocessing_formula(pp),
        "deepres_format": 1,
    }


def preprocessing_formula(pp: Preprocess) -> str:
    """The exact transform from an image file to this model's input, with its numbers, in one line: what
    deepres.inference.preprocess computes (decode, resize, crop, channels, normalisation in float32). The per-channel
    numbers are the float32 values the normalisation uses, written as the shortest decimals that give them back."""
    c = pp.in_chans
    steps = ["decode to 8-bit RGB (alpha dropped, gray repeated)"]
    resample = (f"antialiased {pp.interpolation} (torch F.interpolate antialias=True, align_corners=False), clamped "
                f"to 0..255 and rounded to uint8; an image already that size is not resampled")
    if pp.crop_size:
        side = pp.crop_size
        steps += [f"shorter side to {pp.resize} px, longer side int({pp.resize} * longer / shorter), {resample}",
                  f"centre crop {side}x{side} at top = round((H - {side}) / 2), left = round((W - {side}) / 2) "
                  f"(half to even)"]
        shape = f"[N, {c}, {side}, {side}]"
    elif pp.resize_side == "none":
        steps.append("no resize and no crop: the image as stored")
        shape = f"[N, {c}, H, W] (H, W: the image's)"
    else:
        steps.append(f"{pp.resize_side} side to {pp.resize} px, the other round(other * {pp.resize} / "
                     f"{pp.resize_side}) (half to even), {resample}; no crop")
        shape = f"[N, {c}, H, W] (H, W: the resized image's)"
    names = {1: "gray", 3: "R, G, B"}.get(c, f"{c} channels")
    if c == 1:
        steps.append("gray = (19595 R + 38470 G + 7471 B + 32768) >> 16 (ITU-R 601 luma, Pillow's \"L\")")
    mean = T._channel_values(pp.mean, c, "mean", "cpu", torch.float32)  # the tensors T.normalize builds
    if pp.normalize == "meanstd":
        std = T._channel_values(pp.std, c, "std", "cpu", torch.float32)
        steps.append(f"x = (pixel / 255 - {_float32s(mean)}) / {_float32s(std)} ({names}), in float32")
    else:
        steps.append(f"x = pixel - {_float32s(mean * 255.0)} ({names}; 255 * mean), in float32, on the 0-255 scale")
    return "; ".join(steps) + f"; float32 NCHW {shape}"


def _float32s(values: torch.Tensor) -> str:
    """float32 values as the shortest decimals that read back to them: [0.485, 0.456, 0.406]."""
    return "[" + ", ".join(str(np.float32(v)) for v in values.flatten().tolist()) + "]"


def dynamic_size(metadata: dict) -> bool:
    """Whether the exported model takes any height and width: its Preprocess has no crop (each image is seen at its
    own size, as a segmentation model sees it); with a crop (or metadata without one) the size is input_size's."""
    return metadata.get("crop_size") == 0


def preprocess_from_metadata(metadata: dict) -> Preprocess:
    """The Preprocess recorded in an exported file's metadata (see read_metadata)."""
    # files written before resize_side existed resized the shorter side
    return Preprocess(in_chans=metadata["input_size"][0],
                      **{key: metadata[key] for key in _PREPROCESS_KEYS if key in metadata})


# ---------------------------------------------------------------------------------- writing


def export_model(model: nn.Module, out: str | Path, *, format: str, metadata: dict, opset: int | None = None,
                 exporter: str = "dynamo", force: bool = False, tolerance: float = DEFAULT_TOLERANCE,
                 check_batch_sizes: tuple[int, ...] = (1, 3), log=print) -> dict:
    """Export `model` in eval mode, fp32, on the CPU (a copy if it is not so already; the model is never changed)
    to `out`, check the file against PyTorch, and return {path, max_abs_error, errors (per batch size at the
    metadata's input size), other_sizes ("HxW": error, where the height and width are dynamic), dynamic_size, ...}.
    Height and width are dynamic where `dynamic_size(metadata)` (no crop): then batch 2 at a second, non-square size
    is checked as well.

    The file is written beside `out` under a temporary name and renamed only after the check passes, so a failed
    export leaves nothing behind; an existing `out` is refused unless `force`.
    """
    if format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if exporter not in ("dynamo", "legacy"):
        raise ValueError(f"exporter must be 'dynamo' or 'legacy', got {exporter!r}")
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --force to overwrite it")
    if format == "export" and out.suffix != ".pt2":
        raise ValueError(f"--out {out}: torch.export archives must end in .pt2 (torch.export.load requires it)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"output directory {out.parent} does not exist")
    model = _fp32_cpu_eval(model)
    c, h, w = metadata["input_size"]
    dynamic = dynamic_size(metadata)
    checks = [(batch, h, w) for batch in check_batch_sizes]
    if dynamic:  # odd and non-square, so a size baked into the graph would show
        checks.append((2, h // 2 + 1, w * 3 // 4 + 3))
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, c, h, w, generator=generator)
    fd, tmp_name = temp_file(out.parent, prefix=f".{out.name}.", suffix=f".tmp{out.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if format == "onnx":
            _write_onnx(model, example, tmp, metadata, opset, exporter, dynamic)
            run_exported = onnxruntime_runner(tmp)
        elif format == "torchscript":
            _write_torchscript(model, example, tmp, metadata)
            with _no_jit_deprecation():
                loaded = torch.jit.load(str(tmp))
            run_exported = lambda x: loaded(x).detach().numpy()  # noqa: E731
        else:
            _write_torch_export(model, example, tmp, metadata, dynamic)
            program = torch.export.load(tmp).module()
            run_exported = lambda x: program(x).detach().numpy()  # noqa: E731
        errors, other_sizes = {}, {}
        for batch, height, width in checks:
            where = f"batch {batch}" + ("" if (height, width) == (h, w) else f" at {height}x{width}")
            x = torch.randn(batch, c, height, width, generator=generator)
            with torch.inference_mode():
                expected = model(x)
            got = torch.from_numpy(run_exported(x))
            if got.shape != expected.shape:
                raise ExportCheckError(f"exported {format} model returned shape {tuple(got.shape)} for {where}, "
                                       f"PyTorch {tuple(expected.shape)}")
            error = float((got - expected).abs().max())
            limit = tolerance * max(1.0, float(expected.abs().max()))
            if (height, width) == (h, w):
                errors[batch] = error
            else:
                other_sizes[f"{height}x{width}"] = error
            log(f"check {where}: max |{format} - pytorch| = {error:.3g} (limit {limit:.3g})")
            if not error <= limit:
                raise ExportCheckError(f"exported {format} model disagrees with PyTorch on {where}: max abs "
                                       f"logit error {error:.3g} > {limit:.3g}; nothing was written to {out}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(out), "format": format, "max_abs_error": max([*errors.values(), *other_sizes.values()]),
            "errors": errors, "other_sizes": other_sizes, "dynamic_size": dynamic,
            "exporter": exporter if format == "onnx" else None}


def _fp32_cpu_eval(model: nn.Module) -> nn.Module:
    tensors = list(model.parameters()) + list(model.buffers())
    ready = all(t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point()) for t in tensors)
    if ready and not any(m.training for m in model.modules()):
        return model
    return copy.deepcopy(model).eval().float().cpu()


def _write_onnx(model, example, path: Path, metadata: dict, opset: int | None, exporter: str, dynamic: bool) -> None:
    import onnx

    export_onnx(model, example, path, opset=opset, exporter=exporter, dynamic_size=dynamic)
    proto = onnx.load(str(path))
    if dynamic:  # torch.export names the sizes it infers s0, s53, ...: call them what they are
        graph = proto.graph
        names = {dim.dim_param: name for dim, name in zip(graph.input[0].type.tensor_type.shape.dim[2:],
                                                          ("height", "width")) if dim.dim_param}
        for value in (*graph.input, *graph.output, *graph.value_info):
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param in names:
                    dim.dim_param = names[dim.dim_param]
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    proto.producer_name = "deepres"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def export_onnx(model, example, path: Path, *, opset: int | None = None, exporter: str = "dynamo",
                dynamic_size: bool = False) -> None:
    """torch.onnx.export of `model` to `path`: input "input" with a dynamic batch dimension (and, with
    dynamic_size, a dynamic height and width, dims 2 and 3), output "logits"."""
    kwargs = {"input_names": ["input"], "output_names": ["logits"]}
    if opset is not None:
        kwargs["opset_version"] = opset
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401  (the dynamo exporter's op library)
        except ImportError:
            raise ValueError("the ONNX exporter (torch.onnx.export dynamo=True) needs onnxscript: pip install "
                             "onnxscript==0.7.2, or pass --exporter legacy") from None
        kwargs["dynamic_shapes"] = (_dynamic_dims(dynamic_size),)
    else:
        axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
        with torch.inference_mode():
            output_rank = model(example).dim()
        kwargs["dynamic_axes"] = {"input": axes, "logits": {k: v for k, v in axes.items() if k < output_rank}}
    with _quiet_exporter():
        torch.onnx.export(model, (example,), str(path), dynamo=exporter == "dynamo", external_data=False,
                          **kwargs)


def onnxruntime_session(path: Path, threads: int | None = None):
    """An ONNX Runtime session on the CPU EP: all graph optimisations, `threads` intra-op threads (default: torch's
    when nothing competes, core.device.thread_ceiling)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or thread_ceiling()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnxruntime_runner(path: Path):
    """onnxruntime_session(path) as a function of a contiguous float32 CPU tensor, returning a numpy array."""
    session = onnxruntime_session(path)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


@contextlib.contextmanager
def _no_jit_deprecation():
    """torch 2.13 marks torch.jit deprecated; TorchScript is still the format LibTorch (C++) loads."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=DeprecationWarning)
        yield


def _write_torchscript(model, example, path: Path, metadata: dict) -> None:
    with _no_jit_deprecation():
        traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: json.dumps(metadata)})


def _dynamic_dims(dynamic_size: bool) -> dict:
    """torch.export's dynamic_shapes entry of the input: the batch, and with dynamic_size the height and width."""
    if dynamic_size:
        return {0: torch.export.Dim("batch"), 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    return {0: torch.export.Dim("batch")}


def _write_torch_export(model, example, path: Path, metadata: dict, dynamic: bool) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes=(_dynamic_dims(dynamic),))
    torch.export.save(program, path, extra_files={METADATA_FILE: json.dumps(metadata)})


@contextlib.contextmanager
def _quiet_exporter():
    """The ONNX exporters log and warn a lot (torchvision ops not found, deprecations); keep the user's screen
    for what matters."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(sys.stderr):
                yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# ---------------------------------------------------------------------------------- reading back


def read_metadata(path: str | Path) -> dict:
    """The preprocessing metadata stored in an exported .onnx, TorchScript or .pt2 file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model {path}")
    if path.suffix == ".onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
        missing = [k for k in METADATA_KEYS if k not in props and k != "resize_side"]  # older files lack it
        if missing:
            raise KeyError(f"{path}: no deepres metadata ({', '.join(missing)} missing from metadata_props)")
        return {k: json.loads(props[k]) for k in METADATA_KEYS if k in props}
    return _read_archive_metadata(path)


def _read_archive_metadata(path: Path) -> dict:
    """`<archive>/extra/deepres.json` read from the zip archive a TorchScript or .pt2 file is, by name: loading
    the program (torch.jit.load, torch.export.load) only to read its metadata would unpickle and run what it holds."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [n for n in archive.namelist() if n.split("/")[1:] == ["extra", METADATA_FILE]]
            if len(members) != 1:
                raise KeyError(f"{path}: no {METADATA_FILE} inside (not exported by deepres)" if not members else
                               f"{path}: {len(members)} {METADATA_FILE} members ({', '.join(members)}), expected one")
            text = archive.read(members[0])
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: not a zip archive, so not a TorchScript or .pt2 file ({e})") from None
    try:
        return json.loads(text.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: {members[0]} is not JSON ({e})") from None
