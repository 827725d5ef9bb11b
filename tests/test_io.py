"""iaunet_d2.io: listing and pairing image files, fingerprints, atomic writers, RLE."""
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest

from iaunet_d2.io.images import fingerprint_files, list_images, read_raw_image
from iaunet_d2.io.labels import pair_with_labels
from iaunet_d2.io.rle import annotation_mask, crop_annotation, crop_to_rle, mask_to_rle
from iaunet_d2.io.writers import write_image, write_json


def _touch(folder, *names):
    for name in names:
        (folder / name).write_bytes(b"x")


def test_list_images_takes_image_files_only_sorted(tmp_path):
    _touch(tmp_path, "b.TIF", "a.png", "notes.txt", "c.jpeg")
    (tmp_path / "sub.png").mkdir()  # a folder named like an image
    assert [os.path.basename(p) for p in list_images(str(tmp_path))] == ["a.png", "b.TIF", "c.jpeg"]


def test_pairing_leaves_out_the_label_images_of_other_images(tmp_path):
    _touch(tmp_path, "a.tif", "a_masks.tif", "b.png", "c.png", "c_label.PNG")
    pairs, labels = pair_with_labels(list_images(str(tmp_path)), str(tmp_path), ("_label", "_masks"))
    names = {os.path.basename(k): v and os.path.basename(v) for k, v in pairs.items()}
    assert names == {"a.tif": "a_masks.tif", "b.png": None, "c.png": "c_label.PNG"}
    assert [os.path.basename(p) for p in labels] == ["a_masks.tif", "c_label.PNG"]


def test_fingerprint_changes_with_the_files(tmp_path):
    _touch(tmp_path, "a.png")
    paths = [str(tmp_path / "a.png")]
    first = fingerprint_files(paths)
    assert fingerprint_files(paths) == first != fingerprint_files(paths, salt="RGB")
    (tmp_path / "a.png").write_bytes(b"longer")
    assert fingerprint_files(paths) != first
    assert fingerprint_files(paths + [str(tmp_path / "gone.png")]) != fingerprint_files(paths)


@pytest.mark.parametrize("name, array", [
    ("gray16.tif", np.arange(12 * 10, dtype=np.uint16).reshape(12, 10)),
    ("rgb.png", np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)),
    ("rgba.png", np.random.default_rng(1).integers(0, 256, (9, 7, 4), dtype=np.uint8)),
])
def test_written_images_read_back_as_written(tmp_path, name, array):
    path = str(tmp_path / "out" / name)
    write_image(array, path)
    assert np.array_equal(read_raw_image(path), array)  # colour in RGB(A) order both ways
    assert os.listdir(tmp_path / "out") == [name]


def test_write_json_is_plain_json(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_json({"a": [1, 2]}, str(path), indent=1)
    assert path.read_text() == json.dumps({"a": [1, 2]}, indent=1)
    assert os.listdir(tmp_path / "sub") == ["a.json"]


def test_crop_annotation_agrees_with_pycocotools():
    rng = np.random.default_rng(2)
    mask = np.zeros((40, 30), bool)
    mask[5:20, 3:17] = rng.random((15, 14)) > 0.3
    mask[5, 3] = mask[19, 16] = True
    crop = mask[5:20, 3:17]
    anno = crop_annotation(crop, 5, 3, 40, 30)
    rle = mask_to_rle(mask)
    assert list(anno) == ["segmentation", "area", "bbox"]
    assert anno["segmentation"] == rle
    assert anno["area"] == int(mask_util.area(rle))
    assert anno["bbox"] == [float(v) for v in mask_util.toBbox(rle)]
    assert crop_to_rle(np.zeros((3, 3), bool), 0, 0, 40, 30) == mask_to_rle(np.zeros((40, 30), bool))
    assert np.array_equal(annotation_mask({"segmentation": rle}, 40, 30), mask)


def test_annotation_mask_of_polygons_ignores_degenerate_ones():
    square = [2, 2, 8, 2, 8, 8, 2, 8]
    mask = annotation_mask({"segmentation": [square, [1, 1, 2, 2]]}, 12, 12)
    assert mask[3:8, 3:8].all() and not mask[0].any() and not mask[:, 10:].any()
    assert not annotation_mask({"segmentation": [[1, 1, 2, 2]]}, 12, 12).any()
