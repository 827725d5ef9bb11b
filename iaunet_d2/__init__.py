"""IAUNet, the instance-aware U-Net for cell instance segmentation, on Detectron2.

Importing the package registers its datasets, dataset mappers, meta-architecture,
backbones and components with Detectron2's registries.
"""
from . import compat  # noqa: F401  (must run before Detectron2 is used)
from .config import add_iaunet_config, apply_pretrained_policy  # noqa: F401
from . import data  # noqa: F401  (registers datasets and mappers)
from . import modeling  # noqa: F401  (registers the model and its components)

__version__ = "0.1.0"
