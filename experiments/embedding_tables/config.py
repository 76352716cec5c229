"""Hashed embedding tables against the collision-free id map, at equal memory.

A hashed table (rectrain/data/hashing.py) sends every raw id of a field to one
of ``data.cat_buckets`` rows, so unrelated ids share rows (feature hashing,
Weinberger et al. 2009). The id map (rectrain/data/idmap.py, ``idmap.enabled``)
gives every admitted id its own row of a table of the same shape (Monolith's
collisionless table, Liu et al. 2022): an id gets a row at its ``min_count``-th
sighting (count-min sketch), keeps it while it is seen, loses it after ``ttl``
seconds unseen or when its field is full (LRU), and a reused row starts fresh
(embedding and optimizer state reset in the step). The synthetic stream knows
the raw ids, so both see exactly the same data.

Base: FM (embedding dim 8, + its linear table), row-wise AdaGrad 0.05 on the
tables, Adam 1e-3 on the dense part (rectrain's defaults), one pass with
progressive validation over 200,000 rows of the drifting synthetic stream
squeezed into 2 simulated days (``rows_per_day = 100,000``: effects drift,
5 % of the frequent ids churn per day, new ids appear); batches of 4,096;
row windows of 20,480 rows (5 batches). ``seed`` seeds both the stream and the model.

Points (the label says the table and its rows per field); seeds 0, 1, 2 for
the tables, seeds 0, 1 for the min_count / ttl variants (the time budget):

* ``hashed 2^k``   hashed tables with 2^12, 2^14, 2^15, 2^16 buckets per field.
* ``id map 2^k``   the id map with 2^12, 2^14, 2^16 rows per field (min_count 1,
                   no ttl): the same table memory as ``hashed 2^k``; its host-side
                   state (``idmap_state_bytes``) comes on top, so ``hashed 2^15``
                   is the hashed table at about the same total memory as
                   ``id map 2^14``.
* ``..., min_count m (shared row)``  admission after m = 2 or 4 sightings
                   (2^14 rows); until then an id reads its field's learned row
                   for not-admitted ids (``idmap.unadmitted = "shared"``);
                   ``(missing row)``: it reads the field's missing-value row.
* ``..., ttl T h``  ids unseen for T = 0.5 or 2 simulated hours (about 2,100 or
                   8,300 rows) lose their row (2^14 rows; 2 h also with 2^16).
* ``static world: ...``  the id map 2^14 without and with ttl 0.5 h in a world
                   that does not drift (``data.synthetic.drift.strength = 0``):
                   does expiry help because the world drifts, or for another reason?

The map admits at most ``idmap.max_admit_per_batch = 16,384`` ids per batch
(the static size of the row reset; after the first batches the stream brings
fewer new ids per batch than that), and its count-min sketch has 4 x 2^18
counters (4 MiB).

Commands (see README.md for the measured runtime and the table):

  rectrain sweep experiments/embedding_tables --drop-checkpoints
  rectrain table runs/embedding_tables --metrics auc,logloss,ne,rows_per_sec,table_bytes,idmap_state_bytes,idmap_hit_rate

The notebook notebooks/embedding_tables.ipynb runs the same sweep and draws it.
Smoke (seconds; the notebook test runs it): ``--arg smoke``.
"""

from rectrain.configs import default_config, use_first_wave_defaults
from rectrain.experiment import experiment_section
from rectrain.models import default_model_config

SEEDS = (0, 1, 2)
VARIANT_SEEDS = (0, 1)   # min_count / ttl points (the time budget)
HASHED_LOG2 = (12, 14, 15, 16)
MAP_LOG2 = (12, 14, 16)
MIN_COUNTS = (2, 4)
TTLS_S = (1800.0, 7200.0)   # 30 min and 2 h of simulated (event) time
SMOKE_LOG2 = 8


def get_config(arg=None):
  """The base config; ``arg="smoke"`` shrinks the run."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"experiments/embedding_tables: unknown argument {arg!r} (use smoke or none)")
  c = use_first_wave_defaults(default_config())  # as the committed table was measured
  c.experiment = experiment_section(name="embedding_tables")
  c.data.source = "synthetic"
  c.data.max_rows = 200_000
  c.data.batch_size = 4096
  c.data.cat_buckets = 1 << 14
  c.data.synthetic.rows_per_day = 100_000
  c.model = default_model_config("fm")
  c.model.embed_dim = 8
  c.train.steps_per_dispatch = 8
  c.train.progress = False
  c.metrics.window_rows = 20_480     # 5 batches: the map's windows line up with the row windows
  c.metrics.time_windows = "day"
  c.idmap.max_admit_per_batch = 16_384
  c.idmap.sketch_width = 1 << 18
  if arg == "smoke":
    c.data.max_rows = 4096
    c.data.batch_size = 512
    c.data.cat_buckets = 1 << SMOKE_LOG2
    c.data.synthetic.rows_per_day = 2048   # 2 "days" in 4,096 rows
    c.train.steps_per_dispatch = 4
    c.metrics.window_rows = 1024
    c.idmap.max_admit_per_batch = 2048
    c.idmap.sketch_width = 1 << 12
    c.train.progress = False
  return c


def hashed(log2: int) -> dict:
  """Overrides of a hashed table with 2^log2 buckets per field."""
  return {"data.cat_buckets": 1 << log2, "experiment.label": f"hashed 2^{log2}"}


def id_map(log2: int, min_count: int = 1, ttl: float = 0.0, unadmitted: str = "missing") -> dict:
  """Overrides of the id map with 2^log2 rows per field (same table shape as ``hashed``)."""
  label = f"id map 2^{log2}"
  if min_count > 1:
    label += f", min_count {min_count} ({unadmitted} row)"
  if ttl:
    label += f", ttl {ttl / 3600:g} h"
  return {"data.cat_buckets": 1 << log2, "idmap.enabled": True, "idmap.min_count": min_count,
          "idmap.ttl": float(ttl), "idmap.unadmitted": unadmitted, "experiment.label": label}


def static(point: dict) -> dict:
  """The same point in a world that does not drift (no effect drift, churn or new ids)."""
  return dict(point, **{"data.synthetic.drift.strength": 0.0,
                        "experiment.label": "static world: " + point["experiment.label"]})


def get_sweep(arg=None):
  """Tables x seeds 0-2, min_count / ttl variants x seeds 0-1 (smoke: 2^8 rows, 3 points, seed 0)."""
  if arg == "smoke":
    s = SMOKE_LOG2
    points = [hashed(s), id_map(s), id_map(s, min_count=2, ttl=1800.0, unadmitted="shared")]
    return [dict(p, seed=0) for p in points]
  main = [hashed(k) for k in HASHED_LOG2] + [id_map(k) for k in MAP_LOG2]
  variants = [id_map(14, min_count=m, unadmitted="shared") for m in MIN_COUNTS]
  variants += [id_map(14, min_count=MIN_COUNTS[0], unadmitted="missing")]
  variants += [id_map(14, ttl=t) for t in TTLS_S] + [id_map(16, ttl=TTLS_S[-1])]
  variants += [static(id_map(14)), static(id_map(14, ttl=TTLS_S[0]))]
  return ([dict(p, seed=s) for p in main for s in SEEDS]
          + [dict(p, seed=s) for p in variants for s in VARIANT_SEEDS])
