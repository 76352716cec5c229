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

Where things live (this module re-exports them):

* :mod:`rectrain.data.idmap_core`: :class:`IdMap` (admission, expiry,
  eviction, remapping, config and state), ``COUNTER_NAMES``, ``POLICIES``,
  ``UNADMITTED``, ``CLOCKS``.
* :mod:`rectrain.data.idmap_rows`: its row bookkeeping (hash index, free rows,
  recency queues, count-min sketch) and ``_field_hash``.
* :mod:`rectrain.data.idmap_stages`: :func:`capacity_layout`,
  :func:`from_config`, the pipeline stages :func:`with_idmap` and
  :func:`with_state_snapshots`, :func:`save_state` / :func:`load_state`,
  :func:`window_summary`, :class:`CollisionCounter` and ``RESET_KEYS``.
"""

from rectrain.config_sections import idmap_config_defaults  # defined there (no jax)
from rectrain.data.idmap_core import CLOCKS, COUNTER_NAMES, POLICIES, UNADMITTED, IdMap
from rectrain.data.idmap_rows import _field_hash
from rectrain.data.idmap_stages import (
    RESET_KEYS, CollisionCounter, capacity_layout, from_config, load_state, save_state,
    window_summary, with_idmap, with_state_snapshots)

# The re-exports (the private one too: tests import it from here).
__all__ = [
    "CLOCKS", "COUNTER_NAMES", "CollisionCounter", "IdMap", "POLICIES", "RESET_KEYS",
    "UNADMITTED", "_field_hash", "capacity_layout", "from_config", "idmap_config_defaults",
    "load_state", "save_state", "window_summary", "with_idmap", "with_state_snapshots",
]
