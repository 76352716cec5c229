"""What surrounds :class:`IdMap`: its config, pipeline stages, state files and statistics.

:func:`from_config` builds a map from an ``idmap`` config section,
:func:`with_idmap` and :func:`with_state_snapshots` are input-pipeline stages,
:func:`save_state`/:func:`load_state` write and read a map's state as one
``.npz``, :func:`window_summary` sums the per-batch counters of a window and
:class:`CollisionCounter` measures the collision rate of a hashed table on the
same raw ids.

Shape legend: B batch rows, F categorical fields, N batches of a window, C counters.
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, Iterator, Sequence

import ml_collections
import numpy as np

from rectrain.config_sections import idmap_config_defaults  # defined there (no jax)
from rectrain.data import hashing
from rectrain.data.idmap_core import COUNTER_NAMES, IdMap


def capacity_layout(capacity, names: Sequence[str], default: hashing.FieldLayout
                    ) -> hashing.FieldLayout:
  """The idmap layout: ``default``'s field order with ``capacity`` rows per field."""
  if isinstance(capacity, (int, np.integer)):
    if int(capacity) == 0:
      return default
    return hashing.FieldLayout(tuple(names), (int(capacity),) * len(names))
  caps = tuple(int(c) for c in capacity)
  if len(caps) != len(names):
    raise ValueError(f"expected {len(names)} capacities (fields {list(names)}), got {len(caps)}")
  return hashing.FieldLayout(tuple(names), caps)


def from_config(config: ml_collections.ConfigDict, layout: hashing.FieldLayout,
                batch_size: int) -> IdMap:
  """The :class:`IdMap` of an ``idmap`` config section for a stream's ``layout``."""
  known = set(idmap_config_defaults().keys())
  unknown = sorted(set(config.keys()) - known)
  if unknown:
    raise ValueError(f"idmap config: unknown key(s) {unknown}; known: {sorted(known)}")
  cap = int(config.max_admit_per_batch)
  capacity = tuple(config.field_capacity) if len(config.field_capacity) else config.capacity
  where = "field_capacity" if len(config.field_capacity) else "capacity"
  try:
    idmap_layout = capacity_layout(capacity, layout.names, layout)
  except ValueError as e:
    raise ValueError(f"idmap config {where}: {e}") from None
  return IdMap(
      idmap_layout, min_count=config.min_count,
      ttl=config.ttl, policy=config.policy, unadmitted=config.unadmitted, clock=config.clock,
      max_admit_per_batch=cap if cap > 0 else int(batch_size) * layout.num_fields,
      sketch_width=config.sketch_width, sketch_depth=config.sketch_depth,
      sketch_halve_every=config.sketch_halve_every)


def with_idmap(batches: Iterable[Dict[str, np.ndarray]], idmap: IdMap) -> Iterator[Dict[str, np.ndarray]]:
  """:meth:`IdMap.remap_batch` of every batch: a pipeline stage that replaces
  ``with_unique`` (its batches already carry ``unique``/``inverse``)."""
  for batch in batches:
    yield idmap.remap_batch(batch)


def with_state_snapshots(groups: Iterable[tuple], idmap: IdMap, every: int,
                         batches_done: int = 0) -> Iterator[tuple]:
  """Attaches ``idmap.state()`` to the groups after which the loop checkpoints.

  ``groups`` yields ``(n, group)`` (n batches stacked, remapped by ``idmap``
  in this same producer thread); with a checkpoint every ``every`` batches
  (the loop's rule: after the group that crosses a multiple of ``every``),
  such a group gets ``group["_idmap_state"]``, the map's state right after
  its last batch, however far the producer runs ahead of the device.
  """
  done = int(batches_done)
  for n, group in groups:
    done += n
    if (every and done // every != (done - n) // every) or "_fault" in group:
      group["_idmap_state"] = idmap.state()  # "_fault": the loop checkpoints at an input fault
    yield n, group


def save_state(path: str, state: Dict[str, np.ndarray]) -> None:
  """Writes :meth:`IdMap.state` to ``path`` (.npz), atomically (temp file + rename)."""
  tmp = path + ".tmp.npz"
  np.savez(tmp, **state)
  os.replace(tmp, path)


def load_state(path: str) -> Dict[str, np.ndarray]:
  """Reads a state written by :func:`save_state`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"idmap state not found: {path}")
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def window_summary(counters_NxC: np.ndarray) -> Dict[str, float]:
  """Per-window statistics from the per-batch ``counters`` of N batches.

  Sums every counter but ``occupied`` (its last value), and adds
  ``hit_rate = hits / lookups`` and ``admit_rate = admitted / new_ids``.
  """
  c = np.asarray(counters_NxC, np.int64).reshape(-1, len(COUNTER_NAMES))
  out = {k: int(c[:, i].sum()) for i, k in enumerate(COUNTER_NAMES) if k != "occupied"}
  out["batches"] = int(c.shape[0])
  out["occupied"] = int(c[-1, COUNTER_NAMES.index("occupied")]) if c.shape[0] else 0
  out["hit_rate"] = out["hits"] / out["lookups"] if out["lookups"] else float("nan")
  out["admit_rate"] = out["admitted"] / out["new_ids"] if out["new_ids"] else float("nan")
  return out


class CollisionCounter:
  """Collision rate of a hashed table over a window of batches.

  ``collision_rate`` = the fraction of the distinct present (field, raw id)
  pairs of the window whose row also serves another distinct pair of the
  window (0 for a collision-free map). ``update`` collects pairs; ``result``
  reports and, with ``reset``, starts a new window.
  """

  def __init__(self):
    self._field, self._raw, self._row = [], [], []

  def update(self, raw_BxF, missing_BxF, cat_BxF, valid_B=None):
    raw_BxF = np.asarray(raw_BxF).astype(np.uint64, copy=False)
    present = ~np.asarray(missing_BxF, bool)
    if valid_B is not None:
      present &= np.asarray(valid_B, bool)[:, None]
    field = np.broadcast_to(np.arange(raw_BxF.shape[1], dtype=np.int64), raw_BxF.shape)
    self._field.append(field[present])
    self._raw.append(raw_BxF[present])
    self._row.append(np.asarray(cat_BxF, np.int64)[present])

  def result(self, reset: bool = True) -> Dict[str, float]:
    field = np.concatenate(self._field) if self._field else np.zeros(0, np.int64)
    raw = np.concatenate(self._raw) if self._raw else np.zeros(0, np.uint64)
    row = np.concatenate(self._row) if self._row else np.zeros(0, np.int64)
    if reset:
      self._field, self._raw, self._row = [], [], []
    if raw.size == 0:
      return {"distinct_ids": 0, "rows": 0, "colliding_ids": 0, "collision_rate": float("nan")}
    order = np.lexsort((raw, field))
    f, x, r = field[order], raw[order], row[order]
    first = np.concatenate([[True], (f[1:] != f[:-1]) | (x[1:] != x[:-1])])
    id_rows = r[first]
    rows, per_row = np.unique(id_rows, return_counts=True)
    shared = per_row[np.searchsorted(rows, id_rows)] > 1
    n = int(first.sum())
    return {"distinct_ids": n, "rows": int(rows.size), "colliding_ids": int(shared.sum()),
            "collision_rate": float(shared.sum() / n)}


# The batch keys of the rows (re)assigned in a batch (remap_batch); the device side
# that resets them is a step transform: rectrain/train/idmap_reset.py.
RESET_KEYS = ("reset_rows", "reset_gen")
