"""Parameters of the synthetic stream: defaults, overrides and validation.

:func:`default_config` holds the Criteo-like generator parameters (see
:mod:`rectrain.data.synthetic` for the generating model they drive);
:func:`resolve_config` merges overrides into it, rejecting unknown keys, and
validates the result. ``NUM_CAT``/``NUM_INT`` are the Criteo field counts.

Drift presets (``preset``; :data:`PRESETS`): ``"strong"`` is the world the
first studies ran in (the defaults below); ``"calibrated"`` scales every drift
rate (effects, id churn, vocabulary growth) by one factor fitted so that a
frozen model's freshness loss matches the published one (see
:data:`CALIBRATED_DRIFT_STRENGTH`). A preset sets its keys where the config
leaves them at the strong defaults; a key set to another value keeps that
value.
"""

from __future__ import annotations

from typing import Mapping

import ml_collections
import numpy as np

from rectrain.data import hashing

NUM_CAT = hashing.NUM_CAT_FIELDS
NUM_INT = hashing.NUM_INT_FIELDS

# Criteo Kaggle vocabulary sizes of C1..C26 (DLRM Kaggle preprocessing).
CRITEO_KAGGLE_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593,
    3194, 27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105,
    142572)


# The "calibrated" preset's ``drift.strength``, fitted by
# experiments/synthetic_calibration (its README has the measurements) to this
# published fact: He et al. 2014 ("Practical Lessons from Predicting Clicks on
# Ads at Facebook", section 4.1 and Fig. 7) find that a model's normalised
# entropy rises steadily with the delay between its training day and the day
# it serves, by about 1 % at a delay of 6 days (training daily instead of
# weekly gains about 1 % NE). The fit: LR (tuned defaults) trained on two days of the
# stream, frozen, NE on the 7th day after its training ended over NE on the
# 1st, paired by seed, read off a line through 0 over delays 1..6 and
# interpolated log-log between measured strengths: 0.0487 (seeds 0-2),
# rounded to 0.05, where LR's loss at 6 days is 1.03 % and
# DeepFM's 0.89 % (the static world, strength 0: 0.13 % and 0.10 %; the
# strong preset: 12.9 % and 10.9 %).
# Id churn and vocabulary growth keep their strong-preset ratios to the effect
# drift: no stored public source measures them separately.
CALIBRATED_DRIFT_STRENGTH = 0.05

PRESETS = {
    "strong": {},
    "calibrated": {"drift": {"strength": CALIBRATED_DRIFT_STRENGTH}},
}


def default_config() -> ml_collections.ConfigDict:
  """The generator's parameters (Criteo-like; see the module docstring)."""
  c = ml_collections.ConfigDict()
  c.preset = "strong"           # a name out of PRESETS (module docstring)
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
  _apply_preset(cfg)
  _validate(cfg)
  return cfg


def _apply_preset(cfg: ml_collections.ConfigDict):
  """Sets the preset's keys that ``cfg`` leaves at the strong defaults."""
  if cfg.preset not in PRESETS:
    raise ValueError(f"synthetic config: unknown preset {cfg.preset!r}; known: "
                     f"{sorted(PRESETS)}")
  strong = default_config()

  def walk(values, target, base):
    for key, value in values.items():
      if isinstance(value, Mapping):
        walk(value, target[key], base[key])
      elif target[key] == base[key]:
        target[key] = value

  walk(PRESETS[cfg.preset], cfg, strong)


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
