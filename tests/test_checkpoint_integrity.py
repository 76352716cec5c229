"""Checkpoint integrity: a manifest in meta.json, verified on resume; a damaged
newest checkpoint falls back to the newest intact one."""

import json
import logging
import os

import jax
import numpy as np
import pytest

from rectrain import configs
from rectrain.train import checkpoint as ckpt
from rectrain.train.loop import train_stream

SMALL = [
    "data.max_rows=8192", "data.batch_size=512", "data.cat_buckets=1024", "model.embed_dim=8",
    "model.mlp_dims=(16,)", "train.steps_per_dispatch=4", "train.progress=False",
    "metrics.window_rows=2048", "train.checkpoint_every=8", "train.keep_checkpoints=2",
]


def _config():
  return configs.apply_overrides(configs.default_config(), SMALL)


def _largest_state_file(path):
  files = [os.path.join(r, n) for r, _, ns in os.walk(os.path.join(path, "state")) for n in ns]
  return max(files, key=os.path.getsize)


def _damage(path):
  """Overwrites 64 bytes in the middle of the checkpoint's largest array file."""
  target = _largest_state_file(path)
  size = os.path.getsize(target)
  with open(target, "r+b") as f:
    f.seek(size // 2)
    f.write(b"\xff" * 64)
  return target


def _leaves(state):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves((state.tables, state.dense_params))]


def test_damaged_newest_checkpoint_resumes_from_the_intact_one(tmp_path, caplog):
  reference = train_stream(_config(), workdir=str(tmp_path / "ref"))
  work = tmp_path / "run"
  train_stream(_config(), workdir=str(work))
  done = ckpt._complete(str(work))
  assert len(done) == 2
  assert all(ckpt.verify_checkpoint(p) is None for p in done)
  _damage(done[-1])
  assert "does not match its checksum" in ckpt.verify_checkpoint(done[-1])
  with caplog.at_level(logging.WARNING, logger="rectrain.train.checkpoint"):
    resumed = train_stream(_config(), workdir=str(work))
  assert resumed["resumed_from"] == done[-2]
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(done[-1] in w and "damaged" in w for w in warnings), warnings
  for x, y in zip(_leaves(resumed["_state"]), _leaves(reference["_state"])):
    np.testing.assert_array_equal(x, y)
  for key in ("rows", "batches", "auc", "logloss", "ne", "pcoc"):
    assert resumed[key] == reference[key], key
  assert ((work / "metrics.jsonl").read_text().splitlines()
          == (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines())
  assert ckpt.verify_checkpoint(ckpt.latest_checkpoint(str(work))) is None


def test_every_checkpoint_damaged_is_one_error(tmp_path):
  train_stream(_config(), workdir=str(tmp_path))
  done = ckpt._complete(str(tmp_path))
  os.truncate(_largest_state_file(done[-1]), 10)
  os.remove(_largest_state_file(done[-2]))
  assert "bytes, the manifest says" in ckpt.verify_checkpoint(done[-1])
  assert "is missing" in ckpt.verify_checkpoint(done[-2])
  with pytest.raises(ValueError, match="every checkpoint is damaged") as e:
    train_stream(_config(), workdir=str(tmp_path))
  assert "\n" not in str(e.value) and os.path.basename(done[-1]) in str(e.value)


def test_meta_without_manifest_is_taken_as_it_is(tmp_path):
  train_stream(_config(), workdir=str(tmp_path))
  path = ckpt._complete(str(tmp_path))[-1]
  with open(os.path.join(path, "meta.json")) as f:
    meta = json.load(f)
  assert meta["checkpoint_format"] == ckpt.FORMAT and meta["manifest"]
  del meta["manifest"]
  with open(os.path.join(path, "meta.json"), "w") as f:
    json.dump(meta, f)
  assert ckpt.verify_checkpoint(path) is None
  with open(os.path.join(path, "meta.json"), "w") as f:
    f.write("{not json")
  assert "meta.json unreadable" in ckpt.verify_checkpoint(path)


@pytest.mark.parametrize("extra,damaged_file", [
    (["idmap.enabled=True", "idmap.capacity=8192"], "idmap.npz"),
    (["serving.sync_tables_s=3600", "serving.sync_dense_s=3600"], None),
], ids=["idmap", "serving"])
def test_idmap_and_serving_state_are_covered(tmp_path, caplog, extra, damaged_file):
  """The id map's file and the serving copy (part of the orbax state) are in the manifest."""
  config = configs.apply_overrides(configs.default_config(), SMALL + extra)
  train_stream(config, workdir=str(tmp_path))
  done = ckpt._complete(str(tmp_path))
  meta = json.load(open(os.path.join(done[-1], "meta.json")))
  if damaged_file:
    assert damaged_file in meta[ckpt.MANIFEST]
    target = os.path.join(done[-1], damaged_file)
    with open(target, "r+b") as f:
      f.seek(os.path.getsize(target) // 2)
      flipped = bytes(b ^ 0xFF for b in f.read(16))
      f.seek(os.path.getsize(target) // 2)
      f.write(flipped)
  else:
    assert "serving" in meta["hooks"] and meta["transforms"] == ["serving"]
    _damage(done[-1])
  assert ckpt.verify_checkpoint(done[-1]) is not None
  with caplog.at_level(logging.WARNING, logger="rectrain.train.checkpoint"):
    assert ckpt.latest_checkpoint(str(tmp_path)) == done[-2]
  assert any(done[-1] in r.getMessage() for r in caplog.records)


def test_checkpoint_of_an_older_format_is_refused_naming_the_format(tmp_path):
  work = tmp_path / "run"
  train_stream(configs.apply_overrides(_config(), ["data.max_rows=4096"]), workdir=str(work))
  newest = ckpt._complete(str(work))[-1]
  assert ckpt.checkpoint_format(newest) == ckpt.FORMAT == 4
  meta_path = os.path.join(newest, "meta.json")
  meta = json.loads(open(meta_path).read())
  meta["checkpoint_format"] = 2   # as written before the tables' optax states
  open(meta_path, "w").write(json.dumps(meta))
  with pytest.raises(ValueError, match=r"checkpoint format 2 .*resumes formats \(3, 4\) only.*"
                                       r"train.warm_start.path="):
    train_stream(_config(), workdir=str(work))
  meta["checkpoint_format"] = 5
  open(meta_path, "w").write(json.dumps(meta))
  with pytest.raises(ValueError, match=r"checkpoint format 5 was written by a newer rectrain"):
    train_stream(_config(), workdir=str(work))


def test_state_of_another_structure_is_one_error_naming_the_checkpoint(tmp_path):
  """A checkpoint whose tree does not fit the run's (e.g. a format-3 checkpoint of an
  async run resumed without train.async_sim) is a one-line ValueError, not orbax's tree diff."""
  saved = {"params": {"w": jax.numpy.ones((4, 2))}, "stale": {"w": jax.numpy.zeros((4, 2))}}
  path = ckpt.save_checkpoint(str(tmp_path), 3, saved, {"batches": 3})
  with pytest.raises(ValueError) as e:
    ckpt.restore_checkpoint(path, {"params": {"w": jax.numpy.ones((4, 2))}})
  message = str(e.value)
  assert "\n" not in message and path in message and "train.warm_start.path" in message
  restored, meta = ckpt.restore_checkpoint(path, saved)   # the right template still restores
  assert meta["batches"] == 3 and np.array_equal(restored["stale"]["w"], saved["stale"]["w"])
