"""Streams of batches: Criteo logs, any table by a schema (rectrain/data/table.py), a Hugging
Face datasets source, the synthetic stream.

Every stream yields batches following :mod:`rectrain.data.batch` and has the
attributes ``batch_size``, ``layout`` (a :class:`~rectrain.data.hashing.FieldLayout`),
``num_rows`` (rows of the fused table), ``num_dense`` and ``report()``.
"""

from __future__ import annotations

import ml_collections


def make_stream(data: ml_collections.ConfigDict, seed: int = 0, raw_ids: bool = False):
  """Builds the stream a run config's ``data`` section describes.

  With ``data.split`` set (train | valid | test) the source is read whole and
  in order and :class:`rectrain.data.split.SplitStream` keeps that split's
  rows (hash of the row index and ``data.split_seed``, shares
  ``data.split_ratios``); ``data.max_rows`` then counts rows of the split and
  ``data.shuffle_buffer`` shuffles the split's rows.

  With ``raw_ids`` the batches also carry the unhashed ids ``raw_ids`` and
  ``raw_missing`` (for :mod:`rectrain.data.idmap`).
  """
  split = data.get("split", "")
  if not split:
    return _make_source(data, seed, data.max_rows or None, data.shuffle_buffer, raw_ids)
  from rectrain.data.split import SplitStream
  source = _make_source(data, seed, None, 0, raw_ids)
  return SplitStream(source, split, ratios=tuple(data.split_ratios), seed=data.split_seed,
                     max_rows=data.max_rows or None, shuffle_buffer=data.shuffle_buffer,
                     shuffle_seed=seed)


def _make_source(data: ml_collections.ConfigDict, seed: int, max_rows, shuffle_buffer: int,
                 raw_ids: bool = False):
  common = dict(batch_size=data.batch_size, cat_buckets=data.cat_buckets,
                int_mode=data.int_mode, int_buckets=data.int_buckets, seed=seed,
                raw_ids=bool(raw_ids))
  if data.source != "synthetic" and data.get("start_row", 0):
    raise ValueError("config data.start_row is only supported for data.source='synthetic'")
  if data.source == "synthetic":
    from rectrain.data.synthetic import SyntheticStream
    return SyntheticStream(data.synthetic, num_rows_total=max_rows,
                           start_row=data.get("start_row", 0), **common)
  if data.source == "criteo":
    from rectrain.data.criteo import CriteoStream
    paths = [p for p in str(data.path).split(",") if p]
    return CriteoStream(paths, bad_lines=data.bad_lines, max_rows=max_rows,
                        shuffle_buffer=shuffle_buffer, **common)
  if data.source == "table":
    from rectrain.data.schema import schema_of
    from rectrain.data.table import TableStream
    paths = [p for p in str(data.path).split(",") if p]
    return TableStream(paths, schema=schema_of(data), bad_lines=data.bad_lines, max_rows=max_rows,
                       shuffle_buffer=shuffle_buffer, **common)
  if data.source == "hf" and data.get("schema", ""):
    from rectrain.data.hf import HFTableStream
    from rectrain.data.schema import get_schema
    schema = get_schema(data.schema, "parquet", "no", data.get("label", ""))
    return HFTableStream(str(data.path), schema=schema, bad_lines=data.bad_lines,
                         max_rows=max_rows, shuffle_buffer=shuffle_buffer, **common)
  if data.source == "hf":
    from rectrain.data.hf import HFStream
    return HFStream(data.path, bad_lines=data.bad_lines, max_rows=max_rows,
                    shuffle_buffer=shuffle_buffer, **common)
  raise ValueError(f"config data.source={data.source!r}: must be synthetic, criteo, table or hf")
