"""The batch contract shared by every stream in rectrain.

A batch is a plain ``dict`` of NumPy arrays with a fixed batch size ``B``
(the last batch of a stream is padded with rows of zero ``weight``).

Shape legend: B = batch size, F = categorical fields (after integer features
bucketised as categoricals, if so configured), I = dense (integer) features,
U = padded number of unique table rows in a batch.

Keys every stream yields:

* ``label``  (B,)   float32, 0 or 1 (0 for padding rows).
* ``weight`` (B,)   float32, sample weight; 0 for padding rows, 1 otherwise.
* ``cat``    (B, F) int32, *global* row ids into one fused embedding table of
  ``num_rows`` rows: ``field_offset[f] + bucket``. Bucket 0 of every field is
  reserved for a missing value, so a missing value is its own row.
* ``dense``  (B, I) float32, transformed integer features (I may be 0).
* ``index``  (B,)   int64, position of the row in the stream (0-based,
  counting only rows that were kept); -1 for padding rows.
* ``time``   (B,)   float64, event time in seconds since the stream start;
  NaN where the stream has no event time (Criteo logs).

Optional keys (synthetic stream):

* ``true_prob`` (B,) float32, the generating model's click probability.
* ``delay``     (B,) float32, seconds from the event until its label arrives
  (``inf`` for negatives).

Keys added by :func:`add_unique` (host-side dedup, so the device step never
sorts):

* ``unique``   (U,)   int32, the distinct ids of ``cat`` in ascending order,
  padded with ``num_rows`` (out of range: gathers fill zeros, scatters drop).
* ``inverse``  (B, F) int32, ``unique[inverse] == cat``.
* ``num_unique`` ()   int32, number of valid entries of ``unique``.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

Batch = Dict[str, np.ndarray]

DEVICE_KEYS = ("label", "weight", "dense", "unique", "inverse")


def add_unique(batch: Batch, num_rows: int, max_unique: int | None = None) -> Batch:
  """Adds ``unique``/``inverse``/``num_unique`` to ``batch`` (in place, returned).

  Args:
    batch: a batch with ``cat`` (B, F) global row ids.
    num_rows: number of rows of the fused table; used as the padding id.
    max_unique: static length U of ``unique``; defaults to B * F, which can
      never overflow.
  """
  cat = batch["cat"]
  flat = cat.reshape(-1)
  size = flat.size if max_unique is None else int(max_unique)
  uniq, inverse = np.unique(flat, return_inverse=True)
  if uniq.size > size:
    raise ValueError(
        f"batch has {uniq.size} unique ids but max_unique={size}; raise max_unique")
  unique = np.full((size,), num_rows, dtype=np.int32)
  unique[: uniq.size] = uniq
  batch["unique"] = unique
  batch["inverse"] = inverse.reshape(cat.shape).astype(np.int32)
  batch["num_unique"] = np.int32(uniq.size)
  return batch


def pad_batch(batch: Batch, batch_size: int) -> Batch:
  """Pads a short batch to ``batch_size`` rows with zero-weight rows."""
  n = batch["label"].shape[0]
  if n == batch_size:
    return batch
  if n > batch_size:
    raise ValueError(f"batch of {n} rows exceeds batch_size={batch_size}")
  out = {}
  for key, value in batch.items():
    if value.ndim == 0:
      out[key] = value
      continue
    pad_shape = (batch_size - n,) + value.shape[1:]
    if key == "index":
      fill = -1
    elif key in ("time", "true_prob", "delay") and np.issubdtype(value.dtype, np.floating):
      fill = np.nan
    else:
      fill = 0
    out[key] = np.concatenate([value, np.full(pad_shape, fill, dtype=value.dtype)])
  return out
