"""Simulated asynchronous training: stale gradients, delay compensation, schedules.

The reference is a plain loop that keeps a full copy of every TrainState
theta_0, theta_1, ..., takes batch t's gradient at theta_{t - tau_t} (gathering
the rows from that full stale table), applies the DC-ASGD correction in NumPy,
and applies the optimizers to theta_t.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rectrain.data.batch import add_unique
from rectrain.models import build_model, default_model_config, init_tables
from rectrain.optim import (fixed_staleness, get_optimizer, get_sparse_optimizer,
                            random_staleness, sparse_apply)
from rectrain.train import checkpoint as ckpt
from rectrain.train.transforms import RunState
from rectrain.train.async_sim import (NAME, async_config_defaults, make_async_train_step,
                                      make_async_train_step_from_config)
from rectrain.train.step import (init_train_state, make_forward, make_multi_step,
                                 make_train_step, weighted_logloss)

NUM_ROWS, F, I, B = 200, 5, 3, 16
U = B * F
NUM_STEPS = 7


def _batch(seed):
  rng = np.random.default_rng(seed)
  batch = {
      "label": rng.integers(0, 2, B).astype(np.float32),
      "weight": np.ones(B, np.float32),
      # 80 draws from 100 rows: ids repeat within a batch and across steps, and
      # the second half of the table is never touched.
      "cat": rng.integers(0, NUM_ROWS // 2, (B, F)).astype(np.int32),
      "dense": rng.normal(size=(B, I)).astype(np.float32),
  }
  return add_unique(batch, NUM_ROWS)


def _device(batch):
  return {k: jnp.asarray(batch[k]) for k in ("label", "weight", "dense", "unique", "inverse")}


def _stack(batches):
  return {k: jnp.stack([b[k] for b in batches]) for k in batches[0]}


HOST_BATCHES = [_batch(100 + i) for i in range(NUM_STEPS)]
BATCHES = [_device(b) for b in HOST_BATCHES]
STACKED = _stack(BATCHES)


def _setup():
  cfg = default_model_config("deepfm")
  cfg.embed_dim = 4
  cfg.mlp_dims = (8,)
  model = build_model(cfg)
  specs = model.table_specs()
  tables = init_tables(jax.random.PRNGKey(0), specs, NUM_ROWS)
  tables = {k: v + 0.05 * jax.random.normal(jax.random.PRNGKey(7), v.shape)
            for k, v in tables.items()}
  rows = {s.name: jnp.zeros((2, F, s.dim)) for s in specs}
  dense_params = model.init(jax.random.PRNGKey(1), rows, jnp.zeros((2, I)))
  dense_opt = get_optimizer("adam", learning_rate=3e-2)
  sparse_opts = {s.name: get_sparse_optimizer("rowwise_adagrad", learning_rate=0.3)
                 for s in specs}
  state = init_train_state(dense_params, tables, dense_opt, sparse_opts)
  return model, state, dense_opt, sparse_opts


MODEL, STATE0, DENSE_OPT, SPARSE_OPTS = _setup()


_STEPS, _RUNS = {}, {}


def _run_async(batches=None, fresh=False, **kw):
  """Runs the async step over ``batches`` (default: all) from STATE0.

  The jitted step and the default run are memoised per configuration (compiles
  dominate the test time); ``fresh`` builds a new step.
  """
  kw.setdefault("max_unique", U)
  kw.setdefault("staleness", "fixed")
  kw.setdefault("delay_compensation", None)
  key = repr(sorted(kw.items()))
  if batches is None and not fresh and key in _RUNS:
    return _RUNS[key]
  if fresh or key not in _STEPS:
    init_fn, step_fn = make_async_train_step(MODEL, DENSE_OPT, SPARSE_OPTS, **kw)
    _STEPS[key] = (init_fn, make_multi_step(step_fn, donate=False))
  init_fn, multi = _STEPS[key]
  result = multi(init_fn(STATE0), STACKED if batches is None else batches)
  if batches is None and not fresh:
    _RUNS[key] = result
  return result


_forward = make_forward(MODEL)


@jax.jit
def _grads_at(dense_params, tables, batch):
  """Loss, logits and gradients at (dense_params, tables), rows gathered from full tables."""
  def objective(dense, rows):
    logits = _forward(dense, rows, batch)
    return weighted_logloss(logits, batch["label"], batch["weight"]), logits
  rows = {k: v.at[batch["unique"]].get(mode="fill", fill_value=0) for k, v in tables.items()}
  (loss, logits), grads = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(
      dense_params, rows)
  return loss, logits, grads, rows


def _np_dc(g, w, ws, ms, lam, adaptive, decay, eps):
  g, w, ws = (np.asarray(x, np.float32) for x in (g, w, ws))
  if adaptive:
    ms = np.float32(decay) * ms + np.float32(1 - decay) * g * g
    lam = np.float32(lam) / np.sqrt(ms + np.float32(eps))
  return (g + np.float32(lam) * g * g * (w - ws)).astype(np.float32), ms


def _reference(taus, dc=None, predictions="stale", batches=BATCHES):
  """Plain loop over full state copies; returns (final TrainState, preds, losses)."""
  history = [STATE0]
  leaves0, treedef = jax.tree.flatten(STATE0.dense_params)
  ms_dense = [np.zeros(np.shape(x), np.float32) for x in leaves0]
  ms_rows = {k: np.zeros(v.shape, np.float32) for k, v in STATE0.tables.items()}
  preds, losses = [], []
  for t, batch in enumerate(batches):
    cur, old = history[-1], history[t - taus[t]]
    assert 0 <= taus[t] <= t
    loss, logits, (g_dense, g_rows), rows_old = _grads_at(old.dense_params, old.tables, batch)
    _, logits_cur, _, rows_cur = _grads_at(cur.dense_params, cur.tables, batch)
    ids = np.asarray(batch["unique"])
    valid = ids < NUM_ROWS
    if dc is not None:
      g_leaves = jax.tree.leaves(g_dense)
      w_leaves = jax.tree.leaves(cur.dense_params)
      ws_leaves = jax.tree.leaves(old.dense_params)
      new_leaves = []
      for i, (g, w, ws) in enumerate(zip(g_leaves, w_leaves, ws_leaves)):
        gd, ms_dense[i] = _np_dc(g, w, ws, ms_dense[i], dc["lambda_"], dc["adaptive"],
                                 dc["mean_square_decay"], dc["eps"])
        new_leaves.append(jnp.asarray(gd))
      g_dense = jax.tree.unflatten(treedef, new_leaves)
      new_rows = {}
      for name, g in g_rows.items():
        g = np.asarray(g)
        ms_u = np.zeros(g.shape, np.float32)
        ms_u[valid] = ms_rows[name][ids[valid]]
        gd, ms_u = _np_dc(g, rows_cur[name], rows_old[name], ms_u, dc["lambda_"],
                          dc["adaptive"], dc["mean_square_decay"], dc["eps"])
        if dc["adaptive"]:
          ms_rows[name][ids[valid]] = ms_u[valid]  # lazy: only touched rows
        new_rows[name] = jnp.asarray(gd)
      g_rows = new_rows
    upd, dense_opt_state = DENSE_OPT.update(g_dense, cur.dense_opt_state, cur.dense_params)
    dense = jax.tree.map(lambda p, u: p + u, cur.dense_params, upd)
    tables, table_opt = {}, {}
    for name, table in cur.tables.items():
      tables[name], table_opt[name] = sparse_apply(
          SPARSE_OPTS[name], table, cur.table_opt_state[name], batch["unique"], g_rows[name])
    history.append(cur._replace(step=cur.step + 1, dense_params=dense,
                                dense_opt_state=dense_opt_state, tables=tables,
                                table_opt_state=table_opt))
    preds.append(np.asarray(jax.nn.sigmoid(logits if predictions == "stale" else logits_cur)))
    losses.append(float(loss))
  return history[-1], np.stack(preds), np.array(losses)


def _assert_close(a_tree, b_tree, rtol=1e-6, atol=1e-6):
  a_leaves, b_leaves = jax.tree.leaves(a_tree), jax.tree.leaves(b_tree)
  assert len(a_leaves) == len(b_leaves)
  for a, b in zip(a_leaves, b_leaves):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def _max_diff(a_tree, b_tree):
  return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree)))


SYNC_STATE, SYNC_OUT = make_multi_step(make_train_step(MODEL, DENSE_OPT, SPARSE_OPTS),
                                       donate=False)(STATE0, STACKED)


@pytest.mark.parametrize("dc", [None, {"lambda_": 2.0, "adaptive": True}])
def test_tau_zero_equals_synchronous_step_bit_for_bit(dc):
  """Without DC bit for bit; with DC (a zero correction, other XLA fusions) to 1e-6."""
  astate, out = _run_async(tau=0, delay_compensation=dc)
  assert astate.feature(NAME).dense_history is None and astate.feature(NAME).row_history is None
  if dc is None:
    for a, b in zip(jax.tree.leaves((astate.train, out)), jax.tree.leaves((SYNC_STATE, SYNC_OUT))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  else:
    _assert_close((astate.train, out), (SYNC_STATE, SYNC_OUT))


def test_staleness_cases_are_exercised():
  """The tau=2 batches contain ids touched at t-1 and t-2, at only one of them, and at neither."""
  touched = [set(np.asarray(b["unique"])[: int(b["num_unique"])]) for b in HOST_BATCHES]
  seen = {"both": 0, "only_t-1": 0, "only_t-2": 0, "neither": 0}
  for t in range(2, NUM_STEPS):
    for i in touched[t]:
      a, b = i in touched[t - 1], i in touched[t - 2]
      seen["both" if a and b else "only_t-1" if a else "only_t-2" if b else "neither"] += 1
  assert min(seen.values()) > 0, seen


CONSTANT = {"lambda_": 100.0, "adaptive": False, "mean_square_decay": 0.95, "eps": 1e-7}
ADAPTIVE = {"lambda_": 2.0, "adaptive": True, "mean_square_decay": 0.9, "eps": 1e-7}


@pytest.mark.parametrize("dc", [None, CONSTANT, ADAPTIVE])
def test_fixed_tau_two_equals_reference_loop(dc):
  astate, out = _run_async(tau=2, delay_compensation=dc)
  ref_state, ref_preds, ref_losses = _reference([min(t, 2) for t in range(NUM_STEPS)], dc)
  _assert_close(astate.train, ref_state)
  np.testing.assert_allclose(np.asarray(out.preds_B), ref_preds, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out.loss), ref_losses, rtol=1e-6)
  assert np.asarray(out.applied).all() and int(astate.step) == NUM_STEPS
  assert list(np.asarray(jnp.stack([astate.feature(NAME).tau]))) == [2]
  # Staleness (and DC) matter far beyond the tolerance: the test can fail.
  assert _max_diff(astate.train.tables, SYNC_STATE.tables) > 1e-3
  assert _max_diff(astate.train.dense_params, SYNC_STATE.dense_params) > 1e-3
  if dc is not None:
    plain, _ = _run_async(tau=2)
    assert _max_diff(astate.train.tables, plain.train.tables) > 1e-4
    assert _max_diff(astate.train.dense_params, plain.train.dense_params) > 1e-4


def test_current_predictions_are_theta_t():
  astate, out = _run_async(tau=2, predictions="current")
  ref_state, ref_preds, ref_losses = _reference([min(t, 2) for t in range(NUM_STEPS)],
                                                predictions="current")
  _assert_close(astate.train, ref_state)
  np.testing.assert_allclose(np.asarray(out.preds_B), ref_preds, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out.loss), ref_losses, rtol=1e-6)  # loss stays stale
  stale, stale_out = _run_async(tau=2)
  assert np.abs(np.asarray(out.preds_B) - np.asarray(stale_out.preds_B)).max() > 1e-3


def test_dc_with_zero_lambda_equals_plain_asgd():
  """Adaptive DC with lambda = 0 (its constant path is the same correction without the EMA)."""
  plain, plain_out = _run_async(tau=2)
  astate, out = _run_async(tau=2, delay_compensation={"lambda_": 0.0, "adaptive": True})
  _assert_close((astate.train, out), (plain.train, plain_out))
  # The mean square is still tracked, and only at touched rows.
  ms = np.asarray(astate.feature(NAME).dc_rows["embedding"])
  assert ms[: NUM_ROWS // 2].max() > 0 and ms[NUM_ROWS // 2:].max() == 0


def test_adaptive_runs_and_differs_from_constant_and_plain():
  plain, _ = _run_async(tau=2)
  const, _ = _run_async(tau=2, delay_compensation=CONSTANT)
  adapt, out = _run_async(tau=2, delay_compensation=ADAPTIVE)
  assert np.isfinite(np.asarray(out.loss)).all() and np.asarray(out.applied).all()
  for other in (plain, const):
    assert _max_diff(adapt.train.tables, other.train.tables) > 1e-4
    assert _max_diff(adapt.train.dense_params, other.train.dense_params) > 1e-4
  assert float(np.asarray(adapt.feature(NAME).dc_rows["embedding"]).max()) > 0
  assert float(max(np.asarray(x).max() for x in jax.tree.leaves(adapt.feature(NAME).dc_dense))) > 0


def test_round_robin_equals_fixed_tau_workers_minus_one():
  rr, rr_out = _run_async(staleness="round_robin", workers=3)
  fixed, fixed_out = _run_async(staleness="fixed", tau=2)
  for a, b in zip(jax.tree.leaves((rr, rr_out)), jax.tree.leaves((fixed, fixed_out))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_random_staleness_is_seeded_and_matches_reference():
  a, out_a = _run_async(staleness="random", tau=3, seed=5)
  b, out_b = _run_async(fresh=True, staleness="random", tau=3, seed=5)
  for x, y in zip(jax.tree.leaves((a, out_a)), jax.tree.leaves((b, out_b))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  schedule = random_staleness(jax.random.PRNGKey(5), 3)
  taus = [int(schedule(t)) for t in range(NUM_STEPS)]
  assert len(set(taus[3:])) > 1, taus  # really random, not constant
  ref_state, ref_preds, _ = _reference(taus)
  _assert_close(a.train, ref_state)
  np.testing.assert_allclose(np.asarray(out_a.preds_B), ref_preds, rtol=1e-6, atol=1e-6)
  other_taus = [int(random_staleness(jax.random.PRNGKey(6), 3)(t)) for t in range(NUM_STEPS)]
  assert other_taus != taus


def test_nonfinite_batch_is_skipped_without_a_history_entry():
  """Batch 3 is non-finite: the run equals the reference over the other 6 batches."""
  bad = {k: np.array(v) for k, v in BATCHES[3].items()}
  bad["dense"][0, 0] = np.nan
  with_bad = _stack(BATCHES[:3] + [{k: jnp.asarray(v) for k, v in bad.items()}] + BATCHES[4:])
  astate, out = _run_async(batches=with_bad, tau=2)
  good = BATCHES[:3] + BATCHES[4:]
  ref_state, ref_preds, _ = _reference([min(t, 2) for t in range(len(good))], batches=good)
  assert list(np.asarray(out.applied)) == [True] * 3 + [False] + [True] * (NUM_STEPS - 4)
  assert int(astate.nonfinite) == 1 and int(astate.step) == NUM_STEPS - 1
  _assert_close(astate.train._replace(nonfinite=0), ref_state._replace(nonfinite=0))
  preds = np.asarray(out.preds_B)
  np.testing.assert_allclose(np.delete(preds, 3, axis=0), ref_preds, rtol=1e-6, atol=1e-6)


def test_wrong_unique_length_and_missing_max_unique_are_errors():
  init_fn, step_fn = make_async_train_step(MODEL, DENSE_OPT, SPARSE_OPTS, tau=2)
  with pytest.raises(ValueError, match="max_unique"):
    init_fn(STATE0)
  state = init_fn(STATE0, U + 1)
  with pytest.raises(ValueError, match="max_unique=81"):
    step_fn(state, BATCHES[0])


def test_checkpoint_resume_and_no_recompilation(tmp_path):
  """Orbax round trip of the async run state; three dispatches of one jitted scan trace it once."""
  init_fn, step_fn = make_async_train_step(MODEL, DENSE_OPT, SPARSE_OPTS, staleness="random",
                                           tau=2, max_unique=U, delay_compensation=ADAPTIVE)
  traces = []

  def counted(s, b):
    traces.append(1)
    return step_fn(s, b)

  multi = make_multi_step(counted, donate=False)
  first = {k: v[:3] for k, v in STACKED.items()}
  rest = {k: v[3:6] for k, v in STACKED.items()}
  mid, _ = multi(init_fn(STATE0), first)
  path = ckpt.save_checkpoint(str(tmp_path), 3, mid, {"batches": 3})
  restored, meta = ckpt.restore_checkpoint(path, init_fn(STATE0))
  assert isinstance(restored, RunState) and meta == {"batches": 3}
  assert restored.feature(NAME).row_history.last_step_N.max() == 2  # history was saved, not re-initialised
  assert jax.tree.structure(restored) == jax.tree.structure(mid)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(mid)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  state, _ = multi(mid, rest)
  state, _ = multi(state, rest)
  assert int(state.step) == 9
  assert multi._cache_size() == 1  # one compiled executable for all three dispatches
  assert len(traces) == 1


def test_config_defaults_and_errors():
  c = async_config_defaults()
  assert isinstance(c, ml_collections.ConfigDict)
  assert (c.enabled, c.staleness, c.tau, c.workers, c.delay_compensation, c.lambda_,
          c.mean_square_decay, c.eps, c.seed) == (False, "fixed", 0, 1, "none", 0.04, 0.95,
                                                  1e-7, 0)
  c.tau, c.delay_compensation, c.lambda_, c.mean_square_decay = 2, "adaptive", 2.0, 0.9
  init_fn, step_fn = make_async_train_step_from_config(MODEL, DENSE_OPT, SPARSE_OPTS, c, U)
  from_cfg, _ = make_multi_step(step_fn, donate=False)(init_fn(STATE0), STACKED)
  direct, _ = _run_async(tau=2, delay_compensation=ADAPTIVE)
  for a, b in zip(jax.tree.leaves(from_cfg), jax.tree.leaves(direct)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  def err(match, **changes):
    bad = async_config_defaults()
    for k, v in changes.items():
      bad[k] = v
    with pytest.raises(ValueError, match=match):
      make_async_train_step_from_config(MODEL, DENSE_OPT, SPARSE_OPTS, bad, U)

  err(r"train\.async_sim\.delay_compensation", delay_compensation="dc")
  err(r"train\.async_sim: async_sim staleness", staleness="lifo")
  err(r"train\.async_sim: async_sim tau=3.*workers - 1 = 1", staleness="round_robin",
      workers=2, tau=3)
  err(r"async_sim tau: must be >= 0", tau=-1)
  err(r"async_sim predictions", predictions="future")
  with pytest.raises(ValueError, match=r"train\.async_sim: unknown keys \['lr'\]"):
    make_async_train_step_from_config(MODEL, DENSE_OPT, SPARSE_OPTS, {"lr": 1}, U)
