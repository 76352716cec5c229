"""Delayed feedback: the ES-DFM paper's comparison on the synthetic conversion stream.

Yang et al. (2021, "Capturing Delayed Feedback in Conversion Rate Prediction
via Elapsed-Time Sampling", AAAI), Table 2: Pre-trained, Vanilla, Oracle,
FNW, FNC (Ktena et al. 2019, RecSys), ES-DFM, and DEFER (Gu et al. 2021,
KDD), plus rectrain's multi-head delayed-conversion tower, with AUC, PR-AUC,
log loss and PCOC, mean ± std over seeds. The runner is
rectrain/train/delayed.py (``train_delayed``): seed model on
``delayed.seed_days`` of complete labels, then incremental training on the
samples the label-delay join (rectrain/data/delay_join.py) emits, each
one-hour event-time window first scored against the TRUE labels by the
current model (test-then-train).

Methods and their joins (``delayed.METHOD_JOIN``): Pre-trained (the seed
model, never updated), Oracle (every sample with its true label, at once),
Vanilla (fast emit: every sample at once as a negative, again as a positive
when it converts; no correction), FNW / FNC (fast emit with importance
weights / with the serving calibration ``p = q / (1 - q)``), ES-DFM (emit after
the elapsed-time window ``delayed.wait_s``, delayed positives again at their
conversion; weights from an auxiliary (dp, rn) model), DEFER (emit after the
wait, every sample again when its label is final), multi-head (label
snapshots at ``delayed.snapshot_s``; head k learns conversions in
``(s_{k-1}, s_k]`` once they are mature). Two ablation rows (``ABLATIONS``):
DEFER with its auxiliary model trained on the seed days only
(``delayed.aux.online=False``; by default it keeps learning from DEFER's
second emissions), and the multi-head tower with each head trained only at
the snapshot where its label matures (``delayed.multihead.train_heads=
"newest"``; by default at every later snapshot too).

Sizes: ROWS_PER_DAY = 40,000 impressions per simulated day, SEED_DAYS = 3
seed days + INC_DAYS = 3 incremental days (240,000 rows; the table covers
the 120,000 incremental impressions, 72 hourly windows); conversion delays
from the synthetic stream's default log-normal mixture (medians 10 min,
3 h, 2 days); attribution window 3 days, wait / elapsed time 15 min, hourly
windows; batch 512 (a batch spans 18 min of event time); 2^14 hash buckets
per field; DeepFM with embedding 8 and MLP 64-32, rectrain's default
optimizers (row-wise AdaGrad 0.05 on tables, Adam 1e-3 on dense
parameters); ``seed`` seeds the stream and the model. The seed phase is as
long as the attribution window so that the joined stream is stationary from
the first incremental window on: every emission that a join running forever
would make in an incremental window (a delayed positive up to 3 days late,
DEFER's second emission of every sample 3 days after it) is of an
impression inside the stream. With a shorter seed phase DEFER's stream would
lack the second emissions of real negatives for the first days, and every
correction would miss part of the late positives.

  rectrain sweep experiments/delayed_feedback            # 30 runs
  rectrain table runs/delayed_feedback --metrics auc,pr_auc,logloss,pcoc,pcoc_windows.std

Runtime and result: experiments/delayed_feedback/README.md. Smoke (seconds;
the notebook's CI run): ``--arg smoke``.
"""

from rectrain.configs import default_config, use_first_wave_defaults
from rectrain.experiment import experiment_section
from rectrain.models import default_model_config
from rectrain.train.delayed import METHODS, delayed_config_defaults

SEEDS = (0, 1, 2)
ROWS_PER_DAY = 40_000
SEED_DAYS = 3              # = the attribution window: the joined stream is stationary from
                           # the first incremental window on (module docstring)
INC_DAYS = 3
BATCH = 512
# Table labels in the ES-DFM paper's order (Table 2), then the multi-head tower.
LABELS = {"pretrained": "Pre-trained", "vanilla": "Vanilla", "oracle": "Oracle", "fnw": "FNW",
          "fnc": "FNC", "esdfm": "ES-DFM", "defer": "DEFER", "multihead": "multi-head"}
ORDER = ("pretrained", "vanilla", "oracle", "fnw", "fnc", "esdfm", "defer", "multihead")
# An ablation row (full run only): DEFER with its auxiliary (dp, rn) model trained on the seed
# days only, like ES-DFM's, instead of also online on DEFER's second emissions.
DEFER_SEED_AUX = "DEFER (aux: seed days only)"
# And the multi-head tower with each head trained once per sample, at the snapshot where its
# label matures (``delayed.multihead.train_heads="newest"``; default "mature": at every later
# snapshot too, so head k learns each sample K - k times).
MULTIHEAD_NEWEST = "multi-head (newest head only)"
ABLATIONS = {DEFER_SEED_AUX: {"delayed.method": "defer", "delayed.aux.online": False},
             MULTIHEAD_NEWEST: {"delayed.method": "multihead",
                                "delayed.multihead.train_heads": "newest"}}
SMOKE = {"rows_per_day": 4_000, "inc_days": 1, "batch": 512, "seeds": (0,)}


def sizes(arg=None) -> dict:
  """rows_per_day, seed_days, inc_days, batch and seeds of the full or the smoke run."""
  if arg == "smoke":
    return dict(SMOKE, seed_days=1)
  return {"rows_per_day": ROWS_PER_DAY, "seed_days": SEED_DAYS, "inc_days": INC_DAYS,
          "batch": BATCH, "seeds": SEEDS}


def get_config(arg=None):
  """The base config (Vanilla, DeepFM); ``arg="smoke"`` shrinks it."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"experiments/delayed_feedback: unknown argument {arg!r} (use smoke or none)")
  s = sizes(arg)
  c = use_first_wave_defaults(default_config())  # as the committed table was measured
  c.experiment = experiment_section(name="delayed_feedback")
  c.data.source = "synthetic"
  c.data.synthetic.rows_per_day = s["rows_per_day"]
  c.data.batch_size = s["batch"]
  c.data.max_rows = (s["seed_days"] + s["inc_days"]) * s["rows_per_day"]
  c.data.cat_buckets = 1 << 14
  c.model.name = "deepfm"
  c.model.embed_dim = 8
  c.model.mlp_dims = (64, 32)
  c.train.steps_per_dispatch = 4
  c.train.progress = False
  c.delayed = delayed_config_defaults()
  c.delayed.method = "vanilla"
  c.delayed.wait_s = 900.0
  c.delayed.attribution_s = 3 * 86400.0
  c.delayed.window_s = 3600.0
  c.delayed.seed_days = float(s["seed_days"])
  c.delayed.incremental_days = float(s["inc_days"])
  if arg == "smoke":
    c.data.cat_buckets = 1024
    c.model = default_model_config("lr")  # cheap to compile: the smoke run is mostly compilation
    c.train.steps_per_dispatch = 1      # one compiled step per loss: less compilation
    c.delayed.window_s = 4 * 3600.0
    c.delayed.aux.mlp_dims = ()
    c.data.synthetic.table_ranks = 4096   # smaller generator tables: faster stream set-up
    c.data.synthetic.block_rows = 4096
    c.data.synthetic.calibration_rows = 4096
  return c


def get_sweep(arg=None):
  """Every method of ``delayed.METHODS`` x seeds, then the ablations (smoke: seed 0, no ablations)."""
  assert set(ORDER) == set(METHODS), (ORDER, METHODS)
  points = []
  for seed in sizes(arg)["seeds"]:
    for method in ORDER:
      points.append({"delayed.method": method, "seed": seed, "experiment.label": LABELS[method]})
  if arg != "smoke":
    for label, overrides in ABLATIONS.items():
      for seed in sizes(arg)["seeds"]:
        points.append(dict(overrides, seed=seed, **{"experiment.label": label}))
  return points
