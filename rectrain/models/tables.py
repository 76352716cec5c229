"""Embedding tables over the fused id space, kept outside the Flax modules.

All categorical fields share one id space of N rows (global row id = field
offset + hashed bucket, see rectrain/data/hashing.py). A model declares the
tables it reads with :class:`TableSpec`; each table is a plain ``(N, W)``
array, so the training step can gather only the rows a batch touches, update
them row-wise and scatter them back (cost O(rows touched)).

Shape legend: N rows of the fused table, W width of a table row, B batch
rows, F categorical fields.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

INITS = ("truncated_normal", "uniform")


@dataclasses.dataclass(frozen=True)
class TableSpec:
  """One table over the fused id space.

  Attributes:
    name: key of the table in the tables dict, e.g. ``"linear"``,
      ``"embedding"``.
    dim: row width W.
    init_scale: scale of the initial rows. ``0`` gives all-zero rows (used
      for the width-1 ``linear`` tables, as in LR / FTRL practice).
      Otherwise, with ``init="truncated_normal"`` every entry is drawn from a
      normal with standard deviation ``init_scale`` truncated to
      ``[-2 init_scale, 2 init_scale]``; with ``init="uniform"`` from
      ``U(-init_scale, init_scale)`` (DLRM's reference uses
      ``init_scale = 1 / sqrt(rows of the table)``).
    init: ``"truncated_normal"`` (default) or ``"uniform"``.
  """

  name: str
  dim: int
  init_scale: float
  init: str = "truncated_normal"

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f"TableSpec.name must be a non-empty string, got {self.name!r}")
    if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
      raise ValueError(f"TableSpec {self.name!r}: dim must be a positive int, got {self.dim!r}")
    if not float(self.init_scale) >= 0.0:
      raise ValueError(
          f"TableSpec {self.name!r}: init_scale must be >= 0, got {self.init_scale!r}")
    if self.init not in INITS:
      raise ValueError(f"TableSpec {self.name!r}: init must be one of {INITS}, got {self.init!r}")


def init_table(key: Array, spec: TableSpec, num_rows: int, dtype=jnp.float32) -> Array:
  """One ``(num_rows, spec.dim)`` table initialised as ``spec`` documents."""
  shape = (int(num_rows), spec.dim)
  scale = float(spec.init_scale)
  if scale == 0.0:
    return jnp.zeros(shape, dtype)
  if spec.init == "uniform":
    return jax.random.uniform(key, shape, dtype, minval=-scale, maxval=scale)
  return scale * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)


def init_tables(key: Array, specs: Sequence[TableSpec], num_rows: int,
                dtype=jnp.float32) -> Dict[str, Array]:
  """Initialises every table of ``specs``: ``name -> (num_rows, dim)``.

  Table ``i`` uses ``jax.random.fold_in(key, i)``, so adding a table after
  the others leaves their initial values unchanged.
  """
  if isinstance(num_rows, bool) or int(num_rows) != num_rows or num_rows < 1:
    raise ValueError(f"init_tables: num_rows must be a positive int, got {num_rows!r}")
  names = [s.name for s in specs]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise ValueError(f"init_tables: duplicate table names {dupes}")
  return {s.name: init_table(jax.random.fold_in(key, i), s, num_rows, dtype)
          for i, s in enumerate(specs)}


def lookup(tables: Dict[str, Array], ids: Array) -> Dict[str, Array]:
  """Gathers ``tables[name][ids]`` for every table (inference / evaluation).

  ``ids`` of shape ``(B, F)`` give rows of shape ``(B, F, W)``. An id
  ``>= N`` (e.g. the padding id N of rectrain/data/batch.py) gathers a row of
  zeros, like the training step's gather; negative ids count from the end, as
  in NumPy.
  """
  ids = jnp.asarray(ids)
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"lookup: ids must be integers, got dtype {ids.dtype}")
  return {name: t.at[ids].get(mode="fill", fill_value=0) for name, t in tables.items()}
