"""Inference: `init_model` (a classifier with its preprocessing and class names), `inference_model`
(classify images, files or folders), `extract_feat` (pooled or per-stage features); `deepres predict` is cli.py."""
from .api import expand_inputs, extract_feat, forward_batch, inference_model, init_model, iter_predictions, \
    set_fast_path
from .preprocess import Preprocess, preprocess_image, to_image_tensor
