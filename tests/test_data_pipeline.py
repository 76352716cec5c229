"""Tests of rectrain.data.pipeline (generic host-side stages)."""

import threading
import time

import numpy as np
import pytest

from rectrain.data.batch import pad_batch
from rectrain.data.pipeline import (map_ordered, prefetch, rebatch, shuffle_rows, take_rows,
                                    with_unique)


def _prefetch_threads():
  return [t for t in threading.enumerate() if t.name == "rectrain-prefetch" and t.is_alive()]


def test_prefetch_yields_all_items_in_order():
  assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))
  assert not _prefetch_threads()


def test_prefetch_propagates_errors_at_their_position():
  def gen():
    yield 1
    yield 2
    raise KeyError("boom in producer")

  got = []
  with pytest.raises(KeyError, match="boom in producer"):
    for x in prefetch(gen(), depth=1):
      got.append(x)
  assert got == [1, 2]
  assert not _prefetch_threads()


def test_prefetch_runs_ahead_in_background():
  produced = []

  def gen():
    for i in range(10):
      produced.append(i)
      yield i

  it = prefetch(gen(), depth=4)
  assert next(it) == 0
  deadline = time.time() + 5
  while len(produced) < 6 and time.time() < deadline:
    time.sleep(0.01)
  # 1 consumed + 4 queued + 1 waiting to be put; never the whole stream.
  assert len(produced) == 6
  it.close()


def test_prefetch_early_stop_does_not_hang():
  closed = threading.Event()

  def endless():
    try:
      i = 0
      while True:
        yield i
        i += 1
    finally:
      closed.set()

  it = prefetch(endless(), depth=2)
  for x in it:
    if x == 5:
      break
  it.close()  # The producer is blocked on a full queue; close must still return.
  assert not _prefetch_threads()
  assert closed.wait(5)
  with pytest.raises(ValueError, match="depth"):
    list(prefetch(iter([]), depth=0))


def _batches(rng, n, size, fields=4, high=50):
  return [{"cat": rng.integers(0, high, size=(size, fields)).astype(np.int32),
           "label": rng.integers(0, 2, size=size).astype(np.float32),
           "weight": np.ones(size, np.float32),
           "index": np.arange(i * size, (i + 1) * size, dtype=np.int64)} for i in range(n)]


def test_with_unique_matches_numpy_unique():
  rng = np.random.default_rng(0)
  for b in with_unique(iter(_batches(rng, 3, 16)), num_rows=50, max_unique=64):
    uniq = np.unique(b["cat"])
    assert b["unique"].shape == (64,) and b["num_unique"] == uniq.size
    np.testing.assert_array_equal(b["unique"][:uniq.size], uniq)
    assert (b["unique"][uniq.size:] == 50).all()
    np.testing.assert_array_equal(b["unique"][b["inverse"]], b["cat"])


def test_take_rows_counts_real_rows():
  rng = np.random.default_rng(1)
  batches = _batches(rng, 5, 10)
  batches[-1] = pad_batch({k: v[:4] for k, v in batches[-1].items()}, 10)
  out = list(take_rows(iter(batches), 25))
  assert len(out) == 3 and sum(float(b["weight"].sum()) for b in out) == 25
  np.testing.assert_array_equal(out[2]["weight"], [1] * 5 + [0] * 5)
  np.testing.assert_array_equal(out[2]["index"][5:], -1)
  np.testing.assert_array_equal(batches[2]["weight"], 1)  # Input not modified.
  assert sum(float(b["weight"].sum()) for b in take_rows(iter(batches), 1000)) == 44
  assert list(take_rows(iter(batches), 0)) == []


def test_rebatch_fixed_sizes_and_padding():
  blocks = [{"x": np.arange(a, b), "label": np.ones(b - a, np.float32),
             "index": np.arange(a, b)} for a, b in
            [(0, 3), (3, 3), (3, 20), (20, 21), (21, 30)]]
  out = list(rebatch(iter(blocks), 8))
  assert [b["x"].shape for b in out] == [(8,)] * 4
  np.testing.assert_array_equal(np.concatenate([b["x"] for b in out])[:30], np.arange(30))
  np.testing.assert_array_equal(out[-1]["index"], [24, 25, 26, 27, 28, 29, -1, -1])
  np.testing.assert_array_equal(out[-1]["label"], [1] * 6 + [0] * 2)
  assert list(rebatch(iter([]), 8)) == []


@pytest.mark.parametrize("buffer_size", [1, 7, 64, 1000])
def test_shuffle_rows_is_bounded_deterministic_permutation(buffer_size):
  blocks = [{"i": np.arange(a, b), "v": np.arange(a, b) * 10}
            for a, b in [(0, 5), (5, 50), (50, 51), (51, 300)]]
  out = list(shuffle_rows(iter(blocks), buffer_size, seed=7))
  i = np.concatenate([b["i"] for b in out])
  np.testing.assert_array_equal(np.sort(i), np.arange(300))
  np.testing.assert_array_equal(np.concatenate([b["v"] for b in out]), i * 10)
  # Bounded: output position p holds a row that entered at or before p + buffer_size.
  assert (np.arange(300) >= i - buffer_size).all()
  again = np.concatenate([b["i"] for b in shuffle_rows(iter(blocks), buffer_size, seed=7)])
  np.testing.assert_array_equal(i, again)
  if buffer_size == 1:  # A one-slot buffer cannot reorder anything.
    np.testing.assert_array_equal(i, np.arange(300))
    return
  assert not np.array_equal(i, np.arange(300))
  other = np.concatenate([b["i"] for b in shuffle_rows(iter(blocks), buffer_size, seed=8)])
  assert not np.array_equal(i, other)


def test_shuffle_rows_zero_keeps_order():
  blocks = [{"i": np.arange(0, 10)}, {"i": np.arange(10, 15)}]
  out = list(shuffle_rows(iter(blocks), 0))
  np.testing.assert_array_equal(np.concatenate([b["i"] for b in out]), np.arange(15))


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_map_ordered_keeps_order_and_raises_in_place(workers):
  def slow_square(x):
    time.sleep(0.002 * (x % 3))
    if x == 7:
      raise RuntimeError("bad item 7")
    return x * x

  got = []
  with pytest.raises(RuntimeError, match="bad item 7"):
    for y in map_ordered(slow_square, iter(range(20)), workers):
      got.append(y)
  assert got == [x * x for x in range(7)]
  assert list(map_ordered(lambda x: x + 1, iter(range(50)), workers)) == list(range(1, 51))
  assert not _prefetch_threads()


def test_with_unique_workers_give_same_batches():
  rng = np.random.default_rng(2)
  batches = _batches(rng, 6, 32)
  ref = [dict(b) for b in with_unique(iter([dict(b) for b in batches]), 50)]
  got = list(with_unique(iter([dict(b) for b in batches]), 50, workers=2))
  for a, b in zip(ref, got):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
