"""The label joiner of :mod:`rectrain.data.delay_join`: :class:`LabelJoiner`.

It validates the source, schedules every impression's emissions into the
queues of :mod:`rectrain.data.delay_join_rows`, releases them in event-time
order per test-then-train window (:meth:`LabelJoiner.windows`), scatters
positives, batches and counts (module docstring of
:mod:`rectrain.data.delay_join`).

Shape legend: N rows of a chunk, B batch size.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from rectrain.data import batch as batch_lib
from rectrain.data.delay_join_config import (KIND_DELAYED_POSITIVE, KIND_FIRST,
                                             KIND_REAL_NEGATIVE, KIND_WINDOW_POSITIVE,
                                             JoinConfig, JoinWindow, true_labels)
from rectrain.data.delay_join_rows import (Rows, _concat, _FifoQueue, _length, _MergeQueue,
                                           _pad, _take, scatter_order)

# Columns the joiner adds to every pending emission (besides the source's).
_EMIT_KEYS = ("emit_time", "kind", "label_obs", "label_true")


class LabelJoiner:
  """Replays ``source`` through the join policy ``config``.

  Usage::

    joiner = LabelJoiner(SyntheticStream(...), JoinConfig(mode="esdfm", wait_s=900,
                                                           attribution_s=86400, batch_size=4096))
    for w in joiner.windows(3600.0):
      evaluate(w.impressions)   # true labels
      train(w.emitted)          # observed labels
    print(joiner.report())

  ``source`` yields batches (:mod:`rectrain.data.batch`) with ``time`` and
  ``delay``, in event-time order; rows of weight 0 (padding) are skipped and
  counted. Each call of :meth:`windows` / :meth:`emissions` iterates the
  source afresh.
  """

  def __init__(self, source: Iterable[batch_lib.Batch], config: JoinConfig):
    if not isinstance(config, JoinConfig):
      raise TypeError(f"LabelJoiner: config must be a JoinConfig, got {type(config).__name__}")
    self.source = source
    self.config = config
    self._report: Dict[str, Any] = {}

  # ---- scheduling -------------------------------------------------------------
  def _offsets(self) -> List[Tuple[str, float]]:
    """Queue names and constant offsets of this mode (kind 1 is variable)."""
    c = self.config
    a = c.attribution_s
    if c.mode == "oracle":
      return [("0", 0.0)]
    if c.mode == "wait":
      return [("0", a if math.isinf(c.wait_s) else c.wait_s)]
    if c.mode == "fast":
      return [("0", 0.0)]
    if c.mode == "esdfm":
      return [("0", c.wait_s)]
    if c.mode == "defer":
      return [("0", c.wait_s), ("A", a)]
    return [(str(k), s) for k, s in enumerate(c.snapshot_s)]

  def _schedule(self, rows: Rows) -> Dict[str, int]:
    """Puts the emissions of a chunk of real rows into the queues; returns counters."""
    c = self.config
    a = c.attribution_s
    t = rows["time"]
    d = rows["delay"].astype(np.float64)
    y = rows["label_true"] > 0.5
    n = t.shape[0]
    counts = {"impressions": n, "impression_positives": int(y.sum()),
              "late_conversions": int((np.isfinite(d) & ~y).sum()), "lost_positives": 0}
    y32 = rows["label_true"]

    def run(sel, emit_time, kind, label_obs) -> Rows:
      part = rows if sel is None else _take(rows, sel)
      m = part["time"].shape[0]
      out = dict(part)
      out["emit_time"] = np.asarray(emit_time, np.float64)
      out["kind"] = np.broadcast_to(np.asarray(kind, np.int32), (m,)).copy()
      out["label_obs"] = np.broadcast_to(np.asarray(label_obs, np.float32), (m,)).copy()
      out["label_true"] = y32 if sel is None else y32[sel]
      return out

    mode = c.mode
    if mode == "snapshots":
      for k, s in enumerate(c.snapshot_s):
        self._queues[str(k)].push(run(None, t + s, k, d <= s))
      counts["lost_positives"] = int((y & (d > c.snapshot_s[-1])).sum())
    elif mode in ("oracle", "wait"):
      off = self._offsets()[0][1]
      label = y if mode == "oracle" else d <= off
      self._queues["0"].push(run(None, t + off, KIND_FIRST, label))
      counts["lost_positives"] = int((y & ~label).sum())
    else:  # fast, esdfm, defer
      w = 0.0 if mode == "fast" else c.wait_s
      self._queues["0"].push(run(None, t + w, KIND_FIRST, d <= w))
      late = y & (d > w)
      if late.any():
        sel = np.flatnonzero(late)
        self._queues["1"].push(run(sel, t[sel] + d[sel], KIND_DELAYED_POSITIVE, 1.0))
      if mode == "defer":
        sel = np.flatnonzero(~late)
        in_window = d[sel] <= w
        kind = np.where(in_window, KIND_WINDOW_POSITIVE, KIND_REAL_NEGATIVE)
        self._queues["A"].push(run(sel, t[sel] + a, kind, in_window))
    return counts

  def _release(self, threshold: float) -> Optional[Rows]:
    """Pops every pending emission with ``emit_time < threshold``, in emission order."""
    parts = []
    for q in self._queues.values():
      parts += q.pop_before(threshold)
    if not parts:
      return None
    rows = _concat(parts)
    order = np.lexsort((rows["kind"], rows["index"], rows["emit_time"]))
    return _take(rows, order)

  def _drop_all(self) -> np.ndarray:
    """Empties the queues; returns the number of dropped emissions per kind."""
    dk = np.zeros(self.config.num_kinds, np.int64)
    for name in list(self._queues):
      for run in self._queues[name].runs:
        dk += np.bincount(run["kind"], minlength=dk.size)
      self._queues[name] = type(self._queues[name])()
    return dk

  def _pending(self) -> int:
    return sum(q.size for q in self._queues.values())

  # ---- batches ----------------------------------------------------------------
  def _batches(self, rows: Optional[Rows], emitted: bool) -> List[batch_lib.Batch]:
    if rows is None or _length(rows) == 0:
      return []
    out = {k: v for k, v in rows.items() if k not in _EMIT_KEYS}
    if emitted:
      out["label"] = rows["label_obs"]
      out["label_true"] = rows["label_true"]
      out["emit_time"] = rows["emit_time"]
      out["elapsed"] = (rows["emit_time"] - rows["time"]).astype(np.float32)
      out["kind"] = rows["kind"]
    else:
      out["label"] = rows["label_true"]
      out["label_true"] = rows["label_true"]
    b = self.config.batch_size
    n = _length(rows)
    batches = [_take(out, slice(i, i + b)) for i in range(0, n, b)]
    batches[-1] = _pad(batches[-1], b)
    return batches

  # ---- source -----------------------------------------------------------------
  def _chunks(self) -> Iterator[Rows]:
    """Real rows of the source, validated, with ``label_true``; counts padding."""
    keys = None
    prev_time, prev_index = -np.inf, None
    for i, b in enumerate(self.source):
      for key in ("time", "delay", "weight", "index"):
        if key not in b:
          raise ValueError(f"LabelJoiner: source batch {i} has no {key!r} key; the label-delay "
                           f"join needs event times and label delays (the synthetic stream "
                           f"has them)")
      n = b["weight"].shape[0]
      if keys is None:
        keys = [k for k, v in b.items() if np.ndim(v) >= 1 and np.shape(v)[0] == n]
      missing = [k for k in keys if k not in b]
      if missing:
        raise ValueError(f"LabelJoiner: source batch {i} lacks keys {missing} of the first batch")
      real = np.asarray(b["weight"]) > 0
      self._report["source_padding"] += int(n - real.sum())
      if not real.any():
        continue
      rows = {k: np.asarray(b[k])[real] for k in keys}
      t = rows["time"] = rows["time"].astype(np.float64, copy=False)
      d = rows["delay"]
      bad = ~np.isfinite(t)
      if bad.any():
        j = int(np.argmax(bad))
        raise ValueError(f"LabelJoiner: source row index {int(rows['index'][j])} (batch {i}) has "
                         f"time {t[j]}; event times must be finite")
      bad = np.isnan(d) | (d < 0)
      if bad.any():
        j = int(np.argmax(bad))
        raise ValueError(f"LabelJoiner: source row index {int(rows['index'][j])} (batch {i}) has "
                         f"delay {d[j]}; delays must be >= 0 (inf = never converts)")
      prev_N = np.concatenate([[prev_time], t[:-1]])
      if (t < prev_N).any():
        j = int(np.argmax(t < prev_N))
        before = (f"row index {int(rows['index'][j - 1])}" if j else
                  f"row index {prev_index} of the previous batch")
        raise ValueError(f"LabelJoiner: source rows are not in event-time order: row index "
                         f"{int(rows['index'][j])} (batch {i}) has time {t[j]} < {prev_N[j]} "
                         f"of {before}")
      prev_time, prev_index = float(t[-1]), int(rows["index"][-1])
      yield rows

  # ---- iteration ----------------------------------------------------------------
  def _start(self) -> None:
    self._queues = {name: _FifoQueue() for name, _ in self._offsets()}
    if self.config.mode in ("fast", "esdfm", "defer"):
      self._queues["1"] = _MergeQueue()
    k = self.config.num_kinds
    self._report = {"windows": 0, "rows": 0, "source_padding": 0, "impression_positives": 0,
                    "late_conversions": 0, "lost_positives": 0, "emitted": 0,
                    "emitted_positives": 0, "fake_negatives": 0, "scattered": 0,
                    "max_pending": 0, "dropped_at_end": 0}
    for kind in range(k):
      self._report.update({f"scheduled_kind_{kind}": 0, f"emitted_kind_{kind}": 0,
                           f"dropped_kind_{kind}": 0})

  def windows(self, window_s: float) -> Iterator[JoinWindow]:
    """Test-then-train windows of ``window_s`` seconds of event time (module docstring)."""
    try:
      w = float(window_s)
    except (TypeError, ValueError):
      w = float("nan")
    if not (math.isfinite(w) and w > 0):
      raise ValueError(f"LabelJoiner.windows: window_s={window_s!r} must be finite and > 0")
    self._start()
    rep = self._report
    k = self.config.num_kinds
    start = end = None
    imp_parts: List[Rows] = []
    counts: Dict[str, int] = {}

    def close(final: bool) -> JoinWindow:
      released = self._release(end)
      c = {"impressions": 0, "impression_positives": 0, "late_conversions": 0,
           "lost_positives": 0}
      for key in c:
        c[key] = counts.get(key, 0)
      c.update(self._emit_counts(released))
      if released is not None and self.config.scatter_rows:
        positive = released["label_obs"] > 0.5
        order = scatter_order(positive, self.config.scatter_rows)
        c["scattered"] = int((positive[order] & (order != np.arange(order.size))).sum())
        released = _take(released, order)
      c["pending"] = self._pending()
      rep["max_pending"] = max(rep["max_pending"], c["pending"])
      if final:
        dk = self._drop_all()
        c["dropped_at_end"] = int(dk.sum())
        for kind in range(k):
          c[f"dropped_kind_{kind}"] = int(dk[kind])
      for key, value in c.items():
        if key == "impressions":
          rep["rows"] += value
        elif key != "pending":
          rep[key] = rep.get(key, 0) + value
      rep["windows"] += 1
      imp = _concat(imp_parts) if imp_parts else None
      return JoinWindow(start=start, end=end, impressions=self._batches(imp, emitted=False),
                        emitted=self._batches(released, emitted=True), counts=c)

    for rows in self._chunks():
      t = rows["time"]
      if start is None:
        start = math.floor(t[0] / w) * w
        end = start + w
      lo = 0
      while lo < t.shape[0]:
        hi = int(np.searchsorted(t, end, side="left"))
        if hi > lo:
          part = _take(rows, slice(lo, hi)) if (lo, hi) != (0, t.shape[0]) else rows
          part["label_true"] = true_labels(part["delay"], self.config.attribution_s).astype(
              np.float32)
          for key, value in self._schedule(part).items():
            counts[key] = counts.get(key, 0) + value
          self._count_scheduled(part)
          imp_parts.append(part)
          lo = hi
        if lo < t.shape[0]:   # a row at or after `end` was seen: the window is complete
          yield close(final=False)
          imp_parts, counts = [], {}
          start, end = end, end + w
    if start is None:
      return
    if self.config.drain:
      while True:
        window = close(final=False)
        done = self._pending() == 0
        yield window
        if done:
          return
        imp_parts, counts = [], {}
        start, end = end, end + w
    yield close(final=True)

  def _count_scheduled(self, rows: Rows) -> None:
    """Scheduled emissions per kind, known from the rows at scheduling time."""
    c = self.config
    n = rows["time"].shape[0]
    rep = self._report
    if c.mode in ("oracle", "wait", "snapshots"):
      for kind in range(c.num_kinds):
        rep[f"scheduled_kind_{kind}"] += n
      return
    d = rows["delay"].astype(np.float64)
    w = 0.0 if c.mode == "fast" else c.wait_s
    late = int(((d <= c.attribution_s) & (d > w)).sum())
    rep["scheduled_kind_0"] += n
    rep["scheduled_kind_1"] += late
    if c.mode == "defer":
      window_pos = int((d <= w).sum())
      rep["scheduled_kind_3"] += window_pos
      rep["scheduled_kind_2"] += n - late - window_pos

  def _emit_counts(self, released: Optional[Rows]) -> Dict[str, int]:
    k = self.config.num_kinds
    c = {"emitted": 0, "emitted_positives": 0, "fake_negatives": 0, "scattered": 0}
    per = np.zeros(k, np.int64)
    if released is not None:
      obs = released["label_obs"] > 0.5
      c["emitted"] = int(obs.size)
      c["emitted_positives"] = int(obs.sum())
      c["fake_negatives"] = int((~obs & (released["label_true"] > 0.5)).sum())
      per = np.bincount(released["kind"], minlength=k)
    for kind in range(k):
      c[f"emitted_kind_{kind}"] = int(per[kind])
    return c

  def emissions(self, window_s: float = 3600.0) -> Iterator[batch_lib.Batch]:
    """All emitted samples in emission order, in full batches (the last padded).

    Runs :meth:`windows` (``window_s`` sets where the stream ends without
    ``drain`` and the scattering blocks) and re-batches across windows.
    """
    b = self.config.batch_size
    carry: Optional[Rows] = None
    for window in self.windows(window_s):
      for batch in window.emitted:
        real = batch["weight"] > 0
        part = batch if real.all() else _take(batch, real)
        carry = part if carry is None else _concat([carry, part])
        n = carry["weight"].shape[0]
        full = n - n % b
        for i in range(0, full, b):
          yield _take(carry, slice(i, i + b))
        carry = _take(carry, slice(full, n)) if full < n else None
    if carry is not None:
      yield _pad(carry, b)

  def report(self) -> Dict[str, Any]:
    """Totals of the latest pass (module docstring); ``rows`` = impressions."""
    return dict(self._report)
