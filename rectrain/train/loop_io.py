"""The streaming loop's files: checkpoints (save / restore on any device count, the per-file stream position), metrics.jsonl lines, warm start, JSON-safe records.

Moved out of rectrain/train/loop.py (which re-exports the public names).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rectrain.train import checkpoint as ckpt
from rectrain.train import faults
from rectrain.train import sharding as sh

log = logging.getLogger(__name__)


def _stack(batches: list[dict]) -> dict:
  keys = [k for k in batches[0] if np.ndim(batches[0][k]) > 0]
  return {k: np.stack([b[k] for b in batches]) for k in keys}


class UniqueLadder:
  """Stacks groups of batches (as :func:`_stack`), their ``unique`` cut to a size U
  from a ladder of ``steps`` sizes.

  A batch's ``unique`` comes padded to ``B F`` (every id distinct), but a batch of
  real data holds far fewer distinct ids (a quarter, on Criteo-like data), and the
  step gathers, differentiates and scatters all U rows of every table. Each group
  is cut to the smallest of ``ceil(B F / steps) j`` (j = 1..steps) that holds its
  batches' ``num_unique``, and never to less than an earlier group (U only grows,
  so a run compiles one program per size it reaches, usually one or two). The
  cut drops padding ids only: the results are those of the uncut batches.
  ``steps <= 1``, or batches without ``num_unique``, stack as they are.
  """

  def __init__(self, steps: int):
    self.steps = int(steps)
    self.size = 0
    self.sizes = []   # every U used, in order of first use (for the summary)

  def __call__(self, batches: list[dict]) -> dict:
    if self.steps > 1 and all("num_unique" in b and "unique" in b for b in batches):
      full = batches[0]["unique"].shape[0]
      granule = -(-full // self.steps)
      need = max(max(int(b["num_unique"]) for b in batches), 1)
      size = min(full, max(self.size, -(-need // granule) * granule))
      if size != self.size:
        self.size = size
        self.sizes.append(size)
      if size < full:
        batches = [dict(b, unique=b["unique"][:size]) for b in batches]
    return _stack(batches)


def _restore(path: str, state, num_rows: int, table_rows: int, mesh, saved_meta: dict):
  """Restores checkpoint ``path`` onto the run state ``state``'s shardings; returns (state, meta).

  ``saved_meta``: the checkpoint's meta.json (:func:`_meta_of`). A checkpoint
  written with another device count has its tables padded to another
  ``table_rows`` (meta key ``table_rows``; absent = ``num_rows``): its row
  leaves (those :func:`rectrain.train.sharding.state_specs` row-shards: the
  tables, their optimizer state and the transforms' per-row state) are
  restored whole, cut or zero-padded to this run's rows (only padding rows,
  never used, differ) and sharded on this run's mesh. A format-3 checkpoint (a
  bare train state) is restored into a run state without transform states
  (``check_features`` refused it otherwise).
  """
  bare = int(saved_meta.get("checkpoint_format", 1)) < 4
  target = state.train if bare else state
  saved = int(saved_meta.get("table_rows", num_rows))
  if saved == table_rows:
    restored, meta = ckpt.restore_checkpoint(path, target)
    return (state._replace(train=restored) if bare else restored), meta
  if saved < num_rows:
    raise ValueError(f"{path}: checkpoint tables have {saved} rows; this run needs "
                     f"{table_rows} rows ({num_rows} real): another data.cat_buckets?")
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  rows = sh.row_leaves(target, table_rows)

  def abstract(x, row):
    return jax.ShapeDtypeStruct((saved,) + x.shape[1:], x.dtype, sharding=local) if row else x

  def fit(x, row):
    if not row:
      return x
    if saved > table_rows:
      return x[:table_rows]
    return jnp.pad(x, [(0, table_rows - saved)] + [(0, 0)] * (x.ndim - 1))

  restored, meta = ckpt.restore_checkpoint(path, jax.tree_util.tree_map(abstract, target, rows))
  restored = jax.tree_util.tree_map(fit, restored, rows)
  if bare:
    restored = state._replace(train=restored)
  if mesh is not None:
    restored = sh.shard_state(restored, mesh, table_rows)
  return restored, meta


def _files_before(stream, row: int):
  """The stream's per-file position at ``row`` (None for streams without files)."""
  return stream.files_before(row) if hasattr(stream, "files_before") else None


def _resume_by_file(stream, config, meta: dict, row: int) -> bool:
  """Starts ``stream`` at a checkpoint's per-file position (finished files are not
  read again); False (the loop re-reads and skips the batches) where it cannot."""
  files = meta.get("stream_files")
  if (files is None or not hasattr(stream, "resume_at") or row <= 0
      or row % config.data.batch_size or config.data.shuffle_buffer):
    return False
  try:
    stream.resume_at(row, files)
  except ValueError as e:
    log.warning("resuming by re-reading the stream from its start: %s", e)
    return False
  return True


def _write_line(f, record: dict, workdir: str) -> None:
  """One metrics.jsonl line; a write fault is an OutputError (faults.writing)."""
  with faults.writing(workdir, "metrics.jsonl"):
    f.write(json.dumps(_jsonable(record)) + "\n")
  faults.kill_point("metrics")


def _save_checkpoint(workdir: str, batches: int, state, meta: dict, keep: int,
                     extra_files=None) -> str:
  """:func:`rectrain.train.checkpoint.save_checkpoint`, also for several processes.

  With several processes every process writes its shards (orbax) and process
  0 the directory, the extra files (the id map's state, the same on every
  process: each remaps the whole global batch), ``meta.json`` (last) and the
  pruning of old checkpoints.
  """
  if jax.process_count() == 1:
    return ckpt.save_checkpoint(workdir, batches, state, meta, keep=keep, extra_files=extra_files)
  import shutil
  import orbax.checkpoint as ocp
  from jax.experimental import multihost_utils
  path = os.path.join(ckpt._dir(workdir), f"{batches:012d}")
  main = jax.process_index() == 0
  if main:
    if os.path.exists(path):
      shutil.rmtree(path)
    os.makedirs(path)
  multihost_utils.sync_global_devices(f"rectrain checkpoint {batches} dir")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(path, "state"), state)
  checkpointer.wait_until_finished()
  multihost_utils.sync_global_devices(f"rectrain checkpoint {batches} state")
  if main:
    for name, write in (extra_files or {}).items():
      write(os.path.join(path, name))
    ckpt.write_meta(path, meta)
    for old in ckpt._complete(workdir)[:-keep] if keep > 0 else []:
      shutil.rmtree(old, ignore_errors=True)
  multihost_utils.sync_global_devices(f"rectrain checkpoint {batches} meta")
  return path


# ---------------------------------------------------------------------------
# Serving copy (rectrain/train/serving.py) and warm start in the streaming loop.


def _meta_of(path: str) -> dict:
  """The meta.json of checkpoint ``path``."""
  with open(os.path.join(path, "meta.json")) as f:
    return json.load(f)


def _warm_start_path(path: str, workdir: str | None, seed: int) -> str:
  """``{seed}`` -> the run's seed; ``@NAME/...`` -> ``<parent of workdir>/NAME/...`` (a sibling run)."""
  resolved = path.replace("{seed}", str(seed))
  if not resolved.startswith("@"):
    return resolved
  if not workdir:
    raise ValueError(f"config train.warm_start.path={path!r}: a path starting with '@' is "
                     "relative to the parent of the run directory, but this run has no workdir")
  return os.path.join(os.path.dirname(os.path.abspath(workdir)), resolved[1:])


def warm_started(config, train_state, workdir: str | None, num_rows: int):
  """``train_state`` with the parameters of ``config.train.warm_start`` copied in.

  The one warm start of every protocol (stream, offline, delayed): the path
  as :func:`_warm_start_path` resolves it, ``train.warm_start.parts``, the
  tables' ``num_rows`` real rows (a checkpoint of another device count fits).
  Unchanged when ``train.warm_start.path`` is empty. Returns (state, report
  of :func:`rectrain.train.checkpoint.warm_start`, or None).
  """
  path = config.train.warm_start.path
  if not path:
    return train_state, None
  return ckpt.warm_start(train_state, _warm_start_path(path, workdir, config.seed),
                         config.train.warm_start.parts, num_rows)


# ---------------------------------------------------------------------------
# Collision-free id map (rectrain/data/idmap.py) in the streaming loop.


def _table_bytes(train) -> int:
  """Bytes of the embedding tables and their row-wise optimizer state of a TrainState."""
  return int(sum(x.nbytes for x in jax.tree_util.tree_leaves(
      (train.tables, train.table_opt_state))))


def _count_lines(workdir):
  if not workdir:
    return 0
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return sum(1 for _ in f)


def _truncate_jsonl(path: str, lines: int) -> None:
  """Drops lines written after the checkpoint we resume from."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    kept = [line for _, line in zip(range(lines), f)]
  with open(path, "w") as f:
    f.writelines(kept)


def _jsonable(obj: Any):
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, (np.floating, float)):
    v = float(obj)
    return v if np.isfinite(v) else None
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, np.ndarray):
    return _jsonable(obj.tolist())
  return obj


# ---------------------------------------------------------------------------
# Offline protocol: K epochs over a fixed training stream, held-out evaluation.


class _Progress:
  """tqdm progress bar with rows/s and the running AUC / log loss."""

  def __init__(self, enabled: bool, total: int | None, initial: int):
    self.bar = None
    if enabled:
      from tqdm.auto import tqdm
      self.bar = tqdm(total=total, initial=initial, unit="row", unit_scale=True,
                      dynamic_ncols=True, mininterval=0.5, desc="train")

  def update(self, rows: int, running: dict):
    if self.bar is None:
      return
    self.bar.update(rows)
    self.bar.set_postfix(auc=f"{running.get('auc', float('nan')):.4f}",
                         logloss=f"{running.get('logloss', float('nan')):.4f}",
                         refresh=False)

  def close(self):
    if self.bar is not None:
      self.bar.close()
