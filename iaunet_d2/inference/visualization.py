"""Figures of a prediction: the overlay of coloured cells and the activation-map grid."""
import cv2
import numpy as np

__all__ = ["MAX_ACTIVATION_ROWS", "overlay_image", "activation_figure"]

# Cells shown in an activation-map figure (the best-scoring ones).
MAX_ACTIVATION_ROWS = 48
_THUMB = 96  # activation-map panel height in pixels


def _colours(n):
    """(n + 1, 3) uint8 RGB colours, index 0 black; distinct hues by the golden ratio."""
    hues = (np.arange(n) * 0.618033988749895 % 1.0 * 179).astype(np.uint8)
    hsv = np.stack([hues, np.full(n, 200, np.uint8), np.full(n, 255, np.uint8)], 1)[None]
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0] if n else np.zeros((0, 3), np.uint8)
    return np.concatenate([np.zeros((1, 3), np.uint8), rgb])


def overlay_image(image_rgb, labels, alpha=0.4):
    """(H, W, 3) uint8 RGB: cells tinted with their colour and outlined."""
    colours = _colours(int(labels.max()))
    tint = colours[labels]
    fg = labels > 0
    out = image_rgb.astype(np.float32)
    out[fg] = (1 - alpha) * out[fg] + alpha * tint[fg]
    edge = np.zeros_like(fg)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge &= fg
    out[edge] = tint[edge]
    return out.astype(np.uint8)


def _panel(array, size):
    """Resize a 2-D float/bool array to (h, w) = size and colour it (RGB uint8)."""
    a = np.asarray(array, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    a = cv2.resize(a, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    coloured = cv2.applyColorMap((a * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    return coloured[..., ::-1]


def activation_figure(prediction, image_rgb, max_rows=MAX_ACTIVATION_ROWS):
    """Grid of the best ``max_rows`` cells: per row the cell's tile, its query's IA
    activation map at each decoder level (coarse to fine, each normalized to its own
    min..max, viridis) and its mask on the tile.

    Returns:
        uint8 RGB (rows * 96 + header, columns * panel width + margin, 3), or None
        when there is no cell with a known query and activation maps.
    """
    rows, n_levels = [], 0
    for k, c in enumerate(prediction.cells[:max_rows], start=1):
        maps = prediction.activations[c.tile] if c.tile < len(prediction.activations) else None
        if maps is None or c.query < 0:
            continue
        wy, wx, wh, ww = prediction.windows[c.tile]
        size = (_THUMB, max(16, min(3 * _THUMB, round(_THUMB * ww / wh))))
        tile_rgb = cv2.resize(image_rgb[wy:wy + wh, wx:wx + ww], (size[1], size[0]))
        mask = np.zeros((wh, ww), dtype=np.float32)
        ys, xs = max(c.y0, wy), max(c.x0, wx)
        ye, xe = min(c.y0 + c.mask.shape[0], wy + wh), min(c.x0 + c.mask.shape[1], wx + ww)
        mask[ys - wy:ye - wy, xs - wx:xe - wx] = c.mask[ys - c.y0:ye - c.y0, xs - c.x0:xe - c.x0]
        mask_small = cv2.resize(mask, (size[1], size[0])) > 0.5
        mask_panel = tile_rgb.copy()
        mask_panel[mask_small] = (0.4 * mask_panel[mask_small] + 0.6 * np.array([255, 60, 60])).astype(np.uint8)
        n_levels = len(maps)
        panels = [tile_rgb] + [_panel(level[c.query].float().numpy(), size) for level in maps] + [mask_panel]
        row = np.concatenate([np.pad(p, ((1, 1), (1, 1), (0, 0)), constant_values=255) for p in panels], 1)
        label = np.full((row.shape[0], 70, 3), 255, np.uint8)
        cv2.putText(label, f"#{k}", (4, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        cv2.putText(label, f"{c.score:.2f}", (4, 55), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
        rows.append(np.concatenate([label, row], 1))
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    header = np.full((24, width, 3), 255, np.uint8)
    cv2.putText(header, f"cell | tile | IA maps, {n_levels} level(s) coarse->fine | mask",
                (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    return np.concatenate([header] + rows, 0)
