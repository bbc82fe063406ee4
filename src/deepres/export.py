"""`deepres export CHECKPOINT --format onnx|torchscript|export`: write a deployable model file that records its own
preprocessing, and check it against PyTorch on the spot.

ONNX uses torch.onnx's torch.export-based exporter (`dynamo=True`, needs onnxscript; the legacy TorchScript-based
one, deprecated in torch 2.9+, is available as `--exporter legacy`) with a dynamic batch dimension, and is checked
with ONNX Runtime on batches of 1 and 3 images. TorchScript (`torch.jit.trace`, deprecated in torch 2.13 but still
the format C++ LibTorch loads) and torch.export (.pt2) are loaded back and checked the same way.

The preprocessing a caller must apply (input size, resize/crop, normalisation, class names) is stored inside the
file: ONNX `metadata_props` (one key each, JSON values), TorchScript and .pt2 an extra file `deepres.json`;
`read_metadata(path)` reads it back from any of the three.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn as nn

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "export": ".pt2"}
METADATA_FILE = "deepres.json"  # extra file inside TorchScript and .pt2 archives
# Every metadata key; values are JSON. A reader applies: resize shorter side to `resize_shorter` (if not null),
# center-crop `center_crop` (if not null), then `normalize` ("meanstd": (x/255 - mean)/std; "mean": x - 255*mean).
METADATA_KEYS = ("model", "input_size", "resize_shorter", "center_crop", "normalize", "mean", "std", "class_names",
                 "num_classes", "input_layout", "deepres_format")
DEFAULT_TOLERANCE = 1e-4  # max |exported - PyTorch| logit error allowed, times max(1, largest |logit|)


# ---------------------------------------------------------------------------------- checkpoint -> model


def load_model(checkpoint: str | Path, model_name: str | None = None, overrides: list[str] | tuple[str, ...] = ()):
    """(eval-mode fp32 CPU model, resolved Config, class names or None, weights path) of a deepres run directory,
    a deepres .safetensors checkpoint (config inside), or a plain state dict together with `model_name`."""
    from deepres.eval.cli import load_for_eval, resolve_checkpoint
    from deepres.models import create_model, default_input_size, load_pretrained
    from deepres.models.weights import remap_keys
    from deepres.train.config import apply_overrides
    from deepres.train.loop import build_model

    path = resolve_checkpoint(str(checkpoint))
    cfg, state_dict, classes = load_for_eval(path, model_name)
    if not cfg.model.num_classes or not cfg.model.in_chans:
        # A plain state dict: its classifier and stem conv say how many classes and input channels it has, and
        # the registry gives the model's default resolution (override with --set data.image_size=...).
        probe = create_model(cfg.model.name)
        keys = remap_keys(dict(state_dict))
        classifier, first_conv = f"{probe.classifier}.weight", probe.first_conv
        cfg.model.num_classes = int(keys[classifier].shape[0]) if classifier in keys else probe.num_classes
        cfg.model.in_chans = int(keys[first_conv].shape[1]) if first_conv in keys else 3
        cfg.data.image_size = default_input_size(cfg.model.name)[1]
    cfg = apply_overrides(cfg, [*overrides, "train.channels_last=false"])
    model = build_model(cfg, torch.device("cpu"))
    report = load_pretrained(model, state_dict)
    if report["dropped"]:
        raise ValueError(f"{path}: its classifier ({', '.join(report['dropped'])}) does not fit "
                         f"model.num_classes={cfg.model.num_classes}")
    return model.eval(), cfg, classes, path


def preprocessing_metadata(cfg, classes: list[str] | None) -> dict:
    """What an image must go through before the exported model sees it, from the config's data block."""
    from deepres.data.transforms import parse_eval_preset

    d = cfg.data
    resize_crop = parse_eval_preset(d.eval_preset, d.image_size)
    side = resize_crop[1] if resize_crop else d.image_size
    return {
        "model": cfg.model.name,
        "input_size": [cfg.model.in_chans, side, side],
        "resize_shorter": resize_crop[0] if resize_crop else None,
        "center_crop": resize_crop[1] if resize_crop else None,
        "normalize": d.normalize,
        "mean": list(d.mean),
        "std": list(d.std),
        "class_names": list(classes) if classes else [],
        "num_classes": cfg.model.num_classes,
        "input_layout": "NCHW float32, RGB (or gray for 1 channel), pixel values 0-255 before normalisation",
        "deepres_format": 1,
    }


# ---------------------------------------------------------------------------------- writing


def export_model(model: nn.Module, out: str | Path, *, format: str, metadata: dict, opset: int | None = None,
                 exporter: str = "dynamo", force: bool = False, tolerance: float = DEFAULT_TOLERANCE,
                 check_batch_sizes: tuple[int, ...] = (1, 3), log=print) -> dict:
    """Export `model` (fp32, eval) to `out`, check the file against PyTorch, and return {path, max_abs_error, ...}.

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
    model = model.eval().float().cpu()
    c, h, w = metadata["input_size"]
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, c, h, w, generator=generator)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=f".tmp{out.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if format == "onnx":
            _write_onnx(model, example, tmp, metadata, opset, exporter)
            run_exported = _onnxruntime_runner(tmp)
        elif format == "torchscript":
            _write_torchscript(model, example, tmp, metadata)
            with _no_jit_deprecation():
                loaded = torch.jit.load(str(tmp))
            run_exported = lambda x: loaded(x).detach().numpy()  # noqa: E731
        else:
            _write_torch_export(model, example, tmp, metadata)
            program = torch.export.load(tmp).module()
            run_exported = lambda x: program(x).detach().numpy()  # noqa: E731
        errors = {}
        for batch in check_batch_sizes:
            x = torch.randn(batch, c, h, w, generator=generator)
            with torch.inference_mode():
                expected = model(x)
            got = torch.from_numpy(run_exported(x))
            if got.shape != expected.shape:
                raise ValueError(f"exported {format} model returned shape {tuple(got.shape)} for batch {batch}, "
                                 f"PyTorch {tuple(expected.shape)}")
            error = float((got - expected).abs().max())
            limit = tolerance * max(1.0, float(expected.abs().max()))
            errors[batch] = error
            log(f"check batch {batch}: max |{format} - pytorch| = {error:.3g} (limit {limit:.3g})")
            if not error <= limit:
                raise ValueError(f"exported {format} model disagrees with PyTorch on batch {batch}: max abs logit "
                                 f"error {error:.3g} > {limit:.3g}; nothing was written to {out}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(out), "format": format, "max_abs_error": max(errors.values()), "errors": errors,
            "exporter": exporter if format == "onnx" else None}


def _write_onnx(model, example, path: Path, metadata: dict, opset: int | None, exporter: str) -> None:
    import onnx

    kwargs = {"input_names": ["input"], "output_names": ["logits"]}
    if opset is not None:
        kwargs["opset_version"] = opset
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401  (the dynamo exporter's op library)
        except ImportError:
            raise ValueError("the ONNX exporter (torch.onnx.export dynamo=True) needs onnxscript: pip install "
                             "onnxscript==0.7.2, or pass --exporter legacy") from None
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    else:
        kwargs["dynamic_axes"] = {"input": {0: "batch"}, "logits": {0: "batch"}}
    with _quiet_exporter():
        torch.onnx.export(model, (example,), str(path), dynamo=exporter == "dynamo", external_data=False,
                          **kwargs)
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    proto.producer_name = "deepres"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _onnxruntime_runner(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
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


def _write_torch_export(model, example, path: Path, metadata: dict) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
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
        missing = [k for k in METADATA_KEYS if k not in props]
        if missing:
            raise KeyError(f"{path}: no deepres metadata ({', '.join(missing)} missing from metadata_props)")
        return {k: json.loads(props[k]) for k in METADATA_KEYS}
    files = {METADATA_FILE: ""}
    if path.suffix == ".pt2":
        torch.export.load(path, extra_files=files)
    else:
        with _no_jit_deprecation():
            torch.jit.load(str(path), _extra_files=files)
    if not files[METADATA_FILE]:
        raise KeyError(f"{path}: no {METADATA_FILE} inside (not exported by deepres)")
    text = files[METADATA_FILE]
    return json.loads(text.decode() if isinstance(text, bytes) else text)


# ---------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a deepres run directory or .safetensors checkpoint (config inside), or "
                                           "any .pth/.safetensors state dict together with --model")
    parser.add_argument("--format", choices=tuple(FORMATS), default="onnx",
                        help="onnx (dynamic batch, checked with ONNX Runtime), torchscript (torch.jit.trace), or "
                             "export (torch.export .pt2)")
    parser.add_argument("--out", metavar="FILE", help="output file (default: the checkpoint's name with "
                                                       "the format's suffix, beside it)")
    parser.add_argument("--model", help="registered model name (needed for checkpoints without a deepres config)")
    parser.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    parser.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo",
                        help="ONNX exporter: dynamo (torch.export-based, the default of torch 2.9+) or legacy "
                             "(TorchScript-based, deprecated)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="max |exported - PyTorch| logit error allowed, times max(1, largest |logit|)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set data.eval_preset=224_256 for a plain state dict")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")


def run(args: argparse.Namespace) -> int:
    model, cfg, classes, path = load_model(args.checkpoint, args.model, args.overrides)
    metadata = preprocessing_metadata(cfg, classes)
    out = Path(args.out) if args.out else path.with_name(path.name.split(".")[0] + FORMATS[args.format])
    try:
        result = export_model(model, out, format=args.format, metadata=metadata, opset=args.opset,
                              exporter=args.exporter, force=args.force, tolerance=args.tolerance)
    except FileExistsError as e:
        print(f"deepres export: error: {e}", file=sys.stderr)
        return 1
    c, h, w = metadata["input_size"]
    print(f"wrote {result['path']} ({cfg.model.name}, input [batch, {c}, {h}, {w}], {args.format}); max abs "
          f"logit error vs PyTorch {result['max_abs_error']:.3g} on batches "
          f"{', '.join(map(str, result['errors']))}")
    return 0
