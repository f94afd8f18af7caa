"""What a plot test checks: the file decodes as a PNG image of a readable size with something drawn on it."""

from __future__ import annotations

from pathlib import Path


def assert_drawn_png(path: Path, min_pixels: tuple[int, int] = (200, 300)) -> None:
    """``path`` is a PNG of at least ``min_pixels`` (height, width) with something drawn on its white canvas: a
    file of another format, a truncated file or an empty figure fails."""
    import numpy as np
    from matplotlib import image

    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    pixels = image.imread(str(path))[..., :3]  # RGB floats in [0, 1]; a cut file fails to decode here
    height, width = pixels.shape[:2]
    assert height >= min_pixels[0] and width >= min_pixels[1], f"{path}: {width}x{height} pixels is too small"
    drawn = ~np.all(pixels > 0.95, axis=-1)  # anything that is not the white canvas
    assert drawn.mean() > 0.01, f"{path}: nothing is drawn (almost every pixel is white)"
    colours = np.unique((pixels[drawn] * 255).astype(np.uint8), axis=0)
    assert len(colours) >= 3, f"{path}: only {len(colours)} colours drawn (axes and text alone give more)"
