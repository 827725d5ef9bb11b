"""read_image: bit depths, channel layouts and broken files."""
import numpy as np
import pytest
import tifffile
import cv2

from iaunet_d2.data.image_io import ImageReadError, read_image


def test_16bit_tiff_uses_full_range(tmp_path):
    path = str(tmp_path / "img16.tif")
    values = np.linspace(1000, 40000, 32 * 48).reshape(32, 48).astype(np.uint16)
    tifffile.imwrite(path, values)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (32, 48, 3)
    assert image.min() == 0 and image.max() == 255
    # Monotonic mapping, not clipped: many distinct levels survive.
    assert len(np.unique(image)) > 200
    assert (np.diff(image[:, :, 0].ravel().astype(int)) >= 0).all()


def test_grayscale_gives_three_equal_channels(tmp_path):
    path = str(tmp_path / "gray.png")
    gray = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    cv2.imwrite(path, gray)
    image = read_image(path)
    assert image.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(image[:, :, c], gray)  # uint8 kept as is


def test_float_tiff_and_constant_image(tmp_path):
    path = str(tmp_path / "float.tif")
    values = np.random.default_rng(1).normal(0.0, 1.0, (16, 16)).astype(np.float32)
    tifffile.imwrite(path, values)
    image = read_image(path)
    assert image.min() == 0 and image.max() == 255
    assert np.argmax(image[:, :, 0]) == np.argmax(values)

    constant = str(tmp_path / "constant.tif")
    tifffile.imwrite(constant, np.full((8, 8), 7.5, np.float32))
    assert (read_image(constant) == 0).all()


def test_rgb_png_channel_order(tmp_path):
    path = str(tmp_path / "rgb.png")
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200  # red
    rgb[..., 2] = 10  # blue
    cv2.imwrite(path, rgb[:, :, ::-1])  # OpenCV writes BGR
    assert tuple(read_image(path, format="RGB")[0, 0]) == (200, 0, 10)
    assert tuple(read_image(path, format="BGR")[0, 0]) == (10, 0, 200)


def test_rgba_drops_alpha(tmp_path):
    path = str(tmp_path / "rgba.png")
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 2] = 90
    bgra[..., 3] = 255
    cv2.imwrite(path, bgra)
    assert tuple(read_image(path, format="RGB")[0, 0]) == (90, 0, 0)


@pytest.mark.parametrize("channel_first", [True, False])
def test_multichannel_tiff_needs_channel(tmp_path, channel_first):
    path = str(tmp_path / "stack.tif")
    stack = np.stack([np.full((24, 24), 100 * (i + 1), np.uint16) for i in range(5)])
    stack[2, :12] = 0  # make channel 2 non-constant
    tifffile.imwrite(path, stack if channel_first else np.moveaxis(stack, 0, -1))
    with pytest.raises(ImageReadError, match="channel") as info:
        read_image(path)
    assert "stack.tif" in str(info.value)
    image = read_image(path, channel=2)
    assert image.shape == (24, 24, 3)
    assert (image[:12] == 0).all() and (image[12:] == 255).all()
    with pytest.raises(ImageReadError):
        read_image(path, channel=5)


def test_volume_is_rejected(tmp_path):
    path = str(tmp_path / "volume.tif")
    tifffile.imwrite(path, np.zeros((3, 4, 16, 16), np.uint8))
    with pytest.raises(ImageReadError, match="volume.tif"):
        read_image(path)


def test_truncated_png_and_garbage_raise(tmp_path):
    ok, data = cv2.imencode(".png", np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data.tobytes()[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated.png"):
        read_image(str(truncated))

    ok, data = cv2.imencode(".jpg", np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    truncated_jpg = tmp_path / "truncated.jpg"
    truncated_jpg.write_bytes(data.tobytes()[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated.jpg"):
        read_image(str(truncated_jpg))

    for name in ("garbage.png", "garbage.tif"):
        garbage = tmp_path / name
        garbage.write_bytes(b"this is not an image" * 10)
        with pytest.raises(ImageReadError, match=name):
            read_image(str(garbage))


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="nope.png"):
        read_image(path)
    assert issubclass(ImageReadError, ValueError)
