"""Images for ``xtune chat`` and ``xtune serve``: read from a file or from bytes, as RGB PIL images.

Every failure is one :class:`~xtune.errors.DataError` that names the image and what was wrong with it
(missing, a folder, not an image, truncated, too large to decode safely), so the CLI exits 2 and the
server answers 400 with the same sentence.
"""

from __future__ import annotations

import io
from pathlib import Path

from xtune.errors import DataError
from xtune.hf.vision import IMAGE_PLACEHOLDER

IMAGE_FORMATS = "PNG, JPEG, GIF, BMP, WebP"
"""What the error messages suggest; PIL reads more."""
MAX_PIXELS = 64 * 1024 * 1024
"""Largest image decoded (8K x 8K): a small file can declare a huge picture, which would take gigabytes to decode.
Vision processors resize far below this anyway."""


def _decoded(stream, source: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(stream) as image:
            if image.width * image.height > MAX_PIXELS:
                raise DataError(
                    f"{source} is {image.width} x {image.height} pixels, more than the {MAX_PIXELS:,} read here; "
                    "send a smaller image (the model's processor resizes it far below that anyway)."
                )
            image.load()  # decode now: a truncated file fails here, not inside the image processor
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise DataError(f"{source} is not an image PIL can read; send a {IMAGE_FORMATS} image.") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{source} is too large to decode safely: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for truncated or corrupt data
        raise DataError(f"{source} cannot be decoded as an image: {exc}.") from None


def open_image(path: str | Path):
    """The image in the file ``path``, as an RGB PIL image.

    Raises:
        DataError: The file is missing, is a folder, or is not a readable image.
    """
    file = Path(path).expanduser()
    if not file.exists():
        raise DataError(f"image not found: {path}. Check the path.")
    if not file.is_file():
        raise DataError(f"image {path} is not a file.")
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror or exc}.") from None
    return _decoded(io.BytesIO(data), f"image {path}")


def image_from_bytes(data: bytes, source: str):
    """The image encoded in ``data`` (``source`` names it in errors), as an RGB PIL image.

    Raises:
        DataError: ``data`` is not a readable image.
    """
    return _decoded(io.BytesIO(data), source)


def with_image_markers(text: str, count: int) -> str:
    """``text`` with its images' ``<image>`` markers at its start when it holds none: the rule training
    data follows for a row without markers (LLaMA-Factory's), so a prompt is read as such a row was.
    ``text`` is unchanged when it places its images itself (LLaVA's data writes ``<image>\n`` first)."""
    if count == 0 or IMAGE_PLACEHOLDER in text:
        return text
    return IMAGE_PLACEHOLDER * count + text
