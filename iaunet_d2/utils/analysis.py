"""Parameter and FLOP counts of Detectron2 models.

FLOPs follow the convention of the IAUNet paper's IAUNet rows: ``2 x`` the multiply-adds
that fvcore's ``FlopCountAnalysis`` counts for one image of shape (1, 3, H, W) fed as
Detectron2 ``batched_inputs`` in eval mode. fvcore counts convolutions, matmuls,
linear layers, norms and upsampling; elementwise ops (activations, additions, softmax)
are not counted and are reported as "unsupported" with their call counts.

fvcore does not count ``aten::scaled_dot_product_attention`` (the fused attention of
IAUNet's decoder) nor ``aten::baddbmm`` (masked attention). The paper's numbers match
this plain count: IAUNet-R50 at 512x512 gives
293.2 GFLOPs here against the paper's 292.6. ``count_attention=True`` adds both as their
two matrix products (attention scores and weighted sum), about +13.4 GFLOPs for R50.

Models are counted at full test-time load (``full_test_workload``): an R-CNN sends every
one of the RPN's post-NMS proposals (1000) through the box head and
TEST.DETECTIONS_PER_IMAGE detections (100) through the mask head, IAUNet sends every
query's mask through mask NMS, as for a trained model on a crowded image. A randomly
initialised model otherwise keeps a random number of them and its count is not
reproducible.

The paper's R-CNN rows follow another convention than its IAUNet rows (see
``paper_convention_flops``).

``detectron2.utils.analysis`` cannot be used: in v0.6 it imports caffe2.
"""
import contextlib
import math
from collections import Counter, OrderedDict

import torch
from torch import nn

__all__ = ["count_parameters", "count_flops", "describe_model", "flatten_outputs",
           "BatchedInputsWrapper", "full_test_workload", "paper_convention_flops",
           "count_flops_with_paper_convention", "PAPER_UNCOUNTED_MODULES"]


def count_parameters(model, submodules=()):
    """Number of parameters of ``model``, in total and per top-level child.

    Args:
        model: any ``nn.Module``.
        submodules: dotted module names (relative to ``model``) also counted.
    Returns:
        OrderedDict: ``"total"`` first, then one entry per ``named_children()`` of the
        model in definition order, then ``"(other)"`` for parameters registered on the
        model itself (only when there are any), then one entry per ``submodules`` name
        (0 when the model has no such module). Shared parameters count once in
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
    for name in submodules:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            module = None
        counts[name] = 0 if module is None else sum(p.numel() for p in module.parameters())
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


def _full_load_settings(model):
    """(object, attribute, value) triples that put ``model`` at full test-time load, and
    the box-regression modules whose weights are zeroed (R-CNNs); ([], []) for models
    this does not know."""
    rpn = getattr(model, "proposal_generator", None)
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    # NMS drops boxes (masks) whose IoU exceeds the threshold; IoU never exceeds 1.
    if hasattr(rpn, "nms_thresh") and all(
        hasattr(predictor, n) for n in ("test_score_thresh", "test_nms_thresh")
    ):
        settings = [(rpn, "nms_thresh", 1.0), (predictor, "test_score_thresh", -1.0),
                    (predictor, "test_nms_thresh", 1.0)]
        regressors = [m for m in (getattr(getattr(rpn, "rpn_head", None), "anchor_deltas", None),
                                  getattr(predictor, "bbox_pred", None)) if m is not None]
        return settings, regressors
    if all(hasattr(model, n) for n in ("score_thresh", "nms_iou", "max_detections")):  # IAUNet
        return [(model, "score_thresh", -1.0)], []
    return [], []


@contextlib.contextmanager
def full_test_workload(model):
    """Within the block, a model does the most test-time work its config allows, so that
    its cost does not depend on its weights (random-initialised models keep a random
    number of boxes or masks).

    R-CNN: the RPN keeps all of its ``post_nms_topk`` proposals (NMS off) and the box
    predictor returns exactly ``test_topk_per_image`` detections (no score threshold,
    NMS off). The box regressions of the RPN and the box predictor are zeroed as well
    (proposals = anchors, detections = proposals): box positions do not change the cost
    (ROIAlign pools a fixed grid), but a random model's regressions can move every box
    out of the image, which leaves nothing for the heads to do.
    IAUNet: no score threshold, so every query's mask enters mask NMS. NMS stays on:
    its mask IoUs are real work, and with nothing to suppress a trace would drop them as
    dead code.
    Mask2Former always returns its top-k masks, whatever its weights: nothing to switch.
    Other models are left untouched. Settings and weights are restored on exit.

    Yields:
        bool: whether the model was switched.
    """
    settings, regressors = _full_load_settings(model)
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in settings]
    saved_weights = [(p, p.detach().clone()) for m in regressors for p in m.parameters()]
    try:
        for obj, name, value in settings:
            setattr(obj, name, value)
        with torch.no_grad():
            for p, _ in saved_weights:
                p.zero_()
        yield bool(settings)
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
        with torch.no_grad():
            for p, value in saved_weights:
                p.copy_(value)


# Parts of a model that the paper's tables leave out of their FLOPs (dotted names
# relative to the model): PointRend's point head. Each PointRend row there equals the
# Mask R-CNN row of the same backbone minus the standard mask head plus PointRend's
# coarse head (115 - 66.3, 134 - 85.7, 141 - 92.9, 179 - 131 = 48.0-48.7 G; here
# mask head - coarse head = 48.7 G).
PAPER_UNCOUNTED_MODULES = ("roi_heads.mask_head.point_head",)


def paper_convention_flops(meta_architecture, total_flops, per_module):
    """FLOPs as the IAUNet paper's Tables 1-2 count them.

    The paper's IAUNet rows are 2 x fvcore multiply-adds (what ``count_flops``
    returns). Its Mask R-CNN and PointRend rows are fvcore's multiply-adds themselves
    (what Detectron2's own analysis tool prints as "flops"): the R101 - R50 difference
    there is 19 G, the multiply-adds of ResNet-101's extra blocks at 512x512, not twice
    that, and Mask R-CNN R50 is 115 G against 113.4 G multiply-adds at full load here.
    The PointRend rows also leave out the point head (``PAPER_UNCOUNTED_MODULES``).
    The Mask2Former rows are fvcore's multiply-adds as well.

    Args:
        meta_architecture: ``cfg.MODEL.META_ARCHITECTURE``.
        total_flops: ``count_flops(...)[0]`` (2 x multiply-adds).
        per_module: ``count_flops(..., submodules=PAPER_UNCOUNTED_MODULES)[1]``.
    Returns:
        float: FLOPs in the paper's convention for that architecture.
    """
    if meta_architecture == "Mask2Former":
        # Its rows are multiply-adds too: R101 - R50 is 19.4 G there, the multiply-adds
        # of ResNet-101's extra blocks, and Swin-S - R50 (26.6 G) the R-CNNs' 26 G.
        return total_flops / 2.0
    if meta_architecture != "GeneralizedRCNN":
        return float(total_flops)
    missing = [n for n in PAPER_UNCOUNTED_MODULES if n not in per_module]
    if missing:
        raise ValueError(f"per_module lacks {missing}: count with "
                         "submodules=PAPER_UNCOUNTED_MODULES")
    uncounted = sum(per_module[n] for n in PAPER_UNCOUNTED_MODULES)
    return (total_flops - uncounted) / 2.0


def count_flops(model, height, width, image=None, count_attention=False, full_load=True,
                submodules=()):
    """FLOPs (2 x multiply-adds) of one eval-mode forward of a Detectron2 model.

    Args:
        model: a Detectron2 meta-architecture taking ``batched_inputs``; it is switched
            to eval mode and left there. Run it on CPU for reproducible counts.
        height, width: image size; a random (3, height, width) image with values in
            [0, 255] is used unless ``image`` is given.
        image: optional (3, height, width) tensor to use instead.
        count_attention: also count fused attention (``scaled_dot_product_attention``)
            and ``baddbmm``, which fvcore skips; off by default as in the paper.
        full_load: count under ``full_test_workload`` (default).
        submodules: dotted module names (relative to ``model``) whose FLOPs are also
            reported in ``per_module`` (0 when the model has no such module).
    Returns:
        (total_flops, per_module, unsupported_ops):
        total_flops (int) for the whole model; per_module (OrderedDict) name -> FLOPs
        for every ``named_children()`` of the model plus ``"(other)"`` for ops run by the
        model's own forward (pre/post-processing), then one entry per ``submodules``
        name; unsupported_ops (Counter) op name -> number of calls that were not
        counted.
    """
    from fvcore.nn import FlopCountAnalysis

    model.eval()
    if image is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else "cpu"
        generator = torch.Generator().manual_seed(0)
        image = (torch.rand(3, height, width, generator=generator) * 255.0).to(device)
    wrapper = BatchedInputsWrapper(model).eval()
    workload = full_test_workload(model) if full_load else contextlib.nullcontext()
    with torch.no_grad(), workload:
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
    for name in submodules:
        per_module[name] = 2 * by_module.get(f"model.{name}", 0)
    return 2 * total_macs, per_module, unsupported


_SWIN_SIZES = {"tiny": "T", "small": "S", "base": "B", "large": "L"}


def describe_model(cfg):
    """(architecture, backbone) labels, e.g. ("IAUNet", "R50"), ("IAUNet+", "R50"),
    ("PointRend", "Swin-S")."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == "IAUNet" and cfg.MODEL.IAUNET.PLUS.ENABLED:
        arch = "IAUNet+"
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


def count_flops_with_paper_convention(model, meta_architecture, height, width, submodules=(),
                                      **kwargs):
    """``count_flops`` (keyword arguments passed on) plus the paper-convention count.

    Returns:
        (total_flops, paper_flops, per_module, unsupported_ops): as ``count_flops``,
        with ``paper_convention_flops`` as the second item; ``per_module`` also holds
        the ``PAPER_UNCOUNTED_MODULES`` entries (0 where the model has no such module),
        then the ``submodules`` ones.
    """
    extra = tuple(n for n in submodules if n not in PAPER_UNCOUNTED_MODULES)
    flops, per_module, unsupported = count_flops(
        model, height, width, submodules=PAPER_UNCOUNTED_MODULES + extra, **kwargs
    )
    paper_flops = paper_convention_flops(meta_architecture, flops, per_module)
    return flops, paper_flops, per_module, unsupported
