"""Criteo TSV output of the synthetic stream.

:func:`format_tsv` renders raw rows as Criteo TSV lines (vectorised, no
per-row Python); :func:`write_tsv` writes a stream's rows to a (gzipped) file
that the Criteo reader parses back to the stream's batches.
"""

from __future__ import annotations

import gzip
from typing import Any, Dict, Mapping

import numpy as np

from rectrain.data.synthetic_config import NUM_CAT, NUM_INT
from rectrain.data.synthetic_stream import SyntheticStream

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_TAB, _NL, _MINUS, _ZERO = ord("\t"), ord("\n"), ord("-"), ord("0")


def _int_chars(values: np.ndarray, missing: np.ndarray):
  """(n, W) uint8 decimal digits (left aligned) and (n,) lengths; missing -> ''."""
  v = values.astype(np.int64)
  neg = v < 0
  mag = np.abs(v)
  ndig = np.ones(v.shape, dtype=np.int64)
  p = mag // 10
  while np.any(p):
    ndig += p > 0
    p //= 10
  length = ndig + neg
  width = int(length.max()) if length.size else 1
  chars = np.zeros(v.shape + (width,), dtype=np.uint8)
  rows = np.arange(v.shape[0])
  chars[neg, 0] = _MINUS
  cur = mag.copy()
  for k in range(int(ndig.max()) if ndig.size else 0):
    pos = length - 1 - k
    ok = pos >= neg  # still a digit position
    chars[rows[ok], pos[ok]] = _ZERO + (cur[ok] % 10)
    cur //= 10
  length = np.where(missing, 0, length)
  return chars, length


def _hex_chars(values: np.ndarray) -> np.ndarray:
  """(n, 8) lower-case hex digits of uint32 values."""
  shifts = np.arange(28, -1, -4, dtype=np.uint32)
  return _HEX[(values.astype(np.uint32)[:, None] >> shifts) & np.uint32(15)]


def format_tsv(rows: Mapping[str, np.ndarray]) -> bytes:
  """Criteo TSV lines (label, I1..I13, C1..C26) of raw rows, vectorised."""
  n = rows["label"].shape[0]
  columns = [(np.where(rows["label"], ord("1"), ord("0")).astype(np.uint8)[:, None],
              np.ones(n, dtype=np.int64))]
  for i in range(NUM_INT):
    columns.append(_int_chars(rows["ints"][:, i], rows["int_missing"][:, i]))
  for f in range(NUM_CAT):
    miss = rows["cat_missing"][:, f]
    columns.append((_hex_chars(rows["values"][:, f]), np.where(miss, 0, 8)))
  line_len = sum(length for _, length in columns) + len(columns)
  ends = np.cumsum(line_len)
  buf = np.empty(int(ends[-1]) if n else 0, dtype=np.uint8)
  pos = ends - line_len
  for c, (chars, length) in enumerate(columns):
    for j in range(chars.shape[1]):
      sel = length > j
      buf[pos[sel] + j] = chars[sel, j]
    pos = pos + length
    buf[pos] = _NL if c == len(columns) - 1 else _TAB
    pos = pos + 1
  return buf.tobytes()


def write_tsv(path: str, num_rows: int, seed: int = 0,
              config: Mapping[str, Any] | None = None, start_row: int = 0,
              **overrides) -> Dict[str, Any]:
  """Writes ``num_rows`` rows of the stream as Criteo TSV (gzip if ``.gz``).

  Columns: label, I1..I13 (decimal, empty = missing), C1..C26 (8 lower-case
  hex digits of the raw uint32 value, empty = missing). Parsing the file with
  the Criteo reader gives the same ``label``/``cat``/``dense`` as
  :class:`SyntheticStream` with the same seed and config.

  Returns ``{"path", "rows", "positives"}``.
  """
  stream = SyntheticStream(config, num_rows_total=num_rows, seed=seed,
                           start_row=start_row, **overrides)
  opener = gzip.open if str(path).endswith(".gz") else open
  rows_written = positives = 0
  with opener(path, "wb") as fh:
    for rows in stream.raw_blocks(want_values=True, want_cat=False):
      fh.write(format_tsv(rows))
      rows_written += rows["label"].shape[0]
      positives += int(rows["label"].sum())
  return {"path": str(path), "rows": rows_written, "positives": positives}
