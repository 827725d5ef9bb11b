"""Image files: finding them in folders and reading them as 8-bit, 3-channel arrays.

:func:`list_images` lists the image files of a folder (:data:`IMAGE_EXTENSIONS`) and
:func:`fingerprint_files` summarises a set of files (path, size, modification time)
for caches that must notice added, removed or changed files.

Cell datasets mix 8-bit PNG/JPEG, 16-bit TIFF/PNG and float TIFF images, most of them
grayscale. Models and Detectron2's augmentations expect ``uint8`` HxWx3 arrays, so
:func:`read_image` converts every image the same way, in training, evaluation and
prediction (``INPUT.INTENSITY_NORM``):

* ``uint8`` values are kept as they are. Any other dtype (``uint16``, signed ints,
  floats) is mapped to 0..255 by one of :data:`NORMALIZATIONS`:

  - ``"percentile"`` (default): per image, the 1st percentile -> 0 and the 99.8th -> 255,
    values outside clipped. A few hot or dead pixels, or how much background a frame
    shows, barely move these points, so the same cells look the same in a crop and in
    the whole frame (Cellpose normalises the same way, with 1 and 99).
  - ``"minmax"``: per image, its finite min -> 0 and max -> 255 (one outlier pixel
    changes the whole image).
  - ``"fixed:LOW,HIGH"``: the same range for every image (e.g. ``"fixed:0,4095"`` for
    12-bit cameras), so a crop and its frame map every pixel identically.
  - ``"dataset"`` (config only): a fixed range measured once on the training images,
    see :func:`iaunet_d2.config.build.resolve_intensity_norm`.

  A constant image gives zeros; NaN and infinite pixels become 0, with one warning per
  image giving their count.
* JPEG/PNG files with an EXIF orientation are turned upright as image viewers show
  them (label images too, so they stay aligned with their images).
* Grayscale becomes three identical channels, an alpha channel is dropped.
* Images with more than four channels need an explicit ``channel`` (``--channel``);
  the channel is then used as grayscale. A gray image ignores ``channel``, so one
  value serves a folder mixing gray and multi-channel images.
* Stacks (Z-stacks, time series: (N, H, W) or (N, H, W, C)) need a ``plane``
  (``--plane``); a channel-first image (C, H, W) takes ``channel`` or ``plane``.

Any problem (missing, unreadable, truncated or corrupt file, unsupported shape) raises
:class:`ImageReadError`, whose message names the file.
"""
import hashlib
import io
import logging
import os

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "NORMALIZATIONS",
    "PERCENTILES",
    "ImageReadError",
    "check_normalization",
    "fingerprint_files",
    "list_images",
    "read_image",
    "read_raw_image",
    "to_uint8",
]

logger = logging.getLogger(__name__)

# File name endings (lower case) taken as images when a folder is listed.
IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
NORMALIZATIONS = ("percentile", "minmax", "fixed:LOW,HIGH", "dataset")
PERCENTILES = (1.0, 99.8)
# Percentiles of larger images are taken on an evenly strided subset of this many pixels.
_PERCENTILE_SAMPLE = 1 << 20
_TIFF_EXTENSIONS = (".tif", ".tiff")
_JPEG_MAGIC = b"\xff\xd8"


class ImageReadError(ValueError):
    """An image file could not be read or converted; the message names the file."""


def list_images(folder):
    """The image files directly in ``folder`` (not recursive), sorted.

    A file is an image when its name ends with one of :data:`IMAGE_EXTENSIONS`, in any
    letter case.

    Returns:
        list[str]: ``os.path.join(folder, name)`` of each image file.

    Raises:
        OSError: ``folder`` cannot be listed (e.g. it does not exist).
    """
    return sorted(
        os.path.join(folder, name) for name in os.listdir(folder)
        if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, name))
    )


def fingerprint_files(paths, salt=""):
    """A hex digest of ``salt`` and the absolute path, size and modification time of
    each of ``paths`` in the given order (a missing file counts as missing), so that
    any added, removed, renamed or changed file gives another digest."""
    digest = hashlib.sha1(salt.encode())
    for path in paths:
        try:
            st = os.stat(path)
            digest.update(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{os.path.abspath(path)}|missing\n".encode())
    return digest.hexdigest()


def read_image(path, format="BGR", channel=None, plane=None, normalization="percentile"):
    """Read an image file as an 8-bit, 3-channel array.

    Args:
        path (str): image file (PNG, JPEG, TIFF, or anything OpenCV decodes).
        format (str): channel order of the result, "BGR" (Detectron2's default,
            ``cfg.INPUT.FORMAT``) or "RGB".
        channel (int or None): index of the channel to use for images with more than
            four channels or channel-first images; it may also pick one channel of an
            RGB(A) image (indices in RGB(A) order, whatever the file format). The
            chosen channel is returned as grayscale. Ignored for gray images.
        plane (int or None): index of the plane of a stack (N, H, W) or (N, H, W, C).
            Ignored for plain 2-D images.
        normalization (str): one of :data:`NORMALIZATIONS`, for non-uint8 images.

    Returns:
        np.ndarray: uint8 array of shape (H, W, 3), C-contiguous.

    Raises:
        ImageReadError: the file is missing, unreadable, truncated, corrupt, or has a
            shape that is not a 2-D image.
        ValueError: an unknown ``normalization``.
    """
    if format not in ("BGR", "RGB"):
        raise ValueError(f"read_image supports format 'BGR' or 'RGB', got {format!r}")
    check_normalization(normalization)
    array = read_raw_image(path)
    image = _to_hwc(array, path, channel, plane)
    _warn_non_finite(image, path)
    image = to_uint8(image, normalization)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]  # drop alpha
    if format == "BGR":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


_warned_non_finite = set()


def _warn_non_finite(image, path):
    """One warning per file (per process) when a float image holds NaN or infinite pixels."""
    if image.dtype.kind != "f" or path in _warned_non_finite:
        return
    bad = image.size - int(np.count_nonzero(np.isfinite(image)))
    if bad:
        _warned_non_finite.add(path)
        logger.warning("'%s': %d NaN/infinite pixel value(s) became 0 (black).", path, bad)


def check_normalization(normalization, allow_dataset=False):
    """Parse an intensity normalisation name (see :data:`NORMALIZATIONS`).

    ``"dataset"`` (accepted with ``allow_dataset``, i.e. in a config) stands for a
    fixed range measured on the training images; ``build_config`` replaces it by
    ``"fixed:LOW,HIGH"`` before any image is read.

    Returns:
        tuple: ("percentile",), ("minmax",), ("dataset",) or ("fixed", low, high).

    Raises:
        ValueError: one line naming the accepted values.
    """
    if normalization in ("percentile", "minmax") or (allow_dataset and normalization == "dataset"):
        return (normalization,)
    if isinstance(normalization, str) and normalization.startswith("fixed:"):
        try:
            low, high = (float(v) for v in normalization[len("fixed:"):].split(","))
        except ValueError:
            low = high = None
        if low is not None and high > low:
            return ("fixed", low, high)
    raise ValueError(
        f"Unknown intensity normalisation {normalization!r} (INPUT.INTENSITY_NORM); use "
        "'percentile', 'minmax', 'dataset' (in a config) or 'fixed:LOW,HIGH' with LOW < HIGH, "
        "e.g. 'fixed:0,4095'."
    )


def _intensity_range(values, finite, normalization):
    kind = check_normalization(normalization)
    if kind[0] == "fixed":
        return kind[1], kind[2]
    data = values[finite]
    if kind[0] == "minmax":
        return data.min(), data.max()
    if data.size > _PERCENTILE_SAMPLE:
        data = data[:: data.size // _PERCENTILE_SAMPLE]
    low, high = np.percentile(data, PERCENTILES)
    if high <= low:  # e.g. a mostly constant image: fall back to its full range
        return data.min(), data.max()
    return low, high


def to_uint8(array, normalization="percentile"):
    """Map an array of any dtype to uint8.

    uint8 input is returned unchanged; bool becomes 0/255; every other dtype is mapped
    linearly from the range that ``normalization`` picks (see the module docstring) to
    0..255 over all channels together (so the colour balance of multi-channel images
    is kept), values outside clipped. Constant images give zeros.

    Args:
        array (np.ndarray): any shape.
        normalization (str): one of :data:`NORMALIZATIONS`.

    Returns:
        np.ndarray: uint8 array of the same shape.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    values = array.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(array.shape, dtype=np.uint8)
    low, high = _intensity_range(values, finite, normalization)
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    scaled[~finite] = 0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def read_raw_image(path):
    """The decoded array as stored (any dtype and channel count; colour in RGB(A) order).

    Raises ImageReadError naming the file when it is missing, empty or undecodable.
    """
    if not os.path.exists(path):
        raise ImageReadError(f"Cannot read image '{path}': file not found.")
    if os.path.isdir(path):
        raise ImageReadError(f"Cannot read image '{path}': it is a directory.")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageReadError(f"Cannot read image '{path}': {e}") from e
    if not data:
        raise ImageReadError(f"Cannot read image '{path}': the file is empty.")

    if path.lower().endswith(_TIFF_EXTENSIONS):
        return _decode_tiff(path, data)

    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageReadError(
            f"Cannot read image '{path}': not a decodable image (corrupt, truncated or "
            "unsupported format)."
        )
    if data[:2] == _JPEG_MAGIC:
        # OpenCV silently returns a partly grey image for truncated JPEGs; Pillow
        # raises, so let it check the stream.
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageReadError(f"Cannot read image '{path}': corrupt JPEG ({e}).") from e
    if array.ndim == 3 and array.shape[2] == 3:
        array = array[:, :, ::-1]  # OpenCV decodes colour as BGR
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, [2, 1, 0, 3]]  # BGRA -> RGBA
    return apply_exif_orientation(array, exif_orientation(data))


# EXIF orientation tag (0x0112) -> the array operation that shows the image upright.
_ORIENTATIONS = {
    2: lambda a: a[:, ::-1],                       # mirrored left-right
    3: lambda a: a[::-1, ::-1],                    # rotated 180
    4: lambda a: a[::-1],                          # mirrored top-bottom
    5: lambda a: a.swapaxes(0, 1),                 # transposed
    6: lambda a: np.rot90(a, k=-1),                # rotated 90 clockwise to view
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),     # transversed
    8: lambda a: np.rot90(a, k=1),                 # rotated 90 counter-clockwise to view
}


def exif_orientation(data):
    """The EXIF orientation (1..8) of an encoded JPEG/PNG/WebP file's bytes; 1 (upright)
    when it has none or cannot say."""
    if b"Exif" not in data[:65536] and b"eXIf" not in data:
        return 1
    try:
        with Image.open(io.BytesIO(data)) as im:
            value = im.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError):
        return 1
    return value if value in _ORIENTATIONS else 1


def apply_exif_orientation(array, orientation):
    """``array`` (H, W[, C]) turned as image viewers show a file of that EXIF orientation."""
    turn = _ORIENTATIONS.get(orientation)
    return np.ascontiguousarray(turn(array)) if turn else array


def _decode_tiff(path, data):
    import tifffile  # only needed for TIFF files

    try:
        return tifffile.imread(io.BytesIO(data))
    except Exception as e:  # tifffile raises many types for broken files
        raise ImageReadError(
            f"Cannot read image '{path}': corrupt or unsupported TIFF ({type(e).__name__}: {e})."
        ) from e


def _to_hwc(array, path, channel, plane=None):
    """Bring a decoded array to (H, W, C) with C in {1, 3, 4}.

    Returns:
        np.ndarray of shape (H, W, 1), (H, W, 3) or (H, W, 4), original dtype.
    """
    array = np.asarray(array)
    if array.ndim > 3:
        # Singleton axes (e.g. a one-page, one-plane stack) carry no information.
        array = np.squeeze(array)
        if array.ndim < 2:
            raise ImageReadError(f"Cannot read image '{path}': degenerate shape.")
    stack = array.ndim == 4 or (array.ndim == 3 and array.shape[0] < array.shape[2]
                                and array.shape[2] not in (3, 4))
    if plane is not None and stack:
        if not 0 <= plane < array.shape[0]:
            raise ImageReadError(
                f"Cannot read image '{path}': --plane {plane} is out of range for its "
                f"{array.shape[0]} planes (shape {tuple(array.shape)})."
            )
        array = array[plane]
    elif array.ndim == 4:
        raise ImageReadError(
            f"Cannot read image '{path}': it is a stack of {array.shape[0]} images "
            f"(shape {tuple(array.shape)}, a Z-stack or time series); choose one with "
            "--plane INDEX."
        )
    if array.ndim == 2:
        return array[:, :, None]  # gray: --channel does not apply
    if array.ndim != 3:
        raise ImageReadError(
            f"Cannot read image '{path}': expected a 2-D image (H, W) or (H, W, C), got "
            f"an array of shape {tuple(array.shape)}."
        )
    if min(array.shape[:2]) == 0 or array.shape[2] == 0:
        raise ImageReadError(f"Cannot read image '{path}': empty image {array.shape}.")

    # The channel axis is the shorter of the first and last axes.
    channel_first = array.shape[0] < array.shape[2]
    num_channels = array.shape[0] if channel_first else array.shape[2]
    plain_colour = not channel_first and num_channels in (1, 3, 4)
    if channel is None:
        if plain_colour:
            return array
        if channel_first:
            raise ImageReadError(
                f"Cannot read image '{path}': it holds {num_channels} planes of "
                f"{array.shape[1]}x{array.shape[2]} (shape {tuple(array.shape)}): a Z-stack, "
                "time series or channel-first image; choose one with --plane INDEX "
                "(or --channel INDEX)."
            )
        raise ImageReadError(
            f"Cannot read image '{path}': it has {num_channels} channels (shape "
            f"{tuple(array.shape)}); choose one with --channel INDEX."
        )
    if not 0 <= channel < num_channels:
        raise ImageReadError(
            f"Cannot read image '{path}': --channel {channel} is out of range for its "
            f"{num_channels} channels (shape {tuple(array.shape)})."
        )
    selected = array[channel] if channel_first else array[:, :, channel]
    return selected[:, :, None]
