"""Simulating asynchronous (parameter-server) training: stale parameters.

In asynchronous training a gradient applied at server step t was computed on
parameters theta_{t - tau_t} that are tau_t updates old. To simulate this in a
single process:

  buf = stale_params_init(params, capacity=K)          # K >= max tau + 1
  for t in steps:                                      # before update t:
    buf = stale_params_push(buf, params)               #   newest = theta_t
    tau = schedule(t)                                  #   0 <= tau <= min(t, K-1)
    stale = stale_params_get(buf, tau)                 #   theta_{t - tau}
    grads = grad(loss)(stale, batch_t)
    updates, opt_state = opt.update(grads, opt_state, params, stale_params=stale)
    params = optax.apply_updates(params, updates)

With tau = 0 this is synchronous training. Everything here is pure and
jit-friendly (tau may be traced). The buffer holds K copies of the pytree, so
use it for dense parameters or small tables.

Staleness models (``schedule(step) -> int32 tau``; step = updates applied so far):

* :func:`fixed_staleness` (tau): tau_t = min(tau, t).
* :func:`round_robin_staleness` (W workers): the server applies pushes in
  round-robin order; worker w = t mod W pushes at steps w, w+W, w+2W, ... and
  after each push pulls the parameters theta_{t+1}, computes its next gradient
  on them, and pushes it at step t+W. So the gradient applied at step t was
  computed on theta_{t-W+1}: tau_t = W - 1 in steady state, and tau_t = t for
  the first W steps (every worker starts from theta_0).
* :func:`random_staleness` (seeded): tau_t drawn i.i.d. from a uniform on
  {0..max_tau} or a geometric (P(tau = k) = p (1-p)^k, truncated at max_tau),
  then capped at t. The draw depends only on (key, t), so it is reproducible.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Schedule = Callable[[jax.Array], jax.Array]


class StaleParams(NamedTuple):
  """Ring buffer of the last K parameter snapshots.

  Attributes:
    snapshots: the params pytree, every leaf with a leading axis K.
    head: int32, slot of the newest snapshot.
  """
  snapshots: Any
  head: jax.Array


def stale_params_init(params: Any, capacity: int) -> StaleParams:
  """A buffer of ``capacity`` slots, all holding ``params`` (so any tau reads theta_0
  until enough snapshots have been pushed)."""
  if int(capacity) < 1:
    raise ValueError(f"stale_params_init: capacity must be >= 1, got {capacity!r}")
  snapshots = jax.tree.map(
      lambda p: jnp.broadcast_to(jnp.asarray(p)[None], (capacity,) + jnp.shape(p)), params)
  return StaleParams(snapshots=snapshots, head=jnp.zeros([], jnp.int32))


def stale_params_capacity(buf: StaleParams) -> int:
  return jax.tree.leaves(buf.snapshots)[0].shape[0]


def stale_params_push(buf: StaleParams, params: Any) -> StaleParams:
  """Stores ``params`` as the newest snapshot (overwriting the oldest)."""
  capacity = stale_params_capacity(buf)
  head = (buf.head + 1) % capacity
  snapshots = jax.tree.map(
      lambda s, p: jax.lax.dynamic_update_index_in_dim(s, jnp.asarray(p, s.dtype), head, 0),
      buf.snapshots, params)
  return StaleParams(snapshots=snapshots, head=head.astype(jnp.int32))


def stale_params_get(buf: StaleParams, tau: Any) -> Any:
  """The snapshot pushed ``tau`` pushes before the newest (tau = 0: the newest).

  ``tau`` is clipped to [0, K-1].
  """
  capacity = stale_params_capacity(buf)
  tau = jnp.clip(jnp.asarray(tau, jnp.int32), 0, capacity - 1)
  slot = (buf.head - tau) % capacity
  return jax.tree.map(lambda s: jax.lax.dynamic_index_in_dim(s, slot, 0, keepdims=False),
                      buf.snapshots)


def fixed_staleness(tau: int) -> Schedule:
  """tau_t = min(tau, t)."""
  if int(tau) < 0:
    raise ValueError(f"fixed_staleness: tau must be >= 0, got {tau!r}")

  def schedule(step):
    return jnp.minimum(jnp.asarray(step, jnp.int32), tau)

  return schedule


def round_robin_staleness(num_workers: int) -> Schedule:
  """W workers in round robin: tau_t = min(t, W - 1) (model in the module docstring)."""
  if int(num_workers) < 1:
    raise ValueError(f"round_robin_staleness: num_workers must be >= 1, got {num_workers!r}")
  return fixed_staleness(int(num_workers) - 1)


def round_robin_worker(step: Any, num_workers: int) -> jax.Array:
  """Index of the worker whose gradient is applied at ``step``: t mod W."""
  return jnp.asarray(step, jnp.int32) % num_workers


def random_staleness(key: jax.Array, max_tau: int, distribution: str = "uniform",
                     p: float = 0.5) -> Schedule:
  """Seeded random staleness: uniform on {0..max_tau} or geometric(p) truncated at
  max_tau; capped at t. Deterministic in (key, step)."""
  if int(max_tau) < 0:
    raise ValueError(f"random_staleness: max_tau must be >= 0, got {max_tau!r}")
  if distribution not in ("uniform", "geometric"):
    raise ValueError(f"random_staleness: distribution must be 'uniform' or 'geometric', "
                     f"got {distribution!r}")
  if distribution == "geometric" and not 0.0 < float(p) <= 1.0:
    raise ValueError(f"random_staleness: p must be in (0, 1], got {p!r}")

  def schedule(step):
    step = jnp.asarray(step, jnp.int32)
    k = jax.random.fold_in(key, step)
    if distribution == "uniform":
      tau = jax.random.randint(k, (), 0, max_tau + 1, dtype=jnp.int32)
    else:
      # jax.random.geometric counts trials (>= 1); failures before success = trials - 1.
      tau = jax.random.geometric(k, p, (), dtype=jnp.int32) - 1
      tau = jnp.minimum(tau, max_tau)
    return jnp.minimum(tau, step)

  return schedule
