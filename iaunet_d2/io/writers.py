"""Writing files so that readers never see a partial one: any file, sets of files,
json, and image arrays as TIFF / PNG / JPEG.

Every file is written to a temporary ``<name>.<random>.tmp`` next to it, fsynced and
then renamed over its path, so the path holds either its previous content or the
complete new one.
"""
import errno
import io
import json
import os
import shutil
import tempfile

import numpy as np

__all__ = [
    "FileSetWriteError",
    "atomic_write",
    "encode_image",
    "write_file_set",
    "write_image",
    "write_json",
]

_TIFF_EXTENSIONS = (".tif", ".tiff")


def _default_file_mode():
    # mkstemp creates 0600 files; give the result the permissions open() would have.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_temp(path, write_fn, mode):
    """Write through ``write_fn`` into a new fsynced temporary file next to ``path``;
    returns the temporary file's path (removed again if writing fails)."""
    folder = os.path.dirname(path) or "."
    fd, tmp_path = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_path, _default_file_mode())
    except BaseException:
        _remove_quietly(tmp_path)
        raise
    return tmp_path


def atomic_write(path, write_fn, mode="wb"):
    """Write ``path`` through ``write_fn(file)``: temporary file in the same folder,
    fsync, then rename over ``path``.

    A process killed mid-write leaves at most a stray ``.tmp`` file; ``path`` holds
    either its previous content or the complete new one.
    """
    tmp_path = _write_temp(path, write_fn, mode)
    try:
        os.replace(tmp_path, path)
    except BaseException:
        _remove_quietly(tmp_path)
        raise


class FileSetWriteError(OSError):
    """A set of files could not be written; none of them was left behind."""


def _describe_os_error(path, error):
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        folder = os.path.dirname(os.path.abspath(path))
        try:
            free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free in {folder}"
        except OSError:
            free = f"free space in {folder} unknown"
        reason = f"{reason} ({free})"
    return f"Cannot write '{path}': {reason}."


def write_file_set(contents):
    """Write several files as a set: all of them, or none.

    Every file is written to a temporary file next to it and fsynced first; only
    then are they renamed into place. If anything fails, the temporary files and the
    files of the set already renamed are removed, so no partial set is left.

    Args:
        contents (dict[str, bytes]): path -> content.

    Raises:
        FileSetWriteError: one line naming the file and the cause (free space when the
            disk is full).
    """
    temps = {}
    placed = []
    current = None
    try:
        for path, data in contents.items():
            current = path
            temps[path] = _write_temp(path, lambda f, data=data: f.write(data), "wb")
        for path, tmp_path in temps.items():
            current = path
            os.replace(tmp_path, path)
            placed.append(path)
    except BaseException as e:
        for path in placed:
            _remove_quietly(path)
        for tmp_path in temps.values():
            _remove_quietly(tmp_path)
        if not isinstance(e, OSError):
            raise
        error = FileSetWriteError(_describe_os_error(current, e))
        error.errno = e.errno
        raise error from e


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def write_json(data, path, indent=None):
    """Write ``data`` as json (``json.dump`` with ``indent``) to ``path`` atomically,
    creating its folder if needed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: json.dump(data, f, indent=indent), mode="w")


def encode_image(array, extension, compression=None):
    """The bytes of an image file holding ``array``.

    Args:
        array (np.ndarray): (H, W) or (H, W, C); colour in RGB(A) order.
        extension (str): ".tif"/".tiff" (any dtype and channel count, via tifffile)
            or any extension OpenCV encodes (".png", ".jpg", ...).
        compression (str or None): TIFF compression (e.g. "zlib"); None writes
            uncompressed. Ignored for other formats.

    Raises:
        ValueError: OpenCV cannot encode the array in that format.
    """
    if extension.lower() in _TIFF_EXTENSIONS:
        import tifffile

        buffer = io.BytesIO()  # tifffile wants a named file or a buffer, not a raw fd
        tifffile.imwrite(buffer, array, compression=compression)
        return buffer.getvalue()
    import cv2

    if array.ndim == 3 and array.shape[2] == 3:
        array = array[..., ::-1]  # OpenCV encodes colour as BGR
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[..., [2, 1, 0, 3]]  # RGBA -> BGRA
    ok, data = cv2.imencode(extension, np.ascontiguousarray(array))
    if not ok:
        raise ValueError(f"Cannot encode an image of shape {array.shape} as {extension}.")
    return data.tobytes()


def write_image(array, path):
    """Write an image array to ``path`` atomically, in the format its extension names
    (see :func:`encode_image`), creating its folder if needed.

    Raises:
        ValueError: the array cannot be encoded in that format.
    """
    data = encode_image(array, os.path.splitext(path)[1])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: f.write(data))
