from .registry import create_model, default_input_size, list_models, register_model, register_variant
from .base import module_device
from .weights import load_pretrained, read_state_dict
from . import resnet  # noqa: F401  (importing a family registers its variants)
from . import preact_resnet  # noqa: F401
from . import resnet38  # noqa: F401
from . import neon  # noqa: F401
from . import segmentation  # noqa: F401
