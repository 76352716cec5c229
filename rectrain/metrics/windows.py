"""WindowedMetrics: windows per N rows and per event-time span, per feature slice,
their variation over windows, and state for checkpoints.

See :mod:`rectrain.metrics` for the definitions and conventions.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Mapping, Sequence

import numpy as np

from rectrain.metrics.accumulator import MetricAccumulator, _Rows, _prepare_checked
from rectrain.metrics.core import (OTHER, STATE_VERSION, TIME_UNITS, VARIATION_METRICS, _as_1d,
                                   _check)


def _time_span(spec) -> tuple[str, float]:
  """'hour' | 'day' | 'minute' | 'week' | seconds (a number, '90' or '90s') -> (name, seconds)."""
  if isinstance(spec, str) and spec.strip().lower() in TIME_UNITS:
    name = spec.strip().lower()
    return name, TIME_UNITS[name]
  text = spec.strip().lower() if isinstance(spec, str) else spec
  if isinstance(text, str) and text.endswith("s"):
    text = text[:-1]
  try:
    seconds = float(text)
  except (TypeError, ValueError):
    raise ValueError(f"WindowedMetrics: time window {spec!r} is not one of "
                     f"{sorted(TIME_UNITS)} or a number of seconds") from None
  if not (np.isfinite(seconds) and seconds > 0):
    raise ValueError(f"WindowedMetrics: time window must be > 0 seconds, got {spec!r}")
  return f"{seconds:g}s", seconds


def _plain(v):
  """A NumPy scalar as the Python scalar (JSON-serialisable)."""
  return v.item() if hasattr(v, "item") else v


def top_k_values(column, weights=None, k: int = 5) -> list:
  """The ``k`` values of ``column`` with the largest total weight (ties: smaller value first)."""
  col = np.asarray(column).reshape(-1)
  w = np.ones(col.shape[0]) if weights is None else np.asarray(weights, np.float64).reshape(-1)
  keep = w > 0
  values, inverse = np.unique(col[keep], return_inverse=True)
  totals = np.bincount(inverse, w[keep], minlength=values.size)
  order = np.lexsort((np.arange(values.size), -totals))[: int(k)]
  return [v.item() for v in values[order]]


def _variation(values: Dict[str, List[float]]) -> Dict[str, Dict[str, float]]:
  out = {}
  for m in VARIATION_METRICS:
    v = np.asarray(values.get(m, []), np.float64)
    v = v[np.isfinite(v)]
    out[m] = {"windows": int(v.size),
              "mean": float(v.mean()) if v.size else math.nan,
              "std": float(v.std(ddof=1)) if v.size >= 2 else math.nan,
              "min": float(v.min()) if v.size else math.nan,
              "max": float(v.max()) if v.size else math.nan}
  return out


class WindowedMetrics:
  """Per-window, per-time-window and per-slice metrics of a stream, updated per batch.

  Windows of rows: every ``window_rows`` rows of weight > 0 (padding does not
  count; a window may end in the middle of a batch, the batch is split there).
  Time windows: for each span in ``time_windows`` (``"hour"``, ``"day"``, or
  seconds), window i holds event times in ``[origin + i T, origin + (i+1) T)``.
  A time window closes once the watermark ``max time seen - allowed_lateness``
  reaches its end; rows that arrive for an already closed time window are
  counted as late (``late_rows``) and left out of the time windows (they stay
  in the row windows and the overall metrics). Rows with NaN time are left out
  of the time windows and counted (``rows_without_time``), so a stream without
  event time (Criteo) simply has no time windows.

  Slices: ``update(..., slices={"C1": column_B})`` gives a feature column per
  batch; the fields are fixed by the first batch with rows. Each field has a
  fixed set of values: ``slice_values[field]`` if given, else the
  ``slice_top_k`` values of largest weight in that first batch (pass explicit
  values, e.g. from :func:`top_k_values` over a sample, for a choice that does
  not depend on one batch); all other values form the group ``"__other__"``.
  Every group (all rows, and each slice value) has its own row, time and
  overall metrics.

  ``update`` returns the windows closed by this batch, each a dict::

    {"window": "rows" | "hour" | "day" | "<T>s", "index": i, "slice": None | field,
     "value": None | value | "__other__", "start_row", "end_row" (rows windows,
     half open, counted over rows of weight > 0) or "start_time", "end_time",
     "partial": bool, **MetricAccumulator.result(calibration=record_calibration)}

  Args:
    window_rows: rows per window; 0 or None for no row windows.
    time_windows: spans of event-time windows (empty for none).
    slice_values: explicit values per slice field.
    slice_top_k: values per slice field chosen from its first batch otherwise.
    time_origin: event time (s) where time window 0 starts.
    allowed_lateness: seconds a time window stays open past its end.
    record_calibration: include the calibration curve in window records.
    **accumulator_kwargs: passed to every :class:`MetricAccumulator`.
  """

  def __init__(self, window_rows: int | None = 0, time_windows: Iterable = (),
               slice_values: Mapping[str, Sequence] | None = None, slice_top_k: int = 5,
               time_origin: float = 0.0, allowed_lateness: float = 0.0,
               record_calibration: bool = True, **accumulator_kwargs):
    self._window_rows = int(window_rows or 0)
    if self._window_rows < 0:
      raise ValueError(f"WindowedMetrics: window_rows must be >= 0, got {window_rows}")
    if isinstance(time_windows, str):
      time_windows = [t for t in time_windows.split(",") if t.strip()]
    self._spans = [_time_span(t) for t in time_windows]
    names = [n for n, _ in self._spans]
    if len(set(names)) != len(names) or "rows" in names:
      raise ValueError(f"WindowedMetrics: repeated time windows {names}")
    if int(slice_top_k) < 1:
      raise ValueError(f"WindowedMetrics: slice_top_k must be >= 1, got {slice_top_k}")
    self._top_k = int(slice_top_k)
    self._origin = float(time_origin)
    self._lateness = float(allowed_lateness)
    if not (np.isfinite(self._origin) and np.isfinite(self._lateness) and self._lateness >= 0):
      raise ValueError("WindowedMetrics: time_origin must be finite and allowed_lateness >= 0")
    self._record_cal = bool(record_calibration)
    self._acc_kwargs = dict(accumulator_kwargs)
    self._cfg = MetricAccumulator(**accumulator_kwargs)._cfg
    self._explicit = {str(k): [_plain(x) for x in np.asarray(v).reshape(-1)]
                      for k, v in (slice_values or {}).items()}
    for k, v in self._explicit.items():
      if not v:
        raise ValueError(f"WindowedMetrics: slice_values[{k!r}] is empty")
    # Groups: 0 = all rows; then per slice field its values and OTHER.
    self._groups: List[tuple] = [(None, None)]
    self._fields: Dict[str, dict] = {}   # field -> {"values": sorted array, "order", "base"}
    self._rows_seen = 0
    self._row_acc: Dict[int, MetricAccumulator] = {}
    self._time_acc = {name: {} for name, _ in self._spans}  # name -> {index: {group: acc}}
    self._closed_below = {name: None for name, _ in self._spans}
    self._overall: Dict[int, MetricAccumulator] = {}
    self._max_time = -math.inf
    self._late_rows = {name: 0 for name, _ in self._spans}
    self._late_weight = {name: 0.0 for name, _ in self._spans}
    self._rows_without_time = 0
    self._closed_stats = {kind: {m: [] for m in VARIATION_METRICS}
                          for kind in ["rows"] + names}
    self._finalized = False

  # -- groups ---------------------------------------------------------------

  def _add_field(self, field: str, values: list) -> None:
    values = list(dict.fromkeys(values))
    arr = np.asarray(values)
    order = np.argsort(arr, kind="stable")
    self._fields[field] = {"values": arr[order], "order": order, "base": len(self._groups),
                           "list": values}
    self._groups += [(field, v) for v in values] + [(field, OTHER)]

  def _group_ids(self, slices, n, keep, w_all) -> List[tuple]:
    """Per slice field: (base group, local group id per kept row, number of local groups)."""
    out = []
    slices = dict(slices or {})
    if not keep.any():
      return out  # nothing to route; slice values are chosen from a batch with rows
    new = [f for f in slices if f not in self._fields]
    if new and self._overall:
      raise ValueError(f"WindowedMetrics.update: slices has new fields {sorted(new)}; the "
                       f"slice fields are fixed by the first batch ({sorted(self._fields)})")
    for field in new:
      col = np.asarray(slices[field]).reshape(-1)
      values = self._explicit.get(field) or top_k_values(col, w_all, self._top_k)
      self._add_field(field, values)
    missing = set(self._fields) - set(slices)
    if missing:
      raise ValueError(f"WindowedMetrics.update: slices lacks the fields {sorted(missing)} "
                       f"given in earlier batches")
    for field, f in self._fields.items():
      col = np.asarray(slices[field]).reshape(-1)
      if col.shape[0] != n:
        raise ValueError(f"WindowedMetrics.update: slices[{field!r}] has {col.shape[0]} rows, "
                         f"labels has {n}")
      col = col[keep]
      vals, k = f["values"], f["values"].size
      pos = np.searchsorted(vals, col)
      posc = np.minimum(pos, k - 1)
      match = vals[posc] == col
      local = np.where(match, f["order"][posc], k)
      out.append((f["base"], local, k + 1))
    return out

  def _add_groups(self, rows: _Rows, sel, group_ids, get_acc, parts) -> None:
    """Adds rows ``sel`` (a slice or index array) to group 0 and to their slice groups.

    ``parts`` maps each slice group to its rows of the whole batch; a whole
    batch (the common case) reuses them, so every group's rows are packed once
    per batch however many windows they go to.
    """
    if isinstance(sel, slice):
      sel_idx = np.arange(rows.n)[sel]
      if sel_idx.size == rows.n:
        sel = None  # all rows: no copies
    else:
      sel_idx = sel
    if sel_idx.size == 0:
      return
    get_acc(0)._add(rows, sel)
    if sel is None:
      for g, part in parts.items():
        get_acc(g)._add(part)
      return
    for base, local, num in group_ids:
      loc = local[sel_idx]
      for g in range(num):
        sub = sel_idx[loc == g]
        if sub.size:
          get_acc(base + g)._add(rows, sub)

  def _new_acc(self) -> MetricAccumulator:
    return MetricAccumulator._from_config(self._cfg)

  def _getter(self, table: dict):
    def get(g):
      acc = table.get(g)
      if acc is None:
        acc = table[g] = self._new_acc()
      return acc
    return get

  # -- records --------------------------------------------------------------

  def _records(self, table: Dict[int, MetricAccumulator], head: dict) -> List[dict]:
    out = []
    for g in sorted(table):
      field, value = self._groups[g]
      rec = dict(head, slice=field, value=value)
      rec.update(table[g].result(calibration=self._record_cal))
      out.append(rec)
      if g == 0 and not rec["partial"]:
        stats = self._closed_stats[head["window"]]
        for m in VARIATION_METRICS:
          stats[m].append(rec[m])
    return out

  def _close_row_window(self, partial: bool) -> List[dict]:
    n = self._window_rows
    start = (self._rows_seen - 1) // n * n if partial else self._rows_seen - n
    head = {"window": "rows", "index": start // n, "start_row": start,
            "end_row": self._rows_seen, "partial": partial}
    out = self._records(self._row_acc, head)
    self._row_acc = {}
    return out

  def _close_time_window(self, name: str, seconds: float, index: int, partial: bool) -> List[dict]:
    head = {"window": name, "index": int(index),
            "start_time": self._origin + index * seconds,
            "end_time": self._origin + (index + 1) * seconds, "partial": partial}
    return self._records(self._time_acc[name].pop(index), head)

  # -- update ---------------------------------------------------------------

  def update(self, labels, preds, weights=None, time=None, slices=None) -> List[dict]:
    """Adds a batch; returns the windows it closed (see the class docstring)."""
    where = "WindowedMetrics.update"
    if self._finalized:
      raise RuntimeError(f"{where}: called after finalize()")
    y_all = _as_1d(labels, "labels", where)
    n = y_all.shape[0]
    w_all = np.ones(n) if weights is None else _as_1d(weights, "weights", where)
    if w_all.shape[0] != n:
      raise ValueError(f"{where}: labels has {n} rows but weights has {w_all.shape[0]}")
    y, p, w = _check(y_all, preds, w_all, where)
    keep = w_all > 0
    rows = _prepare_checked(self._cfg, y, p, w)
    m = y.shape[0]
    group_ids = self._group_ids(slices, n, keep, w_all)
    parts = {}
    for base, local, num in group_ids:
      for g in range(num):
        idx = np.flatnonzero(local == g)
        if idx.size:
          parts[base + g] = rows.subset(idx)
    closed: List[dict] = []

    self._add_groups(rows, slice(None), group_ids, self._getter(self._overall), parts)

    # Row windows: split the batch where a window fills up.
    if self._window_rows:
      nw = self._window_rows
      start = 0
      while start < m:
        room = nw - self._rows_seen % nw
        stop = min(m, start + room)
        self._add_groups(rows, slice(start, stop), group_ids, self._getter(self._row_acc), parts)
        self._rows_seen += stop - start
        start = stop
        if self._rows_seen % nw == 0:
          closed += self._close_row_window(partial=False)
    else:
      self._rows_seen += m

    # Event-time windows.
    if self._spans:
      if time is None:
        t = np.full(m, np.nan)
      else:
        t_all = _as_1d(time, "time", where)
        if t_all.shape[0] != n:
          raise ValueError(f"{where}: labels has {n} rows but time has {t_all.shape[0]}")
        t = t_all[keep]
      has = np.isfinite(t)
      self._rows_without_time += int(m - has.sum())
      if has.any():
        batch_max = float(t[has].max())
        for name, seconds in self._spans:
          idx = np.floor((t - self._origin) / seconds)
          below = self._closed_below[name]
          late = has & (idx < below) if below is not None else np.zeros(m, bool)
          self._late_rows[name] += int(late.sum())
          self._late_weight[name] += float(w[late].sum())
          ok = has & ~late
          table = self._time_acc[name]
          present = np.unique(idx[ok])
          for i in present:
            # the usual case, a whole batch in one window, adds without copies
            sel = (slice(None) if present.size == 1 and ok.all()
                   else np.flatnonzero(ok & (idx == i)))
            self._add_groups(rows, sel, group_ids, self._getter(table.setdefault(int(i), {})),
                              parts)
        self._max_time = max(self._max_time, batch_max)
        watermark = self._max_time - self._lateness
        for name, seconds in self._spans:
          new_below = int(math.floor((watermark - self._origin) / seconds))
          if self._closed_below[name] is None or new_below > self._closed_below[name]:
            self._closed_below[name] = new_below
          for i in sorted(self._time_acc[name]):
            if i < self._closed_below[name]:
              closed += self._close_time_window(name, seconds, i, partial=False)
    return closed

  # -- results --------------------------------------------------------------

  def finalize_windows(self) -> List[dict]:
    """Closes the open windows (marked ``partial``; a full last row window is not) and returns them."""
    closed = []
    if not self._finalized:
      if self._window_rows and self._row_acc:
        closed += self._close_row_window(partial=self._rows_seen % self._window_rows != 0)
      for name, seconds in self._spans:
        for i in sorted(self._time_acc[name]):
          closed += self._close_time_window(name, seconds, i, partial=True)
      self._finalized = True
    return closed

  def overall(self) -> Dict[str, Any]:
    """Metrics of all rows seen so far."""
    acc = self._overall.get(0) or self._new_acc()
    return acc.result(calibration=self._record_cal)

  def slice_results(self) -> Dict[str, Dict[Any, dict]]:
    """field -> value -> metrics of all rows seen so far of that slice value."""
    out: Dict[str, Dict[Any, dict]] = {}
    for g, (field, value) in enumerate(self._groups):
      if field is not None and g in self._overall:
        out.setdefault(field, {})[value] = self._overall[g].result()
    return out

  def variation(self) -> Dict[str, Any]:
    """Spread of AUC, log loss, NE and PCOC over the closed (non-partial) windows of all rows.

    ``by_window[kind][metric]`` = {windows, mean, std (ddof=1), min, max}, NaN
    where undefined (fewer than 2 windows for std; NaN metrics are skipped).
    The flat keys ``auc_std``, ``auc_min``, ``auc_max``, ``ne_*``, ``pcoc_*``,
    ``logloss_*`` repeat those of the ``primary`` kind: row windows if
    configured, else the first time window.
    """
    by_window = {kind: _variation(v) for kind, v in self._closed_stats.items()
                 if kind != "rows" or self._window_rows}
    primary = "rows" if self._window_rows else (self._spans[0][0] if self._spans else None)
    out: Dict[str, Any] = {"primary": primary, "by_window": by_window}
    if primary is not None:
      for m, s in by_window[primary].items():
        for stat in ("std", "min", "max"):
          out[f"{m}_{stat}"] = s[stat]
    return out

  def counters(self) -> Dict[str, Any]:
    """Rows seen (weight > 0), rows without event time, late rows / weight per time span."""
    return {"rows": self._rows_seen, "rows_without_time": self._rows_without_time,
            "late_rows": dict(self._late_rows), "late_weight": dict(self._late_weight)}

  def finalize(self) -> Dict[str, Any]:
    """Closes the open windows; returns them with the overall, per-slice and variation summary."""
    windows = self.finalize_windows()
    return {"windows": windows, "overall": self.overall(), "slices": self.slice_results(),
            "variation": self.variation(), **self.counters()}

  # -- checkpoint -----------------------------------------------------------

  def state(self) -> Dict[str, Any]:
    """A JSON-serialisable snapshot; :meth:`from_state` continues identically."""
    def accs(table):
      return {str(g): a.state() for g, a in table.items()}
    return {
        "version": STATE_VERSION,
        "config": {"window_rows": self._window_rows, "time_windows": [name for name, _ in self._spans],
                   "slice_values": self._explicit, "slice_top_k": self._top_k,
                   "time_origin": self._origin, "allowed_lateness": self._lateness,
                   "record_calibration": self._record_cal, "accumulator": self._cfg.to_json()},
        "fields": {f: v["list"] for f, v in self._fields.items()},
        "rows_seen": self._rows_seen,
        "row_acc": accs(self._row_acc),
        "time_acc": {name: {str(i): accs(t) for i, t in table.items()}
                     for name, table in self._time_acc.items()},
        "closed_below": dict(self._closed_below),
        "overall": accs(self._overall),
        "max_time": self._max_time if np.isfinite(self._max_time) else None,
        "late_rows": dict(self._late_rows),
        "late_weight": dict(self._late_weight),
        "rows_without_time": self._rows_without_time,
        "closed_stats": self._closed_stats,
        "finalized": self._finalized,
    }

  @classmethod
  def from_state(cls, state: Mapping[str, Any]) -> "WindowedMetrics":
    """Restores from :meth:`state` (also after a JSON round trip)."""
    where = "WindowedMetrics.from_state"
    try:
      if state["version"] != STATE_VERSION:
        raise ValueError(f"{where}: state version {state['version']} != {STATE_VERSION}")
      c = state["config"]
      a = c["accumulator"]
      wm = cls(window_rows=c["window_rows"], time_windows=c["time_windows"],
               slice_values=c["slice_values"], slice_top_k=c["slice_top_k"],
               time_origin=c["time_origin"], allowed_lateness=c["allowed_lateness"],
               record_calibration=c["record_calibration"], num_bins=a["num_bins"],
               logit_range=a["logit_range"], eps=a["eps"], exact=a["exact"],
               calibration_edges=a["calibration_edges"])
      for field, values in state["fields"].items():
        wm._add_field(field, values)
      load = MetricAccumulator.from_state
      wm._rows_seen = int(state["rows_seen"])
      wm._row_acc = {int(g): load(s) for g, s in state["row_acc"].items()}
      names = [n for n, _ in wm._spans]
      if sorted(state["time_acc"]) != sorted(names):
        raise ValueError(f"{where}: time windows {sorted(state['time_acc'])} != {sorted(names)}")
      wm._time_acc = {name: {int(i): {int(g): load(s) for g, s in t.items()}
                             for i, t in state["time_acc"][name].items()} for name in names}
      wm._closed_below = {n: (None if v is None else int(v))
                          for n, v in state["closed_below"].items()}
      wm._overall = {int(g): load(s) for g, s in state["overall"].items()}
      mt = state["max_time"]
      wm._max_time = -math.inf if mt is None else float(mt)
      wm._late_rows = {k: int(v) for k, v in state["late_rows"].items()}
      wm._late_weight = {k: float(v) for k, v in state["late_weight"].items()}
      wm._rows_without_time = int(state["rows_without_time"])
      wm._closed_stats = {k: {m: [float(x) for x in v[m]] for m in VARIATION_METRICS}
                          for k, v in state["closed_stats"].items()}
      wm._finalized = bool(state["finalized"])
    except KeyError as e:
      raise ValueError(f"{where}: state lacks the key {e.args[0]!r}") from None
    return wm
