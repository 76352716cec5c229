"""Building blocks shared by the CTR models.

Shape legend: B batch rows, F categorical fields, I dense (integer) features,
D embedding width, H hidden width, X width of a concatenated input
(``F * D + I``), P number of field pairs.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray

DROPOUT_RNG = "dropout"


class MLP(nn.Module):
  """Dense + ReLU layers: ``h_{k+1} = relu(W_k h_k + b_k)``.

  Attributes:
    features: output width of every layer.
    activate_last: apply the ReLU after the last layer too (False gives a
      linear last layer).
    batch_norm: batch-normalise every hidden pre-activation. Off by default.
      When on, the module has a ``batch_stats`` collection: ``train=True``
      uses batch statistics and must be applied with
      ``mutable=["batch_stats"]``; ``train=False`` uses the running averages.
    dropout_rate: dropout after every ReLU. Off (0) by default. Only active
      with ``train=True``, which then needs an rng named ``"dropout"``
      (``model.apply(..., rngs={"dropout": key})``).
  """

  features: Sequence[int]
  activate_last: bool = True
  batch_norm: bool = False
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x_BxX: Array, train: bool = False) -> Array:
    h = x_BxX
    n = len(self.features)
    for k, width in enumerate(self.features):
      last = k == n - 1
      activate = self.activate_last or not last
      h = nn.Dense(width, name=f"dense_{k}")(h)
      if activate:
        if self.batch_norm:
          h = nn.BatchNorm(use_running_average=not train, momentum=0.99, name=f"bn_{k}")(h)
        h = nn.relu(h)
        if self.dropout_rate > 0.0:
          h = nn.Dropout(self.dropout_rate, rng_collection=DROPOUT_RNG)(h, deterministic=not train)
    return h


class FirstOrder(nn.Module):
  """The LR part: ``bias + sum_f linear_f + dense_BxI @ w_dense``.

  ``bias`` and ``w_dense`` start at 0 (like the ``linear`` table). With
  ``I == 0`` there is no ``w_dense`` parameter.
  """

  @nn.compact
  def __call__(self, linear_BxFx1: Array, dense_BxI: Array) -> Array:
    bias = self.param("bias", nn.initializers.zeros_init(), (), jnp.float32)
    logits_B = jnp.sum(linear_BxFx1, axis=(1, 2)) + bias
    if dense_BxI.shape[1] > 0:
      w_I = self.param("w_dense", nn.initializers.zeros_init(), (dense_BxI.shape[1],),
                       jnp.float32)
      logits_B = logits_B + dense_BxI @ w_I
    return logits_B


def fm_second_order(emb_BxFxD: Array) -> Array:
  """FM pairwise term ``sum_{i<j} <v_i, v_j>`` in O(F D) (Rendle 2010, eq. 5).

  ``sum_{i<j} <v_i, v_j> = 0.5 * sum_d ((sum_f v_fd)^2 - sum_f v_fd^2)``.
  """
  sum_BxD = jnp.sum(emb_BxFxD, axis=1)
  sum_sq_BxD = jnp.sum(emb_BxFxD * emb_BxFxD, axis=1)
  return 0.5 * jnp.sum(sum_BxD * sum_BxD - sum_sq_BxD, axis=1)


def pair_indices(n: int, self_interaction: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Static ``(i, j)`` index arrays of the pairs ``i < j`` (``i <= j`` with self)."""
  return np.triu_indices(n, k=0 if self_interaction else 1)


def dot_interaction(vec_BxNxD: Array, self_interaction: bool = False) -> Array:
  """DLRM dot interaction: ``<t_i, t_j>`` for ``i < j``, row-major order.

  Returns ``(B, P)`` with ``P = N (N - 1) / 2`` (``N (N + 1) / 2`` with
  ``self_interaction``, which adds ``<t_i, t_i>``).
  """
  gram_BxNxN = jnp.einsum("bnd,bmd->bnm", vec_BxNxD, vec_BxNxD)
  i, j = pair_indices(vec_BxNxD.shape[1], self_interaction)
  return gram_BxNxN[:, i, j]


class CrossNetwork(nn.Module):
  """DCN-V2 cross layers (Wang et al. 2021, eq. 1).

  ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l`` with a full-rank ``W_l`` (X x X),
  or with ``low_rank = r > 0`` the mixture-free low-rank form
  ``x_{l+1} = x_0 * (U_l (V_l^T x_l) + b_l) + x_l`` with ``U_l, V_l`` (X x r).
  Parameters per layer: ``X^2 + X`` (full) or ``2 X r + X`` (low rank).
  Submodules: ``cross_{l}`` (kernel ``W_l^T``, bias ``b_l``) or ``cross_{l}_v``
  (kernel ``V_l``) and ``cross_{l}_u`` (kernel ``U_l^T``, bias ``b_l``).
  """

  num_layers: int
  low_rank: int = 0

  @nn.compact
  def __call__(self, x0_BxX: Array) -> Array:
    width = x0_BxX.shape[1]
    x_BxX = x0_BxX
    for l in range(self.num_layers):
      if self.low_rank > 0:
        v_BxR = nn.Dense(self.low_rank, use_bias=False, name=f"cross_{l}_v")(x_BxX)
        w_BxX = nn.Dense(width, name=f"cross_{l}_u")(v_BxR)
      else:
        w_BxX = nn.Dense(width, name=f"cross_{l}")(x_BxX)
      x_BxX = x0_BxX * w_BxX + x_BxX
    return x_BxX
