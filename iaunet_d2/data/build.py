"""Data loaders of the trainer: Detectron2's loaders over checked dataset dicts.

Every split is loaded from Detectron2's ``DatasetCatalog`` (the project's datasets,
``--train-dir`` folders or names a user registered), checked and cleaned by
:func:`~iaunet_d2.data.validation.clean_dataset_dicts`; training images the mapper
cannot read are replaced by others (:class:`~iaunet_d2.data.validation.SkipUnreadable`).
"""
import itertools
import logging

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.data.build import print_instances_class_histogram
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler

from .validation import (
    DatasetError, SkipUnreadable, clean_dataset_dicts, model_num_classes, model_num_queries,
)

__all__ = ["build_cell_test_loader", "build_cell_train_loader", "load_checked_dicts"]

logger = logging.getLogger(__name__)


def load_checked_dicts(cfg, names, is_train):
    """Dataset dicts of ``names``, checked and cleaned, concatenated.

    Training drops images without cell annotations when
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` is on and logs the class histogram.

    Raises:
        DatasetError: see :func:`clean_dataset_dicts`; also an empty split.
    """
    num_queries = model_num_queries(cfg)
    all_dicts = []
    for name in names:
        dicts = DatasetCatalog.get(name)
        if not dicts:
            raise DatasetError(f"Dataset '{name}' has no images.")
        all_dicts.append(clean_dataset_dicts(
            dicts, name, num_classes=model_num_classes(cfg), is_train=is_train,
            num_queries=num_queries, mask_on=cfg.MODEL.MASK_ON,
            queries_key=f"MODEL.{cfg.MODEL.META_ARCHITECTURE.upper()}.NUM_QUERIES",
        ))
    dicts = list(itertools.chain.from_iterable(all_dicts))
    if is_train and cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        before = len(dicts)
        dicts = [d for d in dicts if any(not a.get("iscrowd", 0) for a in d["annotations"])]
        if len(dicts) < before:
            logger.info("Left out %d training image(s) without cell annotations "
                        "(DATALOADER.FILTER_EMPTY_ANNOTATIONS).", before - len(dicts))
    classes = MetadataCatalog.get(names[0]).get("thing_classes")
    if is_train and classes:
        print_instances_class_histogram(dicts, classes)
    return dicts


def build_cell_train_loader(cfg, mapper):
    """Detectron2's training loader over the checked DATASETS.TRAIN dicts."""
    dicts = load_checked_dicts(cfg, cfg.DATASETS.TRAIN, is_train=True)
    sampler_name = cfg.DATALOADER.SAMPLER_TRAIN
    if sampler_name == "TrainingSampler":
        sampler = TrainingSampler(len(dicts))
    elif sampler_name == "RepeatFactorTrainingSampler":
        sampler = RepeatFactorTrainingSampler(
            RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
                dicts, cfg.DATALOADER.REPEAT_THRESHOLD))
    else:
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN {sampler_name!r} is not supported; use "
                         "TrainingSampler or RepeatFactorTrainingSampler.")
    return build_detection_train_loader(
        SkipUnreadable(dicts, mapper, seed=cfg.SEED if cfg.SEED >= 0 else 0),
        mapper=None,  # applied by SkipUnreadable
        sampler=sampler,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def build_cell_test_loader(cfg, dataset_name, mapper):
    """Detectron2's inference loader over the checked dicts of one split."""
    dicts = load_checked_dicts(cfg, [dataset_name], is_train=False)
    return build_detection_test_loader(dicts, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS)
