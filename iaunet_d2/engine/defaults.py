"""Detectron2's default setup around the project's config, for train_net.py."""
import logging

from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import build_config

__all__ = ["setup_cfg"]

logger = logging.getLogger(__name__)


def setup_cfg(args):
    """Config from parsed ``default_argument_parser`` args, plus Detectron2's default
    setup (output folder, logging, seeding, saved config)."""
    cfg = build_config(args.config_file, args.opts)
    default_setup(cfg, args)
    # The project's own messages (data checks, skipped images) go where Detectron2's go.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="iaunet_d2",
                 abbrev_name="iaunet_d2")
    logger.info("Pixel statistics: mean %s, std %s.", list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD))
    return cfg
