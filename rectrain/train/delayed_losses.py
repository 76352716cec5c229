"""Delayed feedback: importance weights, loss corrections, the multi-head tower's loss and
the host-side targets (rectrain/train/delayed.py runs them).

A conversion (label) arrives some time after its impression. A label-delay
join (rectrain/data/delay_join.py) decides when a sample is emitted for
training and with which observed label; this module corrects the bias that
the observed labels leave.

Notation: ``x`` a sample, ``y`` its true label (a conversion within the
attribution window ``A``), ``p(x) = P(y = 1 | x)``, ``f(x) = sigmoid(logit)``
the model, ``e`` the wait (elapsed-time) window, ``f_dp(x)`` the probability
that ``x`` is a delayed positive (``y = 1`` and delay ``> e``: a fake negative
at ``e``), ``f_rn(x)`` the probability that an observed negative at ``e`` is a
real negative. Every loss is the weighted binary cross-entropy
``sum_b m_b w_b BCE(logit_b, y_b) / #{b: m_b > 0}`` (``m`` the padding
weight) with importance weights ``w = p(y | x) / q(y | x)``, ``q`` the label
distribution of the emitted stream, computed with gradients stopped:

* FNW, fake negative weighted (Ktena et al. 2019, "Addressing Delayed Feedback
  for Continuous Training with Neural Networks in CTR prediction"):
  fast emit (every sample at once as a negative, again as a positive when it
  converts) gives ``q(1|x) = p / (1 + p)``, ``q(0|x) = 1 / (1 + p)``, so
  ``w+ = 1 + f``, ``w- = (1 - f)(1 + f)``.
* FNC, fake negative calibration (same paper): train plainly on the
  fast-emit stream, so ``f -> q(1|x) = p / (1 + p)``, and serve
  ``p = f / (1 - f)``.
* ES-DFM (Yang et al. 2021, "Capturing Delayed Feedback in Conversion Rate
  Prediction via Elapsed-Time Sampling"): emit at ``e`` with the
  label observed by then, and every delayed positive again at its conversion:
  ``q(1|x) = p / (1 + f_dp)``, ``q(0|x) = (1 - p + f_dp) / (1 + f_dp)``, so
  ``w+ = 1 + f_dp``, ``w- = (1 + f_dp) f_rn`` with
  ``f_rn = (1 - p) / (1 - p + f_dp)``; ``f_dp`` and ``f_rn`` come from an
  auxiliary two-head model trained on complete labels (:func:`aux_targets`).
* DEFER (Gu et al. 2021, "Real Negatives Matter: Continuous Training with
  Real Negatives for Delayed Feedback Modeling"): emit at ``e``;
  delayed positives again at conversion, real negatives and in-window
  positives again at ``A`` (every sample twice): ``q(1|x) = p - f_dp / 2``,
  ``q(0|x) = 1 - p + f_dp / 2``, so ``w+ = f / (f - f_dp / 2)``,
  ``w- = (1 - f) / (1 - f + f_dp / 2)``.
* Multi-head (/work/shared/docs/domain.md, section 2): head k predicts a
  conversion in ``(s_{k-1}, s_k]`` after the impression and gets the loss only
  from emissions where that interval has passed (its label is mature).

Shape legend: B batch rows, K heads, C packed label columns.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

P_MAX = 1.0 - 1e-6


# ---------------------------------------------------------------------------
# Importance weights and calibration (pure functions).


def fnw_weights(label_B, prob_B):
  """FNW weights (Ktena et al. 2019): ``1 + f`` for positives, ``(1 - f)(1 + f)`` for negatives.

  ``prob_B`` is the model's probability; callers stop its gradient.
  """
  return jnp.where(label_B > 0.5, 1.0 + prob_B, (1.0 - prob_B) * (1.0 + prob_B))


def fnc_calibrate(q, max_prob: float = P_MAX):
  """FNC serving calibration (Ktena et al. 2019): ``p = q / (1 - q)``, clipped to ``[0, max_prob]``.

  A model trained plainly on the fast-emit stream learns ``q = p / (1 + p)``;
  this inverts it. Works on NumPy and JAX arrays.
  """
  xp = jnp if isinstance(q, jax.Array) else np
  q = xp.clip(q, 0.0, 0.5)  # q = p / (1 + p) <= 1/2 for p <= 1
  return xp.minimum(q / (1.0 - q), max_prob)


def real_negative_prob(prob_B, f_dp_B):
  """``f_rn = (1 - p) / (1 - p + f_dp)``: P(real negative | observed negative at e, x).

  The alternative to the auxiliary model's rn head (Yang et al. 2021),
  from the main model's ``p`` and the aux model's ``f_dp``.
  """
  xp = jnp if isinstance(prob_B, jax.Array) else np
  neg = 1.0 - prob_B
  return neg / xp.maximum(neg + f_dp_B, 1e-12)


def esdfm_weights(label_B, f_dp_B, f_rn_B):
  """ES-DFM weights (Yang et al. 2021): ``w+ = 1 + f_dp``, ``w- = (1 + f_dp) f_rn``."""
  return jnp.where(label_B > 0.5, 1.0 + f_dp_B, (1.0 + f_dp_B) * f_rn_B)


def defer_weights(label_B, prob_B, f_dp_B):
  """DEFER weights (Gu et al. 2021).

  ``w+ = f / (f - f_dp / 2)``, ``w- = (1 - f) / (1 - f + f_dp / 2)``. A
  delayed positive is a positive (``f_dp <= p``), so ``f_dp`` is clipped to
  ``[0, f]``: ``w+`` stays in ``[1, 2]`` and ``w-`` in ``[1/(1 + f/(2(1-f))), 1]``.
  """
  dp = jnp.clip(f_dp_B, 0.0, prob_B)
  pos = jnp.where(prob_B > 0, prob_B / jnp.maximum(prob_B - 0.5 * dp, 1e-30), 1.0)
  neg = (1.0 - prob_B) / jnp.maximum(1.0 - prob_B + 0.5 * dp, 1e-30)
  return jnp.where(label_B > 0.5, pos, neg)


# ---------------------------------------------------------------------------
# Losses for rectrain.train.step.make_train_step(loss_fn=...).
#
# The step calls ``loss_fn(logits, batch["label"], batch["weight"])``. Methods
# that need more than the observed label pack extra columns into ``label``
# (``label_BxC``); ``weight`` stays the padding mask (0 for padding rows).


def _bce(logits, label):
  return optax.sigmoid_binary_cross_entropy(logits, label)


def _mean_over_rows(per_B, weight_B):
  count = jnp.maximum(jnp.sum((weight_B > 0).astype(jnp.float32)), 1.0)
  return jnp.sum(per_B * weight_B) / count


def fnw_loss(logits_B, label_B, weight_B):
  """FNW: ``sum m w_fnw(y, sg(f)) BCE / #rows``, ``sg`` = stop gradient."""
  prob_B = jax.lax.stop_gradient(jax.nn.sigmoid(logits_B))
  w_B = fnw_weights(label_B, prob_B)
  return _mean_over_rows(w_B * _bce(logits_B, label_B), weight_B)


def esdfm_loss(logits_B, label_Bx3, weight_B):
  """ES-DFM; ``label_Bx3`` = (observed label, f_dp, f_rn) from the aux model."""
  y_B, dp_B, rn_B = label_Bx3[:, 0], label_Bx3[:, 1], label_Bx3[:, 2]
  w_B = esdfm_weights(y_B, dp_B, rn_B)
  return _mean_over_rows(w_B * _bce(logits_B, y_B), weight_B)


def defer_loss(logits_B, label_Bx2, weight_B):
  """DEFER; ``label_Bx2`` = (observed label, f_dp); ``f`` = sg(sigmoid(logits))."""
  y_B, dp_B = label_Bx2[:, 0], label_Bx2[:, 1]
  prob_B = jax.lax.stop_gradient(jax.nn.sigmoid(logits_B))
  w_B = defer_weights(y_B, prob_B, dp_B)
  return _mean_over_rows(w_B * _bce(logits_B, y_B), weight_B)


def multihead_loss(logits_BxK, label_Bx2K, weight_B):
  """Masked per-head BCE: ``sum_b m_b sum_k mask_bk BCE(logit_bk, y_bk) / #rows``.

  ``label_Bx2K = [y_BxK, mask_BxK]``: head k's label and whether it is mature
  (1) or unknown (0: no loss, no gradient for that head).
  """
  k = logits_BxK.shape[1]
  if label_Bx2K.shape[1] != 2 * k:
    raise ValueError(f"multihead_loss: label must be (B, 2K) = (B, {2 * k}), "
                     f"got {label_Bx2K.shape}")
  y_BxK, mask_BxK = label_Bx2K[:, :k], label_Bx2K[:, k:]
  per_B = jnp.sum(mask_BxK * _bce(logits_BxK, y_BxK), axis=1)
  return _mean_over_rows(per_B, weight_B)


def fnc_seed_loss(logits_B, label_B, weight_B):
  """FNC's seed loss on complete labels: ``sum m (y BCE(x, 1) + BCE(x, 0)) / #rows``.

  The fast-emit distribution of complete labels (every sample once as a
  negative, every positive once more as a positive), so the seed model
  already predicts ``q = p / (1 + p)`` as FNC's serving calibration expects.
  """
  per_B = label_B * _bce(logits_B, jnp.ones_like(label_B)) + _bce(logits_B, jnp.zeros_like(label_B))
  return _mean_over_rows(per_B, weight_B)


def plain_loss(logits_B, label_B, weight_B):
  """Vanilla / oracle / FNC: the weighted BCE of the observed label."""
  return _mean_over_rows(_bce(logits_B, label_B), weight_B)


# ---------------------------------------------------------------------------
# Targets (host side, NumPy).


def head_targets(label_B: np.ndarray, delay_B: np.ndarray, kind_B: np.ndarray,
                 snapshot_s: Sequence[float], train_heads: str = "mature",
                 all_mature: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Per-head labels and maturity masks for the multi-head tower.

  Head k's event: a conversion with delay in ``(s_{k-1}, s_k]`` (``s_{-1} = 0``).
  An emission of snapshot ``kind = j`` carries the label observed at ``s_j``;
  its conversion time is known iff it converted by then (``label == 1``), so
  the head labels use ``delay`` only where ``label == 1``. Head k is mature at
  snapshot j iff ``k <= j`` (``train_heads="mature"``), or trained only at
  ``k == j`` (``"newest"``: each head learns each sample once). With
  ``all_mature`` (complete labels, the seed phase) every head is mature.

  Returns:
    ``(y_BxK, mask_BxK)`` float32.
  """
  s_K = np.asarray(snapshot_s, np.float64)
  lo_K = np.concatenate([[0.0], s_K[:-1]])
  conv_B = np.where(np.asarray(label_B) > 0.5, np.asarray(delay_B, np.float64), np.inf)
  y = (conv_B[:, None] > lo_K[None, :]) & (conv_B[:, None] <= s_K[None, :])
  # An instant conversion (delay 0) belongs to head 0.
  y[:, 0] |= conv_B <= 0.0
  k_K = np.arange(s_K.size)
  if all_mature:
    mask = np.ones(y.shape, bool)
  elif train_heads == "mature":
    mask = k_K[None, :] <= np.asarray(kind_B)[:, None]
  elif train_heads == "newest":
    mask = k_K[None, :] == np.asarray(kind_B)[:, None]
  else:
    raise ValueError(f"config delayed.multihead.train_heads={train_heads!r}: "
                     f"must be 'mature' or 'newest'")
  return y.astype(np.float32), mask.astype(np.float32)


def aux_targets(label_true_B: np.ndarray, delay_B: np.ndarray,
                wait_s: float) -> tuple[np.ndarray, np.ndarray]:
  """Labels and masks of the auxiliary (dp, rn) model from complete labels.

  dp head (all rows): ``y = 1`` and ``delay > e`` (a fake negative at ``e``).
  rn head (rows observed negative at ``e``: not converted by ``e``):
  ``y = 0`` (a real negative). As in Yang et al. (2021) and its code.

  Returns:
    ``(y_Bx2, mask_Bx2)`` float32, columns (dp, rn).
  """
  pos = np.asarray(label_true_B) > 0.5
  delay = np.asarray(delay_B, np.float64)
  dp = pos & (delay > wait_s)
  observed_neg = ~(pos & (delay <= wait_s))
  y = np.stack([dp, ~pos], axis=1).astype(np.float32)
  mask = np.stack([np.ones_like(pos), observed_neg], axis=1).astype(np.float32)
  return y, mask


def aux_targets_from_kinds(kind_B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(dp, rn) labels and masks from DEFER's second emissions, for online aux training.

  In ``defer`` mode every sample is emitted a second time once its label is
  final for the aux model: kind 1 (delayed positive, at its conversion:
  dp = 1, rn = 0), kind 2 (real negative at ``t + A``: dp = 0, rn = 1),
  kind 3 (in-window positive at ``t + A``: dp = 0, not an observed negative,
  so no rn loss). First emissions (kind 0) get no loss. Each sample thus
  trains the dp head exactly once, without waiting labels that are not yet
  known at the emission.

  Returns:
    ``(y_Bx2, mask_Bx2)`` float32, columns (dp, rn).
  """
  kind = np.asarray(kind_B)
  y = np.stack([kind == 1, kind == 2], axis=1).astype(np.float32)
  mask = np.stack([kind >= 1, (kind == 1) | (kind == 2)], axis=1).astype(np.float32)
  return y, mask
