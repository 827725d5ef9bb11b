"""Backbones. ResNets come from Detectron2 (``build_resnet_backbone``); importing this
package registers ``build_swin_backbone`` in Detectron2's ``BACKBONE_REGISTRY``."""
from .swin import SwinBackbone, build_swin_backbone, convert_swin_state_dict, load_swin_state_dict

__all__ = ["SwinBackbone", "build_swin_backbone", "convert_swin_state_dict", "load_swin_state_dict"]
