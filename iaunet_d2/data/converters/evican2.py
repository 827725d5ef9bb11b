"""EVICAN2 -> the cell-only json files the registered ``evican2_*`` names read: the cell
category only, background images left out, evaluation images split by difficulty."""
import copy
import fnmatch
import os
from typing import Dict

from ...io.writers import write_json
from ..datasets.specs import DATASETS
from .coco import CELL_CATEGORY, ConversionError, ConversionReport, coco_dict, load_coco

__all__ = ["convert_evican2", "evican2_difficulty"]

_DIFFICULTIES = ("easy", "medium", "difficult")
# What the registered EVICAN2 names expect (datasets.specs.DATASETS), from one place.
_EVICAN_SPEC = DATASETS["evican2_easy"]


def evican2_difficulty(image):
    """Difficulty of an EVICAN2 evaluation image record: its "difficulty" field, or the
    word easy/medium/difficult in its file name; None if neither says."""
    value = str(image.get("difficulty", "")).lower()
    if value in _DIFFICULTIES:
        return value
    tokens = os.path.basename(image["file_name"]).lower().replace("-", "_").replace(".", "_").split("_")
    found = [d for d in _DIFFICULTIES if d in tokens]
    return found[0] if len(found) == 1 else None


def _evican2_clean(data, source, max_instances, report):
    """Keep the cell category (as id 1) and non-background images; returns a new dict."""
    wanted = {c.lower() for c in _EVICAN_SPEC.cell_categories}
    cell_ids = {c["id"] for c in data.get("categories", []) if c["name"].lower() in wanted}
    if not cell_ids:
        names = [c.get("name") for c in data.get("categories", [])]
        raise ConversionError(f"'{source}' has no cell category (categories: {names}).")
    patterns = [p.lower() for p in _EVICAN_SPEC.drop_files]
    by_image: Dict[int, list] = {}
    for anno in data.get("annotations", []):
        if anno["category_id"] in cell_ids:
            by_image.setdefault(anno["image_id"], []).append(anno)
    images, annotations = [], []
    for image in data.get("images", []):
        base = os.path.basename(image["file_name"]).lower()
        if any(fnmatch.fnmatch(base, p) for p in patterns):
            report.skipped.append((image["file_name"], "background image"))
            continue
        annos = by_image.get(image["id"], [])
        if max_instances is not None and len(annos) > max_instances:
            report.skipped.append((image["file_name"], f"{len(annos)} cells > max_instances {max_instances}"))
            continue
        images.append(image)
        for anno in annos:
            anno = copy.deepcopy(anno)
            anno["category_id"] = CELL_CATEGORY["id"]
            annotations.append(anno)
    return {**{k: v for k, v in data.items() if k not in ("images", "annotations", "categories")},
            **coco_dict(images, annotations, f"EVICAN2 cells from {os.path.basename(source)}")}


def _evican2_target(split, difficulty=None):
    """Path, relative to the datasets root, of a split's json file in the dataset table."""
    key = f"evican2_{difficulty or 'easy'}"
    return DATASETS[key].splits[split][0]


def convert_evican2(annotation_dir, output_root, eval_json=None, max_instances=None):
    """Write the EVICAN2 json files the registered ``evican2_*`` names read.

    Reads from ``annotation_dir`` the EVICAN2 files named as in the release
    (``instances_{train,val}2019_EVICAN2.json`` and, when present,
    ``instances_eval2019_{easy,medium,difficult}_EVICAN2.json``). Each output keeps
    only the cell category (renamed ``cell``, id 1), drops the background images
    (``*background*``) and images with more than ``max_instances`` cells. When the
    per-difficulty evaluation files are absent, ``eval_json`` (one file with all
    evaluation images) is split by :func:`evican2_difficulty`; images whose difficulty
    is unknown are reported and left out.

    Output: ``<output_root>/evican2/annotations/...`` (the image folders are used as
    they are: ``evican2/images/EVICAN_{train,val,eval}2019/``).

    Returns:
        ConversionReport over all files.
    Raises:
        ConversionError: ``annotation_dir`` does not exist (nothing is written).
    """
    if not os.path.isdir(annotation_dir):
        raise ConversionError(f"EVICAN2 annotation folder '{annotation_dir}' does not exist.")
    report = ConversionReport()
    jobs = []  # (source path or loaded dict, target relative path)
    for split in ("train", "val"):
        target = _evican2_target(split)
        jobs.append((os.path.join(annotation_dir, os.path.basename(target)), target))
    eval_files = {d: os.path.join(annotation_dir, os.path.basename(_evican2_target("test", d)))
                  for d in _DIFFICULTIES}
    if all(os.path.isfile(p) for p in eval_files.values()):
        jobs += [(eval_files[d], _evican2_target("test", d)) for d in _DIFFICULTIES]
    elif eval_json is not None:
        try:
            data = load_coco(eval_json)
        except ConversionError as e:
            report.failed.append((eval_json, str(e)))
            data = None
        if data is not None:
            groups = {d: [] for d in _DIFFICULTIES}
            for image in data.get("images", []):
                d = evican2_difficulty(image)
                if d is None:
                    report.skipped.append((image["file_name"], "difficulty unknown (no 'difficulty' "
                                                               "field or easy/medium/difficult in the name)"))
                else:
                    groups[d].append(image)
            for d, images in groups.items():
                ids = {im["id"] for im in images}
                part = dict(data, images=images,
                            annotations=[a for a in data.get("annotations", []) if a["image_id"] in ids])
                jobs.append(((eval_json, part), _evican2_target("test", d)))
    else:
        report.failed.append((annotation_dir, "no instances_eval2019_{easy,medium,difficult}_EVICAN2.json "
                                              "and no --eval-json to split by difficulty"))
    for source, target in jobs:
        if isinstance(source, tuple):
            source, data = source
        else:
            if not os.path.isfile(source):
                report.failed.append((source, "file not found"))
                continue
            try:
                data = load_coco(source)
            except ConversionError as e:
                report.failed.append((source, str(e)))
                continue
        try:
            clean = _evican2_clean(data, source, max_instances, report)
        except ConversionError as e:
            report.failed.append((source, str(e)))
            continue
        write_json(clean, os.path.join(output_root, target))
        report.images += len(clean["images"])
        report.annotations += len(clean["annotations"])
    return report
