"""Detectron2 trainer for cell instance segmentation (IAUNet and the R-CNN baselines)."""
import contextlib
import logging
import math
import os

import torch
from detectron2.engine import DefaultTrainer
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from ..data.build import build_cell_test_loader, build_cell_train_loader
from ..data.dataset_mappers import build_dataset_mapper
from ..evaluation import build_coco_evaluator
from ..solver import build_lr_scheduler, build_optimizer
from .checkpoint import AtomicCheckpointer, CheckpointWriteError, check_weights_fit

__all__ = ["FiniteLossCheck", "Trainer", "TrainingInterrupted", "attach_finite_loss_check"]

# Detectron2's logger: default_setup gives it the console and OUTPUT_DIR/log.txt handlers,
# so the replica check lands next to the trainer's own messages.
logger = logging.getLogger("detectron2")


class TrainingInterrupted(Exception):
    """Training stopped by Ctrl-C; ``where`` says at which iteration and which
    checkpoint (the last one written) a ``--resume`` continues from."""

    def __init__(self, where):
        super().__init__(where)
        self.where = where


class _NoTrainingTraceback(logging.Filter):
    """Drops Detectron2's "Exception during training:" traceback from a console handler;
    the log file keeps it, and the entry point prints one line instead."""

    def filter(self, record):
        return not (record.exc_info and record.getMessage().startswith("Exception during training"))


def _writes_to_a_file(stream):
    name = getattr(stream, "name", None)
    return isinstance(name, str) and name not in ("<stdout>", "<stderr>")


@contextlib.contextmanager
def _training_traceback_in_log_file_only():
    handlers = [h for h in logging.getLogger("detectron2").handlers
                if hasattr(h, "stream") and not _writes_to_a_file(h.stream)]
    quiet = _NoTrainingTraceback()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


class FiniteLossCheck:
    """Forward hook that stops training at the first non-finite loss and names the
    culprit.

    It runs inside the model's forward, so before ``backward``: the weights are never
    updated with NaN/inf, whichever trainer (plain, AMP, DDP) drives the model.
    """

    def __init__(self, iteration):
        """``iteration``: a callable returning the current iteration, for the message."""
        self._iteration = iteration

    def __call__(self, module, inputs, output):
        if not module.training or not isinstance(output, dict):
            return
        values = {name: float(loss.detach()) for name, loss in output.items()}
        bad = {name: v for name, v in values.items() if not math.isfinite(v)}
        if bad:
            terms = ", ".join(f"{name}={v}" for name, v in bad.items())
            raise FloatingPointError(
                f"Training stopped: non-finite loss at iteration {self._iteration()} ({terms}); "
                f"all terms: {values}. Lower SOLVER.BASE_LR, enable "
                "SOLVER.CLIP_GRADIENTS, or resume from the last checkpoint with --resume."
            )


def attach_finite_loss_check(model, iteration):
    """Register :class:`FiniteLossCheck` on ``model`` (unwrapping DDP); returns the
    hook handle (``.remove()`` detaches it)."""
    module = model.module if isinstance(model, DistributedDataParallel) else model
    return module.register_forward_hook(FiniteLossCheck(iteration))


class Trainer(DefaultTrainer):
    """DefaultTrainer with the project's mapper, optimizer, schedule, COCO evaluator,
    atomic checkpoints and a non-finite-loss check."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self._finite_loss_hook = attach_finite_loss_check(self._trainer.model, lambda: self.iter)

    # Detectron2 v0.6 leaves the optimizer out of its checkpoints, so a resumed AdamW
    # would restart from empty moments; save and restore the inner trainer's state.
    def state_dict(self):
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "_trainer" in state:
            self._trainer.load_state_dict(state["_trainer"])

    def resume_or_load(self, resume=True):
        """Detectron2's resume-or-load, refusing initial weights (MODEL.WEIGHTS) that do
        not fit the model: other shapes, or no parameter in common (see
        :func:`check_weights_fit`; missing heads are normal when fine-tuning)."""
        self.checkpointer.last_incompatible = None
        super().resume_or_load(resume=resume)
        resumed = resume and self.checkpointer.has_checkpoint()
        if not resumed and self.cfg.MODEL.WEIGHTS:
            check_weights_fit(self.checkpointer.model, self.cfg.MODEL.WEIGHTS,
                              self.checkpointer.last_incompatible, strict=False)

    def train(self):
        """Train, then return the results of the final evaluation (None without one).

        Raises:
            TrainingInterrupted: Ctrl-C; its message gives the iteration and the last
                checkpoint kept.
            CheckpointWriteError: a checkpoint could not be written (full disk); the
                message also gives the iteration and the last checkpoint kept.
        """
        with _training_traceback_in_log_file_only():
            try:
                super().train()
            except KeyboardInterrupt:
                raise TrainingInterrupted(self._where_stopped()) from None
            except CheckpointWriteError as e:
                raise CheckpointWriteError(f"{e} {self._where_stopped()}") from e
        return getattr(self, "_last_eval_results", None)

    def _where_stopped(self):
        last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else None
        kept = f"last checkpoint kept: {last}" if last else "no checkpoint written yet"
        return f"Stopped at iteration {self.iter}; {kept}."

    def after_train(self):
        super().after_train()
        # Also runs when training raised; the other processes may then never reach the
        # all-gather, so only a run that finished its iterations is checked.
        if comm.get_world_size() > 1 and self.iter >= self.max_iter:
            self._check_replicas_in_sync()

    def _check_replicas_in_sync(self):
        """Compare a float64 parameter checksum across processes; DDP keeps them equal."""
        model = self._trainer.model
        if isinstance(model, DistributedDataParallel):
            model = model.module
        with torch.no_grad():
            checksum = float(sum(p.detach().double().sum().cpu() for p in model.parameters()))
        checksums = comm.all_gather(checksum)
        differing = [rank for rank, value in enumerate(checksums)
                     if not math.isclose(value, checksums[0], rel_tol=1e-9)]
        if differing:
            raise RuntimeError(
                "Replicas diverged during training: parameter checksum of rank 0 is "
                f"{checksums[0]!r}, ranks {differing} have "
                f"{[checksums[r] for r in differing]!r}."
            )
        if comm.is_main_process():
            logger.info("Replicas in sync after training: parameter checksum %r on all %d "
                        "processes", checksum, len(checksums))

    def build_hooks(self):
        # Called from DefaultTrainer.__init__ before the hooks capture the checkpointer.
        self.checkpointer = AtomicCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, **self.checkpointer.checkpointables
        )
        return super().build_hooks()

    @classmethod
    def build_train_loader(cls, cfg):
        return build_cell_train_loader(cfg, build_dataset_mapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_cell_test_loader(cfg, dataset_name, build_dataset_mapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_coco_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)
