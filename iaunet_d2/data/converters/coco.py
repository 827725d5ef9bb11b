"""What every converter shares: the cell category, errors, the report, and reading
and assembling COCO instance json."""
import json
from dataclasses import dataclass, field
from typing import List, Tuple

from ...io.rle import crop_annotation

__all__ = [
    "CELL_CATEGORY",
    "ConversionError",
    "ConversionReport",
    "cell_annotation",
    "coco_dict",
    "load_coco",
]

CELL_CATEGORY = {"id": 1, "name": "cell", "supercategory": "cell"}


class ConversionError(ValueError):
    """A file cannot be converted; the message names the file."""


@dataclass
class ConversionReport:
    """What a converter did: counts, files left out and why, and warnings."""

    images: int = 0
    annotations: int = 0
    failed: List[Tuple[str, str]] = field(default_factory=list)  # (file, reason)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (file, reason), not errors
    warnings: List[str] = field(default_factory=list)

    def add(self, other):
        """Add the counts and lists of ``other`` (another ConversionReport) to this one."""
        self.images += other.images
        self.annotations += other.annotations
        self.failed += other.failed
        self.skipped += other.skipped
        self.warnings += other.warnings

    def summary(self):
        """A first line with the counts, then one line per file left out or failed."""
        lines = [
            f"{self.images} image(s), {self.annotations} annotation(s) written; "
            f"{len(self.skipped)} left out, {len(self.failed)} failed."
        ]
        lines += [f"  left out {path}: {why}" for path, why in self.skipped]
        lines += [f"  FAILED {path}: {why}" for path, why in self.failed]
        return "\n".join(lines)


def cell_annotation(annotation_id, image_id, crop, y0, x0, height, width):
    """COCO annotation of one cell, category ``cell``, given as its non-empty (h, w)
    bool crop at (y0, x0) in a (height, width) image: "id", "image_id",
    "category_id", "segmentation" (compressed RLE), "area", "bbox" (XYWH), "iscrowd"."""
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": CELL_CATEGORY["id"],
        **crop_annotation(crop, y0, x0, height, width),
        "iscrowd": 0,
    }


def coco_dict(images, annotations, description):
    """A COCO instances dict with the one category ``cell``."""
    return {
        "info": {"description": description},
        "images": images,
        "annotations": annotations,
        "categories": [dict(CELL_CATEGORY)],
    }


def load_coco(json_path):
    """Read a COCO json; annotations keyed by id (as in some LIVECell copies) become a list.

    Raises:
        ConversionError: the file is missing or not json.
    """
    try:
        with open(json_path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ConversionError(f"Cannot read COCO json '{json_path}': {e}") from e
    annos = data.get("annotations", [])
    if isinstance(annos, dict):
        data["annotations"] = list(annos.values())
    return data
