"""The six benchmark models on the built-in synthetic stream, with the Bayes ceiling.

The synthetic stream (rectrain/data/synthetic.py) draws every label from a known
probability, so the "Bayes ceiling" row (experiment.oracle: the true
probabilities scored by the same metrics) is the best any model can do on the
very same rows; the table shows how far each model is from it.

One pass, progressive validation (predict each batch, then learn from it).
``seed`` seeds both the stream and the model initialisation, so the spread over
seeds covers both.

Commands (see README.md for the measured runtime and the table):

  rectrain sweep experiments/synthetic_stream --drop-checkpoints
  rectrain table runs/synthetic_stream
  rectrain plot runs/synthetic_stream --out runs/synthetic_stream/curves.png

Smoke (seconds; the tests run it): ``--arg smoke`` (2 models, 1 seed, 16,384 rows).
"""

from rectrain.configs import default_config, use_first_wave_defaults
from rectrain.experiment import STANDARD_MODELS, experiment_section, standard_model

SEEDS = (0, 1, 2)


def get_config(arg=None):
  """The base config; ``arg="smoke"`` shrinks the run."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"experiments/synthetic_stream: unknown argument {arg!r} (use smoke or none)")
  c = use_first_wave_defaults(default_config())  # as the committed table was measured
  c.experiment = experiment_section(name="synthetic_stream")
  c.data.source = "synthetic"
  c.data.max_rows = 1_000_000        # one synthetic day (data.synthetic.rows_per_day)
  c.data.batch_size = 4096
  c.data.cat_buckets = 1 << 18
  c.metrics.window_rows = 50_000
  c.metrics.time_windows = "hour,day"
  if arg == "smoke":
    c.data.max_rows = 16_384
    c.data.batch_size = 1024
    c.data.cat_buckets = 4096
    c.train.steps_per_dispatch = 4   # 16 batches = 4 equal groups: one compilation
    c.metrics.window_rows = 4096
    c.metrics.time_windows = "hour"
    c.train.progress = False
  return c


def get_sweep(arg=None):
  """Models x seeds, plus the Bayes ceiling per seed (smoke: LR and DeepFM, seed 0)."""
  smoke = arg == "smoke"
  models = ("lr", "deepfm") if smoke else STANDARD_MODELS
  seeds = (0,) if smoke else SEEDS
  points = [dict(standard_model(m, small=smoke), seed=s) for m in models for s in seeds]
  points += [{"experiment.oracle": True, "experiment.label": "Bayes ceiling", "seed": s}
             for s in seeds]
  return points
