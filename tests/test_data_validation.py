"""Bad training and evaluation data: every case of the table in
``iaunet_d2.data.validation``, its policy (error, dropped and counted, skipped) and
what the user is told."""
import copy
import json
import logging
import os
import re

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as d2_utils
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import BoxMode

from iaunet_d2.apps import train as train_net
from iaunet_d2.data import build as data_build
from iaunet_d2.data.build import load_checked_dicts
from iaunet_d2.data.converters import convert_label_folder
from iaunet_d2.data.dataset_mappers import build_dataset_mapper
from iaunet_d2.data.validation import DatasetError, SkipUnreadable, clean_dataset_dicts
from iaunet_d2.config import build_config
from iaunet_d2.engine import Trainer
from test_own_data import CUSTOM_IAUNET, CUSTOM_MASK_RCNN, _tiny_iaunet_opts, make_label_folder

H = W = 100
_STATS = ["MODEL.PIXEL_MEAN", "[100.0, 100.0, 100.0]", "MODEL.PIXEL_STD", "[10.0, 10.0, 10.0]",
          "INPUT.INTENSITY_NORM", "percentile"]
_DEGENERATE = "degenerate polygon (fewer than 3 points or zero area)"


# ----------------------------------------------------------------------------- helpers
def _square(x, y, s=10):
    return [x, y, x + s, y, x + s, y + s, x, y + s]


def _anno(ann_id, x=10, y=10, s=10, **fields):
    """A valid s x s square cell at (x, y), polygon segmentation, XYWH box."""
    anno = {"id": ann_id, "bbox": [x, y, s, s], "bbox_mode": BoxMode.XYWH_ABS,
            "segmentation": [_square(x, y, s)], "category_id": 0, "iscrowd": 0}
    anno.update(fields)
    return anno


def _zero_rle():
    return mask_util.encode(np.zeros((H, W), np.uint8, order="F"))


def _record(tmp_path, image_id, annotations, exists=True):
    """A dataset dict; the checks only need the file to exist, not to be an image."""
    path = tmp_path / f"img{image_id}.png"
    if exists:
        path.write_bytes(b"placeholder")
    return {"file_name": str(path), "image_id": image_id, "height": H, "width": W,
            "annotations": annotations}


def _clean(dicts, is_train=True, num_classes=1, num_queries=None):
    return clean_dataset_dicts(dicts, "cells", num_classes=num_classes, is_train=is_train,
                               num_queries=num_queries)


def _messages(caplog, level=logging.INFO):
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("iaunet_d2") and r.levelno >= level]


def _ids(record):
    return [a["id"] for a in record["annotations"]]


def _cfg(config=CUSTOM_IAUNET, *opts):
    """A frozen project config that reads no data (pixel statistics given)."""
    return build_config(config, _STATS + list(opts), prepare_data=False)


@pytest.fixture(autouse=True)
def _project_logger():
    """``train_net`` (``setup_cfg``) gives the "iaunet_d2" logger its own handlers and
    stops its propagation, which hides its records from caplog: each test starts with
    a propagating logger and leaves it as it found it."""
    project = logging.getLogger("iaunet_d2")
    propagate, level, handlers = project.propagate, project.level, list(project.handlers)
    project.propagate = True
    yield project
    project.propagate = propagate
    project.setLevel(level)
    project.handlers[:] = handlers


@pytest.fixture
def register():
    """Register dataset dicts under a DatasetCatalog name for the test only."""
    names = []

    def _register(name, dicts, classes=("cell",)):
        DatasetCatalog.register(name, lambda: copy.deepcopy(dicts))
        MetadataCatalog.get(name).set(thing_classes=list(classes))
        names.append(name)

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _coco_folder(folder, count, seed):
    """A folder of ``count`` 80x80 TIFF images with one COCO json (``cells.json``)."""
    make_label_folder(folder, count, seed=seed)
    json_file = os.path.join(folder, "cells.json")
    assert convert_label_folder(folder, folder, json_file).images == count
    return json_file


def _edit_json(json_file, edit):
    with open(json_file) as f:
        data = json.load(f)
    edit(data)
    with open(json_file, "w") as f:
        json.dump(data, f)


# ------------------------------------------------------------------ 1. missing image file
def test_missing_image_file_is_skipped_in_training_and_refused_in_evaluation(tmp_path, caplog):
    dicts = [_record(tmp_path, 1, [_anno(1)]), _record(tmp_path, 2, [_anno(2)], exists=False),
             _record(tmp_path, 3, [_anno(3)])]
    missing = dicts[1]["file_name"]

    with caplog.at_level(logging.INFO, logger="iaunet_d2"):
        kept = _clean(copy.deepcopy(dicts), is_train=True)
    assert [r["image_id"] for r in kept] == [1, 3]
    assert _messages(caplog, logging.WARNING) == [
        f"Dataset 'cells': skipped 1 image(s) whose file is missing: {missing}"]

    with pytest.raises(DatasetError) as info:
        _clean(copy.deepcopy(dicts), is_train=False)
    assert str(info.value) == (f"Dataset 'cells': 1 image file(s) missing, e.g. {missing}; "
                               "every evaluation image must exist.")

    nowhere = [_record(tmp_path, i, [_anno(i)], exists=False) for i in (4, 5)]
    with pytest.raises(DatasetError, match=r"Dataset 'cells': none of its 2 image file\(s\) exists, "
                                           r"e\.g\. .*img4\.png, .*img5\.png\.$"):
        _clean(nowhere, is_train=True)


def test_missing_file_list_is_shortened_in_the_message(tmp_path, caplog):
    dicts = [_record(tmp_path, i, [_anno(i)], exists=i == 0) for i in range(6)]
    with caplog.at_level(logging.WARNING, logger="iaunet_d2"):
        assert len(_clean(dicts)) == 1
    (line,) = _messages(caplog, logging.WARNING)
    assert line.startswith("Dataset 'cells': skipped 5 image(s) whose file is missing: ")
    assert line.endswith("img3.png and 2 more")


# ------------------------------------------------ 2. unreadable training image, end to end
def test_corrupt_training_image_is_skipped_and_training_finishes(tmp_path, caplog, _project_logger):
    folder = str(tmp_path / "coco")
    _coco_folder(folder, 3, seed=11)
    bad = os.path.join(folder, "img01.tif")
    with open(bad, "wb") as f:
        f.write(b"this is not a TIFF file" * 20)
    out = tmp_path / "run"
    # 2 iterations x 2 images draw all 3 images (a shuffled pass), the bad one included.
    # The run's logger stops propagating once set up: caplog listens to it directly
    # (records logged before may then arrive twice).
    _project_logger.addHandler(caplog.handler)
    with caplog.at_level(logging.INFO, logger="iaunet_d2"):
        rc = train_net.cli(["--config-file", CUSTOM_IAUNET, "--train-dir", folder]
                           + _tiny_iaunet_opts(out))
    assert rc == 0
    assert (out / "model_final.pth").is_file()
    skipped = [m for m in _messages(caplog, logging.WARNING) if m.startswith("Skipped ")]
    assert skipped and set(skipped) == {
        f"Skipped 1 unreadable training image(s) so far; the last: '{bad}'."}
    # The mapper names the reason; the run's log file holds the skip too.
    assert any(m.startswith("Skipping a training image:") and "img01.tif" in m
               for m in _messages(caplog, logging.WARNING))
    assert f"Skipped 1 unreadable training image(s) so far; the last: '{bad}'." in \
        (out / "log.txt").read_text()


@pytest.mark.parametrize("pixel_stats", ["given", "measured"])
def test_every_training_image_corrupt_stops_with_one_error_line(tmp_path, capsys, pixel_stats):
    folder = str(tmp_path / "coco")
    _coco_folder(folder, 2, seed=12)
    for i in range(2):
        with open(os.path.join(folder, f"img{i:02d}.tif"), "wb") as f:
            f.write(b"\x00garbage" * 30)
    out = tmp_path / "run"
    opts = _tiny_iaunet_opts(out) + (_STATS if pixel_stats == "given" else [])
    rc = train_net.cli(["--config-file", CUSTOM_IAUNET, "--train-dir", folder] + opts)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    if pixel_stats == "given":
        assert err[-1].startswith("error: None of the 2 training image(s) can be read (e.g. '")
        assert err[-1].endswith("'); see the warnings above.")
    else:  # the images are read first, to measure the pixel statistics
        assert err[-1] == ("error: Dataset 'folder_train': Cannot measure pixel statistics: "
                           "none of 2 image(s) is readable.")
    assert not (out / "model_final.pth").exists()


def test_every_training_image_corrupt_raises_from_the_trainer(tmp_path):
    folder = str(tmp_path / "coco")
    _coco_folder(folder, 2, seed=13)
    for i in range(2):
        with open(os.path.join(folder, f"img{i:02d}.tif"), "wb") as f:
            f.write(b"garbage")
    cfg = build_config(CUSTOM_IAUNET, ["DATASETS.TRAIN_DIR", folder] + _STATS
                       + _tiny_iaunet_opts(tmp_path / "run"))
    with pytest.raises(DatasetError, match=r"^None of the 2 training image\(s\) can be read"):
        Trainer(cfg).train()


# ------------------------------------------- 3. image size differs from the annotation's
def test_coco_image_whose_size_differs_from_the_json_is_skipped_in_training(tmp_path, caplog):
    folder = str(tmp_path / "coco")
    json_file = _coco_folder(folder, 3, seed=14)

    def wrong_size(data):
        data["images"][1]["height"] = 40

    _edit_json(json_file, wrong_size)
    cfg = build_config(CUSTOM_IAUNET, ["DATASETS.TRAIN_DIR", folder, "OUTPUT_DIR", str(tmp_path),
                                       "INPUT.IMAGE_SIZE", "64"] + _STATS)
    dicts = load_checked_dicts(cfg, cfg.DATASETS.TRAIN, is_train=True)
    assert len(dicts) == 3  # found when the image is read, not by the dict checks
    bad = dicts[1]["file_name"]
    assert bad.endswith("img01.tif") and dicts[1]["height"] == 40

    caplog.clear()  # (cells below the wrong height were dropped as "box outside the image")
    mapper = build_dataset_mapper(cfg, True)
    with caplog.at_level(logging.WARNING, logger="iaunet_d2"):
        assert mapper(dicts[1]) is None
        assert mapper(dicts[0])["instances"].gt_masks.tensor.shape[1:] == (64, 64)
    assert _messages(caplog, logging.WARNING) == [
        f"Skipping a training image: Mismatched image shape for image {bad}, got (80, 80), "
        "expect (80, 40). Please check the width/height in your annotation."]

    caplog.clear()
    dataset = SkipUnreadable(dicts, mapper, seed=0)
    with caplog.at_level(logging.WARNING, logger="iaunet_d2"):
        served = dataset[1]
    assert served["file_name"] in {dicts[0]["file_name"], dicts[2]["file_name"]}
    assert f"Skipped 1 unreadable training image(s) so far; the last: '{bad}'." in _messages(caplog)

    # At test time the image must be evaluated: the error is raised.
    with pytest.raises(d2_utils.SizeMismatchError, match="img01.tif"):
        build_dataset_mapper(cfg, False)(dicts[1])


# ----------------------------------------------- 4. degenerate or missing segmentations
def test_degenerate_segmentations_are_dropped_and_counted_per_reason(tmp_path, caplog):
    valid_part = _square(50, 50)
    annotations = [
        _anno(1),
        _anno(2, segmentation=[[10, 10, 20, 20]]),                  # 2 points
        _anno(3, segmentation=[[10, 10, 15, 15, 20, 20]]),          # 3 collinear points
        _anno(4, segmentation=dict(_zero_rle())),                   # compressed RLE, no pixel
        _anno(5, segmentation={"size": [H, W], "counts": [H * W]}),  # uncompressed, no pixel
        {k: v for k, v in _anno(6).items() if k != "segmentation"},  # no segmentation
        _anno(7, segmentation=[]),                                  # empty polygon list
        _anno(8, segmentation=[valid_part, [0, 0, 5, 5, 9, 9]]),    # one part degenerate
        _anno(9, segmentation=[[1, 1, 2, 2, 3]]),                   # odd number of coordinates
    ]
    dicts = [_record(tmp_path, 1, annotations), _record(tmp_path, 2, [_anno(10)])]
    with caplog.at_level(logging.INFO, logger="iaunet_d2"):
        kept = _clean(dicts)
    assert [_ids(r) for r in kept] == [[1, 8], [10]]
    assert kept[0]["annotations"][1]["segmentation"] == [valid_part]
    assert _messages(caplog, logging.WARNING) == [
        f"Dataset 'cells': dropped 7 annotation(s): 3 {_DEGENERATE}, 2 no segmentation, "
        "2 zero-area mask."]


def test_crowd_regions_and_box_only_models_keep_their_annotations(tmp_path):
    crowd = _anno(2, iscrowd=1, segmentation=dict(_zero_rle()))
    dicts = [_record(tmp_path, 1, [_anno(1), crowd])]
    assert _ids(_clean(copy.deepcopy(dicts))[0]) == [1, 2]  # crowd masks are not checked
    no_mask = [_record(tmp_path, 2, [{k: v for k, v in _anno(3).items() if k != "segmentation"}])]
    kept = clean_dataset_dicts(no_mask, "boxes", num_classes=1, is_train=True, mask_on=False)
    assert _ids(kept[0]) == [3]


def test_checked_dicts_and_histogram_hold_only_usable_annotations(tmp_path, monkeypatch, caplog):
    """COCO json -> load_checked_dicts: the kept dicts (what the class histogram counts)."""
    images, annotations = [], []
    for image_id in (1, 2):
        (tmp_path / f"img{image_id}.png").write_bytes(b"placeholder")
        images.append({"id": image_id, "file_name": f"img{image_id}.png", "height": H, "width": W})
    good = [(1, _square(10, 10)), (1, _square(40, 40)), (2, _square(20, 60))]
    bad = [(1, [[10, 10, 15, 15, 20, 20]]), (2, {"size": [H, W], "counts": [H * W]}), (2, None)]
    for k, (image_id, segmentation) in enumerate(good + bad, 1):
        anno = {"id": k, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                "bbox": [10, 10, 10, 10], "area": 100}
        if segmentation is not None:
            anno["segmentation"] = [segmentation] if k <= len(good) else segmentation
        annotations.append(anno)
    annotations.append({"id": 7, "image_id": 2, "category_id": 1, "iscrowd": 0,
                        "bbox": [150, 150, 10, 10], "area": 100,
                        "segmentation": [_square(150, 150)]})  # box outside the image
    json_file = tmp_path / "cells.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                     "categories": [{"id": 1, "name": "cell"}]}))
    register_coco_instances("validation_histogram", {}, str(json_file), str(tmp_path))
    counted = []
    monkeypatch.setattr(data_build, "print_instances_class_histogram",
                        lambda dicts, classes: counted.append((copy.deepcopy(dicts), classes)))
    try:
        with caplog.at_level(logging.WARNING, logger="iaunet_d2"):
            dicts = load_checked_dicts(_cfg(), ["validation_histogram"], is_train=True)
    finally:
        DatasetCatalog.remove("validation_histogram")
        MetadataCatalog.remove("validation_histogram")
    assert [len(d["annotations"]) for d in dicts] == [2, 1]
    assert _messages(caplog, logging.WARNING) == [
        f"Dataset 'validation_histogram': dropped 4 annotation(s): 1 box outside the image, "
        f"1 {_DEGENERATE}, 1 no segmentation, 1 zero-area mask."]
    ((histogram_dicts, classes),) = counted
    assert classes == ["cell"]
    assert sum(len(d["annotations"]) for d in histogram_dicts) == len(good)
    assert all(a["category_id"] == 0 for d in histogram_dicts for a in d["annotations"])


# ------------------------------------------------------------ 5. boxes outside the image
def test_boxes_entirely_outside_the_image_are_dropped_partly_inside_kept(tmp_path, caplog):
    xyxy = BoxMode.XYXY_ABS
    annotations = [
        _anno(1, bbox=[150, 20, 10, 10]),                    # right of the image
        _anno(2, bbox=[95, 95, 10, 10]),                     # partly inside
        _anno(3, bbox=[-30, -30, 20, 20]),                   # above-left, ends at -10
        _anno(4, bbox=[W, 10, 5, 5]),                        # starts at the right edge
        _anno(5, bbox=[0, 120, 10, 130], bbox_mode=xyxy),    # below, XYXY
        _anno(6, bbox=[-5, -5, 5, 5], bbox_mode=xyxy),       # partly inside, XYXY
        _anno(7, bbox=[-20, 10, 0, 20], bbox_mode=xyxy),     # ends at x = 0, XYXY
        _anno(8, bbox=[20, 20, 30, 30], bbox_mode=xyxy),     # inside, XYXY
    ]
    with caplog.at_level(logging.INFO, logger="iaunet_d2"):
        kept = _clean([_record(tmp_path, 1, annotations)])
    assert _ids(kept[0]) == [2, 6, 8]
    assert _messages(caplog, logging.WARNING) == [
        "Dataset 'cells': dropped 5 annotation(s): 5 box outside the image."]


def test_box_and_segmentation_problems_are_counted_together(tmp_path, caplog):
    annotations = [_anno(1), _anno(2, bbox=[200, 200, 5, 5]), _anno(3, segmentation=[[1, 1, 2, 2]])]
    with caplog.at_level(logging.WARNING, logger="iaunet_d2"):
        _clean([_record(tmp_path, 1, annotations)])
    assert _messages(caplog, logging.WARNING) == [
        f"Dataset 'cells': dropped 2 annotation(s): 1 box outside the image, 1 {_DEGENERATE}."]


# ------------------------------------------------------------- 6. images without cells
def test_images_without_annotations_are_counted_and_kept(tmp_path, caplog):
    dicts = [_record(tmp_path, 1, [_anno(1)]), _record(tmp_path, 2, []),
             _record(tmp_path, 3, [_anno(3, iscrowd=1)])]  # a crowd region is no cell
    with caplog.at_level(logging.INFO, logger="iaunet_d2"):
        kept = _clean(copy.deepcopy(dicts), is_train=True)
    assert [r["image_id"] for r in kept] == [1, 2, 3]
    assert _messages(caplog) == [
        "Dataset 'cells': 2 of 3 image(s) have no cell annotation (kept as 'no cell' examples)."]


def test_training_without_any_cell_is_refused_evaluation_is_not(tmp_path, caplog):
    empty = [_record(tmp_path, 1, []), _record(tmp_path, 2, [])]
    with pytest.raises(DatasetError) as info:
        _clean(copy.deepcopy(empty), is_train=True)
    assert str(info.value) == ("Dataset 'cells': none of its 2 image(s) has a usable cell "
                               "annotation; nothing to learn from.")

    all_dropped = [_record(tmp_path, 1, [_anno(1, segmentation=[[0, 0, 1, 1]])]),
                   _record(tmp_path, 2, [_anno(2, bbox=[300, 0, 5, 5])])]
    with pytest.raises(DatasetError, match=re.escape("(2 dropped as unusable); nothing to learn from.")):
        _clean(all_dropped, is_train=True)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="iaunet_d2"):
        assert len(_clean(copy.deepcopy(empty), is_train=False)) == 2
    assert _messages(caplog) == ["Dataset 'cells': 2 of 2 image(s) have no cell annotation."]


@pytest.mark.parametrize("filter_empty", [True, False])
def test_filter_empty_annotations_leaves_out_images_without_cells(tmp_path, caplog, register,
                                                                  filter_empty):
    register("validation_empty", [_record(tmp_path, 1, [_anno(1)]), _record(tmp_path, 2, []),
                                  _record(tmp_path, 3, [_anno(3)])])
    cfg = _cfg(CUSTOM_IAUNET, "DATALOADER.FILTER_EMPTY_ANNOTATIONS", str(filter_empty))
    with caplog.at_level(logging.INFO, logger="iaunet_d2"):
        train = load_checked_dicts(cfg, ["validation_empty"], is_train=True)
        test = load_checked_dicts(cfg, ["validation_empty"], is_train=False)
    assert [r["image_id"] for r in train] == ([1, 3] if filter_empty else [1, 2, 3])
    assert [r["image_id"] for r in test] == [1, 2, 3]  # evaluation keeps every image
    left_out = [m for m in _messages(caplog) if m.startswith("Left out")]
    assert left_out == (["Left out 1 training image(s) without cell annotations "
                         "(DATALOADER.FILTER_EMPTY_ANNOTATIONS)."] if filter_empty else [])


# ---------------------------------------------------------------- 7. duplicate image ids
def test_duplicate_image_ids_in_dicts_name_the_ids_and_both_files(tmp_path):
    dicts = [_record(tmp_path, 5, [_anno(1)]), _record(tmp_path, 6, [_anno(2)]),
             _record(tmp_path, 7, [_anno(3)])]
    dicts[2]["image_id"] = 5
    first, second = dicts[0]["file_name"], dicts[2]["file_name"]
    for is_train in (True, False):
        with pytest.raises(DatasetError) as info:
            _clean(copy.deepcopy(dicts), is_train=is_train)
        assert str(info.value) == (f"Dataset 'cells': duplicate image id(s) 5 ({first}, {second}); "
                                   "every image needs its own id.")


def test_duplicate_image_ids_in_a_coco_json_folder(tmp_path, capsys):
    folder = str(tmp_path / "coco")
    json_file = _coco_folder(folder, 3, seed=15)

    def duplicate(data):
        data["images"][2]["id"] = data["images"][0]["id"]
        for anno in data["annotations"]:
            anno["image_id"] = min(anno["image_id"], 2)

    _edit_json(json_file, duplicate)
    with pytest.raises(DatasetError) as info:
        build_config(CUSTOM_IAUNET, ["DATASETS.TRAIN_DIR", folder, "OUTPUT_DIR", str(tmp_path)])
    assert str(info.value) == (f"'{json_file}': duplicate image id(s) [1]; every image needs "
                               "its own id.")

    rc = train_net.cli(["--config-file", CUSTOM_IAUNET, "--train-dir", folder,
                        "OUTPUT_DIR", str(tmp_path / "run")])
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {info.value}"


# ------------------------------------------------------- 8. category the model does not know
def test_unknown_category_names_file_annotation_and_setting(tmp_path):
    dicts = [_record(tmp_path, 1, [_anno(1), _anno(42, category_id=1)])]
    with pytest.raises(DatasetError) as info:
        _clean(copy.deepcopy(dicts), num_classes=1)
    assert str(info.value) == (
        f"Dataset 'cells': annotation 42 of '{dicts[0]['file_name']}' has category 1, but the "
        "model knows 1 class(es) (0..0); set MODEL.IAUNET.NUM_CLASSES (IAUNet), "
        "MODEL.MASK2FORMER.NUM_CLASSES (Mask2Former) or MODEL.ROI_HEADS.NUM_CLASSES (R-CNN) "
        "to the dataset's number of categories.")
    with pytest.raises(DatasetError, match="annotation 3 of .* has category -1"):
        _clean([_record(tmp_path, 2, [_anno(3, category_id=-1)])], num_classes=1)
    assert _ids(_clean(dicts, num_classes=2)[0]) == [1, 42]

    # Without an annotation id (e.g. any COCO json registered elsewhere): its place.
    unnamed = [{k: v for k, v in a.items() if k != "id"} for a in dicts[0]["annotations"]]
    with pytest.raises(DatasetError, match=r"annotation #2 of '.*img1\.png' has category 1"):
        _clean([dict(dicts[0], annotations=unnamed)], num_classes=1)


def _two_category_folder(tmp_path):
    folder = str(tmp_path / "coco")
    json_file = _coco_folder(folder, 2, seed=16)

    def add_debris(data):
        data["categories"].append({"id": 2, "name": "debris"})
        data["annotations"][-1]["category_id"] = 2

    _edit_json(json_file, add_debris)
    with open(json_file) as f:
        last = json.load(f)["annotations"][-1]
    return folder, last


def test_coco_json_with_two_categories_needs_two_classes(tmp_path):
    folder, debris = _two_category_folder(tmp_path)
    opts = ["DATASETS.TRAIN_DIR", folder, "OUTPUT_DIR", str(tmp_path)] + _STATS
    cfg = build_config(CUSTOM_IAUNET, opts)
    assert MetadataCatalog.get("folder_train").thing_classes == ["cell", "debris"]
    with pytest.raises(DatasetError) as info:
        load_checked_dicts(cfg, cfg.DATASETS.TRAIN, is_train=True)
    message = str(info.value)
    assert message.startswith(f"Dataset 'folder_train': annotation {debris['id']} of '")
    assert "img01.tif' has category 1, but the model knows 1 class(es)" in message
    assert "MODEL.IAUNET.NUM_CLASSES" in message

    cfg = build_config(CUSTOM_IAUNET, opts + ["MODEL.IAUNET.NUM_CLASSES", "2"])
    dicts = load_checked_dicts(cfg, cfg.DATASETS.TRAIN, is_train=True)
    assert sorted({a["category_id"] for d in dicts for a in d["annotations"]}) == [0, 1]


def test_coco_annotation_of_a_category_missing_from_the_json(tmp_path, capsys):
    folder = str(tmp_path / "coco")
    json_file = _coco_folder(folder, 2, seed=17)

    def stray(data):
        data["annotations"][0]["category_id"] = 9

    _edit_json(json_file, stray)
    with pytest.raises(DatasetError, match=r"category_id=9 .*does not exist in 'categories'"):
        build_config(CUSTOM_IAUNET, ["DATASETS.TRAIN_DIR", folder, "OUTPUT_DIR", str(tmp_path)])
    rc = train_net.cli(["--config-file", CUSTOM_IAUNET, "--train-dir", folder,
                        "OUTPUT_DIR", str(tmp_path / "run")])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2
    assert last.startswith(f"error: Cannot load '{json_file}': Encountered category_id=9")


# ------------------------------------------------------------ 9. more cells than queries
def test_more_cells_than_queries_warns_with_the_image_and_count(tmp_path, caplog):
    crowded = _record(tmp_path, 1, [_anno(k, x=5 + 12 * k, y=5) for k in range(6)])
    sparse = _record(tmp_path, 2, [_anno(9)])
    with caplog.at_level(logging.WARNING, logger="iaunet_d2"):
        _clean([copy.deepcopy(crowded), copy.deepcopy(sparse)], num_queries=5)
    assert _messages(caplog, logging.WARNING) == [
        f"Dataset 'cells': '{crowded['file_name']}' has 6 cells but the model predicts at most 5 "
        "per image (MODEL.IAUNET.NUM_QUERIES): raise NUM_QUERIES, or cut the images into crops "
        "with at most 5 cells (the converters' --max-instances)."]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="iaunet_d2"):
        _clean([copy.deepcopy(crowded)], num_queries=6)
        _clean([copy.deepcopy(crowded)], num_queries=None)
    assert _messages(caplog, logging.WARNING) == []


@pytest.mark.parametrize("config, warned", [(CUSTOM_IAUNET, True), (CUSTOM_MASK_RCNN, False)],
                         ids=["iaunet", "mask_rcnn"])
def test_query_warning_only_for_iaunet_configs(tmp_path, caplog, register, config, warned):
    register("validation_crowded", [_record(tmp_path, 1, [_anno(k, x=5 + 12 * k) for k in range(4)])])
    cfg = _cfg(config, "MODEL.IAUNET.NUM_QUERIES", "3")
    with caplog.at_level(logging.WARNING, logger="iaunet_d2"):
        assert len(load_checked_dicts(cfg, ["validation_crowded"], is_train=True)) == 1
    hits = [m for m in _messages(caplog, logging.WARNING) if "--max-instances" in m]
    assert len(hits) == (1 if warned else 0)
    if warned:
        assert "has 4 cells but the model predicts at most 3 per image" in hits[0]


# ---------------------------------------------------------------- 10. SkipUnreadable
class _FlakyMapper:
    """Returns None for the records of ``bad`` image ids, else the image id."""

    def __init__(self, bad):
        self.bad = set(bad)
        self.calls = []

    def __call__(self, record):
        self.calls.append(record["image_id"])
        return None if record["image_id"] in self.bad else {"image_id": record["image_id"]}


def test_skip_unreadable_serves_other_images_and_counts_skips(caplog):
    dicts = [{"file_name": f"f{i}.tif", "image_id": i} for i in range(6)]
    mapper = _FlakyMapper(bad={1, 4})
    dataset = SkipUnreadable(dicts, mapper, seed=3)
    assert len(dataset) == 6
    with caplog.at_level(logging.WARNING, logger="iaunet_d2"):
        assert [dataset[i]["image_id"] for i in (0, 2, 3, 5)] == [0, 2, 3, 5]
        assert _messages(caplog, logging.WARNING) == []
        first = dataset[1]["image_id"]
        second = dataset[4]["image_id"]
        again = dataset[1]["image_id"]
    assert {first, second, again} <= {0, 2, 3, 5}
    # One line per rejection (a replacement may be bad too), with the number of distinct
    # bad images so far; a known-bad image is tried again when asked for.
    expected, seen = [], set()
    for image_id in mapper.calls:
        if image_id in mapper.bad:
            seen.add(image_id)
            expected.append(f"Skipped {len(seen)} unreadable training image(s) so far; "
                            f"the last: 'f{image_id}.tif'.")
    assert _messages(caplog, logging.WARNING) == expected
    assert expected[0].startswith("Skipped 1 ") and expected[-1].startswith("Skipped 2 ")
    assert mapper.calls.count(1) >= 2 and mapper.calls.count(4) >= 1

    # The same seed draws the same replacements.
    replay = SkipUnreadable(dicts, _FlakyMapper(bad={1, 4}), seed=3)
    assert [replay[i]["image_id"] for i in (0, 2, 3, 5, 1, 4, 1)] == [0, 2, 3, 5, first, second, again]


def test_skip_unreadable_stops_when_no_image_is_readable(caplog):
    dicts = [{"file_name": f"f{i}.tif", "image_id": i} for i in range(3)]
    mapper = _FlakyMapper(bad={0, 1, 2})
    with caplog.at_level(logging.WARNING, logger="iaunet_d2"), pytest.raises(DatasetError) as info:
        SkipUnreadable(dicts, mapper, seed=0)[0]
    assert re.fullmatch(r"None of the 3 training image\(s\) can be read \(e\.g\. 'f\d\.tif'\); "
                        r"see the warnings above\.", str(info.value))
    assert sorted(mapper.calls) == [0, 1, 2]  # each image tried once
    assert [m.split(";")[0] for m in _messages(caplog, logging.WARNING)] == [
        f"Skipped {n} unreadable training image(s) so far" for n in (1, 2, 3)]
