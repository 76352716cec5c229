"""Where the delayed-feedback runner trains and serves: one device or a mesh.

:func:`rectrain.train.delayed.train_delayed` trains up to two models (the main
model and the ES-DFM / DEFER auxiliary model), each with its own losses and
label shapes, and serves them batch by batch to build the next labels. This
module gives it the same three operations on one device and on a device mesh
(``config.mesh`` / ``config.distributed``, as the streaming loop): the tables
padded and row-sharded over every device, the batch split over ``data``, the
one step (rectrain/train/step.py) on the ``SHARDED`` placement.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from rectrain.data.batch import DEVICE_KEYS
from rectrain.train import distributed as dist
from rectrain.train import sharding as sh
from rectrain.train.step import LOCAL, make_forward, make_multi_step, make_train_step

FEATURE_KEYS = ("dense", "unique", "inverse")


def rows_to_host(x) -> np.ndarray:
  """A global array sharded over ``data`` on its first axis, on the host in batch row order.

  With ``H`` processes the global batch holds process ``p``'s rows ``p::H``
  at ``[p B/H, (p+1) B/H)`` (rectrain.train.loop_mesh._batch_placer); this
  undoes that interleave.
  """
  hosts = jax.process_count()
  if hosts == 1:
    return np.asarray(x)
  full = dist.gather_rows_to_host(x)
  b = full.shape[0]
  return full.reshape((hosts, b // hosts) + full.shape[1:]).swapaxes(0, 1).reshape(full.shape)


def scalar_to_host(x) -> np.ndarray:
  """A replicated array (possibly spanning other processes' devices) on the host."""
  return np.asarray(x if x.is_fully_addressable else x.addressable_data(0))


class Devices:
  """One device (``mesh=None``) or a mesh with tables of ``table_rows`` (padded) rows."""

  def __init__(self, mesh, table_rows: int):
    self.mesh, self.table_rows = mesh, int(table_rows)
    self.placement = LOCAL if mesh is None else sh.SHARDED
    self.hosts, self.me = jax.process_count(), jax.process_index()

  def place_state(self, state):
    return state if self.mesh is None else sh.shard_state(state, self.mesh, self.table_rows)

  def multi(self, model, dense_opt, sparse_opts, loss_fn, state) -> Callable:
    """``multi(state, stacked host batches) -> (state, StepOutput)``: the one step, K per dispatch."""
    step = make_train_step(model, dense_opt, sparse_opts, loss_fn=loss_fn,
                           placement=self.placement)
    if self.mesh is None:
      return make_multi_step(step)
    sharded = sh.make_sharded_multi_step(step, self.mesh, state, self.table_rows, DEVICE_KEYS)
    shardings = sh.batch_shardings(self.mesh, DEVICE_KEYS, stacked=True)

    def multi(state, batches):
      if self.hosts > 1:
        batches = {k: v if k in sh.REPLICATED_KEYS else v[:, self.me::self.hosts]
                   for k, v in batches.items()}
      return sharded(state, dist.put_local(batches, shardings))

    return multi

  def serve(self, serve_fn: Callable, state) -> Callable:
    """``serve(dense_params, tables, host batch) -> host array (B, ...)``.

    ``serve_fn(forward_rows, dense_params, tables, batch)`` is the runner's
    serving rule given the rows accessor (rectrain.train.delayed.make_serve).
    """
    if self.mesh is None:
      jitted = jax.jit(lambda d, t, b: serve_fn(LOCAL, d, t, b))
      return lambda d, t, b: np.asarray(jitted(d, t, {k: b[k] for k in FEATURE_KEYS}))
    specs = sh.state_specs(state, self.table_rows)
    in_batch = sh.batch_specs(FEATURE_KEYS, stacked=False)
    sharded = jax.jit(jax.shard_map(
        lambda d, t, b: serve_fn(sh.SHARDED, d, t, b), mesh=self.mesh,
        in_specs=(specs.dense_params, specs.tables, in_batch), out_specs=P("data"),
        check_vma=False))
    shardings = sh.batch_shardings(self.mesh, FEATURE_KEYS, stacked=False)

    def serve(d, t, b):
      b = {k: b[k] for k in FEATURE_KEYS}
      if self.hosts > 1:
        b = {k: v if k in sh.REPLICATED_KEYS else v[self.me::self.hosts] for k, v in b.items()}
      return rows_to_host(sharded(d, t, dist.put_local(b, shardings)))

    return serve


def forward_with(model) -> Callable:
  """``logits(placement, dense_params, tables, batch)``: the model on the batch's rows."""
  forward = make_forward(model)

  def logits(placement, dense_params, tables, batch):
    rows_U, _ = placement.rows(tables, batch["unique"])
    return forward(dense_params, rows_U, batch)

  return logits
