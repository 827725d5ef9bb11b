"""The cell_instance dataset mapper: shapes, alignment, odd inputs."""
import logging

import numpy as np
import pycocotools.mask as mask_util
import pytest
import tifffile
import torch

import iaunet_d2  # noqa: F401
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from iaunet_d2 import add_iaunet_config
from iaunet_d2.data.dataset_mappers import MAPPER_REGISTRY, Rotation90Transform, build_dataset_mapper
from iaunet_d2.io.images import ImageReadError


def _cfg(size=128, rotate=False):
    cfg = get_cfg()
    add_iaunet_config(cfg)
    cfg.INPUT.IMAGE_SIZE = size
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.ROTATE_90 = rotate
    return cfg


def _disk(h, w, cx, cy, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2


def _record(tmp_path, h=96, w=160, dtype=np.uint16, polygons=False):
    """A TIFF image with three disk-shaped cells and its dataset dict."""
    rng = np.random.default_rng(0)
    image = rng.integers(1000, 3000, (h, w)).astype(dtype)
    annotations = []
    for cx, cy, r in ((30, 30, 12), (100, 50, 20), (150, 85, 14)):
        mask = _disk(h, w, cx, cy, r)
        image[mask] = 20000
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        segm = [[cx - r, cy - r, cx + r, cy - r, cx + r, cy + r, cx - r, cy + r]] if polygons else rle
        annotations.append(
            {"bbox": list(mask_util.toBbox(rle)), "bbox_mode": BoxMode.XYWH_ABS, "segmentation": segm,
             "category_id": 0, "iscrowd": 0}
        )
    path = str(tmp_path / "cells.tif")
    tifffile.imwrite(path, image)
    return {"file_name": path, "image_id": 7, "height": h, "width": w, "annotations": annotations}


def _assert_aligned(instances, size):
    masks = instances.gt_masks.tensor
    assert masks.dtype == torch.bool and masks.shape[1:] == (size, size)
    assert instances.gt_classes.dtype == torch.int64
    boxes = instances.gt_boxes.tensor
    for mask, box in zip(masks, boxes):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert len(xs) > 0
        expected = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert torch.equal(box, expected)


@pytest.mark.parametrize("rotate", [False, True])
def test_train_mapper_shapes_and_alignment(tmp_path, rotate):
    cfg = _cfg(rotate=rotate)
    mapper = build_dataset_mapper(cfg, is_train=True)
    record = _record(tmp_path)
    for seed in range(4):
        np.random.seed(seed)
        out = mapper(record)
        assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 128, 128)
        assert out["image"].is_contiguous()
        assert (out["height"], out["width"], out["image_id"]) == (96, 160, 7)
        assert out["instances"].image_size == (128, 128)
        assert len(out["instances"]) <= 3
        _assert_aligned(out["instances"], 128)
    assert "instances" not in record and len(record["annotations"]) == 3  # input untouched


def test_polygon_annotations(tmp_path):
    mapper = build_dataset_mapper(_cfg(), is_train=True)
    out = mapper(_record(tmp_path, polygons=True))
    _assert_aligned(out["instances"], 128)


def test_test_mapper_longest_side(tmp_path):
    mapper = build_dataset_mapper(_cfg(size=128), is_train=False)
    out = mapper(_record(tmp_path))  # a 16-bit TIFF
    assert out["image"].shape == (3, 77, 128)  # 96 x 160 -> longest side 128
    assert "instances" not in out and "annotations" not in out
    assert (out["height"], out["width"]) == (96, 160)
    assert out["image"].max() == 255 and out["image"].min() < 10  # 16-bit rescaled, then resized


def test_crop_drops_vanished_instances_and_empty_images(tmp_path):
    cfg = _cfg()
    mapper = MAPPER_REGISTRY.get("cell_instance")(cfg, True)
    record = _record(tmp_path)
    # Deterministic pipeline: crop away everything but a cell-free corner.
    mapper.augmentations = T.AugmentationList([T.CropTransform(60, 0, 20, 20)])
    out = mapper(record)
    inst = out["instances"]
    assert len(inst) == 0 and inst.image_size == (20, 20)
    assert inst.gt_masks.tensor.shape == (0, 20, 20) and inst.gt_boxes.tensor.shape == (0, 4)
    assert inst.gt_classes.dtype == torch.int64

    record["annotations"] = []
    out = build_dataset_mapper(cfg, True)(record)
    assert len(out["instances"]) == 0 and out["instances"].gt_masks.tensor.shape == (0, 128, 128)


def test_corrupt_image(tmp_path, caplog):
    record = _record(tmp_path)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    record["file_name"] = str(bad)
    cfg = _cfg()
    with caplog.at_level(logging.WARNING):
        assert build_dataset_mapper(cfg, True)(record) is None
    assert "broken.png" in caplog.text
    with pytest.raises(ImageReadError, match="broken.png"):
        build_dataset_mapper(cfg, False)(record)


def test_rotation90_transform_is_consistent():
    image = np.zeros((6, 10), np.uint8)
    image[1:3, 6:9] = 1  # x in [6, 9), y in [1, 3)
    for k in range(4):
        t = Rotation90Transform(k, 6, 10)
        rotated = t.apply_image(image)
        box = t.apply_box(np.array([[6.0, 1.0, 9.0, 3.0]]))[0]
        ys, xs = np.nonzero(rotated)
        assert tuple(box) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        np.testing.assert_array_equal(t.inverse().apply_image(rotated), image)
