"""Dataset mappers: dataset dict -> model input, chosen by ``cfg.INPUT.DATASET_MAPPER_NAME``."""
from detectron2.utils.registry import Registry

from .cell_instance_mapper import (
    CellInstanceDatasetMapper,
    RandomRotation90,
    Rotation90Transform,
    build_cell_augmentations,
)

__all__ = [
    "MAPPER_REGISTRY",
    "CellInstanceDatasetMapper",
    "RandomRotation90",
    "Rotation90Transform",
    "build_cell_augmentations",
    "build_dataset_mapper",
]

MAPPER_REGISTRY = Registry("IAUNET_DATASET_MAPPER")
MAPPER_REGISTRY.__doc__ = """
Dataset mappers by name. A registered object is called as ``obj(cfg, is_train)`` and
returns a callable that maps one dataset dict to the model's input dict (or None to
skip the image in training).
"""


@MAPPER_REGISTRY.register()
def cell_instance(cfg, is_train):
    """The :class:`CellInstanceDatasetMapper` built from ``cfg``."""
    return CellInstanceDatasetMapper(cfg, is_train)


def build_dataset_mapper(cfg, is_train):
    """Build the mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``."""
    return MAPPER_REGISTRY.get(cfg.INPUT.DATASET_MAPPER_NAME)(cfg, is_train)
