"""A checkpointer whose files are never half-written."""
import os
import pickle
import tempfile

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicCheckpointer", "CheckpointReadError"]


class CheckpointReadError(RuntimeError):
    """A checkpoint file exists but cannot be read."""


def _atomic_write(path, write_fn, mode="wb"):
    """Write through a temp file in the same folder, fsync, then rename over ``path``.

    A process killed mid-write leaves at most a stray ``.tmp`` file; ``path`` holds
    either its previous content or the complete new one.
    """
    folder = os.path.dirname(path) or "."
    fd, tmp_path = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                                    dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


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
        _atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(path, lambda f: f.write(last_filename_basename), mode="w")

    def _load_file(self, filename):
        try:
            return super()._load_file(filename)
        except (EOFError, RuntimeError, pickle.UnpicklingError, OSError) as e:
            raise CheckpointReadError(
                f"Cannot read checkpoint {filename}: {type(e).__name__}: {e}. "
                "The file is truncated, corrupt or not a PyTorch/Detectron2 checkpoint."
            ) from e
