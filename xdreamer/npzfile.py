"""Bounded reading of ``.npz`` files (traces, replay episodes) that may come from strangers.

``np.load`` inflates a member as soon as it is indexed, trusting the shape its ``.npy`` header declares:
a 2.4 MB trace that declares gigabytes took the CLI to 2.4 GB and the app server to 2.47 GB (issue #28).
Here every member's header is read first (the first few hundred bytes of its deflate stream), the declared
shapes and dtypes are checked against limits (a global cap, and the caller's own rule, which derives
bounds from the file's metadata: steps × 64 × 64 × channels and so on), and only then is each member
inflated into a buffer of exactly its declared size. A stream that holds more than it declares, or less, or
fails its CRC, is refused. Object arrays are refused before any byte of them is read (never unpickled).

    headers = read_headers(path)          # {name: Member(shape, dtype, nbytes)}, nothing inflated
    arrays = read_arrays(path, headers)   # after the caller checked ``headers``
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import zipfile
import zlib
from typing import Callable, Iterable

import numpy as np

# Kinds of dtype a data file may hold: bool, signed / unsigned integers, floats, unicode strings.
ALLOWED_KINDS = "biufU"
MAX_MEMBERS = 4096  # a trace of a few dozen objects and sim keys has ~60 members
MAX_HEADER = 10_000
_CHUNK = 16 << 20
# What zipfile and zlib raise on a damaged archive or stream (a truncated file, a flipped bit).
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError, NotImplementedError,
                UnicodeDecodeError)  # numpy's own default bound on a .npy header (np.lib.format, max_header_size)


class NpzLimitError(ValueError):
    """A member of an npz file is malformed or exceeds a limit (one-line message)."""


@dataclasses.dataclass(frozen=True)
class Member:
    """A member's declared layout, from its ``.npy`` header."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # python ints: no overflow for any declared shape


def _open(path: pathlib.Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (ValueError, *_READ_ERRORS) as exc:
        raise NpzLimitError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None


def _header(stream, name: str, path: pathlib.Path) -> Member:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(stream, max_header_size=MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(stream, max_header_size=MAX_HEADER)
        else:
            raise ValueError(f"unknown .npy version {version}")
    except Exception as exc:  # noqa: BLE001 - numpy parses the header dict with ast/tokenize: a flipped byte
        # raises SyntaxError, tokenize.TokenError, ValueError ... (found by tests/test_hostile.py's fuzzing)
        raise NpzLimitError(f"{path}: member {name} has no valid .npy header ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    dtype = np.dtype(dtype)
    if dtype.hasobject or dtype.kind not in ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise NpzLimitError(f"{path}: member {name} has dtype {dtype}; data files hold plain numbers and strings only")
    if any((not isinstance(d, int)) or d < 0 for d in shape):
        raise NpzLimitError(f"{path}: member {name} has a bad shape {shape}")
    return Member(tuple(int(d) for d in shape), dtype, bool(fortran))


def read_headers(path: str | os.PathLike, max_members: int = MAX_MEMBERS) -> dict[str, Member]:
    """Every member's declared shape and dtype (``name`` without ``.npy``); inflates only the headers."""
    path = pathlib.Path(path)
    with _open(path) as zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise NpzLimitError(f"{path}: {len(infos)} members, more than the {max_members} a data file may hold")
        out: dict[str, Member] = {}
        for info in infos:
            if info.is_dir() or not info.filename.endswith(".npy"):
                raise NpzLimitError(f"{path}: member {info.filename!r} is not a .npy array")
            name = info.filename[:-4]
            if name in out:
                raise NpzLimitError(f"{path}: member {name!r} appears twice")
            try:
                with zf.open(info) as stream:
                    out[name] = _header(stream, name, path)
            except _READ_ERRORS as exc:
                raise NpzLimitError(f"{path}: member {name}: {type(exc).__name__}: {exc}") from None
    return out


# Deflate can shrink a run of zeros ~1,000x: a small file that declares gigabytes is a bomb. Real traces inflate
# 2-10x (toy:catch 1.9x, atari:Pong 10x with its emulator frame buffers: docs/security.md), so a file may
# inflate to at most MAX_RATIO times its size, or FLOOR bytes when that is more (small files are harmless).
MAX_RATIO = 100
FLOOR = 64 << 20


def check_total(path: str | os.PathLike, headers: dict[str, Member], cap: int) -> int:
    """Raise unless the declared sizes add up to at most ``cap`` bytes and to at most ``MAX_RATIO`` times the
    file's size (or ``FLOOR``); returns the total."""
    total = sum(m.nbytes for m in headers.values())
    if total > cap:
        raise NpzLimitError(f"{path}: declares {total / 2**20:,.0f} MiB of arrays, more than the limit of "
                            f"{cap / 2**20:,.0f} MiB (XDREAMER_MAX_NPZ_MB raises it)")
    size = pathlib.Path(path).stat().st_size
    if total > max(FLOOR, MAX_RATIO * size):
        raise NpzLimitError(f"{path}: a {size / 2**20:,.1f} MiB file that declares {total / 2**20:,.0f} MiB of "
                            f"arrays ({total / max(size, 1):,.0f}x; data files inflate at most {MAX_RATIO}x): "
                            "refusing a decompression bomb")
    return total


def default_cap() -> int:
    """The global cap on what one npz file may inflate to: ``XDREAMER_MAX_NPZ_MB`` MiB, default 2,048.

    A 27,000-step Atari trace (the episode limit) at paper size inflates to about 0.8 GB; twice that leaves room."""
    text = os.environ.get("XDREAMER_MAX_NPZ_MB", "2048")
    try:
        mb = float(text)
    except ValueError:
        raise NpzLimitError(f"XDREAMER_MAX_NPZ_MB={text!r} is not a number") from None
    if not math.isfinite(mb) or mb <= 0:
        raise NpzLimitError(f"XDREAMER_MAX_NPZ_MB must be a positive number, got {text!r}")
    return int(mb * 2**20)


def read_arrays(path: str | os.PathLike, headers: dict[str, Member],
                names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Inflate the members ``names`` (default: all) into arrays of exactly their checked declared size."""
    path = pathlib.Path(path)
    out: dict[str, np.ndarray] = {}
    with _open(path) as zf:
        for name in (headers if names is None else names):
            member = headers[name]
            try:
                with zf.open(name + ".npy") as stream:
                    if _header(stream, name, path) != member:  # the file changed since its headers were read
                        raise NpzLimitError(f"{path}: member {name} changed while it was read")
                    buf = bytearray(member.nbytes)
                    view, got = memoryview(buf), 0
                    while got < member.nbytes:  # in chunks: no second full-size copy of a large member
                        chunk = stream.read(min(_CHUNK, member.nbytes - got))
                        if not chunk:
                            raise NpzLimitError(f"{path}: member {name} is truncated ({got} of {member.nbytes} bytes)")
                        view[got:got + len(chunk)] = chunk
                        got += len(chunk)
                    if stream.read(1):  # reading on to the end also makes zipfile check the CRC
                        raise NpzLimitError(f"{path}: member {name} holds more data than its header declares")
            except _READ_ERRORS as exc:
                raise NpzLimitError(f"{path}: member {name}: {type(exc).__name__}: {exc}") from None
            array = np.frombuffer(buf, dtype=member.dtype)
            out[name] = array.reshape(member.shape, order="F" if member.fortran else "C")
    return out


def load_bounded(path: str | os.PathLike, check: Callable[[dict[str, Member]], None] | None = None,
                 cap: int | None = None) -> dict[str, np.ndarray]:
    """``np.load(path)`` as a dict, but bounded: headers first, ``check(headers)`` (the caller's rule, raising
    ``NpzLimitError``), the global cap, then the data."""
    headers = read_headers(path)
    check_total(path, headers, default_cap() if cap is None else cap)
    if check is not None:
        check(headers)
    return read_arrays(path, headers)
