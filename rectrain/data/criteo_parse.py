"""Parsing Criteo lines into columns, validity and hashed rows (vectorised; split out of
rectrain/data/criteo.py, which re-exports every name).

:func:`read_chunk` parses whole lines with ``pyarrow.csv`` (every column a
string), :func:`parse_columns` decodes them (hex categoricals through a
pair-to-byte table, integers cast by pyarrow) into a :class:`RawBlock` with
per-row validity, :func:`encode_block` hashes a block into a batch's rows and
:func:`describe_bad` names the first fault of a bad line.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from rectrain.data import hashing
from rectrain.data.hashing import CAT_NAMES, INT_NAMES, NUM_CAT_FIELDS, NUM_INT_FIELDS

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


def read_chunk(chunk, column_names: Sequence[str] = COLUMN_NAMES, csv: bool = False):
  """Parses whole lines with ``pyarrow.csv`` (every column a string).

  Criteo lines by default (tab-separated, no quoting); ``column_names`` and
  ``csv`` (comma-separated, standard quoting) for another schema
  (rectrain/data/table.py). pyarrow runs single-threaded on the chunk so that
  it reports the physical row number of each line with a wrong field count; a
  kept row ``g`` (0-based) is then on line ``1 + g + #(invalid rows before
  it)`` of the chunk.

  Returns:
    (columns, line_of (chunk-relative, 1-based), invalid [(line, fields)]).
  """
  invalid_rows: list[tuple[int, int]] = []

  def on_invalid(row) -> str:
    invalid_rows.append((int(row.number), int(row.actual_columns)))
    return "skip"

  names = list(column_names)
  if len(chunk) == 0:
    columns = [pa.array([], pa.string()) for _ in names]
  else:
    options = (dict(_PARSE_OPTIONS, delimiter=",", quote_char='"', double_quote=True) if csv
               else _PARSE_OPTIONS)
    convert = _CONVERT_OPTIONS if names == list(COLUMN_NAMES) else pacsv.ConvertOptions(
        column_types={c: pa.string() for c in names}, check_utf8=False,
        strings_can_be_null=True, null_values=[""], quoted_strings_can_be_null=False)
    table = pacsv.read_csv(
        pa.py_buffer(chunk),
        read_options=pacsv.ReadOptions(column_names=names, use_threads=False,
                                       block_size=len(chunk) + 1),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid, **options),
        convert_options=convert)
    columns = [col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
               for col in table.columns]
  rel = np.array([r for r, _ in invalid_rows], dtype=np.int64)
  # Invalid row j (1-based rel[j]) has rel[j] - 1 - j kept rows before it.
  inv_adj = rel - 1 - np.arange(rel.size)

  def line_of(rows):
    g = np.asarray(rows, dtype=np.int64)
    return 1 + g + np.searchsorted(inv_adj, g, side="right")

  return columns, line_of, invalid_rows
