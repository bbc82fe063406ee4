"""deepres: deep residual networks for image recognition."""
from .models import create_model, list_models, register_model
from .models.pretrained import list_pretrained, load_pretrained_weights
from .inference import extract_feat, inference_model, init_model

__version__ = "0.1.0"
