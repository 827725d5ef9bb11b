"""Registration and loading of the cell datasets of the IAUNet paper and of the demo.

Every dataset is described once, in :data:`~.specs.DATASETS` (where its files live
under the datasets root, its pixel statistics and how to obtain it). Importing this module
registers each split in Detectron2's ``DatasetCatalog`` and ``MetadataCatalog``
without touching the disk. The root is ``$DETECTRON2_DATASETS`` (default
``./datasets``) and is read again whenever a dataset is loaded or prepared, so it may
change after import.

Loading a split that is not on disk raises :class:`DatasetNotFoundError` naming the
missing path, the expected layout and how to obtain the data (``datasets/README.md``).
Every dataset has one class, "cell" (contiguous id 0); json categories that are not
cells (EVICAN2's "Nucleus") are dropped together with their annotations.
"""
import fnmatch
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from . import cells_demo
from .specs import DATASETS, REGISTERED_DATASETS, split_of

__all__ = [
    "DatasetNotFoundError",
    "dataset_root",
    "dataset_paths",
    "load_cell_dataset",
    "prepare_dataset",
    "prepare_datasets",
]

logger = logging.getLogger(__name__)

_README = "datasets/README.md"


class DatasetNotFoundError(FileNotFoundError):
    """A registered dataset's annotation file or image folder is missing."""


def dataset_root():
    """The datasets root: ``$DETECTRON2_DATASETS`` or ``./datasets``, as an absolute path."""
    return os.path.abspath(os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets")))


def dataset_paths(name):
    """Absolute ``(json_file, image_root)`` of a registered split under the current root."""
    key, split = split_of(name)
    json_rel, image_rel = DATASETS[key].splits[split]
    root = dataset_root()
    return os.path.join(root, json_rel), os.path.join(root, image_rel)


def _base_metadata(name):
    """Metadata of a split, with file paths resolved under the current root."""
    key, _ = split_of(name)
    spec = DATASETS[key]
    json_file, image_root = dataset_paths(name)
    meta = dict(
        thing_classes=["cell"],
        evaluator_type="coco",
        pixel_mean=[spec.pixel_mean] * 3,
        pixel_std=[spec.pixel_std] * 3,
        image_root=image_root,
    )
    if spec.json_is_clean:
        meta["json_file"] = json_file
        # COCO's usual id 1 for the cell category, so that an evaluator built before
        # the dataset is loaded already maps class 0 right; loading replaces it with
        # the json's actual id.
        meta["thing_dataset_id_to_contiguous_id"] = {1: 0}
    else:
        # No json_file: COCOEvaluator then builds the ground truth from the filtered
        # dataset dicts (cached in its output folder) instead of the raw json; without
        # an id mapping both sides use the contiguous id 0.
        meta["source_json_file"] = json_file
    return meta


def _reset_metadata(name, **extra):
    """Replace the split's metadata (Metadata.set refuses to change a value)."""
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    MetadataCatalog.get(name).set(**{**_base_metadata(name), **extra})


def _missing_message(name, path, what):
    key, _ = split_of(name)
    spec = DATASETS[key]
    return (
        f"Dataset '{name}' ({spec.title}) is not available: its {what} '{path}' does not "
        f"exist. Datasets are read from $DETECTRON2_DATASETS (now '{dataset_root()}', "
        f"default ./datasets) with this layout: {spec.layout}. Obtain it from "
        f"{spec.source}; see {_README} for the download and preparation steps."
    )


def _check_files(name):
    """Generate demo data if needed, else check that the split's files exist."""
    key, _ = split_of(name)
    if DATASETS[key].generated:
        cells_demo.ensure_cells_demo(dataset_root())
    json_file, image_root = dataset_paths(name)
    if not os.path.isfile(json_file):
        raise DatasetNotFoundError(_missing_message(name, json_file, "annotation file"))
    if not os.path.isdir(image_root):
        raise DatasetNotFoundError(_missing_message(name, image_root, "image folder"))
    return json_file, image_root


def prepare_dataset(name):
    """Make a split ready for training or evaluation under the current root.

    For the project's names (:data:`REGISTERED_DATASETS`): generates the demo data when
    ``name`` is a demo split, otherwise checks that the annotation file and image
    folder exist, then points the split's metadata (``json_file``, ``image_root``) at
    the current ``$DETECTRON2_DATASETS``. Any other name registered in Detectron2's
    ``DatasetCatalog`` (e.g. with ``register_coco_instances``) is used as registered;
    only the files its metadata names are checked.

    Raises:
        DatasetNotFoundError: a file or folder of the split is missing, or the name is
            registered nowhere.
    """
    if name in REGISTERED_DATASETS:
        _check_files(name)
        _reset_metadata(name)
        return
    if name not in DatasetCatalog.list():
        raise DatasetNotFoundError(
            f"Dataset '{name}' is not registered. Use one of the project's datasets "
            f"({', '.join(REGISTERED_DATASETS)}), your own folder (train_net.py --train-dir "
            "DIR --val-dir DIR, see README 'Train on your own data'), or register it in "
            "Detectron2's DatasetCatalog (e.g. register_coco_instances) before building the config."
        )
    meta = MetadataCatalog.get(name)
    for key, what in (("json_file", "annotation file"), ("image_root", "image folder")):
        path = meta.get(key)
        exists = os.path.isdir if key == "image_root" else os.path.isfile
        if path and not exists(path):
            raise DatasetNotFoundError(f"Dataset '{name}': its {what} '{path}' does not exist.")


def prepare_datasets(names):
    """:func:`prepare_dataset` for every name (e.g. ``cfg.DATASETS.TRAIN + TEST``)."""
    for name in names:
        prepare_dataset(name)


def load_cell_dataset(name):
    """Load a registered split in Detectron2's dataset-dict format.

    Returns:
        list[dict]: one dict per image ("file_name", "height", "width", "image_id",
        "annotations" with "bbox" (XYWH_ABS), "segmentation" (polygons or RLE),
        "category_id" = 0, "iscrowd"). Images matching the dataset's ``drop_files``
        are removed; annotations of non-cell categories are removed.

    Raises:
        DatasetNotFoundError: a file or folder of the split is missing.
    """
    key, _ = split_of(name)
    spec = DATASETS[key]
    json_file, image_root = _check_files(name)

    # load_coco_json records the json's categories in the metadata of the name it is
    # given; start from metadata without "thing_classes" so they can be read back.
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    try:
        dataset_dicts = load_coco_json(json_file, image_root, dataset_name=name)
    except Exception:
        _reset_metadata(name)  # leave usable metadata behind
        raise
    json_meta = MetadataCatalog.get(name)
    json_classes = list(json_meta.get("thing_classes", []))
    json_ids = dict(json_meta.get("thing_dataset_id_to_contiguous_id", {}))  # json id -> index
    _reset_metadata(name)  # back to the project's metadata, also if checks below fail

    if spec.json_is_clean and len(json_classes) != 1:
        raise ValueError(
            f"Dataset '{name}': {json_file} has categories {json_classes}; a single cell "
            "category is expected (see datasets/README.md)."
        )
    if len(json_classes) == 1:
        cell_indices = {0}
    else:
        wanted = {c.lower() for c in spec.cell_categories}
        cell_indices = {i for i, c in enumerate(json_classes) if c.lower() in wanted}
        if not cell_indices:
            raise ValueError(
                f"Dataset '{name}': none of the categories {json_classes} of {json_file} "
                f"is a cell category {list(spec.cell_categories)}."
            )
        dropped = [c for i, c in enumerate(json_classes) if i not in cell_indices]
        logger.info("Dataset '%s': keeping categories as 'cell', dropping %s.", name, dropped)

    patterns = [p.lower() for p in spec.drop_files]
    kept = []
    for record in dataset_dicts:
        base = os.path.basename(record["file_name"]).lower()
        if any(fnmatch.fnmatch(base, p) for p in patterns):
            continue
        annotations = []
        for anno in record.get("annotations", []):
            if anno["category_id"] in cell_indices:
                anno["category_id"] = 0
                annotations.append(anno)
        record["annotations"] = annotations
        kept.append(record)
    if len(kept) < len(dataset_dicts):
        logger.info(
            "Dataset '%s': left out %d image(s) matching %s.",
            name, len(dataset_dicts) - len(kept), list(spec.drop_files),
        )

    extra = {}
    if spec.json_is_clean:
        # COCOEvaluator writes predictions of class 0 with this json id.
        (index,) = cell_indices
        json_id = next(j for j, i in json_ids.items() if i == index)
        extra["thing_dataset_id_to_contiguous_id"] = {json_id: 0}
    _reset_metadata(name, **extra)
    return kept


def _register_all():
    for name in REGISTERED_DATASETS:
        # Idempotent, so that reloading this module does not trip the catalogs.
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        # Default arguments bind the name now, not when the loop has finished.
        DatasetCatalog.register(name, lambda name=name: load_cell_dataset(name))
        MetadataCatalog.get(name).set(**_base_metadata(name))


_register_all()
