"""The fast inference path, in two steps: `choose_path` (plan.py) decides which precision, backend and layout run and
why, and returns a Plan; `build_runner` (runner.py) builds that plan on a private copy of the model and checks it
against the fp32 model. Their parts are modules of their own: bn_fold.py (BatchNorm folding), onnx_backend.py (fp32
on ONNX Runtime), int8.py (the stored calibration and post-training quantization). This module gathers the public
names, for one import:

    plan = choose_path(model, "cpu", request=Request("auto"))
    runner, info = build_runner(model, plan, example_batch((3, 224, 224)))
"""
import warnings

from .bn_fold import FoldReport, NotTraceable, find_conv_bn_pairs, fold_batchnorm
from .int8 import Int8Calibration
from .onnx_backend import OnnxRuntimeFp32, onnx_cache_path
from .plan import AGREEMENT_BAR, BACKENDS, PRECISIONS, Plan, Request, choose_path
from .runner import InferenceInfo, InferenceRunner, build_runner, example_batch

__all__ = ["AGREEMENT_BAR", "BACKENDS", "FoldReport", "InferenceInfo", "InferenceRunner", "Int8Calibration",
           "NotTraceable", "OnnxRuntimeFp32", "PRECISIONS", "Plan", "Request", "build_runner", "choose_path",
           "example_batch", "find_conv_bn_pairs", "fold_batchnorm", "onnx_cache_path"]


def __getattr__(name: str):
    if name == "MODES":  # the old name of PRECISIONS
        warnings.warn("deepres.inference.fastpath.MODES is deprecated: use PRECISIONS", DeprecationWarning,
                      stacklevel=2)
        return PRECISIONS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
