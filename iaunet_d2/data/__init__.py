"""Datasets, image reading and dataset mappers.

Importing this package registers the cell datasets (``datasets``) and the dataset
mappers (``dataset_mappers``) with Detectron2's catalogs and the project's registry.
"""
from . import datasets  # noqa: F401  (registers the datasets)
from . import dataset_mappers  # noqa: F401  (registers the mappers)
from .dataset_mappers import MAPPER_REGISTRY, build_dataset_mapper  # noqa: F401
from .datasets import DatasetNotFoundError, prepare_dataset, prepare_datasets  # noqa: F401
from ..io.images import ImageReadError, read_image  # noqa: F401
