"""`deepres export MODEL --format triton --out DIR`: a Triton Inference Server model repository.

Triton's documented layout (docs "Model Repository" and "Model Configuration"):

    DIR/<model name>/config.pbtxt       platform "onnxruntime_onnx", max_batch_size, input/output names, data types
                                        and dims (without the batch dimension; -1 = variable), dynamic_batching
    DIR/<model name>/1/model.onnx       version 1: deepres's ONNX export (checked with ONNX Runtime), preprocessing
                                        and class names in its metadata_props

The preprocessing is also copied into config.pbtxt as a string parameter "deepres_preprocessing" (JSON), so a client
can read it from Triton's model-config endpoint. Triton itself does not preprocess: clients send the normalised
float32 NCHW tensor described there.
"""
import json
import re
import shutil
from pathlib import Path

from deepres.core.files import atomic_write_text
from deepres.tasks.build import LoadedModel

from .export import DEFAULT_TOLERANCE, export_model, preprocessing_metadata

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
    """config.pbtxt (protobuf text format) for an ONNX model with a dynamic batch dimension."""
    def block(kind: str, specs: list[dict]) -> list[str]:
        lines = [f"{kind} ["]
        for i, spec in enumerate(specs):
            lines += ["  {", f'    name: "{spec["name"]}"', f"    data_type: {spec['data_type']}",
                      f"    dims: [ {', '.join(map(str, spec['dims']))} ]", "  }" + ("," if i < len(specs) - 1 else "")]
        return lines + ["]"]

    preprocessing = json.dumps({k: v for k, v in metadata.items() if k != "class_names"})
    lines = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch}",
             *block("input", inputs), *block("output", outputs),
             "dynamic_batching {", f"  max_queue_delay_microseconds: {round(max_wait_ms * 1000)}", "}",
             "parameters {", '  key: "deepres_preprocessing"',
             f"  value: {{ string_value: {json.dumps(preprocessing)} }}", "}"]
    return "\n".join(lines) + "\n"


def export_triton(loaded: LoadedModel, out: str | Path, *, name: str | None = None, max_batch: int = 32,
                  max_wait_ms: float = 5.0, force: bool = False, opset: int | None = None, exporter: str = "dynamo",
                  tolerance: float = DEFAULT_TOLERANCE, log=print) -> dict:
    """Write the model repository entry DIR/<name>/{config.pbtxt, 1/model.onnx}; the ONNX file is checked against
    PyTorch with ONNX Runtime (export_model) before config.pbtxt is written. Returns export_model's result with
    "model_dir" and "config" added."""
    if max_batch < 1 or max_wait_ms < 0:
        raise ValueError(f"--max-batch must be >= 1 and --max-wait-ms >= 0, got {max_batch} and {max_wait_ms}")
    metadata = preprocessing_metadata(loaded)
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
        atomic_write_text(model_dir / "config.pbtxt", config)
    except BaseException:
        shutil.rmtree(model_dir, ignore_errors=True)  # no half-written model directory for Triton to trip on
        raise
    return {**result, "model_dir": str(model_dir), "config": str(model_dir / "config.pbtxt")}
