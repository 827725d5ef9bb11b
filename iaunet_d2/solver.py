"""Optimizer and learning-rate schedule built from the config."""
import itertools
import logging

import torch
from detectron2.solver import build_lr_scheduler as build_d2_lr_scheduler
from detectron2.solver.build import (
    get_default_optimizer_params, maybe_add_gradient_clipping, reduce_param_groups,
)
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

__all__ = ["build_optimizer", "build_lr_scheduler"]

logger = logging.getLogger(__name__)

_OPTIMIZERS = {"ADAMW": torch.optim.AdamW, "SGD": torch.optim.SGD}


def _with_full_model_clipping(optimizer_cls, max_norm):
    """Subclass of ``optimizer_cls`` whose ``step`` first clips the global grad norm."""

    class FullModelClippedOptimizer(optimizer_cls):
        def step(self, closure=None):
            params = itertools.chain(*[group["params"] for group in self.param_groups])
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            return super().step(closure=closure)

    FullModelClippedOptimizer.__name__ = optimizer_cls.__name__ + "WithFullModelClipping"
    return FullModelClippedOptimizer


def _split_groups(groups, members, **changes):
    """Split every group into its parameters in ``members`` (a set of ids), whose
    hyper-parameters get ``changes`` (callables of the group's value), and the rest."""
    split = []
    for group in groups:
        hyper = {k: v for k, v in group.items() if k != "params"}
        inside = [p for p in group["params"] if id(p) in members]
        outside = [p for p in group["params"] if id(p) not in members]
        if inside:
            changed = {key: change(hyper[key]) for key, change in changes.items()}
            split.append({**hyper, **changed, "params": inside})
        if outside:
            split.append({**hyper, "params": outside})
    return split


def _parameter_groups(cfg, model):
    """Detectron2's default groups (norms with SOLVER.WEIGHT_DECAY_NORM), embeddings with
    SOLVER.WEIGHT_DECAY_EMBED and the backbone lr scaled by BACKBONE_MULTIPLIER."""
    groups = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
    )
    embeddings = {
        id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()
    }
    if embeddings and cfg.SOLVER.WEIGHT_DECAY_EMBED != cfg.SOLVER.WEIGHT_DECAY:
        decay_embed = cfg.SOLVER.WEIGHT_DECAY_EMBED
        groups = _split_groups(groups, embeddings, weight_decay=lambda _: decay_embed)
    multiplier = cfg.SOLVER.BACKBONE_MULTIPLIER
    backbone = getattr(model, "backbone", None)
    if multiplier != 1.0 and backbone is not None:
        backbone_params = {id(p) for p in backbone.parameters()}
        groups = _split_groups(groups, backbone_params, lr=lambda lr: lr * multiplier)
    return reduce_param_groups(groups)


def build_optimizer(cfg, model):
    """AdamW or SGD over the model's trainable parameters, with optional clipping.

    ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE`` may be Detectron2's "value" / "norm" (per
    parameter) or "full_model" (one norm over all parameters).
    """
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name not in _OPTIMIZERS:
        raise ValueError(
            f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r} is not supported; "
            f"choose one of {sorted(_OPTIMIZERS)}."
        )
    optimizer_cls = _OPTIMIZERS[name]
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer_cls = _with_full_model_clipping(optimizer_cls, clip.CLIP_VALUE)
    else:
        optimizer_cls = maybe_add_gradient_clipping(cfg, optimizer_cls)

    params = _parameter_groups(cfg, model)
    if name == "SGD":
        return optimizer_cls(params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
                             nesterov=cfg.SOLVER.NESTEROV)
    return optimizer_cls(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)


def build_lr_scheduler(cfg, optimizer):
    """Warmup + cosine decay to ``SOLVER.BASE_LR_END``; other names go to Detectron2."""
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupCosineLR":
        return build_d2_lr_scheduler(cfg, optimizer)
    end_factor = cfg.SOLVER.BASE_LR_END / cfg.SOLVER.BASE_LR
    schedule = WarmupParamScheduler(
        CosineParamScheduler(1.0, end_factor),
        cfg.SOLVER.WARMUP_FACTOR,
        min(cfg.SOLVER.WARMUP_ITERS / max(cfg.SOLVER.MAX_ITER, 1), 1.0),
        cfg.SOLVER.WARMUP_METHOD,
    )
    return LRMultiplier(optimizer, multiplier=schedule, max_iter=cfg.SOLVER.MAX_ITER)
