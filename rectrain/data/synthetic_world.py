"""The generating model of the synthetic stream and its drifting state.

:class:`_World` holds the flat id tables (raw value, global row id, effect,
latent factors per rank below ``table_ranks``), steps the drift (OU walk of the
effects, identity churn, vocabulary growth) one epoch at a time and evaluates
rows: ranks, features, logit, label and delay. :func:`zipf_pmf` is the rank
distribution. The model itself is described in :mod:`rectrain.data.synthetic`.

Shape legend: n = rows of a block, P = cross pairs, K = cross latent dimension.
"""

from __future__ import annotations

import math
from typing import Dict

import ml_collections
import numpy as np

from rectrain.data import hashing
from rectrain.data.synthetic_config import NUM_CAT, NUM_INT, _per_field

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
