"""The one-pass streaming loop (progressive validation) and the offline protocol.

For each batch of a time-ordered stream: predict, record metrics, then learn.
``steps_per_dispatch`` batches are stacked and run by one jitted ``lax.scan``;
the host prepares the next group (parse, hash, dedup ids) in a background
thread and computes the metrics of the previous group while the device trains
on the current one.

Layout: this module is the loop (:func:`train_stream`); the parts it
composes live beside it: ``build.py`` (model, optimizers, state from the
config), ``feature_set.py`` (the features a config asks for: step
transforms, ``transforms.py``, composed into the one step, and host hooks,
``hooks.py``, called at fixed points), ``loop_io.py`` (checkpoints with the
per-file stream position, metrics lines, warm start, progress),
``loop_mesh.py`` (devices and
processes), ``loop_features.py`` (serving-copy schedules, id-map windows),
``faults.py`` (input / output faults) and ``offline.py`` (the offline
protocol). Their public names are importable from here as before.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable, Iterator

import jax
import ml_collections
import numpy as np

import rectrain.metrics as metrics_lib  # noqa: E402
from rectrain.data import idmap as idmap_lib
from rectrain.data import make_stream
from rectrain.data.batch import device_keys as batch_keys
from rectrain.data.pipeline import prefetch, split_first_batch, with_unique
from rectrain.train import checkpoint as ckpt
from rectrain.train import faults
from rectrain.train.features import refuse_ignored
from rectrain.train.feature_set import check_features, stream_features
from rectrain.train import sharding as sh
from rectrain.train.step import LOCAL, make_multi_step, make_train_step
from rectrain.train.transforms import chain
from rectrain.train.build import bias_labels, build_optimizers, create_model_and_state  # noqa: F401
from rectrain.train.loop_features import (_IdMapWindows, _idmap_checkpoint, _idmap_enabled,
                                          _idmap_restore, _idmap_summary, _make_windows,
                                          _sync_schedules)  # noqa: F401
from rectrain.train.loop_io import (_Progress, _count_lines, _files_before, _jsonable, _meta_of,
                                    _restore, _resume_by_file, _save_checkpoint, _stack,
                                    UniqueLadder,
                                    _table_bytes, _truncate_jsonl, warm_started,
                                    _write_line)  # noqa: F401
from rectrain.train.loop_mesh import (_batch_placer, _preds_to_host, _replicated_to_host,
                                      _run_mesh, _sharded_table_bytes)  # noqa: F401
from rectrain.train.offline import evaluate, train_offline  # noqa: F401

log = logging.getLogger(__name__)

HOST_KEYS = ("label", "weight", "time", "cat", "index", "true_prob", "idmap_counters")
# Seconds to sleep after each dispatch: a testing aid for the crash-and-resume
# test (it makes a run slow enough to be killed mid-stream). Never set in use.
_DEBUG_DELAY = float(os.environ.get("RECTRAIN_DEBUG_DISPATCH_DELAY", "0") or 0)


class NonFiniteLossError(FloatingPointError):
  """Raised when ``train.nonfinite == 'raise'`` and a batch's loss is not finite."""


def _grouped(batches: Iterator[dict], k: int, done: int = 0,
             stack=_stack) -> Iterator[tuple[int, dict]]:
  """Stacks up to ``k`` consecutive batches (with ``stack``, e.g. a
  :class:`UniqueLadder`); yields (count, stacked); an input fault ends it with a
  group marked ``faults.FAULT`` (rectrain/train/faults.py)."""
  return faults.grouped(batches, k, stack, done)


def _skip(batches: Iterator[dict], n: int) -> Iterator[dict]:
  for i, b in enumerate(batches):
    if i >= n:
      yield b


def train_stream(config: ml_collections.ConfigDict, workdir: str | None = None,
                 stream=None, resume: bool = True, keep_predictions: bool = False,
                 on_window: Callable[[dict], None] | None = None) -> dict:
  """Runs one pass over the configured stream with progressive validation.

  ``config.serving`` (rectrain/train/serving.py): predictions come from a
  served copy of the parameters refreshed from the live ones every
  ``sync_tables_s`` / ``sync_dense_s`` seconds of event time (0 = the live
  model serves, the default; ``freeze_after_s`` stops the refreshes).
  ``train.learn=False`` scores without learning (e.g. a warm-started, frozen
  model on later days). ``train.warm_start.path`` starting with ``@`` names a
  path relative to the parent of ``workdir`` (a sibling run of a sweep), and
  ``{seed}`` in it is replaced by ``config.seed``, so one config serves every
  seed: ``@old_seed{seed}/checkpoints/000000000512``.

  Args:
    config: a run config (see rectrain/configs.py).
    workdir: where config.json, metrics.jsonl, summary.json and checkpoints go;
      None keeps everything in memory (no checkpoints).
    stream: an already built stream (else ``make_stream(config.data, seed)``).
    resume: continue from the latest checkpoint in ``workdir`` if there is one.
    keep_predictions: also return the predictions of every real row, in
      stream order, under ``"_predictions"`` (for tests and analysis).
    on_window: called with every closed metrics window (the dict written to
      metrics.jsonl, e.g. ``{"window": "rows", "end_row": ..., "ne": ...}``)
      as soon as it closes; an exception it raises ends the run (the tuner
      prunes trials this way).

  ``config.idmap.enabled``: the stream yields raw ids and the collision-free
  map (rectrain/data/idmap.py) assigns table rows in the input pipeline
  instead of hashing; the step first resets the rows (re)assigned in the
  batch; the map's state is saved with every checkpoint (``idmap.npz``); its
  statistics go to metrics.jsonl (``"idmap"`` windows) and the summary.

  ``config.mesh.shape`` with more than one device (rectrain/train/sharding.py):
  the tables (and their row-wise optimizer state) are row-sharded over every
  device of the mesh, padded to ``padded_rows`` (the padding rows are never
  used), the batch is split over the ``data`` axis and the step is the
  ``shard_map`` step; predictions and metrics are the same as on one device
  up to float32 summation order. ``config.distributed`` (or the
  ``RECTRAIN_COORDINATOR`` environment, rectrain/train/distributed.py) starts
  several processes: each places its interleaved share of every global batch,
  every process computes the same metrics, process 0 writes the files. The
  returned ``"_state"`` then keeps the padded, sharded tables (rows
  ``[:num_rows]`` are the table); a checkpoint restores on any device count.

  Returns:
    the summary dict (also written to ``workdir/summary.json``), with the
    final (live) state under the key ``"_state"`` and, with the id map, the
    map under ``"_idmap"`` (neither serialised).
  """
  from rectrain.configs import validate
  validate(config)
  refuse_ignored(config, "stream")
  t_start = time.perf_counter()
  mesh = _run_mesh(config)  # None: one device, the unsharded step
  is_main = jax.process_index() == 0
  use_idmap = _idmap_enabled(config)
  if stream is None:
    stream = make_stream(config.data, seed=config.seed, raw_ids=use_idmap)
  if use_idmap and stream.layout.multi_hot:
    raise ValueError("config idmap.enabled: the id map of multi-hot fields is not implemented; "
                     "they are hashed (set idmap.enabled=False)")
  im = idmap_lib.from_config(config.idmap, stream.layout, config.data.batch_size) if use_idmap else None
  num_rows = stream.num_rows if im is None else im.num_rows
  num_fields = stream.layout.num_fields
  num_dense = stream.num_dense
  table_rows = num_rows if mesh is None else sh.padded_rows(num_rows, mesh)
  model, state, dense_opt, sparse_opts, params = create_model_and_state(
      config, num_rows, num_fields, num_dense, table_rows=table_rows, layout=stream.layout)
  learn = bool(config.train.get("learn", True))
  # Where the tables live: every row read and write of the step and of the
  # features below goes through it (one device, or row-sharded in shard_map).
  placement = LOCAL if mesh is None else sh.SHARDED
  step_fn = make_train_step(model, dense_opt, sparse_opts, train_dense=learn, train_tables=learn,
                            placement=placement)
  # The features: step transforms on the device (rectrain/train/transforms.py), hooks on
  # the host (rectrain/train/hooks.py).
  transforms, hooks = stream_features(config, model, dense_opt, sparse_opts,
                                      stream.layout.num_columns, placement, im)
  init_run, step_fn = chain(step_fn, transforms)
  state = init_run(state)  # the run state: the train state and each transform's state
  hook_keys = tuple(k for h in hooks for k in h.device_keys)  # added per group by the hooks
  device_keys = batch_keys(stream.layout) + tuple(
      k for t in transforms for k in t.keys if k not in hook_keys)
  if mesh is None:
    multi = make_multi_step(step_fn)
    place = None
  else:  # before restore: the sharded state is the checkpoint template
    state = sh.shard_state(state, mesh, table_rows)
    multi = sh.make_sharded_multi_step(step_fn, mesh, state, table_rows, device_keys + hook_keys)
    place = _batch_placer(mesh, device_keys + hook_keys)

  window = _make_windows(config, stream)
  overall = metrics_lib.MetricAccumulator()
  # Streams that know the true click probability (synthetic) get the Bayes
  # ceiling measured on exactly the rows the model was evaluated on.
  ceiling = metrics_lib.MetricAccumulator()
  batches_done = 0
  rows_done = 0
  metrics_file = None
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    if is_main:
      with faults.writing(workdir, "config.json"), open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
  resumed_from = None
  resumed_final = False
  next_row = 0  # stream rows trained (the index after the last trained row)
  by_file = False  # resumed at a per-file position: nothing to skip
  path = ckpt.latest_checkpoint(workdir) if workdir and resume else None
  if path:
    saved_meta = _meta_of(path)
    check_features(path, saved_meta, transforms, hooks)
    state, meta = _restore(path, state, num_rows, table_rows, mesh, saved_meta)
    batches_done, rows_done = meta["batches"], meta["rows"]
    next_row = int(meta.get("stream_rows", 0))
    by_file = _resume_by_file(stream, config, meta, next_row)
    resumed_final = bool(meta.get("final"))
    overall = metrics_lib.MetricAccumulator.from_state(meta["overall"])
    ceiling = metrics_lib.MetricAccumulator.from_state(meta["ceiling"])
    window = metrics_lib.WindowedMetrics.from_state(meta["windows"])
    for h in hooks:
      h.restore(path, meta.get("hooks", {}).get(h.name, {}))
    resumed_from = path
    if is_main:
      _truncate_jsonl(os.path.join(workdir, "metrics.jsonl"), meta["metrics_lines"])
  elif config.train.warm_start.path:
    # The copied parameters, and every transform's state made from them (the served copy).
    state = init_run(warm_started(config, state.train, workdir, num_rows)[0])
    if mesh is not None:  # the copied arrays back onto the mesh
      state = sh.shard_state(state, mesh, table_rows)
  if workdir and is_main:
    with faults.writing(workdir, "metrics.jsonl"):
      metrics_file = open(os.path.join(workdir, "metrics.jsonl"), "a")
  metrics_lines = _count_lines(workdir)

  k = config.train.steps_per_dispatch
  slice_fields = [s for s in config.metrics.slice_fields.split(",") if s]
  slice_cols = [stream.layout.names.index(s) for s in slice_fields]

  source = iter(stream)
  if config.train.get("warmup_batch", 0) and not by_file:  # the first batch in small, padded sub-batches
    source = split_first_batch(source, config.data.batch_size, config.train.warmup_batch)
  source = _skip(source, 0 if by_file else batches_done)
  # The table rows of each batch: hashed ids, or a hook's (the id map's) stage.
  staged = [(h.name, b) for h in hooks for b in [h.batches(source, table_rows)] if b is not None]
  if len(staged) > 1:
    raise ValueError(f"config: {[n for n, _ in staged]} each give the batches their table rows; "
                     "turn all but one off")
  # padding id: table_rows (= num_rows on one device)
  # The async simulation keeps per-row history of a fixed width U: no ladder there.
  ladder = UniqueLadder(1 if config.train.async_sim.enabled
                        else config.train.get("unique_ladder", 1))
  groups = _grouped(staged[0][1] if staged else with_unique(source, table_rows), k, batches_done,
                    ladder)
  for h in hooks:
    groups = h.groups(groups, batches_done, config.train.checkpoint_every if workdir else 0)
  groups = prefetch(groups, config.data.prefetch)
  total = config.data.max_rows or None
  progress = _Progress(config.train.progress and is_main, total, rows_done)

  def record(pending):
    nonlocal metrics_lines, rows_done, nonfinite_rows, next_row
    n, host, out = pending
    next_row = max(next_row, int(host["index"].max(initial=-1)) + 1)
    if mesh is None:
      preds = np.asarray(out.preds_B).reshape(-1)
      applied = np.asarray(out.applied)
    else:
      preds = _preds_to_host(out.preds_B).reshape(-1)
      applied = _replicated_to_host(out.applied)
    if keep_predictions:
      kept_predictions.append(preds[host["weight"].reshape(-1) > 0])
    if config.train.nonfinite == "raise" and not applied.all():
      bad = int(np.argmin(applied))
      raise NonFiniteLossError(
          f"non-finite loss at batch {batches_done - n + bad} (stream rows from "
          f"{int(host['index'][bad].max(initial=-1))}); set train.nonfinite=skip to skip")
    labels = host["label"].reshape(-1)
    weights = host["weight"].reshape(-1)
    bad_preds = ~np.isfinite(preds)
    if bad_preds.any():  # a non-finite (skipped) batch: its rows are left out of the metrics
      nonfinite_rows += int((weights[bad_preds] > 0).sum())
      weights = np.where(bad_preds, 0.0, weights).astype(np.float32)
      preds = np.where(bad_preds, 0.5, preds)
    times = host["time"].reshape(-1)
    slices = {name: host["cat"][..., col].reshape(-1) for name, col in zip(slice_fields, slice_cols)}
    overall.update(labels, preds, weights)
    if "true_prob" in host:
      ceiling.update(labels, host["true_prob"].reshape(-1), weights)
    closed = window.update(labels, preds, weights, time=times, slices=slices or None)
    for w in closed:
      if metrics_file:
        _write_line(metrics_file, w, workdir)
        metrics_lines += 1
      if on_window is not None:
        on_window(w)
    for h in hooks:
      for rec in h.after_output(n, host, weights, rows_done):
        if metrics_file:
          _write_line(metrics_file, rec, workdir)
          metrics_lines += 1
    real = int((weights > 0).sum())
    rows_done += real
    progress.update(real, overall.result())

  nonfinite_rows = 0
  kept_predictions = []
  pending = None
  t_first = None
  rows_at_first = rows_done
  dispatches = 0
  saved_at = batches_done  # a checkpoint holds this many batches (none: 0)

  def checkpoint(group, final=False):
    nonlocal saved_at
    if metrics_file and not metrics_file.closed:
      with faults.writing(workdir, "metrics.jsonl"):
        metrics_file.flush()
    hook_states, files = {}, {}
    for h in hooks:
      hook_states[h.name], extra = h.checkpoint(group, batches_done, final)
      files.update(extra or {})
    path = _save_checkpoint(workdir, batches_done, state, {
        "batches": batches_done, "rows": rows_done, "overall": overall.state(), "ceiling": ceiling.state(),
        "windows": window.state(), "metrics_lines": metrics_lines, "table_rows": table_rows,
        "stream_rows": next_row, "stream_files": _files_before(stream, next_row),
        **({"final": True} if final else {}),
        "transforms": [t.name for t in transforms], "hooks": hook_states},
        keep=config.train.keep_checkpoints, extra_files=files or None)
    saved_at = batches_done
    return path

  fault = None
  try:
    for n, group in groups:
      fault = group.pop(faults.FAULT, None)
      if n == 0:
        break
      device_batch = {key: group[key] for key in device_keys}
      for h in hooks:
        device_batch.update(h.before_dispatch(group))
      if place is not None:
        device_batch = place(device_batch)
      state, out = multi(state, device_batch)
      batches_done += n
      dispatches += 1
      faults.kill_point("dispatch")
      if pending is not None:
        record(pending)
      pending = (n, {key: group[key] for key in HOST_KEYS if key in group}, out)
      if _DEBUG_DELAY:
        time.sleep(_DEBUG_DELAY)
      if t_first is None:
        jax.block_until_ready(out.preds_B)
        t_first = time.perf_counter()
        record(pending)
        pending = None
        rows_at_first = rows_done
      every = config.train.checkpoint_every
      if workdir and every and batches_done // every != (batches_done - n) // every:
        if pending is not None:
          record(pending)
          pending = None
        checkpoint(group)
    if pending is not None:
      record(pending)
    jax.block_until_ready(state)
    if fault is not None:  # everything read before an input fault is trained: keep it
      saved = None
      if workdir and batches_done > saved_at:
        saved = checkpoint(group)
      elif workdir and batches_done:
        saved = faults.newest_checkpoint(workdir)
      raise faults.input_fault(fault, saved, rows_done)
  finally:
    progress.close()
    if fault is not None and metrics_file:
      metrics_file.close()
  t_end = time.perf_counter()

  # The last windows are counted in the final checkpoint's metrics_lines: a run
  # resumed from it (killed before summary.json) keeps them and writes none again.
  final_lines = metrics_file if not resumed_final else None
  for w in window.finalize_windows():
    if final_lines:
      _write_line(metrics_file, w, workdir)
      metrics_lines += 1
    if on_window is not None:
      on_window(w)
  for rec in (r for h in hooks for r in h.final_records(rows_done)):
    if final_lines:
      _write_line(metrics_file, rec, workdir)
      metrics_lines += 1
  if metrics_file:
    with faults.writing(workdir, "metrics.jsonl"):
      metrics_file.close()
  if workdir and not resumed_final:
    checkpoint({}, final=True)

  result = overall.result()
  bayes = ceiling.result() if ceiling.result()["rows"] else {}
  report = stream.report()
  steady_rows = rows_done - rows_at_first
  steady_time = (t_end - t_first) if t_first else float("nan")
  summary = {
      "model": config.model.name,
      "rows": rows_done,
      "auc": result["auc"],
      "logloss": result["logloss"],
      "ne": result["ne"],
      "pcoc": result["pcoc"],
      "base_rate": result["base_rate"],
      "bayes_auc": bayes.get("auc"),
      "bayes_logloss": bayes.get("logloss"),
      "bayes_ne": bayes.get("ne"),
      "rows_per_sec": steady_rows / steady_time if steady_time and steady_rows > 0 else float("nan"),
      "wall_time_sec": t_end - t_start,
      "batches": batches_done,
      "nonfinite_batches": int(state.nonfinite if mesh is None
                               else _replicated_to_host(state.nonfinite)),
      "nonfinite_prediction_rows": nonfinite_rows,
      "skipped_rows": int(sum(report.get("skipped", {}).values())),
      "skipped_by_reason": dict(report.get("skipped", {})),
      "rows_read": report.get("rows_read"),
      **({"multi_hot_values_cut": report["values_cut"]} if "values_cut" in report else {}),
      "params": params,
      "param_count": params["total"],
      "variation": window.variation(),
      "resumed_from": resumed_from,
      "table_bytes": _table_bytes(state.train),
  }
  if mesh is not None:
    summary["table_bytes"], summary["table_bytes_per_device"] = _sharded_table_bytes(
        state.train, table_rows, num_rows)
    summary["mesh"] = {"shape": [int(mesh.shape[a]) for a in sh.AXES],
                       "devices": sh.mesh_size(mesh), "processes": jax.process_count(),
                       "table_rows": table_rows}
  for h in hooks:
    summary.update(h.summary(state))
  if workdir and is_main:
    with faults.writing(workdir, "summary.json"), open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(_jsonable(summary), f, indent=2)
  summary["_state"] = state.train
  # the padded lengths U the step ran with (not in summary.json: a resumed run starts
  # its ladder afresh, its results are the same)
  summary["_unique_sizes"] = ladder.sizes
  for h in hooks:
    summary.update(h.results())
  if keep_predictions:
    summary["_predictions"] = (np.concatenate(kept_predictions) if kept_predictions
                               else np.zeros((0,), np.float32))
  return summary


# ---------------------------------------------------------------------------
# Several devices and processes (config.mesh, config.distributed) in the streaming loop.
