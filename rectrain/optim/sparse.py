"""Row-wise (sparse) application of optimizers to embedding tables.

An embedding table ``table_NxW`` is touched at only U << N rows per batch. A
:class:`SparseOptimizer` updates just those rows: :func:`sparse_apply` gathers
the rows (and the optimizer state at those rows), runs the optimizer's
per-coordinate math on the ``UxW`` block, and scatters the result back. Cost is
O(U * W); untouched rows and their state are left bit-identical.

Shape legend: N = rows of the table, W = row width (embedding dim),
U = padded number of unique rows touched in the batch.

Padding: ``ids_U`` are unique and padded with ``N`` (out of range). Gathers use
``mode='fill'`` (padding rows read zeros) and scatters ``mode='drop'`` (padding
rows write nothing), so padding can neither read garbage nor write.

Laziness: the state of a row changes only when the row is touched. For methods
with decaying statistics (AdaMom, Adam) this is the *lazy* variant (as in
TF's LazyAdam and FBGEMM's sparse Adam): an untouched row's momentum is frozen,
not decayed, until the row is touched again. When every row is touched at every
step the sparse application equals the dense transform of the same name.

The global ``step`` (number of updates applied so far, starting at 0) is passed
to ``update`` for schedules and step-dependent rules (OGD's 1/sqrt(t), Adam's
bias correction).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class SparseOptimizer(NamedTuple):
  """A row-wise optimizer.

  Attributes:
    init: ``table_NxW -> state``, a pytree whose every leaf has leading dim N.
    update: ``(grad_UxW, param_UxW, state_rows, step) -> (new_param_UxW,
      new_state_rows)``; ``state_rows`` is the state gathered at the touched
      rows (leading dim U) and ``step`` an int32 scalar, the number of updates
      applied so far (0 at the first update).
  """
  init: Callable[[Array], Any]
  update: Callable[..., tuple]


def _check_shapes(table_NxW, state, ids_U, grad_UxW):
  if table_NxW.ndim != 2:
    raise ValueError(f"sparse_apply: table_NxW must be 2-D, got shape {table_NxW.shape}")
  if ids_U.ndim != 1:
    raise ValueError(f"sparse_apply: ids_U must be 1-D, got shape {ids_U.shape}")
  if not jnp.issubdtype(ids_U.dtype, jnp.integer):
    raise ValueError(f"sparse_apply: ids_U must be integer, got dtype {ids_U.dtype}")
  expected = (ids_U.shape[0], table_NxW.shape[1])
  if tuple(grad_UxW.shape) != expected:
    raise ValueError(
        f"sparse_apply: grad_UxW has shape {grad_UxW.shape}, expected {expected} "
        f"(len(ids_U), table width)")
  num_rows = table_NxW.shape[0]
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    if leaf.ndim == 0 or leaf.shape[0] != num_rows:
      raise ValueError(
          f"sparse_apply: state leaf {jax.tree_util.keystr(path)} has shape "
          f"{leaf.shape}; every state leaf needs leading dim N={num_rows}")


def gather_rows(tree: Any, ids_U: Array) -> Any:
  """Rows ``ids_U`` of every leaf; out-of-range ids (padding) read zeros."""
  return jax.tree.map(lambda x: x.at[ids_U].get(mode="fill", fill_value=0), tree)


def scatter_rows(tree: Any, ids_U: Array, rows: Any) -> Any:
  """Writes ``rows`` at ``ids_U`` into every leaf; out-of-range ids are dropped."""
  return jax.tree.map(lambda x, r: x.at[ids_U].set(r.astype(x.dtype), mode="drop"),
                      tree, rows)


def sparse_apply(opt: SparseOptimizer, table_NxW: Array, state: Any, ids_U: Array,
                 grad_UxW: Array, step: Array) -> tuple:
  """Applies ``opt`` to rows ``ids_U`` of ``table_NxW``.

  Args:
    opt: the row-wise optimizer.
    table_NxW: the embedding table.
    state: ``opt.init(table_NxW)`` (or a later state).
    ids_U: unique row ids, padded with N (never read, never written).
    grad_UxW: gradient w.r.t. rows ``ids_U`` (already summed over duplicates).
    step: int32 scalar, number of updates applied so far.

  Returns:
    ``(new_table_NxW, new_state)``; rows not in ``ids_U`` and their state are
    unchanged bit for bit.
  """
  _check_shapes(table_NxW, state, ids_U, grad_UxW)
  param_UxW = gather_rows(table_NxW, ids_U)
  state_rows = gather_rows(state, ids_U)
  new_param_UxW, new_state_rows = opt.update(
      grad_UxW.astype(table_NxW.dtype), param_UxW, state_rows,
      jnp.asarray(step, jnp.int32))
  new_table_NxW = scatter_rows(table_NxW, ids_U, new_param_UxW)
  new_state = scatter_rows(state, ids_U, new_state_rows)
  return new_table_NxW, new_state


SPARSE_NAMES = ("rowwise_adagrad", "adagrad", "ftrl", "adamom", "ogd", "sgd", "adam")


def get_sparse_optimizer(name: str, **kwargs) -> SparseOptimizer:
  """The row-wise optimizer ``name`` (one of ``SPARSE_NAMES``) built with ``kwargs``.

  Each uses the same per-coordinate math as the dense transform of that name
  (see :func:`rectrain.optim.get_optimizer`).
  """
  from rectrain.optim import registry  # local import: registry imports this module
  return registry.get_sparse_optimizer(name, **kwargs)
