"""``POST /v1/classify`` for image classification runs: each input is an image file's bytes in base64, bare or as
a data URL (``data:image/png;base64,...``), which is what JSON can carry and what browsers and OpenAI's image
inputs already produce. Paths are never accepted: a client must not make the server read its own files.

Images are decoded and checked by the task's own ``decode`` (corrupt, truncated, tiny, CMYK/palette/alpha), on
the model thread, so a bad image is a 400 naming the input and never reaches the model.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from tunelab.serve.classify import TextClassifier
from tunelab.serve.errors import bad_request
from tunelab.tasks.image_classification import decode

MAX_PIXELS = 40_000_000  # a small file can declare a huge image (a decompression bomb); 40 MP is a large photo


def image_bytes(text: str, index: int, limit: int) -> bytes:
    """The bytes of one base64 input (bare, or a ``data:`` URL); a 400 naming the input when it is not one."""
    param = f"inputs[{index}]"
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise bad_request(f"{param} is a data URL without ';base64,' data; send data:image/png;base64,<bytes>",
                              param=param)
    if (len(text) // 4) * 3 > limit + 2:
        raise bad_request(f"{param} holds an image of about {len(text) // 4 * 3} bytes, over this server's limit of "
                          f"{limit} (tunelab serve --max-image-bytes)", param=param, code="input_too_long")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{param} is not base64; send the image file's bytes base64-encoded (or a data: URL)",
                          param=param) from None
    if not data:
        raise bad_request(f"{param} is empty; send an image file's bytes base64-encoded", param=param)
    return data


def pixels(data: bytes, index: int) -> np.ndarray:
    """One image's RGB pixels, checked as training checks them; a 400 naming the input when it cannot be used."""
    param = f"inputs[{index}]"
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise bad_request(f"{param} is not an image PIL can read ({' '.join(str(err).split())})", param=param) from None
    if width * height > MAX_PIXELS:
        raise bad_request(f"{param} is {width}x{height} pixels, over the {MAX_PIXELS:,}-pixel limit; send a smaller image",
                          param=param, code="input_too_long")
    try:
        image, _ = decode(data, Path.cwd())
    except ValueError as err:
        raise bad_request(f"{param}: {err}", param=param) from None
    return np.asarray(image, dtype=np.uint8)


class ImageClassifier(TextClassifier):
    """Serves an image classification run: base64 images in, a label and a probability per label out."""

    def accept(self, inputs: list[str]) -> list[Any]:
        """The images' bytes, checked for size and base64 on arrival."""
        return [image_bytes(text, i, self.options.max_image_bytes) for i, text in enumerate(inputs)]

    def prepare(self, items: list[Any]) -> list[Any]:
        """Decoded, checked pixels for ``predict`` (never a path)."""
        return [pixels(data, i) for i, data in enumerate(items)]
