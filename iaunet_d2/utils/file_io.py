"""Writing files so that readers never see a partial one."""
import errno
import os
import shutil
import tempfile

__all__ = ["FileSetWriteError", "atomic_write", "write_file_set"]


def _default_file_mode():
    # mkstemp creates 0600 files; give the result the permissions open() would have.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path, write_fn, mode="wb"):
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
        os.chmod(tmp_path, _default_file_mode())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
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
            folder = os.path.dirname(path) or "."
            fd, tmp_path = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
            temps[path] = tmp_path
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp_path, _default_file_mode())
        for path, tmp_path in temps.items():
            current = path
            os.replace(tmp_path, path)
            placed.append(path)
    except OSError as e:
        for path in placed:
            _remove_quietly(path)
        for tmp_path in temps.values():
            _remove_quietly(tmp_path)
        error = FileSetWriteError(_describe_os_error(current, e))
        error.errno = e.errno
        raise error from e
    except BaseException:
        for path in placed:
            _remove_quietly(path)
        for tmp_path in temps.values():
            _remove_quietly(tmp_path)
        raise


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass
