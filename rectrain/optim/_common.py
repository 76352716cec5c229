"""Small helpers shared by the optimizer modules (no flax, no state)."""

from __future__ import annotations

from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
import optax

ScalarOrSchedule = Union[float, jax.Array, Callable[[jax.Array], jax.Array]]


def lr_at(learning_rate: ScalarOrSchedule, step: jax.Array) -> jax.Array:
  """The learning rate at ``step`` (number of updates applied so far)."""
  if callable(learning_rate):
    return jnp.asarray(learning_rate(step))
  return jnp.asarray(learning_rate)


def row_axes(ndim: int) -> tuple:
  """Axes reduced by row-wise statistics: every axis but the leading one."""
  return tuple(range(1, ndim))


def row_stat_shape(shape: tuple) -> tuple:
  """Shape of a per-row statistic of a leaf of ``shape``.

  A leaf of shape (R, d1, ..., dk) gets (R, 1, ..., 1) (same rank, so it
  broadcasts without rank promotion); a 1-D leaf (R,) gets (R,), i.e. each
  coordinate is its own row; a scalar gets ().
  """
  if len(shape) <= 1:
    return tuple(shape)
  return (shape[0],) + (1,) * (len(shape) - 1)


def safe_int32_increment(count: jax.Array) -> jax.Array:
  return optax.safe_int32_increment(count)


def check_positive(name: str, value: Any, allow_zero: bool = False) -> None:
  """Raises ValueError naming ``name`` if a (static) hyperparameter is out of range."""
  if callable(value) or isinstance(value, jax.core.Tracer):
    return
  v = float(value)
  if v < 0 or (v == 0 and not allow_zero):
    raise ValueError(f"{name} must be {'>=' if allow_zero else '>'} 0, got {value!r}")


def tree_map_multi(fn: Callable, num_out: int, tree: Any, *rest: Any) -> tuple:
  """Maps ``fn`` (returning a ``num_out``-tuple) over leaves; returns ``num_out`` trees."""
  leaves, treedef = jax.tree.flatten(tree)
  rest_leaves = [treedef.flatten_up_to(r) for r in rest]
  outs = [fn(*args) for args in zip(leaves, *rest_leaves)]
  return tuple(treedef.unflatten([o[i] for o in outs]) for i in range(num_out))
