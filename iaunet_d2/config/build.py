"""Building a run's configuration: merging a config file and overrides, registering and
checking its data, and resolving the intensity normalisation and pixel statistics."""
import functools
import logging
import os
import re

import yaml

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.projects.point_rend import add_pointrend_config

from .keys import REMOVED_KEYS, RETIRED_KEYS, add_iaunet_config, apply_pretrained_policy
from ..data.datasets import prepare_datasets, register_folder_datasets
from ..io.images import check_normalization
from ..data.pixel_stats import cached_intensity_range, cached_pixel_stats

__all__ = [
    "ConfigError", "PixelStatsError", "build_config", "check_config_file", "resolve_intensity_norm",
    "resolve_pixel_stats",
]

logger = logging.getLogger(__name__)

_STATS_KEYS = ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD")


class ConfigError(ValueError):
    """The config file or an override cannot be merged (missing file, unknown key, bad value)."""


class PixelStatsError(ValueError):
    """The config asks for dataset pixel statistics that cannot be obtained."""


def build_config(config_file, opts=(), prepare_data=True):
    """Merge ``config_file`` and command-line ``opts`` into a frozen config.

    Folders of ``DATASETS.TRAIN_DIR`` / ``TEST_DIR`` are registered (see
    :func:`~iaunet_d2.data.datasets.register_folder_datasets`). With
    ``prepare_data`` the datasets are also checked on disk first: demo data is
    generated, label folders are converted, missing data raises
    ``DatasetNotFoundError`` / ``DatasetError``. The intensity normalisation and the
    pixel statistics are then resolved (:func:`resolve_intensity_norm`,
    :func:`resolve_pixel_stats`), so the returned config (and the ``config.yaml`` a run
    saves) holds the values the model is trained and used with.

    Retired keys (``iaunet_d2.config.RETIRED_KEYS``), in the file or the overrides, are
    dropped with a warning; one whose value contradicts the key that replaced it is a
    ``ConfigError``. A removed key (``REMOVED_KEYS``) is a ``ConfigError`` saying where
    its option went.
    """
    cfg = get_cfg()
    add_pointrend_config(cfg)
    add_iaunet_config(cfg)
    if not os.path.isfile(config_file):
        raise ConfigError(f"Config file '{config_file}' not found.")
    check_config_file(config_file)
    retired = []
    try:
        # The file's retired keys are checked against the file's values, the overrides'
        # against the final ones: overriding the new key of an old file is allowed.
        retired += _merge_dropping_retired(cfg, lambda: cfg.merge_from_file(config_file),
                                           f"Config '{config_file}'")
        retired += _merge_dropping_retired(cfg, lambda: cfg.merge_from_list(list(opts)),
                                           f"Config '{config_file}' with overrides {list(opts)}")
    except ConfigError:
        raise
    except (KeyError, AssertionError, ValueError, TypeError, yaml.YAMLError) as e:
        # yacs: unknown key (KeyError), wrong value type (AssertionError), odd override list.
        reason = e.args[0] if e.args else type(e).__name__
        removed = re.search(r"Non-existent (?:config )?key: (\S+)", str(reason))
        if removed and removed.group(1) in REMOVED_KEYS:
            key = removed.group(1)
            raise ConfigError(f"Config '{config_file}': {key} was {REMOVED_KEYS[key]}.") from e
        raise ConfigError(f"Config '{config_file}' with overrides {list(opts)}: {reason}") from e
    if retired:
        logger.warning("Config '%s': retired keys dropped: %s.", config_file, "; ".join(
            f"{key} ({RETIRED_KEYS[key][1]})" for key in dict.fromkeys(retired)))
    try:
        check_normalization(cfg.INPUT.INTENSITY_NORM, allow_dataset=True)
    except ValueError as e:
        raise ConfigError(f"Config '{config_file}': {e}") from e
    apply_pretrained_policy(cfg)
    register_folder_datasets(cfg, prepare=prepare_data)
    if prepare_data:
        prepare_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    # Both measurements read the same split: load its dataset dicts once.
    files_of = functools.lru_cache(maxsize=None)(_image_files)
    resolve_intensity_norm(cfg, measure=prepare_data, files_of=files_of)
    resolve_pixel_stats(cfg, given=any(k in _STATS_KEYS for k in list(opts)[::2]), measure=prepare_data,
                        files_of=files_of)
    cfg.freeze()
    return cfg


def check_config_file(path, _children=()):
    """Check that ``path`` and the ``_BASE_`` files it builds on are YAML mappings.

    Raises:
        ConfigError: one line naming the file and its problem: unreadable, binary or not
            UTF-8 text, a YAML syntax error (with line and column), empty, not a mapping
            of keys, or a ``_BASE_`` that is missing or includes itself.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"Config file '{path}' cannot be read: {e.strerror}.") from None
    if b"\0" in raw:
        raise ConfigError(f"Config file '{path}' is not a YAML text file (it holds binary data).")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"Config file '{path}' is not a YAML text file (byte {e.start} is "
                          "not UTF-8 text).") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
        raise ConfigError(f"Config file '{path}': YAML syntax error{where}: {problem}.") from None
    if data is None:
        raise ConfigError(f"Config file '{path}' is empty: a config is a mapping of keys to "
                          "values (e.g. '_BASE_: ../Base-IAUNet.yaml').")
    if not isinstance(data, dict):
        shown = repr(data) if len(repr(data)) <= 40 else repr(data)[:37] + "..."
        raise ConfigError(f"Config file '{path}' holds a {type(data).__name__} ({shown}), not a "
                          "mapping of config keys (KEY: value lines).")
    base = data.get("_BASE_")
    if base is None:
        return
    if not isinstance(base, str):
        raise ConfigError(f"Config file '{path}': _BASE_ must be a file name, got {base!r}.")
    # Resolved as Detectron2 resolves it: relative to the file that names it.
    base_path = os.path.expanduser(base)
    if not os.path.isabs(base_path):
        base_path = os.path.join(os.path.dirname(path), base_path)
    if not os.path.isfile(base_path):
        raise ConfigError(f"Config file '{path}': its _BASE_ '{base}' not found ({base_path}).")
    chain = (*_children, os.path.realpath(path))
    if os.path.realpath(base_path) in chain:
        raise ConfigError(f"Config file '{path}': its _BASE_ '{base}' includes itself.")
    check_config_file(base_path, chain)


def _merge_dropping_retired(cfg, merge, where):
    """Run ``merge()``, a yacs merge into ``cfg``, accepting the retired keys: each is
    declared with the value None for the merge and removed afterwards.

    Returns:
        the retired keys the merge set.
    Raises:
        ConfigError: a retired key's value differs from the key that replaced it.
    """
    declared = []
    for key in RETIRED_KEYS:
        *path, name = key.split(".")
        node = cfg
        for part in path:
            node = node.get(part) if node is not None else None
        if node is not None and name not in node:
            node[name] = None  # yacs accepts a value of any type in place of None
            declared.append((key, node, name))
    try:
        merge()
    finally:
        values = {key: node.pop(name) for key, node, name in declared}
    named = [key for key, value in values.items() if value is not None]
    for key in named:
        replaced_by = RETIRED_KEYS[key][0]
        if replaced_by is not None and values[key] != _value(cfg, replaced_by):
            raise ConfigError(
                f"{where}: retired key {key} ({values[key]!r}) differs from {replaced_by} "
                f"({_value(cfg, replaced_by)!r}); {RETIRED_KEYS[key][1]}: remove {key}."
            )
    return named


def _value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _no_dataset_error():
    return PixelStatsError(
        "The config names no dataset (DATASETS.TRAIN / TEST are empty): give the data "
        "with --train-dir DIR [--val-dir DIR] (train_net.py) or DATASETS.TRAIN_DIR; for "
        "prediction use the config.yaml saved in the training run's OUTPUT_DIR."
    )


def _image_files(name):
    """Image paths of a registered split."""
    return [record["file_name"] for record in DatasetCatalog.get(name)]


def resolve_intensity_norm(cfg, measure=True, files_of=_image_files):
    """Replace ``INPUT.INTENSITY_NORM: "dataset"`` by ``"fixed:LOW,HIGH"``, the
    1st..99.8th percentiles of the raw values of the first training dataset's images
    that are not 8-bit (measured once and cached like the pixel statistics; config not
    frozen). With only 8-bit images, which are used as they are, it becomes
    ``"percentile"``.

    Raises:
        PixelStatsError: no dataset to measure, or not allowed to measure.
    """
    if cfg.INPUT.INTENSITY_NORM != "dataset":
        return
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    if not names:
        raise _no_dataset_error()
    if not measure:
        raise PixelStatsError(
            "INPUT.INTENSITY_NORM 'dataset' is measured on the training images, which this "
            "run does not read; use the config.yaml saved in the training run's OUTPUT_DIR "
            "(it holds the measured 'fixed:LOW,HIGH'), or give the range yourself."
        )
    name = names[0]
    files = files_of(name)
    meta = MetadataCatalog.get(name)
    cache = meta.get("pixel_stats_cache") or os.path.join(cfg.OUTPUT_DIR, "pixel_stats.json")
    value_range = cached_intensity_range(files, cache)
    cfg.INPUT.INTENSITY_NORM = f"fixed:{value_range[0]:.6g},{value_range[1]:.6g}" if value_range else "percentile"
    logger.info("Intensity normalisation of dataset '%s': %s.", name, cfg.INPUT.INTENSITY_NORM)


def resolve_pixel_stats(cfg, given=False, measure=True, files_of=_image_files):
    """Fill MODEL.PIXEL_MEAN/STD when ``INPUT.PIXEL_STATS_FROM_DATASET`` is on (config
    not frozen), then turn that flag off.

    Order: values set by the user (``given``, or any value other than Detectron2's
    default) win; else the first dataset of DATASETS.TRAIN (then TEST) provides them
    from its metadata (the project's table, or values measured earlier in this
    process); else, with ``measure``, they are measured on its images and cached (in
    the folder's cache for ``--train-dir`` data, else ``OUTPUT_DIR/pixel_stats.json``).

    Raises:
        PixelStatsError: no dataset to take them from, not allowed to measure, or none
            of its images readable.
    """
    if not cfg.INPUT.PIXEL_STATS_FROM_DATASET:
        return
    defaults = get_cfg().MODEL
    if given or list(cfg.MODEL.PIXEL_MEAN) != list(defaults.PIXEL_MEAN) or \
            list(cfg.MODEL.PIXEL_STD) != list(defaults.PIXEL_STD):
        logger.info("Pixel statistics as configured: mean %s, std %s.",
                    list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD))
        cfg.INPUT.PIXEL_STATS_FROM_DATASET = False
        return
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    hint = ("use the config.yaml saved in the training run's OUTPUT_DIR, or set "
            "MODEL.PIXEL_MEAN and MODEL.PIXEL_STD")
    if not names:
        raise _no_dataset_error()
    name = names[0]
    meta = MetadataCatalog.get(name)
    if meta.get("pixel_mean") is None:
        if not measure:
            raise PixelStatsError(
                f"Dataset '{name}' has no recorded pixel statistics and they are not "
                f"measured here; {hint}."
            )
        files = files_of(name)
        cache = meta.get("pixel_stats_cache") or os.path.join(cfg.OUTPUT_DIR, "pixel_stats.json")
        try:
            mean, std = cached_pixel_stats(files, cache, image_format=cfg.INPUT.FORMAT,
                                           normalization=cfg.INPUT.INTENSITY_NORM)
        except ValueError as e:  # not one image readable
            raise PixelStatsError(f"Dataset '{name}': {e}") from e
        meta.set(pixel_mean=mean, pixel_std=std)
    cfg.MODEL.PIXEL_MEAN = [float(v) for v in meta.pixel_mean]
    cfg.MODEL.PIXEL_STD = [float(v) for v in meta.pixel_std]
    cfg.INPUT.PIXEL_STATS_FROM_DATASET = False
    logger.info("Pixel statistics of dataset '%s': mean %s, std %s.", name,
                cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
