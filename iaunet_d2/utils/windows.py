"""Windows covering an image, shared by the LIVECell crop converter and tiled prediction."""

__all__ = ["tile_windows"]


def tile_windows(height, width, size=512, stride=None):
    """Crop windows covering an image: starts every ``stride`` px (default ``size``),
    the last one moved back to end at the border (so crops never need padding).

    Returns:
        list of (y0, x0, h, w); h = min(size, height), w = min(size, width).
    """
    stride = size if stride is None else stride

    def starts(length):
        if length <= size:
            return [0]
        out = list(range(0, length - size, stride))
        return out + [length - size]

    h, w = min(size, height), min(size, width)
    return [(y, x, h, w) for y in starts(height) for x in starts(width)]
