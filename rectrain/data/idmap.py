"""A collision-free id -> row map for a stream that never stops bringing new ids.

A hashed table (rectrain/data/hashing.py) sends unrelated ids to shared rows.
:class:`IdMap` instead gives every *admitted* raw 64-bit id its own row of the
fused embedding table, as the streaming systems of industry do (Monolith's
collisionless cuckoo hash table, Liu et al. 2022; DeepRec's EmbeddingVariable;
TorchRec's managed-collision modules): an id gets a row once it has been seen
``min_count`` times, keeps it while it is seen, and loses it when it has not
been seen for ``ttl`` (clock units) or when its field is full and the eviction
policy picks it. A freed row's embedding and optimizer state are reset before
the row serves another id.

Shape legend: B batch rows, F categorical fields, K distinct present ids of a
batch, N rows of the fused table, R padded rows reset per batch, D sketch
depth, W row width.

Design (why host-side NumPy). The map runs in the host input pipeline, like
TorchRec's managed-collision remapping, between the stream and the dedup of
:func:`rectrain.data.batch.add_unique`: it rewrites ``cat`` (B, F) from raw ids
to rows and lists the rows (re)assigned in the batch, whose table rows and
optimizer state the jitted step resets (:func:`rectrain.train.idmap_reset.with_row_reset`, static shape
R) before it gathers. The device step is unchanged and keeps its O(U * W)
cost; the map costs the host a few vectorised NumPy passes over the batch's
ids (no per-id Python) and runs in the prefetch thread, off the device's
critical path. A jittable device map would have to probe a hash table with
data-dependent loops inside the step and serialise admission and eviction
with the training step; the host version is simpler, exact and fast enough
(see benchmarks/idmap_throughput.py).

Layout. Fields keep the fused-table layout of rectrain/data/hashing.py, with
a per-field capacity: field ``f`` owns rows ``offsets[f] .. offsets[f+1]-1``.
Row ``offsets[f]`` is the field's missing value (as in hashing.py); with
``unadmitted="shared"`` row ``offsets[f] + 1`` is a learned row shared by all
ids of the field that are not admitted; the other rows are assigned to ids.

Per batch (``b`` counts batches, ``now`` = the smallest clock of the batch's
real rows; ``clock`` is the event time, or the stream position with
``clock="index"``):

1. Expiry. Every admitted id with ``now - last_seen > ttl`` is freed, and so
   is an id of the batch whose first clock in the batch exceeds its
   ``last_seen`` by more than ``ttl`` (it was not seen for ``ttl``, so it must
   earn a row again). Freed rows are scanned in recency order (a lazily
   deleted queue per field), O(freed) per batch; for a stream whose clock does
   not decrease (a time-ordered stream) expiry is exact at batch granularity,
   for a lightly shuffled one an unseen id can be freed late (never early).
2. Lookup. ``last_seen = max(last_seen, latest clock in the batch)`` and
   ``count += occurrences`` for every id that has a row.
3. Admission. An id without a row is admitted when its count reaches
   ``min_count``. Counts are a count-min sketch (Cormode and Muthukrishnan
   2005) with conservative update (Estan and Varghese 2002): ``D`` rows of
   ``W`` uint32 counters, ``est(x) = min_d C[d, h_d(x)]``, updated by
   ``C[d, h_d(x)] = max(C[d, h_d(x)], est(x) + c)``. It never undercounts, so
   an id is admitted no later than its ``min_count``-th sighting; a hash
   collision can admit it earlier (rarely, for a wide sketch). Memory is fixed
   (``4 D W`` bytes) however many ids the stream brings. With
   ``sketch_halve_every`` all counters are halved every that many clock units
   (TinyLFU's reset, Einziger et al. 2017) so that old sightings fade. An id is
   admitted in the batch where its count reaches ``min_count`` and all its
   occurrences in that batch use its new row.
4. Allocation and eviction. A field's free rows are used first; when the
   field is full, rows of ids not seen in this batch are evicted: ``"lru"``
   the least recently seen (queue order: batch, then clock), ``"lfu"`` the
   smallest ``count`` (occurrences since admission), ties by older
   ``last_seen``, then lower row. At most ``max_admit_per_batch`` ids are
   admitted per batch (the static R of the reset), highest sketch count
   first, ties by (field, raw id); the others are *deferred* and try again
   when seen next.
5. Output. ``cat`` holds the row of every admitted id, the field's missing
   row for a missing value or a padding row (``index < 0``), and for an id that
   is not admitted: the missing row (``"missing"``), the shared row
   (``"shared"``) or ``N``, the padding id whose gather reads zeros and whose
   update is dropped (``"zero"``).

Exactness: two distinct (field, raw id) pairs never hold the same row at the
same time, whatever the ids (the hash index compares the full 64-bit id and
the field).

Statistics (per batch, summed per window by :func:`window_summary`): see
``COUNTER_NAMES``. :class:`CollisionCounter` measures the collision rate of the
hashed baseline on the same raw ids.

State: :meth:`IdMap.state` returns plain NumPy arrays (and a JSON config
string), :meth:`IdMap.from_state` rebuilds an equal map; :func:`save_state` /
:func:`load_state` write them as one ``.npz``. A map restored from a state
continues exactly like the map that was saved.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, Iterator, Sequence

import ml_collections
import numpy as np

from rectrain.data import hashing
from rectrain.config_sections import idmap_config_defaults  # noqa: F401 - defined there (no jax)

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

_EMPTY = np.int32(-1)
_TOMB = np.int32(-2)
_INDEX_SALT = np.uint64(0x6A09E667F3BCC909)
_SKETCH_SALT = np.uint64(0xBB67AE8584CAA73B)
_U32_MAX = np.int64(2 ** 32 - 1)


def _check_choice(name: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f"idmap config {name}={value!r}: must be one of {list(choices)}")


def _field_hash(field_F: np.ndarray, raw: np.ndarray) -> np.ndarray:
  """A per-field salted 64-bit hash of raw ids (a bijection of raw for a fixed field)."""
  salts = hashing.splitmix64(np.arange(1, 257, dtype=np.uint64) ^ _INDEX_SALT)
  return hashing.splitmix64(raw ^ salts[field_F])


class IdMap:
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

  # ---- the hash index: open addressing, linear probing, tombstones ---------------
  def _build_index(self):
    size = 16
    while size < 2 * self.num_rows:
      size *= 2
    self._slots = np.full(size, _EMPTY, np.int32)
    self._mask = np.uint64(size - 1)
    self._row_slot = np.full(self.num_rows, -1, np.int64)
    self._nlive = 0
    self._ntomb = 0
    rows = np.flatnonzero(self.row_used).astype(np.int32)
    if rows.size:
      self._insert(rows, _field_hash(self._row_field[rows], self.row_key[rows]))

  def _find(self, field_K, raw_K, h_K) -> np.ndarray:
    """Rows of (field, raw) pairs; -1 where absent."""
    out = np.full(raw_K.shape[0], -1, np.int64)
    active = np.arange(raw_K.shape[0])
    pos = (h_K & self._mask).astype(np.int64)
    size = self._slots.shape[0]
    while active.size:
      r = self._slots[pos].astype(np.int64)
      safe = np.maximum(r, 0)
      match = (r >= 0) & (self.row_key[safe] == raw_K[active]) & (
          self._row_field[safe] == field_K[active])
      out[active[match]] = r[match]
      more = (r != _EMPTY) & ~match
      active, pos = active[more], (pos[more] + 1) & (size - 1)
    return out

  def _insert(self, rows, h):
    """Adds rows (whose keys are absent from the index and distinct) to the index."""
    if self._nlive + self._ntomb + rows.size > 0.75 * self._slots.shape[0]:
      keep = np.flatnonzero(self.row_used)
      keep = keep[~np.isin(keep, rows)]
      self._slots.fill(_EMPTY)
      self._nlive = self._ntomb = 0
      rows = np.concatenate([keep.astype(np.int32), rows])
      h = np.concatenate([_field_hash(self._row_field[keep], self.row_key[keep]), h])
    size = self._slots.shape[0]
    pos = (h & self._mask).astype(np.int64)
    active = np.arange(rows.size)
    while active.size:
      p = pos[active]
      free = self._slots[p] < 0
      cand, cand_pos = active[free], p[free]
      self._ntomb -= int(np.count_nonzero(self._slots[np.unique(cand_pos)] == _TOMB))
      # Several candidates may claim one slot: exactly one write lands, and
      # reading the slot back tells each candidate whether it won.
      self._slots[cand_pos] = rows[cand]
      won = self._slots[cand_pos] == rows[cand]
      winners, won_pos = cand[won], cand_pos[won]
      self._row_slot[rows[winners]] = won_pos
      self._nlive += winners.size
      placed = np.zeros(rows.size, bool)
      placed[winners] = True
      active = active[~placed[active]]
      pos[active] = (pos[active] + 1) & (size - 1)

  def _unindex(self, rows):
    self._slots[self._row_slot[rows]] = _TOMB
    self._row_slot[rows] = -1
    self._nlive -= rows.size
    self._ntomb += rows.size

  # ---- free rows and recency queues ------------------------------------------------
  def _release(self, rows):
    """Frees ``rows`` (used rows): out of the index, back on their field's stack."""
    if rows.size == 0:
      return
    rows = np.sort(rows).astype(np.int32)
    self._unindex(rows)
    self.row_used[rows] = False
    fields = self._row_field[rows]
    starts = np.flatnonzero(np.concatenate([[True], fields[1:] != fields[:-1]]))
    ends = np.concatenate([starts[1:], [rows.size]])
    for s, e in zip(starts, ends):
      f = int(fields[s])
      top = self._off[f] + self._nfree[f]
      self._free[top:top + e - s] = rows[s:e][::-1]   # pops give ascending rows
      self._nfree[f] += e - s

  def _pop_free(self, f: int, k: int) -> np.ndarray:
    top = self._off[f] + self._nfree[f]
    rows = self._free[top - k:top][::-1].copy()
    self._nfree[f] -= k
    return rows

  def _live(self, r, s):
    return self.row_used[r] & (self.row_stamp[r] == s)

  def _q_live(self, f):
    h, t = self._q_head[f], self._q_tail[f]
    r, s = self._q_row[f][h:t], self._q_stamp[f][h:t]
    live = self._live(r, s)
    return r[live].copy(), s[live].copy()

  def _q_append(self, f: int, rows, stamp: int):
    n = rows.size
    if self._q_tail[f] + n > self._q_row[f].shape[0]:
      r, s = self._q_live(f)
      size = max(64, 2 * (r.size + n))
      self._q_row[f] = np.zeros(size, np.int32)
      self._q_stamp[f] = np.zeros(size, np.int64)
      self._q_row[f][:r.size] = r
      self._q_stamp[f][:r.size] = s
      self._q_head[f], self._q_tail[f] = 0, r.size
    t = self._q_tail[f]
    self._q_row[f][t:t + n] = rows
    self._q_stamp[f][t:t + n] = stamp
    self._q_tail[f] = t + n

  def _q_scan(self, f: int, k: int | None, limit: float | None) -> np.ndarray:
    """Pops live entries from the head of field f's queue.

    With ``k``: the first ``k`` live entries (LRU victims). With ``limit``:
    live entries while their ``row_last < limit`` (expired ids).
    """
    out = []
    need = k
    head, tail = int(self._q_head[f]), int(self._q_tail[f])
    chunk = max(256, 2 * (k or 0))
    while head < tail and (need is None or need > 0):
      hi = min(head + chunk, tail)
      r, s = self._q_row[f][head:hi], self._q_stamp[f][head:hi]
      live = self._live(r, s)
      if need is not None:
        idx = np.flatnonzero(live)
        if idx.size >= need:
          out.append(r[idx[:need]])
          head += int(idx[need - 1]) + 1
          need = 0
          break
        out.append(r[idx])
        need -= idx.size
      else:
        old = self.row_last[r] < limit
        stop = np.flatnonzero(live & ~old)
        end = int(stop[0]) if stop.size else r.size
        out.append(r[:end][live[:end]])
        if stop.size:
          head += end
          break
      head = hi
      chunk *= 2
    self._q_head[f] = head
    return np.concatenate(out).astype(np.int32) if out else np.zeros(0, np.int32)

  def _lfu_victims(self, f: int, k: int, seq: int) -> np.ndarray:
    """The k rows of field f not touched in batch ``seq`` with the smallest
    (count, last_seen, row)."""
    lo = self._off[f] + self.first_slot
    hi = self._off[f + 1]
    cand = lo + np.flatnonzero(self.row_used[lo:hi] & (self.row_stamp[lo:hi] != seq))
    if cand.size <= k:
      return cand.astype(np.int32)
    c = self.row_count[cand]
    kth = np.partition(c, k - 1)[k - 1]
    lower = cand[c < kth]
    ties = cand[c == kth]
    order = np.lexsort((ties, self.row_last[ties]))
    return np.concatenate([lower, ties[order[:k - lower.size]]]).astype(np.int32)

  # ---- the sketch ----------------------------------------------------------------
  def _sketch_add(self, h_K, count_K) -> np.ndarray:
    """Conservative count-min update; returns the new estimates (>= true counts)."""
    mask = np.uint64(self.sketch_width - 1)
    pos_DxK = (hashing.splitmix64(h_K[None, :] ^ self._sketch_salts[:, None]) & mask).astype(np.int64)
    cur_DxK = np.take_along_axis(self._cms, pos_DxK, axis=1)
    est_K = np.minimum(cur_DxK.min(axis=0).astype(np.int64) + count_K, _U32_MAX)
    for d in range(self.sketch_depth):
      np.maximum.at(self._cms[d], pos_DxK[d], est_K.astype(np.uint32))
    return est_K

  def _sketch_estimate(self, h_K) -> np.ndarray:
    mask = np.uint64(self.sketch_width - 1)
    pos_DxK = (hashing.splitmix64(h_K[None, :] ^ self._sketch_salts[:, None]) & mask).astype(np.int64)
    return np.take_along_axis(self._cms, pos_DxK, axis=1).min(axis=0).astype(np.int64)

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


# ---- config, pipeline stages and statistics ------------------------------------------
def capacity_layout(capacity, names: Sequence[str], default: hashing.FieldLayout
                    ) -> hashing.FieldLayout:
  """The idmap layout: ``default``'s field order with ``capacity`` rows per field."""
  if isinstance(capacity, (int, np.integer)):
    if int(capacity) == 0:
      return default
    return hashing.FieldLayout(tuple(names), (int(capacity),) * len(names))
  caps = tuple(int(c) for c in capacity)
  if len(caps) != len(names):
    raise ValueError(f"expected {len(names)} capacities (fields {list(names)}), got {len(caps)}")
  return hashing.FieldLayout(tuple(names), caps)


def from_config(config: ml_collections.ConfigDict, layout: hashing.FieldLayout,
                batch_size: int) -> IdMap:
  """The :class:`IdMap` of an ``idmap`` config section for a stream's ``layout``."""
  known = set(idmap_config_defaults().keys())
  unknown = sorted(set(config.keys()) - known)
  if unknown:
    raise ValueError(f"idmap config: unknown key(s) {unknown}; known: {sorted(known)}")
  cap = int(config.max_admit_per_batch)
  capacity = tuple(config.field_capacity) if len(config.field_capacity) else config.capacity
  where = "field_capacity" if len(config.field_capacity) else "capacity"
  try:
    idmap_layout = capacity_layout(capacity, layout.names, layout)
  except ValueError as e:
    raise ValueError(f"idmap config {where}: {e}") from None
  return IdMap(
      idmap_layout, min_count=config.min_count,
      ttl=config.ttl, policy=config.policy, unadmitted=config.unadmitted, clock=config.clock,
      max_admit_per_batch=cap if cap > 0 else int(batch_size) * layout.num_fields,
      sketch_width=config.sketch_width, sketch_depth=config.sketch_depth,
      sketch_halve_every=config.sketch_halve_every)


def with_idmap(batches: Iterable[Dict[str, np.ndarray]], idmap: IdMap) -> Iterator[Dict[str, np.ndarray]]:
  """:meth:`IdMap.remap_batch` of every batch: a pipeline stage that replaces
  ``with_unique`` (its batches already carry ``unique``/``inverse``)."""
  for batch in batches:
    yield idmap.remap_batch(batch)


def with_state_snapshots(groups: Iterable[tuple], idmap: IdMap, every: int,
                         batches_done: int = 0) -> Iterator[tuple]:
  """Attaches ``idmap.state()`` to the groups after which the loop checkpoints.

  ``groups`` yields ``(n, group)`` (n batches stacked, remapped by ``idmap``
  in this same producer thread); with a checkpoint every ``every`` batches
  (the loop's rule: after the group that crosses a multiple of ``every``),
  such a group gets ``group["_idmap_state"]``, the map's state right after
  its last batch, however far the producer runs ahead of the device.
  """
  done = int(batches_done)
  for n, group in groups:
    done += n
    if (every and done // every != (done - n) // every) or "_fault" in group:
      group["_idmap_state"] = idmap.state()  # "_fault": the loop checkpoints at an input fault
    yield n, group


def save_state(path: str, state: Dict[str, np.ndarray]) -> None:
  """Writes :meth:`IdMap.state` to ``path`` (.npz), atomically (temp file + rename)."""
  tmp = path + ".tmp.npz"
  np.savez(tmp, **state)
  os.replace(tmp, path)


def load_state(path: str) -> Dict[str, np.ndarray]:
  """Reads a state written by :func:`save_state`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"idmap state not found: {path}")
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def window_summary(counters_NxC: np.ndarray) -> Dict[str, float]:
  """Per-window statistics from the per-batch ``counters`` of N batches.

  Sums every counter but ``occupied`` (its last value), and adds
  ``hit_rate = hits / lookups`` and ``admit_rate = admitted / new_ids``.
  """
  c = np.asarray(counters_NxC, np.int64).reshape(-1, len(COUNTER_NAMES))
  out = {k: int(c[:, i].sum()) for i, k in enumerate(COUNTER_NAMES) if k != "occupied"}
  out["batches"] = int(c.shape[0])
  out["occupied"] = int(c[-1, COUNTER_NAMES.index("occupied")]) if c.shape[0] else 0
  out["hit_rate"] = out["hits"] / out["lookups"] if out["lookups"] else float("nan")
  out["admit_rate"] = out["admitted"] / out["new_ids"] if out["new_ids"] else float("nan")
  return out


class CollisionCounter:
  """Collision rate of a hashed table over a window of batches.

  ``collision_rate`` = the fraction of the distinct present (field, raw id)
  pairs of the window whose row also serves another distinct pair of the
  window (0 for a collision-free map). ``update`` collects pairs; ``result``
  reports and, with ``reset``, starts a new window.
  """

  def __init__(self):
    self._field, self._raw, self._row = [], [], []

  def update(self, raw_BxF, missing_BxF, cat_BxF, valid_B=None):
    raw_BxF = np.asarray(raw_BxF).astype(np.uint64, copy=False)
    present = ~np.asarray(missing_BxF, bool)
    if valid_B is not None:
      present &= np.asarray(valid_B, bool)[:, None]
    field = np.broadcast_to(np.arange(raw_BxF.shape[1], dtype=np.int64), raw_BxF.shape)
    self._field.append(field[present])
    self._raw.append(raw_BxF[present])
    self._row.append(np.asarray(cat_BxF, np.int64)[present])

  def result(self, reset: bool = True) -> Dict[str, float]:
    field = np.concatenate(self._field) if self._field else np.zeros(0, np.int64)
    raw = np.concatenate(self._raw) if self._raw else np.zeros(0, np.uint64)
    row = np.concatenate(self._row) if self._row else np.zeros(0, np.int64)
    if reset:
      self._field, self._raw, self._row = [], [], []
    if raw.size == 0:
      return {"distinct_ids": 0, "rows": 0, "colliding_ids": 0, "collision_rate": float("nan")}
    order = np.lexsort((raw, field))
    f, x, r = field[order], raw[order], row[order]
    first = np.concatenate([[True], (f[1:] != f[:-1]) | (x[1:] != x[:-1])])
    id_rows = r[first]
    rows, per_row = np.unique(id_rows, return_counts=True)
    shared = per_row[np.searchsorted(rows, id_rows)] > 1
    n = int(first.sum())
    return {"distinct_ids": n, "rows": int(rows.size), "colliding_ids": int(shared.sum()),
            "collision_rate": float(shared.sum() / n)}


# The batch keys of the rows (re)assigned in a batch (remap_batch); the device side
# that resets them is a step transform: rectrain/train/idmap_reset.py.
RESET_KEYS = ("reset_rows", "reset_gen")
