"""Several hosts: ``jax.distributed`` start-up, per-host stream slices, global batches.

Each process (host) runs the same program; the mesh of
:mod:`rectrain.train.sharding` spans the devices of all processes
(``jax.devices()`` is ordered by process, so the ``data`` shards of process
``p`` are the ``p``-th block of the global batch).

Data is not duplicated on the devices: of each global batch of ``B`` rows,
process ``p`` of ``H`` keeps the rows ``p, p + H, p + 2H, ...`` (line
interleave, :func:`host_rows`): the union over hosts of the ``b``-th local
batches is exactly the single-process ``b``-th batch, so a run on ``H`` hosts
matches the one-process run up to float summation order. (Every host still
parses the whole stream; for file sources with at least ``H`` files, give each
host its own files with ``data.path`` instead.) The distinct row ids of the
global batch are computed on every host from the all-gathered local ids
(:func:`global_unique`; ``B F`` int32 per step over the host network), so the
row-wise update sees each row once. The streaming loop
(:func:`rectrain.train.loop.train_stream`) has the whole global batch on every
host, so it dedups it locally (the same ``unique`` everywhere, no network) and
places each host's rows with :func:`put_local`.

Start-up (:func:`initialize`): from ``config.distributed`` or the environment
(``RECTRAIN_COORDINATOR=host:port``, ``RECTRAIN_NUM_PROCESSES``,
``RECTRAIN_PROCESS_ID``); with none given nothing is initialised (one process).
On CPU the cross-process collectives use gloo.
"""

from __future__ import annotations

import os
from typing import Dict, Mapping

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding

from rectrain.data.batch import add_unique
from rectrain.config_sections import distributed_config_defaults  # noqa: F401 - defined there (no jax)


def _settings(cfg: Mapping | None) -> tuple[str, int, int]:
  cfg = dict(cfg or {})
  coordinator = cfg.get("coordinator") or os.environ.get("RECTRAIN_COORDINATOR", "")
  num = int(cfg.get("num_processes") or os.environ.get("RECTRAIN_NUM_PROCESSES", 0) or 0)
  pid = cfg.get("process_id", -1)
  if pid is None or int(pid) < 0:
    pid = int(os.environ.get("RECTRAIN_PROCESS_ID", -1))
  return coordinator, num, int(pid)


def initialize(cfg: Mapping | None = None) -> bool:
  """Calls ``jax.distributed.initialize`` when a coordinator is configured.

  Must run before anything touches a JAX device. Returns True when this is a
  multi-process run. Errors name the config key that is wrong.
  """
  coordinator, num, pid = _settings(cfg)
  if not coordinator:
    if num > 1:
      raise ValueError("config distributed.num_processes > 1 needs distributed.coordinator "
                       "(host:port) or RECTRAIN_COORDINATOR")
    return False
  if num < 1:
    raise ValueError("config distributed.num_processes must be >= 1 with a coordinator")
  if not 0 <= pid < num:
    raise ValueError(f"config distributed.process_id={pid}: must be in [0, {num})")
  # CPU devices need a collectives backend across processes; accelerators ignore it.
  jax.config.update("jax_cpu_collectives_implementation",
                    dict(cfg or {}).get("cpu_collectives") or "gloo")
  jax.distributed.initialize(coordinator, num_processes=num, process_id=pid)
  return num > 1


def host_rows(batch: Dict[str, np.ndarray], process_index: int, process_count: int
              ) -> Dict[str, np.ndarray]:
  """Rows ``process_index::process_count`` of a global host batch (line interleave).

  Every array with the batch's leading row axis is sliced; the batch size must
  be a multiple of ``process_count``.
  """
  rows = len(batch["label"])
  if rows % process_count:
    raise ValueError(f"data.batch_size={rows} must be a multiple of the "
                     f"{process_count} processes")
  return {k: (v[process_index::process_count]
              if isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == rows else v)
          for k, v in batch.items()}


def global_unique(local: Dict[str, np.ndarray], num_rows: int) -> Dict[str, np.ndarray]:
  """Adds ``unique`` (of the GLOBAL batch) and this host's ``inverse`` to a local batch.

  The global batch is the hosts' local batches concatenated in process order
  (the order of the ``data`` shards); ``unique`` is padded to ``B F`` with
  ``num_rows`` exactly as :func:`rectrain.data.batch.add_unique` pads it.
  """
  from jax.experimental import multihost_utils
  cat = np.ascontiguousarray(local["cat"], dtype=np.int32)
  everyone = np.asarray(multihost_utils.process_allgather(cat))   # (H, B/H, F)
  glob = add_unique({"cat": everyone.reshape(-1, cat.shape[-1])}, num_rows)
  p, n = jax.process_index(), cat.shape[0]
  out = dict(local)
  out["unique"] = glob["unique"]
  out["num_unique"] = glob["num_unique"]
  out["inverse"] = glob["inverse"][p * n:(p + 1) * n]
  return out


def put_local(batches: Dict[str, np.ndarray], shardings: Dict[str, NamedSharding]):
  """Global device arrays from each host's local parts (``unique`` is the same everywhere)."""
  if jax.process_count() == 1:
    return {k: jax.device_put(v, shardings[k]) for k, v in batches.items()}
  return {k: jax.make_array_from_process_local_data(shardings[k], v)
          for k, v in batches.items()}


def gather_rows_to_host(x) -> np.ndarray:
  """A global array sharded over ``data`` (e.g. predictions) as a full host array."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def is_main() -> bool:
  return jax.process_index() == 0
