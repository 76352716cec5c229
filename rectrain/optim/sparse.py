"""Any optax transform applied row-wise to embedding tables.

An embedding table ``table_NxW`` is touched at only U << N rows per batch.
:func:`sparse_apply` gathers those rows and the optimizer state at those rows,
runs the optimizer's ``update`` (an ordinary ``optax.GradientTransformation``,
the same object that trains dense parameters) on the ``UxW`` block and
scatters the result back. Cost is O(U * W); untouched rows and their state
are left bit-identical. So every optimizer is written once, as an optax
transform, and chains like one: ``optax.chain(optax.clip_by_global_norm(1.0),
rowwise_adagrad(0.05))`` trains a table as it trains an MLP.

Shape legend: N = rows of the table, W = row width (embedding dim),
U = padded number of unique rows touched in the batch.

State leaves. ``tx.init(table_NxW)`` gives the optimizer state of a table.
A leaf whose leading dimension is N (``ndim >= 1``) is a *row leaf* (AdaGrad's
accumulator, Adam's moments, FTRL's z and n): it is gathered and scattered at
the touched rows. Every other leaf is a *global leaf* (optax's step ``count``
of schedules and bias corrections, an ``EmptyState``): it is handed to
``update`` whole and takes the value ``update`` returns, unless the batch is
skipped (``applied`` False). A global leaf must not have leading dim N.

Padding: ``ids_U`` are unique and padded with ``N`` (out of range). Gathers use
``mode='fill'`` (padding rows read zeros) and scatters ``mode='drop'`` (padding
rows write nothing), so padding can neither read garbage nor write.

Laziness: the state of a row changes only when the row is touched. For methods
with decaying statistics (AdaMom, Adam) this is the *lazy* variant (as in
TF's LazyAdam and FBGEMM's sparse Adam): an untouched row's momentum is frozen,
not decayed, until the row is touched again; a global ``count`` (Adam's bias
correction, OGD's 1/sqrt(t), a learning-rate schedule) counts the table's
updates, touched or not. When every row is touched at every step the row-wise
application equals the dense transform of the same name. Transforms that
reduce over a whole leaf see only the touched rows: exact for gradient norms
(``clip_by_global_norm``: untouched rows have zero gradient), not for
parameter norms (LARS / LAMB trust ratios), which then use the touched rows'.

Updates are applied as ``optax.apply_updates`` does (``w + u``), so a rule
that computes the new weight (FTRL: ``u = w' - w``) gives ``w + (w' - w)``,
equal to ``w'`` up to one rounding.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


class SparseOptimizer(NamedTuple):
  """An optax transform applied to table rows (see the module docstring).

  Attributes:
    tx: the transform; ``tx.init(table_NxW)`` is a table's state.
  """
  tx: optax.GradientTransformation

  def init(self, table_NxW: Array) -> Any:
    """The optimizer state of table ``table_NxW`` (row leaves have leading dim N)."""
    return self.tx.init(table_NxW)

  def update(self, grad_UxW: Array, param_UxW: Array, state_rows: Any) -> tuple:
    """``(new_param_UxW, new_state_rows)`` for gathered rows and their state."""
    updates, new_state = self.tx.update(grad_UxW, state_rows, param_UxW)
    return optax.apply_updates(param_UxW, updates), new_state


def rowwise(factory: Callable[..., optax.GradientTransformation]) -> Callable[..., SparseOptimizer]:
  """The row-wise form of an optax optimizer factory: ``rowwise(optax.adam)(1e-3)``.

  Same signature and defaults as ``factory`` (one definition per optimizer).
  """
  @functools.wraps(factory)
  def make(*args, **kwargs) -> SparseOptimizer:
    return SparseOptimizer(factory(*args, **kwargs))

  return make


def is_row_leaf(leaf, num_rows: int) -> bool:
  """True for a state leaf stored per table row (leading dimension ``num_rows``)."""
  shape = getattr(leaf, "shape", ())
  return len(shape) >= 1 and shape[0] == num_rows


def _check_shapes(table_NxW, ids_U, grad_UxW):
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


def _check_state(opt: SparseOptimizer, table_NxW, state):
  """The state must have the structure and row leaves of ``opt.init(table_NxW)``."""
  num_rows = table_NxW.shape[0]
  want = jax.eval_shape(opt.init, table_NxW)
  want_leaves, want_def = jax.tree.flatten(want)
  got_leaves, got_def = jax.tree.flatten(state)
  if got_def != want_def:
    raise ValueError(f"sparse_apply: the state has structure {got_def}, the optimizer's "
                     f"init gives {want_def}")
  for (path, got), w in zip(jax.tree_util.tree_leaves_with_path(state), want_leaves):
    if tuple(got.shape) != tuple(w.shape):
      raise ValueError(f"sparse_apply: state leaf {jax.tree_util.keystr(path)} has shape "
                       f"{tuple(got.shape)}, expected {tuple(w.shape)} for a table of "
                       f"N={num_rows} rows")


def gather_rows(tree: Any, ids_U: Array, num_rows: int | None = None) -> Any:
  """Rows ``ids_U`` of every leaf; out-of-range ids (padding) read zeros.

  With ``num_rows`` only row leaves (leading dim ``num_rows``) are gathered;
  the other leaves pass unchanged.
  """
  def one(x):
    if num_rows is not None and not is_row_leaf(x, num_rows):
      return x
    return x.at[ids_U].get(mode="fill", fill_value=0)
  return jax.tree.map(one, tree)


def scatter_rows(tree: Any, ids_U: Array, rows: Any, num_rows: int | None = None,
                 applied: Array | None = None) -> Any:
  """Writes ``rows`` at ``ids_U`` into every leaf; out-of-range ids are dropped.

  With ``num_rows`` the leaves that are not row leaves take the value in
  ``rows`` (where ``applied``, if given; else they keep their value).
  """
  def one(x, r):
    if num_rows is not None and not is_row_leaf(x, num_rows):
      new = jnp.asarray(r).astype(x.dtype)
      return new if applied is None else jnp.where(applied, new, x)
    return x.at[ids_U].set(r.astype(x.dtype), mode="drop")
  return jax.tree.map(one, tree, rows)


def sparse_apply(opt: SparseOptimizer, table_NxW: Array, state: Any, ids_U: Array,
                 grad_UxW: Array, *, applied: Array | bool = True) -> tuple:
  """Applies ``opt`` to rows ``ids_U`` of ``table_NxW``.

  Args:
    opt: the row-wise optimizer.
    table_NxW: the embedding table.
    state: ``opt.init(table_NxW)`` (or a later state).
    ids_U: unique row ids, padded with N (never read, never written).
    grad_UxW: gradient w.r.t. rows ``ids_U`` (already summed over duplicates).
    applied: bool scalar; False (a skipped or frozen batch, with every id
      padding) also keeps the global leaves (the step count) as they are.

  Returns:
    ``(new_table_NxW, new_state)``; rows not in ``ids_U`` and their state are
    unchanged bit for bit.
  """
  _check_shapes(table_NxW, ids_U, grad_UxW)
  _check_state(opt, table_NxW, state)
  num_rows = table_NxW.shape[0]
  param_UxW = gather_rows(table_NxW, ids_U)
  state_rows = gather_rows(state, ids_U, num_rows)
  new_param_UxW, new_state_rows = opt.update(grad_UxW.astype(table_NxW.dtype), param_UxW,
                                             state_rows)
  applied = jnp.asarray(applied, bool)
  new_table_NxW = scatter_rows(table_NxW, ids_U, new_param_UxW)
  new_state = scatter_rows(state, ids_U, new_state_rows, num_rows, applied)
  return new_table_NxW, new_state


def reset_state_rows(opt: SparseOptimizer, state: Any, rows_R: Array, fresh_RxW: Array,
                     num_rows: int) -> Any:
  """``state`` with rows ``rows_R`` set to the state of fresh rows ``fresh_RxW``.

  Row leaves get ``opt.init(fresh_RxW)`` at ``rows_R`` (padding ids ``N``
  write nothing); global leaves (the step count) are kept.
  """
  fresh_state = opt.init(fresh_RxW)

  def one(x, s):
    if not is_row_leaf(x, num_rows):
      return x
    return x.at[rows_R].set(s.astype(x.dtype), mode="drop")
  return jax.tree.map(one, state, fresh_state)


def get_sparse_optimizer(name: str, **kwargs) -> SparseOptimizer:
  """The row-wise form of optimizer ``name`` (rectrain's own or an optax alias),
  built with ``kwargs`` (see :func:`rectrain.optim.get_optimizer`)."""
  from rectrain.optim import registry  # local import: registry imports this module
  return registry.get_sparse_optimizer(name, **kwargs)
