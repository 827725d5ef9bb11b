"""Reading microscopy images of any common bit depth into 8-bit, 3-channel arrays.

Cell datasets mix 8-bit PNG/JPEG, 16-bit TIFF/PNG and float TIFF images, most of them
grayscale. Models and Detectron2's augmentations expect ``uint8`` HxWx3 arrays, so
:func:`read_image` converts every image the same way:

* ``uint8`` values are kept as they are; any other dtype (``uint16``, signed ints,
  floats) is scaled per image from its own min..max to 0..255 (a constant image gives
  zeros; NaN becomes 0). Per-image scaling keeps the full dynamic range of 16-bit
  images whose values only use part of the 0..65535 range.
* Grayscale becomes three identical channels, an alpha channel is dropped.
* Images with more than four channels, or channel-first stacks (C, H, W), need an
  explicit ``channel`` index; that single channel is then used as grayscale.

Any problem (missing, unreadable, truncated or corrupt file, unsupported shape) raises
:class:`ImageReadError`, whose message names the file.
"""
import io
import os

import cv2
import numpy as np
from PIL import Image

__all__ = ["ImageReadError", "read_image", "to_uint8"]

_TIFF_EXTENSIONS = (".tif", ".tiff")
_JPEG_MAGIC = b"\xff\xd8"


class ImageReadError(ValueError):
    """An image file could not be read or converted; the message names the file."""


def read_image(path, format="BGR", channel=None):
    """Read an image file as an 8-bit, 3-channel array.

    Args:
        path (str): image file (PNG, JPEG, TIFF, or anything OpenCV decodes).
        format (str): channel order of the result, "BGR" (Detectron2's default,
            ``cfg.INPUT.FORMAT``) or "RGB".
        channel (int or None): index of the channel to use for images with more than
            four channels or channel-first stacks; it may also pick one channel of an
            RGB(A) image (indices in RGB(A) order, whatever the file format). The
            chosen channel is returned as grayscale.

    Returns:
        np.ndarray: uint8 array of shape (H, W, 3), C-contiguous.

    Raises:
        ImageReadError: the file is missing, unreadable, truncated, corrupt, or has a
            shape that is not a 2-D image.
    """
    if format not in ("BGR", "RGB"):
        raise ValueError(f"read_image supports format 'BGR' or 'RGB', got {format!r}")
    array = read_raw_image(path)
    image = _to_hwc(array, path, channel)
    image = to_uint8(image)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]  # drop alpha
    if format == "BGR":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def to_uint8(array):
    """Scale an array of any dtype to uint8.

    uint8 input is returned unchanged; bool becomes 0/255; every other dtype is scaled
    linearly from its own finite min..max to 0..255 over all channels together (so
    the colour balance of multi-channel images is kept). Constant images give zeros.

    Args:
        array (np.ndarray): any shape.

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
    low, high = values[finite].min(), values[finite].max()
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
    return array


def _decode_tiff(path, data):
    import tifffile  # only needed for TIFF files

    try:
        return tifffile.imread(io.BytesIO(data))
    except Exception as e:  # tifffile raises many types for broken files
        raise ImageReadError(
            f"Cannot read image '{path}': corrupt or unsupported TIFF ({type(e).__name__}: {e})."
        ) from e


def _to_hwc(array, path, channel):
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
    if array.ndim == 2:
        if channel not in (None, 0):
            raise ImageReadError(
                f"Cannot read image '{path}': channel={channel} requested but the image "
                "is single-channel."
            )
        return array[:, :, None]
    if array.ndim != 3:
        raise ImageReadError(
            f"Cannot read image '{path}': expected a 2-D image (H, W) or (H, W, C), got "
            f"an array of shape {tuple(array.shape)} (a 3-D or time stack?)."
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
        layout = "(C, H, W)" if channel_first else "(H, W, C)"
        raise ImageReadError(
            f"Cannot read image '{path}': it has {num_channels} channels in layout "
            f"{layout} (shape {tuple(array.shape)}); pass channel=<index> to select one."
        )
    if not 0 <= channel < num_channels:
        raise ImageReadError(
            f"Cannot read image '{path}': channel={channel} is out of range for "
            f"{num_channels} channels (shape {tuple(array.shape)})."
        )
    plane = array[channel] if channel_first else array[:, :, channel]
    return plane[:, :, None]
