"""Summary statistics of Criteo log files (``rectrain data stats FILE``).

Distinct values per field are estimated with a KMV ("k minimum values")
sketch (Bar-Yossef et al. 2002; Beyer et al. 2007): each present raw value
(the 32-bit hex value of ``C*``, the integer of ``I*``) is hashed to 64 bits
with ``splitmix64(value XOR field_salt)``; the sketch keeps the ``k``
smallest distinct hashes. With fewer than ``k`` distinct hashes the count is
exact; otherwise the estimate is ``(k - 1) / U_k`` where ``U_k`` is the k-th
smallest hash scaled to (0, 1), with relative standard error about
``1 / sqrt(k - 2)`` (1.6 % for k = 4096). Missing values are not counted as
a distinct value; their rate is reported separately.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from rectrain.data import hashing
from rectrain.data.criteo import CriteoStream, RawBlock
from rectrain.data.hashing import CAT_NAMES, INT_NAMES

_FIELDS = CAT_NAMES + INT_NAMES


class KMVSketch:
  """Distinct-count sketch over uint64 hashes: keeps the k smallest."""

  def __init__(self, k: int = 4096):
    if k < 3:
      raise ValueError(f"KMV sketch size k must be >= 3, got {k}")
    self.k = int(k)
    self.values = np.zeros(0, np.uint64)

  def update(self, hashes: np.ndarray):
    h = np.asarray(hashes, dtype=np.uint64)
    if h.size > self.k:
      h = np.partition(h, self.k - 1)[: self.k]
    self.values = np.union1d(self.values, h)[: self.k]

  def estimate(self) -> float:
    if self.values.size < self.k:
      return float(self.values.size)
    u_k = (float(self.values[self.k - 1]) + 1.0) / 2.0**64
    return (self.k - 1) / u_k

  @property
  def exact(self) -> bool:
    return self.values.size < self.k


class _StatsStream(CriteoStream):
  """A CriteoStream whose blocks carry raw values instead of hashed ids."""

  def _encode(self, raw: RawBlock) -> dict:
    values = np.concatenate([raw.cat_CxN, raw.int_IxN.view(np.uint64)])
    missing = np.concatenate([raw.cat_missing_CxN, raw.int_missing_IxN])
    salts = np.array([hashing.field_salt(f) for f in range(len(_FIELDS))], np.uint64)[:, None]
    hashes = hashing.splitmix64(values ^ salts)
    return {"label": raw.label_N.astype(np.float32), "hash": hashes.T, "missing": missing.T}


def data_stats(paths: str | os.PathLike | Sequence[str | os.PathLike], sketch_k: int = 4096,
               max_rows: int | None = None, max_reported: int = 10) -> dict:
  """Rows, bad lines, positive rate and per-field distinct / missing of Criteo files.

  Args:
    paths: one or several Criteo TSV files (plain or gzip), read in order.
    sketch_k: size k of the KMV sketch per field.
    max_rows: stop after this many kept rows (None = all).
    max_reported: bad lines listed in ``first_errors``.

  Returns:
    A JSON-serialisable dict: ``files``, ``rows_read``, ``rows``, ``skipped``
    (by reason), ``first_errors``, ``positive_rate``, ``distinct`` (field ->
    estimated distinct present values, C1..C26 then I1..I13),
    ``distinct_exact`` (field -> whether the count is exact), ``missing_rate``
    (field -> fraction of kept rows where it is empty) and ``distinct_method``.
  """
  stream = _StatsStream(paths, batch_size=1, bad_lines="skip", max_rows=max_rows,
                        max_reported=max_reported)
  sketches = [KMVSketch(sketch_k) for _ in _FIELDS]
  positives = 0.0
  missing = np.zeros(len(_FIELDS), np.int64)
  for block in stream._row_blocks():  # pylint: disable=protected-access
    positives += float(block["label"].sum())
    missing += block["missing"].sum(axis=0)
    present = ~block["missing"]
    for f, sketch in enumerate(sketches):
      sketch.update(np.unique(block["hash"][present[:, f], f]))
  report = stream.report()
  rows = report["rows"]
  return {
      "files": list(stream.paths),
      "rows_read": report["rows_read"],
      "rows": rows,
      "skipped": report["skipped"],
      "first_errors": report["first_errors"],
      "positive_rate": positives / rows if rows else None,
      "distinct": {name: round(s.estimate()) for name, s in zip(_FIELDS, sketches)},
      "distinct_exact": {name: s.exact for name, s in zip(_FIELDS, sketches)},
      "missing_rate": {name: (int(m) / rows if rows else None) for name, m in zip(_FIELDS, missing)},
      "distinct_method": (f"KMV sketch (k={sketch_k} smallest 64-bit splitmix64 hashes of the raw "
                          f"value per field; exact below k distinct, else (k-1)/U_k, relative "
                          f"std error ~1/sqrt(k-2))"),
  }
