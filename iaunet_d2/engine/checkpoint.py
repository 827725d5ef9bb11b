"""A checkpointer whose files are never half-written."""
import os
import pickle
import shutil

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils.file_io import atomic_write

__all__ = ["AtomicCheckpointer", "CheckpointReadError", "CheckpointWriteError"]


class CheckpointReadError(RuntimeError):
    """A checkpoint file exists but cannot be read."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, no permission, ...)."""


def _free_space(folder):
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB"
    except OSError:
        return "unknown space"


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that writes checkpoints and the ``last_checkpoint`` tag
    atomically, so ``--resume`` never meets a truncated file, and that names the
    file when a checkpoint cannot be read."""

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
            return super()._load_file(filename)
        except (EOFError, RuntimeError, pickle.UnpicklingError, OSError) as e:
            raise CheckpointReadError(
                f"Cannot read checkpoint {filename}: {type(e).__name__}: "
                f"{str(e).rstrip('.')}. "
                "The file is truncated, corrupt or not a PyTorch/Detectron2 checkpoint."
            ) from e
