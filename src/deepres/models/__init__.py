from .registry import create_model, default_input_size, list_models, register_model
