"""Turn a stored sample into (image, caption or label), or name the reason it cannot be used.

The image's pixel count is read from its header and checked against `max_image_pixels` before any
pixel is decoded, so a decompression bomb costs a header read. Non-image bytes, truncated image data,
missing or empty captions and unparsable labels are reasons, never exceptions.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import PIL.Image

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TASKS = ("image_text", "image_label")
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000  # well above any training image, far below a decompression bomb


class BadSample(Exception):
    """Raised by decode_sample; `reason` is the counter name ("bad image", "missing caption", ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _image_bytes(fields: dict[str, bytes]) -> bytes:
    for extension in IMAGE_EXTENSIONS:
        if extension in fields:
            return fields[extension]
    raise BadSample("missing image")


def _target(fields: dict[str, bytes], task: str):
    if task == "image_text":
        if "txt" not in fields:
            raise BadSample("missing caption")
        try:
            text = fields["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            raise BadSample("bad caption") from None
        if not text:
            raise BadSample("missing caption")
        return text
    if "cls" not in fields:
        raise BadSample("missing label")
    try:
        return int(fields["cls"].decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise BadSample("bad label") from None


def decode_sample(fields: dict[str, bytes], *, task: str, max_image_pixels: int) -> tuple[PIL.Image.Image, str | int]:
    """(image, target): the image as a decoded PIL RGB image, the target a str caption or an int
    label. Raises BadSample."""
    from PIL import Image, UnidentifiedImageError

    target = _target(fields, task)
    try:
        image = Image.open(io.BytesIO(_image_bytes(fields)))
        width, height = image.size
        if width * height > max_image_pixels:
            raise BadSample("oversized image")
        image = image.convert("RGB")  # decodes every pixel: truncated data fails here
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise BadSample("bad image") from None
    return image, target
