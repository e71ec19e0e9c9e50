"""The cover collage (seed 001's multi-poster style), rendered with Pillow and numpy.

Nine posters of 410x610 with rounded corners, tilted by -15.8 degrees, over a Gaussian-blurred
and shaded background on a 1920x1080 canvas, a title in Pillow's bundled scalable font, JPEG
out. The blending runs in ``float32`` (the seed moved from float64, halving its arrays) and in
bands of rows, with per-pixel constants broadcast rather than materialised as full-size
arrays, so a render's peak stays a few tens of MB. ``dtype="float64"`` renders the same cover
the old way, to check that float32 loses nothing visible (SSIM).

Imported only inside workers: numpy and Pillow load there, never in the service.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from memwise.demos.samples import FILES, path

CANVAS = (1920, 1080)
POSTER = (410, 610)
ANGLE = -15.8  # degrees, counter-clockwise positive as in Pillow: a clockwise tilt
COLUMNS = ROWS = 3
GAP = 40
RADIUS = 28
GRID_CENTRE = (1330, 540)  # on the canvas: right of centre, the title goes left
BAND_ROWS = 108  # rows blended at a time: 108 x 1920 x 4 float32 = 3.3 MB per array
TITLE_SIZE = 96
MAX_TITLE = 60


def check_request(title: str, photos: Sequence[str]) -> None:
    """Raise ``ValueError`` saying what is wrong with a cover request, if anything."""
    if not title.strip() or len(title) > MAX_TITLE:
        raise ValueError(f"the title must have 1 to {MAX_TITLE} characters, got {len(title)}")
    unknown = [name for name in photos if name not in FILES]
    if unknown or not photos:
        raise ValueError(
            f"photos must be 1 to 9 of {', '.join(sorted(FILES))}; unknown: {unknown or 'none'}"
        )
    if len(photos) > COLUMNS * ROWS:
        raise ValueError(f"at most {COLUMNS * ROWS} photos, got {len(photos)}")


def _poster(name: str) -> Any:
    from PIL import Image, ImageOps

    with Image.open(path(name)) as image:
        return ImageOps.fit(image.convert("RGB"), POSTER, Image.Resampling.LANCZOS)


def _rounded_mask(size: tuple[int, int]) -> Any:
    from PIL import Image, ImageDraw

    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, size[0] - 1, size[1] - 1), RADIUS, fill=255)
    return mask


def _poster_layer(photos: Sequence[str]) -> Any:
    """The 3x3 grid of rounded posters, tilted, on a transparent canvas-sized layer.

    Each poster is tilted on its own and placed where the tilted grid puts it: the same
    picture as tilting the whole grid, without a grid-sized image (~26 MB) in memory.
    """
    from PIL import Image

    layer = Image.new("RGBA", CANVAS, (0, 0, 0, 0))
    mask = _rounded_mask(POSTER)
    theta = math.radians(ANGLE)
    cos, sin = math.cos(theta), math.sin(theta)
    for index in range(COLUMNS * ROWS):
        column, row = index % COLUMNS, index // COLUMNS
        # The poster's centre relative to the grid's centre, then turned as Pillow turns
        # images (counter-clockwise for a positive angle, with y pointing down).
        dx = (column - (COLUMNS - 1) / 2) * (POSTER[0] + GAP)
        dy = (row - (ROWS - 1) / 2) * (POSTER[1] + GAP)
        x = GRID_CENTRE[0] + dx * cos + dy * sin
        y = GRID_CENTRE[1] - dx * sin + dy * cos
        poster = _poster(photos[index % len(photos)])
        poster.putalpha(mask)
        tilted = poster.rotate(ANGLE, Image.Resampling.BICUBIC, expand=True)
        layer.paste(tilted, (round(x - tilted.width / 2), round(y - tilted.height / 2)), tilted)
        poster.close()
        tilted.close()
    return layer


def _background(name: str) -> Any:
    """The first photo, blurred: blurred at a quarter of the size, then scaled up (smooth)."""
    from PIL import Image, ImageFilter, ImageOps

    small = (CANVAS[0] // 4, CANVAS[1] // 4)
    with Image.open(path(name)) as image:
        fitted = ImageOps.fit(image.convert("RGB"), small, Image.Resampling.BILINEAR)
    blurred = fitted.filter(ImageFilter.GaussianBlur(10))
    return blurred.resize(CANVAS, Image.Resampling.BICUBIC)


def _shadow(layer: Any) -> Any:
    """The posters' soft shadow: their alpha, offset, blurred (at a quarter of the size)."""
    from PIL import Image, ImageChops, ImageFilter

    alpha = layer.getchannel("A")
    small = alpha.resize((CANVAS[0] // 4, CANVAS[1] // 4), Image.Resampling.BILINEAR)
    soft = small.filter(ImageFilter.GaussianBlur(6)).resize(CANVAS, Image.Resampling.BILINEAR)
    return ImageChops.offset(soft, 12, 18)


def render_image(title: str, photos: Sequence[str], dtype: str = "float32") -> Any:
    """The cover as a Pillow image."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    check_request(title, photos)
    dt = np.dtype(dtype)
    background = _background(photos[0])
    layer = _poster_layer(photos)
    shadow = _shadow(layer)
    out = np.empty((CANVAS[1], CANVAS[0], 3), np.uint8)
    # Shading: darker towards the left, where the title goes. One row of factors, broadcast
    # over every band (the seed replaced a full-size zeros_like clone by exactly this).
    shade = np.linspace(0.45, 0.85, CANVAS[0], dtype=dt)[None, :, None]
    for top in range(0, CANVAS[1], BAND_ROWS):
        box = (0, top, CANVAS[0], min(top + BAND_ROWS, CANVAS[1]))
        base = np.asarray(background.crop(box), dtype=dt) / dt.type(255)
        base *= shade
        base *= 1 - np.asarray(shadow.crop(box), dtype=dt)[..., None] * dt.type(0.6 / 255)
        rgba = np.asarray(layer.crop(box), dtype=dt) / dt.type(255)
        alpha = rgba[..., 3:]
        top_rgb = rgba[..., :3]
        top_rgb -= base  # over-compositing in place: base + alpha * (poster - base)
        top_rgb *= alpha
        base += top_rgb
        np.clip(base * 255 + 0.5, 0, 255, out=base)
        out[box[1] : box[3]] = base.astype(np.uint8)
        del base, rgba, alpha, top_rgb
    for image in (background, layer, shadow):
        image.close()
    cover = Image.fromarray(out)
    del out
    font = ImageFont.load_default(size=TITLE_SIZE)
    draw = ImageDraw.Draw(cover)
    position = (90, CANVAS[1] - 90 - TITLE_SIZE)
    draw.text((position[0] + 4, position[1] + 4), title, font=font, fill=(0, 0, 0))
    draw.text(position, title, font=font, fill=(255, 255, 255))
    return cover


def render_array(title: str, photos: Sequence[str], dtype: str = "float32") -> Any:
    """The cover as a 1080x1920x3 uint8 array (to compare renders)."""
    import numpy as np

    return np.asarray(render_image(title, photos, dtype))


def render_cover(title: str, photos: Sequence[str], dtype: str = "float32") -> bytes:
    """The cover as JPEG bytes."""
    buffer = io.BytesIO()
    with render_image(title, photos, dtype) as cover:
        cover.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
