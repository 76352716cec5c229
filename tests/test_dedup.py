"""Tests of the host-side dedup (rectrain.data.batch.unique_inverse / add_unique)."""

import threading

import numpy as np
import pytest

from rectrain.data.batch import add_unique, unique_inverse


def _assert_same_as_numpy(ids, num_rows):
  want_u, want_inv = np.unique(ids.reshape(-1), return_inverse=True)
  got_u, got_inv = unique_inverse(ids, num_rows)
  assert got_u.dtype == want_u.dtype and got_inv.dtype == np.int32
  assert got_inv.shape == ids.shape
  np.testing.assert_array_equal(got_u, want_u)
  np.testing.assert_array_equal(got_inv.reshape(-1), want_inv)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_unique_inverse_equals_numpy_unique(dtype):
  rng = np.random.default_rng(0)
  # Many duplicates, few duplicates, one id, the table's last row, a skewed batch.
  cases = [rng.integers(0, 40, size=(64, 5)), rng.integers(0, 10**6, size=(128, 26)),
           np.full((7, 3), 5), np.array([[999_999, 0]]),
           (rng.zipf(1.3, size=(4096, 26)) % 10**6)]
  for ids in cases:
    _assert_same_as_numpy(ids.astype(dtype), 10**6)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_unique_inverse_field_blocks_equal_numpy_unique(dtype):
  # Each column in its own block of the fused table (the hashed layout): the
  # column-by-column path; uneven block sizes, a constant column, a skewed one.
  rng = np.random.default_rng(3)
  sizes = np.array([1 << 18, 7, 1, 1000, 1 << 18, 3])
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  cols = [rng.integers(0, n, size=4096) for n in sizes]
  cols[4] = rng.zipf(1.2, size=4096) % sizes[4]
  ids = np.stack([c + o for c, o in zip(cols, offsets[:-1])], axis=1)
  _assert_same_as_numpy(ids.astype(dtype), int(offsets[-1]))
  # Blocks that touch or run backwards take the whole-table path, same result.
  touching = np.array([[0, 5], [5, 6]])
  backwards = ids[:, ::-1]
  for case in (touching, backwards, ids[:1]):
    _assert_same_as_numpy(np.ascontiguousarray(case).astype(dtype), int(offsets[-1]))


def test_unique_inverse_stale_table_and_growth():
  # The per-thread table keeps stale slots between calls and grows; neither may show.
  rng = np.random.default_rng(1)
  for high in (10, 1000, 50, 200_000, 7):
    _assert_same_as_numpy(rng.integers(0, high, size=(300, 4)).astype(np.int32), 200_000)


def test_unique_inverse_out_of_range_and_empty_fall_back():
  _assert_same_as_numpy(np.array([[3, -2], [3, 9]], np.int32), 5)  # negative, >= num_rows
  _assert_same_as_numpy(np.zeros((0, 4), np.int32), 5)


def test_unique_inverse_threads_have_their_own_table():
  rng = np.random.default_rng(2)
  inputs = [rng.integers(0, 5000, size=(512, 26)).astype(np.int32) for _ in range(8)]
  want = [np.unique(x.reshape(-1), return_inverse=True) for x in inputs]
  errors = []

  def work(k):
    for _ in range(20):
      u, inv = unique_inverse(inputs[k], 5000)
      if not (np.array_equal(u, want[k][0]) and np.array_equal(inv.reshape(-1), want[k][1])):
        errors.append(k)

  threads = [threading.Thread(target=work, args=(k,)) for k in range(len(inputs))]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors


def test_add_unique_pads_and_checks_max_unique():
  cat = np.array([[4, 1], [1, 7]], np.int32)
  b = add_unique({"cat": cat}, num_rows=9, max_unique=5)
  np.testing.assert_array_equal(b["unique"], [1, 4, 7, 9, 9])
  assert b["num_unique"] == 3 and b["inverse"].dtype == np.int32
  np.testing.assert_array_equal(b["unique"][b["inverse"]], cat)
  with pytest.raises(ValueError, match="max_unique=2"):
    add_unique({"cat": cat}, num_rows=9, max_unique=2)
