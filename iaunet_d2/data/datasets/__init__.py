"""Cell datasets: registration of the paper's datasets and the synthetic demo.

Importing this package registers every name of ``REGISTERED_DATASETS`` in
Detectron2's ``DatasetCatalog`` / ``MetadataCatalog`` (without touching the disk).
"""
from .cells_demo import ensure_cells_demo, generate_cells_demo, render_demo_image
from .register_cells import (
    DATASETS,
    REGISTERED_DATASETS,
    CellDatasetSpec,
    DatasetNotFoundError,
    dataset_paths,
    dataset_root,
    load_cell_dataset,
    prepare_dataset,
    prepare_datasets,
)

__all__ = [
    "DATASETS",
    "REGISTERED_DATASETS",
    "CellDatasetSpec",
    "DatasetNotFoundError",
    "dataset_paths",
    "dataset_root",
    "ensure_cells_demo",
    "generate_cells_demo",
    "load_cell_dataset",
    "prepare_dataset",
    "prepare_datasets",
    "render_demo_image",
]
