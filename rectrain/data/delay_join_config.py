"""The join policy and the window type of :mod:`rectrain.data.delay_join`.

``MODES`` and the emission kinds (``KIND_*``), :class:`JoinConfig` (a join
policy, validated), :class:`JoinWindow` (one test-then-train window) and
:func:`true_labels` (``y = [delay <= A]``). The policies are described in the
:mod:`rectrain.data.delay_join` docstring.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Tuple

import numpy as np

from rectrain.data import batch as batch_lib

MODES = ("oracle", "wait", "fast", "esdfm", "defer", "snapshots")
KIND_FIRST, KIND_DELAYED_POSITIVE, KIND_REAL_NEGATIVE, KIND_WINDOW_POSITIVE = 0, 1, 2, 3


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
