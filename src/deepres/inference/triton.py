"""`deepres export MODEL --format triton --out DIR`: a Triton Inference Server model repository.

Triton's documented layout (docs "Model Repository" and "Model Configuration"):

    DIR/<model name>/config.pbtxt       platform "onnxruntime_onnx", max_batch_size, input/output names, data types
                                        and dims (without the batch dimension; -1 = variable), dynamic_batching
    DIR/<model name>/labels.txt         the class names, one a line, in output index order
    DIR/<model name>/1/model.onnx       version 1: deepres's ONNX export (checked with ONNX Runtime), preprocessing
                                        and class names in its metadata_props

A classifier's output ([num_classes]) names labels.txt as its `label_filename`, so Triton's classification extension
(a request's `classification` parameter / the clients' `class_count`) answers "<score>:<index>:<class name>".
A segmentation output ([num_classes, -1, -1]) does not: that extension ranks the whole output tensor flattened
(indices into C*H*W, not classes), and model_config.proto says label_filename "should be specified only for outputs
that represent classifications"; labels.txt is written beside it all the same, for clients to name the channels.
A segmentation model takes any height and width (input [C, -1, -1]; Triton batches requests of equal size only);
a classifier takes its crop's fixed size.

The preprocessing is also copied into config.pbtxt: the parameter "deepres_input" states it as one formula with this
model's numbers (export.preprocessing_formula), and "deepres_preprocessing" holds every field as JSON, so a client
can read both from Triton's model-config endpoint. Triton itself does not preprocess: clients send the normalised
float32 NCHW tensor described there.
"""
import json
import re
import shutil
from pathlib import Path

from deepres.core.files import atomic_write_text
from deepres.tasks.build import LoadedModel

from .export import DEFAULT_TOLERANCE, export_model, preprocessing_metadata

LABELS_FILE = "labels.txt"  # in the model's folder, beside config.pbtxt, as Triton's examples keep it
# ONNX TensorProto data type name -> Triton's
ONNX_TYPES = {"FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16", "BFLOAT16": "TYPE_BF16", "INT64": "TYPE_INT64",
              "INT32": "TYPE_INT32", "UINT8": "TYPE_UINT8"}


def triton_model_name(name: str) -> str:
    """A model directory name Triton accepts: letters, digits, '_', '-' and '.' (others become '_')."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "model"


def tensor_specs(path: Path) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of an ONNX file: name, Triton data type and dims without the batch dimension."""
    import onnx  # here, as in export.py: `deepres predict` and `serve` start without it

    graph = onnx.load(str(path), load_external_data=False).graph

    def spec(value) -> dict:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        data_type = onnx.TensorProto.DataType.Name(tensor.elem_type)
        if data_type not in ONNX_TYPES:
            raise ValueError(f"{path}: tensor {value.name} has ONNX type {data_type}, which has no Triton type here")
        return {"name": value.name, "data_type": ONNX_TYPES[data_type], "dims": dims[1:]}

    initializers = {init.name for init in graph.initializer}
    inputs = [spec(v) for v in graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in graph.output]


def triton_config(name: str, inputs: list[dict], outputs: list[dict], *, max_batch: int, max_wait_ms: float,
                  metadata: dict) -> str:
    """config.pbtxt (protobuf text format) for an ONNX model with a dynamic batch dimension. An output whose one
    dimension is the class count gets `label_filename: "labels.txt"` (LABELS_FILE)."""
    def block(kind: str, specs: list[dict]) -> list[str]:
        lines = [f"{kind} ["]
        for i, spec in enumerate(specs):
            lines += ["  {", f'    name: "{spec["name"]}"', f"    data_type: {spec['data_type']}",
                      f"    dims: [ {', '.join(map(str, spec['dims']))} ]"]
            if kind == "output" and spec["dims"] == [metadata["num_classes"]]:
                lines.append(f'    label_filename: "{LABELS_FILE}"')
            lines.append("  }" + ("," if i < len(specs) - 1 else ""))
        return lines + ["]"]

    preprocessing = json.dumps({k: v for k, v in metadata.items() if k != "class_names"})
    lines = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch}",
             *block("input", inputs), *block("output", outputs),
             "dynamic_batching {", f"  max_queue_delay_microseconds: {round(max_wait_ms * 1000)}", "}",
             "parameters {", '  key: "deepres_input"',
             f"  value: {{ string_value: {json.dumps(metadata['input_layout'])} }}", "}",
             "parameters {", '  key: "deepres_preprocessing"',
             f"  value: {{ string_value: {json.dumps(preprocessing)} }}", "}"]
    return "\n".join(lines) + "\n"


def labels_text(class_names: list[str]) -> str:
    """labels.txt: one class name a line, line i naming output index i (Triton's label file format)."""
    broken = [name for name in class_names if "\n" in name or "\r" in name or not name.strip()]
    if broken:
        raise ValueError(f"class name {broken[0]!r} cannot be a line of {LABELS_FILE}: empty or with a line break")
    return "".join(f"{name}\n" for name in class_names)


def export_triton(loaded: LoadedModel, out: str | Path, *, name: str | None = None, max_batch: int = 32,
                  max_wait_ms: float = 5.0, force: bool = False, opset: int | None = None, exporter: str = "dynamo",
                  tolerance: float = DEFAULT_TOLERANCE, log=print) -> dict:
    """Write the model repository entry DIR/<name>/{config.pbtxt, labels.txt, 1/model.onnx}; the ONNX file is checked
    against PyTorch with ONNX Runtime (export_model) before config.pbtxt is written. Returns export_model's result with
    "model_dir", "config" and "labels" added."""
    if max_batch < 1 or max_wait_ms < 0:
        raise ValueError(f"--max-batch must be >= 1 and --max-wait-ms >= 0, got {max_batch} and {max_wait_ms}")
    metadata = preprocessing_metadata(loaded)
    labels = labels_text(metadata["class_names"])
    name = triton_model_name(name or metadata["model"])
    model_dir = Path(out) / name
    if model_dir.exists():
        if not force:
            raise FileExistsError(f"{model_dir} already exists; choose another --out or pass --force to replace it")
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    try:
        result = export_model(loaded.model, model_dir / "1" / "model.onnx", format="onnx", metadata=metadata,
                              opset=opset, exporter=exporter, tolerance=tolerance, log=log)
        inputs, outputs = tensor_specs(model_dir / "1" / "model.onnx")
        config = triton_config(name, inputs, outputs, max_batch=max_batch, max_wait_ms=max_wait_ms,
                               metadata=metadata)
        atomic_write_text(model_dir / LABELS_FILE, labels)
        atomic_write_text(model_dir / "config.pbtxt", config)
    except BaseException:
        shutil.rmtree(model_dir, ignore_errors=True)  # no half-written model directory for Triton to trip on
        raise
    return {**result, "model_dir": str(model_dir), "config": str(model_dir / "config.pbtxt"),
            "labels": str(model_dir / LABELS_FILE)}
