"""Small, real result files for the Kling simulator, built with the standard library only.

The simulator serves these as the ``images[].url`` and ``videos[].url`` of succeeded tasks, so
that a downloader plugin handles genuine bytes offline:

* :func:`png_bytes`: a valid PNG (8-bit RGB, one zlib-compressed ``IDAT``) showing a gradient;
* :func:`mp4_bytes` (from :mod:`submitter.mp4`): a small playable MP4 (ISO Base Media, one
  H.264 track), so that a browser's ``<video>`` loads what the downloader saved.

Both are deterministic: the same arguments give the same bytes.
"""

from __future__ import annotations

import itertools
import random
import struct
import zlib

from submitter.mp4 import mp4_bytes

__all__ = ["PNG_SIGNATURE", "mp4_bytes", "png_bytes"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_SIDE = 4096


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length (4 bytes), type, data, CRC-32 over type and data."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_bytes(width: int = 320, height: int = 320, seed: int = 0) -> bytes:
    """A valid PNG of ``width`` x ``height`` pixels: a colour gradient chosen by ``seed``.

    Red grows from left to right, green from top to bottom, blue is constant; ``seed`` shifts
    all three, so different seeds give different pictures.

    Args:
        width: Pixels, 1 to 4096.
        height: Pixels, 1 to 4096.
        seed: Any integer; the same seed gives the same bytes.

    Returns:
        The file: signature, ``IHDR`` (8-bit RGB, no interlace), one ``IDAT``, ``IEND``.
        About 1 to 3 KB at the default size.

    Raises:
        ValueError: a side is outside [1, 4096].
    """
    for name, side in (("width", width), ("height", height)):
        if not 1 <= side <= MAX_PNG_SIDE:
            raise ValueError(f"{name}={side} is outside [1, {MAX_PNG_SIDE}]")
    rng = random.Random(seed)
    red_0, green_0, blue = rng.randrange(256), rng.randrange(256), rng.randrange(256)
    reds = [(red_0 + x * 256 // width) & 0xFF for x in range(width)]
    # Each scanline uses filter type 1 ("Sub": every byte minus the same channel one pixel to
    # the left), so the rows become near-constant and compress to a few kilobytes.
    row = bytearray(3 * width)
    row[0::3] = bytes([reds[0]] + [(b - a) & 0xFF for a, b in itertools.pairwise(reds)])
    row[2] = blue
    rows = bytearray()
    for y in range(height):
        row[1] = (green_0 + y * 256 // height) & 0xFF
        rows += b"\x01" + row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, RGB
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + _png_chunk(b"IEND", b"")
    )
