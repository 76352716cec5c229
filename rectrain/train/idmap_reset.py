"""The id map's device side: a step transform that resets the rows (re)assigned in a batch.

:class:`rectrain.data.idmap.IdMap` (host side, NumPy) assigns table rows to raw
ids and marks in each batch the rows it (re)assigned (``reset_rows`` /
``reset_gen``, :data:`rectrain.data.idmap.RESET_KEYS`); :func:`row_reset_transform`
(a step transform; :func:`with_row_reset` for a bare train step) makes those
rows and their optimizer state fresh before the step reads them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rectrain.data.idmap import RESET_KEYS
from rectrain.optim import reset_state_rows
from rectrain.train.step import LOCAL, Placement
from rectrain.train.transforms import StepTransform


def reset_rows(tables, table_opt_state, rows_R, gen_R, specs, sparse_opts, key,
               placement: Placement = LOCAL):
  """Writes fresh initial values into rows ``rows_R`` of every table and its state.

  Row ``r`` of table ``i`` (``specs[i]``) gets a fresh draw from the table's
  initialiser (rectrain/models/tables.py: zeros for ``init_scale == 0``, else
  truncated normal or uniform of that scale) with key
  ``fold_in(fold_in(fold_in(key, i), r), gen)``, so the values are a pure
  function of (key, table, row, generation) and a reused row never repeats
  its previous initial value. Its optimizer state becomes
  ``sparse_opts[name].init(fresh_rows)``, the state of a fresh row (the
  optimizer's global leaves, its step count, are kept). Padding
  entries (``rows_R == N``) write nothing. Jittable; cost O(R * W).
  ``placement`` (rectrain/train/step.py) maps the global rows to this device's
  rows: on row-sharded tables each device resets the rows it holds, with the
  same values as on one device.

  Returns:
    ``(new_tables, new_table_opt_state)``.
  """
  new_tables, new_opt = dict(tables), dict(table_opt_state)
  rows_R = jnp.asarray(rows_R, jnp.int32)
  gen_R = jnp.asarray(gen_R, jnp.int32)
  for i, spec in enumerate(specs):
    table = tables[spec.name]
    local_R = placement.local_ids(table.shape[0], rows_R)
    scale = float(spec.init_scale)
    shape = (rows_R.shape[0], spec.dim)
    if scale == 0.0:
      fresh = jnp.zeros(shape, table.dtype)
    else:
      k_table = jax.random.fold_in(key, i)
      keys = jax.vmap(lambda r, g: jax.random.fold_in(jax.random.fold_in(k_table, r), g))(
          rows_R, gen_R)
      if spec.init == "uniform":
        draw = lambda k: jax.random.uniform(k, (spec.dim,), table.dtype, -scale, scale)
      else:
        draw = lambda k: scale * jax.random.truncated_normal(k, -2.0, 2.0, (spec.dim,), table.dtype)
      fresh = jax.vmap(draw)(keys)
    new_tables[spec.name] = table.at[local_R].set(fresh, mode="drop")
    new_opt[spec.name] = reset_state_rows(sparse_opts[spec.name], table_opt_state[spec.name],
                                          local_R, fresh, table.shape[0])
  return new_tables, new_opt



def _reset_train(train, batch, specs, sparse_opts, key, placement):
  tables, opt = reset_rows(train.tables, train.table_opt_state, batch["reset_rows"],
                           batch["reset_gen"], specs, sparse_opts, key, placement)
  return train._replace(tables=tables, table_opt_state=opt)


def with_row_reset(step, specs, sparse_opts, key, placement: Placement = LOCAL):
  """Wraps a train step so that it first resets the batch's ``reset_rows``.

  ``step(TrainState, batch)`` is :func:`rectrain.train.step.make_train_step`'s
  step; the wrapped step reads ``batch["reset_rows"]`` and ``batch["reset_gen"]``
  (from :meth:`IdMap.remap_batch`), applies :func:`reset_rows` and calls
  ``step`` on the rest of the batch. Pure, so it goes under ``lax.scan`` /
  ``jit``. :func:`row_reset_transform` is the same as a step transform.
  """

  def wrapped(train, batch):
    train = _reset_train(train, batch, specs, sparse_opts, key, placement)
    return step(train, {k: v for k, v in batch.items() if k not in RESET_KEYS})

  return wrapped


NAME = "idmap_reset"


def row_reset_transform(specs, sparse_opts, key, placement: Placement = LOCAL) -> StepTransform:
  """The step transform ``idmap_reset`` (no state): the rows a batch (re)assigns and their
  optimizer state are reset in ``RunState.train`` before the inner step."""

  def wrap(step):
    def wrapped(state, batch):
      return step(state._replace(
          train=_reset_train(state.train, batch, specs, sparse_opts, key, placement)), batch)
    return wrapped

  return StepTransform(NAME, wrap=wrap, keys=RESET_KEYS)
