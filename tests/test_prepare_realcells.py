"""The real-data suite's preparation (iaunet_d2.data.realcells): tiles, spatial splits,
COCO validity through the registered datasets, atomic sets and one-line errors. The
bacteria set is built from a small archive of the same layout (no network)."""
import io
import json
import os
import tarfile

import numpy as np
import pytest
import tifffile
from detectron2.data import DatasetCatalog

import iaunet_d2  # noqa: F401  (registers the datasets)
from iaunet_d2.apps import prepare_realcells as app
from iaunet_d2.data import realcells
from iaunet_d2.io.rle import annotation_mask


def _counts(root, name):
    out = {}
    for split in realcells.SPLITS:
        with open(os.path.join(root, "realcells", name, "annotations", f"{split}.json")) as f:
            data = json.load(f)
        out[split] = data
    return out


@pytest.fixture
def nuclei(tmp_path):
    try:
        realcells.stardist_image_paths()
    except realcells.RealCellsError:
        pytest.skip("stardist is not installed (pip install --no-deps stardist)")
    realcells.prepare_realcells(str(tmp_path), ["nuclei_fluo"], log=lambda line: None)
    return tmp_path


def test_nuclei_set_is_split_by_region_into_whole_tiles(nuclei):
    data = _counts(nuclei, "nuclei_fluo")
    tiles = {split: len(d["images"]) for split, d in data.items()}
    cells = {split: len(d["annotations"]) for split, d in data.items()}
    # Left half (two 256-px tiles), top-right and bottom-right quarters.
    assert tiles == {"train": 2, "tune": 1, "report": 1}
    assert all(n > 20 for n in cells.values()), cells
    names = {split: {img["file_name"] for img in d["images"]} for split, d in data.items()}
    assert names["train"] == {"img2d_y0_x0.tif", "img2d_y256_x0.tif"}
    assert names["tune"] == {"img2d_y0_x256.tif"} and names["report"] == {"img2d_y256_x256.tif"}
    for d in data.values():
        sizes = {img["id"]: (img["height"], img["width"]) for img in d["images"]}
        for anno in d["annotations"]:
            mask = annotation_mask(anno, *sizes[anno["image_id"]])
            assert mask.sum() >= realcells.MIN_CELL_PIXELS
            assert mask.sum() == anno["area"]


def test_prepared_splits_load_through_the_registered_names(nuclei, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(nuclei))
    records = DatasetCatalog.get("realcells_nuclei_fluo_report")
    assert len(records) == 1
    assert records[0]["height"] == records[0]["width"] == 256
    assert len(records[0]["annotations"]) == len(_counts(nuclei, "nuclei_fluo")["report"]["annotations"])


def test_a_prepared_set_is_kept_and_force_rebuilds_it(nuclei):
    lines = []
    assert realcells.prepare_realcells(str(nuclei), ["nuclei_fluo"], log=lines.append) == {}
    assert "already prepared" in lines[0]
    built = realcells.prepare_realcells(str(nuclei), ["nuclei_fluo"], force=True, log=lines.append)
    assert built["nuclei_fluo"]["tune"][0] == 1
    leftovers = [n for n in os.listdir(nuclei / "realcells") if n.startswith(".")]
    assert leftovers == []  # the temporary build folder was moved into place


def _fake_archive(path, frames=4):
    """A divisualisation-like sdist: img/t*.tif and TRA/man_track*.tif, 1305 x 1009."""
    with tarfile.open(path, "w:gz") as tar:
        for t in range(frames):
            labels = np.zeros((1305, 1009), np.uint16)
            labels[700:730, 450:470] = 1  # train, next to the regions' corner (740, 480)
            labels[100:130, 100:140] = 2  # train
            labels[1000:1030, 800:830] = 3  # report
            labels[200:230, 700:740] = 4  # tune, across the tile border at x = 736
            image = (labels > 0).astype(np.uint8) * 200 + 20
            for name, array in ((f"img/t{t:06d}.tif", image), (f"TRA/man_track{t:06d}.tif", labels)):
                data = io.BytesIO()
                tifffile.imwrite(data, array)
                info = tarfile.TarInfo(f"{realcells._BACTERIA_DIR}/{name}")
                info.size = data.getbuffer().nbytes
                data.seek(0)
                tar.addfile(info, data)


def test_bacteria_archive_layout_is_tiled_by_region(tmp_path, monkeypatch):
    archive = tmp_path / "fake.tar.gz"
    _fake_archive(archive)
    monkeypatch.setattr(realcells, "_sha256", lambda path: realcells.DIVISUALISATION_SHA256)
    counts = realcells.build_bacteria_phase(str(archive), str(tmp_path / "set"))
    # Frames 0 and 3 (every third), 2 tiles with cells each in train (cells 1 and 2) and
    # tune (cell 4's two parts), 1 in report (cell 3); empty tiles are skipped.
    assert {split: tiles for split, (tiles, _) in counts.items()} == {
        "train": 4, "tune": 4, "report": 2}
    assert {split: cells for split, (_, cells) in counts.items()} == {
        "train": 4, "tune": 4, "report": 2}
    with open(tmp_path / "set" / "annotations" / "report.json") as f:
        report = json.load(f)
    widths = sorted({img["width"] for img in report["images"]})
    assert widths == [273]  # x 480..753 (the last 256 tile's 273-px remainder joins it)


def test_bacteria_archive_with_another_checksum_is_refused(tmp_path):
    archive = tmp_path / "other.tar.gz"
    _fake_archive(archive, frames=1)
    with pytest.raises(realcells.RealCellsError, match="sha256 .* is not the expected"):
        realcells.build_bacteria_phase(str(archive), str(tmp_path / "set"))
    assert not (tmp_path / "set").exists() or not any((tmp_path / "set").rglob("*.json"))


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    def no_stardist():
        raise realcells.RealCellsError("the stardist package is not installed; run x")

    monkeypatch.setattr(realcells, "stardist_image_paths", no_stardist)
    assert app.main(["--sets", "nuclei_fluo", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: the stardist package is not installed; run x"]
    # Nothing half-built is left.
    assert not (tmp_path / "realcells" / "nuclei_fluo").exists()
    assert [n for n in os.listdir(tmp_path / "realcells") if n != ".downloads"] == []
