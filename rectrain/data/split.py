"""A deterministic random train / valid / test split of any stream, by row index.

The conventional offline CTR protocol (e.g. BARS / FuxiCTR's Criteo_x1)
splits the rows of a log at random 7:2:1 into train, validation and test.
Here a row's split is a pure function of its stream position ``index`` (the
batch contract, :mod:`rectrain.data.batch`) and a split seed, so every split
is re-derived on the fly from the same source without writing any file:

  h(i, s) = splitmix64(splitmix64(i) XOR splitmix64(s XOR TAG))
  split(i, s) = k  such that  t_k <= h(i, s) < t_{k+1},
  t_k = floor(2^64 * (r_0 + ... + r_{k-1}) / (r_0 + r_1 + r_2))

with ratios ``r = (r_train, r_valid, r_test)`` (default 7:2:1). The thresholds
are computed exactly in integer arithmetic, so the shares are the ratios up
to 2^-64; each row lands in exactly one split (the splits are disjoint and
cover the source), and another seed gives an unrelated assignment.

:class:`SplitStream` filters a source stream to one split and re-batches the
kept rows into full batches. ``max_rows`` counts rows *of the split*: the
first ``max_rows`` rows of the split in source order are delivered (so a
split of the first N source rows has exactly :func:`count_split` (N) rows,
and ``max_rows = count_split(N, ...)`` for train and test gives two disjoint
sets that, with valid, cover exactly the first N source rows). ``max_rows =
None`` reads the split to the end of the source. The optional shuffle buffer
shuffles the kept split rows (after the cut, so the set of rows does not
depend on it).

Shape legend: N = rows.
"""

from __future__ import annotations

import fractions
import functools
import math
from typing import Any, Dict, Iterator, Sequence

import numpy as np

from rectrain.data.batch import Batch
from rectrain.data.hashing import splitmix64
from rectrain.data.pipeline import rebatch, shuffle_rows

SPLITS = ("train", "valid", "test")
DEFAULT_RATIOS = (7, 2, 1)
# Tag of the seed hash ("SPLIT" in ASCII): seed s is hashed as s XOR TAG, not
# as the small integers the per-field salts of rectrain.data.hashing hash.
_TAG = 0x53504C4954
_COUNT_CHUNK = 1 << 22


def check_ratios(ratios: Sequence[float], key: str = "split_ratios") -> tuple:
  """Validates train:valid:test ratios; returns them as a tuple.

  Three finite numbers >= 0 with a positive sum (e.g. ``(7, 2, 1)`` or
  ``(0.8, 0.1, 0.1)``); a zero leaves that split empty. Errors name ``key``.
  """
  try:
    values = tuple(ratios)
  except TypeError:
    raise ValueError(f"{key}={ratios!r}: expected 3 numbers (train, valid, test)") from None
  if len(values) != len(SPLITS):
    raise ValueError(f"{key}={ratios!r}: expected 3 numbers (train, valid, test), "
                     f"got {len(values)}")
  for name, v in zip(SPLITS, values):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
      raise ValueError(f"{key}={ratios!r}: the {name} ratio {v!r} is not a number")
    if not math.isfinite(float(v)) or v < 0:
      raise ValueError(f"{key}={ratios!r}: the {name} ratio must be finite and >= 0")
  if sum(float(v) for v in values) <= 0:
    raise ValueError(f"{key}={ratios!r}: the ratios must not all be 0")
  return values


def check_split(split: str, ratios: Sequence[float], seed: int, key: str = "split") -> int:
  """Validates a split name against its ratios and seed; returns its position 0..2."""
  if split not in SPLITS:
    raise ValueError(f"{key}={split!r}: must be one of {SPLITS}")
  values = check_ratios(ratios, key=f"{key}_ratios")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"{key}_seed={seed!r}: must be an integer >= 0")
  k = SPLITS.index(split)
  if values[k] == 0:
    raise ValueError(f"{key}={split!r}: its ratio in {key}_ratios={tuple(values)!r} is 0, "
                     "so the split is empty")
  return k


@functools.lru_cache(maxsize=64)
def _thresholds(ratios: tuple) -> np.ndarray:
  """(2,) uint64: t_1, t_2 = floor(2^64 * cumulative share), exactly."""
  parts = [fractions.Fraction(r) for r in ratios]   # exact, also for floats
  total = sum(parts)
  out = []
  cum = fractions.Fraction(0)
  for p in parts[:-1]:
    cum += p
    out.append(min(math.floor(cum / total * (1 << 64)), (1 << 64) - 1))
  return np.array(out, dtype=np.uint64)


def _ratio_key(ratios: Sequence[float]) -> tuple:
  """Hashable exact ratios (ints stay ints, the rest become floats)."""
  return tuple(int(r) if isinstance(r, (int, np.integer)) else float(r) for r in ratios)


def _seed_key(seed: int) -> np.uint64:
  return splitmix64(np.array([int(seed) ^ _TAG], dtype=np.uint64))[0]


def split_hash(index_N: np.ndarray, seed: int = 0) -> np.ndarray:
  """(N,) uint64 ``h(i, s) = splitmix64(splitmix64(i) XOR splitmix64(s XOR TAG))``."""
  return _hash(np.asarray(index_N).astype(np.uint64), _seed_key(seed))


def _hash(index_N: np.ndarray, key: np.uint64) -> np.ndarray:
  return splitmix64(splitmix64(index_N) ^ key)


def assign_split(index_N: np.ndarray, ratios: Sequence[float] = DEFAULT_RATIOS,
                 seed: int = 0) -> np.ndarray:
  """(N,) int8 split of each row: 0 train, 1 valid, 2 test; -1 where ``index < 0`` (padding)."""
  ratios = check_ratios(ratios)
  return _assign(np.asarray(index_N), _thresholds(_ratio_key(ratios)), _seed_key(seed))


def _assign(index_N: np.ndarray, t: np.ndarray, key: np.uint64) -> np.ndarray:
  h = _hash(np.maximum(index_N, 0).astype(np.uint64), key)
  out = (h >= t[0]).astype(np.int8) + (h >= t[1]).astype(np.int8)
  out[index_N < 0] = -1
  return out


def split_counts(num_source_rows: int, ratios: Sequence[float] = DEFAULT_RATIOS,
                 seed: int = 0, start_row: int = 0) -> Dict[str, int]:
  """Exact rows of each split among source rows ``start_row .. start_row + N - 1``.

  Vectorised over chunks of 4M indices (about 1 s per 10M rows on one core);
  cached, so configs can call it freely.
  """
  ratios = check_ratios(ratios)
  if int(num_source_rows) < 0 or int(start_row) < 0:
    raise ValueError(f"split_counts: num_source_rows and start_row must be >= 0, got "
                     f"{num_source_rows}, {start_row}")
  if isinstance(seed, bool) or int(seed) < 0:
    raise ValueError(f"split_counts: seed must be an integer >= 0, got {seed!r}")
  return dict(_split_counts(int(num_source_rows), _ratio_key(ratios), int(seed), int(start_row)))


@functools.lru_cache(maxsize=256)
def _split_counts(n: int, ratios: tuple, seed: int, start: int) -> tuple:
  t = _thresholds(ratios)
  key = _seed_key(seed)
  below = [0, 0]
  for lo in range(start, start + n, _COUNT_CHUNK):
    hi = min(lo + _COUNT_CHUNK, start + n)
    h = _hash(np.arange(lo, hi, dtype=np.uint64), key)
    below[0] += int(np.count_nonzero(h < t[0]))
    below[1] += int(np.count_nonzero(h < t[1]))
  return (("train", below[0]), ("valid", below[1] - below[0]), ("test", n - below[1]))


def count_split(num_source_rows: int, split: str, ratios: Sequence[float] = DEFAULT_RATIOS,
                seed: int = 0, start_row: int = 0) -> int:
  """Exact rows of ``split`` among ``num_source_rows`` source rows (see :func:`split_counts`)."""
  check_split(split, ratios, seed)
  return split_counts(num_source_rows, ratios, seed, start_row)[split]


class SplitStream:
  """The rows of one split of a source stream, in full batches (see the module docstring).

  Args:
    source: a stream following :mod:`rectrain.data.batch` (iterable of
      batches with ``index``; attributes ``batch_size``, ``layout``,
      ``num_rows``, ``num_dense``, ``report()``). It should not shuffle or
      cap rows itself: ``max_rows`` and ``shuffle_buffer`` apply here.
    split: ``"train"``, ``"valid"`` or ``"test"``.
    ratios: train:valid:test ratios.
    seed: the split seed.
    max_rows: deliver the first ``max_rows`` rows of the split (in source
      order) and stop reading the source; None = to the end of the source.
    shuffle_buffer: rows of a shuffle buffer over the delivered rows
      (:func:`rectrain.data.pipeline.shuffle_rows`); 0 keeps source order.
    shuffle_seed: seed of that shuffle buffer.

  Attributes: ``batch_size``, ``layout``, ``num_rows``, ``num_dense`` (those of
  the source), ``source``, ``split``, ``ratios``, ``seed``, ``max_rows``.
  """

  def __init__(self, source, split: str, ratios: Sequence[float] = DEFAULT_RATIOS,
               seed: int = 0, max_rows: int | None = None, shuffle_buffer: int = 0,
               shuffle_seed: int = 0):
    self.split_id = check_split(split, ratios, seed)
    if max_rows is not None and int(max_rows) < 0:
      raise ValueError(f"SplitStream: max_rows must be None or >= 0, got {max_rows}")
    if int(shuffle_buffer) < 0:
      raise ValueError(f"SplitStream: shuffle_buffer must be >= 0, got {shuffle_buffer}")
    self.source = source
    self.split = split
    self.ratios = tuple(ratios)
    self.seed = int(seed)
    self.max_rows = None if max_rows is None else int(max_rows)
    self.shuffle_buffer = int(shuffle_buffer)
    self.shuffle_seed = int(shuffle_seed)
    self.batch_size = source.batch_size
    self.layout = source.layout
    self.num_rows = source.num_rows
    self.num_dense = source.num_dense
    self._thresholds = _thresholds(_ratio_key(self.ratios))
    self._key = _seed_key(self.seed)
    self._rows = 0
    self._source_rows = 0

  def _blocks(self) -> Iterator[Dict[str, np.ndarray]]:
    """Blocks of the split's rows in source order, cut after ``max_rows``."""
    self._rows = 0
    self._source_rows = 0
    remaining = self.max_rows
    if remaining == 0:
      return
    it = iter(self.source)
    try:
      for batch in it:
        index = batch["index"]
        real = (batch["weight"] > 0) & (index >= 0)
        self._source_rows += int(np.count_nonzero(real))
        keep = np.flatnonzero(real & (_assign(index, self._thresholds, self._key)
                                      == self.split_id))
        if remaining is not None and keep.size >= remaining:
          keep = keep[:remaining]
          # source rows up to the last kept one (later rows were not needed)
          self._source_rows -= int(np.count_nonzero(real[keep[-1] + 1:]))
        if keep.size:
          block = {k: v[keep] for k, v in batch.items() if np.ndim(v) > 0}
          self._rows += keep.size
          yield block
        if remaining is not None:
          remaining -= keep.size
          if remaining <= 0:
            return
    finally:
      close = getattr(it, "close", None)
      if close is not None:
        close()

  def __iter__(self) -> Iterator[Batch]:
    blocks = shuffle_rows(self._blocks(), self.shuffle_buffer, self.shuffle_seed)
    yield from rebatch(blocks, self.batch_size)

  def report(self) -> Dict[str, Any]:
    """The source's report plus ``rows`` (split rows delivered) and ``split``.

    ``split`` holds the name, ratios, seed and ``source_rows``: the source
    rows read up to the last delivered one.
    """
    report = dict(self.source.report())
    report["rows"] = self._rows
    report["split"] = {"name": self.split, "ratios": list(self.ratios), "seed": self.seed,
                       "source_rows": self._source_rows}
    return report
