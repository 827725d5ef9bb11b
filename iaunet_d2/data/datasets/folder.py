"""A lab's own data: a folder of images with instance label images or a COCO json.

``DATASETS.TRAIN_DIR`` / ``DATASETS.TEST_DIR`` (``train_net.py --train-dir`` /
``--val-dir``) name such folders; :func:`register_folder_datasets` registers them in
Detectron2's catalogs as ``folder_train`` / ``folder_val`` and points
``DATASETS.TRAIN`` / ``DATASETS.TEST`` at them. Layouts understood (first match):

1. exactly one ``*.json`` (COCO instances) in the folder: images are found relative to
   the folder, or to its ``images/`` subfolder when there is one;
2. images in the folder (or in ``images/``) and their instance label images (integer
   ids, 0 = background, TIFF or PNG) either next to them as ``<name>_masks.tif``,
   ``<name>_labels.tif``, ``<name>_label.png``, ... or with any of those names (also
   ``<name>.tif``) in a ``labels/`` or ``masks/`` subfolder.

Label images are converted to COCO json once; the json is cached in the folder's
``.iaunet_d2/`` (or, when the folder is read-only, under ``OUTPUT_DIR/data_cache/``)
together with a fingerprint of the files, and converted again when files are added,
removed or changed. Images without a label image, unreadable ones and label images
whose size differs from their image are left out, counted and named in the log.
"""
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ...io.images import fingerprint_files, list_images
from ..converters import convert_label_folder
from ..validation import DatasetError

__all__ = ["FOLDER_DATASETS", "FolderLayout", "describe_folder", "register_folder_datasets"]

logger = logging.getLogger(__name__)

# config key -> (dataset name, config list it replaces)
FOLDER_DATASETS = {
    "TRAIN_DIR": ("folder_train", "TRAIN"),
    "TEST_DIR": ("folder_val", "TEST"),
}
_LABEL_SUBFOLDERS = ("labels", "masks")
_CACHE_DIRNAME = ".iaunet_d2"


@dataclass(frozen=True)
class FolderLayout:
    """Where a data folder's images and annotations are."""

    folder: str
    image_dir: str
    json_file: Optional[str] = None  # a COCO json given by the user
    label_dir: Optional[str] = None  # label images to convert


def describe_folder(folder):
    """Find the layout of a data folder (see the module docstring).

    Raises:
        DatasetError: the folder does not exist or holds several json files.
    """
    folder = os.path.abspath(os.path.expanduser(folder))
    if not os.path.isdir(folder):
        raise DatasetError(f"Data folder '{folder}' does not exist.")
    names = sorted(os.listdir(folder))
    images = os.path.join(folder, "images")
    image_dir = images if os.path.isdir(images) else folder
    jsons = [n for n in names if n.lower().endswith(".json") and not n.startswith(".")]
    if len(jsons) > 1:
        raise DatasetError(
            f"Data folder '{folder}' holds several json files ({', '.join(jsons)}); keep the "
            "one COCO annotation file of this split there."
        )
    if jsons:
        return FolderLayout(folder, image_dir, json_file=os.path.join(folder, jsons[0]))
    label_dir = next((os.path.join(folder, s) for s in _LABEL_SUBFOLDERS
                      if os.path.isdir(os.path.join(folder, s))), image_dir)
    return FolderLayout(folder, image_dir, label_dir=label_dir)


def _files_fingerprint(*folders):
    """Fingerprint of the image files of ``folders`` (each folder once, in order)."""
    return fingerprint_files([path for folder in dict.fromkeys(folders) for path in list_images(folder)])


def _cache_dir(folder, fallback_root):
    preferred = os.path.join(folder, _CACHE_DIRNAME)
    try:
        os.makedirs(preferred, exist_ok=True)
        if os.access(preferred, os.W_OK):
            return preferred
    except OSError:
        pass
    key = hashlib.sha1(folder.encode()).hexdigest()[:12]
    fallback = os.path.join(os.path.abspath(fallback_root), "data_cache", key)
    os.makedirs(fallback, exist_ok=True)
    return fallback


def _convert_labels(layout, cache_dir):
    """COCO json of the layout's label images, from the cache when files are unchanged."""
    json_file = os.path.join(cache_dir, "annotations.json")
    stamp_file = os.path.join(cache_dir, "annotations.fingerprint")
    fingerprint = _files_fingerprint(layout.image_dir, layout.label_dir)
    if os.path.isfile(json_file) and os.path.isfile(stamp_file):
        with open(stamp_file) as f:
            if f.read().strip() == fingerprint:
                logger.info("Using the converted annotations of '%s' (%s).", layout.folder, json_file)
                return json_file
    logger.info("Converting the label images of '%s' to COCO json (%s)...", layout.folder, json_file)
    report = convert_label_folder(layout.image_dir, layout.label_dir, json_file,
                                  image_root=layout.image_dir,
                                  description=f"cells of {layout.folder}")
    for path, why in report.failed + report.skipped:
        logger.warning("Left out '%s': %s", path, why)
    for warning in report.warnings:
        logger.info("%s", warning)
    logger.info("'%s': %s", layout.folder, report.summary().splitlines()[0])
    if report.images == 0:
        first = f" (e.g. {report.failed[0][0]}: {report.failed[0][1]})" if report.failed else ""
        raise DatasetError(
            f"Data folder '{layout.folder}' gives no usable image{first}. Expected images with "
            "label images named <name>_masks.tif / <name>_labels.tif (or in a labels/ "
            "subfolder), or one COCO json; see README, 'Train on your own data'."
        )
    with open(stamp_file, "w") as f:
        f.write(fingerprint)
    return json_file


def _read_categories(json_file):
    """(thing_classes, json id -> contiguous id) of a COCO json, as load_coco_json
    derives them, after checking that image ids are unique."""
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetError(f"Cannot read COCO json '{json_file}': {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"'{json_file}' is not a COCO instances json (no 'images' list).")
    ids = [image.get("id") for image in data["images"]]
    duplicates = sorted({i for i in ids if ids.count(i) > 1}, key=str) if len(set(ids)) < len(ids) else []
    if duplicates:
        raise DatasetError(f"'{json_file}': duplicate image id(s) {duplicates[:5]}; every image needs its own id.")
    categories = sorted(data.get("categories") or [], key=lambda c: c["id"])
    if not categories:
        raise DatasetError(f"'{json_file}' has no categories.")
    return [c["name"] for c in categories], {c["id"]: i for i, c in enumerate(categories)}


def _load(name, json_file, image_root):
    try:
        # The annotation ids are kept so that the data checks can name them.
        return load_coco_json(json_file, image_root, dataset_name=name, extra_annotation_keys=["id"])
    except AssertionError as e:  # load_coco_json's checks, e.g. non-unique annotation ids
        raise DatasetError(f"Cannot load '{json_file}': {e}") from e
    except KeyError as e:  # an annotation's category_id missing from "categories"
        raise DatasetError(f"Cannot load '{json_file}': {e.args[0] if e.args else e}") from e


def _register(name, json_file, image_root, classes, id_map, cache_dir):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: _load(name, json_file, image_root))
    MetadataCatalog.get(name).set(
        thing_classes=classes,
        thing_dataset_id_to_contiguous_id=id_map,
        evaluator_type="coco",
        json_file=json_file,
        image_root=image_root,
        pixel_stats_cache=os.path.join(cache_dir, "pixel_stats.json"),
    )


def register_folder_datasets(cfg, prepare=True):
    """Register the folders of ``DATASETS.TRAIN_DIR`` / ``TEST_DIR`` (config not frozen).

    With ``prepare`` the folders are read and label images converted (cached);
    without (prediction, where the data may be absent) only the names and class
    names are registered, from the cache when there is one.

    Raises:
        DatasetError: a folder is missing, empty or unusable.
    """
    for key, (name, split_key) in FOLDER_DATASETS.items():
        folder = cfg.DATASETS.get(key, "")
        if not folder:
            continue
        setattr(cfg.DATASETS, split_key, (name,))
        folder = os.path.abspath(os.path.expanduser(folder))
        if not prepare and not os.path.isdir(folder):
            if name not in MetadataCatalog.list():
                MetadataCatalog.get(name).set(thing_classes=["cell"], evaluator_type="coco")
            continue
        layout = describe_folder(folder)
        cache_dir = _cache_dir(folder, cfg.OUTPUT_DIR)
        if layout.json_file:
            json_file = layout.json_file
        elif prepare:
            json_file = _convert_labels(layout, cache_dir)
        else:
            json_file = os.path.join(cache_dir, "annotations.json")
            if not os.path.isfile(json_file):
                MetadataCatalog.get(name).set(thing_classes=["cell"], evaluator_type="coco")
                continue
        classes, id_map = _read_categories(json_file)
        _register(name, json_file, layout.image_dir, classes, id_map, cache_dir)
        logger.info("Dataset '%s': %s (%s).", name, folder, "COCO json" if layout.json_file else "label images")
