"""train.unique_ladder: the step runs on ``unique`` cut to a size of a ladder (it only
grows); predictions, metrics and the final state are bit-identical to the uncut run."""

import os

import jax
import numpy as np
import pytest

from rectrain import configs
from rectrain.train.loop import train_stream
from rectrain.train.loop_io import UniqueLadder

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "criteo_dac_head4222.tsv")


def _batch(num_unique, full=16, pad=99):
  unique = np.full((full,), pad, np.int32)
  unique[:num_unique] = np.arange(num_unique)
  return {"unique": unique, "num_unique": np.int32(num_unique), "label": np.zeros((4,), np.float32)}


def test_ladder_cuts_to_the_group_size_and_only_grows():
  ladder = UniqueLadder(4)                     # granule 4 of 16
  g = ladder([_batch(3), _batch(5)])
  assert g["unique"].shape == (2, 8)           # 5 -> 8
  assert ladder([_batch(2)])["unique"].shape == (1, 8)   # never shrinks
  assert ladder([_batch(13)])["unique"].shape == (1, 16)
  assert ladder([_batch(0)])["unique"].shape == (1, 16)
  assert ladder.sizes == [8, 16]
  assert UniqueLadder(1)([_batch(3)])["unique"].shape == (1, 16)
  assert UniqueLadder(4)([_batch(0)])["unique"].shape == (1, 4)   # at least one granule
  # what is cut is padding only
  assert (g["unique"][1, :5] == np.arange(5)).all() and (g["unique"][1, 5:] == 99).all()


def _leaves(state):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(
      (state.tables, state.table_opt_state, state.dense_params, state.dense_opt_state))]


@pytest.mark.parametrize("overrides", [
    ["model.name=deepfm", "data.cat_buckets=4096", "model.embed_dim=8", "model.mlp_dims=(32,)"],
    ["model.name=lr", "data.source=criteo", f"data.path={SAMPLE}"],
], ids=["deepfm-synthetic", "lr-criteo-sample"])
def test_results_equal_the_uncut_run_bit_for_bit(overrides):
  base = ["data.max_rows=4096", "data.batch_size=256", "train.steps_per_dispatch=4",
          "train.progress=False", "metrics.window_rows=1024"] + overrides
  runs = {}
  for steps in (1, 8):
    config = configs.apply_overrides(configs.default_config(),
                                     base + [f"train.unique_ladder={steps}"])
    runs[steps] = train_stream(config, keep_predictions=True)
  full, cut = runs[1], runs[8]
  assert full["_unique_sizes"] == [] and cut["_unique_sizes"]
  assert max(cut["_unique_sizes"]) < 256 * 26
  np.testing.assert_array_equal(full["_predictions"], cut["_predictions"])
  for key in ("auc", "logloss", "ne", "pcoc", "rows"):
    assert full[key] == cut[key], key
  for a, b in zip(_leaves(full["_state"]), _leaves(cut["_state"])):
    np.testing.assert_array_equal(a, b)
