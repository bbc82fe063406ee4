"""deepres: deep residual networks for image recognition."""
from .models import create_model, list_models, register_model

__version__ = "0.1.0"
