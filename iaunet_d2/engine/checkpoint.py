"""A checkpointer whose files are never half-written."""
import logging
import os
import shutil

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..io.weights import UnsafeWeightsError, read_weights_file
from ..io.writers import atomic_write

__all__ = [
    "AtomicCheckpointer", "CheckpointReadError", "CheckpointWriteError", "WeightsMismatchError",
    "check_weights_fit",
]


class CheckpointReadError(RuntimeError):
    """A checkpoint file exists but cannot be read."""


class WeightsMismatchError(CheckpointReadError):
    """A weights file that does not fit the model (another architecture or config)."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, no permission, ...)."""


def _free_space(folder):
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB"
    except OSError:
        return "unknown space"


def _why_unreadable(filename, error):
    """One line on why ``filename`` could not be loaded: callers print it as the last
    line of a failed run, so it must keep the file name and fit on one line."""
    try:
        with open(filename, "rb") as f:
            head = f.read(256)
    except OSError:
        head = None
    if head == b"":
        return "the file is empty"
    if head and all(32 <= b < 127 or b in b"\t\n\r" for b in head):
        # The unpickler reads text as opcodes and fails with KeyError, IndexError, ...
        start = head.decode("ascii").strip().splitlines()[0][:40] if head.strip() else ""
        return f"it is a text file (starting {start!r})"
    # torch.load's messages span many lines; the first sentence says what failed.
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[0].split(". ")[0].rstrip(".") if lines else ""
    return f"{type(error).__name__}: {reason}" if reason else type(error).__name__


def _read_checkpoint(filename):
    """A weights file as the dict ``DetectionCheckpointer._load_model`` takes, read
    without running code from it (:func:`~iaunet_d2.io.weights.read_weights_file`).

    The layouts are Detectron2's: ``.pkl`` of its model zoo (``model`` and
    ``__author__``) or of Caffe2/ImageNet models (``blobs`` or a flat dict of arrays,
    matched to the model by name heuristics, momentum buffers dropped), pycls ``.pyth``
    (``model_state``), and ``.pth`` (``model``, or a bare state dict).
    """
    data = read_weights_file(filename)
    if not isinstance(data, dict):
        return data  # refused by the caller: no model state dict
    if filename.endswith(".pkl"):
        if "model" in data and "__author__" in data:
            return data
        arrays = data.get("blobs", data)
        if not isinstance(arrays, dict):
            return {}
        return {"model": {k: v for k, v in arrays.items() if not k.endswith("_momentum")},
                "__author__": "Caffe2", "matching_heuristics": True}
    if filename.endswith(".pyth") and isinstance(data.get("model_state"), dict):
        state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
        return {"model": state, "__author__": "pycls", "matching_heuristics": True}
    return data if "model" in data else {"model": data}


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that writes checkpoints and the ``last_checkpoint`` tag
    atomically, so ``--resume`` never meets a truncated file, that reads weights files
    without running code from them (a crafted pickle is refused, naming the type it
    asks for), and that names the file when a checkpoint cannot be read."""

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        try:
            atomic_write(path, lambda f: torch.save(data, f))
        except (OSError, RuntimeError) as e:
            # torch.save reports a full disk as an opaque zip-writer RuntimeError.
            cause = e.__context__ if isinstance(e.__context__, OSError) else e
            reason = str(cause).rstrip(".")
            raise CheckpointWriteError(
                f"Cannot write checkpoint {path}: {type(cause).__name__}: {reason}. "
                f"{_free_space(self.save_dir)} free in {self.save_dir}. Checkpoints "
                "written before are untouched; free space (or set SOLVER.CHECKPOINT_PERIOD "
                "higher) and continue with --resume."
            ) from e
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename), mode="w")

    def _load_file(self, filename):
        try:
            checkpoint = _read_checkpoint(filename)
        except UnsafeWeightsError as e:
            raise CheckpointReadError(str(e)) from None
        except Exception as e:  # whatever the unpickler meets in a file that is not a checkpoint
            raise CheckpointReadError(
                f"Cannot read checkpoint {filename}: {_why_unreadable(filename, e)}. "
                "The file is truncated, corrupt or not a PyTorch/Detectron2 checkpoint."
            ) from e
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
            raise CheckpointReadError(f"Checkpoint {filename} holds no model state dict.")
        return checkpoint

    def _load_model(self, checkpoint):
        # A model that changed its layout renames an older checkpoint's keys first, so
        # that the comparison of shapes and keys with the model's sees today's names.
        upgrade = getattr(self.model, "upgrade_checkpoint", None)
        if callable(upgrade):
            upgrade(checkpoint["model"])
        # Kept so that load_weights can tell how well the file fits the model.
        self.last_incompatible = super()._load_model(checkpoint)
        return self.last_incompatible

    def load_weights(self, path, strict=True):
        """Load model weights only (no optimizer or schedule) and check they fit.

        Args:
            path (str): a checkpoint file (``.pth`` of this project, Detectron2 ``.pkl``).
            strict (bool): refuse parameters missing from the file, parameters the model
                does not have, and other shapes (evaluation and prediction). Without it
                (fine-tuning from ImageNet weights) only other shapes, or a file of which
                no parameter fits, are refused.

        Raises:
            CheckpointReadError: the file is missing or is not a readable checkpoint.
            WeightsMismatchError: the weights do not fit the model.
        """
        if not os.path.isfile(path):
            raise CheckpointReadError(f"Weights file '{path}' not found.")
        # fvcore logs every incompatible key as a warning; the check below sums them up.
        fvcore_logger = logging.getLogger("fvcore.common.checkpoint")
        level = fvcore_logger.level
        fvcore_logger.setLevel(logging.ERROR)
        try:
            self.last_incompatible = None
            self.load(path, checkpointables=[])
        finally:
            fvcore_logger.setLevel(level)
        check_weights_fit(self.model, path, self.last_incompatible, strict)


def check_weights_fit(model, path, incompatible, strict=True):
    """Raise :class:`WeightsMismatchError` when ``incompatible`` (fvcore's
    ``_IncompatibleKeys`` of a load into ``model``) shows that the file does not fit."""
    if incompatible is None:
        return
    # BatchNorm's counter is harmless when the model uses frozen BN at test time.
    unexpected = [k for k in incompatible.unexpected_keys if not k.endswith("num_batches_tracked")]
    missing, shapes = list(incompatible.missing_keys), list(incompatible.incorrect_shapes)
    model_keys = len(model.state_dict())
    nothing_fits = len(missing) >= model_keys
    if not (shapes or nothing_fits or (strict and (missing or unexpected))):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's {model_keys} parameters missing from the "
                     f"file (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unknown to the model (e.g. {unexpected[:3]})")
    if shapes:
        k, got, want = shapes[0]
        parts.append(f"{len(shapes)} with another shape (e.g. {k}: file {tuple(got)} vs model {tuple(want)})")
    name = type(model.module if hasattr(model, "module") else model).__name__
    raise WeightsMismatchError(
        f"Weights '{path}' do not match the {name} model of the config: {'; '.join(parts)}. "
        "Use the config the weights were trained with (the config.yaml in its OUTPUT_DIR) "
        "and the same overrides."
    )
