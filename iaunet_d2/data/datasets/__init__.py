"""Cell datasets: registration of the paper's datasets and the synthetic demo.

Importing this package registers every name of ``REGISTERED_DATASETS`` in
Detectron2's ``DatasetCatalog`` / ``MetadataCatalog`` (without touching the disk);
``register_folder_datasets`` registers a lab's own folders named in the config.
"""
from .cells_demo import ensure_cells_demo, generate_cells_demo, render_demo_image
from .specs import DATASETS, REGISTERED_DATASETS, CellDatasetSpec
from .register_cells import (
    DatasetNotFoundError,
    dataset_paths,
    dataset_root,
    load_cell_dataset,
    prepare_dataset,
    prepare_datasets,
)
from .folder import FOLDER_DATASETS, describe_folder, register_folder_datasets

__all__ = [
    "DATASETS",
    "FOLDER_DATASETS",
    "REGISTERED_DATASETS",
    "CellDatasetSpec",
    "DatasetNotFoundError",
    "dataset_paths",
    "describe_folder",
    "dataset_root",
    "ensure_cells_demo",
    "generate_cells_demo",
    "load_cell_dataset",
    "prepare_dataset",
    "prepare_datasets",
    "register_folder_datasets",
    "render_demo_image",
]
