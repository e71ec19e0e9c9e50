"""An inspection line over real photographs, shared by ``memwise demo vision`` and the benchmark.

Frames are 480x640 RGB windows of the scikit-image sample photographs, moving a few pixels per
frame (a camera over a conveyor), with defects injected where the frame index says: a bright
scratch on every third frame, dark spots on the next one. Three CPU-bound stages look for them:

1. :func:`denoise` — grey, Gaussian smoothing, subtract a coarse background, threshold the
   residual into a mask of anomalies;
2. :func:`detect` — label the mask and measure each region (``skimage.measure``);
3. :func:`judge` — classify regions into scratches (long, thin) and spots (compact, dark) and
   give the pass/fail verdict.

Every function is module level and pure: the same frame gives the same verdict in any process,
which is what the demo and the benchmark check item for item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "FRAME_SHAPE",
    "Frame",
    "Regions",
    "Verdict",
    "denoise",
    "detect",
    "fill_frame",
    "inspect",
    "judge",
    "load_scenes",
    "warm_up",
]

FRAME_SHAPE = (480, 640, 3)
# Photographs that ship inside scikit-image (no download), greyscale ones stacked to RGB.
SCENES = ("astronaut", "coffee", "rocket", "camera", "brick", "gravel", "coins", "moon")
_MARGIN = 64  # room for the window to move
_RESIDUAL = 0.18  # anomaly threshold on the residual, in [0, 1] grey levels
_MIN_AREA = 12  # regions smaller than this are noise


@dataclass(frozen=True)
class Frame:
    """A frame on the line: its index and its pixels (a leased buffer)."""

    index: int
    pixels: np.ndarray


@dataclass(frozen=True)
class Regions:
    """Stage 2's output: per region (area, eccentricity, major axis length, mean residual)."""

    index: int
    features: tuple[tuple[float, float, float, float], ...]


@dataclass(frozen=True)
class Verdict:
    """The line's decision about one frame."""

    index: int
    passed: bool
    scratches: int
    spots: int


def load_scenes() -> list[np.ndarray]:
    """The sample photographs as uint8 RGB, padded (reflected) to frame size plus margin."""
    from skimage import data

    height, width = FRAME_SHAPE[0] + _MARGIN, FRAME_SHAPE[1] + _MARGIN
    scenes = []
    for name in SCENES:
        photo = np.asarray(getattr(data, name)())
        if photo.ndim == 2:
            photo = np.stack([photo] * 3, axis=-1)
        photo = photo[..., :3]
        pad_h, pad_w = max(0, height - photo.shape[0]), max(0, width - photo.shape[1])
        photo = np.pad(photo, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
        scenes.append(np.ascontiguousarray(photo[:height, :width]))
    return scenes


def fill_frame(out: np.ndarray, index: int, scenes: list[np.ndarray]) -> None:
    """Write frame ``index`` into ``out``: a moving window of a scene, plus injected defects."""
    scene = scenes[(index // 10) % len(scenes)]  # ten frames per scene, then the next one
    dy, dx = (index * 3) % _MARGIN, (index * 7) % _MARGIN
    out[...] = scene[dy : dy + FRAME_SHAPE[0], dx : dx + FRAME_SHAPE[1]]
    rng = np.random.default_rng(index)
    if index % 3 == 1:  # a scratch: a bright line, 2 px wide
        from skimage.draw import line

        r0, c0 = int(rng.integers(40, 440)), int(rng.integers(40, 600))
        angle, length = rng.uniform(0, np.pi), rng.integers(80, 200)
        r1 = int(np.clip(r0 + length * np.sin(angle), 0, FRAME_SHAPE[0] - 2))
        c1 = int(np.clip(c0 + length * np.cos(angle), 0, FRAME_SHAPE[1] - 2))
        rows, cols = line(r0, c0, r1, c1)
        out[rows, cols] = 255
        out[rows + 1, cols] = 255
    elif index % 3 == 2:  # dark spots
        from skimage.draw import disk

        for _ in range(int(rng.integers(1, 4))):
            center = (int(rng.integers(20, 460)), int(rng.integers(20, 620)))
            rows, cols = disk(center, int(rng.integers(4, 8)), shape=FRAME_SHAPE[:2])
            out[rows, cols] = 0


def denoise(frame: Frame) -> tuple[int, np.ndarray]:
    """Stage 1: the mask (uint8, 0 or 255) of pixels far from their smoothed surroundings."""
    from scipy import ndimage

    rgb = frame.pixels.astype(np.float32) / np.float32(255.0)
    grey = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    smooth = ndimage.gaussian_filter(grey, 1.0)
    background = ndimage.gaussian_filter(grey, 6.0)
    residual = smooth - background
    # Defects are saturated and stand out from their surroundings; flat saturated areas (a
    # white suit, the sky around the moon) do not. The sign travels in the mask: bright
    # anomalies are 255, dark ones 254.
    mask = np.zeros(residual.shape, np.uint8)
    mask[(residual > _RESIDUAL) & (frame.pixels == 255).all(axis=-1)] = 255
    mask[(residual < -_RESIDUAL) & (frame.pixels == 0).all(axis=-1)] = 254
    return frame.index, mask


def detect(stage1: tuple[int, np.ndarray]) -> Regions:
    """Stage 2: label the anomalies and measure each region."""
    from skimage import measure

    index, mask = stage1
    labels = measure.label(mask > 0, connectivity=2)
    features = []
    for region in measure.regionprops(labels, intensity_image=mask):
        if region.area < _MIN_AREA:
            continue
        features.append(
            (
                float(region.area),
                float(region.eccentricity),
                float(region.axis_major_length),
                float(region.intensity_mean),
            )
        )
    return Regions(index, tuple(features))


def judge(regions: Regions) -> Verdict:
    """Stage 3: long thin bright regions are scratches, compact dark ones are spots."""
    scratches = spots = 0
    for area, eccentricity, major, mean in regions.features:
        if eccentricity > 0.97 and major > 40 and mean > 254.5:
            scratches += 1
        elif eccentricity < 0.8 and 30 <= area <= 250 and mean < 254.5:
            spots += 1
    return Verdict(regions.index, scratches == spots == 0, scratches, spots)


def inspect(frame: Frame) -> Verdict:
    """All three stages in a row: the serial reference."""
    return judge(detect(denoise(frame)))


# Freed once by warm_up: glibc raises its mmap threshold to the largest block freed (up to
# 32 MiB) and its trim threshold to twice that.
_HEAP_WARM_BYTES = 16 * 2**20


def warm_up(*_: Any) -> None:
    """Worker initializer: one pass over a blank frame, and a heap that stays warm.

    scikit-image loads its submodules lazily, on first use: importing ``skimage.measure`` is
    not enough to keep a second of loading out of the first frame's latency.

    glibc's malloc gives the top of its heap back to the system whenever more than twice its
    mmap threshold is free there, and that threshold only grows when a larger block is freed.
    In a fresh process the largest block freed is a frame's float copy (3.5 MiB), while one
    pass through the stages frees ~8 MiB: the heap shrank after every frame and the next one
    faulted its pages back in (~2,100 page faults, ~9 ms a frame on a VM: a fifth of the
    work). A process that has run a while (one that loaded the scenes, for instance) has
    freed a larger block and keeps them. Freeing one 16 MiB block puts every process that
    calls this in that state.
    """
    judge(detect(denoise(Frame(-1, np.zeros(FRAME_SHAPE, np.uint8)))))
    block = np.empty(_HEAP_WARM_BYTES, np.uint8)  # allocated and freed: that is the point
    del block
