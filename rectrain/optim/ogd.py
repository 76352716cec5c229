"""Online gradient descent (OGD).

OGD (Zinkevich 2003; the baseline in McMahan et al. 2013, "Ad Click Prediction:
a View from the Trenches"): with t = step + 1 the 1-based step,

  w <- w - (lr / sqrt(t)) * (g + l1 * sign(w))

``l1 * sign(w)`` is a subgradient of ``l1 * |w|``; as the domain notes, it
rarely produces exact zeros (that is what FTRL's proximal step is for).

Row-wise on a table t counts the table's updates (a global count, not per row).
Plain SGD is ``optax.sgd``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from rectrain.optim import _common


def ogd_math(g, w, step, l1):
  """OGD direction ``(g + l1 * sign(w)) / sqrt(step + 1)`` (to be scaled by -lr)."""
  t = (step + 1).astype(g.dtype)
  direction = (g + l1 * jnp.sign(w)) / jnp.sqrt(t)
  return direction.astype(g.dtype)


class ScaleByOgdState(NamedTuple):
  count: jax.Array  # int32, number of updates applied so far


def scale_by_ogd(l1: float = 0.0) -> optax.GradientTransformation:
  """Scales by 1/sqrt(t) after adding the L1 subgradient ``l1 * sign(w)``; needs params."""
  _common.check_positive("l1", l1, allow_zero=True)

  def init_fn(params):
    del params
    return ScaleByOgdState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("scale_by_ogd: update needs params (for the l1 * sign(w) term)")
    direction = jax.tree.map(lambda g, w: ogd_math(g, w, state.count, l1), updates, params)
    return direction, ScaleByOgdState(count=_common.safe_int32_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def ogd(learning_rate: _common.ScalarOrSchedule, l1: float = 0.0) -> optax.GradientTransformation:
  """OGD: ``w <- w - lr/sqrt(t) * (g + l1 * sign(w))``, t the 1-based step."""
  return optax.chain(scale_by_ogd(l1), optax.scale_by_learning_rate(learning_rate))
