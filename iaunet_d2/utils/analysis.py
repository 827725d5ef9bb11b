"""Parameter and FLOP counts of Detectron2 models.

FLOPs follow the convention of the IAUNet paper's tables: ``2 x`` the multiply-adds
that fvcore's ``FlopCountAnalysis`` counts for one image of shape (1, 3, H, W) fed as
Detectron2 ``batched_inputs`` in eval mode. fvcore counts convolutions, matmuls,
linear layers, norms and upsampling; elementwise ops (activations, additions, softmax)
are not counted and are reported as "unsupported" with their call counts.

fvcore does not count ``aten::scaled_dot_product_attention`` (the fused attention that
``nn.MultiheadAttention(need_weights=False)`` runs) nor ``aten::baddbmm`` (masked
attention). The paper's numbers match this plain count: IAUNet-R50 at 512x512 gives
293.2 GFLOPs here against the paper's 292.6. ``count_attention=True`` adds both as their
two matrix products (attention scores and weighted sum), about +13.4 GFLOPs for R50.

``detectron2.utils.analysis`` cannot be used: in v0.6 it imports caffe2.
"""
import math
from collections import Counter, OrderedDict

import torch
from torch import nn

__all__ = ["count_parameters", "count_flops", "describe_model", "flatten_outputs",
           "BatchedInputsWrapper"]


def count_parameters(model):
    """Number of parameters of ``model``, in total and per top-level child.

    Args:
        model: any ``nn.Module``.
    Returns:
        OrderedDict: ``"total"`` first, then one entry per ``named_children()`` of the
        model in definition order, then ``"(other)"`` for parameters registered on the
        model itself (only when there are any). Shared parameters count once in
        ``"total"``.
    """
    counts = OrderedDict()
    counts["total"] = sum(p.numel() for p in model.parameters())
    in_children = 0
    seen = set()
    for name, child in model.named_children():
        n = 0
        for p in child.parameters():
            n += p.numel()
            if id(p) not in seen:
                seen.add(id(p))
                in_children += p.numel()
        counts[name] = n
    own = counts["total"] - in_children
    if own:
        counts["(other)"] = own
    return counts


def flatten_outputs(obj):
    """Flatten a model's outputs into a tuple of tensors, which tracing requires.

    Understands tensors, lists/tuples, dicts (sorted keys), Detectron2 ``Instances``
    (their fields) and structures holding a ``.tensor`` (``Boxes``, ``BitMasks``...).
    Non-tensor leaves are dropped.
    """
    if torch.is_tensor(obj):
        return (obj,)
    if isinstance(obj, (list, tuple)):
        return tuple(t for item in obj for t in flatten_outputs(item))
    if isinstance(obj, dict):
        return tuple(t for k in sorted(obj, key=str) for t in flatten_outputs(obj[k]))
    if hasattr(obj, "get_fields") and callable(obj.get_fields):  # Instances
        return flatten_outputs(obj.get_fields())
    if hasattr(obj, "tensor") and torch.is_tensor(obj.tensor):  # Boxes, BitMasks, ...
        return (obj.tensor,)
    return ()


class BatchedInputsWrapper(nn.Module):
    """Lets fvcore trace a Detectron2 model with a plain image tensor.

    ``forward(image)`` takes an (3, H, W) or (1, 3, H, W) tensor, calls the wrapped
    model with ``[{"image": (3, H, W), "height": H, "width": W}]`` and returns its
    outputs flattened into a tuple of tensors.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        if image.dim() == 4:
            image = image[0]
        h, w = int(image.shape[-2]), int(image.shape[-1])
        outputs = self.model([{"image": image, "height": h, "width": w}])
        flat = flatten_outputs(outputs)
        if not flat:  # tracing needs at least one tensor output
            flat = (image.sum(),)
        return flat


def _shape(value):
    return value.type().sizes() if value.isCompleteTensor() else None


def _baddbmm_macs(inputs, outputs):
    # baddbmm(input, batch1 (n, c, t), batch2 (n, t, d), beta, alpha): one bmm.
    n, c, t = _shape(inputs[1])
    d = _shape(inputs[2])[-1]
    return n * c * t * d


def _sdpa_macs(inputs, outputs):
    # softmax(q k^T) v with q (..., L, E), k (..., S, E), v (..., S, Ev): two products.
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    length, e = q[-2], q[-1]
    s, ev = k[-2], v[-1]
    return batch * length * s * (e + ev)


_EXTRA_HANDLES = {
    "aten::baddbmm": _baddbmm_macs,
    "aten::scaled_dot_product_attention": _sdpa_macs,
}


def count_flops(model, height, width, image=None, count_attention=False):
    """FLOPs (2 x multiply-adds) of one eval-mode forward of a Detectron2 model.

    Args:
        model: a Detectron2 meta-architecture taking ``batched_inputs``; it is switched
            to eval mode and left there. Run it on CPU for reproducible counts.
        height, width: image size; a random (3, height, width) image with values in
            [0, 255] is used unless ``image`` is given.
        image: optional (3, height, width) tensor to use instead.
        count_attention: also count fused attention (``scaled_dot_product_attention``)
            and ``baddbmm``, which fvcore skips; off by default as in the paper.
    Returns:
        (total_flops, per_module, unsupported_ops):
        total_flops (int) for the whole model; per_module (OrderedDict) name -> FLOPs
        for every ``named_children()`` of the model plus ``"(other)"`` for ops run by the
        model's own forward (pre/post-processing); unsupported_ops (Counter) op name ->
        number of calls that were not counted.
    """
    from fvcore.nn import FlopCountAnalysis

    model.eval()
    if image is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else "cpu"
        generator = torch.Generator().manual_seed(0)
        image = (torch.rand(3, height, width, generator=generator) * 255.0).to(device)
    wrapper = BatchedInputsWrapper(model).eval()
    with torch.no_grad():
        analysis = FlopCountAnalysis(wrapper, (image,))
        if count_attention:
            analysis.set_op_handle(**_EXTRA_HANDLES)
        analysis = (
            analysis.unsupported_ops_warnings(False)
            .uncalled_modules_warnings(False)
            .tracer_warnings("none")
        )
        try:
            total_macs = analysis.total()
        except RuntimeError as e:
            if "We don't have an op for aten::view" in str(e):
                # torch.jit tracing cannot record Tensor.view(dtype) reinterpretations.
                raise RuntimeError(
                    "FLOP counting needs torch.jit tracing, which fails on a "
                    "Tensor.view(<dtype>) call in the model's forward; use .to(<dtype>) "
                    "there (at least when torch.jit.is_tracing())"
                ) from e
            raise
        by_module = analysis.by_module()
        unsupported = Counter(analysis.unsupported_ops())

    per_module = OrderedDict()
    children_macs = 0
    for name, _ in model.named_children():
        macs = by_module.get(f"model.{name}", 0)
        per_module[name] = 2 * macs
        children_macs += macs
    per_module["(other)"] = 2 * (total_macs - children_macs)
    return 2 * total_macs, per_module, unsupported


_SWIN_SIZES = {"tiny": "T", "small": "S", "base": "B", "large": "L"}


def describe_model(cfg):
    """(architecture, backbone) labels, e.g. ("IAUNet", "R50"), ("PointRend", "Swin-S")."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == "GeneralizedRCNN":
        mask_head = cfg.MODEL.ROI_MASK_HEAD.NAME if cfg.MODEL.MASK_ON else ""
        arch = "PointRend" if "PointRend" in mask_head else "Mask R-CNN"
    name = cfg.MODEL.BACKBONE.NAME
    if "swin" in name:
        timm_name = cfg.MODEL.SWIN.TIMM_NAME
        size = next((v for k, v in _SWIN_SIZES.items() if k in timm_name), "?")
        return arch, f"Swin-{size}"
    if "resnet" in name:
        return arch, f"R{cfg.MODEL.RESNETS.DEPTH}"
    return arch, name
