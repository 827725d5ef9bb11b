"""IAUNet's transformer decoder: instance activation and parallel dual-path layers.

At each pixel-decoder level (coarse to fine):

1. the Instance Activation (IA) layer turns the level's instance features into N
   activation maps (softmax over all pixels) and N queries (soft pooling of the
   instance features with each map);
2. one ``DualPathDecoderLayer`` refines the level's instance and mask pixel features
   against the queries ([new N ; previous-level N "support"] = 2N from level 1 on) and
   then the queries against the refined instance pixels; the first N rows are kept;
3. the refined pixel features go back to the pixel decoder, which upsamples them into
   the next level.

Class logits and mask kernels come from the final N queries; masks are the dot product
of the kernels with the pixel decoder's 1/4-resolution mask embeddings. That is the
paper's model. IAUNet+ (``MODEL.IAUNET.PLUS``, see ``iaunet_plus``) may add deep
supervision, per-slot content embeddings and anchor points, mask positional features,
a head initialisation and the dynamic mask head (``mask_heads``).
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from ..iaunet_plus import plus_options
from ..pixel_decoder import LevelFeatures
from .build import IAUNET_TRANSFORMER_DECODER_REGISTRY
from .instance_activation import InstanceActivation, anchor_location_bias, halton_points, map_centroids
from .layers import DualPathDecoderLayer
from .mask_heads import DynamicMaskHead
from .position_encoding import PositionEmbeddingSine

__all__ = ["IAUNetTransformerDecoder"]


@IAUNET_TRANSFORMER_DECODER_REGISTRY.register()
class IAUNetTransformerDecoder(nn.Module):
    """Drives the pixel decoder level by level and refines N instance queries.

    ``forward(features, pixel_decoder)`` returns a dict:

    * ``"pred_logits"``: (B, N, num_classes + 1) class logits (last = no object);
    * ``"pred_masks"``: (B, N, H/4, W/4) mask logits (at the finest level's size;
      (B, N, H/2, W/2) with the dynamic mask head upsampling 2x);
    * ``"activation_maps"``: list over levels (coarse to fine) of (B, N, h_l, w_l)
      activation maps, each map summing to 1 over its pixels;
    * ``"aux_outputs"``: with deep supervision (IAUNet+, training), one
      ``{"pred_logits", "pred_masks", "activation_maps"}`` per level but the last, from
      that level's queries and the final mask features; otherwise an empty list.
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dropout: float,
        pre_norm: bool,
        mask_dim: int,
        level_strides: Sequence[int],
        reference_size: int,
        deep_supervision: bool = False,
        query_content_embed: bool = False,
        head_init_std: float = 0.0,
        mask_feature_pos: bool = False,
        anchor_points: bool = False,
        anchor_sigma: float = 0.5,
        dynamic_mask_head: bool = False,
        dynamic_mask_channels: int = 8,
        dynamic_mask_layers: int = 3,
        dynamic_mask_upsample: int = 1,
    ):
        """
        Args:
            num_classes: foreground classes (logits get one more for "no object").
            hidden_dim: query and pixel feature width (= the pixel decoder's conv_dim).
            num_queries: N, queries (and activation maps) per level.
            nheads, dim_feedforward, dropout, pre_norm: attention/FFN settings.
            mask_dim: width of the mask kernels (= the pixel decoder's mask_dim).
            level_strides: input pixels per feature pixel of each pixel-decoder level,
                coarse to fine (one dual-path layer each); the last is the mask
                features' stride.
            reference_size: the length, in input pixels, that is 1 in the location
                frame of anchors, centroids and mask-head offsets (``INPUT.IMAGE_SIZE``):
                one unit on both axes, so locations mean the same at any aspect ratio.

        IAUNet+ only (all off: the paper's decoder):
            deep_supervision: in training, also predict from every level's queries.
            query_content_embed: add a learnable per-slot content embedding to each
                level's IA queries (the activation maps, and so the pooled queries, are
                much alike at initialisation).
            head_init_std: if > 0, class and kernel heads start from normal(0, std)
                weights and zero biases; 0 keeps PyTorch's default initialisation.
            mask_feature_pos: add the pixels' sine positional embedding to the mask
                features (needs mask_dim divisible by 4).
            anchor_points: a learned anchor point per query slot (initialised on a
                Halton sequence over the reference square) with a Gaussian log-prior
                around it on the slot's IA logits at every level.
            anchor_sigma: the prior's std in units of the mean anchor spacing,
                1 / sqrt(N) of the reference size.
            dynamic_mask_head: ``mask_heads.DynamicMaskHead`` instead of the kernel dot
                product, with ``dynamic_mask_channels`` / ``_layers`` / ``_upsample``.
        """
        super().__init__()
        if mask_feature_pos and mask_dim % 4:
            raise ValueError(
                f"MODEL.IAUNET.PLUS.MASK_FEATURE_POS needs MASK_DIM divisible by 4, got {mask_dim}"
            )
        if reference_size <= 0:
            raise ValueError(f"INPUT.IMAGE_SIZE must be > 0, got {reference_size}")
        self.num_levels = len(level_strides)
        # Pixel size of each level's maps in the location frame.
        self.level_steps = [float(s) / reference_size for s in level_strides]
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.mask_dim = mask_dim
        self.deep_supervision = deep_supervision
        # Unnormalised (periods from ~6 pixels up): fine enough to tell cells apart,
        # unlike the attention's normalised embedding, whose periods span the map.
        self.mask_pe = PositionEmbeddingSine(mask_dim // 2, normalize=False) if mask_feature_pos else None

        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.ia_layers = nn.ModuleList(
            InstanceActivation(hidden_dim, num_queries) for _ in range(self.num_levels)
        )
        self.layers = nn.ModuleList(
            DualPathDecoderLayer(hidden_dim, nheads, dim_feedforward, dropout, pre_norm)
            for _ in range(self.num_levels)
        )
        # Learned positional embeddings of the new IA queries and of the support queries.
        self.query_pos = nn.Embedding(num_queries, hidden_dim)
        self.support_pos = nn.Embedding(num_queries, hidden_dim)
        self.query_content = nn.Embedding(num_queries, hidden_dim) if query_content_embed else None

        if anchor_points:
            if anchor_sigma <= 0:
                raise ValueError(f"MODEL.IAUNET.PLUS.ANCHOR_SIGMA must be > 0, got {anchor_sigma}")
            # An embedding, so that the anchors get the embeddings' weight decay.
            self.anchors = nn.Embedding(num_queries, 2)
            with torch.no_grad():
                self.anchors.weight.copy_(halton_points(num_queries))
            self.anchor_sigma = anchor_sigma / math.sqrt(num_queries)
        else:
            self.anchors = None

        self.head_norm = nn.LayerNorm(hidden_dim)
        self.head_fc = nn.Linear(hidden_dim, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        if dynamic_mask_head:
            self.kernel_embed = None
            self.dynamic_mask = DynamicMaskHead(
                hidden_dim, mask_dim, dynamic_mask_channels, dynamic_mask_layers,
                upsample=dynamic_mask_upsample,
            )
        else:
            self.kernel_embed = nn.Linear(hidden_dim, mask_dim)
            self.dynamic_mask = None
        if head_init_std > 0:
            for layer in (self.class_embed, self.kernel_embed):
                if layer is not None:
                    nn.init.normal_(layer.weight, std=head_init_std)
                    nn.init.zeros_(layer.bias)

    @classmethod
    def from_config(cls, cfg, in_channels: int, mask_dim: int, level_strides: Sequence[int]):
        ia = cfg.MODEL.IAUNET
        plus = plus_options(cfg)
        return {
            "num_classes": ia.NUM_CLASSES,
            "hidden_dim": in_channels,
            "num_queries": ia.NUM_QUERIES,
            "nheads": ia.NHEADS,
            "dim_feedforward": ia.DIM_FEEDFORWARD,
            "dropout": ia.DROPOUT,
            "pre_norm": ia.PRE_NORM,
            "mask_dim": mask_dim,
            "level_strides": list(level_strides),
            "reference_size": cfg.INPUT.IMAGE_SIZE,
            "deep_supervision": plus["DEEP_SUPERVISION"],
            "query_content_embed": plus["QUERY_CONTENT_EMBED"],
            "head_init_std": plus["HEAD_INIT_STD"],
            "mask_feature_pos": plus["MASK_FEATURE_POS"],
            "anchor_points": plus["ANCHOR_POINTS"],
            "anchor_sigma": plus["ANCHOR_SIGMA"],
            "dynamic_mask_head": plus["DYNAMIC_MASK_HEAD"],
            "dynamic_mask_channels": plus["DYNAMIC_MASK_CHANNELS"],
            "dynamic_mask_layers": plus["DYNAMIC_MASK_LAYERS"],
            "dynamic_mask_upsample": plus["DYNAMIC_MASK_UPSAMPLE"],
        }

    def predict(
        self,
        queries: torch.Tensor,
        mask_features: torch.Tensor,
        activation_maps: Optional[torch.Tensor] = None,
        maps_step: float = 0.0,
    ) -> Dict[str, torch.Tensor]:
        """Class logits and mask logits from queries.

        Args:
            queries: (B, N, hidden_dim).
            mask_features: (B, mask_dim, h, w) per-pixel mask embeddings at the finest
                level's stride.
            activation_maps: (B, N, h_l, w_l) the queries' activation maps (any
                level's), whose centroids place the dynamic head's offsets; needed by
                the dynamic head only.
            maps_step: the pixel size of ``activation_maps`` in the location frame.
        Returns:
            {"pred_logits": (B, N, C+1), "pred_masks": (B, N, h', w')}.
        """
        h = F.relu(self.head_fc(self.head_norm(queries)))
        out = {"pred_logits": self.class_embed(h)}
        if self.dynamic_mask is not None:
            if activation_maps is None:
                raise ValueError("the dynamic mask head needs the queries' activation maps")
            centres = map_centroids(activation_maps, maps_step)
            masks = self.dynamic_mask(h, mask_features, centres, self.level_steps[-1])
        else:
            masks = torch.einsum("bnd,bdhw->bnhw", self.kernel_embed(h), mask_features)
        out["pred_masks"] = masks
        return out

    def forward(self, features: Dict[str, torch.Tensor], pixel_decoder) -> Dict:
        """
        Args:
            features: backbone outputs, name -> (B, C, H/stride, W/stride).
            pixel_decoder: an ``IAUNetPixelDecoder`` (or any module with the same
                ``num_levels`` / ``forward_features`` / ``forward_level`` /
                ``mask_features`` interface).
        Returns:
            the output dict described in the class docstring.
        """
        skips = pixel_decoder.forward_features(features)
        n = self.num_queries
        supervise = self.deep_supervision and self.training

        prev: Optional[LevelFeatures] = None
        queries: Optional[torch.Tensor] = None
        activation_maps: List[torch.Tensor] = []
        # Intermediate query states with their level's activation maps and map step.
        intermediate: List[Tuple[torch.Tensor, torch.Tensor, float]] = []
        for level, skip in enumerate(skips):
            feats = pixel_decoder.forward_level(level, skip, prev)
            b, c, h, w = feats.inst.shape
            step = self.level_steps[level]
            bias = (
                anchor_location_bias(self.anchors.weight, (h, w), step, self.anchor_sigma)
                if self.anchors is not None else None
            )
            new_queries, maps = self.ia_layers[level](feats.inst, bias)
            activation_maps.append(maps)
            if self.query_content is not None:
                new_queries = new_queries + self.query_content.weight.unsqueeze(0)

            query_pos = self.query_pos.weight.unsqueeze(0).expand(b, -1, -1)
            if queries is None:
                all_queries = new_queries
            else:
                all_queries = torch.cat([new_queries, queries], dim=1)
                support_pos = self.support_pos.weight.unsqueeze(0).expand(b, -1, -1)
                query_pos = torch.cat([query_pos, support_pos], dim=1)

            pixel_pos = self.pe_layer(feats.inst).flatten(2).transpose(1, 2)  # (B, HW, d)
            all_queries, inst, mask = self.layers[level](
                all_queries,
                query_pos,
                feats.inst.flatten(2).transpose(1, 2),
                feats.mask.flatten(2).transpose(1, 2),
                pixel_pos,
            )
            queries = all_queries[:, :n]
            # (B, HW, d) -> channels-last (B, d, H, W) views. transpose().reshape() gives a
            # batch stride that CPU kernels do not recognise as channels-last for B = 1,
            # which made the next level's bilinear upsampling ~25x slower.
            mask = mask.reshape(b, h, w, c).permute(0, 3, 1, 2)
            inst = inst.reshape(b, h, w, c).permute(0, 3, 1, 2)
            prev = LevelFeatures(feats.main, mask, inst)
            if supervise and level < self.num_levels - 1:
                intermediate.append((queries, maps, step))

        mask_features = pixel_decoder.mask_features(prev.mask)
        if self.mask_pe is not None:
            mask_features = mask_features + self.mask_pe(mask_features)
        out = self.predict(queries, mask_features, activation_maps[-1], self.level_steps[-1])
        out["activation_maps"] = activation_maps
        out["aux_outputs"] = []
        for q, maps, step in intermediate:
            aux = self.predict(q, mask_features, maps, step)
            aux["activation_maps"] = [maps]  # the maps of the level that made these queries
            out["aux_outputs"].append(aux)
        return out
