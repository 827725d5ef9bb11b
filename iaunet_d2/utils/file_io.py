"""Writing files so that readers never see a partial one."""
import os
import tempfile

__all__ = ["atomic_write"]


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
