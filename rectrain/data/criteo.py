"""Criteo click logs (Kaggle ``train.txt``, Terabyte ``day_N``) as a stream of batches.

Format (Criteo Display Advertising Challenge / Criteo 1TB Click Logs): one
impression per line, tab separated, in time order::

  label \\t I1 .. I13 \\t C1 .. C26

``label`` is 0/1, ``I*`` are (possibly negative) integer counts, ``C*`` are
32-bit hashed categories written as 8 hex digits; an empty field is a missing
value. Files may be plain or gzip (detected by magic bytes or ``.gz``).

Parsing is vectorised: the file is cut into chunks of whole lines (~2 MB,
no per-line Python work), each parsed by ``pyarrow.csv.read_csv`` with every
column a string (single-threaded per chunk, so that pyarrow reports the row
number of each line with a wrong field count; chunks are parsed in parallel
by ``workers`` threads and used in file order). Categoricals are decoded from
the contiguous string buffer (8 bytes per value -> 4 ASCII pairs -> a
65536-entry pair-to-byte table that also flags non-hex -> uint32) and hashed
per field with :func:`rectrain.data.hashing.hash_fields_to_buckets`
(identical to :func:`~rectrain.data.hashing.hash_to_bucket` per field);
integers are cast by pyarrow (a slower check runs only on a column that fails
the cast). There is no per-row Python loop on the hot path. Line numbers
are counted per chunk (kept rows + invalid lines), so they are exact across
chunks and threads.

Integer transforms (``int_mode``):

* ``"log1p"``: ``dense = log1p(max(x, 0))``, missing -> 0 (13 dense inputs).
* ``"categorical"``: ``tok = floor(ln(x)^2)`` for ``x > 2`` else ``x``
  (:func:`rectrain.data.hashing.log_square_token`, the bucketisation of the
  Criteo competition winners, Juan et al. 2016), hashed like a categorical
  field; missing -> bucket 0.

Bad lines (reasons, as counted in :meth:`CriteoStream.report`):

* ``wrong_field_count``: not 40 tab-separated fields (an empty line included);
* ``bad_label``: label missing or not 0/1;
* ``bad_int``: an ``I`` value that is not a decimal int64;
* ``bad_cat``: a ``C`` value that is not exactly 8 hex digits.

With ``bad_lines="skip"`` they are skipped, counted per reason and the first
``max_reported`` logged with file and 1-based line number; with
``bad_lines="error"`` the first one raises ``ValueError`` naming file, line,
field and value.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from rectrain.data import hashing
from rectrain.errors import InputError
from rectrain.data.batch import Batch
from rectrain.data.hashing import CAT_NAMES, INT_NAMES, NUM_CAT_FIELDS, NUM_INT_FIELDS
from rectrain.data.pipeline import map_ordered, rebatch, shuffle_rows

logger = logging.getLogger(__name__)

COLUMN_NAMES = ("label",) + INT_NAMES + CAT_NAMES
NUM_COLUMNS = len(COLUMN_NAMES)
REASONS = ("wrong_field_count", "bad_label", "bad_int", "bad_cat")
_REASON_CODE = {r: i + 1 for i, r in enumerate(REASONS)}  # 0 = row is fine.

# Two ASCII bytes -> the byte they spell in hex (0..255); 0xFFFF if either is
# not a hex digit. Indexed by the pair read as a native uint16.
def _make_pair_lut() -> np.ndarray:
  nibble = np.full(256, -1, dtype=np.int32)
  for i, c in enumerate(b"0123456789abcdef"):
    nibble[c] = i
  for i, c in enumerate(b"ABCDEF"):
    nibble[c] = 10 + i
  pair = np.frombuffer(np.arange(65536, dtype=np.uint16).tobytes(), np.uint8).reshape(65536, 2)
  hi, lo = nibble[pair[:, 0]], nibble[pair[:, 1]]
  return np.where((hi >= 0) & (lo >= 0), hi * 16 + lo, 0xFFFF).astype(np.uint16)


_HEX_PAIR_LUT = _make_pair_lut()
_HIGH_BYTES = np.uint64(0xFF00FF00FF00FF00)


@dataclasses.dataclass
class RawBlock:
  """Decoded raw values of ``N`` lines (before hashing / transforms).

  Field-major (I = 13 integer fields, C = 26 categorical fields), so that
  per-field work runs on contiguous rows.

  Attributes:
    label_N: int64 label (valid where ``reason_N == 0``).
    int_IxN: int64 integer features, 0 where missing or bad.
    int_missing_IxN: bool, integer field empty.
    cat_CxN: uint64 categorical values (the 32-bit hex value), 0 where
      missing or bad.
    cat_missing_CxN: bool, categorical field empty.
    reason_N: int8, 0 for a good line, else 1 + index into ``REASONS``.
    bad_column_N: int16, column (index into ``COLUMN_NAMES``) of the first
      bad field, -1 if none or a wrong field count.
  """

  label_N: np.ndarray
  int_IxN: np.ndarray
  int_missing_IxN: np.ndarray
  cat_CxN: np.ndarray
  cat_missing_CxN: np.ndarray
  reason_N: np.ndarray
  bad_column_N: np.ndarray

  @property
  def num_lines(self) -> int:
    return self.label_N.shape[0]

  def select(self, idx) -> "RawBlock":
    """The lines ``idx`` (a slice, index or boolean array over N)."""
    return RawBlock(self.label_N[idx], self.int_IxN[:, idx], self.int_missing_IxN[:, idx],
                    self.cat_CxN[:, idx], self.cat_missing_CxN[:, idx], self.reason_N[idx],
                    self.bad_column_N[idx])


def _unpack_validity(arr: pa.Array) -> np.ndarray | None:
  """(N,) bool, True where ``arr`` is null; None if it has no nulls."""
  if arr.null_count == 0:
    return None
  bits = np.frombuffer(arr.buffers()[0], dtype=np.uint8)
  valid = np.unpackbits(bits, bitorder="little")[arr.offset:arr.offset + len(arr)]
  return valid == 0


def _string_parts(arr: pa.Array):
  """(offsets (N+1,), data bytes) of a string/binary array, without copies."""
  if pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type):
    off_dtype = np.int64
  else:
    off_dtype = np.int32
  n = len(arr)
  offsets = np.frombuffer(arr.buffers()[1], dtype=off_dtype)[arr.offset:arr.offset + n + 1]
  data_buf = arr.buffers()[2]
  data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
  return offsets, data


def _is_text(arr: pa.Array) -> bool:
  t = arr.type
  return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
          or pa.types.is_large_binary(t))


def parse_hex_column(arr: pa.Array, name: str):
  """Decodes 8-hex-digit strings.

  Returns:
    (values_N 32-bit unsigned (0 where missing or bad), missing_N bool,
    bad_N bool).
  """
  n = len(arr)
  if pa.types.is_dictionary(arr.type):
    arr = arr.cast(arr.type.value_type)
  if not _is_text(arr):
    if pa.types.is_null(arr.type):
      return np.zeros(n, np.uint32), np.ones(n, bool), np.zeros(n, bool)
    raise ValueError(f"column {name}: expected hex strings, got type {arr.type}")
  null = _unpack_validity(arr)
  offsets, data = _string_parts(arr)
  lengths = np.diff(offsets)
  if null is not None:
    lengths = np.where(null, 0, lengths)
  present = lengths == 8
  bad = (lengths != 0) & ~present
  num_present = int(np.count_nonzero(present))
  if not bad.any() and int(offsets[-1] - offsets[0]) == 8 * num_present:
    # Fast path: the present values are back to back in the data buffer.
    chars = data[offsets[0]:offsets[-1]].reshape(num_present, 8)
  else:
    starts = offsets[:-1][present].astype(np.int64)
    chars = data[starts[:, None] + np.arange(8)]
  # chars (k, 8) -> 4 hex pairs -> 4 bytes; a pair that is not hex sets a high byte.
  pairs_Kx4 = _HEX_PAIR_LUT[np.ascontiguousarray(chars).view(np.uint16)]
  bad_hex = (pairs_Kx4.view(np.uint64).reshape(num_present) & _HIGH_BYTES) != 0
  vals = pairs_Kx4.astype(np.uint8).view(">u4").reshape(num_present)
  if num_present == n:
    values = vals
    bad = bad_hex
  else:
    values = np.zeros(n, np.uint32)
    values[present] = vals
    bad[present] = bad_hex
  if bad_hex.any():
    values = np.where(bad, np.uint32(0), values)
  return values, ~present, bad


_DECIMAL = r"^-?[0-9]+$"


def parse_int_column(arr: pa.Array, name: str):
  """Parses decimal int64 strings (or a numeric column).

  Fast path: one ``pyarrow.compute.cast`` of the whole column; only if it
  fails (or the text holds an ``x``, which the cast would read as hex) a
  vectorised regex check finds the bad rows.

  Returns:
    (values_N int64 (0 where missing or bad), missing_N bool, bad_N bool).
  """
  n = len(arr)
  if pa.types.is_dictionary(arr.type):
    arr = arr.cast(arr.type.value_type)
  bad = np.zeros(n, bool)
  if _is_text(arr):
    _, data = _string_parts(arr)
    offsets = _string_parts(arr)[0]
    text = data[offsets[0]:offsets[-1]]
    try:
      if np.any((text | 0x20) == ord("x")):
        raise pa.ArrowInvalid("hex-looking integer")
      ints = pc.cast(arr, pa.int64())
    except (pa.ArrowInvalid, ValueError):
      ok = pc.fill_null(pc.match_substring_regex(arr, _DECIMAL), True)
      ok = np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool)
      ok &= np.asarray(pc.fill_null(pc.binary_length(arr), 0).to_numpy()) <= 19
      ok_arr = pa.array(ok)
      masked = pc.if_else(ok_arr, arr, pa.scalar(None, arr.type))
      try:
        ints = pc.cast(masked, pa.int64())
      except pa.ArrowInvalid:  # 19-digit values beyond int64: check one by one.
        vals = masked.to_pylist()
        fixed = []
        for i, v in enumerate(vals):
          if v is not None and not -2**63 <= int(v) < 2**63:
            ok[i] = False
            v = None
          fixed.append(None if v is None else int(v))
        ints = pa.array(fixed, pa.int64())
      bad = ~ok
  elif pa.types.is_integer(arr.type):
    ints = arr.cast(pa.int64())
  elif pa.types.is_floating(arr.type):
    f = arr.to_numpy(zero_copy_only=False).astype(np.float64)
    finite = np.isfinite(f)
    bad = finite & ((np.floor(f) != f) | (np.abs(f) >= 2.0**63))
    good = finite & ~bad
    vals = np.where(good, f, 0).astype(np.int64)
    return vals, ~finite, bad
  elif pa.types.is_null(arr.type):
    return np.zeros(n, np.int64), np.ones(n, bool), bad
  else:
    raise ValueError(f"column {name}: expected integers or decimal strings, got type {arr.type}")
  null = _unpack_validity(ints)
  values = np.frombuffer(ints.buffers()[1], dtype=np.int64)[ints.offset:ints.offset + n]
  if null is None:
    return values, np.zeros(n, bool), bad
  values = np.where(null, 0, values)
  return values, null & ~bad, bad


def parse_columns(columns: Sequence[pa.Array]) -> RawBlock:
  """Decodes the 40 Criteo columns (``COLUMN_NAMES`` order) of one block.

  Columns are string/binary (values as in the log) or, for ``label`` and
  ``I*``, integer/float (as a Parquet file may store them). A line whose 40
  columns are all null is an empty line (pyarrow reads one as a row of
  nulls) and counts as ``wrong_field_count``. A line with several problems
  counts once, under its first bad column.
  """
  if len(columns) != NUM_COLUMNS:
    raise ValueError(f"expected {NUM_COLUMNS} columns {COLUMN_NAMES}, got {len(columns)}")
  columns = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns]
  n = len(columns[0])
  reason = np.zeros(n, np.int8)
  bad_col = np.full(n, -1, np.int16)

  def flag(bad, code, col):
    new = bad & (reason == 0)
    reason[new] = code
    bad_col[new] = col

  label, label_missing, label_bad = parse_int_column(columns[0], "label")
  ints = np.empty((NUM_INT_FIELDS, n), np.int64)
  int_missing = np.empty((NUM_INT_FIELDS, n), bool)
  int_bad = []
  for j in range(NUM_INT_FIELDS):
    ints[j], int_missing[j], b = parse_int_column(columns[1 + j], INT_NAMES[j])
    int_bad.append(b)
  cats = np.empty((NUM_CAT_FIELDS, n), np.uint64)
  cat_missing = np.empty((NUM_CAT_FIELDS, n), bool)
  cat_bad = []
  for j in range(NUM_CAT_FIELDS):
    cats[j], cat_missing[j], b = parse_hex_column(columns[1 + NUM_INT_FIELDS + j], CAT_NAMES[j])
    cat_bad.append(b)
  if label_missing.any():
    empty = label_missing & int_missing.all(axis=0) & cat_missing.all(axis=0)
    flag(empty, _REASON_CODE["wrong_field_count"], -1)
  label_bad = label_bad | label_missing | ((label != 0) & (label != 1))
  if label_bad.any():
    flag(label_bad, _REASON_CODE["bad_label"], 0)
  for j, b in enumerate(int_bad):
    if b.any():
      flag(b, _REASON_CODE["bad_int"], 1 + j)
  for j, b in enumerate(cat_bad):
    if b.any():
      flag(b, _REASON_CODE["bad_cat"], 1 + NUM_INT_FIELDS + j)
  return RawBlock(label, ints, int_missing, cats, cat_missing, reason, bad_col)


def encode_block(raw: RawBlock, layout: hashing.FieldLayout, int_mode: str,
                 raw_ids: bool = False) -> dict:
  """Hashes and transforms every line of ``raw`` into batch columns.

  ``cat[n, f] = offsets[f] + bucket`` with ``bucket = 0`` for a missing value
  and :func:`rectrain.data.hashing.hash_to_bucket` (field index ``f`` in the
  layout: C1..C26 -> 0..25, I1..I13 -> 26..38) otherwise.

  Returns:
    ``label`` (N,) float32, ``cat`` (N, F) int32 global row ids, ``dense``
    (N, I) float32 (I = 13 in log1p mode, 0 in categorical mode); with
    ``raw_ids`` also the unhashed values ``raw_ids`` (N, F) uint64 (0 where
    missing) and ``raw_missing`` (N, F) bool, for :mod:`rectrain.data.idmap`.
  """
  n = raw.num_lines
  offsets = layout.offsets
  if int_mode == "log1p":
    values, missing = raw.cat_CxN, raw.cat_missing_CxN
    dense_NxI = np.ascontiguousarray(hashing.log1p_transform(raw.int_IxN, raw.int_missing_IxN).T)
  elif int_mode == "categorical":
    tokens = hashing.log_square_token(raw.int_IxN).view(np.uint64)
    values = np.concatenate([raw.cat_CxN, tokens])
    missing = np.concatenate([raw.cat_missing_CxN, raw.int_missing_IxN])
    dense_NxI = np.zeros((n, 0), np.float32)
  else:
    raise ValueError(f"int_mode must be 'log1p' or 'categorical', got {int_mode!r}")
  num_fields = values.shape[0]
  if num_fields != layout.num_fields:
    raise ValueError(f"layout has {layout.num_fields} fields, int_mode={int_mode!r} gives {num_fields}")
  bucket_FxN = hashing.hash_fields_to_buckets(values, range(num_fields), layout.buckets)
  bucket_FxN[missing] = 0
  bucket_FxN += offsets[:-1, None]
  cat_NxF = bucket_FxN.T.astype(np.int32, order="C")
  out = {"label": raw.label_N.astype(np.float32), "cat": cat_NxF, "dense": dense_NxI}
  if raw_ids:
    out["raw_ids"] = np.where(missing, np.uint64(0), values).T.astype(np.uint64, order="C")
    out["raw_missing"] = np.ascontiguousarray(missing.T)
  return out


@dataclasses.dataclass(frozen=True)
class BadLine:
  file: str
  line: int
  reason: str
  detail: str

  def __str__(self):
    return f"{self.file}:{self.line}: {self.reason}: {self.detail}"


def describe_bad(raw: RawBlock, columns: Sequence[pa.Array], i: int) -> tuple[str, str]:
  """(reason, human-readable detail) for bad row ``i`` of a block."""
  reason = REASONS[int(raw.reason_N[i]) - 1]
  col = int(raw.bad_column_N[i])
  if reason == "wrong_field_count":
    return reason, "empty line (expected 40 tab-separated fields)"
  value = columns[col][i].as_py()
  name = COLUMN_NAMES[col]
  if isinstance(value, bytes):
    value = value.decode("utf-8", "replace")
  if value is None:
    return reason, f"field {name} is empty"
  if reason == "bad_label":
    return reason, f"label {value!r} is not 0 or 1"
  if reason == "bad_int":
    return reason, f"field {name}: {value!r} is not a decimal int64"
  return reason, f"field {name}: {value!r} is not 8 hex digits"


@dataclasses.dataclass
class RawItem:
  """One unit of work from a source: a chunk of whole lines, or parsed columns.

  Units of one source come in order; line numbers are counted by the
  consumer from the number of lines in each unit.

  Attributes:
    source: file (or dataset) name used in messages.
    skip_lines: lines before the first unit of this source (a header); read
      on the first unit of a source only.
    chunk: raw bytes of whole lines (Criteo text), parsed by a worker; or
    columns: the 40 column arrays (``COLUMN_NAMES`` order), one row per line.
  """

  source: str
  skip_lines: int = 0
  chunk: bytes | memoryview | None = None
  columns: Sequence[pa.Array] | None = None


@dataclasses.dataclass
class Parsed:
  """A worker's result for one :class:`RawItem`.

  Attributes:
    columns: the 40 column arrays.
    line_of: maps row positions in ``columns`` to 1-based line numbers
      within the unit.
    invalid: (line within the unit, number of fields) of each line with a
      wrong field count (not in ``columns``).
    num_lines: lines in the unit (rows of ``columns`` + invalid lines).
    raw: the decoded :class:`RawBlock` of every row of ``columns``.
    block: the encoded row-major columns of every row (see ``_encode``).
  """

  columns: Sequence[pa.Array]
  line_of: Callable[[np.ndarray], np.ndarray]
  invalid: list
  num_lines: int
  raw: RawBlock
  block: dict


_PARSE_OPTIONS = dict(delimiter="\t", quote_char=False, double_quote=False, escape_char=False,
                      newlines_in_values=False, ignore_empty_lines=False)
_CONVERT_OPTIONS = pacsv.ConvertOptions(
    column_types={c: pa.string() for c in COLUMN_NAMES}, check_utf8=False,
    strings_can_be_null=True, null_values=[""], quoted_strings_can_be_null=False)


def read_chunk(chunk):
  """Parses whole Criteo lines with ``pyarrow.csv`` (every column a string).

  pyarrow runs single-threaded on the chunk so that it reports the physical
  row number of each line with a wrong field count; a kept row ``g`` (0-based)
  is then on line ``1 + g + #(invalid rows before it)`` of the chunk.

  Returns:
    (columns, line_of (chunk-relative, 1-based), invalid [(line, fields)]).
  """
  invalid_rows: list[tuple[int, int]] = []

  def on_invalid(row) -> str:
    invalid_rows.append((int(row.number), int(row.actual_columns)))
    return "skip"

  table = pacsv.read_csv(
      pa.py_buffer(chunk),
      read_options=pacsv.ReadOptions(column_names=list(COLUMN_NAMES), use_threads=False,
                                     block_size=len(chunk) + 1),
      parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid, **_PARSE_OPTIONS),
      convert_options=_CONVERT_OPTIONS)
  columns = [col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
             for col in table.columns]
  rel = np.array([r for r, _ in invalid_rows], dtype=np.int64)
  # Invalid row j (1-based rel[j]) has rel[j] - 1 - j kept rows before it.
  inv_adj = rel - 1 - np.arange(rel.size)

  def line_of(rows):
    g = np.asarray(rows, dtype=np.int64)
    return 1 + g + np.searchsorted(inv_adj, g, side="right")

  return columns, line_of, invalid_rows


# A source whose first unit has at least this many lines and not one valid line is
# taken to be of another format (an error, not thousands of skipped lines).
_FOREIGN_LINES = 20


class BlockStream:
  """Common machinery of the Criteo-schema streams: bad lines, report, batching.

  A subclass implements ``_raw_items()`` yielding :class:`RawItem`. Units
  are parsed, decoded and hashed by ``workers`` threads (pyarrow and NumPy
  release the GIL) while the source is read ahead in another thread; results
  are used in source order, so the stream is identical for any ``workers``.
  """

  def __init__(self, batch_size: int, cat_buckets: int | Sequence[int] = 1 << 20,
               int_mode: str = "log1p", int_buckets: int = 512, bad_lines: str = "skip",
               max_rows: int | None = None, shuffle_buffer: int = 0, seed: int = 0,
               max_reported: int = 10, workers: int = 2, raw_ids: bool = False):
    if int(batch_size) < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if bad_lines not in ("skip", "error"):
      raise ValueError(f"bad_lines must be 'skip' or 'error', got {bad_lines!r}")
    if max_rows is not None and int(max_rows) < 0:
      raise ValueError(f"max_rows must be None or >= 0, got {max_rows}")
    if int(shuffle_buffer) < 0:
      raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
    if int(workers) < 0:
      raise ValueError(f"workers must be >= 0, got {workers}")
    self.batch_size = int(batch_size)
    self.int_mode = int_mode
    self.layout = hashing.make_layout(cat_buckets, int_mode, int_buckets)
    if self.layout.num_rows >= 2**31:
      raise ValueError(f"cat_buckets/int_buckets: {self.layout.num_rows} table rows do not fit int32 ids")
    self.bad_lines = bad_lines
    self.max_rows = None if max_rows is None else int(max_rows)
    self.shuffle_buffer = int(shuffle_buffer)
    self.seed = int(seed)
    self.max_reported = int(max_reported)
    self.workers = int(workers)
    self.raw_ids = bool(raw_ids)
    self._reset_report()

  @property
  def num_rows(self) -> int:
    """Rows of the fused embedding table (``layout.num_rows``)."""
    return self.layout.num_rows

  @property
  def num_dense(self) -> int:
    """Dense inputs per row: 13 in log1p mode, 0 in categorical mode."""
    return NUM_INT_FIELDS if self.int_mode == "log1p" else 0

  def _reset_report(self):
    self._rows_read = 0
    self._rows = 0
    self._skipped = {r: 0 for r in REASONS}
    self._first_errors: list[str] = []
    self._files: list[dict] = []  # per source read: see files_before()
    if not hasattr(self, "_resume"):
      self._resume = None
      self._files_lock = threading.Lock()

  # -- the stream position per file (resume without re-reading finished files) --

  def files_before(self, row: int) -> list[dict]:
    """The sources read completely before stream row ``row``, in order, each
    ``{"source", "size", "rows", "rows_read", "skipped": {reason: n}}`` (rows:
    kept rows, rows_read: lines); with ``row``, a checkpoint's position: a
    resumed stream (:meth:`resume_at`) skips these sources unread."""
    out, end = [], 0
    with self._files_lock:
      files = [dict(f, skipped=dict(f["skipped"])) for f in self._files]
    for f in files:
      end += f["rows"]
      if not f.pop("done") or end > row:
        break
      out.append(f)
    return out

  def resume_at(self, row: int, files: list[dict]) -> None:
    """Makes the next iteration start at stream row ``row`` (a batch boundary of
    an earlier iteration with the same settings): the sources of ``files``
    (:meth:`files_before`, the first sources in order) are not read, their
    counts enter the report, and the rows before ``row`` of the next source are
    read but not yielded. Raises ValueError if ``files`` are not this stream's
    first sources or the time order is shuffled."""
    names = self._source_names()
    if self.shuffle_buffer:
      raise ValueError("resume_at: a shuffled stream has no per-file position")
    if [f["source"] for f in files] != names[:len(files)] or sum(f["rows"] for f in files) > row:
      raise ValueError(f"resume_at: {[f['source'] for f in files]} are not the first sources "
                       f"of {names}")
    self._resume = (int(row), [dict(f) for f in files])

  def _source_names(self) -> list[str]:
    raise NotImplementedError

  def _size(self, source: str) -> int | None:
    try:
      return os.path.getsize(source)
    except (OSError, TypeError):
      return None

  def report(self) -> dict:
    """{"rows_read", "rows", "skipped": {reason: n}, "first_errors": [...]}.

    ``rows_read`` counts every line seen (good or bad), ``rows`` the kept
    rows, ``first_errors`` the first ``max_reported`` bad lines as
    ``"file:line: reason: detail"``. Valid during and after iteration (reset
    when an iteration starts).
    """
    return {"rows_read": self._rows_read, "rows": self._rows,
            "skipped": {r: c for r, c in self._skipped.items() if c},
            "first_errors": list(self._first_errors)}

  def _raw_items(self, skip: int = 0) -> Iterator[RawItem]:
    """The units of every source but the first ``skip``."""
    raise NotImplementedError

  def _bad(self, errors: list[BadLine]):
    errors.sort(key=lambda e: e.line)
    if self.bad_lines == "error":
      raise InputError(f"bad line: {errors[0]}")
    for e in errors:
      self._skipped[e.reason] += 1
      if len(self._first_errors) < self.max_reported:
        self._first_errors.append(str(e))
        logger.warning("skipping bad line %s", e)

  def _encode(self, raw: RawBlock) -> dict:
    """Row-major columns of every row of ``raw`` (runs in a parse thread)."""
    return encode_block(raw, self.layout, self.int_mode, self.raw_ids)

  def _work(self, item: RawItem) -> Parsed:
    """Per-unit work of the parse threads: read, decode, hash."""
    if item.chunk is not None:
      columns, line_of, invalid = read_chunk(item.chunk)
    else:
      columns, invalid = item.columns, []

      def line_of(rows):
        return 1 + np.asarray(rows, dtype=np.int64)
    raw = parse_columns(columns)
    return Parsed(columns, line_of, invalid, raw.num_lines + len(invalid), raw,
                  self._encode(raw))

  def _parsed(self) -> Iterator[tuple[RawItem, Parsed]]:
    """Work results in source order, computed ahead by ``workers`` threads."""
    def work(item):
      return item, self._work(item)

    skip = len(self._resume[1]) if self._resume else 0
    yield from map_ordered(work, self._raw_items(skip), self.workers)

  def _row_blocks(self) -> Iterator[dict]:
    """Yields encoded blocks of good rows with their stream ``index``."""
    self._reset_report()
    if self._resume:  # the counts of the sources skipped unread
      for f in self._resume[1]:
        self._rows += f["rows"]
        self._rows_read += f["rows_read"]
        for reason, c in f["skipped"].items():
          self._skipped[reason] += c
        self._files.append(dict(f, skipped=dict(f["skipped"]), done=True))
    remaining = None if self.max_rows is None else self.max_rows - self._rows
    if remaining is not None and remaining <= 0:
      return
    source, lines_before = None, 0
    current = None
    for item, parsed in self._parsed():
      first_unit = item.source != source
      if first_unit:
        source, lines_before = item.source, item.skip_lines
        with self._files_lock:
          if current is not None:
            current["done"] = True
          current = {"source": source, "size": self._size(source), "rows": 0, "rows_read": 0,
                     "skipped": {}, "done": False}
          self._files.append(current)
      raw, block, columns = parsed.raw, parsed.block, parsed.columns
      n = raw.num_lines
      base = lines_before
      lines_before += parsed.num_lines
      errors = [BadLine(source, base + line, "wrong_field_count",
                        f"expected {NUM_COLUMNS} tab-separated fields, got {k}")
                for line, k in parsed.invalid]
      if (first_unit and parsed.num_lines >= _FOREIGN_LINES
          and np.count_nonzero(raw.reason_N == 0) == 0):
        first = errors[0] if errors and errors[0].line == base + 1 else None
        if first is None and n:
          reason, detail = describe_bad(raw, columns, 0)
          first = BadLine(source, base + int(parsed.line_of(np.array([0]))[0]), reason, detail)
        raise InputError(f"{source}: not in the Criteo layout (label, I1..I13, C1..C26 "
                         f"tab-separated): none of the first {parsed.num_lines:,} lines is "
                         f"valid; {first}")
      if remaining is not None and n - np.count_nonzero(raw.reason_N) > remaining:
        # Keep lines up to the remaining-th good one; later lines stay unread.
        n = int(np.flatnonzero(raw.reason_N == 0)[remaining - 1]) + 1
        raw = raw.select(slice(0, n))
        block = {k: v[:n] for k, v in block.items()}
        last_line = base + int(parsed.line_of(np.array([n - 1]))[0])
        errors = [e for e in errors if e.line <= last_line]
      self._rows_read += n + len(errors)
      bad_rows = np.flatnonzero(raw.reason_N)
      if bad_rows.size:
        errors = list(errors)
        for i, line in zip(bad_rows, parsed.line_of(bad_rows)):
          reason, detail = describe_bad(raw, columns, int(i))
          errors.append(BadLine(source, base + int(line), reason, detail))
        good = raw.reason_N == 0
        block = {k: v[good] for k, v in block.items()}
      if errors:
        self._bad(errors)
      k = block["label"].shape[0]
      block["index"] = np.arange(self._rows, self._rows + k, dtype=np.int64)
      self._rows += k
      with self._files_lock:
        current["rows"] += k
        current["rows_read"] += n + len(errors)
        for e in errors:
          current["skipped"][e.reason] = current["skipped"].get(e.reason, 0) + 1
      yield block
      if remaining is not None:
        remaining -= k
        if remaining <= 0:
          return
    if current is not None:
      with self._files_lock:
        current["done"] = True

  def _from_start_row(self) -> Iterator[dict]:
    """The row blocks, without the rows before a :meth:`resume_at` position."""
    start = self._resume[0] if self._resume else 0
    for block in self._row_blocks():
      if start and block["index"][0] < start:
        keep = block["index"] >= start
        if not keep.any():
          continue
        block = {k: v[keep] for k, v in block.items()}
      yield block

  def __iter__(self) -> Iterator[Batch]:
    blocks = shuffle_rows(self._from_start_row(), self.shuffle_buffer, self.seed)
    for batch in rebatch(blocks, self.batch_size):
      n = batch["label"].shape[0]
      batch["weight"] = (batch["index"] >= 0).astype(np.float32)
      batch["time"] = np.full((n,), np.nan, np.float64)
      yield batch


# Magic bytes of formats that are not Criteo text (plain or gzip).
_FOREIGN_MAGIC = ((b"PAR1", "parquet"), (b"PK\x03\x04", "zip"), (b"BZh", "bzip2"),
                  (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"),
                  (b"ARROW1", "Arrow IPC"), (b"\x93NUMPY", "numpy .npy"))


def _open(path: str):
  """(pyarrow input stream, gzip?, file size); gzip by magic bytes or ``.gz`` suffix.

  Raises :class:`InputError` naming the file if it is missing, unreadable,
  or of another (binary) format.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"Criteo file not found: {path}")
  try:
    with open(path, "rb") as f:
      magic = f.read(8)
      size = os.fstat(f.fileno()).st_size
  except OSError as e:
    raise InputError(f"{path}: cannot read: {e.strerror or e}") from e
  for prefix, kind in _FOREIGN_MAGIC:
    if magic.startswith(prefix):
      raise InputError(f"{path}: a {kind} file, not Criteo text (tab-separated, plain or gzip)")
  gz = magic[:2] == b"\x1f\x8b" or str(path).endswith(".gz")
  try:
    stream = pa.input_stream(path, compression="gzip" if gz else None, buffer_size=1 << 20)
  except (OSError, pa.ArrowException) as e:
    raise InputError(f"{path}: cannot open: {e}") from e
  return stream, gz, size


def split_lines(path: str, chunk_bytes: int = 1 << 21) -> Iterator[RawItem]:
  """Cuts a (plain or gzip) file into chunks of whole lines.

  Each :class:`RawItem` holds about ``chunk_bytes`` bytes ending at a newline
  (the last may lack one); no per-line Python work. A read fault (truncated
  or corrupt compressed data, an I/O error, a plain file that shrinks while
  read, NUL bytes of a binary file) raises :class:`InputError` naming the
  file, the last whole line before the fault and the byte offset; every
  chunk before it has been yielded.
  """
  if chunk_bytes < 1:
    raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
  tail = b""
  offset = 0  # bytes (decompressed for gzip) read so far
  lines = 0  # whole lines yielded so far
  stream, gz, size = _open(path)
  where = "decompressed byte" if gz else "byte"

  def fault(what: str, err=None) -> InputError:
    detail = f": {err}" if err is not None else ""
    return InputError(f"{path}: {what} after line {lines:,} ({where} {offset:,}){detail}")

  with stream:
    while True:
      try:
        data = stream.read(chunk_bytes)
      except (OSError, pa.ArrowException) as e:
        kind = "corrupt or truncated gzip data" if gz else "read error"
        raise fault(kind, e) from e
      if not data:
        break
      if offset == 0 and b"\x00" in data[:4096]:
        raise InputError(f"{path}: binary data (NUL bytes) at the start, not Criteo text")
      offset += len(data)
      buf = tail + data if tail else data
      cut = buf.rfind(b"\n") + 1
      if cut == 0:
        tail = buf
        continue
      chunk = memoryview(buf)[:cut]
      tail = buf[cut:]
      yield RawItem(path, chunk=chunk)
      lines += buf.count(b"\n", 0, cut)
  if not gz and offset < size:
    raise fault(f"file shrank while read (read {offset:,} of {size:,} bytes)")
  if tail:
    yield RawItem(path, chunk=tail)


class CriteoStream(BlockStream):
  """Criteo Kaggle / Terabyte log files as a time-ordered stream of batches.

  Yields batches following :mod:`rectrain.data.batch` (``label``, ``weight``,
  ``cat`` global row ids per :func:`rectrain.data.hashing.make_layout`,
  ``dense``, ``index``, ``time`` = NaN). The last partial batch is padded with
  zero-weight rows. Iterating again re-reads the files (and resets
  :meth:`report`).

  Args:
    paths: one path or several, read in order (e.g. ``day_0 .. day_23``).
    batch_size: rows per batch ``B``.
    cat_buckets: buckets per categorical field (an int or 26 ints), bucket 0
      of each field being its missing value.
    int_mode: ``"log1p"`` (13 dense inputs) or ``"categorical"``.
    int_buckets: buckets per integer field in categorical mode.
    bad_lines: ``"skip"`` (count, report the first ``max_reported``) or
      ``"error"`` (raise ``ValueError`` naming file and line).
    max_rows: stop after this many kept rows (None = all).
    shuffle_buffer: rows of the bounded shuffle buffer
      (:func:`rectrain.data.pipeline.shuffle_rows`); 0 keeps time order.
    seed: seed of the shuffle buffer.
    max_reported: bad lines kept in ``report()["first_errors"]`` and logged.
    workers: parse threads (0: read and parse in the consuming thread).
    block_size: bytes of whole lines per parse unit (one pyarrow read each).
    raw_ids: also yield the unhashed values ``raw_ids`` (B, F) uint64 and
      ``raw_missing`` (B, F) bool (see :func:`encode_block`), the input of
      :class:`rectrain.data.idmap.IdMap`.
  """

  def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], batch_size: int,
               cat_buckets: int | Sequence[int] = 1 << 20, int_mode: str = "log1p",
               int_buckets: int = 512, bad_lines: str = "skip", max_rows: int | None = None,
               shuffle_buffer: int = 0, seed: int = 0, max_reported: int = 10,
               workers: int = 2, block_size: int = 1 << 21, raw_ids: bool = False):
    super().__init__(batch_size, cat_buckets, int_mode, int_buckets, bad_lines, max_rows,
                     shuffle_buffer, seed, max_reported, workers, raw_ids=raw_ids)
    if isinstance(paths, (str, os.PathLike)):
      paths = [paths]
    self.paths = [os.fspath(p) for p in paths]
    if not self.paths:
      raise ValueError("CriteoStream: no paths given")
    for p in self.paths:
      if not os.path.exists(p):
        raise FileNotFoundError(f"Criteo file not found: {p}")
    self.block_size = int(block_size)

  def _source_names(self) -> list[str]:
    return list(self.paths)

  def _raw_items(self, skip: int = 0):
    for path in self.paths[skip:]:
      yield from split_lines(path, self.block_size)
