"""Weights files as untrusted input: reading checkpoints without running their code.

A pickle can name any Python callable, and unpickling calls it: a crafted weights file
from elsewhere would run code on load. ``.pth`` files go through
``torch.load(weights_only=True)``; Detectron2 / ImageNet ``.pkl`` files (plain pickles of
numpy arrays) through :class:`WeightsUnpickler`, which builds only containers, numbers,
strings and numpy arrays. Anything else is refused with :class:`UnsafeWeightsError`,
before it is built.
"""
import io
import pickle
import re

import torch

__all__ = ["UnsafeWeightsError", "WeightsUnpickler", "read_weights_file"]


class UnsafeWeightsError(pickle.UnpicklingError):
    """A weights file that asks for a Python object other than plain data to be built."""


# (module, name) of the only callables a pickle of weights may use: numpy arrays, dtypes
# and scalars (NumPy 1 and 2 module names), bytes in protocol-2 pickles, ordered dicts.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
}


class WeightsUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, tuples, numbers, strings and numpy arrays,
    and refuses every other type with :class:`UnsafeWeightsError`."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeWeightsError(f"{module}.{name}")

    def persistent_load(self, pid):
        raise UnsafeWeightsError(f"persistent id {pid!r}")


def _refusal(path, what):
    return UnsafeWeightsError(
        f"Refusing weights file '{path}': it asks to build {what}, which is not weights "
        "data (a weights file holds only tensors, arrays, numbers and strings)."
    )


def _forbidden_global(error):
    """The type torch's weights-only unpickler refused, from its many-line message; None
    when it refused something else (a file that is no pickle at all, say)."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    return found.group(1) if found else None


def read_weights_file(path):
    """The object stored in weights file ``path``, built without running any code.

    ``.pkl`` files are read as plain pickles (Latin-1 strings, as Detectron2's and
    Python 2's are); every other file by ``torch.load(weights_only=True)`` on the CPU.

    Raises:
        UnsafeWeightsError: the file asks to build an object of another type; the
            message names the file and the type.
        OSError, pickle.UnpicklingError, RuntimeError, ...: an unreadable file, as the
            readers raise them.
    """
    if str(path).endswith(".pkl"):
        with open(path, "rb") as f:
            data = f.read()
        try:
            return WeightsUnpickler(io.BytesIO(data), encoding="latin1").load()
        except UnsafeWeightsError as e:
            raise _refusal(path, e.args[0]) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        what = _forbidden_global(e)
        if what is not None:
            raise _refusal(path, what) from None
        raise
