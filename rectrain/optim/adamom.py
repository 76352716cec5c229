"""AdaMom (ByteDance Monolith).

Per coordinate, with theta the weight (Monolith, ``monolith/native_training/
optimizers/cc/kernels/training_ops.cc``, ``ApplyAdamom`` / ``ApplyAdamomV2``;
Python wrapper ``optimizers/adamom.py``, defaults lr=5e-6, ada_decay=0.9999,
mom_decay=0.99, epsilon=1e-6, weight_decay=0):

  g      = grad + weight_decay * theta
  m      = mom_decay * m + (1 - mom_decay) * g
  v      = ada_decay * v + g^2
  c      = ada_decay * c + 1
  theta -= lr * m / sqrt(v / c + eps)          (eps_inside_sqrt=True, ApplyAdamom)
  theta -= lr * m / (sqrt(v / c) + eps)        (eps_inside_sqrt=False, ApplyAdamomV2)

m, v, c start at 0. v / c is a decayed *average* of g^2 (with ada_decay = 1 it
is the running mean), so recent gradients weigh more than in AdaGrad.

State layout: Monolith keeps c per coordinate; all coordinates of a row are
updated together, so their c are equal and we keep one c per row (the leading
axis: shape (R, 1, ..., 1) for an (R, ...) leaf, (R,) for a 1-D leaf, () for a
scalar; :func:`rectrain.optim._common.row_stat_shape`). Densely every row is
updated at every step, so all c of a leaf are equal (the same numbers as
Monolith's). Row-wise on a table (:mod:`rectrain.optim.sparse`) c counts the
decayed updates *that row* has received: the application is lazy, i.e. an
untouched row's m, v, c are frozen (not decayed) until it is touched again.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rectrain.optim import _common


def adamom_math(g, w, m, v, c, ada_decay, mom_decay, epsilon, weight_decay,
                eps_inside_sqrt):
  """One AdaMom step; returns ``(direction, m, v, c)`` (direction to be scaled by -lr).

  ``c`` is per row, broadcastable against ``g`` (e.g. (U, 1) for (U, W)).
  """
  g = g + weight_decay * w
  new_m = mom_decay * m + (1.0 - mom_decay) * g
  new_v = ada_decay * v + jnp.square(g)
  new_c = ada_decay * c + 1.0
  if eps_inside_sqrt:
    direction = new_m * jax.lax.rsqrt(new_v / new_c + epsilon)
  else:
    direction = new_m / (jnp.sqrt(new_v / new_c) + epsilon)
  return direction.astype(w.dtype), new_m, new_v, new_c


def _check(ada_decay, mom_decay, epsilon, weight_decay):
  for name, value in (("ada_decay", ada_decay), ("mom_decay", mom_decay)):
    if not 0.0 <= float(value) <= 1.0:
      raise ValueError(f"adamom: {name} must be in [0, 1], got {value!r}")
  _common.check_positive("adamom: epsilon", epsilon, True)
  _common.check_positive("adamom: weight_decay", weight_decay, True)


class ScaleByAdamomState(NamedTuple):
  m: Any  # like params
  v: Any  # like params
  c: Any  # per leaf: one per row, shape row_stat_shape(leaf.shape)


def scale_by_adamom(ada_decay: float = 0.9999, mom_decay: float = 0.99,
                    epsilon: float = 1e-6, weight_decay: float = 0.0,
                    eps_inside_sqrt: bool = True) -> optax.GradientTransformation:
  """Scales by AdaMom's ``m / sqrt(v/c + eps)`` (see module docstring); needs params
  when ``weight_decay`` > 0."""
  _check(ada_decay, mom_decay, epsilon, weight_decay)

  def init_fn(params):
    return ScaleByAdamomState(
        m=jax.tree.map(jnp.zeros_like, params),
        v=jax.tree.map(jnp.zeros_like, params),
        c=jax.tree.map(lambda p: jnp.zeros(_common.row_stat_shape(p.shape), p.dtype),
                       params))

  def update_fn(updates, state, params=None):
    if params is None:
      if weight_decay:
        raise ValueError("scale_by_adamom: weight_decay > 0 needs params in update")
      params = jax.tree.map(jnp.zeros_like, updates)
    direction, m, v, c = _common.tree_map_multi(
        lambda g, w, m_, v_, c_: adamom_math(g, w, m_, v_, c_, ada_decay, mom_decay,
                                             epsilon, weight_decay, eps_inside_sqrt),
        4, updates, params, state.m, state.v, state.c)
    return direction, ScaleByAdamomState(m=m, v=v, c=c)

  return optax.GradientTransformation(init_fn, update_fn)


def adamom(learning_rate: _common.ScalarOrSchedule = 5e-6, ada_decay: float = 0.9999,
           mom_decay: float = 0.99, epsilon: float = 1e-6, weight_decay: float = 0.0,
           eps_inside_sqrt: bool = True) -> optax.GradientTransformation:
  """AdaMom (Monolith): ``theta -= lr * m / sqrt(v/c + eps)``, see module docstring."""
  return optax.chain(
      scale_by_adamom(ada_decay, mom_decay, epsilon, weight_decay, eps_inside_sqrt),
      optax.scale_by_learning_rate(learning_rate))
