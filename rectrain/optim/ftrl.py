"""FTRL-Proximal (McMahan et al. 2013, "Ad Click Prediction: a View from the
Trenches", Algorithm 1) with the exact semantics of ``tf.keras.optimizers.Ftrl``
(keras/src/optimizers/ftrl.py) and TensorFlow's ``ApplyFtrlV2`` op as
documented.

Per coordinate, with n the squared-gradient accumulator, z the "linear"
accumulator, p = learning_rate_power (<= 0), lr the learning rate:

  g_s    = g + 2 * l2_shrinkage * w                (shrinkage-type L2)
  n'     = n + g^2                                 (raw g, not g_s)
  sigma  = (n'^(-p) - n^(-p)) / lr
  z'     = z + g_s - sigma * w
  q      = n'^(-p) / lr + 2 * (l2 + beta / (2 * lr))
  w'     = (clip(z', -l1, l1) - z') / q            (exactly 0 where |z'| <= l1)

With p = -0.5 this is the paper's w = -(z - sign(z) l1) / ((beta + sqrt(n)) / lr
+ l2) (the paper's lambda_2 is 2 * l2 here). Initial state: n = 
initial_accumulator_value, z = 0.

Note: n accumulates the raw g^2, not g_s^2. Some copies of TF's C++ FTRL-V2
functor found in public sources accumulate g_s^2 instead (this only matters when
l2_shrinkage > 0); the op documentation, Keras 3, and the kernel of
tensorflow-cpu 2.21 (checked by tests/data/ftrl_tf_golden.py, whose output the
tests hard-code) all use g^2.

Equivalences (l1 = l2 = l2_shrinkage = beta = 0, starting from w = 0):
* p = -0.5: AdaGrad w <- w - lr * g / sqrt(n') with the same initial n.
* p = 0:    SGD w <- w - lr * g.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rectrain.optim import _common


def _pow_neg(x, learning_rate_power):
  """x^(-p); p = -0.5 uses sqrt (as TF does) so the common case is exact."""
  if learning_rate_power == -0.5:
    return jnp.sqrt(x)
  return jnp.power(x, -learning_rate_power)


def ftrl_math(g, w, z, n, lr, learning_rate_power, l1, l2, l2_shrinkage, beta):
  """One FTRL-Proximal step per coordinate (formula in the module docstring).

  Returns:
    ``(new_w, new_z, new_n)``.
  """
  g_shrunk = g + 2.0 * l2_shrinkage * w
  new_n = n + jnp.square(g)
  new_n_pow = _pow_neg(new_n, learning_rate_power)
  sigma = (new_n_pow - _pow_neg(n, learning_rate_power)) / lr
  new_z = z + (g_shrunk - sigma * w)
  quadratic = new_n_pow / lr + 2.0 * (l2 + beta / (2.0 * lr))
  new_w = (jnp.clip(new_z, -l1, l1) - new_z) / quadratic
  return new_w.astype(w.dtype), new_z, new_n


def _check(learning_rate_power, initial_accumulator_value, l1, l2, l2_shrinkage, beta):
  if callable(learning_rate_power) or float(learning_rate_power) > 0:
    raise ValueError(f"ftrl: learning_rate_power must be a float <= 0, got "
                     f"{learning_rate_power!r}")
  _common.check_positive("ftrl: initial_accumulator_value", initial_accumulator_value, True)
  _common.check_positive("ftrl: l1", l1, True)
  _common.check_positive("ftrl: l2", l2, True)
  _common.check_positive("ftrl: l2_shrinkage", l2_shrinkage, True)
  _common.check_positive("ftrl: beta", beta, True)


class FtrlState(NamedTuple):
  count: jax.Array  # int32, updates applied so far (for learning-rate schedules)
  z: Any            # "linear" accumulator, like params
  n: Any            # squared-gradient accumulator, like params


def ftrl(learning_rate: _common.ScalarOrSchedule,
         learning_rate_power: float = -0.5,
         initial_accumulator_value: float = 0.1,
         l1: float = 0.0,
         l2: float = 0.0,
         l2_shrinkage: float = 0.0,
         beta: float = 0.0) -> optax.GradientTransformation:
  """FTRL-Proximal as an optax transform (Keras/TF semantics, see module docstring).

  FTRL computes the new weight from (z, n), not from a scaled gradient, so the
  returned update is ``new_w - w`` and ``update`` needs ``params``. With
  ``optax.apply_updates`` coordinates with |z| <= l1 become exactly 0.

  Row-wise on a table (:mod:`rectrain.optim.sparse`) untouched rows are
  skipped. Under the dense rule a zero gradient leaves (z, n) unchanged and
  recomputes w from them, a no-op for a weight already produced by FTRL (or
  one that starts at 0, the usual FTRL initialisation) when l2_shrinkage = 0;
  so skipping untouched rows equals the dense rule in that case (TF's
  SparseApplyFtrlV2 also skips them).

  Args:
    learning_rate: alpha, a float or a schedule of the step count.
    learning_rate_power: p <= 0; -0.5 is AdaGrad-like, 0 a fixed rate.
    initial_accumulator_value: initial n (>= 0).
    l1: L1 strength lambda_1 (weights with |z| <= l1 are exactly 0).
    l2: online (stabilisation) L2 strength; enters q as 2 * l2.
    l2_shrinkage: L2 added to the loss: g_s = g + 2 * l2_shrinkage * w.
    beta: the paper's beta; enters q as beta / lr.
  """
  _check(learning_rate_power, initial_accumulator_value, l1, l2, l2_shrinkage, beta)

  def init_fn(params):
    return FtrlState(
        count=jnp.zeros([], jnp.int32),
        z=jax.tree.map(jnp.zeros_like, params),
        n=jax.tree.map(lambda p: jnp.full(p.shape, initial_accumulator_value, p.dtype),
                       params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("ftrl: update needs params (FTRL computes the new weight "
                       "from its accumulators)")
    lr = _common.lr_at(learning_rate, state.count)
    new_w, z, n = _common.tree_map_multi(
        lambda g, w, z_, n_: ftrl_math(g, w, z_, n_, lr.astype(w.dtype),
                                       learning_rate_power, l1, l2, l2_shrinkage, beta),
        3, updates, params, state.z, state.n)
    deltas = jax.tree.map(lambda nw, w: nw - w, new_w, params)
    return deltas, FtrlState(count=_common.safe_int32_increment(state.count), z=z, n=n)

  return optax.GradientTransformation(init_fn, update_fn)
