"""The preview renderer of ``memwise demo preview``, in a module of its own.

Actor processes import it to rebuild :class:`NegativePreview`: numpy only, so that starting an
actor costs no more than it must (the scenario module itself imports rich and the rest).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

# Transmittance of the unexposed film base per channel (R, G, B): the orange mask.
ORANGE_MASK = (0.92, 0.58, 0.34)
# Density range of the negative: the brightest scene point is this dense (10**-1.6 passes).
DENSITY_RANGE = 1.6
DRAG = 10  # requests per slider drag


@dataclass(frozen=True)
class Grade:
    """The sliders of the grading panel."""

    exposure: float = 1.0
    contrast: float = 1.0
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    saturation: float = 1.0


def slider(step: int) -> Grade:
    """The panel during a drag: step ``step`` of a user moving exposure and colour sliders."""
    t = step / DRAG
    return Grade(
        exposure=0.9 + 0.3 * t,
        contrast=1.0 + 0.4 * t,
        gains=(1.0 + 0.1 * t, 1.0, 1.0 - 0.1 * t),
        saturation=0.9 + 0.4 * t,
    )


class NegativePreview:
    """What the application keeps per open image: the preview renderer (one per actor)."""

    def __init__(self) -> None:
        self.rendered = 0

    def render(self, proxy: Any, grade: Grade, hang: float = 0.0) -> Any:
        """A 500x500 uint8 preview of ``proxy`` graded with ``grade``.

        Written the plain numpy way: every step allocates a new 12 MB temporary (the working
        image is the proxy at half resolution). ``hang`` stalls the render first, as a stuck
        decoder or driver call would.
        """
        import numpy as np

        if hang:
            time.sleep(hang)
        x = proxy[::2, ::2] / np.asarray(ORANGE_MASK, dtype=np.float32)  # remove the mask
        x = np.clip(x, 1e-4, 1.0)
        x = -np.log10(x) / np.float32(DENSITY_RANGE)  # density back to scene brightness
        x = x * np.float32(grade.exposure)
        x = x * x * (3.0 - 2.0 * x)  # the paper's S-curve
        x = (x - 0.5) * np.float32(grade.contrast) + 0.5
        x = x * np.asarray(grade.gains, dtype=np.float32)
        luma = x @ np.asarray((0.2126, 0.7152, 0.0722), dtype=np.float32)
        x = luma[..., None] + (x - luma[..., None]) * np.float32(grade.saturation)
        x = np.clip(x, 0.0, 1.0) ** np.float32(1 / 2.2)
        self.rendered += 1
        return (x[::2, ::2] * 255.0 + 0.5).astype(np.uint8)

    def count(self) -> int:
        return self.rendered
