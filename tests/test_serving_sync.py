"""The served copy of the streaming loop (rectrain/train/serving.py, config.serving).

References are separate runs: the predictions of a served copy synced at
event-time points must equal those of models trained on exactly the batches
before each sync point and then frozen (a prefix run per sync point, scored
with make_predict); an infinite interval must equal a model that never learns;
interval 0 must not change anything.
"""

import math
import os
import shutil

import jax
import numpy as np
import pytest

from rectrain import configs
from rectrain.data import make_stream
from rectrain.data.pipeline import with_unique
from rectrain.data.batch import DEVICE_KEYS
from rectrain.train.loop import create_model_and_state, train_stream
from rectrain.train.serving import SyncSchedule
from rectrain.train.step import make_predict

BATCH = 512
ROWS_PER_DAY = 8192          # a batch spans 5,400 s of event time
TINY = [
    f"data.max_rows={ROWS_PER_DAY}", f"data.batch_size={BATCH}", "data.cat_buckets=512",
    "model.name=fm", "model.embed_dim=4", "train.steps_per_dispatch=4", "train.warmup_batch=0",
    "train.progress=False", "metrics.window_rows=0", "metrics.time_windows=",
    f"data.synthetic.rows_per_day={ROWS_PER_DAY}", "data.synthetic.table_ranks=4096",
    "data.synthetic.block_rows=4096", "data.synthetic.calibration_rows=4096",
    # Fixed rates, so a stale model does worse: FM's tuned linear-table rate (0.43)
    # is too high for 512 buckets and 8,192 rows (live log loss 0.656 vs 0.560).
    "optim.tables={}", "optim.sparse.learning_rate=0.05",
]
CRITEO_SAMPLE = os.path.join(os.path.dirname(__file__), "data", "criteo_dac_head4222.tsv")


def tiny_config(*extra):
  config = configs.default_config()
  configs.apply_overrides(config, TINY + list(extra))
  return config


def _leaves(state):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]


def _batches(config):
  stream = make_stream(config.data, seed=config.seed)
  return stream, list(with_unique(iter(stream), stream.num_rows))


def _sync_batches(last_times, interval, freeze=0.0):
  """Reference rule, written independently: batches before which a sync happens."""
  t = np.minimum(last_times, freeze) if freeze else np.asarray(last_times)
  if interval == 0:
    key = t
  elif math.isinf(interval):
    key = np.zeros_like(t)
  else:
    key = np.floor(t / interval)
  return [0] + [b for b in range(1, len(key)) if key[b] > key[b - 1]]


@pytest.fixture(scope="module")
def live():
  """The live run (no serving copy), with its predictions."""
  return train_stream(tiny_config(), keep_predictions=True)


def test_interval_zero_is_the_live_model_bit_for_bit(live):
  config = tiny_config()
  del config["serving"]                          # a config from before the serving section
  del config.train["learn"]
  before = train_stream(config, keep_predictions=True)
  np.testing.assert_array_equal(before["_predictions"], live["_predictions"])
  for a, b in zip(_leaves(before["_state"]), _leaves(live["_state"])):
    np.testing.assert_array_equal(a, b)
  assert "serving" not in live
  # A positive interval shorter than a batch syncs before every batch: the
  # served copy is the live model, through the serving code path.
  every = train_stream(tiny_config("serving.sync_tables_s=1.0", "serving.sync_dense_s=1.0"),
                       keep_predictions=True)
  assert every["serving"]["table_syncs"] == every["batches"] == ROWS_PER_DAY // BATCH
  np.testing.assert_allclose(every["_predictions"], live["_predictions"], rtol=1e-6, atol=1e-7)
  # Serving never changes what the live model learns.
  for a, b in zip(_leaves(every["_state"]), _leaves(live["_state"])):
    np.testing.assert_array_equal(a, b)


def test_infinite_interval_is_a_frozen_model(live):
  frozen = train_stream(tiny_config("train.learn=False"), keep_predictions=True)
  never = train_stream(tiny_config("serving.sync_tables_s=1e999", "serving.sync_dense_s=1e999"),
                       keep_predictions=True)
  assert never["serving"]["table_syncs"] == never["serving"]["dense_syncs"] == 1
  np.testing.assert_allclose(never["_predictions"], frozen["_predictions"], rtol=1e-6, atol=1e-7)
  assert np.abs(never["_predictions"] - live["_predictions"]).max() > 1e-2  # the live model learns
  # The frozen (learn=False) run did not move; the served run's live model did.
  init = create_model_and_state(tiny_config(), make_stream(tiny_config().data).num_rows, 26, 13)[1]
  for a, b in zip(_leaves((frozen["_state"].tables, frozen["_state"].dense_params)),
                  _leaves((init.tables, init.dense_params))):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(_leaves(never["_state"]), _leaves(live["_state"])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("tables_s,dense_s,freeze_s", [
    (8 * 3600.0, 13 * 3600.0, 0.0),     # separate intervals for tables and dense parameters
    (0.0, 0.0, 0.6 * 86400.0),          # live until 0.6 days, then frozen
])
def test_finite_interval_equals_models_frozen_at_the_sync_points(live, tables_s, dense_s, freeze_s):
  overrides = [f"serving.sync_tables_s={tables_s}", f"serving.sync_dense_s={dense_s}",
               f"serving.freeze_after_s={freeze_s}"]
  served = train_stream(tiny_config(*overrides), keep_predictions=True)
  config = tiny_config()
  stream, batches = _batches(config)
  last_times = [b["time"][b["weight"] > 0].max() for b in batches]
  table_syncs = _sync_batches(last_times, tables_s, freeze_s)
  dense_syncs = _sync_batches(last_times, dense_s, freeze_s)
  if freeze_s:   # interval 0 syncs at every batch up to the freeze
    assert table_syncs[-1] < len(batches) - 4
  else:
    assert len(table_syncs) >= 3 and len(dense_syncs) >= 2 and table_syncs != dense_syncs
  assert served["serving"]["table_syncs"] == len(table_syncs)
  assert served["serving"]["dense_syncs"] == len(dense_syncs)

  # Separate runs: the model trained on the first L batches, for every sync point L.
  last_sync = [(max(s for s in table_syncs if s <= b), max(s for s in dense_syncs if s <= b))
               for b in range(len(batches))]
  # A batch right after a sync of both groups is served by the live model itself
  # (the live run's predictions); the others need the prefix runs.
  needed = {s for b, pair in enumerate(last_sync) if pair != (b, b) for s in pair}
  model, init = create_model_and_state(config, stream.num_rows, 26, 13)[:2]
  states = {0: init}
  for length in sorted(needed - {0}):
    states[length] = train_stream(tiny_config(f"data.max_rows={length * BATCH}"))["_state"]
  assert len(needed - {0}) >= (1 if freeze_s else 2)
  predict = make_predict(model)
  expected = []
  for b, batch in enumerate(batches):
    t_sync, d_sync = last_sync[b]
    if (t_sync, d_sync) == (b, b):
      expected.append(live["_predictions"][b * BATCH:(b + 1) * BATCH])
      continue
    preds = predict(states[d_sync].dense_params, states[t_sync].tables,
                    {k: batch[k] for k in DEVICE_KEYS})
    expected.append(np.asarray(preds)[batch["weight"] > 0])
  expected = np.concatenate(expected)
  np.testing.assert_allclose(served["_predictions"], expected, rtol=2e-5, atol=1e-6)
  assert np.abs(served["_predictions"] - live["_predictions"]).max() > 1e-3
  assert served["logloss"] > live["logloss"]   # a stale model does worse on this stream


@pytest.mark.parametrize("tables_s,dense_s", [(0.0, 30000.0), (30000.0, 0.0)])
def test_resume_restores_the_served_copy_and_the_schedule(tmp_path, tables_s, dense_s):
  overrides = [f"serving.sync_tables_s={tables_s}", f"serving.sync_dense_s={dense_s}",
               "train.checkpoint_every=8", "train.keep_checkpoints=5"]
  full = train_stream(tiny_config(*overrides), workdir=str(tmp_path), keep_predictions=True)
  ckpts = sorted((tmp_path / "checkpoints").iterdir())
  assert [p.name for p in ckpts] == ["000000000008", "000000000016"]
  shutil.rmtree(ckpts[-1])                       # as if killed after batch 8
  resumed = train_stream(tiny_config(*overrides), workdir=str(tmp_path), keep_predictions=True)
  assert resumed["resumed_from"].endswith("000000000008")
  np.testing.assert_array_equal(resumed["_predictions"], full["_predictions"][8 * BATCH:])
  for a, b in zip(_leaves(resumed["_state"]), _leaves(full["_state"])):
    np.testing.assert_array_equal(a, b)
  assert resumed["serving"] == full["serving"]
  assert resumed["logloss"] == full["logloss"]


def test_sync_schedule_rule():
  times = np.array([[10.0, 50.0], [70.0, 110.0], [130.0, 170.0], [190.0, np.nan]])
  weights = np.array([[1, 1], [1, 1], [1, 1], [1, 0]])
  assert SyncSchedule(60.0).flags(times, weights).tolist() == [True, True, True, True]
  assert SyncSchedule(100.0).flags(times, weights).tolist() == [True, True, False, False]
  assert SyncSchedule(0.0, freeze_after_s=120.0).flags(times, weights).tolist() == [
      True, True, True, False]
  assert SyncSchedule(math.inf).flags(times, weights).tolist() == [True, False, False, False]
  # A batch with no real rows never syncs; the state carries across calls.
  s = SyncSchedule(100.0)
  assert s.flags(times[:2], weights[:2]).tolist() == [True, True]
  assert s.flags(np.full((1, 2), np.nan), np.zeros((1, 2))).tolist() == [False]
  assert s.flags(times[2:], weights[2:]).tolist() == [False, False]
  assert s.syncs == 2
  assert s.state() == {"key": 1.0, "syncs": 2}


@pytest.mark.parametrize("key,value", [
    ("serving.sync_tables_s", -1.0),
    ("serving.sync_dense_s", float("nan")),
    ("serving.freeze_after_s", math.inf),
    ("serving.freeze_after_s", -5.0),
])
def test_config_errors_name_the_key(key, value):
  config = configs.default_config()
  section, leaf = key.split(".")
  config[section][leaf] = value
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    configs.validate(config)
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    configs.apply_overrides(configs.default_config(), [f"{key}=oops"])


def test_combinations_that_are_refused():
  with pytest.raises(ValueError, match=r"train\.learn"):
    configs.apply_overrides(configs.default_config(), ["train.learn=1"])
  config = tiny_config("serving.sync_tables_s=60.0", "idmap.enabled=True")
  with pytest.raises(ValueError, match=r"serving\.\* with idmap\.enabled"):
    configs.validate(config)
  config = tiny_config("train.learn=False", "train.async_sim.enabled=True")
  with pytest.raises(ValueError, match=r"train\.learn=False"):
    configs.validate(config)
  # Criteo logs have no event time: a sync interval cannot be honoured.
  config = tiny_config("serving.sync_dense_s=60.0", "data.source=criteo",
                       f"data.path={CRITEO_SAMPLE}", "data.max_rows=1024")
  with pytest.raises(ValueError, match=r"config serving\.sync_dense_s: .*without an event time"):
    train_stream(config)


def test_score_only_warm_start_from_a_sibling_run(tmp_path):
  """``train.learn=False`` + ``@<sibling>_seed{seed}``: a frozen checkpoint scored on later rows."""
  old = train_stream(tiny_config(f"data.max_rows={4 * BATCH}", "seed=3"),
                     workdir=str(tmp_path / "old_seed3"))
  scored = train_stream(tiny_config(f"data.max_rows={4 * BATCH}", f"data.start_row={4 * BATCH}",
                                    "seed=3", "train.learn=False",
                                    "train.warm_start.path=@old_seed{seed}"),
                        workdir=str(tmp_path / "scored_seed3"), keep_predictions=True)
  for a, b in zip(_leaves((scored["_state"].tables, scored["_state"].dense_params)),
                  _leaves((old["_state"].tables, old["_state"].dense_params))):
    np.testing.assert_array_equal(a, b)
  config = tiny_config(f"data.max_rows={4 * BATCH}", f"data.start_row={4 * BATCH}", "seed=3")
  stream, batches = _batches(config)
  predict = make_predict(create_model_and_state(config, stream.num_rows, 26, 13)[0])
  expected = np.concatenate([np.asarray(predict(old["_state"].dense_params, old["_state"].tables,
                                                {k: b[k] for k in DEVICE_KEYS}))[b["weight"] > 0]
                             for b in batches])
  np.testing.assert_allclose(scored["_predictions"], expected, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match=r"train\.warm_start\.path='@old_seed\{seed\}'"):
    train_stream(tiny_config("train.warm_start.path=@old_seed{seed}"))
