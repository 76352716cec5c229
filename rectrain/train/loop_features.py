"""Host-side parts of the loop's features: serving-copy sync schedules, the id map's windows and checkpoint state, metric windows.

Moved out of rectrain/train/loop.py (which re-exports the public names).
"""

from __future__ import annotations

import os

import numpy as np

import rectrain.metrics as metrics_lib  # noqa: E402
from rectrain.data import idmap as idmap_lib
from rectrain.train import serving as serving_lib



def _sync_schedules(serving, saved: dict | None = None):
  """The host-side sync schedules (tables, dense) of ``config.serving``; ``saved``: from a checkpoint."""
  out = []
  for group in ("tables", "dense"):
    state = (saved or {}).get(group, {})
    # The config key that asks for this group's served copy ("" = the group is live).
    where = (f"serving.sync_{group}_s" if serving[f"sync_{group}_s"]
             else "serving.freeze_after_s" if serving.freeze_after_s else "")
    out.append(serving_lib.SyncSchedule(serving[f"sync_{group}_s"], serving.freeze_after_s,
                                        key=state.get("key"), syncs=state.get("syncs", 0),
                                        where=where))
  return tuple(out)


def _idmap_enabled(config) -> bool:
  section = config.get("idmap", None)
  return bool(section is not None and section.get("enabled", False))


class _IdMapWindows:
  """The id map's statistics per row window and over the whole run.

  A batch counts in the row window (``metrics.window_rows`` rows of weight >
  0) of its last real row, so the ``"idmap"`` records of metrics.jsonl line up
  with the ``"rows"`` windows when ``window_rows`` is a multiple of the batch
  size (else a window's record holds whole batches). ``window_rows = 0``: one
  record for the whole run. Each record is ``{"window": "idmap", "index",
  "slice": None, "start_row", "end_row", "partial", **idmap.window_summary}``.
  """

  def __init__(self, window_rows: int, state: dict | None = None):
    self.window_rows = int(window_rows)
    num = len(idmap_lib.COUNTER_NAMES)
    state = state or {"index": 0, "start_row": 0, "pending": [], "total": [0] * num,
                      "batches": 0}
    self.index, self.start_row = int(state["index"]), int(state["start_row"])
    self.pending = [list(map(int, c)) for c in state["pending"]]
    self.total = np.asarray(state["total"], np.int64)
    self.batches = int(state["batches"])

  def state(self) -> dict:
    return {"index": self.index, "start_row": self.start_row, "pending": self.pending,
            "total": self.total.tolist(), "batches": self.batches}

  def _record(self, end_row: int) -> dict:
    return {"window": "idmap", "index": self.index, "slice": None, "start_row": self.start_row,
            "end_row": end_row,
            "partial": not self.window_rows or end_row - self.start_row < self.window_rows,
            **idmap_lib.window_summary(np.asarray(self.pending, np.int64))}

  def update(self, counters_NxC, rows_N, rows_before: int) -> list[dict]:
    """Adds the counters of N batches (``rows_N`` real rows each); returns closed records."""
    closed = []
    end = int(rows_before)
    occupied = idmap_lib.COUNTER_NAMES.index("occupied")
    for c, r in zip(np.asarray(counters_NxC, np.int64), np.asarray(rows_N)):
      if self.window_rows and r > 0:
        index = (end + int(r) - 1) // self.window_rows
        if index > self.index:
          if self.pending:
            closed.append(self._record(end))
          self.index, self.start_row, self.pending = index, end, []
      end += int(r)
      self.pending.append(c.tolist())
      self.total += c
      self.total[occupied] = c[occupied]    # a gauge: its last value
      self.batches += 1
    return closed

  def final_records(self, rows_done: int) -> list[dict]:
    """The record of the last, unclosed window (the state is left unchanged)."""
    return [self._record(int(rows_done))] if self.pending else []

  def summary(self) -> dict:
    out = idmap_lib.window_summary(self.total[None, :])
    out["batches"] = self.batches
    return out


def _idmap_restore(path: str, meta: dict, window_rows: int):
  """The map and its statistics saved with checkpoint ``path``."""
  state_path = os.path.join(path, "idmap.npz")
  if "idmap_windows" not in meta or not os.path.isfile(state_path):
    raise FileNotFoundError(f"{path}: this checkpoint has no id map (idmap.npz / meta key "
                            "idmap_windows); it was written with idmap.enabled=False")
  im = idmap_lib.IdMap.from_state(idmap_lib.load_state(state_path))
  return im, _IdMapWindows(window_rows, meta["idmap_windows"])


def _idmap_checkpoint(im_windows, group: dict, batches_done: int):
  """(meta entries, extra files) of a checkpoint after ``group``; ({}, None) without a map."""
  if im_windows is None:
    return {}, None
  snapshot = group.get("_idmap_state")
  if snapshot is None:
    raise RuntimeError(f"id map: no state snapshot for the checkpoint at batch {batches_done}")
  return ({"idmap_windows": im_windows.state()},
          {"idmap.npz": lambda p: idmap_lib.save_state(p, snapshot)})


def _idmap_summary(im, im_windows) -> dict:
  """Summary entries of a run with the id map (flat, so result tables can show them)."""
  stats = im_windows.summary()
  state_bytes = sum(int(np.asarray(v).nbytes) for v in im.state().values())
  return {"idmap": {**stats, "num_rows": im.num_rows, **im.occupancy()},
          "idmap_hit_rate": stats["hit_rate"], "idmap_occupied": stats["occupied"],
          "idmap_admitted": stats["admitted"], "idmap_evicted": stats["evicted"],
          "idmap_expired": stats["expired"], "idmap_state_bytes": state_bytes}


def _make_windows(config, stream):
  time_windows = [t for t in config.metrics.time_windows.split(",") if t]
  return metrics_lib.WindowedMetrics(
      window_rows=config.metrics.window_rows, time_windows=time_windows,
      slice_top_k=config.metrics.slice_top_k)
