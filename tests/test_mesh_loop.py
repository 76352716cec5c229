"""The streaming loop (train_stream) with config.mesh / config.distributed on forced CPU devices.

One worker process (tests/helpers/mesh_loop_run.py, 4 CPU devices: the
device count is fixed when JAX starts) runs the same small DeepFM stream on
mesh (1, 1), (4, 1) and (2, 2) (this one with ``pytest --full``), resumes the
(4, 1) run's checkpoint on 1 (and with ``--full`` 2) devices, the same with the
id map, the async simulation, the serving copy and the offline protocol on one
device (against the two processes), and collects the errors of refused
configs; a second pair of
processes (2 devices each), started first so that it overlaps the first
worker, runs it on mesh (-1, 1) over both processes.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "helpers", "mesh_loop_run.py")
TOL = 2e-5          # float32 summation order across devices
METRIC_TOL = 1e-4
NUM_ROWS = 26 * 4100  # the worker's table rows (not a multiple of 128: padded when sharded)


def _worker(out, *args):
  return [sys.executable, WORKER, str(out), *args]


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, request):
  """Starts the two-process run (it overlaps the single-process worker); yields its dir."""
  out = tmp_path_factory.mktemp("mesh_loop_mp")
  common = ["--devices", "2", "--case", "processes", "--coordinator", f"localhost:{_free_port()}",
            "--processes", "2"] + (["--full"] if _full(request.config) else [])
  logs = [open(out / f"process{i}.log", "w") for i in (1, 0)]
  procs = [subprocess.Popen(_worker(out, *common, "--process-id", str(i)), stdout=log,
                            stderr=subprocess.STDOUT) for i, log in zip((1, 0), logs)]
  try:
    yield out, procs
  finally:
    for proc, log in zip(procs, logs):
      if proc.poll() is None:
        proc.kill()
      log.close()


def _full(config):
  return config.getoption("--full") or os.environ.get("RECTRAIN_FULL_TESTS") == "1"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, two_processes, request):
  out = tmp_path_factory.mktemp("mesh_loop")
  full = ["--full"] if _full(request.config) else []
  r = subprocess.run(_worker(out, "--devices", "4", "--case", "single", *full),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return out


def _load(out, name):
  return np.load(out / f"{name}.npz")


def _leaves(d):
  return [d[k] for k in sorted((k for k in d.files if k.startswith("leaf")), key=lambda k: int(k[4:]))]


def _assert_same_run(got, base, tail_rows=None):
  """Same final metrics, predictions (of the last ``tail_rows`` rows) and state."""
  assert abs(float(got["auc"]) - float(base["auc"])) < METRIC_TOL
  assert abs(float(got["logloss"]) - float(base["logloss"])) < METRIC_TOL
  assert int(got["rows"]) == int(base["rows"]) == 8192
  preds = base["preds"][-tail_rows:] if tail_rows else base["preds"]
  np.testing.assert_allclose(got["preds"], preds, atol=TOL, rtol=0)
  a, b = _leaves(got), _leaves(base)
  assert len(a) == len(b) > 10
  for x, y in zip(a, b):
    assert x.shape == y.shape
    np.testing.assert_allclose(x, y, atol=TOL, rtol=TOL)


def _needs(runs, name):
  if not (runs / f"{name}.npz").is_file():
    pytest.skip(f"{name}: run with pytest --full")


@pytest.mark.parametrize("mesh", ["m41", "m22"])
def test_sharded_loop_matches_one_device(runs, mesh):
  _needs(runs, mesh)
  base, got = _load(runs, "base"), _load(runs, mesh)
  _assert_same_run(got, base)
  # the tables are padded to a multiple of 128 rows and each device holds a quarter
  assert int(base["table_rows"]) == NUM_ROWS
  assert int(got["table_rows"]) == 106624
  assert list(got["shard_rows"]) == [106624 // 4] * 4
  # the summary counts the real rows, and a quarter (+ padding) per device
  assert int(got["param_count"]) == int(base["param_count"])
  assert int(got["table_bytes"]) == int(base["table_bytes"])
  assert int(got["table_bytes_per_device"]) == int(base["table_bytes"]) * 106624 // NUM_ROWS // 4


@pytest.mark.parametrize("name,shards", [("resume1", [NUM_ROWS]), ("resume2", [106624 // 2] * 2)])
def test_checkpoint_of_four_devices_resumes_on_fewer(runs, name, shards):
  # checkpoint after 8 of 19 batches of the (4, 1) run (the first batch of 512
  # rows is learned as 64, 64, 128, 256: 2,560 rows), resumed to the end
  _needs(runs, name)
  got = _load(runs, name)
  _assert_same_run(got, _load(runs, "base"), tail_rows=8192 - 2560)
  assert list(got["shard_rows"]) == shards


def test_refused_configs_name_the_keys(runs):
  errors = json.loads((runs / "errors.json").read_text())
  assert "data.batch_size=510" in errors["batch"] and "mesh.shape=(4, 1)" in errors["batch"]


def _assert_same_idmap_run(got, base, tail_rows=None):
  _assert_same_run(got, base, tail_rows)
  assert float(got["idmap_hit_rate"]) == float(base["idmap_hit_rate"])
  assert int(got["idmap_evicted"]) == int(base["idmap_evicted"]) > 0   # rows were reused


@pytest.mark.parametrize("name", ["idmap_m41", "idmap_m22"])
def test_idmap_on_a_mesh_matches_one_device(runs, name):
  _needs(runs, name)
  base, got = _load(runs, "idmap_base"), _load(runs, name)
  _assert_same_idmap_run(got, base)
  assert int(got["table_rows"]) % 128 == 0 and int(got["table_rows"]) >= int(base["table_rows"])


def test_idmap_on_a_mesh_resumes_from_its_checkpoint(runs):
  # the map's state (idmap.npz) and the sharded tables from the checkpoint after 8 batches
  _assert_same_idmap_run(_load(runs, "idmap_resume4"), _load(runs, "idmap_base"),
                         tail_rows=8192 - 2560)


def test_two_processes_match_one(runs, two_processes):
  tmp_path, procs = two_processes
  for i, proc in zip((1, 0), procs):
    proc.wait(timeout=600)
    assert proc.returncode == 0, (tmp_path / f"process{i}.log").read_text()[-3000:]
  got = _load(tmp_path, "mp")
  _assert_same_run(got, _load(runs, "base"))
  assert list(got["shard_rows"]) == [106624 // 4] * 2   # process 0 holds 2 of 4 shards
  summary = json.loads((tmp_path / "mp_run" / "summary.json").read_text())
  assert summary["mesh"] == {"shape": [4, 1], "devices": 4, "processes": 2, "table_rows": 106624}
  # process 0 alone wrote the metrics and a multi-process checkpoint
  assert sorted(os.listdir(tmp_path / "mp_run" / "checkpoints")) == ["000000000016", "000000000019"]
  windows = [json.loads(line)
             for line in (tmp_path / "mp_run" / "metrics.jsonl").read_text().splitlines()]
  rows = [w["end_row"] for w in windows if w["window"] == "rows" and w["slice"] is None]
  assert rows == [4096, 8192]   # once each: process 1 wrote nothing
  # the id map over two processes: the same run, its state saved with each checkpoint
  _assert_same_idmap_run(_load(tmp_path, "idmap_mp"), _load(runs, "idmap_base"))
  for name in os.listdir(tmp_path / "idmap_mp_run" / "checkpoints"):
    assert (tmp_path / "idmap_mp_run" / "checkpoints" / name / "idmap.npz").is_file()
  # the async simulation and the serving copy over two processes; the offline protocol
  if not (tmp_path / "async_mp.npz").is_file():
    return   # these with pytest --full
  for name in ("async", "serving"):
    _assert_same_run(_load(tmp_path, f"{name}_mp"), _load(runs, f"{name}_base"))
  np.testing.assert_allclose(_load(tmp_path, "offline_mp")["test_logloss"],
                             _load(runs, "offline_base")["test_logloss"], atol=1e-6)
