"""Checks that image bytes hold one complete, decodable colour image.

Truncated JPEG files are found by walking the marker segments (:func:`jpeg_is_complete`): OpenCV
decodes a truncated file partially without an error, and Pillow's ``Image.load()`` accepts a large
baseline JPEG that lost only its end-of-image marker (a 1000 x 1000 frame, as Human3.6M's are).
The walk reads no pixel data, so it costs far less than a second decode.
"""

from __future__ import annotations

import re

import numpy as np

from kinpose_jax.data import DataError


# Markers without a length field: TEM, RST0-7, SOI, EOI.
_STANDALONE = {0x01, *range(0xD0, 0xD8), 0xD8, 0xD9}
#: Inside entropy-coded data, the first FF followed by a byte other than 00 (stuffing), D0-D7
#: (restart markers) or FF (fill) starts the next segment.
_SCAN_END = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")


def jpeg_is_complete(data: bytes) -> bool:
    """Whether JPEG ``data`` holds a complete image: walking the marker segments from SOI (skipping
    each segment by its length, so an EXIF thumbnail inside APP1 is never mistaken for the image),
    every scan (SOS) must be followed by further segments and finally an end-of-image marker
    (EOI, ``FFD9``). Bytes after that EOI (trailing junk, padding) are allowed. A file cut
    anywhere before its final EOI is incomplete."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return False
    i = 2
    while i < n:
        if data[i] != 0xFF:
            return False  # not at a marker: corrupt structure
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return False
        marker = data[i]
        i += 1
        if marker == 0xD9:
            return True
        if marker in _STANDALONE:
            continue
        if i + 2 > n:
            return False
        length = (data[i] << 8) | data[i + 1]
        if length < 2 or i + length > n:
            return False
        i += length
        if marker == 0xDA:  # entropy-coded data runs to the next marker that is not FF00 / RSTn / fill
            m = _SCAN_END.search(data, i)
            if m is None:
                return False
            i = m.start()
    return False


def check_image_bytes(data: bytes, where: str) -> tuple[int, int]:
    """Checks that ``data`` is a complete, decodable colour image; returns (height, width).

    JPEG data must be complete (:func:`jpeg_is_complete`: an end-of-image marker after the last
    scan; trailing bytes after it are fine). A truncated file still half-decodes in OpenCV, so
    decoding alone does not catch it. DataError names ``where`` otherwise."""
    import cv2

    if not data:
        raise DataError(f"{where}: empty image file")
    if data[:2] == b"\xff\xd8" and not jpeg_is_complete(data):
        raise DataError(f"{where}: JPEG data is truncated (no end-of-image marker after the last scan; "
                        f"{len(data)} bytes)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None or img.ndim != 3 or img.shape[2] != 3 or img.size == 0:
        raise DataError(f"{where}: image data cannot be decoded ({len(data)} bytes, starts {data[:4]!r})")
    return int(img.shape[0]), int(img.shape[1])
