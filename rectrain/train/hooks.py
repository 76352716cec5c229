"""Host-side parts of features in the streaming loop, as hooks with a few fixed methods.

A feature's device side is a step transform (rectrain/train/transforms.py);
what it does on the host is a :class:`Hook`. The loop calls every hook at the
same points, in order, and knows none of them:

* ``batches(batches, table_rows)``: the input stage that gives the batches
  their table rows (``unique``, padding id ``table_rows``), or None for the
  loop's hashed ids (``with_unique``); at most one hook gives them;
* ``groups(groups, batches_done, checkpoint_every)``: the stream of groups
  of K batches, wrapped (e.g. with the state a checkpoint after each group
  saves);
* ``before_dispatch(group)``: entries to add to the device batch of a group
  of K stacked batches (their keys are ``device_keys``);
* ``after_output(n, host, weights, rows_before)``: metric records (written to
  metrics.jsonl) from the host copy of a group, once its output is back;
* ``final_records(rows_done)``: the records of windows still open at the end;
* ``checkpoint(group, batches, final)``: ``(state, files)``: a JSON-able
  state (saved in meta.json under ``hooks.<name>``) and extra files of a
  checkpoint written after ``group`` (``final``: after the last batch);
* ``restore(path, state)``: the state back from a checkpoint;
* ``summary(run_state)``: entries of summary.json;
* ``results()``: in-memory results returned with the summary (not saved).

Hooks: :class:`ServingHook` (the sync schedules of the served copy) and
:class:`IdMapHook` (the collision-free id map's windows, state files and
summary).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np

from rectrain.data import idmap as idmap_lib
from rectrain.train import serving as serving_lib
from rectrain.train.loop_features import (_IdMapWindows, _idmap_checkpoint, _idmap_restore,
                                          _idmap_summary, _sync_schedules)


class Hook:
  """The methods every hook has (each a no-op here); subclasses override what they use."""

  name: str = ""
  device_keys: tuple = ()

  def batches(self, batches: Iterator[dict], table_rows: int) -> Iterator[dict] | None:
    return None

  def groups(self, groups: Iterator[tuple], batches_done: int,
             checkpoint_every: int) -> Iterator[tuple]:
    return groups

  def before_dispatch(self, group: Mapping[str, np.ndarray]) -> dict:
    return {}

  def after_output(self, n: int, host: Mapping[str, np.ndarray], weights: np.ndarray,
                   rows_before: int) -> list[dict]:
    return []

  def final_records(self, rows_done: int) -> list[dict]:
    return []

  def checkpoint(self, group: Mapping[str, Any], batches: int,
                 final: bool = False) -> tuple[dict, dict]:
    return {}, {}

  def restore(self, path: str, state: dict) -> None:
    pass

  def summary(self, run_state) -> dict:
    return {}

  def results(self) -> dict:
    return {}


class ServingHook(Hook):
  """Sync flags of the served copy from the batches' event times (``config.serving``)."""

  name = serving_lib.NAME
  device_keys = serving_lib.SYNC_KEYS

  def __init__(self, section):
    self.section = section
    self.schedules = _sync_schedules(section)

  def before_dispatch(self, group):
    return {key: schedule.flags(group["time"], group["weight"])
            for key, schedule in zip(serving_lib.SYNC_KEYS, self.schedules)}

  def checkpoint(self, group, batches, final=False):
    return {"tables": self.schedules[0].state(), "dense": self.schedules[1].state()}, {}

  def restore(self, path, state):
    self.schedules = _sync_schedules(self.section, state)

  def summary(self, run_state):
    copy = run_state.feature(serving_lib.NAME)
    return {"serving": {"table_syncs": self.schedules[0].syncs,
                        "dense_syncs": self.schedules[1].syncs,
                        "tables_served_copy": bool(copy.served_tables),
                        "dense_served_copy": bool(copy.served_dense)}}


class IdMapHook(Hook):
  """The collision-free id map (rectrain/data/idmap.py): its statistics per window, its
  state saved with every checkpoint (``idmap.npz``) and its summary entries.

  The map itself is the input stage that gives the batches their rows
  (:meth:`batches`, after any restore replaced it); :meth:`groups` attaches
  its state to the groups after which a checkpoint is due.
  """

  name = "idmap"

  def __init__(self, im, window_rows: int):
    self.im = im
    self.window_rows = int(window_rows)
    self.windows = _IdMapWindows(self.window_rows)

  def batches(self, batches, table_rows):
    # skipped batches (a resume) were seen by the restored map: it maps only what follows
    return _repad(idmap_lib.with_idmap(batches, self.im), self.im.num_rows, table_rows)

  def groups(self, groups, batches_done, checkpoint_every):
    return idmap_lib.with_state_snapshots(groups, self.im, checkpoint_every, batches_done)

  def after_output(self, n, host, weights, rows_before):
    rows_B = (weights.reshape(n, -1) > 0).sum(axis=1)
    return self.windows.update(host["idmap_counters"], rows_B, rows_before)

  def final_records(self, rows_done):
    return self.windows.final_records(rows_done)

  def checkpoint(self, group, batches, final=False):
    if final:  # after the last batch: the map as it is now
      group = {"_idmap_state": self.im.state()}
    return _idmap_checkpoint(self.windows, group, batches)

  def restore(self, path, state):
    self.im, self.windows = _idmap_restore(path, state, self.window_rows)

  def summary(self, run_state):
    return _idmap_summary(self.im, self.windows)

  def results(self):
    return {"_idmap": self.im}


def _repad(batches: Iterator[dict], num_rows: int, table_rows: int) -> Iterator[dict]:
  """The id map's padding id (its ``num_rows``) as the padded table's (``table_rows``,
  a sharded run), so that padding never names a row of the table."""
  for b in batches:
    if table_rows != num_rows:
      for key in ("unique", "reset_rows"):
        b[key] = np.where(b[key] == num_rows, table_rows, b[key]).astype(b[key].dtype)
    yield b
