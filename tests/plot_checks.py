"""What a plot test checks: the file decodes as a PNG image of a readable size with something drawn on it."""

from __future__ import annotations

from pathlib import Path


def assert_drawn_png(path: Path, min_pixels: tuple[int, int] = (200, 300)) -> None:
    """``path`` decodes as a PNG of at least ``min_pixels`` (height, width) whose pixels are not all one colour:
    an empty canvas, a truncated file or a file of another format fails."""
    import numpy as np
    from matplotlib import image

    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    pixels = image.imread(str(path))[..., :3]  # RGB(A) floats in [0, 1]
    height, width = pixels.shape[:2]
    assert height >= min_pixels[0] and width >= min_pixels[1], f"{path}: {width}x{height} pixels is too small"
    background = np.all(pixels > 0.95, axis=-1)  # white canvas
    assert (~background).mean() > 0.01, f"{path}: nothing is drawn (almost every pixel is white)"
    colours = np.unique((pixels[~background] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) >= 3, f"{path}: only {len(colours)} colours drawn (text and axes alone have more)"
