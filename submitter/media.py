"""Small, real result files for the Kling simulator, built with the standard library only.

The simulator serves these as the ``images[].url`` and ``videos[].url`` of succeeded tasks, so
that a downloader plugin handles genuine bytes offline:

* :func:`png_bytes`: a valid PNG (8-bit RGB, one zlib-compressed ``IDAT``) showing a gradient;
* :func:`mp4_bytes`: a structurally valid ISO Base Media file (ISO/IEC 14496-12) made of an
  ``ftyp`` box (brand ``isom``), a ``moov`` box holding one ``mvhd`` and an ``mdat`` box of
  filler bytes. It has no track, so a player shows nothing, but ``file`` names it
  "ISO Media" and every box parser walks it.

Both are deterministic: the same arguments give the same bytes.
"""

from __future__ import annotations

import itertools
import random
import struct
import zlib

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


def _box(kind: bytes, payload: bytes) -> bytes:
    """One ISO-BMFF box: 32-bit size (header included), 4-character type, payload."""
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _mvhd(duration_ms: int) -> bytes:
    """A version-0 ``mvhd`` (movie header): timescale 1000, so durations are milliseconds."""
    matrix = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
    payload = (
        struct.pack(">B3x", 0)  # version 0, flags 0
        + struct.pack(">IIII", 0, 0, 1000, duration_ms)  # created, modified, timescale, duration
        + struct.pack(">IH10x", 0x00010000, 0x0100)  # rate 1.0, volume 1.0, reserved
        + matrix
        + bytes(24)  # pre_defined
        + struct.pack(">I", 1)  # next_track_ID
    )
    return _box(b"mvhd", payload)


def mp4_bytes(seed: int = 0, duration_s: float = 5.0) -> bytes:
    """A small, structurally valid MP4 (ISO Base Media) file; about 200 bytes.

    Layout: ``ftyp`` (major brand ``isom``, minor version 512, compatible ``isom iso2 mp41``),
    ``moov`` containing only ``mvhd`` (timescale 1000, the given duration), then ``mdat`` with
    64 filler bytes drawn from ``seed``. No track is declared; the file is for download and
    storage tests, not for playback.

    Args:
        seed: Any integer; it picks the ``mdat`` bytes, so the same seed gives the same file.
        duration_s: The duration written in ``mvhd``, seconds, 0 to about 4.2 million.

    Returns:
        The file's bytes; they start with the ``ftyp`` box (``bytes[4:8] == b"ftyp"``).

    Raises:
        ValueError: ``duration_s`` is negative or does not fit the 32-bit millisecond field.
    """
    duration_ms = round(duration_s * 1000)
    if not 0 <= duration_ms <= 0xFFFFFFFF:
        raise ValueError(f"duration_s={duration_s} is outside [0, 4294967.295]")
    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2mp41")
    moov = _box(b"moov", _mvhd(duration_ms))
    mdat = _box(b"mdat", random.Random(seed).randbytes(64))
    return ftyp + moov + mdat
