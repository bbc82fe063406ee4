"""mmpretrain-style functions over the Predictor: `init_model` builds one, `inference_model` classifies images,
`extract_feat` returns pooled or per-stage features."""
import torch.nn as nn

from deepres.core.preprocess import Preprocess
from deepres.data.imagenet_classes import imagenet_class_names
from deepres.models import load_pretrained, read_state_dict
from deepres.tasks.build import load_model

from .int8 import Int8Calibration
from .plan import UNSET, precision_or_fast
from .predictor import Predictor, stem_in_chans


def init_model(model_or_recipe, checkpoint=None, device="cpu", *, preprocess: Preprocess | None = None,
               class_names: list[str] | None = None, precision: str = "auto", compile: bool = False,
               calibration=None, backend: str = "auto", fast=UNSET) -> Predictor:
    """A Predictor on `device`: the model in eval mode with its preprocessing, class names and source.

    model_or_recipe: a deepres run directory or .safetensors checkpoint (config and classes inside), a weights
    name "arch.tag" (list_pretrained(); downloaded and verified), a registered model name (random weights unless
    `checkpoint` is given), a recipe name or YAML path, or an nn.Module (see deepres.tasks.build.load_model).
    checkpoint: any .pth/.safetensors state dict for that architecture (num_classes and in_chans are read from it).
    preprocess / class_names override what was derived.
    precision: how the predictor runs it (Predictor.set_fast_path, one of plan.PRECISIONS): "auto" (default; int8
    where a deepres checkpoint carries an int8 calibration agreeing with fp32 on >= 99.5% of its images and the CPU
    has VNNI/AMX, else bf16 where the CPU/GPU computes it natively, else fp32, BN folded and channels_last either
    way; the Predictor's `plan.reason` says which and why), "fp32", "bf16", "int8" (CPU; needs `calibration`, a few
    hundred images of any kind inference_model takes, unless the checkpoint stores one), or "eager" (the model as
    it is, fp32). compile: add torch.compile (compiles once per batch size: worth it for large jobs). backend: what
    runs an fp32 path on the CPU: "auto" (ONNX Runtime, exported once and cached, unless compiled), "torch",
    "onnxruntime". fast: the deprecated name of precision (True: "auto", False: "eager").
    The model itself keeps its fp32 weights: extract_feat, export and training use it unchanged.
    """
    precision = precision_or_fast(precision, fast, "init_model")
    if isinstance(model_or_recipe, nn.Module):
        model = model_or_recipe
        if checkpoint is not None:
            report = load_pretrained(model, read_state_dict(checkpoint))
            if report["dropped"]:
                raise ValueError(f"{checkpoint}: its classifier does not fit the model ({', '.join(report['dropped'])} "
                                 f"dropped); inference needs the trained classifier")
        num_classes = getattr(model, "num_classes", 0) or 0
        default_names = imagenet_class_names() if num_classes == 1000 else [str(i) for i in range(num_classes)]
        source = {"source": "module", "checkpoint": str(checkpoint) if checkpoint is not None else None}
        derived_pp, derived_names, config = Preprocess(in_chans=stem_in_chans(model) or 3), default_names, None
        int8 = None
    else:
        loaded = load_model(model_or_recipe, checkpoint)
        model, derived_pp, derived_names = loaded.model, loaded.preprocess, loaded.class_names
        source, config = loaded.source, loaded.config
        int8 = (Int8Calibration.from_json(loaded.int8_calibration, f"{source['checkpoint']}: int8_calibration")
                if loaded.int8_calibration is not None else None)
    return Predictor(model.to(device), preprocess or derived_pp,
                     class_names if class_names is not None else derived_names, source=source, config=config,
                     precision=precision, compile=compile, calibration=calibration, int8_calibration=int8,
                     backend=backend)


def _predictor(model) -> Predictor:
    if not isinstance(model, Predictor):
        raise TypeError(f"expected a deepres Predictor, got a {type(model).__name__}; build it with "
                        f"deepres.init_model(...) (it accepts an nn.Module too)")
    return model


def inference_model(model: Predictor, inputs, top_k: int = 5, batch_size: int = 32, skip_bad: bool = False,
                    progress: bool | None = False):
    """Classify one image (-> dict) or several (-> list of dicts, in order): see Predictor.predict."""
    return _predictor(model).predict(inputs, top_k=top_k, batch_size=batch_size, skip_bad=skip_bad,
                                     progress=progress)


def extract_feat(model: Predictor, inputs, stage: str = "pre_logits", batch_size: int = 32):
    """Pooled (N, num_features) or per-stage features of the images: see Predictor.extract_feat."""
    return _predictor(model).extract_feat(inputs, stage=stage, batch_size=batch_size)
