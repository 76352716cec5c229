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

import logging
import os
import threading
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa

from rectrain.data import hashing
from rectrain.errors import InputError
from rectrain.data.batch import Batch
from rectrain.data.hashing import NUM_INT_FIELDS
from rectrain.data.pipeline import map_ordered, rebatch, shuffle_rows

logger = logging.getLogger(__name__)

from rectrain.data.criteo_parse import (  # noqa: F401 - moved there, importable from here
    COLUMN_NAMES, NUM_COLUMNS, REASONS, _REASON_CODE, _make_pair_lut, _HEX_PAIR_LUT,
    _HIGH_BYTES, RawBlock, _unpack_validity, _string_parts, _is_text, parse_hex_column,
    _DECIMAL, parse_int_column, parse_columns, encode_block, BadLine, describe_bad, RawItem,
    Parsed, _PARSE_OPTIONS, _CONVERT_OPTIONS, read_chunk)


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
    self.layout = self._make_layout(cat_buckets, int_mode, int_buckets)
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

  # What a stream of another schema (rectrain/data/table.py) defines differently.
  REASONS = REASONS

  def _make_layout(self, cat_buckets, int_mode: str, int_buckets: int) -> hashing.FieldLayout:
    return hashing.make_layout(cat_buckets, int_mode, int_buckets)

  def _describe_bad(self, raw, columns, i: int) -> tuple[str, str]:
    return describe_bad(raw, columns, i)

  def _field_count_text(self) -> str:
    return f"{NUM_COLUMNS} tab-separated fields"

  def _layout_text(self) -> str:
    return "the Criteo layout (label, I1..I13, C1..C26 tab-separated)"

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
    self._skipped = {r: 0 for r in self.REASONS}
    self._first_errors: list[str] = []
    self._values_cut = 0  # multi-hot values beyond their field's max length (not used)
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
    ``"file:line: reason: detail"``; ``values_cut`` (only when some were) the
    multi-hot values beyond their field's max length, which the rows kept
    without. Valid during and after iteration (reset when an iteration starts).
    """
    out = {"rows_read": self._rows_read, "rows": self._rows,
           "skipped": {r: c for r, c in self._skipped.items() if c},
           "first_errors": list(self._first_errors)}
    if self._values_cut:
      out["values_cut"] = self._values_cut
    return out

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
        self._values_cut += f.get("values_cut", 0)
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
                        f"expected {self._field_count_text()}, got {k}")
                for line, k in parsed.invalid]
      if (first_unit and parsed.num_lines >= _FOREIGN_LINES
          and np.count_nonzero(raw.reason_N == 0) == 0):
        first = errors[0] if errors and errors[0].line == base + 1 else None
        if first is None and n:
          reason, detail = self._describe_bad(raw, columns, 0)
          first = BadLine(source, base + int(parsed.line_of(np.array([0]))[0]), reason, detail)
        raise InputError(f"{source}: not in {self._layout_text()}: none of the first "
                         f"{parsed.num_lines:,} lines is valid; {first}")
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
          reason, detail = self._describe_bad(raw, columns, int(i))
          errors.append(BadLine(source, base + int(line), reason, detail))
        good = raw.reason_N == 0
        block = {k: v[good] for k, v in block.items()}
      if errors:
        self._bad(errors)
      cut = block.pop("multi_cut", None)  # multi-hot values beyond a field's max length
      cut = int(cut.sum()) if cut is not None else 0
      self._values_cut += cut
      k = block["label"].shape[0]
      block["index"] = np.arange(self._rows, self._rows + k, dtype=np.int64)
      self._rows += k
      with self._files_lock:
        current["rows"] += k
        current["rows_read"] += n + len(errors)
        for e in errors:
          current["skipped"][e.reason] = current["skipped"].get(e.reason, 0) + 1
        if cut:
          current["values_cut"] = current.get("values_cut", 0) + cut
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
      if "time" not in batch:  # a schema without an event time
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


def path_list(paths, owner: str) -> list[str]:
  """One path or several as a non-empty list of strings (``owner`` names the stream in the
  error)."""
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  out = [os.fspath(p) for p in paths]
  if not out:
    raise ValueError(f"{owner}: no paths given")
  return out


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
    self.paths = path_list(paths, "CriteoStream")
    for p in self.paths:
      if not os.path.exists(p):
        raise FileNotFoundError(f"Criteo file not found: {p}")
    self.block_size = int(block_size)

  def _source_names(self) -> list[str]:
    return list(self.paths)

  def _raw_items(self, skip: int = 0):
    for path in self.paths[skip:]:
      yield from split_lines(path, self.block_size)
