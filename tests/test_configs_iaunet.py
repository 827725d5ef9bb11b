"""Every IAUNet config merges into the project's config and names registered data."""
import glob
import os

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

import iaunet_d2  # noqa: F401  (registers datasets, models and backbones)
from iaunet_d2.config import add_iaunet_config

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(_ROOT, "configs", "**", "iaunet_*.yaml"), recursive=True))
DATASET_FOLDERS = [
    "revvity25", "livecell", "livecell_crop",
    "evican2_easy", "evican2_medium", "evican2_difficult", "neurips22",
]
VARIANTS = ["iaunet_R50", "iaunet_R101", "iaunet_swin_S", "iaunet_swin_B"]


def _load(path):
    cfg = get_cfg()
    add_iaunet_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def _rel(path):
    return os.path.relpath(path, _ROOT)


def test_expected_files_exist():
    expected = [f"configs/{d}/{v}.yaml" for d in DATASET_FOLDERS for v in VARIANTS]
    expected += ["configs/demo/iaunet_R50.yaml", "configs/demo/iaunet_R18_small.yaml"]
    found = {_rel(p) for p in CONFIGS}
    assert sorted(set(expected) - found) == []


@pytest.mark.parametrize("path", CONFIGS, ids=_rel)
def test_config_merges(path):
    cfg = _load(path)
    assert cfg.MODEL.META_ARCHITECTURE == "IAUNet"
    assert cfg.MODEL.MASK_ON
    assert cfg.VERSION == 2
    assert list(cfg.MODEL.IAUNET.IN_FEATURES) == ["res2", "res3", "res4", "res5"]
    assert cfg.INPUT.DATASET_MAPPER_NAME == "cell_instance"
    assert cfg.INPUT.PIXEL_STATS_FROM_DATASET
    assert not cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    assert cfg.SOLVER.OPTIMIZER == "ADAMW"
    if _rel(path).startswith("configs/custom/"):
        # The user's folders come from --train-dir / --val-dir.
        assert cfg.DATASETS.TRAIN == () and cfg.DATASETS.TEST == ()
    else:
        assert len(cfg.DATASETS.TRAIN) == 1 and len(cfg.DATASETS.TEST) == 1
    # The evaluator must be able to keep one detection per query.
    assert cfg.TEST.DETECTIONS_PER_IMAGE >= cfg.MODEL.IAUNET.NUM_QUERIES


@pytest.mark.parametrize("path", CONFIGS, ids=_rel)
def test_datasets_are_registered(path):
    cfg = _load(path)
    registered = set(DatasetCatalog.list())
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        assert name in registered, f"{_rel(path)} names unregistered dataset {name!r}"


@pytest.mark.parametrize("folder", DATASET_FOLDERS)
def test_dataset_names_follow_folder(folder):
    cfg = _load(os.path.join(_ROOT, "configs", folder, "iaunet_R50.yaml"))
    assert tuple(cfg.DATASETS.TRAIN) == (f"{folder}_train",)
    assert tuple(cfg.DATASETS.TEST) == (f"{folder}_test",)
    assert cfg.OUTPUT_DIR == f"output/{folder}/iaunet_R50"


@pytest.mark.parametrize("folder", DATASET_FOLDERS)
def test_backbone_variants(folder):
    r50 = _load(os.path.join(_ROOT, "configs", folder, "iaunet_R50.yaml"))
    r101 = _load(os.path.join(_ROOT, "configs", folder, "iaunet_R101.yaml"))
    swin_s = _load(os.path.join(_ROOT, "configs", folder, "iaunet_swin_S.yaml"))
    swin_b = _load(os.path.join(_ROOT, "configs", folder, "iaunet_swin_B.yaml"))
    assert r50.MODEL.BACKBONE.NAME == "build_resnet_backbone" and r50.MODEL.RESNETS.DEPTH == 50
    assert r101.MODEL.BACKBONE.NAME == "build_resnet_backbone" and r101.MODEL.RESNETS.DEPTH == 101
    assert r50.MODEL.IAUNET.BRIDGE and r101.MODEL.IAUNET.BRIDGE
    assert swin_s.MODEL.BACKBONE.NAME == "build_swin_backbone"
    assert swin_s.MODEL.SWIN.TIMM_NAME == "swin_small_patch4_window7_224"
    assert swin_b.MODEL.SWIN.TIMM_NAME == "swin_base_patch4_window12_384"
    assert not swin_s.MODEL.IAUNET.BRIDGE and not swin_b.MODEL.IAUNET.BRIDGE
    for cfg in (r101, swin_s, swin_b):  # variants differ from R50 only in the backbone
        assert cfg.DATASETS.TRAIN == r50.DATASETS.TRAIN
        assert cfg.MODEL.IAUNET.NUM_QUERIES == r50.MODEL.IAUNET.NUM_QUERIES


def test_paper_recipe():
    cfg = _load(os.path.join(_ROOT, "configs", "Base-IAUNet.yaml"))
    assert cfg.MODEL.IAUNET.NUM_QUERIES == 100
    assert cfg.INPUT.IMAGE_SIZE == 512
    assert (cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE) == (0.8, 1.5)
    assert cfg.SOLVER.BASE_LR == 1e-4 and cfg.SOLVER.WEIGHT_DECAY == 0.05
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupCosineLR" and cfg.SOLVER.BASE_LR_END == 1e-6
    assert cfg.SOLVER.IMS_PER_BATCH == 8
    assert cfg.MODEL.RESNETS.NORM == "BN" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert cfg.MODEL.DEVICE == "cuda"


def test_demo_small_config():
    cfg = _load(os.path.join(_ROOT, "configs", "demo", "iaunet_R18_small.yaml"))
    assert cfg.MODEL.DEVICE == "cpu"
    assert cfg.MODEL.RESNETS.DEPTH == 18
    assert cfg.MODEL.RESNETS.RES2_OUT_CHANNELS == 64 and cfg.MODEL.RESNETS.RES5_DILATION == 1
    assert cfg.MODEL.IAUNET.CONV_DIM % cfg.MODEL.IAUNET.NHEADS == 0
    assert tuple(cfg.DATASETS.TRAIN) == ("cells_demo_train",)
    assert tuple(cfg.DATASETS.TEST) == ("cells_demo_val",)
