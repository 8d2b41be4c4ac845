"""Builders of hostile files for tests/test_hostile.py and docs/experiments/npz_bomb.py (issue #28)."""

from __future__ import annotations

import io
import pathlib
import struct
import zipfile
import zlib

import numpy as np


def _deflate_zeros(header: bytes, zeros: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``header`` followed by ``zeros`` zero bytes, and its CRC-32, built from one
    compressed 16 MiB block repeated (each segment ends in a full flush, so segments are independent)."""
    block_size = 16 << 20
    block = bytes(block_size)

    def segment(data: bytes, final: bool) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH)

    full, rest = divmod(zeros, block_size)
    crc = zlib.crc32(header)
    for _ in range(full):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(bytes(rest), crc)
    blocks = segment(block, False) * full if full else b""
    return segment(header, False) + blocks + segment(bytes(rest), True), crc


def _write_zip(path: pathlib.Path, members: list[tuple[str, bytes, int, int]]) -> None:
    """A zip of deflated members ``(name, stream, crc, uncompressed size)`` (sizes < 4 GiB)."""
    with open(path, "wb") as f:
        central = b""
        for name, stream, crc, size in members:
            offset = f.tell()
            name_b = name.encode()
            f.write(struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(stream), size, len(name_b), 0))
            f.write(name_b + stream)
            central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(stream), size,
                                   len(name_b), 0, 0, 0, 0, 0, offset) + name_b
        start = f.tell()
        f.write(central)
        f.write(struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), start, 0))


def _npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def make_bomb(path: pathlib.Path, catch_trace_path: pathlib.Path, frames: int) -> pathlib.Path:
    """catch_trace_path's trace with every per-step array replaced by ``frames`` steps of zeros: an honest
    header, an honest stream, a few MB on disk, gigabytes inflated."""
    with zipfile.ZipFile(catch_trace_path) as zf:
        meta_member = zf.read("meta.npy")
    members = [("meta.npy", *_raw(meta_member))]
    for name, shape, dtype in (("a/episode", (frames,), "<i8"), ("a/frame", (frames, 1, 64, 64), "|u1")):
        header = _npy_header(shape, dtype)
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        stream, crc = _deflate_zeros(header, nbytes)
        members.append((name + ".npy", stream, crc, len(header) + nbytes))
    _write_zip(path, members)
    return path


def _raw(data: bytes) -> tuple[bytes, int, int]:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(), zlib.crc32(data), len(data)


