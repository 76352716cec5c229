"""Any CTR table as a stream of batches: TSV / CSV (plain or gzip) and parquet files read
by a :class:`rectrain.data.schema.Schema`.

The machinery is the Criteo stream's (:class:`rectrain.data.criteo.BlockStream`:
parse threads, bad-line policy and report, resume per file, batching); this
module supplies what depends on the schema. Everything is vectorised:

* Text files are cut into chunks of whole lines
  (:func:`rectrain.data.criteo.split_lines`), each parsed by
  ``pyarrow.csv.read_csv`` with every column a string; a header line (the
  schema's ``header``, or ``auto``: the first line names the schema's
  columns) is cut off the first chunk. Parquet files are read by record
  batches of their row groups (typed columns are used as they are).
* ``cat`` columns: each string is hashed from its bytes as 8-byte words
  (:func:`hash_strings`: one vectorised pass per word, no dictionary; a
  dictionary-encoded parquet column is hashed once per distinct value); an
  integer column is hashed as its decimal text, so a CSV and a parquet copy
  of one table give the same rows. Null and empty strings are missing. The
  per-field buckets are :func:`rectrain.data.hashing.hash_fields_to_buckets`.
* ``num``, ``label`` and ``time`` columns are cast by pyarrow; only a column
  it refuses is searched with a regular expression for its bad values.

Bad rows (reasons, as counted in ``report()``): ``wrong_field_count``,
``bad_label`` (missing, or not 0/1 without a threshold), ``bad_num`` (not a
number), ``bad_time`` (missing or not a valid time of its format). As for
Criteo: skipped and counted per reason with file:line, or the first one an
error naming file, line, column and value (``bad_lines``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rectrain.data import hashing
from rectrain.data.criteo import BlockStream, _open, path_list, split_lines
from rectrain.data.criteo_parse import (Parsed, RawItem, _string_parts, _unpack_validity,
                                        read_chunk)
from rectrain.data.schema import Schema, get_schema, multi_options
from rectrain.errors import InputError

REASONS = ("wrong_field_count", "bad_label", "bad_num", "bad_time")
_CODE = {r: i + 1 for i, r in enumerate(REASONS)}
_NUMBER = r"^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"


def hash_strings(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
  """(U,) uint64 hashes of the strings ``data[offsets[u]:offsets[u + 1]]``.

  The bytes are read as little-endian 8-byte words (the last one zero-padded)
  and folded as ``h = splitmix64(h ^ word)`` from ``h = 0``, one vectorised
  pass per word of the longest string (one pass for Criteo's 8 hex digits);
  the result is ``splitmix64(h ^ (length << 56) ^ length)``, so strings that
  differ only in trailing NUL bytes differ.
  """
  starts = offsets[:-1].astype(np.int64)
  lengths = np.diff(offsets).astype(np.int64)
  h = np.zeros(starts.shape, np.uint64)
  if data.size and starts.size:
    lane = np.arange(8, dtype=np.int64)
    for w in range(-(-int(lengths.max(initial=0)) // 8)):
      pos = starts[:, None] + 8 * w + lane                    # (U, 8) byte positions
      live = (8 * w + lane)[None, :] < lengths[:, None]
      if not live[:, 0].any():
        break
      word = np.where(live, data[np.minimum(pos, data.size - 1)], 0).astype(np.uint8)
      h = np.where(live[:, 0], hashing.splitmix64(h ^ word.view("<u8")[:, 0]), h)
  n = lengths.astype(np.uint64)
  return hashing.splitmix64(h ^ (n << np.uint64(56)) ^ n)


def _null_mask(arr: pa.Array) -> np.ndarray:
  mask = _unpack_validity(arr)
  return np.zeros(len(arr), bool) if mask is None else mask


def _text(arr: pa.Array) -> pa.Array:
  if pa.types.is_dictionary(arr.type):
    arr = arr.dictionary_decode()
  if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
    arr = pc.cast(arr, pa.string())
  return arr


def _empty_mask(arr: pa.Array, missing: np.ndarray) -> np.ndarray:
  """(N,) bool: a present but empty string (a parquet file's missing value)."""
  offsets, _ = _string_parts(arr)
  return (np.diff(offsets) == 0) & ~missing


def _indices(enc: pa.DictionaryArray) -> np.ndarray:
  """The dictionary indices as int64 (any value where null)."""
  ind = enc.indices
  raw = np.frombuffer(ind.buffers()[1], dtype=ind.type.to_pandas_dtype())
  return raw[ind.offset:ind.offset + len(ind)].astype(np.int64)


def cat_values(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
  """(values (N,) uint64, missing (N,) bool) of a categorical column (any type); null or
  empty strings are missing."""
  if pa.types.is_dictionary(arr.type):  # each distinct string once
    offsets, data = _string_parts(_text(arr.dictionary))
    h_U = hash_strings(offsets, data)
    missing = _null_mask(arr)
    idx = np.clip(_indices(arr), 0, max(len(h_U) - 1, 0))
    values = h_U[idx] if h_U.size else np.zeros(len(arr), np.uint64)
    if h_U.size:
      missing = missing | (np.diff(offsets) == 0)[idx]
  else:
    arr = _text(arr)
    missing = _null_mask(arr)
    offsets, data = _string_parts(arr)
    values = hash_strings(offsets, data)
    missing = missing | (np.diff(offsets) == 0)
  values[missing] = 0
  return values, missing


def multi_values(arr: pa.Array, max_len: int, delim: str) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray]:
  """(values (N, L) uint64, lengths (N,) int32, cut (N,) int32) of a multi-hot column.

  Each cell is split at ``delim`` (pyarrow, vectorised); empty pieces (``a||b``,
  an empty or null cell) are no values. The first ``L = max_len`` values of a
  row fill ``values[row, :lengths[row]]`` as :func:`hash_strings` hashes (0
  elsewhere); ``cut`` counts the values beyond ``L``.
  """
  n = len(arr)
  arr = _text(arr)
  lists = pc.split_pattern(arr, pattern=delim)
  tokens = pc.list_flatten(lists)
  parent = np.asarray(pc.list_parent_indices(lists).to_numpy(zero_copy_only=False), np.int64)
  tokens = tokens.combine_chunks() if isinstance(tokens, pa.ChunkedArray) else tokens
  offsets, data = _string_parts(tokens)
  keep = np.diff(offsets) > 0
  parent = parent[keep]
  counts = np.bincount(parent, minlength=n).astype(np.int64)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  pos = np.arange(parent.size, dtype=np.int64) - starts[parent]
  fit = pos < max_len
  hashes = hash_strings(offsets, data)[keep]
  values = np.zeros((n, max_len), np.uint64)
  values[parent[fit], pos[fit]] = hashes[fit]
  return (values, np.minimum(counts, max_len).astype(np.int32),
          np.maximum(counts - max_len, 0).astype(np.int32))


def num_values(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(values (N,) float64 (0 where missing or bad), missing, bad) of a numeric column; null
  or empty strings are missing.

  pyarrow's cast first (one pass); only a column it refuses gets the regular
  expression that finds the bad values.
  """
  if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_boolean(arr.type):
    missing = _null_mask(arr)
    x = np.array(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    x[missing] = 0.0
    return x, missing, np.zeros(len(arr), bool)
  arr = _text(arr)
  missing = _null_mask(arr)
  empty = _empty_mask(arr, missing)
  if empty.any():
    missing = missing | empty
    arr = pc.if_else(pa.array(~missing), arr, pa.scalar(None, arr.type))
  bad = np.zeros(len(arr), bool)
  try:
    cast = pc.cast(arr, pa.float64())
  except pa.ArrowInvalid:
    ok = pc.match_substring_regex(arr, _NUMBER).fill_null(False)
    bad = ~ok.to_numpy(zero_copy_only=False) & ~missing
    clean = pc.if_else(ok, arr, pa.scalar(None, arr.type))
    cast = pc.cast(pc.utf8_trim_whitespace(clean), pa.float64())
  x = np.array(cast.to_numpy(zero_copy_only=False), np.float64)
  bad = bad | (~np.isfinite(x) & ~missing & ~bad)  # "nan" / "inf" are not numbers here
  x[missing | bad] = 0.0
  return x, missing, bad


def time_values(arr: pa.Array, fmt: str) -> tuple[np.ndarray, np.ndarray]:
  """(seconds (N,) float64, bad (N,) bool); a missing time is bad."""
  x, missing, bad = num_values(arr)
  bad = bad | missing | ~np.isfinite(x)
  if fmt == "unix_ms":
    return x / 1000.0, bad
  if fmt == "unix_s":
    return x, bad
  v = np.where(bad, 0, x).astype(np.int64)  # yymmddhh, UTC
  yy, mm, dd, hh = v // 1000000, v // 10000 % 100, v // 100 % 100, v % 100
  bad = bad | (x != np.floor(x)) | (v < 0) | (mm < 1) | (mm > 12) | (dd < 1) | (dd > 31) | (hh > 23)
  months = ((2000 + yy - 1970) * 12 + np.clip(mm, 1, 12) - 1).astype("datetime64[M]")
  days = months.astype("datetime64[D]") + (np.clip(dd, 1, 31) - 1).astype("timedelta64[D]")
  bad = bad | (days.astype("datetime64[M]") != months)  # e.g. Feb 30
  secs = days.astype("datetime64[s]").astype(np.int64) + hh * 3600
  return np.where(bad, np.nan, secs.astype(np.float64)), bad


@dataclasses.dataclass
class SchemaBlock:
  """Decoded values of ``N`` rows of a schema (field-major, before hashing).

  ``label_N`` float32; ``cat_FxN`` uint64 (0 where missing) and
  ``cat_missing_FxN`` of the embedding fields (``Schema.fields``);
  ``dense_DxN`` float32 of the dense inputs; ``time_N`` float64 seconds (NaN
  without a time column); ``delay_N`` float32 seconds until the label time
  (``inf`` for a negative; None without a label_time column); ``reason_N`` (0 = good, else 1 + index into
  :data:`REASONS`) and ``bad_column_N`` (schema column index of the first
  bad value, -1 if none)."""

  label_N: np.ndarray
  cat_FxN: np.ndarray
  cat_missing_FxN: np.ndarray
  dense_DxN: np.ndarray
  time_N: np.ndarray
  reason_N: np.ndarray
  bad_column_N: np.ndarray
  delay_N: np.ndarray | None = None
  multi: tuple = ()  # per multi-hot field: (values (N, L) uint64, lengths (N,), cut (N,))

  @property
  def num_lines(self) -> int:
    return self.label_N.shape[0]

  def select(self, idx) -> "SchemaBlock":
    return SchemaBlock(self.label_N[idx], self.cat_FxN[:, idx], self.cat_missing_FxN[:, idx],
                       self.dense_DxN[:, idx], self.time_N[idx], self.reason_N[idx],
                       self.bad_column_N[idx],
                       None if self.delay_N is None else self.delay_N[idx],
                       tuple((v[idx], m[idx], c[idx]) for v, m, c in self.multi))


def parse_table(schema: Schema, columns: Sequence[pa.Array]) -> SchemaBlock:
  """Decodes the columns (``schema.names`` order) of one unit into a :class:`SchemaBlock`."""
  columns = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns]
  n = len(columns[0]) if columns else 0
  reason = np.zeros(n, np.int8)
  bad_col = np.full(n, -1, np.int16)
  index = {c.name: i for i, c in enumerate(schema.columns)}

  def flag(bad, code, col):
    new = bad & (reason == 0)
    reason[new] = code
    bad_col[new] = col

  lab = schema.label
  if lab is not None:
    y, missing, bad = num_values(columns[index[lab.name]])
    if lab.arg:
      y = (y >= float(lab.arg)).astype(np.float64)
    else:
      bad = bad | ((y != 0) & (y != 1))
    flag(bad | missing, _CODE["bad_label"], index[lab.name])
  time = np.full(n, np.nan)
  if schema.time is not None:
    time, bad = time_values(columns[index[schema.time.name]], schema.time.arg)
    flag(bad, _CODE["bad_time"], index[schema.time.name])
  delay = None
  if schema.label_time is not None:  # empty: a negative; a label before its event is bad
    lt = schema.label_time
    arr = columns[index[lt.name]]
    present = ~_null_mask(arr)
    t_label, bad = time_values(arr, lt.arg)
    bad = present & (bad | (t_label < time))
    flag(bad, _CODE["bad_time"], index[lt.name])
    delay = np.where(present & ~bad, t_label - time, np.inf).astype(np.float32)
    if lab is None:
      y = present.astype(np.float64)
  dense = []
  for c in schema.dense:
    x, missing, bad = num_values(columns[index[c.name]])
    flag(bad, _CODE["bad_num"], index[c.name])
    dense.append(hashing.log1p_transform(x, missing | bad))
  cats, cat_missing = [], []
  for c in schema.fields:
    if c.role == "cat":
      v, m = cat_values(columns[index[c.name]])
    else:  # num:bucket -> the log-square token, hashed like a category
      x, m, bad = num_values(columns[index[c.name]])
      flag(bad, _CODE["bad_num"], index[c.name])
      m = m | bad
      v = hashing.log_square_token(np.floor(np.where(m, 0, x)).astype(np.int64)).view(np.uint64)
      v = np.where(m, np.uint64(0), v)
    cats.append(v)
    cat_missing.append(m)
  multi = tuple(multi_values(columns[index[c.name]], *multi_options(c)[1:])
                for c in schema.multi)
  return SchemaBlock(y.astype(np.float32), np.stack(cats) if cats else np.zeros((0, n), np.uint64),
                     np.stack(cat_missing) if cat_missing else np.zeros((0, n), bool),
                     np.stack(dense) if dense else np.zeros((0, n), np.float32), time, reason,
                     bad_col, delay, multi)


def encode_table(raw: SchemaBlock, layout: hashing.FieldLayout, raw_ids: bool = False) -> dict:
  """The batch columns of every row: ``label``, ``cat`` (global row ids: field offset +
  bucket, bucket 0 = missing), ``dense``, ``time``; with ``raw_ids`` the unhashed values."""
  values, missing = raw.cat_FxN, raw.cat_missing_FxN
  num_single = values.shape[0]
  bucket = hashing.hash_fields_to_buckets(values, range(num_single), layout.buckets[:num_single])
  bucket[missing] = 0
  bucket += layout.offsets[:num_single, None]
  cat = bucket.T.astype(np.int32, order="C")
  out = {"label": raw.label_N, "dense": np.ascontiguousarray(raw.dense_DxN.T), "time": raw.time_N}
  if raw.multi:  # each multi-hot field's L columns; unused slots the padding id num_rows
    parts, lengths, cut = [cat], [], 0
    for f, (vals, length, c) in enumerate(raw.multi, start=num_single):
      n, width = vals.shape
      b = hashing.hash_fields_to_buckets(vals.reshape(1, -1), [f], [layout.buckets[f]])
      b = b.reshape(n, width) + layout.offsets[f]
      parts.append(np.where(np.arange(width) < length[:, None], b, layout.num_rows)
                   .astype(np.int32))
      lengths.append(length)
      cut = cut + c
    cat = np.concatenate(parts, axis=1)
    out["lengths"] = np.stack(lengths, axis=1).astype(np.float32)
    out["multi_cut"] = np.asarray(cut, np.int32)
  out["cat"] = cat
  if raw.delay_N is not None:
    out["delay"] = raw.delay_N
  if raw_ids:
    out["raw_ids"] = np.where(missing, np.uint64(0), values).T.astype(np.uint64, order="C")
    out["raw_missing"] = np.ascontiguousarray(missing.T)
  return out


class TableStream(BlockStream):
  """Files of one schema (TSV / CSV / parquet) as a time-ordered stream of batches.

  Yields batches following :mod:`rectrain.data.batch` with ``time`` from the
  schema's time column (NaN without one). Arguments as
  :class:`rectrain.data.criteo.CriteoStream`, plus ``schema`` (a
  :class:`~rectrain.data.schema.Schema`, a card name or a spec string);
  ``int_mode="categorical"`` bucketises every ``num`` column.
  ``cat_buckets`` is one int or one per field (``Schema.fields`` order).
  """

  REASONS = REASONS

  def __init__(self, paths, batch_size: int, schema: Schema | str,
               cat_buckets: int | Sequence[int] = 1 << 20, int_mode: str = "log1p",
               int_buckets: int = 512, bad_lines: str = "skip", max_rows: int | None = None,
               shuffle_buffer: int = 0, seed: int = 0, max_reported: int = 10,
               workers: int = 2, block_size: int = 1 << 21, raw_ids: bool = False):
    self.paths = path_list(paths, type(self).__name__)
    self._check_paths()
    schema = get_schema(schema) if isinstance(schema, str) else schema
    if int_mode not in ("log1p", "categorical"):
      raise ValueError(f"int_mode must be 'log1p' or 'categorical', got {int_mode!r}")
    self.schema = self._resolve(schema, int_mode)
    self.block_size = int(block_size)
    super().__init__(batch_size, cat_buckets, int_mode, int_buckets, bad_lines, max_rows,
                     shuffle_buffer, seed, max_reported, workers, raw_ids=raw_ids)

  # Columns are found by name (parquet, a dataset), not by position in a line.
  _by_name = False

  def _check_paths(self) -> None:
    for p in self.paths:
      if not os.path.exists(p):
        raise FileNotFoundError(f"data file not found: {p}")

  # -- the schema ---------------------------------------------------------------

  def _split_header(self, line: bytes, schema: Schema) -> list[str]:
    return [x.decode("utf-8", "replace").strip().strip('"')
            for x in line.rstrip(b"\r").split(b"\t" if schema.format == "tsv" else b",")]

  def _is_header(self, names: list[str], schema: Schema) -> bool:
    named = {c.name for c in schema.columns if c.name != "*"}
    return schema.header == "yes" or (schema.header == "auto" and bool(named)
                                      and named <= set(names))

  def _first_names(self, schema: Schema) -> list[str] | None:
    """The first file's header (text) or column names (parquet); None if it has none."""
    path = self.paths[0]
    try:
      if schema.format == "parquet":
        import pyarrow.parquet as pq
        return list(pq.ParquetFile(path).schema_arrow.names)
      stream, _, _ = _open(path)
      with stream:
        line = stream.read(1 << 16).split(b"\n", 1)[0]
    except (OSError, pa.ArrowException) as e:
      what = "not a readable parquet file" if schema.format == "parquet" else "unreadable"
      raise InputError(f"{path}: {what}: {e}") from e
    names = self._split_header(line, schema)
    return names if self._is_header(names, schema) else None

  def _resolve(self, schema: Schema, int_mode: str) -> Schema:
    # Only '*' (and a dataset's columns by name) needs the first source's names now; a text
    # file's header line is recognised per file as it is read (a resumed run does not read
    # the files it skips).
    if any(c.name == "*" for c in schema.columns):
      names = self._first_names(schema)
      if names is None:
        raise ValueError(f"schema {schema.name!r}: '*' needs a header line naming the columns "
                         f"(first line of {self.paths[0]})")
      schema = schema.with_header(names)
    elif self._by_name:
      names = self._first_names(schema)
      absent = [n for n in schema.names if n not in names]
      if absent:
        raise InputError(f"{self.paths[0]}: columns {absent} of schema {schema.name!r} are not "
                         f"in the file (it has {names})")
    if int_mode == "categorical":
      schema = dataclasses.replace(schema, columns=tuple(
          dataclasses.replace(c, arg="bucket") if c.role == "num" else c
          for c in schema.columns))
    return schema

  def _make_layout(self, cat_buckets, int_mode, int_buckets):
    fields, multi = self.schema.fields, self.schema.multi
    every = fields + multi
    if isinstance(cat_buckets, (int, np.integer)):
      buckets = tuple(int(int_buckets) if c.role == "num" else int(cat_buckets) for c in every)
    else:
      buckets = tuple(int(b) for b in cat_buckets)
      if len(buckets) != len(every):
        raise ValueError(f"cat_buckets: {len(buckets)} sizes for the {len(every)} fields of "
                         f"schema {self.schema.name!r} ({[c.name for c in every]})")
    names = tuple(c.name for c in every)
    if not multi:
      return hashing.FieldLayout(names, buckets)
    opts = [multi_options(c) for c in multi]
    return hashing.FieldLayout(names, buckets, (0,) * len(fields) + tuple(n for _, n, _ in opts),
                               ("",) * len(fields) + tuple(p for p, _, _ in opts))

  @property
  def num_dense(self) -> int:
    return len(self.schema.dense)

  def _field_count_text(self) -> str:
    sep = {"tsv": "tab", "csv": "comma"}.get(self.schema.format, "")
    return f"{len(self.schema.columns)} {sep}-separated fields"

  def _layout_text(self) -> str:
    return f"the layout of schema {self.schema.name!r} ({', '.join(self.schema.names[:6])}, ...)"

  def _describe_bad(self, raw, columns, i):
    reason = REASONS[int(raw.reason_N[i]) - 1]
    col = int(raw.bad_column_N[i])
    if reason == "wrong_field_count" or col < 0:
      return reason, f"expected {self._field_count_text()}"
    c = self.schema.columns[col]
    value = columns[col][i].as_py()
    if value is None:
      return reason, f"column {c.name} is empty"
    what = {"bad_label": "not 0 or 1" if not c.arg else "not a number",
            "bad_num": "not a number", "bad_time": f"not a time ({c.arg})" if c.role == "time"
            else f"not a time ({c.arg}) at or after the event time"}[reason]
    return reason, f"column {c.name}: {value!r} is {what}"

  # -- reading ------------------------------------------------------------------

  def _source_names(self) -> list[str]:
    return list(self.paths)

  def _raw_items(self, skip: int = 0):
    if self.schema.format == "parquet":
      yield from self._parquet_items(skip)
      return
    for path in self.paths[skip:]:
      first = True
      for item in split_lines(path, self.block_size):
        if first:  # a header line is not data
          head = bytes(item.chunk[:1 << 16])
          cut = head.find(b"\n") + 1 or len(head)
          names = self._split_header(head[:cut].rstrip(b"\n"), self.schema)
          if self._is_header(names, self.schema):
            if names != list(self.schema.names):
              raise InputError(f"{path}: header {names} is not the columns of schema "
                               f"{self.schema.name!r} {list(self.schema.names)} in order")
            item = RawItem(path, skip_lines=1, chunk=item.chunk[cut:])
        first = False
        yield item

  def _parquet_items(self, skip: int):
    import pyarrow.parquet as pq
    names = list(self.schema.names)
    for path in self.paths[skip:]:
      try:
        absent = [n for n in names if n not in pq.ParquetFile(path).schema_arrow.names]
        if absent:
          raise InputError(f"{path}: columns {absent} of schema {self.schema.name!r} are not "
                           "in the file")
        for rb in pq.ParquetFile(path).iter_batches(batch_size=1 << 16, columns=names):
          yield RawItem(path, columns=[rb.column(i) for i in range(len(names))])
      except (OSError, pa.ArrowException) as e:
        raise InputError(f"{path}: damaged parquet file: {e}") from e

  def _work(self, item: RawItem) -> Parsed:
    if item.chunk is not None:
      columns, line_of, invalid = read_chunk(item.chunk, self.schema.names,
                                             csv=self.schema.format == "csv")
    else:
      columns, invalid = item.columns, []

      def line_of(rows):
        return 1 + np.asarray(rows, dtype=np.int64)
    raw = parse_table(self.schema, columns)
    return Parsed(columns, line_of, invalid, raw.num_lines + len(invalid), raw,
                  encode_table(raw, self.layout, self.raw_ids))
