"""Inference: the Predictor (a model with its preprocessing, class names and fast path), mmpretrain-style
`init_model` / `inference_model` / `extract_feat`, the CPU/GPU fast path, export to deployable files and the
inference benchmark. The commands `deepres predict`, `export` and `bench` are cli.py."""
from deepres.core.preprocess import Preprocess

from .api import extract_feat, inference_model, init_model
from .predictor import Predictor
from .preprocess import expand_inputs, preprocess_image, to_image_tensor

__all__ = ["Predictor", "Preprocess", "expand_inputs", "extract_feat", "inference_model", "init_model",
           "preprocess_image", "to_image_tensor"]
