"""How scatter and DirectView.map split a sequence across engines, and how gather
joins the pieces back. Splits are views where the sequence allows (numpy slices, not
copies)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def bounds(length: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous block bounds: the first ``length % parts`` blocks get one item more."""
    base, extra = divmod(length, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def split(seq: Sequence, parts: int, dist: str = "b") -> list:
    """``parts`` pieces of ``seq``: contiguous blocks (``dist="b"``) or round-robin (``"r"``)."""
    if parts < 1:
        raise ValueError("cannot split across zero engines")
    check_dist(dist)
    if dist == "b":
        return [seq[a:b] for a, b in bounds(len(seq), parts)]
    return [seq[i::parts] for i in range(parts)]


def check_dist(dist: str) -> None:
    if dist not in ("b", "r"):
        raise ValueError(f"dist must be 'b' (blocks) or 'r' (round-robin), not {dist!r}")


def join(pieces: list, dist: str = "b") -> Any:
    """Inverse of :func:`split`: numpy arrays are concatenated, sequences chained."""
    pieces = [p for p in pieces if p is not None]
    if not pieces:
        return []
    if dist == "r":
        if _same_arrays(pieces) and _round_robin_lengths(pieces):
            return _interleave(pieces)
        total = sum(len(p) for p in pieces)
        order = [p[i] for i in range(max(len(p) for p in pieces)) for p in pieces if i < len(p)]
        if isinstance(pieces[0], np.ndarray):
            return np.asarray(order) if total else pieces[0][:0]
        return order
    if isinstance(pieces[0], np.ndarray):
        return np.concatenate(pieces)
    if all(isinstance(p, (list, tuple, range)) for p in pieces):
        return [item for p in pieces for item in p]
    joined = pieces[0]
    for p in pieces[1:]:
        joined = joined + p
    return joined


def _same_arrays(pieces: list) -> bool:
    first = pieces[0]
    return all(isinstance(p, np.ndarray) and p.ndim >= 1 and p.dtype == first.dtype
               and p.shape[1:] == first.shape[1:] for p in pieces)


def _round_robin_lengths(pieces: list) -> bool:
    total, n = sum(len(p) for p in pieces), len(pieces)
    return all(len(p) == len(range(i, total, n)) for i, p in enumerate(pieces))


def _interleave(pieces: list) -> np.ndarray:
    """Round-robin parts back into one array: part i holds rows i, i+n, i+2n, ..."""
    n = len(pieces)
    out = np.empty((sum(len(p) for p in pieces), *pieces[0].shape[1:]), pieces[0].dtype)
    for i, piece in enumerate(pieces):
        out[i::n] = piece
    return out
