"""`deepres convert ademxapp FILE.params --model fcn_resnet38_a1 --out model.safetensors`: an MXNet checkpoint of
the ademxapp ResNet-38 models as a safetensors state dict that `create_model(model, num_classes=...)` loads with
strict=True (read without mxnet: deepres.models.mxnet_params; names: deepres.models.ademxapp).

`deepres convert assemble CKPT_PREFIX --model assemble_resnet50 --out model.safetensors`: a clovaai/assembled-cnn
TensorFlow checkpoint (PREFIX.index + PREFIX.data-*, read without TensorFlow: deepres.models.tf_checkpoint; names:
deepres.models.assemble_tf), 1000 classes (their background row dropped) unless --keep-background."""
from pathlib import Path

import safetensors.torch

from deepres.core.files import atomic_write
from deepres.models.ademxapp import MODELS, ademxapp_num_classes, convert_ademxapp
from deepres.models.assemble_tf import MODELS as ASSEMBLE_MODELS
from deepres.models.assemble_tf import convert_assemble, is_skipped
from deepres.models.mxnet_params import read_mxnet_params
from deepres.models.tf_checkpoint import index_path, read_index, read_tf_checkpoint

DEFAULT_MODELS = {"ademxapp": "fcn_resnet38_a1"}  # assemble has none: ResNet-50 and -152 checkpoints look alike


def add_arguments(parser) -> None:
    parser.add_argument("format", choices=["ademxapp", "assemble"],
                        help="whose checkpoint: ademxapp (MXNet .params) or assemble (clovaai/assembled-cnn "
                             "TensorFlow checkpoint)")
    parser.add_argument("params", metavar="FILE.params|CKPT_PREFIX",
                        help="the MXNet checkpoint (arg:/aux: arrays), or the TF checkpoint prefix (or its .index)")
    parser.add_argument("--model", choices=MODELS + ASSEMBLE_MODELS,
                        help="the deepres model the checkpoint is for (ademxapp: default fcn_resnet38_a1; assemble: "
                             "required, assemble_resnet50 or assemble_resnet152)")
    parser.add_argument("--keep-background", action="store_true",
                        help="assemble: keep their 1001st (background, row 0) output instead of dropping it")
    parser.add_argument("--out", required=True, metavar="FILE.safetensors", help="where to write the state dict")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")


def run(args) -> int:
    params, out = Path(args.params), Path(args.out)
    if out.exists() and not args.force:
        raise FileExistsError(f"--out {out} already exists; choose another file or pass --force")
    model = args.model or DEFAULT_MODELS.get(args.format)
    allowed = ASSEMBLE_MODELS if args.format == "assemble" else MODELS
    if model is None:
        raise ValueError(f"{args.format} needs --model: one of {', '.join(allowed)}")
    if model not in allowed:
        raise ValueError(f"--model {model}: {args.format} checkpoints convert to {', '.join(allowed)}")
    if args.format == "assemble":
        return _run_assemble(params, out, model, args.keep_background)
    if args.keep_background:
        raise ValueError("--keep-background is for assemble checkpoints")
    args.model = model
    if not params.is_file():
        raise FileNotFoundError(f"{params}: no such file")
    arrays = read_mxnet_params(params)
    state = convert_ademxapp(arrays, args.model, source=str(params))
    blob = safetensors.torch.save(state, metadata={"format": "pt", "model": args.model, "source": params.name})
    atomic_write(out, lambda f: f.write(blob))
    num_classes = ademxapp_num_classes(arrays, str(params))
    print(f"wrote {out}: {args.model} with {num_classes} classes, {len(state)} tensors from {params}")
    return 0


def _run_assemble(prefix: Path, out: Path, model: str, keep_background: bool) -> int:
    index = index_path(prefix)
    _, entries = read_index(index)
    skipped = sorted(name for name in entries if is_skipped(name))
    arrays = read_tf_checkpoint(index, names=[name for name in entries if not is_skipped(name)])
    state = convert_assemble(arrays, model, source=str(index), keep_background=keep_background)
    blob = safetensors.torch.save(state, metadata={"format": "pt", "model": model, "source": index.name})
    atomic_write(out, lambda f: f.write(blob))
    print(f"wrote {out}: {model} with {state['fc.weight'].shape[0]} classes, {len(state)} tensors from {index} "
          f"(skipped {len(skipped)}: global_step and optimizer slots)")
    return 0
