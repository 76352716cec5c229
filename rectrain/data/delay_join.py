"""The label-delay join: the training stream a real joiner emits from an event stream.

Every impression is logged at its event time ``t`` without a label; a
conversion (positive label) arrives ``delay`` seconds later, or never
(``delay = inf``). Only conversions within the attribution window ``A``
count: the TRUE label is ``y = [delay <= A]`` (later conversions are
negatives everywhere). A join policy decides when each sample is emitted
for training and with which OBSERVED label (the label known at emission):

* ``oracle``: emit at ``t`` with the true label (not realisable: the
  reference).
* ``wait`` (wait window ``W``): emit at ``t + W`` with ``[delay <= W]``;
  positives with ``W < delay <= A`` are lost (counted as
  ``lost_positives``). ``W = inf`` waits until every label is final and
  emits at ``t + A`` with the true label; a finite ``W > A`` is an error.
* ``fast`` (fast emit, Ktena et al. 2019, "Addressing Delayed Feedback for
  Continuous Training with Neural Networks in CTR prediction"): emit at
  ``t`` with ``[delay <= 0]`` (a negative unless the conversion is
  instantaneous), and again as a positive at ``t + delay`` when
  ``0 < delay <= A``. ``wait_s`` is ignored (``W = 0``).
* ``esdfm`` (elapsed-time sampling, Yang et al. 2021, "Capturing Delayed
  Feedback in Conversion Rate Prediction via Elapsed-Time Sampling"): emit
  at ``t + W`` with ``[delay <= W]``; positives with ``W < delay <= A``
  again at ``t + delay`` as positives.
* ``defer`` (Gu et al. 2021, "Real Negatives Matter: Continuous Training
  with Real Negatives for Delayed Feedback Modeling"): as ``esdfm``, and
  every sample that is not a delayed positive is emitted again at
  ``t + A`` with its true label: real negatives (``kind 2``, label 0, which
  includes conversions later than ``A``) and in-window positives
  (``kind 3``, label 1). So every sample is emitted exactly twice and the
  emitted feature distribution equals the actual one (the paper's Fig. 1b:
  "duplicate both positives and real negatives"). The authors' code
  (github.com/gusuperstar/defer, ``src/data.py``,
  ``add_esdfm_cut_fake_neg3``) ingests the in-window positive duplicates at
  conversion time + A instead; we emit both duplicates when the
  attribution window of the impression closes (``t + A``), when a joiner
  knows the label is final.
* ``snapshots``: emit every sample at ``t + s_k`` for each snapshot
  ``s_k`` (``kind = k``) with ``[delay <= s_k]`` (for the multi-head
  delayed-conversion tower).

Emission kinds: 0 first emission, 1 delayed positive re-emitted at its
conversion, 2 real negative re-emitted at ``t + A`` (DEFER), 3 in-window
positive duplicated at ``t + A`` (DEFER); ``k`` snapshot index in
``snapshots`` mode.

Emission follows event time: emissions are released in ``(emit_time,
index, kind)`` order once no unseen impression can emit earlier (the source
must be in event-time order; a row that is not raises). Pending emissions
are kept in FIFO queues of sorted runs (one per constant offset) and a
log-structured set of sorted runs for the variable ``t + delay`` offset, so
memory is bounded by the rows with a pending emission (those of the last
``max offset`` seconds), never by the stream, and every step is vectorised
NumPy over whole batches.

Positive scattering (``scatter_rows = S > 0``): a window's emissions, in
event-time order, are cut into consecutive blocks of at most ``S`` rows
(``ceil(N / S)`` blocks of equal size) and within each block the observed
positives are placed evenly among the negatives
(positive ``r`` of ``p`` in a block of ``n`` rows at offset
``floor((r + 1/2) n / p)``; negatives and positives each keep their order).
A burst of positives is so spread over the ``S / B`` batches of its block;
no row moves by ``S`` positions or more (the buffer bound), and the multiset
of a window's samples is unchanged. Blocks are formed once the window
closes, which is when the trainer receives its samples, so this is no
look-ahead into data the trainer would not have.

Windows (test-then-train): :meth:`LabelJoiner.windows` cuts event time into
windows ``[start, end)`` aligned to multiples of ``window_s`` and yields,
for each, the impressions with ``time`` in the window (true labels, to
evaluate the model before it learns the window) and the samples the joiner
emitted with ``emit_time`` in the window (to learn). At the end of the
source the joiner stops after the window holding the last impression;
emissions due later are dropped and counted (``dropped_at_end``), unless
``JoinConfig.drain`` (an addition to the issue's interface) continues with
impression-free windows until every pending emission is out.

Batches (:mod:`rectrain.data.batch`): every per-row key of the source
(``label``, ``weight``, ``cat``, ``dense``, ``index``, ``time``,
``true_prob``, ``delay``, and e.g. ``raw_ids``) plus, in emitted batches,
``label`` = the OBSERVED label, ``label_true`` (B,) float32,
``emit_time`` (B,) float64, ``elapsed`` (B,) float32 = ``emit_time - time``,
``kind`` (B,) int32. Impression batches carry ``label`` = ``label_true`` =
the true label. Batches hold ``batch_size`` rows; the last of a window is
padded with rows of weight 0 (index -1, NaN times, 0 labels and kind).

Counters (``JoinWindow.counts``, every value a number; additive over
windows except ``pending``): ``impressions``, ``impression_positives``
(true), ``late_conversions`` (converted after ``A``), ``lost_positives``
(true positives this mode never emits as positive: ``wait`` with
``delay > W``, ``snapshots`` with ``delay > s_last``), ``emitted``,
``emitted_positives``, ``emitted_kind_<k>``, ``fake_negatives`` (emitted
with label 0, true label 1), ``scattered`` (positives moved by scattering),
``pending`` (emissions scheduled and not yet emitted at the window end),
``dropped_at_end`` / ``dropped_kind_<k>`` (last window, without ``drain``).
:meth:`LabelJoiner.report` gives the totals of the latest pass, with
``scheduled_kind_<k> == emitted_kind_<k> + dropped_kind_<k>``.

Additions to the issue's interface: ``JoinConfig.drain``,
``LabelJoiner.report()``, ``LabelJoiner.emissions(window_s)``,
:func:`scatter_order`, :func:`true_labels`.

Shape legend: N rows of a chunk, B batch size.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time as time_lib
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from rectrain.data import batch as batch_lib

MODES = ("oracle", "wait", "fast", "esdfm", "defer", "snapshots")
KIND_FIRST, KIND_DELAYED_POSITIVE, KIND_REAL_NEGATIVE, KIND_WINDOW_POSITIVE = 0, 1, 2, 3

Rows = Dict[str, np.ndarray]
# Columns the joiner adds to every pending emission (besides the source's).
_EMIT_KEYS = ("emit_time", "kind", "label_obs", "label_true")
_NAN_PAD = ("time", "true_prob", "delay", "emit_time", "elapsed")


@dataclasses.dataclass(frozen=True, kw_only=True)
class JoinConfig:
  """A join policy (see the module docstring).

  Attributes:
    mode: one of ``MODES``.
    wait_s: ``W``, the wait / elapsed-time window (``wait``, ``esdfm``,
      ``defer``); ``inf`` is allowed for ``wait`` only.
    attribution_s: ``A``; conversions later than ``A`` are negatives.
    snapshot_s: ``snapshots`` mode: increasing offsets ``s_k`` in ``[0, A]``.
    scatter_rows: positive-scattering block ``S`` (0 = off, else
      ``>= batch_size``).
    batch_size: rows per emitted / impression batch.
    drain: after the source ends, keep yielding windows until every pending
      emission is out (default: stop after the last impression's window and
      count the rest as ``dropped_at_end``).
  """
  mode: str
  wait_s: float = 0.0
  attribution_s: float = 7 * 86400.0
  snapshot_s: Tuple[float, ...] = ()
  scatter_rows: int = 0
  batch_size: int
  drain: bool = False

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"JoinConfig.mode={self.mode!r}: must be one of {MODES}")
    a = _as_float("attribution_s", self.attribution_s)
    if not (math.isfinite(a) and a > 0):
      raise ValueError(f"JoinConfig.attribution_s={self.attribution_s!r}: must be finite and > 0")
    w = _as_float("wait_s", self.wait_s)
    if math.isnan(w) or w < 0:
      raise ValueError(f"JoinConfig.wait_s={self.wait_s!r}: must be >= 0")
    if self.mode in ("wait", "esdfm", "defer"):
      if math.isinf(w) and self.mode != "wait":
        raise ValueError(f"JoinConfig.wait_s=inf: only mode 'wait' may wait forever, "
                         f"mode {self.mode!r} needs wait_s <= attribution_s={a}")
      if math.isfinite(w) and w > a:
        raise ValueError(f"JoinConfig.wait_s={w}: must be <= attribution_s={a} (labels are "
                         f"final at A; use wait_s=inf to wait for final labels)")
    try:
      snaps = tuple(float(s) for s in self.snapshot_s)
    except (TypeError, ValueError):
      raise ValueError(f"JoinConfig.snapshot_s={self.snapshot_s!r}: must be a sequence of "
                       f"numbers") from None
    object.__setattr__(self, "snapshot_s", snaps)
    object.__setattr__(self, "wait_s", w)
    object.__setattr__(self, "attribution_s", a)
    if self.mode == "snapshots":
      s = np.asarray(snaps, np.float64)
      if s.size == 0:
        raise ValueError("JoinConfig.snapshot_s=(): mode 'snapshots' needs at least one snapshot")
      if not np.all(np.isfinite(s)) or np.any(s < 0) or np.any(s > a):
        raise ValueError(f"JoinConfig.snapshot_s={snaps}: every snapshot must lie in "
                         f"[0, attribution_s={a}]")
      if np.any(np.diff(s) <= 0):
        raise ValueError(f"JoinConfig.snapshot_s={snaps}: must be strictly increasing")
    if isinstance(self.batch_size, bool) or int(self.batch_size) != self.batch_size \
        or int(self.batch_size) < 1:
      raise ValueError(f"JoinConfig.batch_size={self.batch_size!r}: must be an integer >= 1")
    object.__setattr__(self, "batch_size", int(self.batch_size))
    if isinstance(self.scatter_rows, bool) or int(self.scatter_rows) != self.scatter_rows \
        or int(self.scatter_rows) < 0:
      raise ValueError(f"JoinConfig.scatter_rows={self.scatter_rows!r}: must be an integer >= 0")
    object.__setattr__(self, "scatter_rows", int(self.scatter_rows))
    if 0 < self.scatter_rows < self.batch_size:
      raise ValueError(f"JoinConfig.scatter_rows={self.scatter_rows}: must be 0 (off) or >= "
                       f"batch_size={self.batch_size}")

  @property
  def num_kinds(self) -> int:
    """Number of emission kinds this mode produces (kinds are 0..num_kinds-1)."""
    return {"oracle": 1, "wait": 1, "fast": 2, "esdfm": 2, "defer": 4,
            "snapshots": len(self.snapshot_s)}[self.mode]


def _as_float(name: str, value) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    raise ValueError(f"JoinConfig.{name}={value!r}: must be a number") from None


@dataclasses.dataclass
class JoinWindow:
  """One test-then-train window of event time ``[start, end)``.

  Attributes:
    start, end: the window's event-time bounds (seconds).
    impressions: batches of the impressions with ``time`` in the window,
      ``label`` = true label; the last padded with weight 0.
    emitted: batches of the samples emitted with ``emit_time`` in the
      window, in emission order; the last padded with weight 0.
    counts: the window's counters (module docstring).
  """
  start: float
  end: float
  impressions: List[batch_lib.Batch]
  emitted: List[batch_lib.Batch]
  counts: Dict[str, Any]


def true_labels(delay_N: np.ndarray, attribution_s: float) -> np.ndarray:
  """``y = [delay <= A]``: converted within the attribution window (bool)."""
  return np.asarray(delay_N, np.float64) <= float(attribution_s)


def scatter_order(positive_N: np.ndarray, block_rows: int) -> np.ndarray:
  """The permutation of positive scattering (module docstring).

  ``N`` rows are cut into ``G = ceil(N / block_rows)`` consecutive blocks of
  equal size (up to one row; block ``g`` starts at ``floor(g N / G)``); in a
  block of ``n`` rows with ``p`` positives, positive ``r`` (in order) goes to
  offset ``floor((r + 1/2) n / p)`` and the negatives fill the other offsets
  in order. Every row moves by less than ``block_rows`` positions.

  Returns:
    ``order_N`` int64: output position ``j`` holds input row ``order_N[j]``.
  """
  pos = np.asarray(positive_N, bool)
  n = pos.size
  s = int(block_rows)
  if s < 1:
    raise ValueError(f"scatter_order: block_rows={block_rows} must be >= 1")
  if n == 0:
    return np.zeros((0,), np.int64)
  num_blocks = -(-n // s)
  starts = np.arange(num_blocks, dtype=np.int64) * n // num_blocks
  size_G = np.diff(np.append(starts, n))
  block = np.searchsorted(starts, np.arange(n, dtype=np.int64), side="right") - 1
  pos_idx = np.flatnonzero(pos)
  p_G = np.bincount(block[pos_idx], minlength=starts.size)
  g = block[pos_idx]
  first_G = np.concatenate([[0], np.cumsum(p_G)[:-1]])
  rank = np.arange(pos_idx.size, dtype=np.int64) - first_G[g]
  slot = starts[g] + np.floor((rank + 0.5) * size_G[g] / p_G[g]).astype(np.int64)
  taken = np.zeros(n, bool)
  taken[slot] = True
  order = np.empty(n, np.int64)
  order[slot] = pos_idx
  order[~taken] = np.flatnonzero(~pos)
  return order


# ---------------------------------------------------------------------------
# Row chunks (dicts of equal-length column arrays).


def _take(rows: Rows, sel) -> Rows:
  return {k: v[sel] for k, v in rows.items()}


def _length(rows: Rows) -> int:
  return int(rows["emit_time"].shape[0]) if "emit_time" in rows else int(rows["time"].shape[0])


def _concat(parts: List[Rows]) -> Rows:
  if len(parts) == 1:
    return parts[0]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class _FifoQueue:
  """Pending emissions whose emit times never decrease in push order."""

  def __init__(self):
    self.runs: collections.deque = collections.deque()
    self.size = 0

  def push(self, run: Rows) -> None:
    n = _length(run)
    if n:
      self.runs.append(run)
      self.size += n

  def pop_before(self, threshold: float) -> List[Rows]:
    out = []
    while self.runs:
      run = self.runs[0]
      et = run["emit_time"]
      if et[-1] < threshold:
        out.append(self.runs.popleft())
        self.size -= et.shape[0]
        continue
      k = int(np.searchsorted(et, threshold, side="left"))
      if k:
        out.append(_take(run, slice(0, k)))
        self.runs[0] = _take(run, slice(k, None))
        self.size -= k
      break
    return out


class _MergeQueue:
  """Pending emissions in any order: a log-structured set of sorted runs.

  A pushed run is sorted by emit time; while the previous run is at most
  twice as long as the last one they are merged, so there are O(log n) runs.
  """

  def __init__(self):
    self.runs: List[Rows] = []
    self.size = 0

  def push(self, run: Rows) -> None:
    n = _length(run)
    if not n:
      return
    self.runs.append(_take(run, np.argsort(run["emit_time"], kind="stable")))
    self.size += n
    while len(self.runs) >= 2 and _length(self.runs[-2]) <= 2 * _length(self.runs[-1]):
      last = self.runs.pop()
      merged = _concat([self.runs.pop(), last])
      self.runs.append(_take(merged, np.argsort(merged["emit_time"], kind="stable")))

  def pop_before(self, threshold: float) -> List[Rows]:
    out, keep = [], []
    for run in self.runs:
      k = int(np.searchsorted(run["emit_time"], threshold, side="left"))
      if k:
        out.append(_take(run, slice(0, k)))
        self.size -= k
      if k < _length(run):
        keep.append(run if k == 0 else _take(run, slice(k, None)))
    self.runs = keep
    return out


# ---------------------------------------------------------------------------
# The joiner.


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


def _pad(batch: batch_lib.Batch, batch_size: int) -> batch_lib.Batch:
  """Pads to ``batch_size`` rows: weight 0, index -1, NaN times/probabilities, 0 elsewhere."""
  n = batch["weight"].shape[0]
  if n == batch_size:
    return batch
  out = {}
  for key, value in batch.items():
    fill = -1 if key == "index" else (
        np.nan if key in _NAN_PAD and np.issubdtype(value.dtype, np.floating) else 0)
    pad = np.full((batch_size - n,) + value.shape[1:], fill, dtype=value.dtype)
    out[key] = np.concatenate([value, pad])
  return out


# ---------------------------------------------------------------------------
# Throughput: python -m rectrain.data.delay_join [rows] [mode ...]


def _throughput(rows: int = 1_000_000, modes=MODES, batch_size: int = 4096) -> None:
  from rectrain.data.synthetic import SyntheticStream
  t0 = time_lib.perf_counter()
  source = list(SyntheticStream(batch_size=batch_size, cat_buckets=1 << 16,
                                num_rows_total=rows, seed=0))
  t_gen = time_lib.perf_counter() - t0
  print(f"source: {rows} synthetic rows (1M rows/day) generated in {t_gen:.1f} s, "
        f"{rows / t_gen:,.0f} rows/s")
  for mode in modes:
    cfg = JoinConfig(mode=mode, wait_s=900.0, attribution_s=86400.0,
                     snapshot_s=(3600.0, 21600.0, 86400.0), batch_size=batch_size,
                     scatter_rows=8 * batch_size)
    joiner = LabelJoiner(source, cfg)
    t0, c0 = time_lib.perf_counter(), time_lib.process_time()
    emitted = 0
    for w in joiner.windows(3600.0):
      emitted += sum(int((b["weight"] > 0).sum()) for b in w.emitted)
    dt, dc = time_lib.perf_counter() - t0, time_lib.process_time() - c0
    rep = joiner.report()
    print(f"{mode:9s}: {rep['rows'] / dt:11,.0f} impressions/s wall ({dt:.2f} s), "
          f"{rep['rows'] / dc:11,.0f} /s CPU ({dc:.2f} s); emitted {emitted}, dropped at end "
          f"{rep['dropped_at_end']}, max pending {rep['max_pending']}")


if __name__ == "__main__":
  import sys
  _n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
  _throughput(_n, tuple(sys.argv[2:]) or MODES)
