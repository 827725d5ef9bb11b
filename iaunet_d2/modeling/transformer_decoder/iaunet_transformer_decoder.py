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
of the kernels with the pixel decoder's 1/4-resolution mask embeddings (or, with the
dynamic mask head, a per-query MLP over them; see ``mask_heads``).
"""
import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from ..pixel_decoder import LevelFeatures
from .build import IAUNET_TRANSFORMER_DECODER_REGISTRY
from .instance_activation import (
    InstanceActivation,
    anchor_location_bias,
    halton_points,
    map_centroids,
    point_distance2,
)
from .layers import DualPathDecoderLayer, QueryDecoderLayer
from .mask_heads import DynamicMaskHead
from .position_encoding import PositionEmbeddingSine
from .versions import match_checkpoint_version

__all__ = ["IAUNetTransformerDecoder"]


_AUX_MASK_FEATURES = ("final", "level")
_MASK_HEADS = ("linear", "dynamic")


@IAUNET_TRANSFORMER_DECODER_REGISTRY.register()
class IAUNetTransformerDecoder(nn.Module):
    """Drives the pixel decoder level by level and refines N instance queries.

    ``forward(features, pixel_decoder)`` returns a dict:

    * ``"pred_logits"``: (B, N, num_classes + 1) class logits (last = no object);
    * ``"pred_masks"``: (B, N, H/4, W/4) mask logits (at the finest level's size;
      (B, N, H/2, W/2) with the dynamic mask head upsampling 2x);
    * ``"activation_maps"``: list over levels (coarse to fine) of (B, N, h_l, w_l)
      activation maps, each map summing to 1 over its pixels;
    * ``"pred_dense"`` (training with a dense head only): (B, 2, H/4, W/4) logits of
      cell foreground and cell borders;
    * ``"aux_outputs"``: with deep supervision, one ``{"pred_logits", "pred_masks"}``
      per intermediate query state (every decoder layer's output but the last), at the
      finest level's size; otherwise an empty list.
    """

    # 2: per-slot content embedding and mask positional features; 3: anchor points and
    # the center prior on by default; 4: the dynamic mask head by default, the center
    # prior off, the anchor prior's width saved (see versions.py for how older
    # checkpoints load).
    _version = 4

    @configurable
    def __init__(
        self,
        *,
        num_levels: int,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dropout: float,
        pre_norm: bool,
        mask_dim: int,
        deep_supervision: bool,
        aux_mask_features: str = "final",
        query_content_embed: bool = False,
        query_layers_per_level: int = 0,
        head_init_std: float = 0.0,
        mask_feature_pos: bool = False,
        dense_head: bool = False,
        center_prior: bool = False,
        anchor_points: bool = False,
        anchor_sigma: float = 1.0,
        center_head: bool = False,
        mask_head: str = "linear",
        dynamic_mask_channels: int = 8,
        dynamic_mask_layers: int = 3,
        dynamic_mask_upsample: int = 1,
    ):
        """
        Args:
            num_levels: pixel-decoder levels, one dual-path decoder layer each.
            num_classes: foreground classes (logits get one more for "no object").
            hidden_dim: query and pixel feature width (= the pixel decoder's conv_dim).
            num_queries: N, queries (and activation maps) per level.
            nheads, dim_feedforward, dropout, pre_norm: attention/FFN settings.
            mask_dim: width of the mask kernels (= the pixel decoder's mask_dim).
            deep_supervision: also predict after every decoder layer ("aux_outputs").
            aux_mask_features: "final": auxiliary masks are the intermediate kernels
                applied to the final 1/4-resolution mask features (as Mask2Former does);
                "level": to the mask features of the level that produced them,
                upsampled (at level 0 these are 1/32 maps, coarser than most cells).
            query_content_embed: add a learnable per-slot content embedding to each
                level's IA queries, so that the N slots differ beyond their positional
                embeddings (the activation maps, and so the pooled queries, are much
                alike at initialisation). A zero embedding is the paper's IA query.
            query_layers_per_level: extra query-only layers (cross-attention to the
                instance pixels -> self-attention -> FFN) after each level's dual-path
                layer.
            head_init_std: if > 0, class and kernel heads start from normal(0, std)
                weights and zero biases (initial mask logits near 0, not mostly
                foreground); 0 keeps PyTorch's default initialisation.
            mask_feature_pos: add the pixels' sine positional embedding to the mask
                features before the kernels' dot product, so that a kernel can place a
                mask by position linearly (needs mask_dim divisible by 4).
            dense_head: in training, also predict two per-pixel maps from the final mask
                features, cell foreground and cell borders (``"pred_dense"``, for the
                criterion's dense auxiliary loss): every pixel gets a target from the
                first step, as an R-CNN's RPN gives every anchor one.
            center_prior: add a location prior to each query's mask logits,
                ``-s * (d / 0.05)^2``, d being the (normalised) distance of a pixel from
                the centroid of the query's activation map and s >= 0 predicted from the
                query: a mask can then be placed by its activation map, while a dot
                product with the mask features must learn position from scratch.
            anchor_points: give every query slot a learned anchor point (initialised on
                a Halton sequence over the image) and add a Gaussian log-prior around it
                to the slot's IA logits at every level: each activation map starts as a
                local blob, so the N queries start from different image regions instead
                of N near-equal global averages.
            anchor_sigma: the prior's standard deviation in units of the mean anchor
                spacing, 1 / sqrt(N) of the image side.
            center_head: every query also predicts the centre of its cell
                (``"pred_centers"``), as an offset from its anchor point (the image
                centre without anchors), for the criterion's centre loss and matching
                cost; the center prior, if on, is then placed on this centre.
            mask_head: "linear" (the paper's: each query's kernel dotted with the mask
                features) or "dynamic" (``mask_heads.DynamicMaskHead``: a per-query MLP
                over ``dynamic_mask_channels`` projected feature channels and each
                pixel's offset from the centroid of the query's activation map,
                ``dynamic_mask_layers`` layers, evaluated on the projected channels
                upsampled ``dynamic_mask_upsample`` times).
        """
        super().__init__()
        if aux_mask_features not in _AUX_MASK_FEATURES:
            raise ValueError(
                f"MODEL.IAUNET.AUX_MASK_FEATURES must be one of {_AUX_MASK_FEATURES}, "
                f"got {aux_mask_features!r}"
            )
        if query_layers_per_level < 0:
            raise ValueError(
                f"MODEL.IAUNET.QUERY_LAYERS_PER_LEVEL must be >= 0, got {query_layers_per_level}"
            )
        if mask_feature_pos and mask_dim % 4:
            raise ValueError(
                f"MODEL.IAUNET.MASK_FEATURE_POS needs MASK_DIM divisible by 4, got {mask_dim}"
            )
        # Unnormalised (periods from ~6 pixels up): fine enough to tell cells apart,
        # unlike the attention's normalised embedding, whose periods span the map.
        self.mask_pe = PositionEmbeddingSine(mask_dim // 2, normalize=False) if mask_feature_pos else None
        self.num_levels = num_levels
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.mask_dim = mask_dim
        self.deep_supervision = deep_supervision
        self.aux_mask_features = aux_mask_features

        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.ia_layers = nn.ModuleList(
            InstanceActivation(hidden_dim, num_queries) for _ in range(num_levels)
        )
        self.layers = nn.ModuleList(
            DualPathDecoderLayer(hidden_dim, nheads, dim_feedforward, dropout, pre_norm)
            for _ in range(num_levels)
        )
        # Level l's extra layers are query_layers[l * k : (l + 1) * k], k per level.
        self.query_layers_per_level = query_layers_per_level
        self.query_layers = nn.ModuleList(
            QueryDecoderLayer(hidden_dim, nheads, dim_feedforward, dropout, pre_norm)
            for _ in range(num_levels * query_layers_per_level)
        )
        # Learned positional embeddings of the new IA queries and of the support queries.
        self.query_pos = nn.Embedding(num_queries, hidden_dim)
        self.support_pos = nn.Embedding(num_queries, hidden_dim)
        self.query_content = nn.Embedding(num_queries, hidden_dim) if query_content_embed else None

        self.dense_head = nn.Conv2d(mask_dim, 2, kernel_size=1) if dense_head else None

        if anchor_points:
            if anchor_sigma <= 0:
                raise ValueError(f"MODEL.IAUNET.ANCHOR_SIGMA must be > 0, got {anchor_sigma}")
            # An embedding, so that the anchors get the embeddings' weight decay (none).
            self.anchors = nn.Embedding(num_queries, 2)
            with torch.no_grad():
                self.anchors.weight.copy_(halton_points(num_queries))
            # Saved with the weights: the anchors and the maps were learned for this width.
            self.register_buffer(
                "anchor_sigma", torch.tensor(anchor_sigma / math.sqrt(num_queries))
            )
        else:
            self.anchors = None
            self.anchor_sigma = None

        if center_prior:
            self.center_scale = nn.Linear(hidden_dim, 1)
            nn.init.zeros_(self.center_scale.weight)
            # softplus(-4) = 0.018: a weak prior at first, grown where it helps.
            nn.init.constant_(self.center_scale.bias, -4.0)
        else:
            self.center_scale = None

        if center_head:
            # Zero init: every query starts at its reference point.
            self.center_embed = nn.Linear(hidden_dim, 2)
            nn.init.zeros_(self.center_embed.weight)
            nn.init.zeros_(self.center_embed.bias)
        else:
            self.center_embed = None

        if mask_head not in _MASK_HEADS:
            raise ValueError(f"MODEL.IAUNET.MASK_HEAD must be one of {_MASK_HEADS}, got {mask_head!r}")
        self.head_norm = nn.LayerNorm(hidden_dim)
        self.head_fc = nn.Linear(hidden_dim, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        if mask_head == "dynamic":
            self.kernel_embed = None
            self.dynamic_mask = DynamicMaskHead(
                hidden_dim, mask_dim, dynamic_mask_channels, dynamic_mask_layers,
                coord_scale=math.sqrt(num_queries), upsample=dynamic_mask_upsample,
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
    def from_config(cls, cfg, in_channels: int, mask_dim: int):
        ia = cfg.MODEL.IAUNET
        return {
            "num_levels": len(ia.IN_FEATURES),
            "num_classes": ia.NUM_CLASSES,
            "hidden_dim": in_channels,
            "num_queries": ia.NUM_QUERIES,
            "nheads": ia.NHEADS,
            "dim_feedforward": ia.DIM_FEEDFORWARD,
            "dropout": ia.DROPOUT,
            "pre_norm": ia.PRE_NORM,
            "mask_dim": mask_dim,
            "deep_supervision": ia.DEEP_SUPERVISION,
            "aux_mask_features": ia.AUX_MASK_FEATURES,
            "query_content_embed": ia.QUERY_CONTENT_EMBED,
            "query_layers_per_level": ia.QUERY_LAYERS_PER_LEVEL,
            "head_init_std": ia.HEAD_INIT_STD,
            "mask_feature_pos": ia.MASK_FEATURE_POS,
            "dense_head": ia.DENSE_WEIGHT > 0,
            "center_prior": ia.CENTER_PRIOR,
            "anchor_points": ia.ANCHOR_POINTS,
            "anchor_sigma": ia.ANCHOR_SIGMA,
            "center_head": ia.CENTER_WEIGHT > 0,
            "mask_head": ia.MASK_HEAD,
            "dynamic_mask_channels": ia.DYNAMIC_MASK_CHANNELS,
            "dynamic_mask_layers": ia.DYNAMIC_MASK_LAYERS,
            "dynamic_mask_upsample": ia.DYNAMIC_MASK_UPSAMPLE,
        }

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        match_checkpoint_version(self, state_dict, prefix, local_metadata.get("version", None))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def predict(
        self,
        queries: torch.Tensor,
        mask_features: torch.Tensor,
        out_size: Optional[Tuple[int, int]] = None,
        activation_maps: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """Class logits and mask logits from queries.

        Args:
            queries: (B, N, hidden_dim).
            mask_features: (B, mask_dim, h, w) per-pixel mask embeddings.
            out_size: if given and different from (h, w), masks are bilinearly resized.
            activation_maps: (B, N, h_l, w_l) the queries' activation maps, for the
                center prior (any level's resolution).
        Returns:
            {"pred_logits": (B, N, C+1), "pred_masks": (B, N, h', w')}, and with the
            center head "pred_centers": (B, N, 2) (x, y) in [0, 1] of the padded image.
        """
        h = F.relu(self.head_fc(self.head_norm(queries)))
        out = {"pred_logits": self.class_embed(h)}
        # The maps' centroids: the dynamic head's reference point and the center prior's.
        centroids = map_centroids(activation_maps) if activation_maps is not None else None
        if self.dynamic_mask is not None:
            if centroids is not None:
                centres = centroids
            elif self.anchors is not None:
                centres = self.anchors.weight[None].expand(queries.shape[0], -1, -1)
            else:
                centres = queries.new_full((*queries.shape[:2], 2), 0.5)
            masks = self.dynamic_mask(h, mask_features, centres)
        else:
            masks = torch.einsum("bnd,bdhw->bnhw", self.kernel_embed(h), mask_features)
        if self.center_embed is not None:
            reference = (
                self.anchors.weight.clamp(1e-3, 1 - 1e-3) if self.anchors is not None
                else queries.new_full((queries.shape[1], 2), 0.5)
            )
            out["pred_centers"] = torch.sigmoid(torch.logit(reference) + self.center_embed(h))
        if self.center_scale is not None:
            if "pred_centers" in out:
                distance2 = point_distance2(out["pred_centers"], masks.shape[-2:])
            elif centroids is not None:
                distance2 = point_distance2(centroids, masks.shape[-2:])
            else:
                distance2 = None
            if distance2 is not None:
                masks = masks - F.softplus(self.center_scale(h))[..., None] * distance2 / 0.05 ** 2
        if out_size is not None and tuple(masks.shape[-2:]) != tuple(out_size):
            masks = F.interpolate(masks, size=out_size, mode="bilinear", align_corners=False)
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
        k = self.query_layers_per_level
        supervise = self.deep_supervision and self.training

        prev: Optional[LevelFeatures] = None
        queries: Optional[torch.Tensor] = None
        activation_maps: List[torch.Tensor] = []
        # Intermediate query states with their level's refined mask features (for "level"
        # auxiliary masks) and activation maps (for the center prior).
        intermediate: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for level, skip in enumerate(skips):
            feats = pixel_decoder.forward_level(level, skip, prev)
            b, c, h, w = feats.inst.shape
            bias = (
                anchor_location_bias(self.anchors.weight, (h, w), self.anchor_sigma)
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
            for layer in self.query_layers[level * k:(level + 1) * k]:
                if supervise:
                    intermediate.append((queries, mask, maps))
                queries = layer(queries, query_pos[:, :n], inst, pixel_pos)
            inst = inst.reshape(b, h, w, c).permute(0, 3, 1, 2)
            prev = LevelFeatures(feats.main, mask, inst)
            if supervise and level < self.num_levels - 1:
                intermediate.append((queries, mask, maps))

        mask_features = pixel_decoder.mask_features(prev.mask)
        dense = self.dense_head(mask_features) if self.dense_head is not None and self.training else None
        if self.mask_pe is not None:
            mask_features = mask_features + self.mask_pe(mask_features)
        out = self.predict(queries, mask_features, activation_maps=activation_maps[-1])
        out["activation_maps"] = activation_maps
        if dense is not None:
            out["pred_dense"] = dense
        out["aux_outputs"] = []
        for q, m, a in intermediate:
            aux = (
                self.predict(q, mask_features, activation_maps=a)
                if self.aux_mask_features == "final"
                else self.predict(q, pixel_decoder.mask_features(m), out["pred_masks"].shape[-2:],
                                  activation_maps=a)
            )
            aux["activation_maps"] = [a]  # the maps of the level that made these queries
            out["aux_outputs"].append(aux)
        return out
