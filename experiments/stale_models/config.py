"""Stale models: freshness, serving sync interval, old model vs new architecture.

Three questions about a model that is not the latest one, on the synthetic
stream (rectrain/data/synthetic.py: effects drift, 5 % of the ids are
replaced by new ones every day, the vocabulary grows), all with progressive
validation (each batch is scored by the SERVED model before the live model
learns from it; rectrain/train/serving.py):

1. Freshness (He et al. 2014, "Practical Lessons from Predicting Clicks on
   Ads at Facebook", Fig. 2: NE rises with each day of delay). A model
   trained on the first FREEZE_DAY days and then frozen
   (``serving.freeze_after_s``) is scored on the following days against the
   model that keeps learning (``live``). LR (FTRL) and DeepFM.
2. Serving sync interval (Monolith, Liu et al. 2022: sparse parameters synced
   within minutes, dense ones far less often). The served copy is refreshed
   every N seconds of event time, tables and dense parameters separately
   (``serving.sync_tables_s`` / ``serving.sync_dense_s``); DeepFM on the first
   SYNC_DAYS days; the reference is ``live: DeepFM`` (the same rows).
3. Old model vs new architecture. ``live: FM (old)`` trains from the start
   and checkpoints after NEW_DAY days; a new architecture (DeepFM) starts
   there (on day NEW_DAY + 1, counting from 1) either from scratch or
   warm-started from the old checkpoint with the embedding tables (and their
   optimizer state) transferred (``train.warm_start.parts=embeddings``). Does
   the new one catch up with the old one, and after how many days? ``live:
   DeepFM`` (DeepFM trained from the start) is where the new architecture
   would be had it always been there.

Sizes: ROWS_PER_DAY = 98,304 rows per simulated day (batch 1,024, so a batch
spans 15 minutes of event time: sync intervals are resolved to 15 minutes),
8 days (786,432 rows); 2^15 hash buckets per field; LR with FTRL
(rectrain.experiment.LR_FTRL); FM and DeepFM with embedding dim 8, DeepFM's
MLP 64-32; rectrain's default optimizers otherwise (row-wise AdaGrad 0.05 on
tables, Adam 1e-3 on dense). ``seed`` seeds both the stream and the model.

The warm-started points read the old run's checkpoint through a
``train.warm_start.path`` starting with ``@`` (a sibling run directory of the
sweep), so run the sweep without ``--drop-checkpoints`` (or drop the
checkpoints afterwards, as the notebook does):

  rectrain sweep experiments/stale_models
  rectrain table runs/stale_models --metrics auc,ne,pcoc,rows,wall_time_sec

Smoke (seconds; the notebook's CI run): ``--arg smoke``.
"""

from rectrain.configs import default_config, use_first_wave_defaults
from rectrain.experiment import LR_FTRL, experiment_section, point_name

SEEDS = (0, 1, 2)
DAY_S = 86_400.0
ROWS_PER_DAY = 98_304
BATCH = 1024
DAYS = 8                 # stream length of the freshness and old-vs-new points
FREEZE_DAY = 2           # the frozen model learns the first 2 days
SYNC_DAYS = 4            # stream length of the sync-interval points
NEW_DAY = 3              # the new architecture starts after 3 days (old model: 3 days)
# Served-copy sync intervals (seconds of event time): (tables, dense).
SYNC_POINTS = {
    "both 1h": (3600.0, 3600.0),
    "both 6h": (6 * 3600.0, 6 * 3600.0),
    "both 1d": (DAY_S, DAY_S),
    "tables 1d": (DAY_S, 0.0),     # stale tables, live dense parameters
    "dense 1d": (0.0, DAY_S),      # live tables, stale dense parameters
}
SMOKE = {"rows_per_day": 4096, "batch": 512, "days": 4, "freeze_day": 1, "sync_days": 2,
         "new_day": 2}


def sizes(arg=None) -> dict:
  """rows_per_day, batch, days, freeze_day, sync_days, new_day of the full or smoke run."""
  if arg == "smoke":
    return dict(SMOKE)
  return {"rows_per_day": ROWS_PER_DAY, "batch": BATCH, "days": DAYS, "freeze_day": FREEZE_DAY,
          "sync_days": SYNC_DAYS, "new_day": NEW_DAY}


def get_config(arg=None):
  """The base config (DeepFM, live, the whole 8-day stream); ``arg="smoke"`` shrinks it."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"experiments/stale_models: unknown argument {arg!r} (use smoke or none)")
  s = sizes(arg)
  c = use_first_wave_defaults(default_config())  # as the committed table was measured
  c.experiment = experiment_section(name="stale_models")
  c.data.source = "synthetic"
  c.data.synthetic.rows_per_day = s["rows_per_day"]
  c.data.batch_size = s["batch"]
  c.data.max_rows = s["days"] * s["rows_per_day"]
  c.data.cat_buckets = 1 << 15
  c.model.name = "deepfm"
  c.model.embed_dim = 8
  c.model.mlp_dims = (64, 32)
  c.train.steps_per_dispatch = 8     # divides the batches of a day: days end on a dispatch
  c.train.progress = False
  c.metrics.window_rows = 0           # event-time windows only
  c.metrics.time_windows = "hour,day"
  if arg == "smoke":
    c.data.cat_buckets = 1024
    c.model.mlp_dims = (16,)
    c.train.steps_per_dispatch = 4
    c.data.synthetic.table_ranks = 4096   # smaller generator tables: faster stream set-up
    c.data.synthetic.block_rows = 4096
    c.data.synthetic.calibration_rows = 4096
  return c


def _model(name: str, smoke: bool) -> dict:
  if name == "lr":
    return {"model.name": "lr", "optim.tables.linear": dict(LR_FTRL)}
  if name == "fm":
    return {"model.name": "fm", "model.embed_dim": 8}
  if name == "deepfm":
    return {"model.name": "deepfm", "model.embed_dim": 8,
            "model.mlp_dims": (16,) if smoke else (64, 32)}
  raise ValueError(f"experiments/stale_models: unknown model {name!r}")


def old_checkpoint(arg=None) -> str:
  """``train.warm_start.path`` of the old model's checkpoint at the new model's start day.

  ``@`` = a sibling run directory of the sweep, ``{seed}`` = the run's seed
  (both resolved by rectrain.train.loop.train_stream), so the warm-started
  points of every seed share one config (one row of the result table).
  """
  s = sizes(arg)
  batches = s["new_day"] * s["rows_per_day"] // s["batch"]
  run = point_name({"experiment.label": "live: FM (old)"})
  return f"@{run}_seed{{seed}}/checkpoints/{batches:012d}"


def get_sweep(arg=None):
  """The points (see the module docstring); smoke: seed 0, DeepFM and FM only, 2 sync points."""
  smoke = arg == "smoke"
  s = sizes(arg)
  rpd = s["rows_per_day"]
  seeds = (0,) if smoke else SEEDS
  points = []
  for seed in seeds:
    for name, label in ((("deepfm", "DeepFM"),) if smoke else (("lr", "LR"), ("deepfm", "DeepFM"))):
      points.append(dict(_model(name, smoke), seed=seed, **{"experiment.label": f"live: {label}"}))
      points.append(dict(_model(name, smoke), seed=seed,
                         **{"serving.freeze_after_s": s["freeze_day"] * DAY_S,
                            "experiment.label": f"frozen: {label}"}))
    for name in (("both 6h", "tables 1d") if smoke else tuple(SYNC_POINTS)):
      tables_s, dense_s = SYNC_POINTS[name]
      points.append(dict(_model("deepfm", smoke), seed=seed,
                         **{"data.max_rows": s["sync_days"] * rpd,
                            "serving.sync_tables_s": tables_s, "serving.sync_dense_s": dense_s,
                            "experiment.label": f"sync {name}"}))
    # The old model keeps a checkpoint at the new model's start day.
    points.append(dict(_model("fm", smoke), seed=seed,
                       **{"train.checkpoint_every": s["new_day"] * rpd // s["batch"],
                          "train.keep_checkpoints": s["days"] // s["new_day"] + 1,  # all of them
                          "experiment.label": "live: FM (old)"}))
    new = {"data.start_row": s["new_day"] * rpd, "data.max_rows": (s["days"] - s["new_day"]) * rpd}
    points.append(dict(_model("deepfm", smoke), seed=seed, **new,
                       **{"experiment.label": "new: DeepFM from scratch"}))
    points.append(dict(_model("deepfm", smoke), seed=seed, **new,
                       **{"train.warm_start.path": old_checkpoint(arg),
                          "train.warm_start.parts": "embeddings",
                          "experiment.label": "new: DeepFM warm (old embeddings)"}))
  return points
