"""Compatibility fixes that let Detectron2 v0.6 run on the current Python stack.

Imported before anything else touches Detectron2 (``iaunet_d2/__init__.py``,
``train_net.py`` and the tests import it first). It is the only module of the
project that knows about these fixes:

* Pillow >= 10 removed ``Image.LINEAR`` that v0.6 uses as a default argument.
* NumPy >= 1.24 removed the ``np.int`` / ``np.float`` / ``np.object`` aliases that
  v0.6 uses in a few places (for example the class histogram of the train loader).
* v0.6 scripts a few functions with ``torch.jit.script``, which current torch
  reports as deprecated at every import; that warning is silenced.
* A pure-Python install of Detectron2 has no compiled ``detectron2._C``; v0.6 imports
  it at module level in a few files. A placeholder module is registered whose ops
  raise a clear error naming the missing op if anything ever calls one. Mask R-CNN,
  PointRend and IAUNet use none of them.
* ``detectron2.engine.defaults.create_ddp_model`` (what ``DefaultTrainer`` wraps its
  model with) passes ``device_ids=[local rank]``, which DistributedDataParallel rejects
  for a model on the CPU; for such a model it now passes no device ids, so multi-process
  CPU training (gloo, ``iaunet_d2.engine.launch``) works.
"""
import functools
import importlib
import sys
import types
import warnings

import numpy as np
from PIL import Image

__all__ = ["HAS_COMPILED_OPS", "MissingCompiledOpError"]


class MissingCompiledOpError(RuntimeError):
    """Raised when code asks for a Detectron2 compiled op that is not installed."""


class _MissingCompiledOps(types.ModuleType):
    """Stands in for ``detectron2._C`` when Detectron2 was installed without its ops."""

    # Answers for detectron2.utils.collect_env, so environment reports still work.
    _ENV_ANSWERS = {
        "get_compiler_version": lambda: "not built (pure-Python install)",
        "get_cuda_version": lambda: "not built (pure-Python install)",
        "has_cuda": lambda: False,
    }

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name in self._ENV_ANSWERS:
            return self._ENV_ANSWERS[name]

        def missing_op(*args, **kwargs):
            raise MissingCompiledOpError(
                f"detectron2._C.{name} was called, but this Detectron2 install has no "
                "compiled ops. Install Detectron2 from its source with its C++/CUDA "
                "extension built to use this op (see README.md, 'Installing Detectron2')."
            )

        return missing_op


def _alias_removed_pillow_names():
    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR


def _alias_removed_numpy_names():
    for name, value in (("int", int), ("float", float), ("object", object), ("bool", bool)):
        if name not in np.__dict__:
            setattr(np, name, value)


def _install_compiled_ops_placeholder():
    """Returns True if the real compiled ops are importable."""
    try:
        importlib.import_module("detectron2._C")
        return True
    except ImportError:
        pass
    detectron2 = importlib.import_module("detectron2")
    placeholder = _MissingCompiledOps("detectron2._C")
    sys.modules["detectron2._C"] = placeholder
    detectron2._C = placeholder
    return False


def _let_ddp_wrap_cpu_models():
    defaults = importlib.import_module("detectron2.engine.defaults")
    original = defaults.create_ddp_model
    if getattr(original, "_iaunet_cpu_aware", False):
        return

    @functools.wraps(original)
    def create_ddp_model(model, *args, **kwargs):
        params = list(model.parameters())
        if "device_ids" not in kwargs and params and all(p.device.type == "cpu" for p in params):
            # DistributedDataParallel takes no device ids for a CPU module.
            kwargs["device_ids"] = None
        return original(model, *args, **kwargs)

    create_ddp_model._iaunet_cpu_aware = True
    defaults.create_ddp_model = create_ddp_model
    # The package re-exports the name; keep both spellings on the fixed function.
    importlib.import_module("detectron2.engine").create_ddp_model = create_ddp_model


warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                        category=FutureWarning)
_alias_removed_pillow_names()
_alias_removed_numpy_names()
HAS_COMPILED_OPS = _install_compiled_ops_placeholder()
_let_ddp_wrap_cpu_models()  # after the fixes above: importing the engine needs them
