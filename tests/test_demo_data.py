"""The synthetic demo dataset: deterministic, valid COCO, realistic statistics."""
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO

import iaunet_d2  # noqa: F401
from detectron2.data import DatasetCatalog, MetadataCatalog
from iaunet_d2.data.datasets import dataset_root, ensure_cells_demo, generate_cells_demo, prepare_dataset


@pytest.fixture(scope="module")
def demo_dir():
    """The demo data under the test session's datasets root (generated once)."""
    return ensure_cells_demo(dataset_root())


def test_generation_is_deterministic(tmp_path):
    a = generate_cells_demo(str(tmp_path / "a"), "val", num_images=4)
    b = generate_cells_demo(str(tmp_path / "b"), "val", num_images=4)
    assert a == b
    for name in ("annotations/val.json",) + tuple(f"val/{i:03d}.png" for i in range(4)):
        with open(tmp_path / "a" / name, "rb") as fa, open(tmp_path / "b" / name, "rb") as fb:
            assert fa.read() == fb.read(), name


def test_full_dataset_matches_fresh_generation(demo_dir, tmp_path):
    fresh = ensure_cells_demo(str(tmp_path))
    for rel in ("annotations/train.json", "annotations/val.json", "train/000.png", "train/047.png", "val/015.png"):
        with open(os.path.join(demo_dir, rel), "rb") as fa, open(os.path.join(fresh, rel), "rb") as fb:
            assert fa.read() == fb.read(), rel
    # No staging folders are left behind.
    assert sorted(os.listdir(tmp_path)) == ["cells_demo"]


def test_second_call_reuses_and_partial_copy_is_ignored(tmp_path):
    root = str(tmp_path)
    # A staging folder left by an interrupted run must not count as data.
    os.makedirs(os.path.join(root, ".cells_demo.tmp-crashed", "cells_demo", "train"))
    path = ensure_cells_demo(root)
    stamp = os.path.getmtime(os.path.join(path, "annotations", "train.json"))
    assert ensure_cells_demo(root) == path
    assert os.path.getmtime(os.path.join(path, "annotations", "train.json")) == stamp


def test_coco_masks_boxes_and_statistics(demo_dir):
    coco = COCO(os.path.join(demo_dir, "annotations", "train.json"))
    images = coco.loadImgs(coco.getImgIds())
    assert len(images) == 48
    counts = [len(coco.getAnnIds(imgIds=[img["id"]])) for img in images]
    assert min(counts) >= 5 and max(counts) <= 25
    radii, overlapping = [], 0
    for img in images:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        for ann, mask in zip(anns, masks):
            assert ann["iscrowd"] == 0 and ann["category_id"] == 1
            assert mask.shape == (img["height"], img["width"]) == (256, 256)
            assert mask.sum() == ann["area"] > 0
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann["bbox"]
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            radii.append(np.sqrt(ann["area"] / np.pi))
        total = np.sum(masks, axis=0)
        overlapping += int((total > 1).any())
    assert overlapping >= 10  # amodal masks of overlapping cells
    assert min(radii) < 10 and max(radii) > 22  # a range of sizes


def test_metadata_stats_match_generated_images(demo_dir):
    from iaunet_d2.io.images import read_image

    pixels = np.stack(
        [read_image(os.path.join(demo_dir, "train", f"{i:03d}.png"))[:, :, 0] for i in range(48)]
    ).astype(np.float64)
    meta = MetadataCatalog.get("cells_demo_train")
    assert meta.pixel_mean[0] == pytest.approx(pixels.mean(), abs=0.01)
    assert meta.pixel_std[0] == pytest.approx(pixels.std(), abs=0.01)


def test_loads_through_dataset_catalog(demo_dir):
    for name, n in (("cells_demo_train", 48), ("cells_demo_val", 16)):
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == n
        assert all(os.path.isfile(d["file_name"]) for d in dicts)
        assert all(a["category_id"] == 0 for d in dicts for a in d["annotations"])
        prepare_dataset(name)
        meta = MetadataCatalog.get(name)
        assert meta.json_file == os.path.join(demo_dir, "annotations", name.split("_")[-1] + ".json")
        assert meta.thing_classes == ["cell"]
    with open(MetadataCatalog.get("cells_demo_val").json_file) as f:
        assert json.load(f)["categories"] == [{"id": 1, "name": "cell", "supercategory": "cell"}]
    rle = dicts[0]["annotations"][0]["segmentation"]
    assert mask_util.area(rle) > 0
