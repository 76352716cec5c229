"""Scale-out (rectrain/train/sharding.py, distributed.py) on forced CPU devices.

Each case runs tests/helpers/sharded_run.py in a fresh process (the CPU
device count is fixed when JAX starts) and compares what it dumps with the
unsharded step (rectrain.train.step.make_train_step) on the same batches.
Mesh (2, 2), two processes and resuming a 4-device checkpoint on 1 and 2
devices are tested through the streaming loop in tests/test_mesh_loop.py.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "helpers", "sharded_run.py")
TOL = 2e-5  # float32 reduction order across devices


def _run(out, *args, env=None):
  cmd = [sys.executable, WORKER, str(out), *args]
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
  assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr[-3000:]}"
  return np.load(out)


def _leaves(d):
  return [d[k] for k in sorted((k for k in d.files if k.startswith("leaf")), key=lambda k: int(k[4:]))]


def _assert_same(a, b, tol=TOL):
  np.testing.assert_allclose(a["preds"], b["preds"], atol=tol, rtol=0)
  la, lb = _leaves(a), _leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_allclose(x, y, atol=tol, rtol=tol)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
  d = tmp_path_factory.mktemp("plain")
  return {opt: _run(d / f"{opt}.npz", "--devices", "4", "--plain", *sets)
          for opt, sets in (("adagrad", ()), ("ftrl", ("--set", "optim.sparse.name=ftrl")))}


def test_four_devices_match_one_rowwise_adagrad(plain, tmp_path):
  got = _run(tmp_path / "d4.npz", "--devices", "4", "--mesh", "4,1")
  _assert_same(got, plain["adagrad"])
  # every device holds a quarter of the table (and of its optimizer state)
  assert list(got["shard_rows"]) == [int(got["table_rows"]) // 4] * 4


def test_four_devices_match_one_ftrl(plain, tmp_path):
  got = _run(tmp_path / "d4.npz", "--devices", "4", "--set", "optim.sparse.name=ftrl")
  _assert_same(got, plain["ftrl"])


def test_collectives_scale_with_the_batch_not_the_table(tmp_path):
  small = _run(tmp_path / "a.npz", "--devices", "4", "--set", "data.cat_buckets=2048")
  big = _run(tmp_path / "b.npz", "--devices", "4", "--set", "data.cat_buckets=32768")
  assert int(big["table_bytes"]) > 10 * int(small["table_bytes"])
  # same batch, 16x the table: the bytes crossing devices per step do not change
  assert int(big["collective_bytes"]) == int(small["collective_bytes"])
  assert int(big["collective_bytes"]) < int(big["table_bytes"]) / 10
