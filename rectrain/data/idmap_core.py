"""The collision-free id -> row map itself: :class:`IdMap`.

Admission (count-min sketch), expiry (ttl), eviction (LRU/LFU) and the
remapping of a batch's raw ids to rows, with the map's config and its state as
plain arrays. The row bookkeeping it builds on (hash index, free rows, recency
queues, sketch) is :class:`rectrain.data.idmap_rows._RowBook`; the algorithm is
described in :mod:`rectrain.data.idmap`.

Shape legend: B batch rows, F categorical fields, K distinct present ids of a
batch, N rows of the fused table, R padded rows reset per batch.
"""

from __future__ import annotations

import json
from typing import Any, Dict

import numpy as np

from rectrain.data import hashing
from rectrain.data.idmap_rows import _SKETCH_SALT, _RowBook, _field_hash

POLICIES = ("lru", "lfu")
UNADMITTED = ("missing", "shared", "zero")
CLOCKS = ("time", "index")

# Per-batch counters returned by IdMap.remap (all ints; "occupied" is a gauge).
COUNTER_NAMES = (
    "lookups",      # present (non-missing) id occurrences in real rows
    "hits",         # occurrences that used the id's own row (admitted before or in this batch)
    "unadmitted",   # occurrences that took the not-admitted path
    "new_ids",      # distinct ids of the batch that had no row
    "admitted",     # ids given a row
    "rejected",     # ids without a row whose count is still below min_count
    "deferred",     # ids at min_count that got no row (per-batch cap, or full without victims)
    "evicted",      # rows freed to make room (policy)
    "expired",      # rows freed by the ttl
    "occupied",     # gauge: rows in use after the batch
)


def _check_choice(name: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f"idmap config {name}={value!r}: must be one of {list(choices)}")


class IdMap(_RowBook):
  """A fixed-capacity, collision-free map (field, raw 64-bit id) -> row.

  Args:
    layout: field names and rows per field (``buckets``); rows of field f are
      ``layout.offsets[f] ..``, the first one or two reserved (module doc).
    min_count: sightings (count-min estimate) before an id is admitted.
    ttl: an id unseen for more than ``ttl`` clock units loses its row; 0 = never.
    policy: ``"lru"`` or ``"lfu"`` eviction when a field is full.
    unadmitted: ``"missing"``, ``"shared"`` or ``"zero"`` (module doc).
    clock: ``"time"`` (batch key ``time``) or ``"index"`` (batch key ``index``),
      used by :meth:`remap_batch`.
    max_admit_per_batch: admissions per batch at most, also the padded length
      R of ``reset_rows``; None = B * F (never caps).
    sketch_width, sketch_depth: count-min sketch size (width a power of two);
      unused when ``min_count <= 1``.
    sketch_halve_every: clock units between halvings of all counters; 0 = never.
  """

  def __init__(self, layout: hashing.FieldLayout, *, min_count: int = 1, ttl: float = 0.0,
               policy: str = "lru", unadmitted: str = "missing", clock: str = "time",
               max_admit_per_batch: int | None = None, sketch_width: int = 1 << 20,
               sketch_depth: int = 4, sketch_halve_every: float = 0.0):
    _check_choice("policy", policy, POLICIES)
    _check_choice("unadmitted", unadmitted, UNADMITTED)
    _check_choice("clock", clock, CLOCKS)
    if int(min_count) < 1:
      raise ValueError(f"idmap config min_count={min_count}: must be >= 1")
    if not float(ttl) >= 0:
      raise ValueError(f"idmap config ttl={ttl}: must be >= 0 (0 = never expire)")
    if max_admit_per_batch is not None and int(max_admit_per_batch) < 1:
      raise ValueError(f"idmap config max_admit_per_batch={max_admit_per_batch}: must be >= 1")
    sketch_width = int(sketch_width)
    if sketch_width < 1 or sketch_width & (sketch_width - 1):
      raise ValueError(f"idmap config sketch_width={sketch_width}: must be a power of two")
    if int(sketch_depth) < 1:
      raise ValueError(f"idmap config sketch_depth={sketch_depth}: must be >= 1")
    if not float(sketch_halve_every) >= 0:
      raise ValueError(f"idmap config sketch_halve_every={sketch_halve_every}: must be >= 0")
    if layout.num_fields > 256:
      raise ValueError(f"idmap: at most 256 fields, layout has {layout.num_fields}")
    self.layout = layout
    self.min_count = int(min_count)
    self.ttl = float(ttl)
    self.policy = policy
    self.unadmitted = unadmitted
    self.clock = clock
    self.max_admit_per_batch = None if max_admit_per_batch is None else int(max_admit_per_batch)
    self.sketch_width = sketch_width
    self.sketch_depth = int(sketch_depth)
    self.sketch_halve_every = float(sketch_halve_every)
    self.first_slot = 2 if unadmitted == "shared" else 1
    caps = np.asarray(layout.buckets, dtype=np.int64)
    small = [n for n, b in zip(layout.names, caps) if b <= self.first_slot]
    if small:
      raise ValueError(f"idmap capacity: fields {small} need more than {self.first_slot} rows "
                       f"(reserved rows of unadmitted={unadmitted!r}) to hold any id")
    self.num_fields = layout.num_fields
    self.num_rows = layout.num_rows
    if self.num_rows >= 2 ** 31:
      raise ValueError(f"idmap capacity: {self.num_rows} rows do not fit int32 row ids")
    self._off = layout.offsets
    n = self.num_rows
    self._row_field = np.repeat(np.arange(self.num_fields, dtype=np.int32), caps)
    # np.full, not np.zeros: the pages are written now, not faulted in by the
    # first batches (which made them several times slower).
    self.row_key = np.full(n, 0, np.uint64)
    self.row_used = np.full(n, False)
    self.row_last = np.full(n, -np.inf)
    self.row_count = np.full(n, 0, np.int64)
    self.row_stamp = np.full(n, 0, np.int64)
    self.row_gen = np.full(n, 0, np.int32)
    # Free rows: one stack per field in the field's own segment of ``_free``,
    # filled so that pops hand out ascending rows.
    self._free = np.full(n, 0, np.int32)
    self._nfree = caps - self.first_slot
    for f in range(self.num_fields):
      lo = self._off[f]
      self._free[lo:lo + self._nfree[f]] = np.arange(self._off[f + 1] - 1, lo + self.first_slot - 1,
                                                     -1, dtype=np.int32)
    # Recency queues (row, stamp), lazily deleted: an entry is live while its
    # row is used and was last touched at that stamp.
    self._q_row = [np.zeros(64, np.int32) for _ in range(self.num_fields)]
    self._q_stamp = [np.zeros(64, np.int64) for _ in range(self.num_fields)]
    self._q_head = np.zeros(self.num_fields, np.int64)
    self._q_tail = np.zeros(self.num_fields, np.int64)
    self._cms = (np.zeros((self.sketch_depth, self.sketch_width), np.uint32)
                 if self.min_count > 1 else np.zeros((0, 0), np.uint32))
    self._sketch_salts = hashing.splitmix64(
        np.arange(self.sketch_depth, dtype=np.uint64) ^ _SKETCH_SALT)
    self._next_halve = np.nan
    self.seq = 0                   # batches remapped
    self._build_index()

  # ---- config and state --------------------------------------------------------
  def config(self) -> Dict[str, Any]:
    """The constructor arguments (JSON-able)."""
    return dict(names=list(self.layout.names), buckets=[int(b) for b in self.layout.buckets],
                min_count=self.min_count, ttl=self.ttl, policy=self.policy,
                unadmitted=self.unadmitted, clock=self.clock,
                max_admit_per_batch=self.max_admit_per_batch, sketch_width=self.sketch_width,
                sketch_depth=self.sketch_depth, sketch_halve_every=self.sketch_halve_every)

  def state(self) -> Dict[str, np.ndarray]:
    """Everything the map knows, as plain arrays (copies); see :meth:`from_state`."""
    q_rows, q_stamps, q_len = [], [], []
    for f in range(self.num_fields):
      r, s = self._q_live(f)
      q_rows.append(r)
      q_stamps.append(s)
      q_len.append(r.size)
    return {
        "config": np.array(json.dumps(self.config())),
        "row_key": self.row_key.copy(), "row_used": self.row_used.copy(),
        "row_last": self.row_last.copy(), "row_count": self.row_count.copy(),
        "row_stamp": self.row_stamp.copy(), "row_gen": self.row_gen.copy(),
        "free": self._free.copy(), "nfree": self._nfree.copy(),
        "queue_row": np.concatenate(q_rows), "queue_stamp": np.concatenate(q_stamps),
        "queue_len": np.asarray(q_len, np.int64),
        "sketch": self._cms.copy(), "next_halve": np.float64(self._next_halve),
        "seq": np.int64(self.seq),
    }

  @classmethod
  def from_state(cls, state: Dict[str, np.ndarray]) -> "IdMap":
    """The map :meth:`state` was taken from (it continues identically)."""
    if "config" not in state:
      raise ValueError("IdMap.from_state: the state has no 'config' entry")
    cfg = json.loads(str(np.asarray(state["config"])))
    layout = hashing.FieldLayout(tuple(cfg.pop("names")), tuple(cfg.pop("buckets")))
    m = cls(layout, **cfg)
    n = m.num_rows
    for key in ("row_key", "row_used", "row_last", "row_count", "row_stamp", "row_gen", "free"):
      value = np.asarray(state[key])
      if value.shape != (n,):
        raise ValueError(f"IdMap.from_state: {key!r} has shape {value.shape}, expected ({n},)")
    m.row_key = np.asarray(state["row_key"], np.uint64).copy()
    m.row_used = np.asarray(state["row_used"], bool).copy()
    m.row_last = np.asarray(state["row_last"], np.float64).copy()
    m.row_count = np.asarray(state["row_count"], np.int64).copy()
    m.row_stamp = np.asarray(state["row_stamp"], np.int64).copy()
    m.row_gen = np.asarray(state["row_gen"], np.int32).copy()
    m._free = np.asarray(state["free"], np.int32).copy()
    m._nfree = np.asarray(state["nfree"], np.int64).copy()
    lens = np.asarray(state["queue_len"], np.int64)
    bounds = np.concatenate([[0], np.cumsum(lens)])
    for f in range(m.num_fields):
      r = np.asarray(state["queue_row"][bounds[f]:bounds[f + 1]], np.int32)
      s = np.asarray(state["queue_stamp"][bounds[f]:bounds[f + 1]], np.int64)
      size = max(64, 2 * r.size)
      m._q_row[f] = np.zeros(size, np.int32)
      m._q_stamp[f] = np.zeros(size, np.int64)
      m._q_row[f][:r.size] = r
      m._q_stamp[f][:r.size] = s
      m._q_head[f], m._q_tail[f] = 0, r.size
    sketch = np.asarray(state["sketch"], np.uint32)
    if sketch.shape != m._cms.shape:
      raise ValueError(f"IdMap.from_state: sketch has shape {sketch.shape}, expected {m._cms.shape}")
    m._cms = sketch.copy()
    m._next_halve = float(state["next_halve"])
    m.seq = int(state["seq"])
    m._build_index()
    return m

  # ---- remapping -------------------------------------------------------------------
  def _check(self, raw_BxF, missing_BxF, where="remap"):
    raw_BxF = np.asarray(raw_BxF)
    missing_BxF = np.asarray(missing_BxF, dtype=bool)
    if raw_BxF.ndim != 2 or raw_BxF.shape[1] != self.num_fields:
      raise ValueError(f"IdMap.{where}: raw ids must be (B, {self.num_fields}) "
                       f"(fields {list(self.layout.names)}), got shape {raw_BxF.shape}")
    if missing_BxF.shape != raw_BxF.shape:
      raise ValueError(f"IdMap.{where}: missing mask {missing_BxF.shape} != raw ids {raw_BxF.shape}")
    if not (np.issubdtype(raw_BxF.dtype, np.integer)):
      raise ValueError(f"IdMap.{where}: raw ids must be integers, got dtype {raw_BxF.dtype}")
    return raw_BxF.astype(np.uint64, copy=False), missing_BxF

  def _distinct(self, raw_BxF, present_BxF, clock_B):
    """Distinct present (field, raw) pairs, sorted by (field, raw).

    Returns (field_K, raw_K, count_K, first_clock_K, last_clock_K, group of
    each present position, positions in the (F, B) flat order).
    """
    b, f = raw_BxF.shape
    raw_FxB = raw_BxF.T
    order_FxB = np.argsort(raw_FxB, axis=1)
    keep = np.take_along_axis(present_BxF.T, order_FxB, axis=1).ravel()
    pos = (order_FxB + (np.arange(f, dtype=np.int64) * b)[:, None]).ravel()[keep]
    raw = raw_FxB.ravel()[pos]
    field = (pos // b).astype(np.int32)
    if raw.size == 0:
      e = np.zeros(0, np.int64)
      return field, raw, e, e.astype(float), e.astype(float), e, pos
    start = np.empty(raw.size, bool)
    start[0] = True
    np.not_equal(raw[1:], raw[:-1], out=start[1:])
    start[1:] |= field[1:] != field[:-1]
    starts = np.flatnonzero(start)
    group = np.cumsum(start) - 1
    count = np.diff(np.append(starts, raw.size))
    clock = clock_B[pos % b]
    first = np.minimum.reduceat(clock, starts)
    last = np.maximum.reduceat(clock, starts)
    return field[starts], raw[starts], count, first, last, group, pos

  def remap(self, raw_BxF, missing_BxF, clock_B, valid_B=None) -> Dict[str, np.ndarray]:
    """Maps one batch of raw ids to rows, admitting, expiring and evicting.

    Args:
      raw_BxF: raw ids (any integer dtype, read as uint64).
      missing_BxF: True where the field is missing.
      clock_B: float clock of every row (event time or stream position).
      valid_B: False for padding rows (ignored: they read the missing rows);
        default all True.

    Returns:
      ``cat`` (B, F) int32 rows; ``unique`` (B * F,), ``inverse`` (B, F) and
      ``num_unique``, equal to what :func:`rectrain.data.batch.add_unique`
      computes from ``cat`` with ``num_rows = N`` (so the dedup needs no
      second sort); ``reset_rows`` (R,) int32 rows (re)assigned in
      this batch in ascending order, padded with N, ``reset_gen`` (R,) int32 how
      many ids each row has served (its new generation, >= 1; 0 in padding),
      ``num_reset`` int32 and ``counters`` (``COUNTER_NAMES``) int64.
    """
    raw_BxF, missing_BxF = self._check(raw_BxF, missing_BxF)
    b = raw_BxF.shape[0]
    clock_B = np.asarray(clock_B, np.float64).reshape(-1)
    valid_B = np.ones(b, bool) if valid_B is None else np.asarray(valid_B, bool).reshape(-1)
    if clock_B.shape != (b,) or valid_B.shape != (b,):
      raise ValueError(f"IdMap.remap: clock {clock_B.shape} and valid {valid_B.shape} "
                       f"must be ({b},)")
    if np.isnan(clock_B[valid_B]).any():
      raise ValueError("IdMap.remap: the clock is NaN on a real row (a stream without event "
                       "time, e.g. Criteo logs): use idmap config clock='index'")
    self.seq += 1
    seq = self.seq
    counters = dict.fromkeys(COUNTER_NAMES, 0)
    present_BxF = ~missing_BxF & valid_B[:, None]
    field, raw, count, first, last, group, pos = self._distinct(raw_BxF, present_BxF, clock_B)
    h = _field_hash(field, raw)
    now = float(clock_B[valid_B].min()) if valid_B.any() else None

    if now is not None and self._cms.size and self.sketch_halve_every > 0:
      if np.isnan(self._next_halve):
        self._next_halve = now + self.sketch_halve_every
      while now >= self._next_halve:
        self._cms >>= np.uint32(1)
        self._next_halve += self.sketch_halve_every

    # 1. Expiry: unseen for more than ttl before this batch's first clock.
    if self.ttl > 0 and now is not None:
      expired = [self._q_scan(f, None, now - self.ttl) for f in range(self.num_fields)]
      expired = np.concatenate(expired)
      counters["expired"] += expired.size
      self._release(expired)

    # 2. Lookup (and per-id expiry of ids seen again after more than ttl).
    rows = self._find(field, raw, h)
    if self.ttl > 0:
      stale = rows >= 0
      stale[stale] = first[stale] - self.row_last[rows[stale]] > self.ttl
      if stale.any():
        counters["expired"] += int(stale.sum())
        self._release(rows[stale].astype(np.int32))
        rows[stale] = -1
    found = rows >= 0
    r = rows[found]
    self.row_last[r] = np.maximum(self.row_last[r], last[found])
    self.row_count[r] += count[found]
    self.row_stamp[r] = seq

    # 3. Admission.
    new = np.flatnonzero(~found)
    counters["new_ids"] = new.size
    if self.min_count > 1:
      est = self._sketch_add(h[new], count[new])
    else:
      est = count[new]
    eligible = est >= self.min_count
    counters["rejected"] = int(new.size - eligible.sum())
    cand, cand_est = new[eligible], est[eligible]
    cap = b * self.num_fields if self.max_admit_per_batch is None else self.max_admit_per_batch
    if cand.size > cap:
      # Highest estimate first, ties by (field, raw) = by position in the sorted pairs.
      keep = np.sort(np.lexsort((cand, -cand_est))[:cap])
      cand, cand_est = cand[keep], cand_est[keep]

    # 4. Allocation (and eviction) per field; cand is sorted by field.
    new_rows = np.full(cand.size, -1, np.int64)
    if cand.size:
      cf = field[cand]
      starts = np.flatnonzero(np.concatenate([[True], cf[1:] != cf[:-1]]))
      ends = np.concatenate([starts[1:], [cand.size]])
      for s, e in zip(starts, ends):
        f = int(cf[s])
        need = e - s
        short = need - int(self._nfree[f])
        if short > 0:
          victims = (self._q_scan(f, short, None) if self.policy == "lru"
                     else self._lfu_victims(f, short, seq))
          counters["evicted"] += victims.size
          self._release(victims)
        take = min(need, int(self._nfree[f]))
        if take < need:  # full, not enough victims: the highest estimates win
          order = np.lexsort((np.arange(need), -cand_est[s:e]))[:take]
          sel = s + np.sort(order)
        else:
          sel = np.arange(s, e)
        new_rows[sel] = self._pop_free(f, take)
    admitted = new_rows >= 0
    a_idx, a_rows = cand[admitted], new_rows[admitted].astype(np.int32)
    counters["admitted"] = a_idx.size
    counters["deferred"] = int(eligible.sum()) - a_idx.size
    if a_idx.size:
      self.row_used[a_rows] = True
      self.row_key[a_rows] = raw[a_idx]
      self.row_last[a_rows] = last[a_idx]
      self.row_count[a_rows] = count[a_idx]
      self.row_stamp[a_rows] = seq
      self.row_gen[a_rows] += 1
      self._insert(a_rows, h[a_idx])
      rows[a_idx] = a_rows

    # Recency queues: every row touched in this batch, by (field, clock).
    touched = np.flatnonzero(rows >= 0)
    if touched.size:
      t_rows = rows[touched].astype(np.int32)
      t_field = field[touched]
      order = np.lexsort((t_rows, self.row_last[t_rows], t_field))
      t_rows, t_field = t_rows[order], t_field[order]
      starts = np.flatnonzero(np.concatenate([[True], t_field[1:] != t_field[:-1]]))
      ends = np.concatenate([starts[1:], [t_rows.size]])
      for s, e in zip(starts, ends):
        self._q_append(int(t_field[s]), t_rows[s:e], seq)

    # 5. Output rows.
    target = rows.copy()
    no_row = target < 0
    if self.unadmitted == "zero":
      target[no_row] = self.num_rows
    else:
      target[no_row] = self._off[field[no_row]] + (self.first_slot - 1)
    cat_FxB = np.repeat(self._off[:-1, None], b, axis=1)
    cat_FxB.reshape(-1)[pos] = target[group]
    # The batch's distinct rows (as add_unique computes them from cat), from the
    # K distinct ids instead of the B * F entries.
    fallback_F = ~present_BxF.all(axis=0)       # fields whose missing row is read
    uniq, inv = np.unique(np.concatenate([target, self._off[:-1][fallback_F]]),
                          return_inverse=True)
    inv_field = np.zeros(self.num_fields, np.int64)
    inv_field[fallback_F] = inv[target.size:]
    inverse_FxB = np.repeat(inv_field[:, None], b, axis=1)
    inverse_FxB.reshape(-1)[pos] = inv[:target.size][group]
    unique = np.full(b * self.num_fields, self.num_rows, np.int32)
    unique[:uniq.size] = uniq
    counters["lookups"] = int(pos.size)
    counters["unadmitted"] = int(count[no_row].sum())
    counters["hits"] = counters["lookups"] - counters["unadmitted"]
    counters["occupied"] = int(self.num_rows - self.num_fields * self.first_slot
                               - self._nfree.sum())
    size = max(cap, 1)
    reset_rows = np.full(size, self.num_rows, np.int32)
    reset_gen = np.zeros(size, np.int32)
    sorted_rows = np.sort(a_rows)
    reset_rows[:a_rows.size] = sorted_rows
    reset_gen[:a_rows.size] = self.row_gen[sorted_rows]
    return {"cat": np.ascontiguousarray(cat_FxB.T).astype(np.int32),
            "unique": unique, "inverse": np.ascontiguousarray(inverse_FxB.T).astype(np.int32),
            "num_unique": np.int32(uniq.size),
            "reset_rows": reset_rows, "reset_gen": reset_gen,
            "num_reset": np.int32(a_rows.size),
            "counters": np.array([counters[k] for k in COUNTER_NAMES], np.int64)}

  def remap_batch(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """:meth:`remap` of a stream batch with ``raw_ids``/``raw_missing`` keys.

    Returns a new dict: the batch with ``cat`` replaced and ``unique``,
    ``inverse``, ``num_unique`` (as :func:`rectrain.data.batch.add_unique`
    with ``num_rows = self.num_rows``), ``reset_rows``, ``reset_gen``,
    ``num_reset`` and ``idmap_counters`` added. Padding rows are those with
    ``index < 0`` (or ``weight == 0`` without ``index``).
    """
    for key in ("raw_ids", "raw_missing", self.clock):
      if key not in batch:
        hint = (" (build the stream with raw_ids=True)" if key.startswith("raw") else "")
        raise KeyError(f"IdMap.remap_batch: the batch has no {key!r} key{hint}; "
                       f"keys: {sorted(batch)}")
    valid = batch["index"] >= 0 if "index" in batch else batch["weight"] > 0
    out = self.remap(batch["raw_ids"], batch["raw_missing"], batch[self.clock], valid)
    new = dict(batch)
    for key in ("cat", "unique", "inverse", "num_unique"):
      new[key] = out[key]
    new["reset_rows"] = out["reset_rows"]
    new["reset_gen"] = out["reset_gen"]
    new["num_reset"] = out["num_reset"]
    new["idmap_counters"] = out["counters"]
    return new

  def lookup(self, raw_BxF, missing_BxF) -> np.ndarray:
    """Rows of raw ids without learning anything (evaluation): (B, F) int32.

    Admitted ids read their row; missing values and ids without a row read
    what :meth:`remap` gives them. Expiry is not applied.
    """
    raw_BxF, missing_BxF = self._check(raw_BxF, missing_BxF, "lookup")
    b = raw_BxF.shape[0]
    field_BxF = np.broadcast_to(np.arange(self.num_fields, dtype=np.int32), raw_BxF.shape)
    sel = ~missing_BxF
    f, raw = field_BxF[sel], raw_BxF[sel]
    rows = self._find(f, raw, _field_hash(f, raw))
    no_row = rows < 0
    if self.unadmitted == "zero":
      rows[no_row] = self.num_rows
    else:
      rows[no_row] = self._off[f[no_row]] + (self.first_slot - 1)
    cat = np.broadcast_to(self._off[:-1], (b, self.num_fields)).copy()
    cat[sel] = rows
    return cat.astype(np.int32)

  def occupancy(self) -> Dict[str, Any]:
    """Rows in use per field and in all, and the fraction of assignable rows."""
    assignable = np.asarray(self.layout.buckets, np.int64) - self.first_slot
    used = assignable - self._nfree
    return {"rows": int(used.sum()), "fraction": float(used.sum() / assignable.sum()),
            "per_field": {n: int(u) for n, u in zip(self.layout.names, used)}}

  def admitted_ids(self) -> Dict[str, np.ndarray]:
    """The current map: ``field`` (M,), ``raw`` (M,) uint64, ``row`` (M,), by row."""
    rows = np.flatnonzero(self.row_used)
    return {"field": self._row_field[rows].copy(), "raw": self.row_key[rows].copy(),
            "row": rows.astype(np.int32)}
