"""The sample photographs that ship inside scikit-image, read with Pillow.

The files are scikit-image's own (no download); reading them with Pillow avoids importing
``skimage.io``, which pulls in scipy and imageio and costs seconds before the first pixel.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import Any

# Photograph name (as in ``skimage.data``) -> file in scikit-image's data directory.
FILES = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "motorcycle": "motorcycle_left.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
    "brick": "brick.png",
}


def data_dir() -> Path:
    """scikit-image's data directory, found without importing scikit-image."""
    spec = find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the scenarios read scikit-image's sample photographs: pip install scikit-image"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def path(name: str) -> Path:
    """The file of sample photograph ``name``."""
    return data_dir() / FILES[name]


def load_rgb(name: str) -> Any:
    """Sample photograph ``name`` as an HxWx3 uint8 array."""
    import numpy as np
    from PIL import Image

    with Image.open(path(name)) as image:
        return np.asarray(image.convert("RGB"))
