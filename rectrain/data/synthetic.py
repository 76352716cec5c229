"""A synthetic Criteo-schema click stream with a known, drifting generating model.

Every row has the Criteo schema (label, integers I1..I13, categoricals C1..C26)
and an event time, a TRUE click probability and, for positives, a label delay.
The generating model is known exactly, so a study can compare any trained model
with the Bayes ceiling (:func:`bayes_ceiling`) on the very same rows.

Shape legend: n = rows of a block, B = batch size, F = categorical fields of the
layout (26, or 39 with categorical integers), I = dense features (13 or 0),
P = cross pairs, K = cross latent dimension.

Implementation: ranks below ``table_ranks`` of every field live in flat tables
(raw value, global row id, effect, factors), so the hot path is a gather; rarer
ranks are hashed on the fly. Rows are made a block (``block_rows``) at a time,
split at epoch boundaries, with NumPy only.

Generating model (all draws seeded by ``seed``; ``t`` is the event time):

* **Time.** Row ``i`` (0-based, absolute) happens at
  ``time_i = (i + u_i) * 86400 / rows_per_day`` seconds, ``u_i ~ U[0, 1)``, so
  times strictly increase. Drift happens in steps at epoch boundaries, one epoch
  being ``drift.update_hours`` hours: ``e = floor(time / (3600 * update_hours))``.
* **Categorical values.** Field ``f`` is missing with probability
  ``cat_missing[f]``; otherwise its popularity rank ``r`` in ``0 .. N_f(e) - 1``
  is a discretised bounded power law (Zipf-like with exponent ``s_f``):
  ``r = floor(X) - 1``, ``P(X > x) ∝ x^(1-s) - (N+1)^(1-s)`` on ``[1, N + 1)``,
  drawn by inverse CDF ``X = exp(log1p(u * expm1(a ln(N+1))) / a)``, ``a = 1 - s``.
  ``N_f(e) = N_f + floor(N_f * g * e / epochs_per_day)`` grows linearly with
  the vocabulary growth rate ``g`` (new ranks are new ids).
* **Identity churn (new ids, popularity shift).** The id that holds rank ``r``
  is replaced every ``L_f = epochs_per_day / churn_per_day`` epochs, with a
  per-rank phase ``phi_r``: generation ``g_r(e) = floor((e + phi_r) / L_f)``.
  The item is ``item = splitmix64(h_fr + g * C)`` with ``h_fr = splitmix64(key_f + r)``,
  and its raw Criteo value is the uint32 ``item >> 32`` (printed as 8 hex digits).
  So a fraction ``churn_per_day`` of all ranks, head included, gets a brand-new
  id every day: yesterday's popular ids lose their traffic to new ones.
* **Logit.**
  ``logit = b(e) + sum_f w_f(item) + sum_(f,g) c_fg <v_f(item), v_g(item)> / sqrt(K)
  + sum_i q_i(I_i) + A sin(2 pi time / 86400 + psi)``.
  ``w_f(item)`` starts at ``effect_scale[f] * z(item)`` where ``z`` is a
  standardised Irwin-Hall(4) variate from a hash of the item; a missing value
  has its own effect. ``v_f(item)`` are K latent factors with components uniform
  of unit variance (from hashes of the item), so the crosses are exactly what a
  factorisation machine can represent and a logistic regression cannot.
  ``q_i(x) = a_i tanh((log1p(x - o_i) - mu_i) / sd_i)``, or ``m_i`` when missing.
* **Effect drift.** For ranks below ``min(drift.ranks, table_ranks)`` the effects and latent
  factors follow an Ornstein-Uhlenbeck random walk, one step per epoch:
  ``w <- rho w + sqrt(1 - rho^2) sigma_f xi``, ``xi ~ N(0, 1)``,
  ``rho = exp(-dt / effect_corr_days)`` (stationary: the marginal scale stays
  ``sigma_f``; an effect's correlation with itself d days later is
  ``exp(-d / effect_corr_days)``). Rarer ids keep the hashed effect of their
  lifetime (they churn like the rest). ``drift.strength`` multiplies every
  drift rate (effects, churn, vocabulary growth; 0 = a static world).
* **Intercept.** ``b(0)`` is solved (bisection) so that the mean probability
  on a calibration sample of epoch 0 (times spread over a day) equals
  ``base_rate``. After each epoch step ``b(e) = b(0) - (c(e) - c(0))`` where
  ``c`` is the popularity-weighted mean over the id tables of the effects plus
  the crosses of the mean factors, so the walk of a few head ids does not
  carry the base rate away (ids move; the average click rate stays put).
* **Integers.** ``I_i = floor(expm1(clip(mu_i + sd_i z, 0, ln 2^30))) + o_i``
  (in float32)
  (``o = -3`` for I2 as in Criteo), missing with probability ``int_missing[i]``.
* **Label and delay.** ``true_prob = clip(sigmoid(logit), 1e-6, 1 - 1e-6)``
  rounded to float32; ``label = [u < true_prob]`` with exactly that float32
  value, so ``true_prob`` is exactly the probability the label was drawn from.
  A positive's delay is a log-normal mixture: component ``k`` with probability
  ``delay.weights[k]``, then ``delay = medians_s[k] * exp(sigmas[k] z)``;
  ``inf`` for negatives.

The defaults (:func:`default_config`) use the Criteo Kaggle vocabulary sizes
(the table sizes of the DLRM Kaggle preprocessing) and per-field missing rates,
Zipf exponents (fitted to the share of the most frequent value) and integer
log-moments measured on the 4,222-row Criteo sample in ``tests/data``.

Randomness of the rows of block ``k`` (``block_rows`` rows) comes from
``default_rng([seed, 1, k])`` and the drift noise of epoch ``e`` from
``default_rng([seed, 2, e])``, so the stream does not depend on ``batch_size``
or ``start_row``. Transcendental functions may differ in the last bit across CPU
types, so bitwise equality is guaranteed on one machine, not across machines.

Where things live (this module re-exports them):

* :mod:`rectrain.data.synthetic_config`: ``NUM_CAT``, ``NUM_INT``,
  ``CRITEO_KAGGLE_CARDINALITIES``, ``PRESETS`` (drift presets), :func:`default_config`,
  :func:`resolve_config`.
* :mod:`rectrain.data.synthetic_world`: the generating model ``_World`` and
  :func:`zipf_pmf`.
* :mod:`rectrain.data.synthetic_stream`: :class:`SyntheticStream` and
  :func:`bayes_ceiling`.
* :mod:`rectrain.data.synthetic_tsv`: :func:`format_tsv`, :func:`write_tsv`.
"""

from rectrain.data.synthetic_config import (
    CRITEO_KAGGLE_CARDINALITIES, NUM_CAT, NUM_INT, PRESETS, default_config, resolve_config)
from rectrain.data.synthetic_stream import SyntheticStream, _auc, bayes_ceiling
from rectrain.data.synthetic_tsv import format_tsv, write_tsv
from rectrain.data.synthetic_world import _World, zipf_pmf

# The re-exports (the private ones too: tests and callers import them from here).
__all__ = [
    "CRITEO_KAGGLE_CARDINALITIES", "NUM_CAT", "NUM_INT", "PRESETS", "SyntheticStream", "_World", "_auc",
    "bayes_ceiling", "default_config", "format_tsv", "resolve_config", "write_tsv", "zipf_pmf",
]
