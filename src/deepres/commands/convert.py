"""`deepres convert ademxapp FILE.params --model fcn_resnet38_a1 --out model.safetensors`: an MXNet checkpoint of
the ademxapp ResNet-38 models as a safetensors state dict that `create_model(model, num_classes=...)` loads with
strict=True (read without mxnet: deepres.models.mxnet_params; names: deepres.models.ademxapp)."""
from pathlib import Path

import safetensors.torch

from deepres.core.files import atomic_write
from deepres.models.ademxapp import MODELS, ademxapp_num_classes, convert_ademxapp
from deepres.models.mxnet_params import read_mxnet_params


def add_arguments(parser) -> None:
    parser.add_argument("format", choices=["ademxapp"], help="whose checkpoint: ademxapp (MXNet .params)")
    parser.add_argument("params", metavar="FILE.params", help="the MXNet checkpoint (arg:/aux: arrays)")
    parser.add_argument("--model", default="fcn_resnet38_a1", choices=MODELS,
                        help="the deepres model the checkpoint is for (default fcn_resnet38_a1)")
    parser.add_argument("--out", required=True, metavar="FILE.safetensors", help="where to write the state dict")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")


def run(args) -> int:
    params, out = Path(args.params), Path(args.out)
    if out.exists() and not args.force:
        raise FileExistsError(f"--out {out} already exists; choose another file or pass --force")
    if not params.is_file():
        raise FileNotFoundError(f"{params}: no such file")
    arrays = read_mxnet_params(params)
    state = convert_ademxapp(arrays, args.model, source=str(params))
    blob = safetensors.torch.save(state, metadata={"format": "pt", "model": args.model, "source": params.name})
    atomic_write(out, lambda f: f.write(blob))
    num_classes = ademxapp_num_classes(arrays, str(params))
    print(f"wrote {out}: {args.model} with {num_classes} classes, {len(state)} tensors from {params}")
    return 0
