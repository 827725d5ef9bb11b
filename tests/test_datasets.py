"""Dataset registration: names, metadata, missing data and lazy root."""
import os
import subprocess
import sys

import pytest

import iaunet_d2  # noqa: F401  (registers everything)
from detectron2.data import DatasetCatalog, MetadataCatalog
from iaunet_d2.data.datasets import (
    DATASETS,
    REGISTERED_DATASETS,
    DatasetNotFoundError,
    dataset_paths,
    prepare_dataset,
)

EXPECTED = (
    [f"revvity25_{s}" for s in ("train", "val", "test")]
    + [f"livecell_{s}" for s in ("train", "val", "test")]
    + [f"livecell_crop_{s}" for s in ("train", "val", "test")]
    + [f"evican2_{d}_{s}" for d in ("easy", "medium", "difficult") for s in ("train", "val", "test")]
    + [f"neurips22_{s}" for s in ("train", "val", "test")]
    + ["cells_demo_train", "cells_demo_val"]
    + [f"realcells_{d}_{s}" for d in ("bacteria_phase", "nuclei_fluo")
       for s in ("train", "tune", "report")]
)

PIXEL_STATS = {
    "revvity25": (133.488, 26.903),
    "livecell_crop": (127.926, 5.991),
    "livecell": (128.0, 11.578),
    "evican2": (114.83, 15.455),
    "neurips22": (145.0, 40.0),
}


def test_every_name_registered_with_metadata():
    assert sorted(REGISTERED_DATASETS) == sorted(EXPECTED)
    for name in EXPECTED:
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == ["cell"]
        assert meta.evaluator_type == "coco"
        assert len(meta.pixel_mean) == 3 and len(meta.pixel_std) == 3
        assert len(set(meta.pixel_mean)) == 1 and len(set(meta.pixel_std)) == 1
        assert os.path.isabs(meta.image_root)
        json_file = getattr(meta, "json_file", None) or meta.source_json_file
        assert os.path.isabs(json_file) and json_file.endswith(".json")
        prefix = next((p for p in PIXEL_STATS if name.startswith(p + "_")), None)
        if prefix:
            assert meta.pixel_mean[0] == pytest.approx(PIXEL_STATS[prefix][0])
            assert meta.pixel_std[0] == pytest.approx(PIXEL_STATS[prefix][1])


def test_evican2_difficulties_share_train_and_differ_in_test():
    easy, hard = DATASETS["evican2_easy"].splits, DATASETS["evican2_difficult"].splits
    assert easy["train"] == hard["train"] and easy["val"] == hard["val"]
    assert easy["test"][0] != hard["test"][0] and "difficult" in hard["test"][0]


@pytest.mark.parametrize("name", ["livecell_train", "revvity25_val", "evican2_medium_test", "neurips22_test"])
def test_missing_dataset_raises_with_path(name, tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    json_file, _ = dataset_paths(name)
    assert json_file.startswith(str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as info:
        DatasetCatalog.get(name)
    message = str(info.value)
    assert json_file in message and name in message and "datasets/README.md" in message
    assert isinstance(info.value, FileNotFoundError)


def test_missing_image_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    json_file, image_root = dataset_paths("neurips22_val")
    os.makedirs(os.path.dirname(json_file))
    with open(json_file, "w") as f:
        f.write('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]}')
    with pytest.raises(DatasetNotFoundError, match=image_root):
        prepare_dataset("neurips22_val")
    os.makedirs(image_root)
    prepare_dataset("neurips22_val")
    assert MetadataCatalog.get("neurips22_val").json_file == json_file
    assert DatasetCatalog.get("neurips22_val") == []
    assert MetadataCatalog.get("neurips22_val").thing_dataset_id_to_contiguous_id == {1: 0}


def test_multi_category_json_keeps_cells_only(tmp_path, monkeypatch):
    """EVICAN2-like json: Cell + Nucleus categories and a background image."""
    import json

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    name = "evican2_easy_test"
    json_file, image_root = dataset_paths(name)
    os.makedirs(os.path.dirname(json_file))
    os.makedirs(image_root)
    box = [1.0, 1.0, 4.0, 4.0]
    poly = [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0]]
    coco = {
        "images": [
            {"id": 1, "file_name": "1.jpg", "height": 8, "width": 8},
            {"id": 2, "file_name": "1_Background.jpg", "height": 8, "width": 8},
        ],
        "annotations": [
            {"id": k, "image_id": 1, "category_id": c, "bbox": box, "segmentation": poly, "area": 16, "iscrowd": 0}
            for k, c in ((1, 3), (2, 5), (3, 3))
        ],
        "categories": [{"id": 3, "name": "Cell"}, {"id": 5, "name": "Nucleus"}],
    }
    with open(json_file, "w") as f:
        json.dump(coco, f)
    dicts = DatasetCatalog.get(name)
    assert [os.path.basename(d["file_name"]) for d in dicts] == ["1.jpg"]
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [0, 0]
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["cell"]
    # The evaluator converts the filtered dicts; both sides then use id 0.
    assert not hasattr(meta, "json_file") and not hasattr(meta, "thing_dataset_id_to_contiguous_id")


def test_registration_does_not_touch_disk(tmp_path, repo_root):
    root = tmp_path / "untouched"
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), PYTHONPATH=repo_root)
    code = (
        "import iaunet_d2.compat\n"
        "import iaunet_d2.data\n"
        "from detectron2.data import MetadataCatalog\n"
        "print(MetadataCatalog.get('cells_demo_train').json_file)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert str(root) in result.stdout
    assert not root.exists()


def test_root_is_resolved_lazily(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "elsewhere"))
    json_file, image_root = dataset_paths("livecell_test")
    assert json_file == str(tmp_path / "elsewhere" / "livecell/annotations/livecell_coco_test.json")
    assert image_root == str(tmp_path / "elsewhere" / "livecell/images/livecell_test_images")
