"""A film-negative colour-grading preview, as seed 000's application runs it, for benchmarks.

The application keeps a 2000x2000 float32 proxy of the open photograph (48 MB) and, on every
slider move, renders a preview through a chain of curves, white balance, gamma and
saturation. Written the plain numpy way, each step allocates a new temporary; the chain runs
over the proxy in strips, so the temporaries are *medium*-sized (about 1 MB): too small for
glibc to map them on their own (it gives those back on ``free``), so they come from the heap,
which is where memory stays behind between previews and images.

Module level and importable, so that actor processes can unpickle :class:`Grader` by
reference. numpy only: scikit-image is needed by the parent alone, to read the photographs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PROXY_SIDE", "SAMPLES", "Grader", "GradingParams", "load_samples", "params_for"]

PROXY_SIDE = 2000
# Real photographs shipped with scikit-image (no download needed), of different sizes and
# aspect ratios, so every image switch really changes what the grader holds.
SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
# Rows per strip: 32 rows of the half-resolution working image are 32 x 1000 x 3 float32 =
# 384 KB per temporary, the medium size a heap keeps. Half resolution because a preview is
# shown at screen size, not proxy size; it keeps a preview around 50 ms on a laptop core.
_STRIP_ROWS = 32
_LUMA = (0.2126, 0.7152, 0.0722)


@dataclass(frozen=True)
class GradingParams:
    """The sliders of the grading panel."""

    exposure: float = 1.0
    density: float = 1.0  # slope of the negative's density curve
    contrast: float = 1.0
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)  # white balance, per channel
    saturation: float = 1.0
    rolloff: float = 0.2  # highlight compression


def params_for(step: int) -> GradingParams:
    """The slider positions of the ``step``-th preview: a user dragging a few sliders."""
    t = step * 0.1
    return GradingParams(
        exposure=0.9 + 0.05 * (step % 5),
        density=0.9 + t / 4,
        contrast=1.0 + t / 2,
        gains=(1.0 + t / 10, 1.0, 1.0 - t / 10),
        saturation=0.8 + t,
        rolloff=0.1 + t / 5,
    )


def load_samples() -> dict[str, np.ndarray]:
    """The sample photographs as uint8 RGB arrays, decoded once (like files already opened)."""
    from skimage import data

    return {name: getattr(data, name)() for name in SAMPLES}


def upscale(photo: np.ndarray, side: int = PROXY_SIDE) -> np.ndarray:
    """A ``side`` x ``side`` x 3 float32 proxy of a uint8 photograph (nearest neighbour, cropped).

    Nearest neighbour because it costs one pass: what is measured is the memory behaviour of
    holding and grading a proxy, not resampling quality.
    """
    rows = -(-side // photo.shape[0])
    cols = -(-side // photo.shape[1])
    big = photo.repeat(rows, axis=0).repeat(cols, axis=1)[:side, :side, :3]
    return big.astype(np.float32) / np.float32(255.0)


def _grade_strip(x: np.ndarray, p: GradingParams) -> np.ndarray:
    """About thirty elementwise steps, each allocating a new array, as such code usually is."""
    x = x * p.exposure
    x = np.clip(x, 0.001, 1.0)
    x = 1.0 - x  # invert the negative
    x = x * p.density
    x = x * x * (3.0 - 2.0 * x)  # the paper's characteristic S-curve
    x = (x - 0.5) * p.contrast + 0.5
    x = np.clip(x, 0.0, 1.0)
    x = np.sqrt(x)  # display gamma, about 1/2
    x = x * np.asarray(p.gains, dtype=np.float32)
    luma = x[..., 0] * _LUMA[0] + x[..., 1] * _LUMA[1] + x[..., 2] * _LUMA[2]
    x = luma[..., None] + (x - luma[..., None]) * p.saturation
    x = x / (1.0 + x * p.rolloff)
    x = np.clip(x, 0.0, 1.0)
    return (x * 255.0 + 0.5).astype(np.uint8)


def grade(proxy: np.ndarray, params: GradingParams) -> np.ndarray:
    """A 500x500 uint8 preview of ``proxy`` graded with ``params``."""
    working = proxy[::2, ::2]
    strips = [
        _grade_strip(working[row : row + _STRIP_ROWS], params)[::2, ::2]
        for row in range(0, working.shape[0], _STRIP_ROWS)
    ]
    return np.concatenate(strips)


class Grader:
    """What the application keeps per open image: its proxy, and the preview renderer.

    ``Grader(photo)`` loads an image at construction (one actor per image);
    ``Grader()`` then ``load(photo)`` for each image in turn (one long-lived grader).
    """

    def __init__(self, photo: np.ndarray | None = None) -> None:
        self.proxy: np.ndarray | None = None
        if photo is not None:
            self.load(photo)

    def load(self, photo: np.ndarray) -> tuple[int, ...]:
        self.proxy = None  # drop the old proxy before building the new one: one at a time
        self.proxy = upscale(photo)
        return self.proxy.shape

    def shape(self) -> tuple[int, ...]:
        """The proxy's shape; a cheap call that waits until the image is loaded."""
        return () if self.proxy is None else self.proxy.shape

    def preview(self, params: GradingParams) -> np.ndarray:
        if self.proxy is None:
            raise RuntimeError("no image loaded")
        return grade(self.proxy, params)
