"""Building the run configuration for train_net.py and the tools."""
import logging

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import default_setup
from detectron2.projects.point_rend import add_pointrend_config

from ..config import add_iaunet_config, apply_pretrained_policy
from ..data.datasets import prepare_datasets

__all__ = ["build_config", "setup_cfg"]

logger = logging.getLogger(__name__)


def build_config(config_file, opts=(), prepare_data=True):
    """Merge ``config_file`` and command-line ``opts`` into a frozen config.

    With ``INPUT.PIXEL_STATS_FROM_DATASET`` on, MODEL.PIXEL_MEAN/STD are taken from the
    registered metadata of the first dataset in DATASETS.TRAIN/TEST, the one place where
    a dataset's statistics are recorded (no file is read for that). With
    ``prepare_data`` those datasets are also checked on disk first: demo data is
    generated, missing data raises ``DatasetNotFoundError``.
    """
    cfg = get_cfg()
    add_pointrend_config(cfg)
    add_iaunet_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    apply_pretrained_policy(cfg)
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    if prepare_data:
        prepare_datasets(names)
    if cfg.INPUT.PIXEL_STATS_FROM_DATASET and names:
        meta = MetadataCatalog.get(names[0])
        if meta.get("pixel_mean") is None:
            raise ValueError(
                f"INPUT.PIXEL_STATS_FROM_DATASET is on but dataset '{names[0]}' has no "
                "pixel_mean/pixel_std metadata; set MODEL.PIXEL_MEAN/PIXEL_STD and "
                "INPUT.PIXEL_STATS_FROM_DATASET False."
            )
        cfg.MODEL.PIXEL_MEAN = [float(v) for v in meta.pixel_mean]
        cfg.MODEL.PIXEL_STD = [float(v) for v in meta.pixel_std]
    cfg.freeze()
    return cfg


def setup_cfg(args):
    """Config from parsed ``default_argument_parser`` args, plus Detectron2's default
    setup (output folder, logging, seeding, saved config)."""
    cfg = build_config(args.config_file, args.opts)
    default_setup(cfg, args)
    return cfg
