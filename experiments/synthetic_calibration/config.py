"""Calibration of the synthetic world's drift to a published freshness loss.

He et al. 2014 ("Practical Lessons from Predicting Clicks on Ads at Facebook",
section 4.1, Fig. 7) train a model on one day and score it on later days: its
normalised entropy rises steadily with the delay between training and serving,
by about 1 % at a delay of 6 days. The same protocol here: a model learns the
first FREEZE_DAYS days of the synthetic stream, is frozen
(``serving.freeze_after_s``) and is scored on the following days (progressive
validation: the served copy scores every batch; the live copy's learning does
not reach it). The freshness loss at delay d is

    NE(day FREEZE_DAYS + 1 + d) / NE(day FREEZE_DAYS + 1) - 1

of the frozen model, paired by seed (the same model on the same world, so a
static world gives 0 up to noise). ``drift.strength`` scales every drift rate
of the generator (effect walk, id churn, vocabulary growth) and is swept;
``fit.py`` interpolates the strength at which LR's loss at delay 6 is 1 %
(the ``calibrated`` preset of rectrain/data/synthetic_config.py) and checks
the preset itself (the ``preset: calibrated`` points).

Sizes: 98,304 rows per simulated day (as experiments/stale_models), batch
1,024, 9 days (884,736 rows), 2^15 hash buckets per field; LR and DeepFM
with rectrain's tuned defaults (rectrain.configs.MODEL_DEFAULTS); seeds 0, 1,
2 (world and model).

  rectrain sweep experiments/synthetic_calibration --drop-checkpoints
  python experiments/synthetic_calibration/fit.py runs/synthetic_calibration

Smoke (seconds; the tests run it): ``--arg smoke``.
"""

from rectrain.configs import default_config
from rectrain.experiment import experiment_section

SEEDS = (0, 1, 2)
DAY_S = 86_400.0
ROWS_PER_DAY = 98_304
BATCH = 1024
FREEZE_DAYS = 2
DELAYS = 6                       # days scored after the freeze: delays 0 .. DELAYS
STRENGTHS = (0.0, 0.025, 0.05, 0.1, 0.2, 1.0)
MODELS = ("lr", "deepfm")
SMOKE = {"rows_per_day": 4096, "batch": 512, "delays": 2, "strengths": (0.0, 1.0),
         "models": ("lr",), "seeds": (0,)}


def sizes(arg=None) -> dict:
  """rows_per_day, batch, delays, strengths, models, seeds of the full or smoke run."""
  if arg == "smoke":
    return dict(SMOKE)
  return {"rows_per_day": ROWS_PER_DAY, "batch": BATCH, "delays": DELAYS,
          "strengths": STRENGTHS, "models": MODELS, "seeds": SEEDS}


def get_config(arg=None):
  """The base config (LR, frozen after FREEZE_DAYS days); ``arg="smoke"`` shrinks it."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"experiments/synthetic_calibration: unknown argument {arg!r} "
                     "(use smoke or none)")
  s = sizes(arg)
  c = default_config()
  c.experiment = experiment_section(name="synthetic_calibration")
  c.data.source = "synthetic"
  c.data.synthetic.rows_per_day = s["rows_per_day"]
  c.data.batch_size = s["batch"]
  c.data.max_rows = (FREEZE_DAYS + 1 + s["delays"]) * s["rows_per_day"]
  c.data.cat_buckets = 1 << 15
  c.serving.freeze_after_s = FREEZE_DAYS * DAY_S
  c.train.steps_per_dispatch = 8     # divides the batches of a day: days end on a dispatch
  c.train.progress = False
  c.metrics.window_rows = 0          # event-time windows only
  c.metrics.time_windows = "day"
  if arg == "smoke":
    c.data.cat_buckets = 1024
    c.train.steps_per_dispatch = 4
    c.data.synthetic.table_ranks = 4096   # smaller generator tables: faster stream set-up
    c.data.synthetic.block_rows = 4096
    c.data.synthetic.calibration_rows = 4096
  return c


def model_overrides(name: str) -> dict:
  """The model's overrides: its name (its tuned defaults follow, rectrain.configs)."""
  if name not in ("lr", "deepfm"):
    raise ValueError(f"experiments/synthetic_calibration: unknown model {name!r}")
  return {"model.name": name}


def label(model: str, strength) -> str:
  """The table row of a point: ``LR, strength 0.1`` or ``LR, preset calibrated``."""
  return f"{model.upper() if model == 'lr' else 'DeepFM'}, " + (
      f"strength {strength:g}" if not isinstance(strength, str) else f"preset {strength}")


def get_sweep(arg=None):
  """Models x drift strengths x seeds, and the calibrated preset per model and seed."""
  s = sizes(arg)
  points = []
  for seed in s["seeds"]:
    for model in s["models"]:
      for strength in s["strengths"]:
        points.append(dict(model_overrides(model), seed=seed,
                           **{"data.synthetic.drift.strength": float(strength),
                              "experiment.label": label(model, float(strength))}))
      points.append(dict(model_overrides(model), seed=seed,
                         **{"data.synthetic.preset": "calibrated",
                            "experiment.label": label(model, "calibrated")}))
  return points
