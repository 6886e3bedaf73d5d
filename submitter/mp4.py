"""A small playable MP4 built with the standard library only: H.264 in I_PCM macroblocks.

An I_PCM macroblock carries its 16x16 luma and 2 x 8x8 chroma samples raw, so a valid
H.264 bitstream (ITU-T H.264, Baseline profile, level 1.0, CAVLC) needs no transform or
entropy coder: a sequence parameter set, a picture parameter set, and one IDR slice per
frame whose macroblocks are each ``mb_type`` 25 (I_PCM, coded ``ue(v)``), zero bits to the
next byte, then 384 sample bytes. The frames go into an ISO Base Media file
(ISO/IEC 14496-12, 14496-15): ``ftyp``, ``moov`` (one ``avc1`` video track, its ``avcC``
holding the parameter sets) and ``mdat``, so browsers' ``<video>`` elements load and play it.
"""

from __future__ import annotations

import random
import struct

#: Frame size in pixels (two macroblocks a side: 4 macroblocks, 1.5 KB a frame).
SIDE = 32
_MB = 16
_PROFILE, _COMPAT, _LEVEL = 66, 0xC0, 10  # Baseline, constraint_set0/1, level 1.0


class _Bits:
    """An MSB-first bit writer with ``ue(v)``/``se(v)`` Exp-Golomb codes (H.264 9.1)."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, count: int, value: int) -> None:
        self.bits += [(value >> (count - 1 - i)) & 1 for i in range(count)]

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(code.bit_length() - 1, 0)
        self.u(code.bit_length(), code)

    def align(self) -> None:
        self.bits += [0] * (-len(self.bits) % 8)

    def trailing(self) -> bytes:
        """``rbsp_trailing_bits``: a stop bit, then zeros to the byte; the RBSP's bytes."""
        self.u(1, 1)
        self.align()
        return bytes(
            int("".join(map(str, self.bits[i : i + 8])), 2) for i in range(0, len(self.bits), 8)
        )


def _nal(header: int, rbsp: bytes) -> bytes:
    """A NAL unit: its header byte and the RBSP with emulation prevention bytes (7.4.1)."""
    out, zeros = bytearray([header]), 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _sps() -> bytes:
    b = _Bits()
    for count, value in ((8, _PROFILE), (8, _COMPAT), (8, _LEVEL)):
        b.u(count, value)
    for value in (0, 0, 0, 0, 1):  # sps id, log2_max_frame_num-4, poc type 0, lsb-4, 1 ref
        b.ue(value)
    b.u(1, 0)  # gaps_in_frame_num_value_allowed_flag
    b.ue(SIDE // _MB - 1)  # pic_width_in_mbs_minus1
    b.ue(SIDE // _MB - 1)  # pic_height_in_map_units_minus1
    for flag in (1, 1, 0, 0):  # frame_mbs_only, direct_8x8_inference, cropping, vui
        b.u(1, flag)
    return _nal(0x67, b.trailing())


def _pps() -> bytes:
    b = _Bits()
    b.ue(0)  # pps id
    b.ue(0)  # sps id
    b.u(2, 0)  # CAVLC; no bottom_field_pic_order_in_frame_present
    for value in (0, 0, 0):  # one slice group; one reference in each list
        b.ue(value)
    b.u(3, 0)  # weighted_pred_flag, weighted_bipred_idc
    for _ in range(3):  # pic_init_qp-26, pic_init_qs-26, chroma_qp_index_offset: se(0)
        b.ue(0)
    b.u(3, 0)  # deblocking control, constrained intra, redundant_pic_cnt
    return _nal(0x68, b.trailing())


def _idr_slice(frame: int, rng: random.Random) -> bytes:
    b = _Bits()
    for value in (0, 7, 0):  # first_mb_in_slice, slice_type I (all slices), pps id
        b.ue(value)
    b.u(4, 0)  # frame_num (IDR: 0)
    b.ue(frame % 2)  # idr_pic_id: differs between consecutive IDR pictures
    b.u(4, 0)  # pic_order_cnt_lsb
    b.u(2, 0)  # no_output_of_prior_pics_flag, long_term_reference_flag
    b.ue(0)  # slice_qp_delta: se(0)
    for _ in range((SIDE // _MB) ** 2):
        b.ue(25)  # mb_type I_PCM
        b.align()
        luma, cb, cr = rng.randrange(40, 216), rng.randrange(40, 216), rng.randrange(40, 216)
        for value in [luma] * 256 + [cb] * 64 + [cr] * 64:  # 16..235: no zero bytes
            b.u(8, value)
    return _nal(0x65, b.trailing())


def _box(kind: bytes, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _full(kind: bytes, flags: int, *parts: bytes) -> bytes:
    return _box(kind, struct.pack(">I", flags), *parts)  # version 0


def _counted(entry: str, rows: list[tuple[int, ...]]) -> bytes:
    """A sample table's entry count (32 bits), then each row packed as ``entry``."""
    return struct.pack(">I", len(rows)) + b"".join(struct.pack(entry, *r) for r in rows)


_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)


def _moov(duration_ms: int, deltas: list[int], sizes: list[int], mdat_at: int) -> bytes:
    sps, pps = _sps(), _pps()
    avcc = _box(
        b"avcC",
        bytes([1, _PROFILE, _COMPAT, _LEVEL, 0xFF, 0xE1]),
        struct.pack(">H", len(sps)) + sps + bytes([1]) + struct.pack(">H", len(pps)) + pps,
    )
    avc1 = _box(
        b"avc1",
        bytes(6) + struct.pack(">HHH12xHHII4xH", 1, 0, 0, SIDE, SIDE, 0x480000, 0x480000, 1),
        bytes(32) + struct.pack(">Hh", 0x18, -1),
        avcc,
    )
    stbl = _box(
        b"stbl",
        _full(b"stsd", 0, struct.pack(">I", 1), avc1),
        _full(b"stts", 0, _counted(">II", [(1, d) for d in deltas])),
        _full(b"stsc", 0, struct.pack(">IIII", 1, 1, len(sizes), 1)),
        _full(b"stsz", 0, struct.pack(">I", 0), _counted(">I", [(s,) for s in sizes])),
        _full(b"stco", 0, struct.pack(">II", 1, mdat_at)),
    )
    minf = _box(
        b"minf",
        _full(b"vmhd", 1, bytes(8)),
        _box(b"dinf", _full(b"dref", 0, struct.pack(">I", 1), _full(b"url ", 1))),
        stbl,
    )
    mdia = _box(
        b"mdia",
        _full(b"mdhd", 0, struct.pack(">IIIIHH", 0, 0, 1000, duration_ms, 0x55C4, 0)),
        _full(b"hdlr", 0, struct.pack(">I4s12x", 0, b"vide"), b"VideoHandler\0"),
        minf,
    )
    tkhd = _full(
        b"tkhd",
        3,  # enabled, in the movie
        struct.pack(">III4xI8xHHH2x", 0, 0, 1, duration_ms, 0, 0, 0),
        _MATRIX,
        struct.pack(">II", SIDE << 16, SIDE << 16),
    )
    mvhd = _full(
        b"mvhd",
        0,
        struct.pack(">IIII", 0, 0, 1000, duration_ms),  # created, modified, timescale, duration
        struct.pack(">IH10x", 0x00010000, 0x0100),  # rate 1.0, volume 1.0
        _MATRIX,
        bytes(24) + struct.pack(">I", 2),  # pre_defined, next_track_ID
    )
    return _box(b"moov", mvhd, _box(b"trak", tkhd, mdia))


def mp4_bytes(seed: int = 0, duration_s: float = 5.0) -> bytes:
    """A small playable MP4: 32x32 pixels, one frame a second (one colour block per
    macroblock, chosen by ``seed``), H.264 Baseline in I_PCM macroblocks.

    Layout: ``ftyp`` (major brand ``isom``, minor version 512), ``moov`` (``mvhd`` with
    timescale 1000 and the given duration, one ``avc1`` track), ``mdat``. About 1.6 KB a
    frame; at most 10 frames (a longer duration holds the last one).

    Args:
        seed: Any integer; the same seed gives the same bytes.
        duration_s: The duration, seconds, 0.001 to about 4.2 million.

    Returns:
        The file's bytes; they start with the ``ftyp`` box (``bytes[4:8] == b"ftyp"``).

    Raises:
        ValueError: ``duration_s`` is not positive or does not fit the 32-bit millisecond
            field.
    """
    duration_ms = round(duration_s * 1000)
    if not 1 <= duration_ms <= 0xFFFFFFFF:
        raise ValueError(f"duration_s={duration_s} is outside [0.001, 4294967.295]")
    frames = max(1, min(10, duration_ms // 1000))
    deltas = [duration_ms // frames] * frames
    deltas[-1] += duration_ms - sum(deltas)
    rng = random.Random(seed)
    samples = [_idr_slice(n, rng) for n in range(frames)]
    samples = [struct.pack(">I", len(s)) + s for s in samples]  # 4-byte lengths (avcC)
    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 512), b"isomiso2avc1mp41")
    size_of_moov = len(_moov(duration_ms, deltas, [len(s) for s in samples], 0))
    moov = _moov(duration_ms, deltas, [len(s) for s in samples], len(ftyp) + size_of_moov + 8)
    return ftyp + moov + _box(b"mdat", *samples)
