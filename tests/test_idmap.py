"""The collision-free id map: exactness, admission, expiry, eviction, reset, resume."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rectrain.data import hashing, idmap
from rectrain.train import idmap_reset
from rectrain.data.batch import add_unique
from rectrain.data.idmap import COUNTER_NAMES, IdMap

# ---- a plain-Python reference of the documented semantics ----------------------------


class RefMap:
  """Dict-based model of IdMap's rules (exact counts instead of the sketch)."""

  def __init__(self, caps, first_slot, min_count, ttl, policy, cap):
    self.free = [c - first_slot for c in caps]
    self.first_slot, self.min_count, self.ttl, self.policy, self.cap = (
        first_slot, min_count, ttl, policy, cap)
    self.rows = {}                        # (f, raw) -> [last, count, batch]
    self.counts = collections.Counter()   # sightings without a row
    self.seq = 0

  def _drop(self, key):
    del self.rows[key]
    self.free[key[0]] += 1

  def step(self, raw, missing, clock, valid):
    self.seq += 1
    c = dict.fromkeys(COUNTER_NAMES, 0)
    occ = collections.defaultdict(list)
    for b in range(raw.shape[0]):
      if valid[b]:
        for f in range(raw.shape[1]):
          if not missing[b, f]:
            occ[(f, int(raw[b, f]))].append(float(clock[b]))
    if self.ttl and valid.any():
      now = float(clock[valid].min())
      for k in [k for k, v in self.rows.items() if now - v[0] > self.ttl]:
        self._drop(k)
        c["expired"] += 1
      for k in [k for k in occ if k in self.rows and min(occ[k]) - self.rows[k][0] > self.ttl]:
        self._drop(k)
        c["expired"] += 1
    new = sorted(k for k in occ if k not in self.rows)
    for k in occ:
      if k in self.rows:
        v = self.rows[k]
        v[0], v[1], v[2] = max(v[0], max(occ[k])), v[1] + len(occ[k]), self.seq
    est = {}
    for k in new:
      if self.min_count > 1:
        self.counts[k] += len(occ[k])
        est[k] = self.counts[k]
      else:
        est[k] = len(occ[k])
    elig = [k for k in new if est[k] >= self.min_count]
    c["new_ids"], c["rejected"] = len(new), len(new) - len(elig)
    cand = sorted(sorted(elig, key=lambda k: (-est[k], k))[:self.cap])
    admitted = []
    for f in sorted({k[0] for k in cand}):
      cf = [k for k in cand if k[0] == f]
      short = len(cf) - self.free[f]
      if short > 0:
        pool = [k for k, v in self.rows.items() if k[0] == f and v[2] != self.seq]
        key = (lambda k: (self.rows[k][2], self.rows[k][0])) if self.policy == "lru" else (
            lambda k: (self.rows[k][1], self.rows[k][0]))
        for k in sorted(pool, key=key)[:short]:
          self._drop(k)
          c["evicted"] += 1
      take = min(len(cf), self.free[f])
      for k in sorted(cf, key=lambda k: (-est[k], k))[:take]:
        self.rows[k] = [max(occ[k]), len(occ[k]), self.seq]
        self.free[f] -= 1
        admitted.append(k)
    c["admitted"] = len(admitted)
    c["deferred"] = len(elig) - len(admitted)
    c["lookups"] = sum(len(v) for v in occ.values())
    c["hits"] = sum(len(v) for k, v in occ.items() if k in self.rows)
    c["unadmitted"] = c["lookups"] - c["hits"]
    c["occupied"] = len(self.rows)
    return c


def _stream(seed, batches, b, fields, vocab, drift, missing_rate=0.1):
  """Batches of 64-bit ids (Zipf-like, new ids over time), distinct increasing clocks."""
  rng = np.random.default_rng(seed)
  mult = np.uint64(0x9E3779B97F4A7C15)
  out = []
  for i in range(batches):
    rank = np.minimum(rng.zipf(1.3, (b, fields)), vocab) + drift * i
    with np.errstate(over="ignore"):
      raw = rank.astype(np.uint64) * mult      # spread over all 64 bits
    raw[:, 1] = raw[:, 0]                      # equal raw values in two fields
    missing = rng.random((b, fields)) < missing_rate
    clock = (i * b + np.arange(b) + rng.random(b) * 0.5).astype(np.float64)
    valid = np.ones(b, bool)
    if i == batches - 1:
      valid[-3:] = False                       # padding rows
    out.append((raw, missing, clock, valid))
  return out


CASES = [
    dict(policy="lru", min_count=1, ttl=0.0, cap=None, caps=(10, 12, 9)),
    dict(policy="lfu", min_count=1, ttl=0.0, cap=None, caps=(10, 12, 9)),
    dict(policy="lru", min_count=3, ttl=0.0, cap=None, caps=(40, 40, 40)),
    dict(policy="lru", min_count=2, ttl=60.0, cap=None, caps=(30, 30, 30)),
    dict(policy="lfu", min_count=2, ttl=45.0, cap=5, caps=(12, 10, 14)),
    dict(policy="lru", min_count=1, ttl=30.0, cap=4, caps=(8, 8, 8), unadmitted="shared"),
    dict(policy="lru", min_count=1, ttl=0.0, cap=None, caps=(6, 7, 5), unadmitted="zero"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_matches_reference_and_is_exact(case):
  case = dict(case)
  caps = case.pop("caps")
  unadmitted = case.pop("unadmitted", "missing")
  layout = hashing.FieldLayout(("A", "B", "C"), caps)
  m = IdMap(layout, min_count=case["min_count"], ttl=case["ttl"], policy=case["policy"],
            unadmitted=unadmitted, max_admit_per_batch=case["cap"], sketch_width=1 << 16)
  ref = RefMap(caps, m.first_slot, case["min_count"], case["ttl"], case["policy"],
               case["cap"] or 10 ** 9)
  off = layout.offsets
  totals = collections.Counter()
  for raw, missing, clock, valid in _stream(0, 30, 16, 3, vocab=40, drift=1):
    out = m.remap(raw, missing, clock, valid)
    want = ref.step(raw, missing, clock, valid)
    got = dict(zip(COUNTER_NAMES, out["counters"].tolist()))
    assert got == want
    totals.update(got)
    ids = m.admitted_ids()
    assert set(zip(ids["field"].tolist(), ids["raw"].tolist())) == set(ref.rows)
    cat = out["cat"]
    for b in range(raw.shape[0]):
      for f in range(3):
        r = cat[b, f]
        if not valid[b] or missing[b, f]:
          assert r == off[f]
        elif (f, int(raw[b, f])) in ref.rows:
          # Exactness: the row holds exactly this (field, id).
          assert off[f] + m.first_slot <= r < off[f + 1]
          assert m.row_key[r] == raw[b, f] and m.row_used[r]
        else:
          assert r == (m.num_rows if unadmitted == "zero" else off[f] + m.first_slot - 1)
    # The dedup keys equal add_unique's on the remapped cat.
    want_u = add_unique({"cat": cat.copy()}, m.num_rows)
    for k in ("unique", "inverse", "num_unique"):
      np.testing.assert_array_equal(out[k], want_u[k])
    # Reset rows are exactly the rows admitted in this batch.
    n = int(out["num_reset"])
    assert n == got["admitted"]
    assert np.all(out["reset_rows"][n:] == m.num_rows)
    assert np.all(m.row_used[out["reset_rows"][:n]])
    assert len(set(ids["row"].tolist())) == ids["row"].size
  # The scenario exercises what it claims to.
  if case["min_count"] > 1:
    assert totals["rejected"] > 0
  if case["ttl"]:
    assert totals["expired"] > 0
  if case["cap"]:
    assert totals["deferred"] > 0
  if sum(caps) < 60:
    assert totals["evicted"] > 0


def test_distinct_ids_never_share_a_row_under_heavy_churn():
  """Thousands of 64-bit ids through a tiny table (index rebuilds, probe clusters)."""
  layout = hashing.FieldLayout(("A", "B"), (20, 33))
  m = IdMap(layout, policy="lru")
  rng = np.random.default_rng(3)
  for i in range(200):
    raw = rng.integers(0, 2 ** 63, (8, 2), dtype=np.uint64) | np.uint64(1 << 63)
    raw[::2] = rng.integers(0, 30, (4, 2)).astype(np.uint64)   # some ids come back
    out = m.remap(raw, np.zeros_like(raw, bool), np.full(8, float(i)))
    ids = m.admitted_ids()
    assert np.unique(ids["row"]).size == ids["row"].size
    pairs = set(zip(ids["field"].tolist(), ids["raw"].tolist()))
    assert len(pairs) == ids["row"].size
    assert np.all(m.row_key[out["cat"]] == raw)      # every id reads its own row
  # Index is consistent with the rows after many deletions.
  found = m._find(ids["field"], ids["raw"], idmap._field_hash(ids["field"], ids["raw"]))
  assert np.array_equal(found, ids["row"])


def test_admission_threshold_exact_counts():
  layout = hashing.FieldLayout(("A",), (16,))
  m = IdMap(layout, min_count=3, sketch_width=1 << 12)
  seen = []
  for i, batch in enumerate([[7, 8], [7, 9], [8, 8], [7, 9]]):
    raw = np.array(batch, np.uint64)[:, None]
    out = m.remap(raw, np.zeros_like(raw, bool), np.array([2.0 * i, 2.0 * i + 1]))
    seen.append(sorted(m.admitted_ids()["raw"].tolist()))
    if i == 2:  # 8 reached 3 sightings in this batch: both occurrences use the row
      assert out["cat"][0, 0] == out["cat"][1, 0] != 0
  assert seen == [[], [], [8], [7, 8]]   # 7: 3rd sighting in batch 3; 9 only twice


def test_tiny_sketch_never_admits_late():
  """Count-min never undercounts: an id holds a row once it was truly seen min_count
  times; a tiny sketch overcounts and admits some ids earlier."""
  layout = hashing.FieldLayout(("A", "B"), (4000, 4000))
  m = IdMap(layout, min_count=4, sketch_width=16, sketch_depth=2)
  rng = np.random.default_rng(5)
  true = collections.Counter()   # sightings while the id had no row
  early = 0
  for i in range(20):
    raw = rng.integers(0, 300, (32, 2)).astype(np.uint64)
    ids = m.admitted_ids()
    had = set(zip(ids["field"].tolist(), ids["raw"].tolist()))
    for b in range(32):
      for f in range(2):
        if (f, int(raw[b, f])) not in had:
          true[(f, int(raw[b, f]))] += 1
    m.remap(raw, np.zeros_like(raw, bool), np.arange(32) + 32.0 * i)
    ids = m.admitted_ids()
    now = set(zip(ids["field"].tolist(), ids["raw"].tolist()))
    assert {k for k, c in true.items() if c >= 4} <= now
    early += len(now - had - {k for k, c in true.items() if c >= 4})
  assert early > 0


def test_expiry_by_event_time():
  layout = hashing.FieldLayout(("A",), (10,))
  m = IdMap(layout, ttl=100.0)
  one = lambda x, t: m.remap(np.array([[x]], np.uint64), np.zeros((1, 1), bool), np.array([t]))
  one(1, 0.0)
  one(2, 50.0)
  r1 = one(1, 100.0)["cat"][0, 0]     # 100 - 0 = 100, not > ttl: kept
  assert dict(zip(COUNTER_NAMES, one(3, 150.5)["counters"]))["expired"] == 1  # 2 was seen at 50
  assert sorted(m.admitted_ids()["raw"].tolist()) == [1, 3]
  out = one(1, 200.5)                 # 200.5 - 100 > 100: expired, re-admitted, reset
  c = dict(zip(COUNTER_NAMES, out["counters"]))
  assert c["expired"] == 1 and c["admitted"] == 1
  assert out["reset_rows"][0] == out["cat"][0, 0]
  assert m.row_gen[out["cat"][0, 0]] >= 1
  assert r1 != 0


def test_clock_index_and_nan_time():
  layout = hashing.FieldLayout(("A",), (10,))
  m = IdMap(layout, ttl=5.0, clock="index")
  batch = {"raw_ids": np.array([[4], [5]], np.uint64), "raw_missing": np.zeros((2, 1), bool),
           "index": np.array([0, 1]), "time": np.full(2, np.nan), "cat": np.zeros((2, 1), np.int32)}
  out = m.remap_batch(batch)
  assert out["cat"][:, 0].tolist() == [1, 2]
  with pytest.raises(ValueError, match="clock='index'"):
    IdMap(layout, clock="time").remap_batch(batch)
  with pytest.raises(KeyError, match="raw_ids=True"):
    m.remap_batch({"cat": batch["cat"], "index": batch["index"]})


def test_eviction_order_lru_and_lfu():
  layout = hashing.FieldLayout(("A",), (4,))  # 3 assignable rows
  def run(policy):
    m = IdMap(layout, policy=policy)
    t = [0.0]
    def feed(*xs):
      raw = np.array(xs, np.uint64)[:, None]
      clock = t[0] + np.arange(len(xs), dtype=float)
      t[0] += len(xs)
      return m.remap(raw, np.zeros_like(raw, bool), clock)
    feed(10, 10, 10, 11, 12)   # counts 10:3, 11:1, 12:1; recency 10 < 11 < 12
    feed(11)                   # 11: count 2, most recent
    feed(13)                   # full: one victim
    first = set(range(10, 14)) - set(m.admitted_ids()["raw"].tolist())
    feed(14, 15)               # two victims
    second = set(range(10, 16)) - set(m.admitted_ids()["raw"].tolist()) - first
    return first, second
  assert run("lru") == ({10}, {12, 11})
  assert run("lfu") == ({12}, {13, 11})


def test_reset_rows_writes_fresh_rows_and_state():
  from rectrain.models.tables import TableSpec, init_tables
  from rectrain.optim import get_sparse_optimizer
  specs = [TableSpec("linear", 1, 0.0), TableSpec("embedding", 4, 0.1),
           TableSpec("uni", 3, 0.2, init="uniform")]
  n = 12
  tables = init_tables(jax.random.PRNGKey(0), specs, n)
  tables = {k: v + 1.0 for k, v in tables.items()}     # "learned" values
  opts = {"linear": get_sparse_optimizer("ftrl", learning_rate=0.1, initial_accumulator_value=0.3),
          "embedding": get_sparse_optimizer("rowwise_adagrad", learning_rate=0.1,
                                            initial_accumulator_value=0.1),
          "uni": get_sparse_optimizer("adam", learning_rate=0.1)}
  state = {k: jax.tree.map(lambda x: x + 5.0, opts[k].init(v)) for k, v in tables.items()}
  key = jax.random.PRNGKey(9)
  rows = jnp.array([3, 7, 7 * 0 + n, n], jnp.int32)
  gen = jnp.array([1, 2, 0, 0], jnp.int32)
  fn = jax.jit(lambda t, s, r, g: idmap_reset.reset_rows(t, s, r, g, specs, opts, key))
  new_t, new_s = fn(tables, state, rows, gen)
  untouched = np.array([i for i in range(n) if i not in (3, 7)])
  for i, spec in enumerate(specs):
    t = np.asarray(new_t[spec.name])
    np.testing.assert_array_equal(t[untouched], np.asarray(tables[spec.name])[untouched])
    for r, g in ((3, 1), (7, 2)):
      k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, i), r), g)
      if spec.init_scale == 0:
        want = np.zeros(spec.dim)
      elif spec.init == "uniform":
        want = np.asarray(jax.random.uniform(k, (spec.dim,), jnp.float32, -0.2, 0.2))
      else:
        want = 0.1 * np.asarray(jax.random.truncated_normal(k, -2.0, 2.0, (spec.dim,)))
      np.testing.assert_allclose(t[r], want, rtol=1e-6)
      assert np.all(np.abs(t[r]) <= 2 * spec.init_scale)
    fresh = opts[spec.name].init(jnp.zeros((n, spec.dim)))
    for got, init, old in zip(jax.tree.leaves(new_s[spec.name]), jax.tree.leaves(fresh),
                              jax.tree.leaves(state[spec.name])):
      if np.ndim(got) == 0:   # a global leaf (the optimizer's step count) is kept
        np.testing.assert_array_equal(got, old)
        continue
      np.testing.assert_array_equal(np.asarray(got)[[3, 7]], np.asarray(init)[[3, 7]])
      np.testing.assert_array_equal(np.asarray(got)[untouched], np.asarray(old)[untouched])
  # A reused row does not repeat its previous initial value.
  assert not np.allclose(np.asarray(new_t["embedding"])[3],
                         np.asarray(fn(tables, state, jnp.array([3, n, n, n]),
                                       jnp.array([2, 0, 0, 0]))[0]["embedding"])[3])


def test_train_step_with_row_reset_resets_before_the_step():
  """Under lax.scan, a row reassigned in batch 2 is fresh when batch 2 reads it."""
  from rectrain.models import build_model, default_model_config, init_tables
  from rectrain.optim import get_optimizer, get_sparse_optimizer
  from rectrain.train.step import init_train_state, make_multi_step, make_train_step
  layout = hashing.FieldLayout(("A", "B"), (3, 3))      # one... two assignable rows each
  m = IdMap(layout, max_admit_per_batch=4)
  n = m.num_rows
  cfg = default_model_config("lr")
  model = build_model(cfg)
  specs = model.table_specs()
  tables = {k: v + 0.5 for k, v in init_tables(jax.random.PRNGKey(0), specs, n).items()}
  dense = model.init(jax.random.PRNGKey(1), {s.name: jnp.zeros((2, 2, s.dim)) for s in specs},
                     jnp.zeros((2, 0)))
  dense_opt = get_optimizer("sgd", learning_rate=0.0)
  opts = {s.name: get_sparse_optimizer("rowwise_adagrad", learning_rate=0.1,
                                       initial_accumulator_value=0.1) for s in specs}
  state = init_train_state(dense, tables, dense_opt, opts)
  step = make_train_step(model, dense_opt, opts, train_tables=False)
  key = jax.random.PRNGKey(4)
  multi = make_multi_step(idmap_reset.with_row_reset(step, specs, opts, key), donate=False)
  batches = []
  for i, ids in enumerate([[[1, 1], [2, 2]], [[3, 3], [3, 3]]]):   # batch 2 evicts id 1 or 2
    raw = np.array(ids, np.uint64)
    b = {"raw_ids": raw, "raw_missing": np.zeros((2, 2), bool), "time": np.array([i, i + .5]),
         "index": np.array([2 * i, 2 * i + 1]), "label": np.ones(2, np.float32),
         "weight": np.ones(2, np.float32), "dense": np.zeros((2, 0), np.float32)}
    batches.append(m.remap_batch(b))
  keys = ("label", "weight", "dense", "unique", "inverse", "reset_rows", "reset_gen")
  stacked = {k: np.stack([b[k] for b in batches]) for k in keys}
  new_state, out = multi(state, stacked)
  reused = batches[1]["reset_rows"][:int(batches[1]["num_reset"])]
  assert reused.size == 2 and set(reused.tolist()) <= set(batches[0]["reset_rows"].tolist())
  want_t, want_s = idmap_reset.reset_rows(state.tables, state.table_opt_state, stacked["reset_rows"][1],
                                    stacked["reset_gen"][1], specs, opts, key)
  for name in new_state.tables:   # tables frozen: the rows hold their fresh values
    np.testing.assert_allclose(np.asarray(new_state.tables[name])[reused],
                               np.asarray(want_t[name])[reused])
  # Batch 2's prediction used the fresh rows: logit = bias + sum of fresh linear rows.
  lin = np.asarray(want_t["linear"])[batches[1]["cat"]].sum(axis=(1, 2))
  bias = float(jax.tree.leaves(new_state.dense_params)[0].reshape(-1)[0])
  np.testing.assert_allclose(np.asarray(out.preds_B[1]), 1 / (1 + np.exp(-(lin + bias))),
                             rtol=1e-5)


def test_state_roundtrip_resume_equality(tmp_path):
  layout = hashing.FieldLayout(("A", "B", "C"), (9, 11, 8))
  kw = dict(min_count=2, ttl=40.0, policy="lfu", max_admit_per_batch=6, sketch_width=256,
            sketch_halve_every=100.0)
  data = _stream(7, 24, 16, 3, vocab=30, drift=1)
  full = IdMap(layout, **kw)
  outs_full = [full.remap(*d) for d in data]
  part = IdMap(layout, **kw)
  for d in data[:11]:
    part.remap(*d)
  idmap.save_state(str(tmp_path / "idmap.npz"), part.state())
  resumed = IdMap.from_state(idmap.load_state(str(tmp_path / "idmap.npz")))
  outs_resumed = [resumed.remap(*d) for d in data[11:]]
  for a, b in zip(outs_full[11:], outs_resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  sa, sb = full.state(), resumed.state()
  assert sa.keys() == sb.keys()
  for k in sa:
    np.testing.assert_array_equal(sa[k], sb[k])
  assert sum(int(o["counters"][COUNTER_NAMES.index("evicted")]) for o in outs_full) > 0


def test_lookup_is_read_only_and_matches_remap():
  layout = hashing.FieldLayout(("A", "B"), (6, 6))
  m = IdMap(layout, min_count=2, unadmitted="shared", sketch_width=1 << 10)
  raw = np.array([[1, 2], [1, 3], [4, 2]], np.uint64)
  missing = np.array([[False, False], [False, True], [False, False]])
  out = m.remap(raw, missing, np.arange(3.0))
  before = m.state()
  np.testing.assert_array_equal(m.lookup(raw, missing), out["cat"])
  for k, v in m.state().items():
    np.testing.assert_array_equal(v, before[k])
  assert out["cat"].tolist() == [[2, 8], [2, 6], [1, 8]]   # 4 unadmitted -> shared row 1


def test_collision_counter_and_window_summary():
  raw = np.array([[1, 1], [2, 5], [3, 5]], np.uint64)
  missing = np.zeros((3, 2), bool)
  cat = np.array([[1, 10], [1, 11], [2, 11]])
  cc = idmap.CollisionCounter()
  cc.update(raw, missing, cat)
  r = cc.result()
  # A1, A2 share row 1; A3 row 2; B1 row 10, B5 (twice) row 11: 2 of 5 distinct ids collide.
  assert (r["distinct_ids"], r["rows"], r["colliding_ids"], r["collision_rate"]) == (5, 4, 2, 0.4)
  counters = np.array([[10, 8, 2, 3, 1, 2, 0, 0, 0, 5], [6, 6, 0, 0, 0, 0, 0, 0, 0, 5]])
  s = idmap.window_summary(counters)
  assert s["lookups"] == 16 and s["occupied"] == 5 and s["hit_rate"] == 14 / 16
  assert s["admit_rate"] == 1 / 3 and s["batches"] == 2


def test_streams_yield_raw_ids_consistent_with_hashing(tmp_path):
  from rectrain.data.criteo import CriteoStream
  from rectrain.data.synthetic import SyntheticStream, write_tsv
  kw = dict(batch_size=64, cat_buckets=1 << 10, num_rows_total=200, rows_per_day=10_000,
            table_ranks=512, block_rows=128, calibration_rows=256)
  for int_mode in ("log1p", "categorical"):
    plain = list(SyntheticStream(int_mode=int_mode, **kw))
    raw = list(SyntheticStream(int_mode=int_mode, raw_ids=True, **kw))
    layout = SyntheticStream(int_mode=int_mode, **kw).layout
    for a, b in zip(plain, raw):
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])   # existing keys unchanged
      real = b["index"] >= 0
      bucket = hashing.hash_fields_to_buckets(b["raw_ids"].T, range(layout.num_fields),
                                              layout.buckets).T
      want = np.where(b["raw_missing"], 0, bucket) + layout.offsets[:-1]
      np.testing.assert_array_equal(want[real], b["cat"][real])
  path = str(tmp_path / "s.tsv")
  write_tsv(path, 200, rows_per_day=10_000, table_ranks=512, block_rows=128, calibration_rows=256)
  crit = list(CriteoStream(path, batch_size=64, cat_buckets=1 << 10, raw_ids=True, workers=0))
  synth = list(SyntheticStream(raw_ids=True, **kw))
  for a, b in zip(crit, synth):
    for k in ("cat", "raw_ids", "raw_missing"):
      np.testing.assert_array_equal(a[k], b[k])
  assert "raw_ids" not in next(iter(CriteoStream(path, batch_size=64, workers=0)))


def test_config_and_bad_input_errors():
  layout = hashing.FieldLayout(("A", "B"), (5, 5))
  cfg = idmap.idmap_config_defaults()
  assert idmap.from_config(cfg, layout, batch_size=8).layout == layout
  cfg.capacity = 6
  assert idmap.from_config(cfg, layout, batch_size=8).layout.buckets == (6, 6)
  cfg.field_capacity = (7, 9)
  m = idmap.from_config(cfg, layout, batch_size=8)
  assert m.layout.buckets == (7, 9) and m.max_admit_per_batch == 16
  cfg.field_capacity = (7,)
  with pytest.raises(ValueError, match="field_capacity"):
    idmap.from_config(cfg, layout, 8)
  cfg.unknown_key = 1
  with pytest.raises(ValueError, match="unknown_key"):
    idmap.from_config(cfg, layout, 8)
  with pytest.raises(ValueError, match="policy"):
    IdMap(layout, policy="fifo")
  with pytest.raises(ValueError, match="sketch_width"):
    IdMap(layout, sketch_width=1000)
  with pytest.raises(ValueError, match="need more than 2 rows"):
    IdMap(hashing.FieldLayout(("A",), (2,)), unadmitted="shared")
  with pytest.raises(ValueError, match=r"\(B, 2\)"):
    m.remap(np.zeros((3, 3), np.uint64), np.zeros((3, 3), bool), np.zeros(3))


def test_state_snapshots_match_the_checkpointed_batch():
  layout = hashing.FieldLayout(("A", "B", "C"), (9, 11, 8))
  data = _stream(2, 10, 16, 3, vocab=30, drift=1)
  m = IdMap(layout, ttl=20.0)
  keys = ("raw_ids", "raw_missing", "time", "index")

  def groups():
    for i in range(0, 10, 3):                  # groups of 3, 3, 3, 1 batches
      batches = [m.remap_batch(dict(zip(keys, (raw, miss, clock, np.where(valid, 0, -1)))))
                 for raw, miss, clock, valid in data[i:i + 3]]
      yield len(batches), {"cat": np.stack([b["cat"] for b in batches])}

  seen = [(n, g.get("_idmap_state")) for n, g in idmap.with_state_snapshots(groups(), m, 4, 0)]
  snap = [i for i, (_, st) in enumerate(seen) if st is not None]
  assert snap == [1, 2]                         # after batches 6 (crosses 4) and 9 (crosses 8)
  ref = IdMap(layout, ttl=20.0)
  for d in data[:6]:
    ref.remap(*d)
  for k, v in ref.state().items():
    np.testing.assert_array_equal(seen[1][1][k], v)
