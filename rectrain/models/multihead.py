"""A multi-head delayed-conversion tower: shared embeddings and backbone, K heads.

For conversion (CVR) models whose labels take days to return, head ``k``
predicts the probability that a sample converts in the k-th interval of label
return, ``(s_{k-1}, s_k]`` (``s_{-1} = 0``; e.g. day k of return), and is trained
only on samples whose label for that interval is already known (mature). The
served conversion probability is the sum of the heads' probabilities
(:func:`serve_probability`); see rectrain/train/delayed.py for the labels,
the maturity mask and the loss, and /work/shared/docs/domain.md section 2.

Same interface as the models of rectrain/models/ctr.py
(``table_specs()``, ``apply(variables, rows, dense_BxI) -> logits``), but the
logits are ``(B, K)``, one column per head.

Shape legend: B batch rows, F categorical fields, I dense features, D
embedding width, K heads, H hidden width.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from rectrain.models.ctr import EMBEDDING, LINEAR, _CTRModel, _deep_input, _unpack
from rectrain.models.layers import MLP, fm_second_order
from rectrain.models.tables import TableSpec

Array = jnp.ndarray


class MultiHeadTower(_CTRModel):
  """Shared embeddings + MLP backbone with ``num_heads`` output heads.

  For head ``k`` (``h = MLP([flatten(v), dense])`` shared by all heads):

  ``logit_k = w_k^T h + [linear] (b_k + sum_f lin_f[k] + dense @ u_k)
  + [fm] c_k sum_{i<j} <v_i, v_j>``

  where ``lin`` is the ``linear`` table of width K (each head has its own
  first-order weights; zeros at init), ``v`` the shared field embeddings and
  ``c_k`` a per-head scale of the shared FM term (ones at init). The head
  biases start at :func:`head_bias_init` (0 for one head). With
  ``num_heads=1``, ``linear=True`` and ``fm=True`` this is DeepFM (Guo et al.
  2017) with one extra scalar ``c_0``; with ``linear=False, fm=False`` it is
  :class:`~rectrain.models.ctr.DNN` with K outputs.

  Attributes:
    num_heads: K.
    embed_dim, embed_init_scale, embed_init: the embedding table (as DeepFM).
    mlp_dims: widths of the shared backbone.
    linear: per-head first-order part (the ``linear`` table has width K).
    fm: add the (per-head scaled) FM second-order term.
  """

  num_heads: int = 2
  embed_dim: int = 16
  embed_init_scale: float = 0.01
  embed_init: str = "truncated_normal"
  mlp_dims: Sequence[int] = (400, 400, 400)
  linear: bool = True
  fm: bool = True

  def __post_init__(self):
    k = self.num_heads
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
      raise ValueError(f"MultiHeadTower hyperparameter 'num_heads' (model config key "
                       f"'num_heads'): must be a positive int, got {k!r}")
    for field in ("linear", "fm"):
      if not isinstance(getattr(self, field), bool):
        raise ValueError(f"MultiHeadTower hyperparameter {field!r} (model config key "
                         f"{field!r}): must be a bool, got {getattr(self, field)!r}")
    super().__post_init__()

  def table_specs(self) -> Tuple[TableSpec, ...]:
    specs = (self._embedding_spec(),)
    if self.linear:
      specs = (TableSpec(LINEAR, self.num_heads, 0.0),) + specs
    return specs

  @nn.compact
  def __call__(self, rows, dense_BxI, train: bool = False) -> Array:
    rows, dense_BxI = _unpack(self, rows, dense_BxI)
    emb_BxFxD = rows[EMBEDDING]
    k = self.num_heads
    h_BxH = MLP(tuple(self.mlp_dims), name="mlp")(_deep_input(emb_BxFxD, dense_BxI), train)
    bias_init = nn.initializers.constant(head_bias_init(k))
    logits_BxK = nn.Dense(k, use_bias=not self.linear, bias_init=bias_init, name="heads")(h_BxH)
    if self.linear:
      bias_K = self.param("bias", bias_init, (k,), jnp.float32)
      logits_BxK = logits_BxK + jnp.sum(rows[LINEAR], axis=1) + bias_K[None, :]
      if dense_BxI.shape[1] > 0:
        w_IxK = self.param("w_dense", nn.initializers.zeros_init(),
                           (dense_BxI.shape[1], k), jnp.float32)
        logits_BxK = logits_BxK + dense_BxI @ w_IxK
    if self.fm:
      scale_K = self.param("fm_scale", nn.initializers.ones_init(), (k,), jnp.float32)
      logits_BxK = logits_BxK + fm_second_order(emb_BxFxD)[:, None] * scale_K[None, :]
    return logits_BxK


def head_bias_init(num_heads: int) -> float:
  """``-log(2K - 1)``: each head starts at ``sigmoid = 1 / (2K)``, so the served sum starts at 1/2.

  (A single-logit model starts at ``sigmoid(0) = 1/2``; zero biases would
  start K heads at a served probability of ``K / 2``.) 0 for K = 1.
  """
  return -math.log(2 * int(num_heads) - 1)


def serve_probability(logits_BxK: Array, max_prob: float = 1.0 - 1e-6) -> Array:
  """The served conversion probability ``min(sum_k sigmoid(logit_k), max_prob)``.

  The heads predict disjoint events (conversion in interval k of label
  return), so their probabilities add up to the probability of a conversion
  within the last interval; nothing forces the sum below 1, hence the clip.
  """
  if logits_BxK.ndim != 2:
    raise ValueError(f"serve_probability: logits must be (B, K), got shape {logits_BxK.shape}")
  return jnp.minimum(jnp.sum(jax.nn.sigmoid(logits_BxK), axis=1), max_prob)
