"""IAUNet model: backbones, head (pixel and transformer decoders), criterion, meta-arch.

Importing this package registers every component with its registry (Detectron2's
``BACKBONE_REGISTRY`` and ``META_ARCH_REGISTRY``, and the project's own registries).
"""
from . import backbone  # noqa: F401
from . import matcher  # noqa: F401
from . import criterion  # noqa: F401
from . import postprocessing  # noqa: F401
from . import pixel_decoder  # noqa: F401
from . import transformer_decoder  # noqa: F401
from . import head  # noqa: F401
from . import meta_arch  # noqa: F401
from . import mask2former  # noqa: F401
from . import point_rend  # noqa: F401
from .head import IAUNetHead  # noqa: F401
from .meta_arch import IAUNet  # noqa: F401
from .pixel_decoder import IAUNET_PIXEL_DECODER_REGISTRY, build_pixel_decoder  # noqa: F401
from .transformer_decoder import (  # noqa: F401
    IAUNET_TRANSFORMER_DECODER_REGISTRY,
    build_transformer_decoder,
)
