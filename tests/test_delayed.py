"""Tests for rectrain.train.delayed and rectrain.models.multihead.

Loss weights against NumPy on hand values, the importance weights' fixed
points (the weighted loss is minimised at the true p under the biased label
distribution), FNC, average precision against a brute-force loop, the
multi-head maturity masks and tower, and small end-to-end runs.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rectrain.models import DeepFM
from rectrain.models.multihead import MultiHeadTower, serve_probability
from rectrain.train import delayed


def np_bce(logit, y):
  p = 1.0 / (1.0 + np.exp(-np.asarray(logit, np.float64)))
  return -(y * np.log(p) + (1 - y) * np.log1p(-p))


# ---------------------------------------------------------------------------
# Weights and losses against hand values.


def test_fnw_weights_hand_values():
  y = jnp.array([1.0, 0.0, 1.0, 0.0])
  p = jnp.array([0.2, 0.2, 0.5, 0.9])
  np.testing.assert_allclose(delayed.fnw_weights(y, p), [1.2, 0.8 * 1.2, 1.5, 0.1 * 1.9],
                             rtol=1e-6)


def test_esdfm_and_defer_weights_hand_values():
  y = jnp.array([1.0, 0.0, 1.0, 0.0])
  dp = jnp.array([0.1, 0.1, 0.15, 0.05])
  rn = jnp.array([0.7, 0.8, 0.2, 0.9])
  np.testing.assert_allclose(delayed.esdfm_weights(y, dp, rn), [1.1, 1.1 * 0.8, 1.15, 1.05 * 0.9],
                             rtol=1e-6)
  p = jnp.array([0.4, 0.4, 0.2, 0.5])
  # w+ = p / (p - dp/2); w- = (1 - p) / (1 - p + dp/2)
  np.testing.assert_allclose(delayed.defer_weights(y, p, dp),
                             [0.4 / 0.35, 0.6 / 0.65, 0.2 / 0.125, 0.5 / 0.525], rtol=1e-6)


def test_defer_weights_clip_dp_to_p():
  # A delayed positive is a positive: f_dp > p is clipped to p, so w+ <= 2.
  w = delayed.defer_weights(jnp.array([1.0, 1.0]), jnp.array([0.1, 0.0]), jnp.array([0.5, 0.2]))
  np.testing.assert_allclose(w, [2.0, 1.0], rtol=1e-6)


def test_real_negative_prob_and_fnc():
  np.testing.assert_allclose(delayed.real_negative_prob(np.array([0.2, 0.5]), np.array([0.2, 0.0])),
                             [0.8 / 1.0, 1.0])
  q = np.array([0.0, 0.1, 1 / 3, 0.5, 0.7])
  np.testing.assert_allclose(delayed.fnc_calibrate(q), [0.0, 0.1 / 0.9, 0.5, 1 - 1e-6, 1 - 1e-6])
  # jax path gives the same.
  np.testing.assert_allclose(delayed.fnc_calibrate(jnp.asarray(q[:3])), [0.0, 0.1 / 0.9, 0.5],
                             rtol=1e-6)


def test_losses_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=6).astype(np.float32)
  y = np.array([1, 0, 0, 1, 0, 1], np.float32)
  m = np.array([1, 1, 1, 1, 1, 0], np.float32)  # last row padding
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  bce = np_bce(logits, y)
  n = m.sum()
  w_fnw = np.where(y > 0, 1 + p, (1 - p) * (1 + p))
  np.testing.assert_allclose(delayed.fnw_loss(logits, y, m), np.sum(m * w_fnw * bce) / n, rtol=1e-5)
  dp, rn = rng.uniform(0, 0.3, 6), rng.uniform(0.5, 1, 6)
  packed = np.stack([y, dp, rn], 1).astype(np.float32)
  w_es = np.where(y > 0, 1 + dp, (1 + dp) * rn)
  np.testing.assert_allclose(delayed.esdfm_loss(logits, packed, m), np.sum(m * w_es * bce) / n,
                             rtol=1e-5)
  dpc = np.minimum(dp, p)
  w_df = np.where(y > 0, p / (p - dpc / 2), (1 - p) / (1 - p + dpc / 2))
  np.testing.assert_allclose(delayed.defer_loss(logits, np.stack([y, dp], 1).astype(np.float32), m),
                             np.sum(m * w_df * bce) / n, rtol=1e-5)
  np.testing.assert_allclose(delayed.plain_loss(logits, y, m), np.sum(m * bce) / n, rtol=1e-5)


def test_fnw_weights_have_no_gradient():
  # d/dlogit of FNW = w * (sigmoid - y) with w treated as a constant.
  logits = jnp.array([0.3, -1.2])
  y = jnp.array([1.0, 0.0])
  g = jax.grad(lambda x: delayed.fnw_loss(x, y, jnp.ones(2)))(logits)
  p = np.asarray(jax.nn.sigmoid(logits), np.float64)
  w = np.where(np.asarray(y) > 0, 1 + p, (1 - p) * (1 + p))
  np.testing.assert_allclose(g, w * (p - np.asarray(y)) / 2, rtol=1e-5)


# ---------------------------------------------------------------------------
# The corrections are unbiased: under each join's label distribution q, the
# expected weighted loss is minimised at the true p.


def _argmin_logit(loss_of_logit):
  grid = np.linspace(-6, 6, 24001)
  return grid[np.argmin(loss_of_logit(grid))]


@pytest.mark.parametrize("p", [0.05, 0.3, 0.7])
def test_fnw_fixed_point_is_true_p(p):
  # Fast emit: q(1) = p / (1 + p). With f = p the FNW-weighted expected gradient vanishes:
  q1 = p / (1 + p)
  w = np.asarray(delayed.fnw_weights(jnp.array([1.0, 0.0]), jnp.array([p, p])), np.float64)
  grad = q1 * w[0] * (p - 1) + (1 - q1) * w[1] * p
  assert abs(grad) < 1e-7
  # Without the weights the plain loss is minimised at q1 = p/(1+p) (under-prediction) ...
  x = _argmin_logit(lambda t: q1 * np_bce(t, 1) + (1 - q1) * np_bce(t, 0))
  assert abs(1 / (1 + math.exp(-x)) - q1) < 1e-3
  # ... which FNC maps back to p.
  assert abs(delayed.fnc_calibrate(np.array(1 / (1 + math.exp(-x)))) - p) < 2e-3
  # FNC's seed loss on complete labels (y ~ p) has the same minimiser q1.
  seed = jax.vmap(lambda t, y: delayed.fnc_seed_loss(t[None], y[None], jnp.ones(1)), (0, None))
  x = _argmin_logit(lambda t: p * np.asarray(seed(jnp.asarray(t, jnp.float32), jnp.float32(1)), np.float64)
                    + (1 - p) * np.asarray(seed(jnp.asarray(t, jnp.float32), jnp.float32(0)), np.float64))
  assert abs(1 / (1 + math.exp(-x)) - q1) < 1e-3


@pytest.mark.parametrize("p,dp", [(0.3, 0.1), (0.6, 0.5), (0.1, 0.0)])
def test_esdfm_and_defer_fixed_points(p, dp):
  rn = (1 - p) / (1 - p + dp)
  # ES-DFM: q(1) = p / (1 + dp); weights from the exact dp, rn; stationary at f = p.
  q1 = p / (1 + dp)
  w = np.asarray(delayed.esdfm_weights(jnp.array([1.0, 0.0]), jnp.array([dp, dp]),
                                       jnp.array([rn, rn])), np.float64)
  x = _argmin_logit(lambda t: q1 * w[0] * np_bce(t, 1) + (1 - q1) * w[1] * np_bce(t, 0))
  assert abs(1 / (1 + math.exp(-x)) - p) < 1e-3
  # DEFER: q(1) = p - dp / 2; weights evaluated at f = p make the gradient vanish.
  q1 = p - dp / 2
  w = np.asarray(delayed.defer_weights(jnp.array([1.0, 0.0]), jnp.array([p, p]),
                                       jnp.array([dp, dp])), np.float64)
  grad = q1 * w[0] * (p - 1) + (1 - q1) * w[1] * p
  assert abs(grad) < 1e-6


def test_esdfm_weights_limits():
  # No delayed positives (f_dp = 0, f_rn = 1): plain BCE weights.
  w = delayed.esdfm_weights(jnp.array([1.0, 0.0]), jnp.zeros(2), jnp.ones(2))
  np.testing.assert_allclose(w, [1.0, 1.0])
  # Every observed negative fake (f_rn = 0): negatives get no weight.
  w = delayed.esdfm_weights(jnp.array([1.0, 0.0]), jnp.full(2, 0.4), jnp.zeros(2))
  np.testing.assert_allclose(w, [1.4, 0.0], rtol=1e-6)
  # e = 0 (fast emit): f_dp = p and f_rn = (1-p)/(1-p+p) = 1-p: ES-DFM == FNW.
  p = jnp.array([0.2, 0.2, 0.7, 0.7])
  y = jnp.array([1.0, 0.0, 1.0, 0.0])
  np.testing.assert_allclose(delayed.esdfm_weights(y, p, delayed.real_negative_prob(p, p)),
                             delayed.fnw_weights(y, p), rtol=1e-6)


# ---------------------------------------------------------------------------
# Targets.


def test_aux_targets():
  y = np.array([1, 1, 0, 1], np.float32)
  delay = np.array([100.0, 5000.0, np.inf, 900.0], np.float32)
  t, m = delayed.aux_targets(y, delay, wait_s=900.0)
  np.testing.assert_array_equal(t[:, 0], [0, 1, 0, 0])     # delayed positive
  np.testing.assert_array_equal(t[:, 1], [0, 0, 1, 0])     # real negative
  np.testing.assert_array_equal(m[:, 0], [1, 1, 1, 1])
  np.testing.assert_array_equal(m[:, 1], [0, 1, 1, 0])     # observed negative at e


def test_aux_targets_from_defer_kinds():
  y, m = delayed.aux_targets_from_kinds(np.array([0, 1, 2, 3]))
  np.testing.assert_array_equal(y, [[0, 0], [1, 0], [0, 1], [0, 0]])
  np.testing.assert_array_equal(m, [[0, 0], [1, 1], [1, 1], [1, 0]])


def test_head_targets_maturity():
  s = (10.0, 100.0, 1000.0)
  label = np.array([1, 0, 1, 1, 0], np.float32)     # observed at the emission's snapshot
  delay = np.array([5, 50, 50, 500, 500], np.float32)  # row 1, 4: not converted *yet*
  kind = np.array([0, 0, 1, 2, 1])
  y, m = delayed.head_targets(label, delay, kind, s, "mature")
  np.testing.assert_array_equal(y, [[1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]])
  # Head k is mature at snapshot j iff k <= j.
  np.testing.assert_array_equal(m, [[1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 0]])
  _, m_new = delayed.head_targets(label, delay, kind, s, "newest")
  np.testing.assert_array_equal(m_new, np.eye(3)[kind])
  _, m_all = delayed.head_targets(label, delay, kind, s, all_mature=True)
  assert m_all.min() == 1
  with pytest.raises(ValueError, match="train_heads"):
    delayed.head_targets(label, delay, kind, s, "all")


def test_multihead_loss_only_from_mature_heads():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(4, 3)).astype(np.float32)
  y = rng.integers(0, 2, size=(4, 3)).astype(np.float32)
  mask = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0]], np.float32)
  w = np.array([1, 1, 1, 0], np.float32)
  packed = np.concatenate([y, mask], 1)
  got = delayed.multihead_loss(logits, packed, w)
  want = np.sum(w[:, None] * mask * np_bce(logits, y)) / 3
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Immature heads get exactly zero gradient.
  g = np.asarray(jax.grad(lambda x: delayed.multihead_loss(x, packed, w))(jnp.asarray(logits)))
  assert np.all(g[mask * w[:, None] == 0] == 0)
  assert np.all(g[mask * w[:, None] == 1] != 0)


# ---------------------------------------------------------------------------
# Average precision.


def brute_ap(y, p, w):
  ap, total = 0.0, np.sum(w * y)
  prev_recall = 0.0
  for t in np.sort(np.unique(p))[::-1]:
    sel = p >= t
    tp = np.sum((w * y)[sel])
    recall = tp / total
    ap += (recall - prev_recall) * tp / np.sum(w[sel])
    prev_recall = recall
  return ap


def test_average_precision_against_brute_force():
  rng = np.random.default_rng(2)
  p = np.round(rng.uniform(size=300), 2)   # ties
  y = (rng.uniform(size=300) < p).astype(float)
  w = rng.integers(0, 3, size=300).astype(float)
  assert delayed.average_precision(y, p, w) == pytest.approx(brute_ap(y, p, w), rel=1e-12)
  assert delayed.average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(
      (1 + 2 / 3) / 2)
  assert math.isnan(delayed.average_precision([0, 0], [0.1, 0.2]))
  sm = delayed.StreamMetrics()
  sm.update(y[:150], p[:150], w[:150])
  sm.update(y[150:], p[150:], w[150:])
  assert sm.result()["pr_auc"] == pytest.approx(brute_ap(y, p, w), abs=1e-9)


# ---------------------------------------------------------------------------
# The tower.


def _rows(specs, b=6, f=3, seed=0):
  rng = np.random.default_rng(seed)
  rows = {s.name: rng.normal(0, 0.5, size=(b, f, s.dim)).astype(np.float32) for s in specs}
  return rows, rng.normal(size=(b, 2)).astype(np.float32)


def test_tower_with_one_head_is_deepfm():
  tower = MultiHeadTower(num_heads=1, embed_dim=4, mlp_dims=(5, 3))
  deepfm = DeepFM(embed_dim=4, mlp_dims=(5, 3))
  rows, dense = _rows(deepfm.table_specs())
  v = jax.jit(deepfm.init)(jax.random.PRNGKey(3), rows, dense)
  rng = np.random.default_rng(0)
  v = jax.tree_util.tree_map(lambda x: jnp.asarray(0.5 * rng.normal(size=x.shape), x.dtype), v)
  p = v["params"]
  tv = {"params": {"mlp": p["mlp"], "heads": {"kernel": p["deep_out"]["kernel"]},
                   "bias": p["first_order"]["bias"][None],
                   "w_dense": p["first_order"]["w_dense"][:, None],
                   "fm_scale": jnp.ones((1,))}}
  want = jax.jit(deepfm.apply)(v, rows, dense)
  got = jax.jit(tower.apply)(tv, rows, dense)
  assert got.shape == (6, 1)
  np.testing.assert_allclose(got[:, 0], want, rtol=1e-5, atol=1e-6)


def test_tower_heads_and_serving():
  tower = MultiHeadTower(num_heads=3, embed_dim=4, mlp_dims=(5,))
  assert [(s.name, s.dim) for s in tower.table_specs()] == [("linear", 3), ("embedding", 4)]
  rows, dense = _rows(tower.table_specs())
  v = jax.jit(tower.init)(jax.random.PRNGKey(0), rows, dense)
  apply = jax.jit(tower.apply)
  logits = apply(v, rows, dense)
  assert logits.shape == (6, 3)
  # Head k's logit uses its own column of the linear table.
  rows2 = dict(rows)
  rows2["linear"] = rows["linear"].copy()
  rows2["linear"][:, :, 1] += 1.0
  d = np.asarray(apply(v, rows2, dense) - logits)
  np.testing.assert_allclose(d[:, 1], 3.0, rtol=1e-5)
  np.testing.assert_allclose(d[:, [0, 2]], 0.0, atol=1e-5)
  sig = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
  np.testing.assert_allclose(serve_probability(logits), np.minimum(sig.sum(1), 1 - 1e-6), rtol=1e-5)
  np.testing.assert_allclose(serve_probability(jnp.full((2, 3), 5.0)), 1 - 1e-6)
  with pytest.raises(ValueError, match="num_heads"):
    MultiHeadTower(num_heads=0)


def test_config_validation():
  c = ml_collections.ConfigDict({"delayed": delayed.delayed_config_defaults()})
  c.delayed.method = "fnw"
  assert delayed.resolve_delayed_config(c).join_mode == "fast"
  c.delayed.join_mode = "wait"
  with pytest.raises(ValueError, match="delayed.join_mode"):
    delayed.resolve_delayed_config(c)
  c.delayed.method = "vanilla"
  assert delayed.resolve_delayed_config(c).join_mode == "wait"
  c.delayed.method = "nope"
  with pytest.raises(ValueError, match="delayed.method"):
    delayed.resolve_delayed_config(c)
  bad = ml_collections.ConfigDict({"delayed": {"wait": 3}})
  with pytest.raises(ValueError, match="delayed.wait"):
    delayed.resolve_delayed_config(bad)
  c = ml_collections.ConfigDict({"delayed": delayed.delayed_config_defaults()})
  c.delayed.snapshot_s = (10.0, 5.0)
  with pytest.raises(ValueError, match="snapshot_s"):
    delayed.resolve_delayed_config(c)


# ---------------------------------------------------------------------------
# End to end, on the synthetic stream through rectrain.data.delay_join.

E2E_ROWS_PER_DAY = 10_000


def small_config(method, rows=30_000, **delayed_overrides):
  from rectrain.configs import default_config
  c = default_config()
  c.seed = 0
  c.data.max_rows = rows
  c.data.batch_size = 512
  c.data.cat_buckets = 1 << 12
  c.data.synthetic.rows_per_day = E2E_ROWS_PER_DAY
  c.model = ml_collections.ConfigDict({"name": "lr"})
  c.optim.sparse.learning_rate = 0.1
  c.optim.dense.learning_rate = 0.01
  c.train.steps_per_dispatch = 1   # one compiled shape per step function
  c.data.synthetic.drift.update_hours = 6.0
  c.train.progress = False
  c.delayed = delayed.delayed_config_defaults()
  c.delayed.method = method
  c.delayed.attribution_s = 86400.0
  c.delayed.wait_s = 1800.0
  c.delayed.snapshot_s = (3600.0, 6 * 3600.0, 86400.0)
  c.delayed.window_s = 4 * 3600.0
  c.delayed.seed_days = 1.0
  c.delayed.aux.mlp_dims = ()
  c.delayed.aux.embed_dim = 2
  for key, value in delayed_overrides.items():
    c.delayed[key] = value
  return c


@pytest.fixture(scope="module")
def fast_runs():
  pytest.importorskip("rectrain.data.delay_join")
  return {m: delayed.train_delayed(small_config(m)) for m in ("vanilla", "fnw", "esdfm")}


def test_fast_emit_vanilla_under_predicts_and_corrections_help(fast_runs):
  van, fnw, es = fast_runs["vanilla"], fast_runs["fnw"], fast_runs["esdfm"]
  assert van["join_mode"] == "fast" and es["join_mode"] == "esdfm"
  # Every method is scored on the same impressions with the same true labels.
  assert van["rows"] == fnw["rows"] == es["rows"] == 20_000
  assert van["base_rate"] == fnw["base_rate"] == es["base_rate"]
  assert van["pcoc"] < 0.9
  assert fnw["pcoc"] > van["pcoc"] + 0.05
  assert es["pcoc"] > van["pcoc"] + 0.05
  assert abs(fnw["pcoc"] - 1) < abs(van["pcoc"] - 1)
  for s in (van, fnw, es):
    assert 0.55 < s["auc"] < 1 and 0 < s["pr_auc"] < 1 and s["logloss"] > 0


def test_seed_and_incremental_protocol(tmp_path):
  pytest.importorskip("rectrain.data.delay_join")
  import json
  s = delayed.train_delayed(small_config("multihead", rows=20_000), workdir=str(tmp_path))
  assert s["seed_rows"] == E2E_ROWS_PER_DAY and s["incremental_rows"] == 10_000
  assert s["seed"]["rows"] == 10_000 and s["rows"] == 10_000
  assert s["join_mode"] == "snapshots"
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  phases = [l["phase"] for l in lines]
  assert phases == sorted(phases, key=lambda p: p != "seed")  # seed windows first
  assert {"seed", "incremental"} == set(phases)
  assert sum(l.get("rows", 0) for l in lines if l["phase"] == "incremental") == 10_000
  assert all("train_loss" in l for l in lines if l.get("emitted"))
  summary = json.load(open(tmp_path / "summary.json"))
  assert summary["method"] == "multihead" and 0 < summary["pcoc"] < 2
  # Pre-trained: the seed model, evaluated on the incremental days without learning.
  p = delayed.train_delayed(small_config("pretrained", rows=20_000))
  assert p["rows"] == 10_000 and p["join_mode"] == "oracle"
  assert p["seed_steps"] > 0 and p["steps"] == p["seed_steps"]
  assert s["steps"] > s["seed_steps"] > 0


def test_warm_start_and_frozen_model(tmp_path):
  """train.warm_start.path and train.learn=False in the delayed-feedback runner."""
  pytest.importorskip("rectrain.data.delay_join")
  import json
  from rectrain.train.loop import train_stream
  src = small_config("vanilla", rows=10_000)
  src.delayed.method = ""          # the streaming loop: a checkpoint to start from
  trained = train_stream(src, workdir=str(tmp_path / "src"))

  def run(name, *sets):
    c = small_config("vanilla", rows=20_000)
    c.train.warm_start.path = str(tmp_path / "src") if "warm" in sets else ""
    c.train.learn = "frozen" not in sets
    s = delayed.train_delayed(c, workdir=str(tmp_path / name))
    return s, [json.loads(l) for l in open(tmp_path / name / "metrics.jsonl")]

  frozen, frozen_lines = run("frozen", "warm", "frozen")
  warm, warm_lines = run("warm", "warm")
  fresh, fresh_lines = run("fresh")
  assert frozen["steps"] == 0 and frozen["seed_steps"] == 0
  assert frozen["warm_start"]["tables"] and warm["warm_start"]["tables"]
  assert "warm_start" not in fresh
  # frozen: the final tables are the checkpoint's, bit for bit
  for name, t in trained["_state"].tables.items():
    np.testing.assert_array_equal(np.asarray(frozen["_state"].tables[name]), np.asarray(t))
  # the first window is scored before anything is learned: the warm-started model's
  # predictions, the same with and without learning, unlike a fresh model's
  assert warm_lines[0]["logloss"] == frozen_lines[0]["logloss"]
  assert warm_lines[0]["logloss"] != fresh_lines[0]["logloss"]
  assert warm["steps"] == fresh["steps"] > 0
  # every window is still counted, and no window of the frozen run has a training loss
  assert len(frozen_lines) == len(fresh_lines)
  assert not any("train_loss" in l for l in frozen_lines)
  assert sum(l.get("emitted", 0) for l in frozen_lines) == sum(
      l.get("emitted", 0) for l in fresh_lines)


def test_the_runner_on_a_real_delay_column(tmp_path):
  """data.source=table with the criteo_conversion_logs card: the delays come from the file's
  conversion timestamps; the same rows as the synthetic stream give the same run."""
  pytest.importorskip("rectrain.data.delay_join")
  from rectrain.data import make_stream
  c = small_config("esdfm", rows=20_000)
  c.model = ml_collections.ConfigDict({"name": "lr"})
  # the synthetic rows written as Criteo conversion logs: click ts, conversion ts or empty,
  # 8 integer and 9 categorical columns (the stream's first 17 fields, as their row ids)
  batches = list(make_stream(c.data, seed=c.seed))
  lines = []
  for b in batches:
    for i in np.flatnonzero(b["weight"] > 0):
      t = 1_600_012_800 + int(round(b["time"][i]))   # whole seconds; a multiple of window_s
      d = b["delay"][i]
      conv = "" if not np.isfinite(d) else str(t + max(int(round(float(d))), 0))
      ints = "\t".join("" for _ in range(8))
      cats = "\t".join(f"{int(v):x}" for v in b["cat"][i, :9])
      lines.append(f"{t}\t{conv}\t{ints}\t{cats}")
  path = tmp_path / "data.txt"
  path.write_text("\n".join(lines) + "\n")
  real = small_config("esdfm", rows=20_000)
  real.data.source, real.data.schema, real.data.path = "table", "criteo_conversion_logs", str(path)
  real.data.max_rows = 0
  s = delayed.train_delayed(real, workdir=str(tmp_path / "run"))
  assert s["seed_rows"] + s["incremental_rows"] == len(lines) == 20_000
  # 1 seed day of 10,000 rows; rounding times to seconds may move a row across the boundary
  assert abs(s["seed_rows"] - 10_000) <= 2
  assert s["steps"] > s["seed_steps"] > 0 and 0.5 < s["auc"] < 1 and 0 < s["pcoc"] < 2
  # a schema without a delay column is refused by name
  bad = small_config("esdfm", rows=20_000)
  bad.data.source, bad.data.schema, bad.data.path = "table", "avazu", str(path)
  with pytest.raises(ValueError, match="needs a label_time column"):
    delayed.train_delayed(bad)
