"""The engine's pool of MPI receive buffers: reuse only what nothing refers to."""
import pickle

import numpy as np
import pytest

from mpihub.engine.buffers import SMALL_BYTES, BufferPool

pytestmark = pytest.mark.timeout(30)

BIG = SMALL_BYTES * 2


def address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def test_an_idle_map_is_handed_out_again():
    pool = BufferPool(limit=4 * BIG)
    first = pool.empty((BIG // 8,), np.float64)
    where = address(first)
    del first
    again = pool.empty((BIG // 4,), np.int32)
    assert address(again) == where and again.dtype == np.int32 and again.shape == (BIG // 4,)
    again[:] = 7  # writable
    assert pool.nbytes == BIG


def test_a_map_in_use_is_never_reused():
    pool = BufferPool(limit=4 * BIG)
    held = pool.empty((BIG,), np.uint8)
    view = held[10:20]
    del held
    pending = pickle.PickleBuffer(pool.empty((BIG,), np.uint8))  # like a send still in flight
    third = pool.empty((BIG,), np.uint8)
    assert len({address(view) - 10, address(np.asarray(pending)), address(third)}) == 3
    del view, pending, third
    assert pool.empty((BIG,), np.uint8) is not None and pool.nbytes == 3 * BIG


def test_sizes_must_fit_without_much_waste():
    pool = BufferPool(limit=8 * BIG)
    big = pool.empty((2 * BIG - 8,), np.uint8)
    where = address(big)
    del big
    assert address(pool.empty((BIG,), np.uint8)) == where  # fits, wasting under half
    assert address(pool.empty((BIG // 2,), np.uint8)) != where  # would waste more than half
    assert address(pool.empty((2 * BIG,), np.uint8)) != where  # too small


def test_the_pool_stays_under_its_limit_and_small_arrays_skip_it():
    pool = BufferPool(limit=2 * BIG)
    kept = [pool.empty((BIG,), np.uint8) for _ in range(3)]
    assert pool.nbytes <= 2 * BIG
    assert all(k.shape == (BIG,) for k in kept)
    assert BufferPool(limit=0).empty((BIG,), np.uint8).shape == (BIG,)
    tiny = pool.empty((10, 3), np.float32)
    assert tiny.shape == (10, 3) and pool.nbytes <= 2 * BIG
