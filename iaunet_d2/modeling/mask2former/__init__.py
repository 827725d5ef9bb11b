"""Mask2Former baseline: deformable-attention pixel decoder, masked-attention decoder.

Importing this package registers the ``Mask2Former`` meta-architecture in Detectron2's
``META_ARCH_REGISTRY``.
"""
from .deformable_attention import (  # noqa: F401
    MultiScaleDeformableAttention,
    deformable_sample,
    reference_points,
)
from .meta_arch import Mask2Former, topk_instance_inference  # noqa: F401
from .pixel_decoder import MSDeformAttnPixelDecoder  # noqa: F401
from .transformer_decoder import MaskedAttentionDecoder, attention_mask_from_predictions  # noqa: F401
