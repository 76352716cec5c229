"""Delay compensation for asynchronous SGD (DC-ASGD; Zheng et al. 2017,
"Asynchronous Stochastic Gradient Descent with Delay Compensation", ICML).

A gradient g computed at stale parameters w_bak is applied at the current
parameters w. DC-ASGD corrects it with a first-order Taylor term and the
diagonal Hessian approximation lambda * g * g:

  g_dc = g + lambda * g * g * (w - w_bak)

Adaptive variant (DC-ASGD-a, the paper's Algorithm 3 at the server): first
update the mean square, then scale lambda by its inverse root:

  ms     <- mean_square_decay * ms + (1 - mean_square_decay) * g^2
  g_dc   =  g + lambda / sqrt(ms + eps) * g * g * (w - w_bak)

ms starts at 0. The paper uses lambda_0 = 0.04 for DC-ASGD-c and a larger
lambda_0 (2) for the adaptive variant on CIFAR-10; pick it per study.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rectrain.optim import _common


def delay_compensation_math(g, w, w_stale, ms, lambda_, adaptive, mean_square_decay, eps):
  """Compensated gradient; returns ``(g_dc, new_ms)`` (``ms`` unchanged if not adaptive)."""
  if adaptive:
    ms = mean_square_decay * ms + (1.0 - mean_square_decay) * jnp.square(g)
    lam = lambda_ * jax.lax.rsqrt(ms + eps)
  else:
    lam = lambda_
  g_dc = g + lam * g * g * (w - w_stale)
  return g_dc.astype(g.dtype), ms


class DelayCompensationState(NamedTuple):
  mean_square: Any  # like params when adaptive, else ()


def delay_compensation(lambda_: float = 0.04, adaptive: bool = False,
                       mean_square_decay: float = 0.95,
                       eps: float = 1e-7) -> optax.GradientTransformationExtraArgs:
  """DC-ASGD gradient correction; chain it before any optimizer.

  ``update(grads, state, params, stale_params=...)``: ``params`` are the current
  parameters, ``stale_params`` those the gradient was computed at. With
  ``stale_params == params`` the gradient is unchanged.

  Args:
    lambda_: lambda (the paper's lambda_0 in the adaptive variant), >= 0.
    adaptive: DC-ASGD-a, lambda / sqrt(EMA of g^2 + eps).
    mean_square_decay: EMA decay of g^2 (the paper's m).
    eps: added inside the sqrt.

  Example::

    opt = optax.chain(delay_compensation(0.04), optax.sgd(0.1))
    updates, state = opt.update(grads, state, params, stale_params=old_params)
  """
  _common.check_positive("delay_compensation: lambda_", lambda_, True)
  if not 0.0 <= float(mean_square_decay) <= 1.0:
    raise ValueError(f"delay_compensation: mean_square_decay must be in [0, 1], "
                     f"got {mean_square_decay!r}")

  def init_fn(params):
    if adaptive:
      return DelayCompensationState(mean_square=jax.tree.map(jnp.zeros_like, params))
    return DelayCompensationState(mean_square=())

  def update_fn(updates, state, params=None, *, stale_params=None, **extra_args):
    del extra_args
    if params is None or stale_params is None:
      raise ValueError("delay_compensation: update needs params and stale_params=")
    if adaptive:
      g_dc, ms = _common.tree_map_multi(
          lambda g, w, ws, ms_: delay_compensation_math(
              g, w, ws, ms_, lambda_, True, mean_square_decay, eps),
          2, updates, params, stale_params, state.mean_square)
      return g_dc, DelayCompensationState(mean_square=ms)
    g_dc = jax.tree.map(
        lambda g, w, ws: delay_compensation_math(g, w, ws, None, lambda_, False,
                                                 mean_square_decay, eps)[0],
        updates, params, stale_params)
    return g_dc, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
