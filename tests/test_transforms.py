"""Named step transforms and host hooks (rectrain/train/transforms.py, hooks.py,
feature_set.py): composition rules, the loop's run state keyed by feature name,
and checkpoints of the format before them (a bare train state)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rectrain import configs
from rectrain.train import checkpoint as ckpt
from rectrain.train.loop import train_stream
from rectrain.train.step import StepOutput
from rectrain.train.transforms import RunState, StepTransform, chain

TINY = ["data.max_rows=4096", "data.batch_size=256", "data.cat_buckets=64", "model.name=fm",
        "model.embed_dim=4", "train.progress=False", "train.steps_per_dispatch=2",
        "metrics.window_rows=1024", "metrics.time_windows=", "train.checkpoint_every=4",
        "train.keep_checkpoints=10"]


def config_of(*overrides):
  return configs.apply_overrides(configs.default_config(), list(TINY) + list(overrides))


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _count_step(train, batch):
  out = StepOutput(preds_B=jnp.zeros(2), loss=jnp.float32(0.0), applied=jnp.bool_(True))
  return train + batch["x"], out


def test_chain_keys_states_by_name_and_hides_each_transforms_keys():
  seen = {}

  def recorder(name, key):
    def wrap(step):
      def wrapped(state, batch):
        seen[name] = sorted(batch)
        state, out = step(state, batch)
        return state.with_feature(name, state.feature(name) + batch[key]), out
      return wrapped
    return StepTransform(name, wrap=wrap, init=lambda train: jnp.zeros(()), keys=(key,))

  init, step = chain(_count_step, [recorder("inner", "a"), recorder("outer", "b")])
  state = init(jnp.float32(1.0))
  assert isinstance(state, RunState) and list(state.features) == ["inner", "outer"]
  state, _ = step(state, {"x": 2.0, "a": 3.0, "b": 5.0})
  assert float(state.train) == 3.0
  assert float(state.feature("inner")) == 3.0 and float(state.feature("outer")) == 5.0
  # Each transform sees the keys of those inside it; the base step sees neither.
  assert seen == {"outer": ["a", "b", "x"], "inner": ["a", "x"]}


def test_chain_refuses_duplicate_names_and_a_replacing_transform_that_is_not_first():
  plain = StepTransform("same", wrap=lambda step: step)
  with pytest.raises(ValueError, match="names must be unique"):
    chain(_count_step, [plain, plain])
  replacing = StepTransform("async_sim", wrap=lambda step: step, replaces_step=True)
  with pytest.raises(ValueError, match="'async_sim' computes the update itself and must come "
                                       "first, but comes after \\['same'\\]"):
    chain(_count_step, [plain, replacing])
  chain(_count_step, [replacing, plain])  # first: fine


def test_the_loop_saves_every_feature_under_its_name(tmp_path):
  config = config_of("train.async_sim.enabled=True", "train.async_sim.tau=1",
                     "serving.sync_tables_s=3600", "serving.sync_dense_s=3600")
  summary = train_stream(config, workdir=str(tmp_path))
  newest = ckpt._complete(str(tmp_path))[-1]
  meta = json.load(open(os.path.join(newest, "meta.json")))
  assert meta["transforms"] == ["async_sim", "serving"]
  assert sorted(meta["hooks"]) == ["serving"] and "tables" in meta["hooks"]["serving"]
  assert summary["serving"]["table_syncs"] >= 1
  raw = ocp.StandardCheckpointer().metadata(os.path.join(newest, "state"))
  tree = getattr(raw, "item_metadata", raw)
  assert sorted(tree) == ["features", "train"] and sorted(tree["features"]) == ["async_sim",
                                                                                "serving"]
  # Another feature set on resume is refused, naming both.
  with pytest.raises(ValueError, match=r"written with step transforms \['async_sim', 'serving'\]"
                                       r" and hooks \['serving'\], but this config has "
                                       r"\['async_sim'\] and none"):
    train_stream(config_of("train.async_sim.enabled=True", "train.async_sim.tau=1"),
                 workdir=str(tmp_path))


def _as_format_3(path):
  """Rewrites checkpoint ``path`` as format 3 wrote it: the bare train state, no
  ``transforms`` / ``hooks`` in meta.json."""
  state_dir = os.path.join(path, "state")
  raw = ckpt._restore_on_one_device(state_dir)
  shutil.rmtree(state_dir)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(state_dir, raw["train"])
  checkpointer.wait_until_finished()
  meta = json.load(open(os.path.join(path, "meta.json")))
  for key in ("transforms", "hooks", ckpt.MANIFEST, "checkpoint_format"):
    meta.pop(key, None)
  record = dict(meta, checkpoint_format=3, **{ckpt.MANIFEST: ckpt.manifest(path)})
  with open(os.path.join(path, "meta.json"), "w") as f:
    json.dump(record, f)


def test_a_format_3_checkpoint_resumes_without_features_and_is_refused_with_them(tmp_path):
  reference = train_stream(config_of(), workdir=str(tmp_path / "ref"))
  work = tmp_path / "old"
  shutil.copytree(tmp_path / "ref", work)
  done = ckpt._complete(str(work))
  for later in done[2:]:
    shutil.rmtree(later)
  _as_format_3(done[1])
  with open(work / "metrics.jsonl") as f:  # as a run killed there left it
    kept = f.readlines()
  assert ckpt.checkpoint_format(done[1]) == 3
  resumed = train_stream(config_of(), workdir=str(work))
  assert resumed["resumed_from"] == done[1] and len(kept) >= 1
  for key in ("rows", "auc", "logloss", "ne", "pcoc"):
    assert resumed[key] == reference[key], key
  for x, y in zip(_leaves(resumed["_state"]), _leaves(reference["_state"])):
    np.testing.assert_array_equal(x, y)

  for later in ckpt._complete(str(work))[2:]:
    shutil.rmtree(later)
  with pytest.raises(ValueError, match=r"checkpoint format 3 holds a bare train state .*this run "
                                       r"has step transforms \['serving'\]"):
    train_stream(config_of("serving.sync_tables_s=3600"), workdir=str(work))
