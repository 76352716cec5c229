"""The collision-free id map inside the streaming loop: window statistics, no
collisions when the capacity suffices, crash and resume, checkpoint files, errors.

The map itself is tested in tests/test_idmap.py; the map switched off is the
existing loop, bit for bit (tests/test_loop.py's golden run)."""

import json
import os

import jax
import numpy as np
import pytest
from _crash import kill_after_checkpoint

from rectrain import configs
from rectrain.data import idmap, make_stream
from rectrain.train import checkpoint as ckpt
from rectrain.train.loop import train_offline, train_stream

# A small FM with a map that admits after 2 sightings, expires after 600 s of
# event time (about 7,000 rows of the synthetic stream), evicts (256 rows per
# field) and defers (at most 512 admissions per batch of 256 x 26 ids).
MAPPED = [
    "data.max_rows=8192", "data.batch_size=256", "data.cat_buckets=256",
    "model.name=fm", "model.embed_dim=4", "train.steps_per_dispatch=4",
    "train.progress=False", "metrics.window_rows=2048", "metrics.time_windows=",
    "idmap.enabled=True", "idmap.capacity=256", "idmap.min_count=2", "idmap.ttl=600.0",
    "idmap.sketch_width=4096", "idmap.max_admit_per_batch=512",
    "train.checkpoint_every=8", "train.keep_checkpoints=10", "train.warmup_batch=0",
]


def config_of(overrides):
  config = configs.default_config()
  configs.apply_overrides(config, list(overrides))
  return config


def _leaves(state):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(
      (state.tables, state.table_opt_state, state.dense_params))]


def _records(workdir, kind):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["window"] == kind and r["slice"] is None]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("idmap_ref")
  return workdir, train_stream(config_of(MAPPED), workdir=str(workdir))


def test_mapped_run_writes_window_statistics(reference):
  workdir, summary = reference
  assert summary["rows"] == 8192 and summary["batches"] == 32
  assert 0.5 < summary["auc"] < summary["bayes_auc"]
  recs = _records(workdir, "idmap")
  assert [(r["start_row"], r["end_row"], r["batches"]) for r in recs] == [
      (0, 2048, 8), (2048, 4096, 8), (4096, 6144, 8), (6144, 8192, 8)]
  # lookups = present ids of the window's rows, counted in NumPy from the stream.
  config = config_of(MAPPED)
  present = np.concatenate([(~b["raw_missing"]).sum(axis=1) for b in
                            make_stream(config.data, seed=config.seed, raw_ids=True)])
  assert [r["lookups"] for r in recs] == [int(present[i:i + 2048].sum())
                                         for i in range(0, 8192, 2048)]
  for r in recs:
    assert r["hits"] + r["unadmitted"] == r["lookups"]
    assert r["admitted"] + r["rejected"] + r["deferred"] == r["new_ids"]
  total = {k: sum(r[k] for r in recs) for k in ("admitted", "evicted", "expired", "deferred",
                                               "rejected")}
  assert summary["idmap_admitted"] == total["admitted"]
  assert summary["idmap_evicted"] == total["evicted"] > 0
  assert summary["idmap_expired"] == total["expired"] > 0
  assert total["deferred"] > 0 and total["rejected"] > 0
  im = summary["_idmap"]
  assert summary["idmap_occupied"] == recs[-1]["occupied"] == im.occupancy()["rows"]
  assert summary["idmap"]["num_rows"] == im.num_rows == 26 * 256
  # Rows in use = admitted - freed (evicted or expired).
  assert im.occupancy()["rows"] == total["admitted"] - total["evicted"] - total["expired"]
  # Every checkpoint has the map's state; the last one is the final map.
  for path in [os.path.join(workdir, "checkpoints", d)
               for d in sorted(os.listdir(workdir / "checkpoints"))]:
    assert os.path.isfile(os.path.join(path, "idmap.npz"))
  final = idmap.load_state(os.path.join(ckpt.latest_checkpoint(str(workdir)), "idmap.npz"))
  for k, v in im.state().items():
    np.testing.assert_array_equal(final[k], v)
  assert summary["table_bytes"] == sum(x.nbytes for x in jax.tree_util.tree_leaves(
      (summary["_state"].tables, summary["_state"].table_opt_state)))


def test_killed_mapped_run_resumes_to_the_same_result(reference, tmp_path):
  ref_dir, ref = reference
  workdir = tmp_path / "crash"
  meta = kill_after_checkpoint(workdir, MAPPED, min_batches=16, delay_s=0.3)
  assert 16 <= meta["batches"] < 32

  resumed = train_stream(config_of(MAPPED), workdir=str(workdir))
  assert resumed["resumed_from"] is not None
  for x, y in zip(_leaves(resumed["_state"]), _leaves(ref["_state"])):
    np.testing.assert_array_equal(x, y)
  for key in ("rows", "auc", "logloss", "ne", "pcoc", "idmap_admitted", "idmap_evicted",
              "idmap_expired", "idmap_occupied"):
    assert resumed[key] == ref[key], key
  for k, v in ref["_idmap"].state().items():
    np.testing.assert_array_equal(resumed["_idmap"].state()[k], v)
  assert ((workdir / "metrics.jsonl").read_text().splitlines()
          == (ref_dir / "metrics.jsonl").read_text().splitlines())


def test_enough_capacity_never_collides():
  base = ["data.max_rows=4096", "data.batch_size=512", "model.name=lr",
          "train.steps_per_dispatch=4", "train.progress=False", "metrics.window_rows=0"]
  config = config_of(base)
  pairs, per_field = set(), np.zeros(26, np.int64)
  for b in make_stream(config.data, seed=config.seed, raw_ids=True):
    valid = b["index"] >= 0
    for f in range(26):
      ids = np.unique(b["raw_ids"][valid & ~b["raw_missing"][:, f], f])
      new = {(f, int(x)) for x in ids} - pairs
      per_field[f] += len(new)
      pairs |= new
  capacity = int(per_field.max()) + 1          # + the field's missing-value row
  summary = train_stream(config_of(base + [
      "idmap.enabled=True", "idmap.min_count=1", f"idmap.capacity={capacity}",
      "idmap.max_admit_per_batch=0"]))
  assert summary["idmap_occupied"] == len(pairs)          # one row per true distinct id
  assert summary["idmap_admitted"] == len(pairs)
  assert summary["idmap_evicted"] == summary["idmap_expired"] == 0
  assert summary["idmap_hit_rate"] == 1.0
  got = summary["_idmap"].admitted_ids()
  assert set(zip(got["field"].tolist(), got["raw"].tolist())) == pairs
  assert np.unique(got["row"]).size == len(pairs)
  # The hashed table of the same size (capacity buckets per field) does collide.
  hashed = configs.default_config()
  configs.apply_overrides(hashed, base + [f"data.cat_buckets={capacity}"])
  counter = idmap.CollisionCounter()
  for b in make_stream(hashed.data, seed=hashed.seed, raw_ids=True):
    counter.update(b["raw_ids"], b["raw_missing"], b["cat"], b["index"] >= 0)
  result = counter.result()
  assert result["distinct_ids"] == len(pairs) and result["collision_rate"] > 0.01


def test_checkpoint_extra_files_are_written_before_meta(tmp_path):
  state = {"w": np.arange(3.0)}
  seen = []

  def write(path):
    seen.append(os.path.exists(os.path.join(os.path.dirname(path), "meta.json")))
    np.save(path, np.ones(2))

  path = ckpt.save_checkpoint(str(tmp_path), 5, state, {"batches": 5},
                              extra_files={"extra.npy": write})
  assert seen == [False] and os.path.isfile(os.path.join(path, "extra.npy"))
  assert os.path.isfile(os.path.join(path, "meta.json"))
  with pytest.raises(ValueError, match="extra file name"):
    ckpt.save_checkpoint(str(tmp_path), 6, state, {}, extra_files={"../x": write})


def test_idmap_config_errors(tmp_path):
  tiny = ["data.max_rows=512", "data.batch_size=256", "data.cat_buckets=64", "model.name=lr",
          "train.progress=False", "train.steps_per_dispatch=2"]
  with pytest.raises(ValueError, match="policy"):
    train_stream(config_of(tiny + ["idmap.enabled=True", "idmap.policy=fifo"]))
  with pytest.raises(ValueError, match="idmap.enabled"):
    train_offline(config_of(tiny + ["idmap.enabled=True", "offline.epochs=1",
                                    "offline.eval_data.max_rows=256"]))
  train_stream(config_of(tiny), workdir=str(tmp_path))       # a run without the map
  with pytest.raises(ValueError, match=r"written with step transforms none and hooks none, but "
                                       r"this config has \['idmap_reset'\] and \['idmap'\]"):
    train_stream(config_of(tiny + ["idmap.enabled=True", "idmap.capacity=64"]),
                 workdir=str(tmp_path))
