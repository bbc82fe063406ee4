"""Inference: the Predictor (a model with its preprocessing, class names and fast path), mmpretrain-style
`init_model` / `inference_model` / `extract_feat`, the CPU/GPU fast path, export to deployable files and the
inference benchmark. The commands `deepres predict`, `export` and `bench` are cli.py."""
from deepres.core.preprocess import Preprocess

from .api import extract_feat, forward_batch, inference_model, init_model, iter_predictions, set_fast_path
from .predictor import Predictor
from .preprocess import expand_inputs, preprocess_image, to_image_tensor

__all__ = ["Predictor", "Preprocess", "expand_inputs", "extract_feat", "forward_batch", "inference_model",
           "init_model", "iter_predictions", "preprocess_image", "set_fast_path", "to_image_tensor"]
