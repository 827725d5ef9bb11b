"""The cell datasets of the IAUNet paper and the synthetic demo, described once.

:data:`DATASETS` maps a dataset key to its :class:`CellDatasetSpec`: where each
split's json file and image folder lie under the datasets root, its pixel statistics,
its layout and where to obtain it. Every split is registered as
``<dataset key>_<split>`` (:data:`REGISTERED_DATASETS`, :func:`split_of`); the
registration and loading are in ``register_cells``.
"""
from dataclasses import dataclass
from typing import Dict, Tuple

from . import cells_demo

__all__ = ["DATASETS", "REGISTERED_DATASETS", "CellDatasetSpec", "split_of"]


@dataclass(frozen=True)
class CellDatasetSpec:
    """One dataset: its splits' files relative to the datasets root, and statistics.

    ``splits`` maps a split name to ``(json file, image folder)``, both relative to
    the datasets root. ``pixel_mean`` / ``pixel_std`` are single gray values on the
    0-255 scale (repeated to 3 channels in the metadata). ``cell_categories`` are the
    json category names (case-insensitive) kept as "cell" when the json has several
    categories; ``drop_files`` are fnmatch patterns (case-insensitive) of image file
    names to leave out.
    """

    title: str
    splits: Dict[str, Tuple[str, str]]
    pixel_mean: float
    pixel_std: float
    layout: str
    source: str
    cell_categories: Tuple[str, ...] = ("cell",)
    drop_files: Tuple[str, ...] = ()
    # The evaluator reads ground truth from the json when it has only cell
    # annotations; otherwise it converts the filtered dataset dicts instead.
    json_is_clean: bool = True
    generated: bool = False


def _evican2(difficulty):
    """The EVICAN2 variant whose test split is the ``difficulty`` evaluation subset."""
    return CellDatasetSpec(
        title=f"EVICAN2 ({difficulty} evaluation images)",
        splits={
            # EVICAN's train/val images are not graded by difficulty: the three
            # variants share them and differ by their test (eval2019) subset.
            "train": ("evican2/annotations/instances_train2019_EVICAN2.json", "evican2/images/EVICAN_train2019"),
            "val": ("evican2/annotations/instances_val2019_EVICAN2.json", "evican2/images/EVICAN_val2019"),
            "test": (
                f"evican2/annotations/instances_eval2019_{difficulty}_EVICAN2.json",
                "evican2/images/EVICAN_eval2019",
            ),
        },
        pixel_mean=114.83,
        pixel_std=15.455,
        layout=(
            "evican2/annotations/instances_{train,val}2019_EVICAN2.json, "
            "evican2/annotations/instances_eval2019_{easy,medium,difficult}_EVICAN2.json, "
            "evican2/images/EVICAN_{train,val,eval}2019/"
        ),
        source=(
            "EVICAN (Schwendy et al., 2020), 'EVICAN2' annotations (categories Cell and "
            "Nucleus; only Cell is used), from the EVICAN release page"
        ),
        cell_categories=("cell",),
        drop_files=("*background*",),  # EVICAN's blank background reference images
        json_is_clean=False,
    )


DATASETS: Dict[str, CellDatasetSpec] = {
    "revvity25": CellDatasetSpec(
        title="Revvity-25 full cell segmentation",
        splits={
            "train": ("revvity25/annotations/train.json", "revvity25/images"),
            "val": ("revvity25/annotations/valid.json", "revvity25/images"),
            "test": ("revvity25/annotations/test.json", "revvity25/images"),
        },
        pixel_mean=133.488,
        pixel_std=26.903,
        layout="revvity25/images/, revvity25/annotations/{train,valid,test}.json",
        source="the Revvity-25 release of the IAUNet authors (brightfield, overlapping cytoplasm)",
    ),
    "livecell": CellDatasetSpec(
        title="LIVECell",
        splits={
            split: (
                f"livecell/annotations/livecell_coco_{split}.json",
                f"livecell/images/livecell_{'test' if split == 'test' else 'train_val'}_images",
            )
            for split in ("train", "val", "test")
        },
        pixel_mean=128.0,
        pixel_std=11.578,
        layout=(
            "livecell/annotations/livecell_coco_{train,val,test}.json, "
            "livecell/images/livecell_{train_val,test}_images/"
        ),
        source="LIVECell (Edlund et al., 2021): images.zip and the LIVECell COCO json files",
    ),
    "livecell_crop": CellDatasetSpec(
        title="LIVECell-crop (512x512 crops of LIVECell with at most 100 cells)",
        splits={
            "train": ("livecell_crop/annotations/train.json", "livecell_crop/images/train"),
            "val": ("livecell_crop/annotations/val.json", "livecell_crop/images/val"),
            "test": ("livecell_crop/annotations/test.json", "livecell_crop/images/test"),
        },
        pixel_mean=127.926,
        pixel_std=5.991,
        layout="livecell_crop/images/{train,val,test}/, livecell_crop/annotations/{train,val,test}.json",
        source=(
            "prepared from LIVECell: 512x512 crops of each split's images keeping the "
            "annotations clipped to the crop, only crops with 1..100 cells"
        ),
    ),
    "evican2_easy": _evican2("easy"),
    "evican2_medium": _evican2("medium"),
    "evican2_difficult": _evican2("difficult"),
    "neurips22": CellDatasetSpec(
        title="NeurIPS22-CellSeg",
        splits={
            "train": ("neurips22/annotations/train.json", "neurips22/images"),
            "val": ("neurips22/annotations/valid.json", "neurips22/images"),
            "test": ("neurips22/annotations/test.json", "neurips22/images"),
        },
        pixel_mean=145.0,
        pixel_std=40.0,
        layout="neurips22/images/, neurips22/annotations/{train,valid,test}.json",
        source=(
            "the NeurIPS 2022 Cell Segmentation challenge data, label images converted to "
            "COCO json (one category 'cell')"
        ),
    ),
    **{
        f"realcells_{name}": CellDatasetSpec(
            title=title,
            splits={
                split: (f"realcells/{name}/annotations/{split}.json", f"realcells/{name}/images/{split}")
                for split in ("train", "tune", "report")
            },
            pixel_mean=mean,
            pixel_std=std,
            layout=f"realcells/{name}/images/{{train,tune,report}}/, "
                   f"realcells/{name}/annotations/{{train,tune,report}}.json",
            source=f"{origin}, prepared by `python datasets/prepare_realcells.py`",
        )
        # Pixel statistics measured on the prepared train split (0-255 after the
        # project's intensity normalisation).
        for name, title, mean, std, origin in (
            ("bacteria_phase", "real-data suite: phase-contrast bacteria, 256-px tiles",
             70.368, 38.976, "the divisualisation 0.1.0 source distribution (MIT)"),
            ("nuclei_fluo", "real-data suite: fluorescence nuclei, 256-px tiles",
             34.547, 34.037, "the stardist package's DSB2018 image (CC0)"),
        )
    },
    "cells_demo": CellDatasetSpec(
        title="synthetic brightfield cells (generated on first use)",
        splits={
            split: (f"{cells_demo.DEMO_DIRNAME}/annotations/{split}.json", f"{cells_demo.DEMO_DIRNAME}/{split}")
            for split in cells_demo.DEMO_SPLITS
        },
        # Measured on the generated train images (tests/test_demo_data.py checks it).
        pixel_mean=171.374,
        pixel_std=24.204,
        layout="cells_demo/{train,val}/*.png, cells_demo/annotations/{train,val}.json",
        source="generated by iaunet_d2.data.datasets.cells_demo",
        generated=True,
    ),
}

# registered name ("<dataset key>_<split>") -> (dataset key, split)
_SPLITS: Dict[str, Tuple[str, str]] = {
    f"{key}_{split}": (key, split) for key, spec in DATASETS.items() for split in spec.splits
}
REGISTERED_DATASETS = tuple(_SPLITS)


def split_of(name):
    """``(dataset key, split)`` of a registered name, e.g. ``("livecell", "train")``.

    Raises:
        KeyError: ``name`` is not one of :data:`REGISTERED_DATASETS`.
    """
    if name not in _SPLITS:
        raise KeyError(f"'{name}' is not a cell dataset of iaunet_d2; known: {', '.join(REGISTERED_DATASETS)}")
    return _SPLITS[name]
