"""Checkpoints (orbax) with the stream position, resume, and warm start.

Layout: ``DIR/checkpoints/<batches>/state`` (orbax, the whole state: the loop's
RunState, rectrain/train/transforms.py) and
``DIR/checkpoints/<batches>/meta.json`` (stream position, metric state, ...).
``meta.json`` is written last, so a checkpoint without it (a run killed while
saving) is ignored by :func:`latest_checkpoint`. Extra files (e.g. the id map's
``idmap.npz``) are written before it, so a complete checkpoint has them.

Integrity: ``meta.json`` holds a manifest (size and CRC-32 of every other
file of the checkpoint, the orbax state and the extra files) and is written
atomically (a temporary file, fsync, rename). :func:`latest_checkpoint`
verifies it: a damaged newest checkpoint (a file changed, truncated or gone)
is named in one warning line and the newest intact one is used; complete
checkpoints of which none is intact are a one-line error. A checkpoint
without a manifest (written before format 2) is taken as it is.

A checkpoint is written whole into ``<batches>.partial`` and then renamed:
a write that fails (a full disk, ``RLIMIT_FSIZE``, a read-only directory)
leaves the older checkpoints as they were and raises
:class:`rectrain.errors.OutputError` in one line naming the newest intact one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from typing import Any, Callable, Mapping

import jax
import numpy as np

from rectrain.train import faults


def _ocp():
  """orbax.checkpoint, imported on first use (a run without checkpoints never loads it)."""
  import orbax.checkpoint as ocp
  return ocp

log = logging.getLogger(__name__)


def _dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def save_checkpoint(workdir: str, batches: int, state, meta: dict, keep: int = 2,
                    extra_files: Mapping[str, Callable[[str], None]] | None = None) -> str:
  """Saves ``state`` and ``meta`` as checkpoint number ``batches``; keeps the last ``keep``.

  ``extra_files`` maps a file name to a function ``write(path)``; each writes
  ``<checkpoint>/<name>`` after the state and before ``meta.json``.
  """
  for name in extra_files or {}:
    if os.path.basename(name) != name or name in ("state", "meta.json"):
      raise ValueError(f"save_checkpoint: extra file name {name!r} must be a plain file name "
                       "other than 'state' and 'meta.json'")
  path = os.path.join(_dir(workdir), f"{batches:012d}")
  partial = path + PARTIAL  # written whole, then renamed: a failed write leaves older ones intact
  try:
    with faults.quiet_orbax():
      if os.path.exists(partial):
        shutil.rmtree(partial)
      os.makedirs(partial)
      checkpointer = _ocp().StandardCheckpointer()
      checkpointer.save(os.path.join(partial, "state"), state)
      checkpointer.wait_until_finished()
      for name, write in (extra_files or {}).items():
        write(os.path.join(partial, name))
      faults.kill_point("checkpoint")
      write_meta(partial, meta)
      if os.path.exists(path):
        shutil.rmtree(path)
      os.replace(partial, path)
  except (OSError, ValueError, RuntimeError) as e:
    shutil.rmtree(partial, ignore_errors=True)
    raise faults.checkpoint_write_error(workdir, path, e) from e
  for old in _complete(workdir)[:-keep] if keep > 0 else []:
    shutil.rmtree(old, ignore_errors=True)
  return path


PARTIAL = ".partial"  # suffix of a checkpoint being written


# 2: meta.json carries the manifest. 3: a table's optimizer state is the optax
# state of its transform (rectrain.optim.sparse), e.g. rowwise_adagrad's
# (ScaleByRowwiseAdagradState(accumulator), EmptyState()) instead of format 2's
# RowwiseAdagradRows(accumulator). 4: the streaming loop saves its run state,
# RunState(train, features={transform name: state}) (rectrain/train/transforms.py),
# and meta.json names the step transforms (``transforms``) and holds the hooks'
# states (``hooks``); format 3 saved a bare TrainState (or the serving / async
# wrappers of it) and per-feature meta keys. A format-3 checkpoint of a run
# without those features resumes as it is.
FORMAT = 4
RESTORES = (3, 4)  # formats this code resumes from (warm starts read any format)
MANIFEST = "manifest"
_CHUNK = 1 << 22


def _crc32(path: str) -> int:
  crc = 0
  with open(path, "rb") as f:
    while True:
      block = f.read(_CHUNK)
      if not block:
        return crc
      crc = zlib.crc32(block, crc)


def _files(path: str) -> list[str]:
  """Every file of checkpoint ``path`` except meta.json, relative, sorted."""
  out = []
  for root, _, names in os.walk(path):
    for n in names:
      rel = os.path.relpath(os.path.join(root, n), path)
      if rel not in ("meta.json", "meta.json.tmp"):
        out.append(rel)
  return sorted(out)


def manifest(path: str) -> dict:
  """``{relative file: [size, crc32]}`` of every file of checkpoint ``path`` but meta.json."""
  return {rel: [os.path.getsize(os.path.join(path, rel)), _crc32(os.path.join(path, rel))]
          for rel in _files(path)}


def write_meta(path: str, meta: dict) -> None:
  """Writes ``path/meta.json`` (``meta``, the format and the manifest of the files
  already there) atomically; the last file of a checkpoint."""
  record = dict(meta, checkpoint_format=FORMAT, **{MANIFEST: manifest(path)})
  tmp = os.path.join(path, "meta.json.tmp")
  with open(tmp, "w") as f:
    json.dump(record, f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(path, "meta.json"))


def verify_checkpoint(path: str) -> str | None:
  """None if checkpoint ``path`` is intact, else what is wrong with it (one phrase)."""
  try:
    with open(os.path.join(path, "meta.json")) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    return f"meta.json unreadable ({type(e).__name__}: {e})"
  listed = meta.get(MANIFEST)
  if listed is None:
    return None  # format 1: no manifest to check
  for rel, (size, crc) in sorted(listed.items()):
    full = os.path.join(path, rel)
    if not os.path.isfile(full):
      return f"{rel} is missing"
    if os.path.getsize(full) != size:
      return f"{rel} has {os.path.getsize(full)} bytes, the manifest says {size}"
    if _crc32(full) != crc:
      return f"{rel} does not match its checksum"
  return None


def _complete(workdir: str) -> list[str]:
  root = _dir(workdir)
  if not os.path.isdir(root):
    return []
  names = sorted(n for n in os.listdir(root) if n.isdigit())
  return [os.path.join(root, n) for n in names
          if os.path.isfile(os.path.join(root, n, "meta.json"))]


def latest_checkpoint(workdir: str) -> str | None:
  """The newest complete and intact checkpoint under ``workdir``, or None if none is complete.

  A damaged newer checkpoint is skipped with one warning line naming it and
  its fault; complete checkpoints of which none is intact raise ValueError.
  """
  done = _complete(workdir)
  damaged = []
  for path in reversed(done):
    fault = verify_checkpoint(path)
    if fault is None:
      return path
    log.warning("checkpoint %s is damaged (%s); trying the one before it", path, fault)
    damaged.append(f"{os.path.basename(path)}: {fault}")
  if damaged:
    raise ValueError(f"{_dir(workdir)}: every checkpoint is damaged ({'; '.join(damaged)}); "
                     "remove the directory to start the run over, or use another workdir")
  return None


def checkpoint_format(path: str) -> int:
  """The format checkpoint ``path`` was written in (1: no ``checkpoint_format`` in meta.json)."""
  with open(os.path.join(path, "meta.json")) as f:
    return int(json.load(f).get("checkpoint_format", 1))


def check_format(path: str) -> None:
  """Raises ValueError (one line, naming the formats) unless ``path`` can be resumed."""
  fmt = checkpoint_format(path)
  if fmt in RESTORES:
    return
  if fmt > FORMAT:
    raise ValueError(f"{path}: checkpoint format {fmt} was written by a newer rectrain; this "
                     f"one resumes format {FORMAT}: update rectrain")
  raise ValueError(f"{path}: checkpoint format {fmt} (table optimizer state before rectrain's "
                   f"optax row-wise tables); this rectrain resumes formats {RESTORES} only: start "
                   "the run in a new workdir, or take its weights with "
                   f"train.warm_start.path={os.path.dirname(os.path.dirname(path)) or path}")


def restore_checkpoint(path: str, like_state) -> tuple[Any, dict]:
  """Restores a TrainState shaped like ``like_state`` and its meta dict."""
  if not os.path.isfile(os.path.join(path, "meta.json")):
    raise FileNotFoundError(f"not a complete rectrain checkpoint: {path}")
  check_format(path)
  ocp = _ocp()
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like_state)
  try:
    state = ocp.StandardCheckpointer().restore(os.path.join(path, "state"), abstract)
  except (ValueError, KeyError, TypeError) as e:
    # orbax's message for a tree of another structure is many lines of tree diff
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise ValueError(
        f"{path}: the saved state does not fit this run's state ({first}); it was written by "
        "another model, optimizer or feature set (a format-3 checkpoint of a run with "
        "train.async_sim or serving holds their wrappers): resume with that config, start in "
        "a new workdir, or take its weights with train.warm_start.path") from None
  with open(os.path.join(path, "meta.json")) as f:
    meta = json.load(f)
  meta.pop(MANIFEST, None)  # the caller gets back the meta it saved
  meta.pop("checkpoint_format", None)
  return state, meta


def _resolve(path: str) -> str:
  """Accepts a checkpoint dir or a run workdir (takes its latest checkpoint)."""
  if os.path.isfile(os.path.join(path, "meta.json")):
    return path
  found = latest_checkpoint(path)
  if found is None:
    raise FileNotFoundError(f"warm start: no complete checkpoint at or under {path}")
  return found


def _flatten(tree) -> dict[str, Any]:
  flat = {}
  for keypath, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat[jax.tree_util.keystr(keypath)] = leaf
  return flat


def _restore_on_one_device(path: str):
  """A checkpoint's state as written (any device count) on this process's first device."""
  checkpointer = _ocp().StandardCheckpointer()
  meta = checkpointer.metadata(path)
  meta = getattr(meta, "item_metadata", meta)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
                                  meta)
  return checkpointer.restore(path, target)


def _copy_rows(new, old, num_rows: int | None):
  """``old`` as ``new``'s value: equal shapes, or (a run on another device count) the
  first ``num_rows`` rows, the table's real rows, the rest being padding."""
  old = np.asarray(old)
  if old.shape == new.shape:
    return jax.numpy.asarray(old, dtype=new.dtype)
  if (num_rows is not None and old.ndim and old.shape[1:] == new.shape[1:]
      and min(old.shape[0], new.shape[0]) >= num_rows):
    return jax.numpy.asarray(new).at[:num_rows].set(jax.numpy.asarray(old[:num_rows], new.dtype))
  return None


def _train_tree(raw):
  """The train state inside a restored tree: format 4's ``RunState.train``, format 3's
  serving (``live``) or async (``train``) wrapper, or the bare train state."""
  while isinstance(raw, dict) and "tables" not in raw:
    inner = raw.get("train", raw.get("live"))
    if inner is None:
      raise ValueError("warm start: the checkpoint holds no train state "
                       f"(top-level keys {sorted(raw)})")
    raw = inner
  return raw


def warm_start(state, path: str, parts: str = "all", num_rows: int | None = None):
  """Copies parameters from a checkpoint into ``state`` (possibly another model).

  Args:
    state: a fresh TrainState of the new model.
    path: a checkpoint directory or a run workdir.
    parts: ``all`` (tables and dense parameters), ``embeddings`` (tables and
      their row-wise optimizer state) or ``dense`` (dense parameters).
    num_rows: the tables' real rows; with it, a checkpoint of a run on another
      device count (tables padded to another multiple of the devices) fits.

  Tables are matched by name and must have the same shape. Dense parameters
  are matched by their path in the Flax variables and copied where the shape
  agrees (so a new architecture takes what it shares with the old one). The
  optimizer state of dense parameters and the step counter start fresh.

  Returns:
    (new_state, report) where report counts what was copied and what not.
  """
  if parts not in ("all", "embeddings", "dense"):
    raise ValueError(f"warm_start parts={parts!r}: must be all, embeddings or dense")
  path = _resolve(path)
  raw = _train_tree(_restore_on_one_device(os.path.join(path, "state")))
  report = {"checkpoint": path, "tables": [], "dense_copied": 0, "dense_kept": 0}
  tables, table_opt = dict(state.tables), dict(state.table_opt_state)
  if parts in ("all", "embeddings"):
    old_tables = raw["tables"] if isinstance(raw, dict) else raw.tables
    old_opt = raw["table_opt_state"] if isinstance(raw, dict) else raw.table_opt_state
    for name, table in state.tables.items():
      if name not in old_tables:
        continue
      copied = _copy_rows(table, old_tables[name], num_rows)
      if copied is None:
        raise ValueError(f"warm start: table {name!r} has shape {np.shape(old_tables[name])} in "
                         f"{path} but {table.shape} in the new model")
      tables[name] = copied
      new_leaves, treedef = jax.tree_util.tree_flatten(state.table_opt_state[name])
      old_leaves = jax.tree_util.tree_leaves(old_opt.get(name, {}))
      fitted = [_copy_rows(b, a, num_rows) for a, b in zip(old_leaves, new_leaves)]
      if len(old_leaves) == len(new_leaves) and all(f is not None for f in fitted):
        table_opt[name] = jax.tree_util.tree_unflatten(treedef, fitted)
      report["tables"].append(name)
  dense = state.dense_params
  if parts in ("all", "dense"):
    old_flat = _flatten(raw["dense_params"] if isinstance(raw, dict) else raw.dense_params)
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(dense)
    new_leaves = []
    for keypath, leaf in leaves_with_path:
      key = jax.tree_util.keystr(keypath)
      old = old_flat.get(key)
      if old is not None and np.shape(old) == np.shape(leaf):
        new_leaves.append(jax.numpy.asarray(old, dtype=leaf.dtype))
        report["dense_copied"] += 1
      else:
        new_leaves.append(leaf)
        report["dense_kept"] += 1
    dense = jax.tree_util.tree_unflatten(treedef, new_leaves)
  log.info("warm start from %s: %s", path, report)
  return state._replace(tables=tables, table_opt_state=table_opt, dense_params=dense), report
