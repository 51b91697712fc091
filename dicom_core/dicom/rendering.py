"""Rendered images (PS3.18 8.3.5, 10.4.1.1.3): one frame as a consumer JPEG or PNG.

Grayscale: the Modality LUT (rescale slope/intercept or LUT) is applied, then the
VOI transform: the ``window`` the client asked for, else the instance's VOI LUT
Sequence or first WindowCenter/WindowWidth, else the frame's full range
(PS3.3 C.11.2); MONOCHROME1 is inverted. Colour: YBR is converted to RGB by the
decoder and PALETTE COLOR goes through its palette (PS3.3 C.7.6.3.1.5). The
``viewport``'s source region, clipped to the frame, is scaled to fit its size
keeping the aspect ratio.

The output size is known before any image is made and is refused beyond
``max_pixels``; Pillow only ever holds the source region (a slice of the decoded
frame) and the output, never a region padded beyond the frame.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi

JPEG = "image/jpeg"
PNG = "image/png"
RENDERED_MEDIA_TYPES = (JPEG, PNG)
WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")
DEFAULT_QUALITY = 90
JPEG_MAX_DIMENSION = 65500
"""libjpeg's largest width or height (JPEG_MAX_DIMENSION, jmorecfg.h); Pillow fails to write beyond it."""


class RenderingRefused(ValueError):
    """The rendering asked for cannot be made (too large, or a region outside the frame); the message says why."""


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): center, width and function."""

    center: float
    width: float
    function: str = "linear"


@dataclass(frozen=True)
class Viewport:
    """PS3.18 8.3.5.1.3: the output size, and optionally the source region (sx, sy, sw, sh)."""

    width: int
    height: int
    region: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = JPEG
    quality: int = DEFAULT_QUALITY
    window: Window | None = None
    viewport: Viewport | None = None


def render(header: Dataset, pixels: np.ndarray, options: RenderOptions, max_pixels: int) -> bytes:
    """The frame ``pixels`` (decoded, as pydicom gives it) of the instance ``header`` as an image file.

    Raises RenderingRefused when the output would have more than ``max_pixels`` pixels.
    """
    rows, columns = pixels.shape[:2]
    (left, upper, right, lower), size = _geometry(columns, rows, options.viewport)
    _check_size(size, options, max_pixels)
    image = Image.fromarray(_display_values(header, pixels, options.window)[upper:lower, left:right])
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    output = io.BytesIO()
    if options.media_type == PNG:
        image.save(output, format="PNG")
    else:
        image.save(output, format="JPEG", quality=options.quality)
    return output.getvalue()


def _geometry(columns: int, rows: int, viewport: Viewport | None) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """The source box (left, upper, right, lower) in the frame and the output (width, height).

    PS3.18 8.3.5.1.3: the region sx,sy,sw,sh of the source is scaled to fit vw,vh.
    A region reaching past the frame is clipped to it (there are no pixels there to show).
    """
    if viewport is None:
        return (0, 0, columns, rows), (columns, rows)
    box = (0, 0, columns, rows)
    if viewport.region is not None:
        x, y, width, height = viewport.region
        if x >= columns or y >= rows:
            raise RenderingRefused(f"the viewport's source region starts at ({x}, {y}), outside the {columns} x {rows} frame")
        box = (x, y, min(x + width, columns), min(y + height, rows))
    width, height = box[2] - box[0], box[3] - box[1]
    # Integer arithmetic: a viewport of any number of digits cannot overflow a float.
    if viewport.width * height <= viewport.height * width:  # the width binds
        return box, (viewport.width, max(1, _rounded_ratio(height * viewport.width, width)))
    return box, (max(1, _rounded_ratio(width * viewport.height, height)), viewport.height)


def _rounded_ratio(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


def _check_size(size: tuple[int, int], options: RenderOptions, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        advice = "ask for a smaller viewport" if options.viewport else "give a viewport to scale it down"
        raise RenderingRefused(
            f"the rendered image would be {width} x {height} pixels, more than the {max_pixels} allowed "
            f"(setting DICOM_MAX_RENDERED_PIXELS); {advice}"
        )
    if options.media_type == JPEG and max(width, height) > JPEG_MAX_DIMENSION:
        raise RenderingRefused(
            f"the rendered image would be {width} x {height} pixels, and a JPEG image is at most "
            f"{JPEG_MAX_DIMENSION} pixels wide and high; ask for image/png or a smaller viewport"
        )


def _display_values(header: Dataset, pixels: np.ndarray, window: Window | None) -> np.ndarray:
    """8-bit grayscale or RGB values to display."""
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, header)
        return _to_uint8(rgb, 255.0 if rgb.max() <= 255 else 65535.0)
    if pixels.ndim == 3:  # colour, already RGB from the decoder
        return _to_uint8(pixels, float(2 ** int(header.get("BitsStored", 8) or 8) - 1))
    return _grayscale(header, pixels, photometric, window)


def _grayscale(header: Dataset, pixels: np.ndarray, photometric: str, window: Window | None) -> np.ndarray:
    values = apply_modality_lut(pixels, header).astype(np.float64)
    display = _voi(header, values, window)
    if photometric == "MONOCHROME1":
        display = 255.0 - display
    return np.clip(np.rint(display), 0, 255).astype(np.uint8)


def _voi(header: Dataset, values: np.ndarray, window: Window | None) -> np.ndarray:
    """Values mapped to 0..255 by the VOI transform."""
    if window is None:
        window = _stored_window(header)
    if window is not None:
        return apply_window(values, window)
    if "VOILUTSequence" in header:
        mapped = apply_voi(values, header).astype(np.float64)
        bits = int(header.VOILUTSequence[0].LUTDescriptor[2])
        return mapped * 255.0 / float(2**bits - 1)
    low, high = float(values.min()), float(values.max())
    return (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)


def _stored_window(header: Dataset) -> Window | None:
    """The instance's first WindowCenter/WindowWidth, with its VOI LUT Function."""
    center, width = header.get("WindowCenter"), header.get("WindowWidth")
    if center is None or width is None or center == "" or width == "":
        return None
    function = str(header.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().lower().replace("_", "-")
    try:
        return Window(_first(center), _first(width), function if function in WINDOW_FUNCTIONS else "linear")
    except (TypeError, ValueError, IndexError):
        return None


def _first(value: object) -> float:
    """The first value of a possibly multi-valued DS."""
    return float(value[0] if isinstance(value, MultiValue | list | tuple) else value)


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2: the VOI window functions, onto the output range 0..255."""
    center, width = window.center, max(window.width, 1.0 if window.function == "linear" else 1e-9)
    if window.function == "sigmoid":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if window.function == "linear-exact":
        return np.clip(((values - center) / width + 0.5) * 255.0, 0.0, 255.0)
    if width == 1.0:
        return np.where(values < center - 0.5, 0.0, 255.0)
    return np.clip(((values - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0, 0.0, 255.0)


def _to_uint8(values: np.ndarray, maximum: float) -> np.ndarray:
    if values.dtype == np.uint8:
        return values
    return np.clip(np.rint(values.astype(np.float64) * (255.0 / maximum)), 0, 255).astype(np.uint8)
