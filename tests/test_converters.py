"""Dataset converters: label images, LIVECell-crop and EVICAN2 to COCO json."""
import importlib.util
import json
import os

import iaunet_d2  # noqa: F401
import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import tifffile
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import load_coco_json

from iaunet_d2.data import converters as conv
from iaunet_d2.data.datasets import DATASETS
from iaunet_d2.io.rle import annotation_mask


def _disc_labels(shape, cells, dtype=np.uint16):
    """Label image with discs: cells = [(id, cy, cx, r)]; later discs overwrite."""
    labels = np.zeros(shape, dtype=dtype)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for label_id, cy, cx, r in cells:
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = label_id
    return labels


def _masks_by_label(labels):
    return {int(i): labels == i for i in np.unique(labels) if i != 0}


def _register(name, json_file, image_root):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, dataset_name=name))


def _decode(segmentation, height, width):
    rle = dict(segmentation)
    if isinstance(rle["counts"], str):
        rle["counts"] = rle["counts"].encode("ascii")
    return mask_util.decode(rle).astype(bool)


def test_label_folder_round_trip_is_exact(tmp_path):
    images, labels_dir = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels_dir.mkdir()
    rng = np.random.default_rng(0)
    originals = {
        # touching cells, a cell on the image border, non-contiguous ids, 16-bit image
        "a": _disc_labels((60, 80), [(3, 20, 20, 9), (7, 20, 36, 8), (40, 55, 79, 10), (12, 45, 30, 3)]),
        "b": _disc_labels((50, 50), [(1, 10, 10, 5), (2, 30, 30, 12)], dtype=np.uint8),
    }
    tifffile.imwrite(images / "a.tif", rng.integers(0, 60000, (60, 80)).astype(np.uint16))
    tifffile.imwrite(labels_dir / "a_label.tiff", originals["a"])
    cv2.imwrite(str(images / "b.png"), rng.integers(0, 255, (50, 50, 3)).astype(np.uint8))
    cv2.imwrite(str(labels_dir / "b.png"), originals["b"])
    out = tmp_path / "coco.json"

    report = conv.convert_label_folder(str(images), str(labels_dir), str(out))
    assert not report.failed and report.images == 2 and report.annotations == 6
    assert any("not contiguous" in w and "a_label.tiff" in w for w in report.warnings)

    _register("_test_roundtrip", str(out), str(images))
    try:
        dicts = DatasetCatalog.get("_test_roundtrip")
    finally:
        DatasetCatalog.remove("_test_roundtrip")
    assert [os.path.basename(d["file_name"]) for d in dicts] == ["a.tif", "b.png"]
    for record in dicts:
        original = originals[os.path.splitext(os.path.basename(record["file_name"]))[0]]
        expected = _masks_by_label(original)
        got = [_decode(a["segmentation"], record["height"], record["width"]) for a in record["annotations"]]
        assert len(got) == len(expected)
        # label order is kept, so the k-th annotation is the k-th smallest id
        for mask, label_id in zip(got, sorted(expected)):
            assert np.array_equal(mask, expected[label_id])
        # and painting them back gives the labels up to the relabelling
        painted = conv.annotations_to_label_image(record["annotations"], record["height"], record["width"])
        relabelled, _, _ = conv.relabel_sequential(original)
        assert np.array_equal(painted, relabelled)
        for a in record["annotations"]:
            x, y, w, h = a["bbox"]
            ys, xs = np.nonzero(_decode(a["segmentation"], record["height"], record["width"]))
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)


def test_bad_label_files_are_reported_and_skipped(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    ok = _disc_labels((40, 40), [(1, 20, 20, 6)])
    for stem in ("good", "empty", "small", "trunc", "stack", "many"):
        cv2.imwrite(str(images / f"{stem}.png"), np.full((40, 40), 100, np.uint8))
    tifffile.imwrite(images / "good_mask.tif", ok)
    tifffile.imwrite(images / "empty_mask.tif", np.zeros((40, 40), np.uint16))
    tifffile.imwrite(images / "small_mask.tif", ok[:30])
    data = (tifffile.imwrite(tmp_path / "t.tif", ok), open(tmp_path / "t.tif", "rb").read())[1]
    (images / "trunc_mask.tif").write_bytes(data[: len(data) // 2])
    tifffile.imwrite(images / "stack_mask.tif", np.stack([ok, ok, ok * 2]))
    tifffile.imwrite(images / "many_mask.tif", _disc_labels((40, 40), [(i + 1, 5 + 10 * (i // 4), 5 + 10 * (i % 4), 3)
                                                                       for i in range(16)]))
    out = tmp_path / "out" / "c.json"
    report = conv.convert_label_folder(str(images), str(images), str(out), max_instances=10)
    failed = dict(report.failed)
    assert set(os.path.basename(p) for p in failed) == {"small.png", "trunc.png", "stack.png"}
    assert "small_mask.tif" in failed[str(images / "small.png")] and "small.png" in failed[str(images / "small.png")]
    assert "trunc_mask.tif" in failed[str(images / "trunc.png")]
    assert "2-D" in failed[str(images / "stack.png")]
    assert [os.path.basename(p) for p, _ in report.skipped] == ["many.png"]
    assert any("empty_mask.tif" in w and "no cells" in w for w in report.warnings)
    coco = json.load(open(out))
    assert sorted(im["file_name"] for im in coco["images"]) == ["empty.png", "good.png"]
    assert len(coco["annotations"]) == 1
    assert not [n for n in os.listdir(out.parent) if n.endswith(".tmp")]


def _script(repo_root, name):
    """Import datasets/<name>.py (in-process: a subprocess would pay the imports again)."""
    spec = importlib.util.spec_from_file_location(f"_script_{name}", os.path.join(repo_root, "datasets", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_labels_to_coco_script(tmp_path, repo_root, capsys):
    images = tmp_path / "im"
    images.mkdir()
    cv2.imwrite(str(images / "x.png"), np.zeros((20, 20), np.uint8))
    cv2.imwrite(str(images / "x_label.png"), _disc_labels((20, 20), [(1, 10, 10, 4)], np.uint8))
    cv2.imwrite(str(images / "y.png"), np.zeros((20, 20), np.uint8))  # no label image
    out = tmp_path / "a.json"
    status = _script(repo_root, "labels_to_coco").main(
        ["--images", str(images), "--output", str(out), "--max-instances", "5"])
    stderr = capsys.readouterr().err
    assert status == 1, stderr
    assert "y.png" in stderr and "no label image" in stderr
    assert len(json.load(open(out))["annotations"]) == 1


def _polygon(cy, cx, r, n=16):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).ravel().round(2).tolist()


def test_livecell_crop(tmp_path):
    root = tmp_path / "livecell"
    (root / "images" / "A172").mkdir(parents=True)
    image = (np.arange(520 * 704) % 251).astype(np.uint8).reshape(520, 704)
    tifffile.imwrite(root / "images" / "A172" / "A172_1.tif", image)  # found in a sub-folder
    cells = [(100, 100, 20), (256, 510, 30), (500, 300, 15), (260, 600, 12)]
    annotations = {str(k): {"id": k + 1, "image_id": 7, "category_id": 1, "iscrowd": 0,
                            "segmentation": [_polygon(*c)], "bbox": [0, 0, 1, 1], "area": 1}
                   for k, c in enumerate(cells)}  # LIVECell's dict-of-annotations variant
    src = {"images": [{"id": 7, "file_name": "A172_1.tif", "height": 520, "width": 704}],
           "annotations": annotations, "categories": [{"id": 1, "name": "cell"}]}
    json_in = tmp_path / "livecell_coco_train.json"
    json_in.write_text(json.dumps(src))
    out_json = tmp_path / "crop" / "annotations" / "train.json"
    out_images = tmp_path / "crop" / "images" / "train"

    report = conv.convert_livecell_crop(str(json_in), str(root / "images"), str(out_images), str(out_json))
    assert not report.failed
    coco = json.load(open(out_json))
    # 704x520 -> crops at x in {0, 192}, y in {0, 8}
    assert sorted(tuple(im["crop_yx"]) for im in coco["images"]) == [(0, 0), (0, 192), (8, 0), (8, 192)]
    full = [annotation_mask(a, 520, 704) for a in annotations.values()]
    for im in coco["images"]:
        y0, x0 = im["crop_yx"]
        assert (im["height"], im["width"]) == (512, 512)
        assert np.array_equal(tifffile.imread(out_images / im["file_name"]), image[y0:y0 + 512, x0:x0 + 512])
        got = [_decode(a["segmentation"], 512, 512) for a in coco["annotations"] if a["image_id"] == im["id"]]
        expected = [m[y0:y0 + 512, x0:x0 + 512] for m in full if m[y0:y0 + 512, x0:x0 + 512].any()]
        assert len(got) == len(expected)  # every visible part is kept, clipped
        assert all(np.array_equal(g, e) for g, e in zip(got, expected))

    # at most 1 cell per crop: crops holding more are left out; a fraction rule drops slivers
    report = conv.convert_livecell_crop(str(json_in), str(root / "images"), str(out_images),
                                        str(out_json), max_instances=1, min_visible_fraction=0.5)
    coco = json.load(open(out_json))
    assert all(sum(a["image_id"] == im["id"] for a in coco["annotations"]) == 1 for im in coco["images"])
    assert any("max_instances" in why for _, why in report.skipped)


def _evican_json(images, with_nucleus=True):
    cats = [{"id": 1, "name": "Cell"}] + ([{"id": 2, "name": "Nucleus"}] if with_nucleus else [])
    annos = []
    for im in images:
        for k in range(2):
            for cat in cats:
                annos.append({"id": len(annos) + 1, "image_id": im["id"], "category_id": cat["id"], "iscrowd": 0,
                              "segmentation": [_polygon(20 + 20 * k, 20, 6 if cat["id"] == 1 else 3)],
                              "bbox": [10, 10, 12, 12], "area": 100})
    return {"images": images, "annotations": annos, "categories": cats}


def test_evican2(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    img = lambda i, name: {"id": i, "file_name": name, "height": 64, "width": 64}  # noqa: E731
    for split in ("train", "val"):
        data = _evican_json([img(1, f"{split}_1.jpg"), img(2, f"{split}_Background_2.jpg")])
        (raw / f"instances_{split}2019_EVICAN2.json").write_text(json.dumps(data))
    combined = _evican_json([img(1, "e_easy_1.jpg"), img(2, "e_medium_2.jpg"), img(3, "e_3.jpg"),
                             dict(img(4, "x.jpg"), difficulty="difficult"), img(5, "e_difficult_Background.jpg")])
    (tmp_path / "eval.json").write_text(json.dumps(combined))
    root = tmp_path / "root"

    report = conv.convert_evican2(str(raw), str(root), eval_json=str(tmp_path / "eval.json"))
    assert not report.failed
    skipped = dict(report.skipped)
    assert "difficulty unknown" in skipped["e_3.jpg"] and skipped["train_Background_2.jpg"] == "background image"

    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    for split, difficulty in (("train", "easy"), ("test", "easy"), ("test", "medium"), ("test", "difficult")):
        json_file, image_root = DATASETS[f"evican2_{difficulty}"].splits[split]
        data = json.load(open(root / json_file))
        assert data["categories"] == [conv.CELL_CATEGORY]
        assert {a["category_id"] for a in data["annotations"]} == {1}
        assert all("background" not in im["file_name"].lower() for im in data["images"])
        (root / image_root).mkdir(parents=True, exist_ok=True)
    names = lambda n: [os.path.basename(d["file_name"]) for d in DatasetCatalog.get(n)]  # noqa: E731
    assert names("evican2_easy_test") == ["e_easy_1.jpg"]
    assert names("evican2_difficult_test") == ["x.jpg"]
    assert names("evican2_medium_train") == ["train_1.jpg"]
    assert all(len(d["annotations"]) == 2 for d in DatasetCatalog.get("evican2_medium_test"))


def _stardist_images():
    spec = importlib.util.find_spec("stardist")
    if spec is None:
        pytest.skip("stardist is not installed (pip install --no-deps stardist)")
    # Located without importing stardist, whose __init__ pulls in csbdeep/tensorflow.
    folder = os.path.join(list(spec.submodule_search_locations)[0], "data", "images")
    return os.path.join(folder, "img2d.tif"), os.path.join(folder, "mask2d.tif")


def test_stardist_nuclei_convert_exactly(tmp_path):
    image_path, mask_path = _stardist_images()
    images = tmp_path / "images"
    images.mkdir()
    os.symlink(image_path, images / "img2d.tif")
    os.symlink(mask_path, images / "img2d_mask.tif")  # mask2d.tif is not named after its image
    out = tmp_path / "dsb.json"
    report = conv.convert_label_folder(str(images), str(images), str(out))
    assert report.images == 1 and report.annotations == 125 and not report.failed
    assert any("not contiguous" in w for w in report.warnings)  # ids go up to 183
    coco = json.load(open(out))
    labels = tifffile.imread(mask_path)
    relabelled, n, _ = conv.relabel_sequential(labels)
    assert n == 125
    assert np.array_equal(conv.annotations_to_label_image(coco["annotations"], 512, 512), relabelled)


def test_livecell_and_evican_scripts(tmp_path, repo_root, capsys):
    root = tmp_path / "root"
    images = root / "livecell" / "images" / "livecell_train_val_images"
    images.mkdir(parents=True)
    tifffile.imwrite(images / "a.tif", np.zeros((520, 704), np.uint8))
    src = {"images": [{"id": 1, "file_name": "a.tif", "height": 520, "width": 704}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                            "segmentation": [_polygon(100, 100, 10)], "bbox": [0, 0, 1, 1], "area": 1}],
           "categories": [{"id": 1, "name": "cell"}]}
    (root / "livecell" / "annotations").mkdir()
    (root / "livecell" / "annotations" / "livecell_coco_train.json").write_text(json.dumps(src))
    status = _script(repo_root, "livecell_crop").main(["--root", str(root), "--splits", "train"])
    assert status == 0, capsys.readouterr().err
    coco = json.load(open(root / "livecell_crop" / "annotations" / "train.json"))
    assert [im["file_name"] for im in coco["images"]] == ["a_y0_x0.tif", "a_y8_x0.tif"]  # y0 = 520 - 512
    assert (root / "livecell_crop" / "images" / "train" / "a_y0_x0.tif").is_file()

    raw = tmp_path / "raw"
    raw.mkdir()
    status = _script(repo_root, "evican2").main(["--annotations", str(raw), "--root", str(root)])
    err = capsys.readouterr().err
    assert status == 1 and "instances_train2019_EVICAN2.json" in err and "--eval-json" in err


@pytest.mark.parametrize("case", ["missing label folder", "missing livecell json",
                                  "broken livecell json", "missing evican2 folder"])
def test_converter_scripts_end_bad_inputs_in_one_line_without_writing(tmp_path, repo_root, capsys,
                                                                      case):
    root = tmp_path / "root"
    root.mkdir()
    if case == "missing label folder":
        images = tmp_path / "im"
        images.mkdir()
        cv2.imwrite(str(images / "x.png"), np.zeros((20, 20), np.uint8))
        out = tmp_path / "a.json"
        status = _script(repo_root, "labels_to_coco").main(
            ["--images", str(images), "--labels", str(tmp_path / "nolabels"), "--output", str(out)])
        expected = "Label folder"
    elif case.endswith("livecell json"):
        # train's json is fine, val's is missing or broken: nothing at all is converted.
        (root / "livecell" / "annotations").mkdir(parents=True)
        (root / "livecell" / "annotations" / "livecell_coco_train.json").write_text(
            json.dumps({"images": [], "annotations": [], "categories": []}))
        if case.startswith("broken"):
            (root / "livecell" / "annotations" / "livecell_coco_val.json").write_text("{not json")
        status = _script(repo_root, "livecell_crop").main(
            ["--root", str(root), "--splits", "val", "train"])
        expected = "livecell_coco_val.json"
    else:
        status = _script(repo_root, "evican2").main(
            ["--annotations", str(tmp_path / "raw"), "--root", str(root)])
        expected = "raw"
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert status == 2
    assert len(errors) == 1 and expected in errors[0], errors
    if case == "missing label folder":
        assert not out.exists()
    else:
        assert not (root / "livecell_crop").exists()
        assert not (root / "evican2" / "annotations").exists() or not any(
            (root / "evican2" / "annotations").iterdir())
