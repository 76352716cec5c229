"""End-to-end runs of the streaming loop: golden run, determinism, crash and resume,
warm start, non-finite batches, config errors, the offline protocol, the CLI."""

import json

import jax
import numpy as np
import pytest
from _crash import kill_after_checkpoint

from rectrain import cli, configs
from rectrain.data.synthetic import SyntheticStream
from rectrain.train import checkpoint as ckpt
from rectrain.train.loop import NonFiniteLossError, create_model_and_state, train_offline, train_stream

SMALL = [
    "data.max_rows=12288", "data.batch_size=512", "data.cat_buckets=1024",
    "model.embed_dim=8", "model.mlp_dims=(32,)", "train.steps_per_dispatch=4",
    "train.progress=False", "metrics.window_rows=4096",
]


def small_config(*extra):
  config = configs.default_config()
  configs.apply_overrides(config, SMALL + list(extra))
  return config


def _leaves(state):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves((state.tables, state.dense_params))]


def test_golden_tiny_run(tmp_path):
  summary = train_stream(small_config(), workdir=str(tmp_path))
  assert summary["rows"] == 12288
  assert summary["batches"] == 24 + 3  # the first batch of 512 is learned as 64, 64, 128, 256
  assert summary["nonfinite_batches"] == 0 and summary["skipped_rows"] == 0
  # Golden values of this config on this code (seed 0); a change of the data,
  # the model, the optimizers or the metrics shows up here.
  assert summary["auc"] == pytest.approx(GOLDEN["auc"], abs=2e-3)
  assert summary["logloss"] == pytest.approx(GOLDEN["logloss"], abs=2e-3)
  # The model learns: better than the base rate, worse than the Bayes ceiling.
  assert 0.5 < summary["auc"] < summary["bayes_auc"]
  saved = json.loads((tmp_path / "summary.json").read_text())
  for key in ("rows", "auc", "logloss", "ne", "pcoc", "rows_per_sec", "skipped_rows",
              "nonfinite_batches", "wall_time_sec", "param_count"):
    assert key in saved, key
  assert saved["param_count"] == summary["params"]["total"] > 26 * 1024 * 8
  windows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  row_windows = [w for w in windows if w["window"] == "rows" and w["slice"] is None]
  assert [w["end_row"] for w in row_windows] == [4096, 8192, 12288]
  assert json.loads((tmp_path / "config.json").read_text())["data"]["max_rows"] == 12288


GOLDEN = {"auc": 0.5995, "logloss": 0.5647}


def test_same_config_and_seed_give_the_same_run():
  a = train_stream(small_config("data.max_rows=4096"))
  b = train_stream(small_config("data.max_rows=4096"))
  assert a["auc"] == b["auc"] and a["logloss"] == b["logloss"]
  for x, y in zip(_leaves(a["_state"]), _leaves(b["_state"])):
    np.testing.assert_array_equal(x, y)
  c = train_stream(small_config("data.max_rows=4096", "seed=1"))
  assert c["logloss"] != a["logloss"]


def test_killed_run_resumes_to_the_same_result(tmp_path):
  overrides = SMALL + ["data.max_rows=24576", "train.checkpoint_every=8"]
  reference = train_stream(small_config(*overrides[len(SMALL):]), workdir=str(tmp_path / "ref"))

  workdir = tmp_path / "crash"
  meta = kill_after_checkpoint(workdir, overrides, min_batches=16, delay_s=0.4)
  assert 16 <= meta["batches"] < 48

  resumed = train_stream(small_config(*overrides[len(SMALL):]), workdir=str(workdir))
  assert resumed["resumed_from"] is not None
  for x, y in zip(_leaves(resumed["_state"]), _leaves(reference["_state"])):
    np.testing.assert_array_equal(x, y)
  for key in ("rows", "auc", "logloss", "ne", "pcoc"):
    assert resumed[key] == reference[key], key
  ref_lines = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
  assert (workdir / "metrics.jsonl").read_text().splitlines() == ref_lines


def test_warm_start_embeddings_into_another_architecture(tmp_path):
  old = train_stream(small_config("data.max_rows=4096"), workdir=str(tmp_path / "old"))
  config = small_config("model.name=dcnv2", "model.embed_dim=8", "model.mlp_dims=(16,)")
  stream = SyntheticStream(batch_size=512, cat_buckets=1024, num_rows_total=512)
  _, fresh, _, _, _ = create_model_and_state(config, stream.num_rows, 26, 13)
  warm, report = ckpt.warm_start(fresh, str(tmp_path / "old"), "embeddings")
  assert report["tables"] == ["embedding"]
  np.testing.assert_array_equal(np.asarray(warm.tables["embedding"]),
                                np.asarray(old["_state"].tables["embedding"]))
  # Dense parameters of the new architecture stay as initialised.
  for a, b in zip(jax.tree_util.tree_leaves(warm.dense_params),
                  jax.tree_util.tree_leaves(fresh.dense_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Dense-only warm start into the same architecture copies every dense leaf.
  _, same, _, _, _ = create_model_and_state(small_config(), stream.num_rows, 26, 13)
  warm2, report2 = ckpt.warm_start(same, str(tmp_path / "old"), "dense")
  assert report2["dense_kept"] == 0 and report2["dense_copied"] > 0
  for a, b in zip(jax.tree_util.tree_leaves(warm2.dense_params),
                  jax.tree_util.tree_leaves(old["_state"].dense_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(warm2.tables["embedding"]),
                                np.asarray(same.tables["embedding"]))
  # Through the config: the run starts from the old tables.
  run = train_stream(small_config("data.max_rows=1024", f"train.warm_start.path={tmp_path / 'old'}",
                                  "train.warm_start.parts=embeddings"))
  assert run["rows"] == 1024


class _NaNStream(SyntheticStream):
  """The synthetic stream with a NaN dense feature in batch 3."""

  def __iter__(self):
    for i, batch in enumerate(super().__iter__()):
      if i == 3:
        batch["dense"][0, 0] = np.nan
      yield batch


def test_nonfinite_batch_skipped_and_counted_or_raised():
  stream = _NaNStream(batch_size=512, cat_buckets=1024, num_rows_total=4096)
  summary = train_stream(small_config("data.max_rows=4096", "train.warmup_batch=0"), stream=stream)
  assert summary["nonfinite_batches"] == 1
  assert summary["batches"] == 8 and int(summary["_state"].step) == 7
  with pytest.raises(NonFiniteLossError, match="batch 3"):
    train_stream(small_config("data.max_rows=4096", "train.nonfinite=raise", "train.warmup_batch=0"),
                 stream=stream)


def test_config_errors_name_the_key(capsys):
  with pytest.raises(KeyError, match="data.batch_sise"):
    configs.apply_overrides(configs.default_config(), ["data.batch_sise=3"])
  with pytest.raises(ValueError, match="data.int_mode"):
    train_stream(small_config("data.int_mode=bogus"))
  with pytest.raises(ValueError, match="optim.sparse"):
    train_stream(small_config("optim.sparse.name=nope"))
  with pytest.raises(ValueError, match="model"):
    small_config("model.name=transformer")
  assert cli.main(["run", "--set", "train.steps_per_dispatch=0"]) == 2
  assert "train.steps_per_dispatch" in capsys.readouterr().err
  assert cli.main(["run", "/nonexistent/config.py"]) == 2


def test_offline_protocol_evaluates_at_fractions_of_each_epoch(tmp_path):
  config = small_config("data.max_rows=4096", "offline.epochs=2", "offline.evals_per_epoch=2",
                        "offline.eval_data.start_row=4096", "offline.eval_data.max_rows=2048")
  result = train_offline(config, workdir=str(tmp_path))
  epochs = [p["epoch"] for p in result["points"]]
  assert epochs == [0.0, 0.5, 1.0, 1.5, 2.0]
  for p in result["points"][1:]:
    assert 0.0 < p["test"]["logloss"] < 1.0
    assert p["change_tables"] > 0 and p["change_dense"] > 0
  assert len((tmp_path / "offline.jsonl").read_text().splitlines()) == 4
  frozen = train_offline(small_config(
      "data.max_rows=4096", "offline.epochs=2", "offline.evals_per_epoch=1",
      "offline.eval_data.start_row=4096", "offline.eval_data.max_rows=1024",
      "offline.between_epochs=freeze"))
  assert frozen["points"][2]["change_tables"] == 0.0
  assert frozen["points"][2]["change_dense"] > 0


def test_async_simulation_from_config():
  sync = train_stream(small_config("data.max_rows=4096"))
  tau0 = train_stream(small_config("data.max_rows=4096", "train.async_sim.enabled=True"))
  assert tau0["logloss"] == sync["logloss"]
  for x, y in zip(_leaves(tau0["_state"]), _leaves(sync["_state"])):
    np.testing.assert_array_equal(x, y)
  stale = train_stream(small_config("data.max_rows=4096", "train.async_sim.enabled=True",
                                    "train.async_sim.tau=2", "optim.dense.learning_rate=1e-4"))
  assert stale["rows"] == 4096 and stale["logloss"] != sync["logloss"]
