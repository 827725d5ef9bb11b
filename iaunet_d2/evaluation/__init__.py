"""COCO evaluation of cell instance segmentation."""
from detectron2.evaluation import COCOEvaluator

from ..compat import HAS_COMPILED_OPS

__all__ = ["build_coco_evaluator"]


def build_coco_evaluator(cfg, dataset_name, output_dir=None):
    """Detectron2's COCOEvaluator on ``TEST.EVAL_TASKS`` with
    ``TEST.DETECTIONS_PER_IMAGE`` detections per image.

    The fast C++ COCOeval is used only when Detectron2's compiled ops are installed.
    """
    return COCOEvaluator(
        dataset_name,
        tasks=tuple(cfg.TEST.EVAL_TASKS),
        distributed=True,
        output_dir=output_dir,
        use_fast_impl=HAS_COMPILED_OPS,
        max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
    )
