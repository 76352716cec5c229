"""Scale-out with JAX's own SPMD machinery: row-sharded tables, data-parallel batches.

Layout (the hybrid parallelism of DLRM, Naumov et al. 2019, on a
:class:`jax.sharding.Mesh` with axes ``("data", "model")``):

* every embedding table ``N x W`` and every leaf of its row-wise optimizer
  state is sharded by rows over ALL devices of the mesh (``P(("data",
  "model"))``): device ``d`` owns rows ``[d N/D, (d+1) N/D)``; no device holds
  more than ``1/D`` of a table (``N`` is padded up to a multiple of ``D``);
* the batch is sharded over ``data`` (devices of one ``model`` group see the
  same rows); dense parameters and their optimizer state are replicated.

One step (:func:`make_sharded_multi_step`, a ``shard_map`` around the same
``lax.scan`` of steps as :func:`rectrain.train.step.make_multi_step`):

1. ``unique_U``, the batch's distinct row ids (computed on the host over the
   whole global batch), is replicated. Each device gathers the rows of
   ``unique_U`` it owns (zeros elsewhere) and one ``psum`` over the mesh
   assembles ``rows_UxW`` everywhere: ``U x W`` floats cross the devices, not
   the table.
2. Each device runs the model on its batch shard. With ``L = sum_b w_b
   l_b / n`` (``n`` = rows with ``w_b > 0`` in the global batch), the local
   objective is ``loss_fn(local) * n_local / n``, so ``psum`` over ``data`` of
   the local gradients is the gradient of the global loss (exact for any
   ``loss_fn`` of the form ``sum_b w_b l_b / n_local``, such as
   :func:`rectrain.train.step.weighted_logloss`).
3. The dense gradient and the ``U x W`` row gradient are summed over
   ``data``; every device applies the dense update (replicated) and the
   row-wise update to the rows of ``unique_U`` it owns
   (:func:`rectrain.train.step.apply_gradients` with the other ids mapped to
   the out-of-range padding id, which is never read or written).

XLA's automatic partitioning of ``table.at[ids].get/set`` on a row-sharded
table all-reduces table-sized buffers (measured on the compiled HLO); the
explicit ``shard_map`` keeps the traffic at ``O(U W)`` per step.
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rectrain.optim import SparseOptimizer
from rectrain.train.step import (Placement, StepOutput, TrainState, make_predict_fn,
                                 make_train_step, weighted_logloss)
from rectrain.config_sections import mesh_config_defaults  # noqa: F401 - defined there (no jax)

AXES = ("data", "model")
ROWS = P(AXES)          # table rows over every device
REPLICATED = P()


def make_mesh(shape: Sequence[int] = (1, 1), devices=None) -> Mesh:
  """A ``(data, model)`` mesh over ``devices`` (default: all, in ``jax.devices()`` order)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = tuple(int(s) for s in shape)
  if len(shape) != 2:
    raise ValueError(f"config mesh.shape={shape}: must be (data, model)")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"config mesh.shape={shape}: sizes must be >= 1, at most one -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"config mesh.shape={shape}: {len(devices)} devices are not divisible "
                       f"by {known}")
    shape = tuple(len(devices) // known if s == -1 else s for s in shape)
  size = int(np.prod(shape))
  if size > len(devices):
    raise ValueError(f"config mesh.shape={shape}: needs {size} devices, "
                     f"{len(devices)} available")
  return Mesh(np.asarray(devices[:size], dtype=object).reshape(shape), AXES)


def mesh_size(mesh: Mesh) -> int:
  return int(np.prod(list(mesh.shape.values())))


ROW_ALIGN = 128


def padded_rows(num_rows: int, mesh: Mesh) -> int:
  """``num_rows`` rounded up to a multiple of ``lcm(devices, 128)``.

  Tables shard evenly, and for any power-of-two device count up to 128 the
  padded size is the same, so a checkpoint restores on another device count.
  The padding rows are never looked up (ids are < ``num_rows``).
  """
  m = int(np.lcm(mesh_size(mesh), ROW_ALIGN))
  return -(-num_rows // m) * m


def _is_row_leaf(leaf, num_rows: int) -> bool:
  return hasattr(leaf, "shape") and len(leaf.shape) >= 1 and leaf.shape[0] == num_rows


def state_specs(state, num_rows: int):
  """PartitionSpecs for any run state (a TrainState, or one wrapped by features).

  One rule over the pytree: a leaf with a leading axis of the tables'
  ``num_rows`` (padded) rows is row-sharded (the tables, their optimizer
  state, a serving copy's tables and row versions, the async simulation's
  per-row DC statistics); every other leaf (dense parameters and their
  optimizer state, counters, histories indexed by a batch's distinct ids) is
  replicated. The dense part of a TrainState is always replicated.
  """
  def spec(x):
    return ROWS if _is_row_leaf(x, num_rows) else REPLICATED

  def one(tree):
    if isinstance(tree, TrainState):
      rep = lambda t: jax.tree_util.tree_map(lambda _: REPLICATED, t)
      return tree._replace(
          step=REPLICATED, dense_params=rep(tree.dense_params),
          dense_opt_state=rep(tree.dense_opt_state),
          tables=jax.tree_util.tree_map(spec, tree.tables),
          table_opt_state=jax.tree_util.tree_map(spec, tree.table_opt_state),
          nonfinite=REPLICATED)
    return spec(tree)

  return jax.tree_util.tree_map(one, state, is_leaf=lambda x: isinstance(x, TrainState))


def state_shardings(state, mesh: Mesh, num_rows: int):
  """``NamedSharding`` per leaf of ``state`` (see :func:`state_specs`)."""
  return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), state_specs(state, num_rows),
                                is_leaf=lambda x: isinstance(x, P))


def row_leaves(state, num_rows: int):
  """A tree like ``state`` with True at its row leaves (row-sharded by :func:`state_specs`)."""
  return jax.tree_util.tree_map(lambda s: s == ROWS, state_specs(state, num_rows),
                                is_leaf=lambda x: isinstance(x, P))


def _train_state(state) -> TrainState:
  found = [x for x in jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, TrainState))
           if isinstance(x, TrainState)]
  if len(found) != 1:
    raise ValueError(f"shard_state: the state holds {len(found)} TrainStates, expected 1")
  return found[0]


def shard_state(state, mesh: Mesh, num_rows: int):
  """Places ``state`` (any run state, see :func:`state_specs`) on ``mesh``; its
  tables must already have ``num_rows`` = padded rows."""
  for name, t in _train_state(state).tables.items():
    if t.shape[0] != num_rows or num_rows % mesh_size(mesh):
      raise ValueError(f"table {name!r} has {t.shape[0]} rows; sharding needs "
                       f"{num_rows} rows, a multiple of {mesh_size(mesh)} devices")
  return jax.device_put(state, state_shardings(state, mesh, num_rows))


# Device keys of a batch that are per batch, not per row: replicated, not split over
# ``data`` (the batch's distinct ids; the id map's rows to reset; the serving
# copy's sync flags).
REPLICATED_KEYS = frozenset({"unique", "reset_rows", "reset_gen", "sync_tables", "sync_dense"})


def batch_specs(keys: Sequence[str], stacked: bool = True) -> Dict[str, P]:
  """Per device key: batch axis over ``data``; :data:`REPLICATED_KEYS` replicated."""
  lead = (None,) if stacked else ()
  return {k: P(*lead) if k in REPLICATED_KEYS else P(*lead, "data") for k in keys}


def batch_shardings(mesh: Mesh, keys: Sequence[str], stacked: bool = True):
  return {k: NamedSharding(mesh, s) for k, s in batch_specs(keys, stacked).items()}


def owned_ids(rows_local: int, ids):
  """Inside ``shard_map``: global row ids as ids into this device's ``rows_local``
  rows (it owns ``[d rows_local, (d+1) rows_local)``), ``rows_local`` elsewhere."""
  first = jax.lax.axis_index(AXES) * rows_local
  owned = (ids >= first) & (ids < first + rows_local)
  return jnp.where(owned, ids - first, rows_local)   # rows_local: never read/written


def data_share(batch):
  """This device's share ``n_local / n`` of the global batch's weighted rows."""
  n_local = jnp.sum((batch["weight"] > 0).astype(jnp.float32))
  n_global = jax.lax.psum(n_local, "data")
  return n_local / jnp.maximum(n_global, 1.0)


def _psum_mesh(tree):
  return jax.lax.psum(tree, AXES)


def _psum_data(tree):
  return jax.lax.psum(tree, "data")


# Row-sharded tables, data-parallel batch (inside shard_map over AXES): each
# device gathers the rows it owns (zeros elsewhere) and one psum over the mesh
# assembles U x W rows everywhere; gradients are summed over ``data``.
SHARDED = Placement(local_ids=owned_ids, combine=_psum_mesh, loss_scale=data_share,
                    reduce=_psum_data)


def make_sharded_train_step(model, dense_opt: optax.GradientTransformation,
                            sparse_opts: Dict[str, SparseOptimizer],
                            loss_fn: Callable = weighted_logloss, train_dense: bool = True,
                            train_tables: bool = True) -> Callable:
  """The per-device body of one step (runs inside ``shard_map`` over :data:`AXES`).

  :func:`rectrain.train.step.make_train_step` on the :data:`SHARDED`
  placement: the state's tables are this device's row shard and the batch
  this device's rows (``unique`` global). See the module docstring for the
  collectives.
  """
  return make_train_step(model, dense_opt, sparse_opts, loss_fn, train_dense, train_tables,
                         placement=SHARDED)


def make_sharded_multi_step(step: Callable, mesh: Mesh, state: TrainState, num_rows: int,
                            keys: Sequence[str], donate: bool = True) -> Callable:
  """Jits ``K`` sharded steps per dispatch: ``multi(state, batches) -> (state, outputs)``.

  ``step`` comes from :func:`make_sharded_train_step`; ``state`` (any state
  of the run, for its tree structure) and ``num_rows`` (padded table rows)
  give the state's specs; ``keys`` are the batch's device keys. Outputs:
  ``preds_B`` stacked ``(K, B)`` sharded over ``data``; the rest replicated.
  """
  s_specs = state_specs(state, num_rows)
  b_specs = batch_specs(keys, stacked=True)
  out_specs = (s_specs, StepOutput(P(None, "data"), P(), P(), P(), P()))

  def multi(state, batches):
    return jax.lax.scan(step, state, batches)

  sharded = jax.shard_map(multi, mesh=mesh, in_specs=(s_specs, b_specs), out_specs=out_specs,
                          check_vma=False)
  return jax.jit(sharded, donate_argnums=(0,) if donate else ())


def make_sharded_predict(model, mesh: Mesh, state: TrainState, num_rows: int,
                         keys: Sequence[str]) -> Callable:
  """``predict(dense_params, tables, batch) -> probabilities_B`` on the sharded tables."""
  specs = state_specs(state, num_rows)
  sharded = jax.shard_map(make_predict_fn(model, SHARDED), mesh=mesh,
                          in_specs=(specs.dense_params, specs.tables,
                                    batch_specs(keys, stacked=False)),
                          out_specs=P("data"), check_vma=False)
  return jax.jit(sharded)


COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "reduce-scatter", "collective-permute")
_DTYPE_BYTES = {"f32": 4, "s32": 4, "u32": 4, "f16": 2, "bf16": 2, "f64": 8, "s64": 8,
                "pred": 1, "s8": 1, "u8": 1}


def collective_bytes(hlo_text: str) -> Dict[str, int]:
  """Bytes of the results of each kind of collective in a compiled HLO module.

  A collective inside the scan's while loop is counted once, i.e. per step.
  For an all-reduce the result size is what each device contributes and
  receives (times the algorithm's constant), the quantity that scales.
  """
  import re
  out = {k: 0 for k in COLLECTIVES}
  for line in hlo_text.splitlines():
    for kind in COLLECTIVES:
      for op in (f" {kind}(", f" {kind}-start("):
        if op in line and "=" in line.split(op, 1)[0]:
          head = line.split(op, 1)[0].split("=", 1)[1]
          for dt, dims in re.findall(r"(\w+)\[([\d,]*)\]", head):
            if dt in _DTYPE_BYTES:
              n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
              out[kind] += n * _DTYPE_BYTES[dt]
  return out


def put_batches(batches: Dict[str, np.ndarray], mesh: Mesh, stacked: bool = True):
  """Places host batches on the mesh (single process: every device is addressable)."""
  shard = batch_shardings(mesh, list(batches), stacked)
  return {k: jax.device_put(v, shard[k]) for k, v in batches.items()}
