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
"""

from __future__ import annotations

import gzip
import math
from typing import Any, Dict, Iterator, Mapping, Sequence

import ml_collections
import numpy as np

from rectrain.data import batch as batch_lib
from rectrain.data import hashing

NUM_CAT = hashing.NUM_CAT_FIELDS
NUM_INT = hashing.NUM_INT_FIELDS

# Criteo Kaggle vocabulary sizes of C1..C26 (DLRM Kaggle preprocessing).
CRITEO_KAGGLE_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593,
    3194, 27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105,
    142572)

_ROWS_TAG = 1
_DRIFT_TAG = 2
_PARAM_TAG = 3
_CALIB_TAG = 4
_GEN_MULT = np.uint64(0xD1B54A32D192ED03)
_EFF_SALT = np.uint64(0x243F6A8885A308D3)
_LAT_SALT = np.uint64(0x13198A2E03707344)
_MISS_SALT = np.uint64(0xA4093822299F31D0)
_MASK16 = np.uint64(0xFFFF)
_MAX_LOG_INT = np.float32(math.log(2.0 ** 30))
_P_CLIP = 1e-6


def default_config() -> ml_collections.ConfigDict:
  """The generator's parameters (Criteo-like; see the module docstring)."""
  c = ml_collections.ConfigDict()
  c.cardinalities = CRITEO_KAGGLE_CARDINALITIES
  # Fitted so that P(rank 0) equals the top-value share of tests/data sample.
  c.zipf_exponents = (2.0, 1.03, 1.04, 1.09, 2.57, 2.0, 0.66, 2.32, 4.1, 1.47,
                      0.72, 1.03, 0.7, 1.5, 0.75, 1.03, 1.49, 0.9, 2.28, 0.59,
                      1.03, 2.0, 1.71, 1.08, 1.54, 1.09)
  c.cat_missing = (0.0, 0.0, 0.034, 0.034, 0.0, 0.13, 0.0, 0.0, 0.0, 0.0, 0.0,
                   0.034, 0.0, 0.0, 0.0, 0.034, 0.0, 0.0, 0.465, 0.465, 0.034,
                   0.811, 0.0, 0.034, 0.465, 0.465)
  c.int_log_mean = (0.79, 2.73, 2.23, 1.72, 7.26, 3.6, 1.52, 2.04, 3.6, 0.37,
                    0.83, 0.31, 1.89)
  c.int_log_std = (0.99, 1.7, 1.28, 0.97, 2.85, 1.82, 1.35, 1.2, 1.7, 0.39,
                   0.72, 0.6, 1.06)
  c.int_missing = (0.447, 0.0, 0.209, 0.207, 0.046, 0.254, 0.049, 0.001,
                   0.049, 0.447, 0.049, 0.781, 0.207)
  c.int_offset = (0, -3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
  c.base_rate = 0.25
  c.effect_scale = 0.3          # sigma_f: one value or 26
  c.int_effect_scale = 0.3      # std of a_i and m_i
  c.cross_pairs = (("C1", "C2"), ("C2", "C7"), ("C5", "C14"), ("C6", "C17"),
                   ("C3", "C23"), ("C11", "C13"), ("C4", "C25"), ("C8", "C24"))
  c.cross_scale = 0.4           # c_fg: one value or one per pair
  c.cross_dim = 4
  c.diurnal_amplitude = 0.1
  c.rows_per_day = 1_000_000
  c.table_ranks = 65536
  c.block_rows = 65536
  c.calibration_rows = 65536
  c.drift = ml_collections.ConfigDict()
  c.drift.strength = 1.0
  c.drift.effect_corr_days = 10.0
  c.drift.churn_per_day = 0.05
  c.drift.vocab_growth_per_day = 0.02
  c.drift.min_cardinality = 1000  # smaller fields neither churn nor grow
  c.drift.update_hours = 1.0
  c.drift.ranks = 8192           # ids of rank >= this keep their effect for life
  c.delay = ml_collections.ConfigDict()
  c.delay.weights = (0.55, 0.3, 0.15)
  c.delay.medians_s = (600.0, 10800.0, 172800.0)
  c.delay.sigmas = (1.0, 1.0, 0.8)
  return c


_GROUP_TYPES = (Mapping, ml_collections.ConfigDict, ml_collections.FrozenConfigDict)


def _merge(base: ml_collections.ConfigDict, update, where: str):
  """Copies ``update`` into ``base``; unknown keys raise, naming the key."""
  for key in update.keys():
    value = update[key]
    name = f"{where}{key}"
    if key not in base:
      raise ValueError(f"synthetic config: unknown key {name!r}; known keys under "
                       f"{where or 'the top level'}: {sorted(base.keys())}")
    if isinstance(base[key], ml_collections.ConfigDict):
      if not isinstance(value, _GROUP_TYPES):
        raise ValueError(f"synthetic config: {name!r} must be a mapping, got {value!r}")
      _merge(base[key], value, name + ".")
    else:
      base[key] = value


def resolve_config(config=None,
                   **overrides) -> ml_collections.ConfigDict:
  """``default_config()`` updated by ``config`` then ``overrides``, validated."""
  cfg = default_config()
  if config is not None:
    _merge(cfg, config, "")
  _merge(cfg, overrides, "")
  _validate(cfg)
  return cfg


def _per_field(cfg, key: str, n: int, dtype=np.float64) -> np.ndarray:
  value = cfg[key]
  arr = np.asarray(value, dtype=dtype)
  if arr.ndim == 0:
    arr = np.full((n,), arr, dtype=dtype)
  if arr.shape != (n,):
    raise ValueError(f"synthetic config: {key!r} needs 1 or {n} values, got {value!r}")
  return arr


def _validate(cfg: ml_collections.ConfigDict):
  card = _per_field(cfg, "cardinalities", NUM_CAT, np.int64)
  if np.any(card < 1):
    raise ValueError(f"synthetic config: 'cardinalities' must be >= 1, got {card.tolist()}")
  if np.any(_per_field(cfg, "zipf_exponents", NUM_CAT) <= 0):
    raise ValueError("synthetic config: 'zipf_exponents' must be > 0")
  for key, n in (("cat_missing", NUM_CAT), ("int_missing", NUM_INT)):
    m = _per_field(cfg, key, n)
    if np.any((m < 0) | (m >= 1)):
      raise ValueError(f"synthetic config: {key!r} must be in [0, 1), got {m.tolist()}")
  _per_field(cfg, "int_log_mean", NUM_INT)
  _per_field(cfg, "int_offset", NUM_INT, np.int64)
  if np.any(_per_field(cfg, "int_log_std", NUM_INT) <= 0):
    raise ValueError("synthetic config: 'int_log_std' must be > 0")
  if np.any(_per_field(cfg, "effect_scale", NUM_CAT) < 0):
    raise ValueError("synthetic config: 'effect_scale' must be >= 0")
  if not 0.0 < cfg.base_rate < 1.0:
    raise ValueError(f"synthetic config: 'base_rate' must be in (0, 1), got {cfg.base_rate}")
  for i, pair in enumerate(cfg.cross_pairs):
    if len(pair) != 2 or any(p not in hashing.CAT_NAMES for p in pair) or pair[0] == pair[1]:
      raise ValueError(f"synthetic config: 'cross_pairs[{i}]' must be two distinct "
                       f"names out of C1..C26, got {pair!r}")
  _per_field(cfg, "cross_scale", len(cfg.cross_pairs))
  for key in ("cross_dim", "rows_per_day", "table_ranks", "block_rows", "calibration_rows"):
    if int(cfg[key]) < 1:
      raise ValueError(f"synthetic config: {key!r} must be >= 1, got {cfg[key]}")
  d = cfg.drift
  if d.strength < 0 or d.churn_per_day < 0 or d.vocab_growth_per_day < 0:
    raise ValueError("synthetic config: 'drift.strength', 'drift.churn_per_day' and "
                     "'drift.vocab_growth_per_day' must be >= 0")
  if int(d.ranks) < 0 or int(d.min_cardinality) < 0:
    raise ValueError("synthetic config: 'drift.ranks' and 'drift.min_cardinality' must be >= 0")
  if d.effect_corr_days <= 0 or d.update_hours <= 0:
    raise ValueError("synthetic config: 'drift.effect_corr_days' and 'drift.update_hours' "
                     "must be > 0")
  w = np.asarray(cfg.delay.weights, dtype=np.float64)
  if (w.ndim != 1 or np.any(w < 0) or abs(w.sum() - 1) > 1e-6
      or len(cfg.delay.medians_s) != w.size or len(cfg.delay.sigmas) != w.size):
    raise ValueError("synthetic config: 'delay.weights' must be non-negative, sum to 1 and "
                     "match 'delay.medians_s' and 'delay.sigmas' in length")
  if np.any(np.asarray(cfg.delay.medians_s) <= 0) or np.any(np.asarray(cfg.delay.sigmas) < 0):
    raise ValueError("synthetic config: 'delay.medians_s' must be > 0 and 'delay.sigmas' >= 0")


def zipf_pmf(exponent: float, cardinality: int, num: int | None = None) -> np.ndarray:
  """P(rank = k), k < num, of the discretised bounded power law of the stream.

  ``P(rank <= k) = G(k + 2)`` with ``G(x) = expm1(a ln x) / expm1(a ln(N + 1))``,
  ``a = 1 - s`` (``ln x / ln(N + 1)`` when ``s = 1``).
  """
  num = cardinality if num is None else num
  a = 1.0 - exponent
  a = 1e-12 if abs(a) < 1e-12 else a
  x = np.arange(1, num + 2, dtype=np.float64)
  cdf = np.expm1(a * np.log(x)) / np.expm1(a * np.log(cardinality + 1.0))
  return np.diff(cdf)


def _irwin_hall(h: np.ndarray) -> np.ndarray:
  """A standardised Irwin-Hall(4) variate (mean 0, variance 1) from 64 hash bits."""
  total = ((h & _MASK16) + ((h >> np.uint64(16)) & _MASK16)
           + ((h >> np.uint64(32)) & _MASK16) + (h >> np.uint64(48)))
  return ((total.astype(np.float64) + 2.0) / 65536.0 - 2.0) * math.sqrt(3.0)


def _uniform_factors(item: np.ndarray, dim: int) -> np.ndarray:
  """(..., dim) latent factors, uniform with unit variance, from hashes of ``item``."""
  out = np.empty(item.shape + (dim,), dtype=np.float64)
  for j in range(0, dim, 4):
    h = hashing.splitmix64(item ^ (_LAT_SALT + np.uint64(j)))
    for k in range(min(4, dim - j)):
      bits = (h >> np.uint64(16 * k)) & _MASK16
      out[..., j + k] = ((bits.astype(np.float64) + 0.5) / 65536.0 - 0.5) * math.sqrt(12.0)
  return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * x))


class _World:
  """The generating model and its drifting state (one per pass over the stream).

  Attributes are the flat id tables: entry ``tab_off[f]`` is field f's missing
  value, entry ``tab_off[f] + 1 + r`` its rank ``r < T_f``.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, seed: int,
               cat_buckets: np.ndarray | None, cat_offsets: np.ndarray | None,
               bias: float | None = None):
    self.cfg = cfg
    self.seed = int(seed)
    self.card = _per_field(cfg, "cardinalities", NUM_CAT, np.int64)
    self.zipf = _per_field(cfg, "zipf_exponents", NUM_CAT)
    self.miss = _per_field(cfg, "cat_missing", NUM_CAT)
    self.sigma = _per_field(cfg, "effect_scale", NUM_CAT)
    self.int_mu = _per_field(cfg, "int_log_mean", NUM_INT).astype(np.float32)
    self.int_sd = _per_field(cfg, "int_log_std", NUM_INT).astype(np.float32)
    self.int_miss = _per_field(cfg, "int_missing", NUM_INT).astype(np.float32)
    self.int_off = _per_field(cfg, "int_offset", NUM_INT, np.int64)
    self.pairs = [(hashing.CAT_NAMES.index(a), hashing.CAT_NAMES.index(b))
                  for a, b in cfg.cross_pairs]
    self.pair_scale = _per_field(cfg, "cross_scale", len(self.pairs))
    self.crossed = sorted({f for p in self.pairs for f in p})
    self.dim = int(cfg.cross_dim)
    self.buckets = cat_buckets
    self.offsets = cat_offsets

    d = cfg.drift
    self.epoch_s = 3600.0 * float(d.update_hours)
    self.epochs_per_day = 86400.0 / self.epoch_s
    drifting = self.card >= int(d.min_cardinality)
    churn = float(d.churn_per_day) * float(d.strength)
    # Lifetime in epochs of an id at a rank; 0 = never replaced.
    self.life = np.where(drifting & (churn > 0),
                         np.maximum(1, np.round(self.epochs_per_day / max(churn, 1e-300))), 0
                         ).astype(np.int64)
    self.growth = np.where(drifting, float(d.vocab_growth_per_day) * float(d.strength), 0.0)
    rate = float(d.strength) / float(d.effect_corr_days) / self.epochs_per_day
    self.rho = math.exp(-rate)

    # Static parameters drawn from the seed.
    prng = np.random.default_rng([self.seed, _PARAM_TAG])
    self.int_a = prng.normal(0.0, float(cfg.int_effect_scale), NUM_INT).astype(np.float32)
    self.int_m = prng.normal(0.0, float(cfg.int_effect_scale), NUM_INT).astype(np.float32)
    self.diurnal_phase = prng.uniform(0.0, 2 * math.pi)
    self.field_key = hashing.splitmix64(
        prng.integers(0, 2 ** 63, NUM_CAT, dtype=np.uint64) ^ np.uint64(self.seed))

    # Flat tables.
    self.tsize = np.minimum(self.card, int(cfg.table_ranks))
    self.tab_off = np.concatenate([[0], np.cumsum(self.tsize + 1)[:-1]]).astype(np.int64)
    size = int(np.sum(self.tsize + 1))
    if size >= 2 ** 31 or np.any(self.card * 2 >= 2 ** 31):
      raise ValueError("synthetic config: 'table_ranks'/'cardinalities' too large for int32 ids")
    self.tab_off32 = (self.tab_off + 1).astype(np.int32)
    self.tsize32 = (self.tsize - 1).astype(np.int32)
    self.tab_field = np.repeat(np.arange(NUM_CAT), self.tsize + 1)
    rank = np.arange(size, dtype=np.int64) - np.repeat(self.tab_off, self.tsize + 1) - 1
    is_missing = rank < 0
    self.tab_hfr = hashing.splitmix64(self.field_key[self.tab_field]
                                      + np.maximum(rank, 0).astype(np.uint64))
    self.tab_sigma = self.sigma[self.tab_field].astype(np.float32)
    self.tab_gen = np.zeros(size, dtype=np.int64)     # generation at epoch 0 is 0
    self.tab_cross = np.isin(self.tab_field, self.crossed) & ~is_missing
    self.eff = np.zeros(size, dtype=np.float32)
    self.value = np.zeros(size, dtype=np.uint32)
    self.lat = np.zeros((size, self.dim), dtype=np.float32)
    self.cat = np.zeros(size, dtype=np.int32)
    self._refresh(np.flatnonzero(~is_missing))
    self.eff[self.tab_off] = self.sigma * _irwin_hall(
        hashing.splitmix64(self.field_key ^ _MISS_SALT))
    if self.offsets is not None:
      self.cat[self.tab_off] = self.offsets[:NUM_CAT]
    # Entries whose effect (and factors) random-walk: ranks < drift.ranks.
    walks = rank < int(d.ranks)
    self.drift_idx = np.flatnonzero(walks & (self.tab_sigma > 0))
    self.lat_idx = np.flatnonzero(walks & self.tab_cross)
    # Churn schedule: per churning field, its entries sorted by phase, so the
    # entries renewed at epoch e (those with (e + phase) % life == 0) are a slice.
    self.churn = []
    for f in np.flatnonzero(self.life > 0):
      ent = self.tab_off[f] + 1 + np.arange(self.tsize[f])
      phase = self._phase(self.tab_hfr[ent], self.life[f])
      order = np.argsort(phase, kind="stable")
      self.churn.append((int(self.life[f]), ent[order], phase[order]))
    # Popularity of each table entry at time 0, to re-centre the intercept.
    self.tab_pi = np.zeros(size, dtype=np.float32)
    for f in range(NUM_CAT):
      lo = self.tab_off[f]
      self.tab_pi[lo] = self.miss[f]
      self.tab_pi[lo + 1:lo + 1 + self.tsize[f]] = (1.0 - self.miss[f]) * zipf_pmf(
          self.zipf[f], int(self.card[f]), int(self.tsize[f]))
    self.epoch = 0
    self.center0 = self._center()
    self.shift = 0.0      # b(e) = b(0) - shift(e)
    self.bias = self._calibrate() if bias is None else float(bias)

  # ---- identities and the tables ---------------------------------------------
  @staticmethod
  def _phase(hfr, life):
    """phi_r in 0 .. life - 1 (``life`` >= 1)."""
    return ((hfr >> np.uint64(8)) % life.astype(np.uint64)).astype(np.int64)

  def _generation(self, hfr, life, epoch):
    """g_r(e) = floor((e + phi_r) / life); 0 where ids never churn."""
    safe = np.maximum(life, 1)
    return np.where(life > 0, (epoch + self._phase(hfr, safe)) // safe, 0)

  def _items(self, hfr, gen):
    with np.errstate(over="ignore"):
      return hashing.splitmix64(hfr + gen.astype(np.uint64) * _GEN_MULT)

  def _cat_of(self, value, fields):
    """Global row ids of raw values of (any mix of) fields C1..C26."""
    out = np.empty(value.shape, dtype=np.int32)
    for f in np.unique(fields):
      sel = fields == f
      out[sel] = hashing.hash_to_bucket(value[sel], int(f), int(self.buckets[f])) + self.offsets[f]
    return out

  def _refresh(self, idx):
    """Re-draws value, effect, factors and row id of table entries ``idx``."""
    if idx.size == 0:
      return
    item = self._items(self.tab_hfr[idx], self.tab_gen[idx])
    self.value[idx] = (item >> np.uint64(32)).astype(np.uint32)
    self.eff[idx] = self.tab_sigma[idx] * _irwin_hall(hashing.splitmix64(item ^ _EFF_SALT))
    cross = self.tab_cross[idx]
    self.lat[idx[cross]] = _uniform_factors(item[cross], self.dim)
    if self.buckets is not None:
      self.cat[idx] = self._cat_of(self.value[idx], self.tab_field[idx])

  def advance(self, epoch: int):
    """Steps the drift (OU walk of the tables, then churn) up to ``epoch``."""
    if epoch < self.epoch:
      raise ValueError(f"synthetic stream: cannot go back from epoch {self.epoch} to {epoch}")
    while self.epoch < epoch:
      self.epoch += 1
      if self.rho < 1.0:
        rng = np.random.default_rng([self.seed, _DRIFT_TAG, self.epoch])
        rho = np.float32(self.rho)
        noise = np.float32(math.sqrt(1.0 - self.rho ** 2))
        idx = self.drift_idx
        xi = rng.standard_normal(idx.size, dtype=np.float32)
        self.eff[idx] = rho * self.eff[idx] + noise * self.tab_sigma[idx] * xi
        li = self.lat_idx
        xi = rng.standard_normal((li.size, self.dim), dtype=np.float32)
        self.lat[li] = rho * self.lat[li] + noise * xi
      renewed = []
      for life, ent, phase in self.churn:
        target = (-self.epoch) % life
        lo, hi = np.searchsorted(phase, [target, target + 1])
        renewed.append(ent[lo:hi])
      if renewed:
        idx = np.concatenate(renewed)
        self.tab_gen[idx] += 1
        self._refresh(idx)
      self.shift = self._center() - self.center0

  def _center(self) -> float:
    """Popularity-weighted mean of the drifting logit terms over the tables."""
    total = float(np.dot(self.tab_pi, self.eff))
    means = {}
    for f in self.crossed:
      lo, hi = self.tab_off[f], self.tab_off[f] + 1 + self.tsize[f]
      means[f] = (self.tab_pi[lo:hi] @ self.lat[lo:hi]).astype(np.float64)
    for p, (f, g) in enumerate(self.pairs):
      total += self.pair_scale[p] * float(means[f] @ means[g]) / math.sqrt(self.dim)
    return total

  def cardinality_at(self, epoch: int) -> np.ndarray:
    """(26,) vocabulary sizes N_f(e)."""
    return self.card + np.floor(self.card * self.growth * epoch / self.epochs_per_day
                                ).astype(np.int64)

  # ---- rows ----------------------------------------------------------------------
  def draw(self, rng: np.random.Generator, n: int) -> Dict[str, np.ndarray]:
    """All per-row randomness, in a fixed order."""
    return dict(
        u_cat=rng.random((n, NUM_CAT)),
        z_int=rng.standard_normal((n, NUM_INT), dtype=np.float32),
        u_int=rng.random((n, NUM_INT), dtype=np.float32), u_time=rng.random(n), u_label=rng.random(n),
        u_comp=rng.random(n), z_delay=rng.standard_normal(n))

  def ranks(self, u_cat, epoch):
    """(n, 26) missing mask and Zipf-like ranks at ``epoch`` (-1 where missing)."""
    missing = u_cat < self.miss
    n_e = self.cardinality_at(epoch)
    a = 1.0 - self.zipf
    a = np.where(np.abs(a) < 1e-12, 1e-12, a)
    # u = (u_cat - miss) / (1 - miss) folded into one multiply-add; rows that
    # are missing may give NaN here and are overwritten below.
    c = np.expm1(a * np.log(n_e + 1.0)) / (1.0 - self.miss)
    with np.errstate(invalid="ignore"):
      x = np.exp(np.log1p(u_cat * c - self.miss * c) * (1.0 / a))
      rank = np.minimum(x.astype(np.int32), n_e.astype(np.int32)) - 1
    return missing, np.where(missing, np.int32(-1), rank)

  def _tail(self, rank, in_tab, epoch):
    """Identities of the ranks beyond the tables, grouped by field.

    Returns rows, items and the slice bounds ``bounds[f]:bounds[f + 1]`` of field f.
    """
    tail_f, tail_r = np.nonzero(~in_tab.T)           # sorted by field
    t_rank = rank[tail_r, tail_f]
    hfr = hashing.splitmix64(self.field_key[tail_f] + t_rank.astype(np.uint64))
    item = self._items(hfr, self._generation(hfr, self.life[tail_f], epoch))
    bounds = np.searchsorted(tail_f, np.arange(NUM_CAT + 1))
    return tail_r, tail_f, item, bounds

  def evaluate(self, draws, time, epoch, want_values=False, want_cat=True,
               components=False):
    """Features and logit (without the bias) of rows that all lie in ``epoch``."""
    n = time.shape[0]
    missing, rank = self.ranks(draws["u_cat"], epoch)
    in_tab = rank < self.tsize
    idx = self.tab_off32 + np.minimum(rank, self.tsize32)  # missing (rank -1): tab_off
    eff = np.take(self.eff, idx)
    lat = {f: np.take(self.lat, idx[:, f], axis=0) for f in self.crossed}
    values = np.take(self.value, idx) if want_values else None
    cat = np.take(self.cat, idx) if want_cat else None
    if not in_tab.all():
      tail_r, tail_f, item, bounds = self._tail(rank, in_tab, epoch)
      eff[tail_r, tail_f] = self.sigma[tail_f] * _irwin_hall(hashing.splitmix64(item ^ _EFF_SALT))
      t_value = (item >> np.uint64(32)).astype(np.uint32)
      if want_values:
        values[tail_r, tail_f] = t_value
      for f in range(NUM_CAT):
        lo, hi = bounds[f], bounds[f + 1]
        if lo == hi:
          continue
        if want_cat:
          cat[tail_r[lo:hi], f] = hashing.hash_to_bucket(
              t_value[lo:hi], f, int(self.buckets[f])) + self.offsets[f]
        if f in lat:
          lat[f][tail_r[lo:hi]] = _uniform_factors(item[lo:hi], self.dim)
    cross = np.empty((n, len(self.pairs)))
    for p, (f, g) in enumerate(self.pairs):
      cross[:, p] = np.einsum("nk,nk->n", lat[f], lat[g]) * (
          self.pair_scale[p] / math.sqrt(self.dim))
    # Integers: I = floor(expm1(y)) + offset, effect a tanh((log1p(I - offset) - mu) / sd).
    int_missing = draws["u_int"] < self.int_miss
    y = np.clip(self.int_mu + self.int_sd * draws["z_int"], np.float32(0), _MAX_LOG_INT)
    shifted = np.floor(np.expm1(y))                   # float32, exact integers
    ints = shifted.astype(np.int64) + self.int_off
    shape = np.tanh((np.log1p(shifted) - self.int_mu) * (np.float32(1) / self.int_sd))
    int_logit = np.where(int_missing, self.int_m, self.int_a * shape)
    time_logit = float(self.cfg.diurnal_amplitude) * np.sin(
        (2 * math.pi / 86400.0) * time + self.diurnal_phase)
    logit_nobias = (eff.sum(axis=1, dtype=np.float64) + cross.sum(axis=1)
                    + int_logit.sum(axis=1) + time_logit)
    out = dict(rank=rank, cat_missing=missing, ints=ints, int_missing=int_missing,
               logit_nobias=logit_nobias)
    if want_values:
      out["values"] = values
    if want_cat:
      out["cat"] = cat
    if components:
      out.update(logit_main=eff, logit_cross=cross, logit_int=int_logit,
                 logit_time=time_logit)
    return out

  def _calibrate(self) -> float:
    """The b(0) with mean sigmoid(b + rest) = base_rate on a sample of epoch 0.

    The sample's times are spread over a day, to average out the diurnal term.
    """
    n = int(self.cfg.calibration_rows)
    draws = self.draw(np.random.default_rng([self.seed, _CALIB_TAG]), n)
    time = draws["u_time"] * 86400.0
    rest = self.evaluate(draws, time, 0, want_cat=False)["logit_nobias"]
    lo, hi = -30.0, 30.0
    for _ in range(60):
      mid = 0.5 * (lo + hi)
      if np.mean(_sigmoid(mid + rest)) < float(self.cfg.base_rate):
        lo = mid
      else:
        hi = mid
    return 0.5 * (lo + hi)

  def finish(self, draws, rows):
    """Adds true_prob, label and delay to evaluated rows."""
    rows["logit_bias"] = np.full(rows["logit_nobias"].shape, self.bias - self.shift)
    p64 = _sigmoid(rows["logit_bias"] + rows["logit_nobias"])
    true_prob = np.clip(p64, _P_CLIP, 1.0 - _P_CLIP).astype(np.float32)
    label = draws["u_label"] < true_prob.astype(np.float64)
    dcfg = self.cfg.delay
    comp = np.minimum(np.searchsorted(np.cumsum(dcfg.weights), draws["u_comp"], side="right"),
                      len(dcfg.weights) - 1)
    delay = (np.asarray(dcfg.medians_s)[comp]
             * np.exp(np.asarray(dcfg.sigmas)[comp] * draws["z_delay"])).astype(np.float32)
    delay[~label] = np.inf
    rows.update(true_prob=true_prob, label=label, delay=delay)
    return rows


def _slice(d: Mapping[str, np.ndarray], sl) -> Dict[str, np.ndarray]:
  return {k: v[sl] for k, v in d.items()}


class SyntheticStream:
  """Batches of the synthetic stream, following :mod:`rectrain.data.batch`.

  Usage: ``SyntheticStream(batch_size=4096, cat_buckets=1 << 18, seed=0,
  num_rows_total=10_000_000, rows_per_day=1_000_000)``; keyword arguments that
  are not stream arguments override keys of ``config`` (``drift=dict(strength=0)``
  updates a nested group).

  With ``raw_ids=True`` every batch also carries the unhashed ids (for
  :mod:`rectrain.data.idmap`): ``raw_ids`` (B, F) uint64, the raw value of
  every field (the uint32 Criteo value of C1..C26, the
  :func:`hashing.log_square_token` of I1..I13 in categorical mode; 0 where
  missing) and ``raw_missing`` (B, F) bool.

  Attributes: ``batch_size``, ``layout`` (:class:`hashing.FieldLayout`),
  ``num_rows`` (rows of the fused table), ``num_dense``, ``config``.
  """

  def __init__(self, config: Mapping[str, Any] | None = None, *, batch_size: int = 4096,
               cat_buckets: int | Sequence[int] = 1 << 18, int_mode: str = "log1p",
               int_buckets: int = 512, num_rows_total: int | None = None,
               seed: int = 0, start_row: int = 0, raw_ids: bool = False, **overrides):
    self.config = resolve_config(config, **overrides)
    if int(batch_size) < 1:
      raise ValueError(f"SyntheticStream: batch_size must be >= 1, got {batch_size}")
    if int(seed) < 0 or int(start_row) < 0:
      raise ValueError(f"SyntheticStream: seed and start_row must be >= 0, got {seed}, {start_row}")
    if num_rows_total is not None and int(num_rows_total) < 0:
      raise ValueError(f"SyntheticStream: num_rows_total must be >= 0, got {num_rows_total}")
    self.batch_size = int(batch_size)
    self.layout = hashing.make_layout(cat_buckets, int_mode, int_buckets)
    self.int_mode = int_mode
    self.num_rows = self.layout.num_rows
    self.num_dense = NUM_INT if int_mode == "log1p" else 0
    self.num_rows_total = None if num_rows_total is None else int(num_rows_total)
    self.seed = int(seed)
    self.start_row = int(start_row)
    self.raw_ids = bool(raw_ids)
    self._bias = None
    self._rows_read = 0

  # ---- raw rows ---------------------------------------------------------------
  def world(self) -> _World:
    """A fresh generating model at time 0 (its bias is computed once and cached)."""
    offsets = self.layout.offsets
    w = _World(self.config, self.seed, np.asarray(self.layout.buckets[:NUM_CAT]),
               offsets, self._bias)
    self._bias = w.bias
    return w

  @property
  def bias(self) -> float:
    """The calibrated intercept b(0) of the generating logit."""
    if self._bias is None:
      self.world()
    return self._bias

  def raw_blocks(self, want_values: bool = False, want_cat: bool = True,
                 components: bool = False) -> Iterator[Dict[str, np.ndarray]]:
    """Yields the rows as blocks of (at most ``block_rows``) rows, in time order.

    Keys: ``index`` (n,) int64, ``time`` (n,) float64, ``label`` (n,) bool,
    ``true_prob`` (n,) float32, ``delay`` (n,) float32, ``rank`` (n, 26) int32
    (-1 = missing), ``cat_missing`` (n, 26) bool, ``ints`` (n, 13) int64,
    ``int_missing`` (n, 13) bool, ``logit_nobias`` (n,); with ``want_cat``
    ``cat`` (n, 26) int32 global row ids of C1..C26; with ``want_values``
    ``values`` (n, 26) uint32 raw values; with ``components`` the logit terms
    ``logit_main`` (n, 26), ``logit_cross`` (n, P), ``logit_int`` (n, 13),
    ``logit_time`` (n,) (``logit = bias + their sum``).
    """
    world = self.world()
    cfg = self.config
    block_rows = int(cfg.block_rows)
    day_s = 86400.0 / float(cfg.rows_per_day)
    start = self.start_row
    stop = None if self.num_rows_total is None else start + self.num_rows_total
    block = start // block_rows
    while stop is None or block * block_rows < stop:
      b0 = block * block_rows
      lo, hi = max(start, b0), b0 + block_rows if stop is None else min(stop, b0 + block_rows)
      draws = world.draw(np.random.default_rng([self.seed, _ROWS_TAG, block]), block_rows)
      draws = _slice(draws, slice(lo - b0, hi - b0))
      index = np.arange(lo, hi, dtype=np.int64)
      time = (index + draws["u_time"]) * day_s
      epoch = np.floor(time / world.epoch_s).astype(np.int64)
      cuts = np.flatnonzero(np.diff(epoch)) + 1
      for s0, s1 in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [hi - lo]])):
        world.advance(int(epoch[s0]))
        seg = _slice(draws, slice(s0, s1))
        rows = world.evaluate(seg, time[s0:s1], int(epoch[s0]), want_values=want_values,
                              want_cat=want_cat, components=components)
        rows = world.finish(seg, rows)
        rows.update(index=index[s0:s1], time=time[s0:s1])
        yield rows
      block += 1

  # ---- batches --------------------------------------------------------------------
  def _to_batch(self, rows) -> batch_lib.Batch:
    n = rows["index"].shape[0]
    tokens_IxN = None
    if self.int_mode == "log1p":
      cat = rows["cat"]
      dense = hashing.log1p_transform(rows["ints"], rows["int_missing"])
    else:
      fields = range(NUM_CAT, NUM_CAT + NUM_INT)
      tokens_IxN = hashing.log_square_token(rows["ints"].T).view(np.uint64)
      bucket_IxN = hashing.hash_fields_to_buckets(
          tokens_IxN, fields, self.layout.buckets[NUM_CAT:])
      bucket_IxN[rows["int_missing"].T] = 0
      bucket_IxN += self.layout.offsets[NUM_CAT:-1, None]
      cat = np.concatenate([rows["cat"], bucket_IxN.T.astype(np.int32)], axis=1)
      dense = np.zeros((n, 0), dtype=np.float32)
    out = {
        "label": rows["label"].astype(np.float32),
        "weight": np.ones((n,), dtype=np.float32),
        "cat": cat.astype(np.int32, copy=False),
        "dense": dense,
        "index": rows["index"],
        "time": rows["time"],
        "true_prob": rows["true_prob"],
        "delay": rows["delay"],
    }
    if self.raw_ids:
      raw = rows["values"].astype(np.uint64)
      raw[rows["cat_missing"]] = 0
      missing = rows["cat_missing"]
      if tokens_IxN is not None:
        tok = tokens_IxN.T.copy()
        tok[rows["int_missing"]] = 0
        raw = np.concatenate([raw, tok], axis=1)
        missing = np.concatenate([missing, rows["int_missing"]], axis=1)
      out["raw_ids"] = raw
      out["raw_missing"] = missing
    return out

  def __iter__(self) -> Iterator[batch_lib.Batch]:
    self._rows_read = 0
    pending, have = [], 0       # chunks not yet yielded, and their row count
    for rows in self.raw_blocks(want_values=self.raw_ids):
      chunk = self._to_batch(rows)
      n = chunk["index"].shape[0]
      start = 0
      if pending and have + n >= self.batch_size:   # complete the straddling batch
        start = self.batch_size - have
        pending.append(_slice(chunk, slice(0, start)))
        yield self._emit({k: np.concatenate([p[k] for p in pending]) for k in chunk})
        pending, have = [], 0
      while n - start >= self.batch_size:          # whole batches: views, no copy
        yield self._emit(_slice(chunk, slice(start, start + self.batch_size)))
        start += self.batch_size
      if start < n:
        pending.append(_slice(chunk, slice(start, n)))
        have += n - start
    if pending:
      merged = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
      yield self._emit(batch_lib.pad_batch(merged, self.batch_size), rows=have)

  def _emit(self, batch, rows=None):
    self._rows_read += self.batch_size if rows is None else rows
    return batch

  def report(self) -> Dict[str, Any]:
    """Rows yielded by the latest pass (nothing is ever skipped)."""
    return {"rows_read": self._rows_read, "rows": self._rows_read, "skipped": {}}


# ---- metrics of the true model ----------------------------------------------------
def _auc(score: np.ndarray, label: np.ndarray) -> float:
  """ROC AUC by the Mann-Whitney statistic, ties counted one half."""
  order = np.argsort(score, kind="stable")
  s = score[order]
  first = np.concatenate([[True], s[1:] != s[:-1]])
  group = np.cumsum(first) - 1
  starts = np.flatnonzero(first)
  ends = np.concatenate([starts[1:], [s.size]])
  avg_rank = (starts + ends + 1) / 2.0          # 1-based mean rank of each tie group
  ranks = avg_rank[group]
  pos = label[order].astype(bool)
  n_pos, n_neg = int(pos.sum()), int((~pos).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _ceiling(prob: np.ndarray, label: np.ndarray) -> Dict[str, float]:
  p = prob.astype(np.float64)
  y = label.astype(np.float64)
  ll = -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))
  rate = float(y.mean())
  ent = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate)) if 0 < rate < 1 else 0.0
  exp_ll = -np.mean(p * np.log(p) + (1 - p) * np.log1p(-p))
  return {"rows": int(p.size), "base_rate": rate, "log_loss": float(ll),
          "expected_log_loss": float(exp_ll), "entropy": ent,
          "ne": float(ll / ent) if ent > 0 else float("nan"), "auc": _auc(p, y),
          "mean_true_prob": float(p.mean())}


def bayes_ceiling(stream: SyntheticStream, by_day: bool = False) -> Dict[str, Any]:
  """Log loss and AUC of the true probabilities on ``stream``'s rows.

  ``log_loss = -mean(y log p + (1 - y) log(1 - p))`` with p = ``true_prob``
  (no model can do better in expectation), ``expected_log_loss`` its
  expectation over labels (mean binary entropy of p), ``ne`` = log loss over
  the entropy of the empirical base rate (He et al. 2014, normalised entropy).
  With ``by_day`` the same metrics per day of event time under ``"days"``.
  """
  if stream.num_rows_total is None:
    raise ValueError("bayes_ceiling: the stream needs a finite num_rows_total")
  probs, labels, days = [], [], []
  for rows in stream.raw_blocks(want_cat=False):
    probs.append(rows["true_prob"])
    labels.append(rows["label"])
    days.append((rows["time"] // 86400.0).astype(np.int64))
  prob, label, day = np.concatenate(probs), np.concatenate(labels), np.concatenate(days)
  out = _ceiling(prob, label)
  if by_day:
    out["days"] = {int(d): _ceiling(prob[day == d], label[day == d]) for d in np.unique(day)}
  return out


# ---- Criteo TSV --------------------------------------------------------------------
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_TAB, _NL, _MINUS, _ZERO = ord("\t"), ord("\n"), ord("-"), ord("0")


def _int_chars(values: np.ndarray, missing: np.ndarray):
  """(n, W) uint8 decimal digits (left aligned) and (n,) lengths; missing -> ''."""
  v = values.astype(np.int64)
  neg = v < 0
  mag = np.abs(v)
  ndig = np.ones(v.shape, dtype=np.int64)
  p = mag // 10
  while np.any(p):
    ndig += p > 0
    p //= 10
  length = ndig + neg
  width = int(length.max()) if length.size else 1
  chars = np.zeros(v.shape + (width,), dtype=np.uint8)
  rows = np.arange(v.shape[0])
  chars[neg, 0] = _MINUS
  cur = mag.copy()
  for k in range(int(ndig.max()) if ndig.size else 0):
    pos = length - 1 - k
    ok = pos >= neg  # still a digit position
    chars[rows[ok], pos[ok]] = _ZERO + (cur[ok] % 10)
    cur //= 10
  length = np.where(missing, 0, length)
  return chars, length


def _hex_chars(values: np.ndarray) -> np.ndarray:
  """(n, 8) lower-case hex digits of uint32 values."""
  shifts = np.arange(28, -1, -4, dtype=np.uint32)
  return _HEX[(values.astype(np.uint32)[:, None] >> shifts) & np.uint32(15)]


def format_tsv(rows: Mapping[str, np.ndarray]) -> bytes:
  """Criteo TSV lines (label, I1..I13, C1..C26) of raw rows, vectorised."""
  n = rows["label"].shape[0]
  columns = [(np.where(rows["label"], ord("1"), ord("0")).astype(np.uint8)[:, None],
              np.ones(n, dtype=np.int64))]
  for i in range(NUM_INT):
    columns.append(_int_chars(rows["ints"][:, i], rows["int_missing"][:, i]))
  for f in range(NUM_CAT):
    miss = rows["cat_missing"][:, f]
    columns.append((_hex_chars(rows["values"][:, f]), np.where(miss, 0, 8)))
  line_len = sum(length for _, length in columns) + len(columns)
  ends = np.cumsum(line_len)
  buf = np.empty(int(ends[-1]) if n else 0, dtype=np.uint8)
  pos = ends - line_len
  for c, (chars, length) in enumerate(columns):
    for j in range(chars.shape[1]):
      sel = length > j
      buf[pos[sel] + j] = chars[sel, j]
    pos = pos + length
    buf[pos] = _NL if c == len(columns) - 1 else _TAB
    pos = pos + 1
  return buf.tobytes()


def write_tsv(path: str, num_rows: int, seed: int = 0,
              config: Mapping[str, Any] | None = None, start_row: int = 0,
              **overrides) -> Dict[str, Any]:
  """Writes ``num_rows`` rows of the stream as Criteo TSV (gzip if ``.gz``).

  Columns: label, I1..I13 (decimal, empty = missing), C1..C26 (8 lower-case
  hex digits of the raw uint32 value, empty = missing). Parsing the file with
  the Criteo reader gives the same ``label``/``cat``/``dense`` as
  :class:`SyntheticStream` with the same seed and config.

  Returns ``{"path", "rows", "positives"}``.
  """
  stream = SyntheticStream(config, num_rows_total=num_rows, seed=seed,
                           start_row=start_row, **overrides)
  opener = gzip.open if str(path).endswith(".gz") else open
  rows_written = positives = 0
  with opener(path, "wb") as fh:
    for rows in stream.raw_blocks(want_values=True, want_cat=False):
      fh.write(format_tsv(rows))
      rows_written += rows["label"].shape[0]
      positives += int(rows["label"].sum())
  return {"path": str(path), "rows": rows_written, "positives": positives}
