"""The prediction CLI: tiling and merging, output files, bad input, activation maps."""
import csv
import importlib.util
import json
import os

import iaunet_d2  # noqa: F401
import cv2
import numpy as np
import pytest
import tifffile
import torch
from detectron2.data import transforms as T
from detectron2.structures import Instances
from pycocotools.coco import COCO
from scipy import ndimage

from iaunet_d2 import predict

from train_utils import save_random_model

IAUNET_CFG = "configs/demo/iaunet_R18_small.yaml"
# A random model must output cells: the paper's linear mask head does (an untrained
# dynamic head's masks are all empty or all full, never cells).
SMALL = ["INPUT.IMAGE_SIZE", "128", "MODEL.IAUNET.NUM_QUERIES", "10", "MODEL.IAUNET.TEST.SCORE_THRESH", "0.0"]


@pytest.fixture(autouse=True)
def _repo_cwd(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)  # configs are given relative to the repository




@pytest.fixture(scope="module")
def iaunet_weights(tmp_path_factory, repo_root):
    cwd = os.getcwd()
    os.chdir(repo_root)
    try:
        return save_random_model(tmp_path_factory.mktemp("w") / "iaunet.pth", IAUNET_CFG, SMALL)
    finally:
        os.chdir(cwd)


def _run(weights, inputs, output, *extra, config=IAUNET_CFG, opts=SMALL):
    return predict.main(["--config-file", config, "--weights", weights, "--input", str(inputs),
                         "--output", str(output), *extra, *opts])


# --------------------------------------------------------------------- tiling / merging
class _ThresholdModel:
    """Stands in for a model: every bright connected component of the input is a cell."""

    def __call__(self, inputs):
        out = []
        for x in inputs:
            image = x["image"][0].numpy()
            assert image.shape == (x["height"], x["width"])  # tiles are never resized
            components, n = ndimage.label(image > 128)
            inst = Instances(image.shape)
            inst.pred_masks = torch.from_numpy(components[None] == np.arange(1, n + 1)[:, None, None])
            inst.scores = torch.linspace(0.9, 0.5, n) if n else torch.zeros(0)
            inst.pred_classes = torch.zeros(n, dtype=torch.int64)
            out.append({"instances": inst})
        return out


def _cells_image():
    """(300, 350) image of separate bright cells, many crossing the borders of 128 px
    tiles with 32 px overlap, one bar longer than the overlap (cut in every tile)."""
    labels = np.zeros((300, 350), np.int32)
    yy, xx = np.mgrid[:300, :350]
    centres = [(96 + 16, 60), (128, 128), (20, 110), (110, 20), (200, 224), (224, 200), (250, 300),
               (60, 300), (150, 160), (280, 40)]
    for k, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 8 ** 2] = k
    labels[170:180, 20:180] = len(centres) + 1  # spans three tiles horizontally
    labels[30:200, 255:262] = len(centres) + 2  # spans two tile rows vertically
    image = np.where(labels > 0, 200, 30).astype(np.uint8)
    return np.repeat(image[:, :, None], 3, 2), labels


def test_tiles_merge_without_duplicates_or_cut_cells():
    image, labels = _cells_image()
    aug = T.AugmentationList([T.ResizeScale(1.0, 1.0, 128, 128)])
    result = predict.predict_image(_ThresholdModel(), image, aug, tile_size=128, tile_overlap=32)
    assert len(result.windows) > 9
    expected = [labels == k for k in range(1, labels.max() + 1)]
    got = []
    for c in result.cells:
        full = np.zeros(labels.shape, bool)
        full[c.y0:c.y0 + c.mask.shape[0], c.x0:c.x0 + c.mask.shape[1]] = c.mask
        got.append(full)
    assert len(got) == len(expected)
    for mask in expected:  # every cell exactly once, whole
        assert sum(np.array_equal(mask, g) for g in got) == 1
    assert np.array_equal(predict.label_image(result) > 0, labels > 0)


def test_whole_image_when_it_fits():
    image, labels = _cells_image()
    aug = T.AugmentationList([])
    result = predict.predict_image(_ThresholdModel(), image, aug, tile_size=512, tile_overlap=32)
    assert result.windows == [(0, 0, 300, 350)] and len(result.cells) == labels.max()


def test_tiles_in_batches_give_the_cells_of_one_tile_per_pass():
    image, _ = _cells_image()
    aug = T.AugmentationList([T.ResizeScale(1.0, 1.0, 128, 128)])
    calls = []
    one = predict.predict_image(_ThresholdModel(), image, aug, tile_size=128, tile_overlap=32)
    batched = predict.predict_image(_ThresholdModel(), image, aug, tile_size=128, tile_overlap=32,
                                    batch_size=4, on_tiles=lambda done, total: calls.append((done, total)))
    n = len(one.windows)
    assert n == 12
    assert calls == [(0, n), (4, n), (8, n), (12, n)]
    assert [(c.y0, c.x0, c.score, c.mask.tolist()) for c in batched.cells] == \
        [(c.y0, c.x0, c.score, c.mask.tolist()) for c in one.cells]


def test_batched_tiles_of_a_real_model_equal_one_tile_at_a_time(iaunet_weights):
    from iaunet_d2.inference import CellPredictor, build_predict_config

    cfg = build_predict_config(IAUNET_CFG, iaunet_weights, SMALL)
    image = np.random.default_rng(0).integers(0, 256, (300, 350, 3), dtype=np.uint8)
    one = CellPredictor(cfg, batch_size=1)(image)
    batched = CellPredictor(cfg, batch_size=5)(image)
    assert len(one.windows) == 12 and len(one.cells) > 0

    def by_query(prediction):  # a cell is its tile's query; batching may reorder equal scores
        cells = {}
        for c in prediction.cells:
            full = np.zeros((300, 350), bool)
            full[c.y0:c.y0 + c.mask.shape[0], c.x0:c.x0 + c.mask.shape[1]] = c.mask
            cells[(c.tile, c.query)] = (c.score, full)
        return cells

    one, batched = by_query(one), by_query(batched)
    assert one.keys() == batched.keys()
    for key, (score, mask) in one.items():
        other_score, other_mask = batched[key]
        assert abs(score - other_score) < 1e-4
        assert (mask & other_mask).sum() >= 0.99 * (mask | other_mask).sum()  # float rounding only


# ------------------------------------------------------------------------------ the CLI
def test_cli_writes_all_outputs(tmp_path, iaunet_weights):
    """A 16-bit 1024x1300 TIFF (tiled) and an RGB PNG through the whole CLI."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    tifffile.imwrite(folder / "big.tif", rng.integers(0, 4096, (1024, 1300)).astype(np.uint16))
    cv2.imwrite(str(folder / "rgb.png"), rng.integers(0, 255, (90, 110, 3)).astype(np.uint8))
    # 256 px tiles of a 128 px model input would be resized; use 256 as the model size here
    status = _run(iaunet_weights, folder, tmp_path / "out", "--tile-overlap", "32",
                  opts=SMALL[:1] + ["256"] + SMALL[2:])
    assert status == 0
    out = tmp_path / "out"
    coco = COCO(str(out / "coco_results.json"))
    for name, shape in (("big", (1024, 1300)), ("rgb", (90, 110))):
        labels = tifffile.imread(out / f"{name}_labels.tif")
        assert labels.dtype == np.uint16 and labels.shape == shape
        overlay = cv2.imread(str(out / f"{name}_overlay.png"))
        assert overlay.shape == (*shape, 3)
        rows = list(csv.DictReader(open(out / f"{name}_cells.csv")))
        (image_id,) = [i for i, im in coco.imgs.items() if im["output_name"] == name]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len(rows) == len(anns) > 0
        assert [int(r["id"]) for r in rows] == list(range(1, len(rows) + 1))
        scores = [float(r["score"]) for r in rows]
        assert scores == sorted(scores, reverse=True)
        for r in rows:  # the table agrees with the label image
            assert int(r["visible_area"]) == int((labels == int(r["id"])).sum()) <= int(r["area"])
        assert coco.annToMask(anns[0]).shape == shape
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_cli_bad_files_are_reported_and_the_run_continues(tmp_path, iaunet_weights, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "good.png"), np.full((64, 80), 120, np.uint8))
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((64, 64), np.uint16))
    data = (tmp_path / "x.tif").read_bytes()
    (folder / "truncated.tif").write_bytes(data[: len(data) // 3])
    tifffile.imwrite(folder / "stack.tif", np.zeros((5, 4, 32, 32), np.uint16))
    (folder / "empty.png").write_bytes(b"")
    status = _run(iaunet_weights, folder, tmp_path / "out")
    err = capsys.readouterr().err
    assert status == 1
    for bad in ("truncated.tif", "stack.tif", "empty.png"):
        assert bad in err
    assert "3 skipped:" in err and "3 skipped, 0 failed" in err
    outputs = sorted(os.listdir(tmp_path / "out"))
    assert outputs == ["coco_results.json", "good_cells.csv", "good_labels.tif", "good_overlay.png"]


def test_cli_multichannel_needs_channel(tmp_path, iaunet_weights, capsys):
    stack = np.random.default_rng(1).integers(0, 1000, (6, 40, 50)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", stack)
    assert _run(iaunet_weights, tmp_path / "c.tif", tmp_path / "o1") == 1
    assert "channel" in capsys.readouterr().err
    assert _run(iaunet_weights, tmp_path / "c.tif", tmp_path / "o2", "--channel", "2") == 0
    assert tifffile.imread(tmp_path / "o2" / "c_labels.tif").shape == (40, 50)


def test_cli_setup_errors(tmp_path, iaunet_weights, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((32, 32), np.uint8))
    # weights of another configuration (10 vs 12 queries)
    other = SMALL[:3] + ["12"] + SMALL[4:]
    assert _run(iaunet_weights, tmp_path / "a.png", tmp_path / "o", opts=other) == 2
    err = capsys.readouterr().err
    assert iaunet_weights in err and "do not match" in err and "shape" in err
    # a truncated weights file
    broken = tmp_path / "broken.pth"
    broken.write_bytes(open(iaunet_weights, "rb").read()[:1000])
    assert _run(str(broken), tmp_path / "a.png", tmp_path / "o") == 2
    assert str(broken) in capsys.readouterr().err
    # nothing to predict
    assert _run(iaunet_weights, tmp_path / "nothing*.tif", tmp_path / "o") == 2
    assert "names no image" in capsys.readouterr().err
    # activation maps of a model that has none
    status = _run(iaunet_weights, tmp_path / "a.png", tmp_path / "o", "--save-activations",
                  config="configs/demo/mask_rcnn_R50.yaml", opts=[])
    assert status == 2 and "IAUNet" in capsys.readouterr().err


def test_activation_maps(tmp_path, iaunet_weights):
    image = np.random.default_rng(2).integers(0, 255, (100, 150)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    assert _run(iaunet_weights, tmp_path / "a.png", tmp_path / "out", "--save-activations") == 0
    figure = cv2.imread(str(tmp_path / "out" / "a_activations.png"))
    rows = list(csv.DictReader(open(tmp_path / "out" / "a_cells.csv")))
    assert rows and figure.shape[0] > 96 * min(len(rows), predict.MAX_ACTIVATION_ROWS)


def test_outputs_are_atomic(tmp_path, monkeypatch):
    """An interruption while writing leaves neither a partial TIFF nor a temp file."""
    result = predict.ImagePrediction(20, 20, [predict.CellPrediction(2, 2, np.ones((3, 3), bool), 0.9, 0)],
                                     [(0, 0, 20, 20)])

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict.write_outputs(result, np.zeros((20, 20, 3), np.uint8), str(tmp_path), "x")
    assert os.listdir(tmp_path) == []


def test_mask_rcnn_predicts(tmp_path):
    opts = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "INPUT.IMAGE_SIZE", "128"]
    weights = save_random_model(tmp_path / "rcnn.pth", "configs/demo/mask_rcnn_R50.yaml", opts)
    cv2.imwrite(str(tmp_path / "a.png"), np.random.default_rng(3).integers(0, 255, (96, 120)).astype(np.uint8))
    assert _run(weights, tmp_path / "a.png", tmp_path / "out", config="configs/demo/mask_rcnn_R50.yaml",
                opts=opts) == 0
    assert tifffile.imread(tmp_path / "out" / "a_labels.tif").shape == (96, 120)
    assert json.load(open(tmp_path / "out" / "coco_results.json"))["images"][0]["height"] == 96


def test_stardist_nuclei_image(tmp_path, iaunet_weights):
    """The DSB2018 nuclei image shipped with stardist (512x512 uint16): converter + CLI."""
    spec = importlib.util.find_spec("stardist")
    if spec is None:
        pytest.skip("stardist is not installed (pip install --no-deps stardist)")
    from iaunet_d2.data.converters import convert_label_folder

    folder = os.path.join(list(spec.submodule_search_locations)[0], "data", "images")
    images = tmp_path / "images"
    images.mkdir()
    os.symlink(os.path.join(folder, "img2d.tif"), images / "img2d.tif")
    os.symlink(os.path.join(folder, "mask2d.tif"), images / "img2d_mask.tif")
    report = convert_label_folder(str(images), str(images), str(tmp_path / "gt.json"))
    assert report.annotations == 125
    assert _run(iaunet_weights, images / "img2d.tif", tmp_path / "out") == 0
    labels = tifffile.imread(tmp_path / "out" / "img2d_labels.tif")
    assert labels.shape == (512, 512) and labels.dtype == np.uint16
    # predictions and ground truth use the same image size, so COCO evaluation can run
    gt = COCO(str(tmp_path / "gt.json"))
    pred = json.load(open(tmp_path / "out" / "coco_results.json"))
    assert (pred["images"][0]["height"], pred["images"][0]["width"]) == (gt.imgs[1]["height"], gt.imgs[1]["width"])
