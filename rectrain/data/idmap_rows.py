"""The row bookkeeping of :class:`rectrain.data.idmap_core.IdMap`.

:class:`_RowBook` holds the methods on the map's arrays that do not decide
policy: the hash index (open addressing, linear probing, tombstones) from
(field, raw id) to row, the per-field stacks of free rows, the lazily deleted
recency queues (LRU victims and ttl expiry), the LFU victim choice and the
count-min sketch with conservative update. :class:`IdMap` sets the arrays in
its constructor and inherits these methods; the algorithm they serve is
described in :mod:`rectrain.data.idmap`.

Shape legend: K distinct present ids of a batch, D sketch depth.
"""

from __future__ import annotations

import numpy as np

from rectrain.data import hashing

_EMPTY = np.int32(-1)
_TOMB = np.int32(-2)
_INDEX_SALT = np.uint64(0x6A09E667F3BCC909)
_SKETCH_SALT = np.uint64(0xBB67AE8584CAA73B)
_U32_MAX = np.int64(2 ** 32 - 1)


def _field_hash(field_F: np.ndarray, raw: np.ndarray) -> np.ndarray:
  """A per-field salted 64-bit hash of raw ids (a bijection of raw for a fixed field)."""
  salts = hashing.splitmix64(np.arange(1, 257, dtype=np.uint64) ^ _INDEX_SALT)
  return hashing.splitmix64(raw ^ salts[field_F])


class _RowBook:
  """Index, free rows, recency queues and sketch of an :class:`IdMap` (a mixin:
  the arrays it works on are set by ``IdMap.__init__`` and ``_build_index``)."""

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
