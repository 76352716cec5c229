"""The jitted training step: sparse row updates, progressive predictions, non-finite skip."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rectrain.data.batch import add_unique
from rectrain.models import build_model, default_model_config, init_tables
from rectrain.optim import get_optimizer, get_sparse_optimizer
from rectrain.train.step import (init_train_state, make_multi_step, make_predict,
                                 make_train_step, weighted_logloss)

NUM_ROWS, F, I, B = 200, 5, 3, 16


def _batch(seed, num_rows=NUM_ROWS, b=B):
  rng = np.random.default_rng(seed)
  batch = {
      "label": rng.integers(0, 2, b).astype(np.float32),
      "weight": np.ones(b, np.float32),
      # ids concentrated in the first half: the second half is never touched.
      "cat": rng.integers(0, num_rows // 2, (b, F)).astype(np.int32),
      "dense": rng.normal(size=(b, I)).astype(np.float32),
  }
  return add_unique(batch, num_rows)


def _device(batch):
  return {k: jnp.asarray(batch[k]) for k in ("label", "weight", "dense", "unique", "inverse")}


def _setup(name="deepfm", sparse="rowwise_adagrad", **sparse_kw):
  sparse_kw.setdefault("learning_rate", 0.05)
  cfg = default_model_config(name)
  if "embed_dim" in cfg:
    cfg.embed_dim = 4
  for key in ("mlp_dims", "mlp"):
    if key in cfg:
      cfg[key] = (8,)
  model = build_model(cfg)
  specs = model.table_specs()
  tables = init_tables(jax.random.PRNGKey(0), specs, NUM_ROWS)
  # Non-zero linear weights so that every table's gradient path is exercised.
  tables = {k: v + 0.01 * jax.random.normal(jax.random.PRNGKey(7), v.shape) for k, v in tables.items()}
  rows = {s.name: jnp.zeros((2, F, s.dim)) for s in specs}
  dense_params = model.init(jax.random.PRNGKey(1), rows, jnp.zeros((2, I)))
  dense_opt = get_optimizer("adam", learning_rate=1e-2)
  sparse_opts = {s.name: get_sparse_optimizer(sparse, **sparse_kw) for s in specs}
  state = init_train_state(dense_params, tables, dense_opt, sparse_opts)
  return model, state, dense_opt, sparse_opts


def test_sparse_step_equals_dense_update_and_leaves_untouched_rows():
  model, state, dense_opt, sparse_opts = _setup(learning_rate=0.1, initial_accumulator_value=0.1)
  batch = _batch(0)
  step = jax.jit(make_train_step(model, dense_opt, sparse_opts))
  new_state, out = step(state, _device(batch))

  # Dense reference: differentiate w.r.t. the WHOLE tables, apply the dense
  # version of the same row-wise optimizer to every row.
  def full_loss(tables, dense_params):
    rows = {k: v[batch["cat"]] for k, v in tables.items()}
    logits = model.apply(dense_params, rows, jnp.asarray(batch["dense"]))
    return weighted_logloss(logits, jnp.asarray(batch["label"]), jnp.asarray(batch["weight"]))

  g_tables = jax.grad(full_loss)(state.tables, state.dense_params)
  dense_rowwise = get_optimizer("rowwise_adagrad", learning_rate=0.1, initial_accumulator_value=0.1)
  touched = np.zeros(NUM_ROWS, bool)
  touched[np.unique(batch["cat"])] = True
  assert touched[NUM_ROWS // 2:].sum() == 0
  for name, table in state.tables.items():
    opt_state = dense_rowwise.init(table)
    upd, _ = dense_rowwise.update(g_tables[name], opt_state, table)
    expected = np.asarray(optax.apply_updates(table, upd))
    got = np.asarray(new_state.tables[name])
    np.testing.assert_allclose(got[touched], expected[touched], rtol=2e-5, atol=1e-6)
    assert np.array_equal(got[~touched], np.asarray(table)[~touched])  # bit-identical
    assert not np.array_equal(got[touched], np.asarray(table)[touched])
    for leaf_old, leaf_new in zip(jax.tree_util.tree_leaves(state.table_opt_state[name]),
                                  jax.tree_util.tree_leaves(new_state.table_opt_state[name])):
      assert np.array_equal(np.asarray(leaf_new)[~touched], np.asarray(leaf_old)[~touched])
  assert int(new_state.step) == 1 and int(new_state.nonfinite) == 0
  assert bool(out.applied)


def test_predictions_are_made_before_learning():
  model, state, dense_opt, sparse_opts = _setup()
  batch = _batch(1)
  predict = make_predict(model)
  before = np.asarray(predict(state.dense_params, state.tables, _device(batch)))
  step = jax.jit(make_train_step(model, dense_opt, sparse_opts))
  new_state, out = step(state, _device(batch))
  np.testing.assert_allclose(np.asarray(out.preds_B), before, rtol=1e-6)
  after = np.asarray(predict(new_state.dense_params, new_state.tables, _device(batch)))
  assert np.abs(after - before).max() > 1e-4


def test_zero_weight_rows_do_not_change_the_gradient():
  model, state, dense_opt, sparse_opts = _setup(sparse="sgd", learning_rate=0.5)
  step = jax.jit(make_train_step(model, dense_opt, sparse_opts))
  batch = _batch(2)
  padded = {k: v.copy() for k, v in batch.items()}
  # Padding rows: weight 0, arbitrary labels, ids that exist elsewhere in the batch.
  padded["weight"][B // 2:] = 0
  padded["label"][B // 2:] = 1 - padded["label"][B // 2:]
  half = {k: (v[: B // 2] if np.ndim(v) and v.shape[0] == B else v) for k, v in batch.items()}
  half = add_unique({k: half[k] for k in ("label", "weight", "cat", "dense")}, NUM_ROWS)
  s1, _ = step(state, _device(padded))
  s2, _ = step(state, _device(half))
  for name in s1.tables:
    np.testing.assert_allclose(np.asarray(s1.tables[name]), np.asarray(s2.tables[name]),
                               rtol=1e-5, atol=1e-7)


def test_nonfinite_batch_is_skipped_and_counted():
  model, state, dense_opt, sparse_opts = _setup()
  multi = make_multi_step(make_train_step(model, dense_opt, sparse_opts), donate=False)
  b1, b2 = _batch(3), _batch(4)
  b2["dense"][0, 0] = np.nan
  stacked = {k: jnp.stack([_device(b1)[k], _device(b2)[k]]) for k in _device(b1)}
  new_state, out = multi(state, stacked)
  assert list(np.asarray(out.applied)) == [True, False]
  assert int(new_state.nonfinite) == 1 and int(new_state.step) == 1
  # Equal to applying only the first batch.
  step = jax.jit(make_train_step(model, dense_opt, sparse_opts))
  only_first, _ = step(state, _device(b1))
  for a, b in zip(jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(only_first)):
    if np.shape(a) == ():
      continue
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_multi_step_equals_sequential_steps_and_compiles_once():
  model, state, dense_opt, sparse_opts = _setup()
  traces = []
  base = make_train_step(model, dense_opt, sparse_opts)

  def counted(s, b):
    traces.append(1)
    return base(s, b)

  multi = make_multi_step(counted, donate=False)
  batches = [_device(_batch(10 + i)) for i in range(4)]
  stack = lambda bs: {k: jnp.stack([b[k] for b in bs]) for k in bs[0]}
  s_multi, _ = multi(state, stack(batches[:2]))
  s_multi, _ = multi(s_multi, stack(batches[2:]))
  assert len(traces) == 1  # second dispatch reuses the compiled scan
  step = jax.jit(base)
  s_seq = state
  for b in batches:
    s_seq, _ = step(s_seq, b)
  for a, b in zip(jax.tree_util.tree_leaves(s_multi), jax.tree_util.tree_leaves(s_seq)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["lr", "fm", "wide_deep", "deepfm", "dcnv2", "dlrm"])
def test_every_model_learns_a_separable_signal(name):
  model, state, dense_opt, sparse_opts = _setup(name, learning_rate=0.5)
  multi = make_multi_step(make_train_step(model, dense_opt, sparse_opts), donate=False)
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(60):
    # Each field owns 20 rows, as with per-field offsets of a fused table.
    cat = (rng.integers(0, 20, (B, F)) + 20 * np.arange(F)).astype(np.int32)
    label = (cat[:, 0] % 2).astype(np.float32)  # the label is a function of field 0's id
    batches.append(_device(add_unique({"label": label, "weight": np.ones(B, np.float32),
                                       "cat": cat, "dense": np.zeros((B, I), np.float32)},
                                      NUM_ROWS)))
  stacked = {k: jnp.stack([b[k] for b in batches]) for k in batches[0]}
  state, out = multi(state, stacked)
  first = float(np.mean(np.asarray(out.loss)[:5]))
  last = float(np.mean(np.asarray(out.loss)[-10:]))
  assert last < 0.5 * first, (first, last)
