"""Lazy row-wise Adam for embedding tables.

Dense Adam is ``optax.adam`` (Kingma & Ba 2015). Its row-wise application
follows TF's LazyAdam and FBGEMM's sparse ``adam`` kernel
(pytorch/FBGEMM ``embedding_backward_code_generator.py``): only touched rows
update m and v (untouched rows' moments are frozen, not decayed), and the bias
correction uses the *global* step t = step + 1:

  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
  w <- w - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t) + eps_root) + eps)

When every row is touched at every step this equals ``optax.adam`` exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rectrain.optim import _common
from rectrain.optim.sparse import SparseOptimizer


def adam_math(g, m, v, step, b1, b2, eps, eps_root):
  """Adam direction with global-step bias correction; returns ``(direction, m, v)``."""
  t = (step + 1).astype(g.dtype)
  new_m = b1 * m + (1.0 - b1) * g
  new_v = b2 * v + (1.0 - b2) * jnp.square(g)
  m_hat = new_m / (1.0 - b1 ** t)
  v_hat = new_v / (1.0 - b2 ** t)
  direction = m_hat / (jnp.sqrt(v_hat + eps_root) + eps)
  return direction.astype(g.dtype), new_m, new_v


class AdamRows(NamedTuple):
  m: jax.Array  # (N, W)
  v: jax.Array  # (N, W)


def adam_sparse(learning_rate: _common.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
                eps: float = 1e-8, eps_root: float = 0.0) -> SparseOptimizer:
  """Lazy Adam on table rows (defaults as optax.adam); state m, v of shape (N, W)."""
  for name, value in (("b1", b1), ("b2", b2)):
    if not 0.0 <= float(value) < 1.0:
      raise ValueError(f"adam_sparse: {name} must be in [0, 1), got {value!r}")

  def init(table_NxW):
    return AdamRows(m=jnp.zeros_like(table_NxW), v=jnp.zeros_like(table_NxW))

  def update(grad_UxW, param_UxW, rows, step):
    direction_UxW, m, v = adam_math(grad_UxW, rows.m, rows.v, step, b1, b2, eps, eps_root)
    lr = _common.lr_at(learning_rate, step).astype(param_UxW.dtype)
    return param_UxW - lr * direction_UxW, AdamRows(m=m, v=v)

  return SparseOptimizer(init, update)
