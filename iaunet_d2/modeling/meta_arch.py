"""The IAUNet meta-architecture: backbone -> head (pixel decoder <-> transformer decoder)."""
import contextlib
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import BitMasks, ImageList, PolygonMasks
from torch import nn

from .criterion import build_criterion
from .head import IAUNetHead
from .postprocessing import predictions_to_instances

__all__ = ["IAUNet", "SetPredictionModel", "upgrade_state_dict"]

_AMP_DTYPES = {"": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# Before version 2 the decoders were children of the meta-architecture; they are now
# children of its head.
_HEAD_CHILDREN = ("pixel_decoder", "transformer_decoder")


def upgrade_state_dict(state_dict: Dict, prefix: str = "", version: Optional[int] = None) -> int:
    """Rename, in place, the keys of an IAUNet state dict older than version 2:
    ``<prefix>pixel_decoder.*`` / ``<prefix>transformer_decoder.*`` become
    ``<prefix>head.pixel_decoder.*`` / ``<prefix>head.transformer_decoder.*``.

    The state dict's ``_metadata`` (per-module versions), if any, gets entries under the
    new names too, so that the decoders' own upgrades see their saved versions.

    Args:
        state_dict: the model's part of a checkpoint (name -> tensor).
        prefix: where the IAUNet module sits in the state dict ("" at the top).
        version: the IAUNet version the state dict was saved with; None (unknown, e.g.
            a converted checkpoint) is treated as old. Nothing is renamed from 2 on.
    Returns:
        the number of renamed keys.
    """
    if version is not None and version >= 2:
        return 0
    old_prefixes = tuple(f"{prefix}{name}." for name in _HEAD_CHILDREN)
    renamed = 0
    for key in [k for k in state_dict if k.startswith(old_prefixes)]:
        state_dict[f"{prefix}head.{key[len(prefix):]}"] = state_dict.pop(key)
        renamed += 1
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for name in [n for n in metadata if f"{n}.".startswith(old_prefixes)]:
            metadata.setdefault(f"{prefix}head.{name[len(prefix):]}", dict(metadata[name]))
    return renamed


class SetPredictionModel(nn.Module):
    """What IAUNet and Mask2Former share around their decoders: the backbone, input
    normalisation and padding, and ground truth in the criterion's layout."""

    def __init__(self, backbone: Backbone, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 size_divisibility: int):
        super().__init__()
        self.backbone = backbone
        self.size_divisibility = max(int(size_divisibility), int(backbone.size_divisibility))
        # Buffers so that .to(device) moves them and checkpoints record them.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1))

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalize and pad the images: ImageList of (B, C, Hp, Wp) float."""
        images = [
            (x["image"].to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std
            for x in batched_inputs
        ]
        return ImageList.from_tensors(images, self.size_divisibility)

    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """Ground truth as the criterion expects it.

        Returns:
            list of B dicts: "labels" int64 (M,), "masks" float (M, Hp, Wp), the image's
            masks zero-padded to the batch's padded size.
        """
        hp, wp = images.tensor.shape[-2:]
        targets = []
        for x in batched_inputs:
            inst = x["instances"].to(self.device)
            gt_masks = inst.gt_masks
            if isinstance(gt_masks, PolygonMasks):
                h, w = inst.image_size
                gt_masks = BitMasks.from_polygon_masks(gt_masks, h, w).to(self.device)
            masks = gt_masks.tensor if isinstance(gt_masks, BitMasks) else gt_masks
            m, h, w = masks.shape
            padded = torch.zeros((m, hp, wp), dtype=torch.float32, device=self.device)
            padded[:, :h, :w] = masks.to(torch.float32)
            targets.append({"labels": inst.gt_classes.to(torch.int64), "masks": padded})
        return targets


@META_ARCH_REGISTRY.register()
class IAUNet(SetPredictionModel):
    """Instance-aware U-Net for instance segmentation.

    Input: Detectron2's list of dicts, each with ``"image"`` (C, H, W) in the model's
    input format (0-255), and for training ``"instances"`` (``gt_classes``, ``gt_masks``
    as BitMasks or PolygonMasks at the image size); optionally ``"height"``/``"width"``,
    the output resolution of the predictions (default: the image's own size).

    Training returns the criterion's dict of weighted losses. Inference returns one dict
    per image, ``{"instances": Instances}`` with ``pred_masks`` (bool, R x height x width),
    ``scores``, ``pred_classes``, ``pred_boxes`` and ``pred_query_idx``.

    Set ``model.return_activation_maps = True`` to also get, per image,
    ``"activation_maps"``: a list over decoder levels (coarse to fine) of (N, h_l, w_l)
    CPU tensors, the IA layer's maps cropped to the part of the level that covers the
    image (padding removed; a map therefore sums to at most 1).
    """

    # 2: the decoders moved into ``head`` (see ``upgrade_state_dict``).
    _version = 2

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        criterion: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = 32,
        score_thresh: float = 0.01,
        mask_thresh: float = 0.5,
        nms_iou: float = 0.8,
        max_detections: int = 100,
        amp: str = "",
    ):
        """
        Args:
            backbone: Detectron2 backbone giving the pixel decoder's input features.
            head: maps the backbone features to the decoder outputs (``IAUNetHead``).
            criterion: maps (outputs, targets) to a dict of weighted losses.
            pixel_mean, pixel_std: per-channel input normalization (0-255 scale).
            size_divisibility: images are padded to a multiple of this (at least the
                backbone's own requirement).
            score_thresh, mask_thresh, nms_iou, max_detections: inference settings.
            amp: inference autocast dtype, "" (off), "bf16" or "fp16".
        """
        super().__init__(backbone, pixel_mean, pixel_std, size_divisibility)
        self.head = head
        self.criterion = criterion
        self.score_thresh = score_thresh
        self.mask_thresh = mask_thresh
        self.nms_iou = nms_iou
        self.max_detections = max_detections
        if amp not in _AMP_DTYPES:
            raise ValueError(f"MODEL.IAUNET.TEST.AMP must be one of {sorted(_AMP_DTYPES)}, got {amp!r}")
        self.amp = amp
        # Fast inference path (eval mode only; see ``_inference_context``): inference
        # mode when autograd is already off, channels-last activations on CPU.
        self.fast_inference = True
        # When True, inference results also carry the IA activation maps.
        self.return_activation_maps = False

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        ia = cfg.MODEL.IAUNET
        return {
            "backbone": backbone,
            "head": IAUNetHead(cfg, backbone.output_shape()),
            "criterion": build_criterion(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": ia.SIZE_DIVISIBILITY,
            "score_thresh": ia.TEST.SCORE_THRESH,
            "mask_thresh": ia.TEST.MASK_THRESH,
            "nms_iou": ia.TEST.NMS_IOU,
            "max_detections": cfg.TEST.DETECTIONS_PER_IMAGE,
            "amp": ia.TEST.get("AMP", ""),
        }

    def forward(self, batched_inputs: List[Dict]):
        """See the class docstring for inputs and outputs."""
        if self.training:
            images = self.preprocess_image(batched_inputs)
            features = self.backbone(images.tensor)
            outputs = self.head(features)
            return self.criterion(outputs, self.prepare_targets(batched_inputs, images))
        with self._inference_context():
            images = self.preprocess_image(batched_inputs)
            x = images.tensor
            fast = self.fast_inference and not torch.jit.is_tracing()
            if fast and x.device.type == "cpu":
                # oneDNN convolutions run faster on NHWC; the layout propagates through
                # the network and makes the pixel-token views of the decoder copy-free.
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                features = self.backbone(x)
                outputs = self.head(features)
            return self.inference(outputs, batched_inputs, images)

    @classmethod
    def upgrade_checkpoint(cls, state_dict: Dict) -> int:
        """Bring a checkpoint's model state dict of an older version to this layout, in
        place, before it is compared with the model; returns the number of renamed keys."""
        metadata = getattr(state_dict, "_metadata", None) or {}
        return upgrade_state_dict(state_dict, "", metadata.get("", {}).get("version"))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        upgrade_state_dict(state_dict, prefix, local_metadata.get("version"))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _inference_context(self):
        """``torch.inference_mode`` when the caller already disabled autograd (as
        Detectron2's evaluation loop does) and the fast path is on; otherwise nothing,
        so that eval-mode forwards with autograd (e.g. saliency) keep working."""
        if self.fast_inference and not torch.is_grad_enabled() and not torch.jit.is_tracing():
            return torch.inference_mode()
        return contextlib.nullcontext()

    def _autocast(self):
        """Autocast for the network (not post-processing) when MODEL.IAUNET.TEST.AMP is set."""
        if not self.amp or torch.jit.is_tracing():
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_AMP_DTYPES[self.amp])

    def inference(self, outputs: Dict, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """Turn the decoder outputs into one ``{"instances": ...}`` dict per image."""
        padded_size = tuple(images.tensor.shape[-2:])
        results = []
        for i, (x, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            height = x.get("height", image_size[0])
            width = x.get("width", image_size[1])
            instances = predictions_to_instances(
                outputs["pred_logits"][i],
                outputs["pred_masks"][i],
                image_size=tuple(image_size),
                output_size=(height, width),
                score_thresh=self.score_thresh,
                mask_thresh=self.mask_thresh,
                nms_iou=self.nms_iou,
                max_detections=self.max_detections,
                padded_size=tuple(padded_size),
            )
            result = {"instances": instances}
            if self.return_activation_maps:
                result["activation_maps"] = [
                    _crop_to_image(maps[i], image_size, padded_size).detach().cpu()
                    for maps in outputs["activation_maps"]
                ]
            results.append(result)
        return results


def _crop_to_image(
    maps: torch.Tensor, image_size: Tuple[int, int], padded_size: Tuple[int, int]
) -> torch.Tensor:
    """Crop (N, h, w) maps of a padded (Hp, Wp) input to the part covering image_size."""
    h, w = maps.shape[-2:]
    keep_h = min(h, math.ceil(image_size[0] * h / padded_size[0]))
    keep_w = min(w, math.ceil(image_size[1] * w / padded_size[1]))
    return maps[:, :keep_h, :keep_w]
