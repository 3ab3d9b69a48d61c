"""Any PIL image as 8-bit pixels: the one place that knows about bit depth.

PIL's ``convert("RGB")`` clips 16-bit (``I;16``), 32-bit integer (``I``) and float (``F``) images at 255, so a
16-bit PNG comes out solid white. ``to_8bit`` scales them to 8-bit grey (``L``) first, by the range the mode stands
for; every 8-bit mode is returned untouched, so the RGB conversion stays where open_clip's preprocessing does it
(after the resize and crop) and ordinary images decode bit for bit as open_clip decodes them:

- ``I;16`` / ``I;16B`` / ``I;16L`` / ``I;16N`` (16-bit grey: PNG, TIFF): the type's full range, value / 257 rounded
  (0 -> 0, 65535 -> 255; exactly the 8-bit image for a 16-bit copy of one, ``v * 257``);
- ``I`` (32-bit integers; Pillow opens 16-bit PGM and some 16-bit TIFFs so): 0..65535 when every value lies in it
  (16-bit data, the common case), else the image's own minimum..maximum;
- ``F`` (32-bit float): 0..1 when every value lies in it (the float convention), else the image's own
  minimum..maximum; NaN counts as 0.

Standalone on purpose (PIL and numpy only, nothing of clipft_utils): ``python -m clipft_utils export --format
open_clip`` copies this file beside the model for its client (``classify.py``), which must not need this project.
"""
from __future__ import annotations

from typing import Any

import numpy as np

HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
"""The PIL modes that ``to_8bit`` scales (every other mode is 8 bits per channel already)."""
BIT_DEPTH_NOTE = ("16-bit: value/257 over 0..65535; 32-bit integer: 0..65535 if the values fit, else their own "
                  "min..max; float: 0..1 if the values fit, else their own min..max")
"""How ``to_8bit`` scales, in one line (``data check`` and the export's config print it)."""


def _range(values: np.ndarray, mode: str) -> tuple[float, float]:
    """The (low, high) that map to 0 and 255 for an image of ``mode`` (see the module docstring)."""
    if mode.startswith("I;16"):
        return 0.0, 65535.0
    nominal = (0.0, 65535.0) if mode == "I" else (0.0, 1.0)
    low, high = (float(values.min()), float(values.max())) if values.size else nominal
    if nominal[0] <= low and high <= nominal[1]:
        return nominal
    return low, (high if high > low else low + 1.0)   # a flat image maps to 0


def to_8bit(image: Any) -> Any:
    """``image`` with 8 bits per channel: 16-bit, 32-bit integer and float grey scaled to ``L`` by the range of their
    mode (the module docstring says which); any other mode returned as it is."""
    from PIL import Image
    if image.mode not in HIGH_BIT_MODES:
        return image
    values = np.asarray(image)
    if image.mode.startswith("I;16"):
        scaled = (values.astype(np.uint32) + 128) // 257          # round(v / 257), exact in integers
    else:
        values = np.nan_to_num(values.astype(np.float64), nan=0.0)
        low, high = _range(values, image.mode)
        scaled = np.rint((np.clip(values, low, high) - low) * (255.0 / (high - low)))
    return Image.fromarray(scaled.astype(np.uint8))                # 2-D uint8: mode L
