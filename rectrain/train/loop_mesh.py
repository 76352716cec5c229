"""Several devices and processes in the streaming loop: the run's mesh, batch placement, gathering outputs to the host.

Moved out of rectrain/train/loop.py (which re-exports the public names).
"""

from __future__ import annotations

import jax
import numpy as np

from rectrain.train import distributed as dist
from rectrain.train import sharding as sh



def _run_mesh(config):
  """The run's device mesh from ``config.mesh`` (after the ``jax.distributed`` start-up).

  Returns None for one device (the unsharded step). Errors name the config
  keys that do not fit a sharded run.
  """
  section = config.get("distributed", None)
  if not jax.distributed.is_initialized():
    dist.initialize(section.to_dict() if section is not None else None)
  section = config.get("mesh", None)
  shape = tuple(int(x) for x in section.shape) if section is not None else (1, 1)
  processes = jax.process_count()
  if shape == (1, 1) and processes == 1:
    return None
  mesh = sh.make_mesh(shape)
  devices = sh.mesh_size(mesh)
  if processes > 1:
    if devices != len(jax.devices()):
      raise ValueError(f"config mesh.shape={shape}: a run of {processes} processes must use "
                       f"all their {len(jax.devices())} devices (e.g. mesh.shape=(-1, 1))")
    if mesh.shape["data"] % processes:
      raise ValueError(f"config mesh.shape={shape}: the data axis ({mesh.shape['data']}) must "
                       f"be a multiple of the {processes} processes")
  elif devices == 1:
    return None
  data = mesh.shape["data"]
  if config.data.batch_size % data:
    raise ValueError(f"config data.batch_size={config.data.batch_size} is not divisible by the "
                     f"{data} data shards of mesh.shape={shape}")
  return mesh


def _batch_placer(mesh, keys):
  """``place(stacked host batches) -> device arrays`` sharded over ``data``.

  With several processes each places rows ``p::H`` of every global batch
  (:func:`rectrain.train.distributed.host_rows`); the per-batch keys
  (:data:`rectrain.train.sharding.REPLICATED_KEYS`: ``unique`` of the whole
  batch, the id map's reset rows; the same on every host) are replicated.
  """
  shardings = sh.batch_shardings(mesh, keys, stacked=True)
  hosts, me = jax.process_count(), jax.process_index()

  def place(batches):
    if hosts > 1:
      batches = {k: v if k in sh.REPLICATED_KEYS else v[:, me::hosts] for k, v in batches.items()}
    return dist.put_local(batches, shardings)

  return place


def _preds_to_host(preds_KxB) -> np.ndarray:
  """Sharded predictions ``(K, B)`` as a host array in stream row order.

  With ``H`` processes the global batch holds process ``p``'s rows ``p::H``
  at ``[p B/H, (p+1) B/H)``; this undoes that interleave.
  """
  hosts = jax.process_count()
  if hosts == 1:
    return np.asarray(preds_KxB)
  full_KxB = dist.gather_rows_to_host(preds_KxB)
  k, b = full_KxB.shape
  return full_KxB.reshape(k, hosts, b // hosts).transpose(0, 2, 1).reshape(k, b)


def _replicated_to_host(x) -> np.ndarray:
  """A replicated array (possibly spanning other processes' devices) on the host."""
  return np.asarray(x if x.is_fully_addressable else x.addressable_data(0))


def _sharded_table_bytes(state, table_rows: int, num_rows: int) -> tuple[int, int]:
  """(bytes of the real rows of the tables + row-wise optimizer state, bytes on one device)."""
  total = per_device = 0
  for x in jax.tree_util.tree_leaves((state.tables, state.table_opt_state)):
    row_leaf = x.ndim >= 1 and x.shape[0] == table_rows
    total += x.nbytes // table_rows * num_rows if row_leaf else x.nbytes
    per_device += x.addressable_shards[0].data.nbytes
  return int(total), int(per_device)
