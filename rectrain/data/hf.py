"""Hugging Face ``datasets`` (streaming): Criteo-schema data, or any dataset by a schema.

:class:`HFTableStream` reads a Hub dataset (or local files ``datasets`` can
load) by a :class:`rectrain.data.schema.Schema`, its columns found by name, with
the parsing, bad-row policy and batching of :class:`rectrain.data.table.TableStream`.

:class:`HFStream` loads a dataset name from the Hub, or local CSV/TSV/Parquet
files, with ``datasets.load_dataset(..., streaming=True)`` and turns it into
the same batches as :class:`rectrain.data.criteo.CriteoStream`: the columns
``label, I1..I13, C1..C26`` go through the same conversion
(:func:`rectrain.data.criteo.parse_columns` / ``encode_block``), hashing,
bad-line policy, shuffle buffer and batching (:class:`BlockStream`).

Line numbers in bad-line messages: for a local headerless CSV/TSV file the
1-based line in that file; for a file with a header the line counting the
header; for Parquet files and Hub datasets the 1-based row in the file/split.

Differences from :class:`CriteoStream`, caused by the pandas CSV parser that
``datasets`` uses: a CSV line with too many fields raises pandas'
``ParserError``; a line with too few fields is padded with missing values
(so it may pass as a row with missing features) — use ``CriteoStream`` to
validate raw logs.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

from rectrain.data.criteo import COLUMN_NAMES, BlockStream, RawItem
from rectrain.data.table import TableStream

_CSV_SUFFIXES = (".csv", ".tsv", ".txt")


def _strip_gz(path: str) -> str:
  return path[:-3] if path.endswith(".gz") else path


def _file_format(path: str) -> str:
  base = _strip_gz(path.lower())
  if base.endswith(".parquet"):
    return "parquet"
  if base.endswith(_CSV_SUFFIXES) or "day_" in os.path.basename(base):
    return "csv"
  raise ValueError(f"{path}: unknown file type (expected .csv, .tsv, .txt or .parquet)")


class HFStream(BlockStream):
  """A Hugging Face ``datasets`` source of Criteo-schema batches.

  Args:
    name_or_files: a dataset name on the Hub, or one or several local
      ``.csv`` / ``.tsv`` / ``.txt`` (optionally ``.gz``) / ``.parquet`` files,
      read in order.
    batch_size, cat_buckets, int_mode, int_buckets, bad_lines, max_rows,
      shuffle_buffer, seed, max_reported, workers: as for
      :class:`rectrain.data.criteo.CriteoStream`.
    config: dataset configuration name (Hub datasets).
    split: split to stream.
    delimiter: field separator of text files; default tab, ``","`` for
      ``.csv``.
    header: whether text files start with a header line naming the columns;
      without one the columns are named ``label, I1..I13, C1..C26``.
    block_rows: rows per block taken from ``datasets``.
    raw_ids: also yield the unhashed ids ``raw_ids`` / ``raw_missing`` (as
      :class:`rectrain.data.criteo.CriteoStream`; for :mod:`rectrain.data.idmap`).
    **load_kwargs: passed to ``datasets.load_dataset``.
  """

  def __init__(self, name_or_files: str | os.PathLike | Sequence[str | os.PathLike],
               batch_size: int, cat_buckets: int | Sequence[int] = 1 << 20,
               int_mode: str = "log1p", int_buckets: int = 512, bad_lines: str = "skip",
               max_rows: int | None = None, shuffle_buffer: int = 0, seed: int = 0,
               max_reported: int = 10, workers: int = 2, config: str | None = None,
               split: str = "train", delimiter: str | None = None, header: bool = False,
               block_rows: int = 8192, raw_ids: bool = False, **load_kwargs):
    super().__init__(batch_size, cat_buckets, int_mode, int_buckets, bad_lines, max_rows,
                     shuffle_buffer, seed, max_reported, workers, raw_ids=raw_ids)
    if isinstance(name_or_files, (str, os.PathLike)):
      items = [os.fspath(name_or_files)]
    else:
      items = [os.fspath(p) for p in name_or_files]
    if not items:
      raise ValueError("HFStream: no dataset name or files given")
    local = [os.path.exists(p) for p in items]
    if any(local) and not all(local):
      missing = [p for p, ok in zip(items, local) if not ok]
      raise FileNotFoundError(f"HFStream: files not found: {missing}")
    if not any(local) and len(items) > 1:
      raise FileNotFoundError(f"HFStream: files not found: {items}")
    self.local = all(local)
    self.sources = items
    if self.local:
      for p in items:
        _file_format(p)
    self.config = config
    self.split = split
    self.delimiter = delimiter
    self.header = bool(header)
    self.block_rows = int(block_rows)
    if self.block_rows < 1:
      raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    self.load_kwargs = load_kwargs

  def _dataset(self, source: str):
    import datasets  # Imported lazily: only this source needs it.

    if not self.local:
      return datasets.load_dataset(source, self.config, split=self.split, streaming=True,
                                   **self.load_kwargs), 0
    fmt = _file_format(source)
    if fmt == "parquet":
      return datasets.load_dataset("parquet", data_files=[source], split="train",
                                   streaming=True, **self.load_kwargs), 0
    delimiter = self.delimiter
    if delimiter is None:
      delimiter = "," if _strip_gz(source.lower()).endswith(".csv") else "\t"
    features = datasets.Features({c: datasets.Value("string") for c in COLUMN_NAMES})
    kwargs = dict(delimiter=delimiter, features=features, keep_default_na=False,
                  na_values=[""], quoting=3)  # quoting=3: csv.QUOTE_NONE.
    if self.header:
      kwargs["header"] = 0
    else:
      kwargs["header"] = None
      kwargs["column_names"] = list(COLUMN_NAMES)
    kwargs.update(self.load_kwargs)
    return datasets.load_dataset("csv", data_files=[source], split="train", streaming=True,
                                 **kwargs), int(self.header)

  def _source_names(self) -> list[str]:
    return list(self.sources)

  def _raw_items(self, skip: int = 0) -> Iterator[RawItem]:
    for source in self.sources[skip:]:
      ds, header_lines = self._dataset(source)
      names = set(ds.column_names or COLUMN_NAMES)
      missing = [c for c in COLUMN_NAMES if c not in names]
      if missing:
        raise ValueError(f"{source}: dataset lacks the Criteo columns {missing}")
      for table in ds.with_format("arrow").iter(batch_size=self.block_rows):
        yield RawItem(source, header_lines, columns=[table.column(c) for c in COLUMN_NAMES])


class HFTableStream(TableStream):
  """A Hugging Face dataset by a schema (``data.source=hf`` with ``data.schema``).

  ``name``: a Hub dataset name (e.g. ``criteo/criteo-attribution-dataset``)
  or a local parquet file, loaded with ``datasets.load_dataset(...,
  streaming=True)``; ``config`` / ``split`` select its part. Columns are taken
  by the schema's names (``*`` expands over the dataset's columns); bad rows
  are named by their 1-based row in the split. Other arguments as
  :class:`~rectrain.data.table.TableStream`.
  """

  _by_name = True

  def __init__(self, name, batch_size: int, schema, config: str | None = None,
               split: str = "train", block_rows: int = 8192, **kwargs):
    self.hf_config, self.split, self.block_rows = config, split, int(block_rows)
    if self.block_rows < 1:
      raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    super().__init__(name, batch_size, schema, **kwargs)

  def _check_paths(self) -> None:
    if len(self.paths) != 1:
      raise ValueError(f"HFTableStream: one dataset name, got {self.paths}")

  def _dataset(self):
    """The streaming dataset, loaded once (its columns at construction, then its rows)."""
    if getattr(self, "_ds", None) is None:
      self._ds = self._load()
    return self._ds

  def _load(self):
    import datasets  # Imported lazily: only this source needs it.
    name = self.paths[0]
    if os.path.exists(name):
      if _file_format(name) != "parquet":
        raise ValueError(f"{name}: a local text file is read by data.source=table; "
                         "data.source=hf with a schema takes a Hub name or a parquet file")
      return datasets.load_dataset("parquet", data_files=[name], split="train", streaming=True)
    return datasets.load_dataset(name, self.hf_config, split=self.split, streaming=True)

  def _first_names(self, schema):
    ds = self._dataset()
    names = ds.column_names
    if names is None:  # a streaming dataset without declared features: its first rows
      names = list(next(iter(ds.with_format("arrow").iter(batch_size=1))).column_names)
    return list(names)

  def _raw_items(self, skip: int = 0) -> Iterator[RawItem]:
    if skip:
      return
    names = list(self.schema.names)
    for table in self._dataset().with_format("arrow").iter(batch_size=self.block_rows):
      yield RawItem(self.paths[0], columns=[table.column(c) for c in names])
