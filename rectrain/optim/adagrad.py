"""AdaGrad, per coordinate and row-wise.

Row-wise AdaGrad keeps ONE accumulator per embedding row instead of one per
coordinate (W times less optimizer memory on the largest tensor). It follows
FBGEMM's ``EXACT_ROWWISE_ADAGRAD`` (pytorch/FBGEMM,
``fbgemm_gpu/codegen/embedding_backward_code_generator.py``, ``rowwise_adagrad``;
used by TorchRec): with D the row width,

  acc_r  <- acc_r + (1/D) sum_d g_rd^2          (mean of g^2 over the row)
  w_rd   <- w_rd - lr * g_rd / (sqrt(acc_r) + eps)

FBGEMM initialises the accumulator (``momentum1``) to 0 and uses eps = 1e-8;
these are the defaults here.

Per-coordinate AdaGrad (Duchi et al. 2011) follows optax.adagrad / Keras 3:
``acc <- acc + g^2; w <- w - lr * g / sqrt(acc + eps)`` (0 where acc == 0),
accumulator initialised to 0.1, eps = 1e-7.

Both are optax transforms; on tables they run row-wise
(:mod:`rectrain.optim.sparse`), where a (N, W) table has N accumulators (N, 1).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rectrain.optim import _common


# ----------------------------------------------------------------------------
# Per-coordinate math.
# ----------------------------------------------------------------------------

def rowwise_adagrad_math(g, acc, eps):
  """Row-wise AdaGrad direction (to be scaled by -lr).

  Args:
    g: gradient, leading axis = rows (shape (R, ...)).
    acc: per-row accumulator, shape ``row_stat_shape(g.shape)``.
    eps: added to sqrt(acc).

  Returns:
    ``(direction, new_acc)`` with ``new_acc = acc + mean_row(g^2)`` and
    ``direction = g / (sqrt(new_acc) + eps)``.
  """
  g_sq_mean = jnp.mean(jnp.square(g), axis=_common.row_axes(g.ndim), keepdims=True)
  new_acc = acc + g_sq_mean.astype(acc.dtype)
  direction = g / (jnp.sqrt(new_acc) + eps)
  return direction.astype(g.dtype), new_acc


def adagrad_math(g, acc, eps):
  """Per-coordinate AdaGrad direction: ``g / sqrt(acc + g^2 + eps)`` (0 where acc is 0)."""
  new_acc = acc + jnp.square(g)
  direction = jnp.where(new_acc > 0, g * jax.lax.rsqrt(new_acc + eps), 0.0)
  return direction.astype(g.dtype), new_acc


# ----------------------------------------------------------------------------
# Dense optax transforms.
# ----------------------------------------------------------------------------

class ScaleByRowwiseAdagradState(NamedTuple):
  accumulator: Any  # per leaf: shape row_stat_shape(leaf.shape)


def scale_by_rowwise_adagrad(initial_accumulator_value: float = 0.0,
                             eps: float = 1e-8) -> optax.GradientTransformation:
  """Scales by 1 / (sqrt(acc_row) + eps), acc_row = running sum of row-mean g^2.

  The row is the leading axis of each leaf: a (R, d1, ..., dk) leaf has R
  accumulators, shape (R, 1, ..., 1). A 1-D leaf (R,) has one accumulator per
  coordinate (each coordinate is a row of width 1, i.e. plain AdaGrad with eps
  outside the sqrt); a scalar leaf has one.

  Args:
    initial_accumulator_value: starting accumulator (FBGEMM: 0).
    eps: added to sqrt(acc) (FBGEMM: 1e-8).
  """
  _common.check_positive("initial_accumulator_value", initial_accumulator_value, True)

  def init_fn(params):
    return ScaleByRowwiseAdagradState(accumulator=jax.tree.map(
        lambda p: jnp.full(_common.row_stat_shape(p.shape), initial_accumulator_value,
                           dtype=p.dtype), params))

  def update_fn(updates, state, params=None):
    del params
    direction, acc = _common.tree_map_multi(
        lambda g, a: rowwise_adagrad_math(g, a, eps), 2, updates, state.accumulator)
    return direction, ScaleByRowwiseAdagradState(accumulator=acc)

  return optax.GradientTransformation(init_fn, update_fn)


def rowwise_adagrad(learning_rate: _common.ScalarOrSchedule,
                    initial_accumulator_value: float = 0.0,
                    eps: float = 1e-8) -> optax.GradientTransformation:
  """Row-wise AdaGrad (FBGEMM EXACT_ROWWISE_ADAGRAD), see module docstring.

  ``w <- w - lr * g / (sqrt(acc_row) + eps)``, ``acc_row += mean_row(g^2)``.
  """
  return optax.chain(scale_by_rowwise_adagrad(initial_accumulator_value, eps),
                     optax.scale_by_learning_rate(learning_rate))


class ScaleByAdagradState(NamedTuple):
  sum_of_squares: Any


def scale_by_adagrad(initial_accumulator_value: float = 0.1,
                     eps: float = 1e-7) -> optax.GradientTransformation:
  """Scales by 1 / sqrt(sum of squared gradients + eps); equals optax.scale_by_rss."""
  _common.check_positive("initial_accumulator_value", initial_accumulator_value, True)

  def init_fn(params):
    return ScaleByAdagradState(sum_of_squares=jax.tree.map(
        lambda p: jnp.full(p.shape, initial_accumulator_value, dtype=p.dtype), params))

  def update_fn(updates, state, params=None):
    del params
    direction, acc = _common.tree_map_multi(
        lambda g, a: adagrad_math(g, a, eps), 2, updates, state.sum_of_squares)
    return direction, ScaleByAdagradState(sum_of_squares=acc)

  return optax.GradientTransformation(init_fn, update_fn)


def adagrad(learning_rate: _common.ScalarOrSchedule,
            initial_accumulator_value: float = 0.1,
            eps: float = 1e-7) -> optax.GradientTransformation:
  """AdaGrad (Duchi et al. 2011): ``w <- w - lr * g / sqrt(acc + eps)``, ``acc += g^2``.

  Same semantics and defaults as optax.adagrad / Keras 3 Adagrad.
  """
  return optax.chain(scale_by_adagrad(initial_accumulator_value, eps),
                     optax.scale_by_learning_rate(learning_rate))
