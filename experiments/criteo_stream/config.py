"""The chronological Criteo protocol: train.txt streamed once, progressive validation.

The Criteo Kaggle (Display Advertising Challenge) train.txt holds 45,840,617
rows from 7 days in time order. Each batch is scored before the model learns
from it; AUC / log loss / NE / PCOC are reported overall and per "day". The
file has no timestamps, so a day is 1/7 of the rows: experiment.num_windows = 7
sets metrics.window_rows = ceil(data.max_rows / 7) = 6,548,660 (days 1-6;
day 7 holds the 6,548,657 rows left).

Commands (see README.md):

  rectrain sweep experiments/criteo_stream --set data.path=/data/criteo/train.txt --drop-checkpoints
  rectrain table runs/criteo_stream
  rectrain table runs/criteo_stream --windows rows --metrics auc,ne

From a Hugging Face dataset with the columns label, I1..I13, C1..C26 in the
original row order: ``--set data.source=hf --set data.path=<name or files>``.
Streaming a prefix: ``--set data.max_rows=N`` (the 7 windows then split N rows).

Smoke (``--arg smoke``): the same protocol on 16,384 rows of the synthetic
stream, LR and DLRM, seed 0; the tests run it.
"""

from rectrain.configs import default_config, use_first_wave_defaults
from rectrain.experiment import STANDARD_MODELS, experiment_section, standard_model

CRITEO_KAGGLE_TRAIN_ROWS = 45_840_617
SEEDS = (0, 1, 2)


def get_config(arg=None):
  """The base config; ``arg="smoke"`` runs the protocol on a small synthetic stream."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"experiments/criteo_stream: unknown argument {arg!r} (use smoke or none)")
  c = use_first_wave_defaults(default_config())  # as the committed table was measured
  c.experiment = experiment_section(name="criteo_stream", num_windows=7)
  c.data.source = "criteo"
  c.data.path = ""                   # --set data.path=.../train.txt (required)
  c.data.max_rows = CRITEO_KAGGLE_TRAIN_ROWS
  c.data.batch_size = 4096
  c.data.cat_buckets = 1 << 20       # hashed buckets per categorical field
  c.data.shuffle_buffer = 0          # keep time order
  c.metrics.time_windows = ""        # no timestamps in the data
  c.train.checkpoint_every = 2000    # batches (~8.2M rows): resumable
  if arg == "smoke":
    c.data.source = "synthetic"
    c.data.max_rows = 16_384
    c.data.batch_size = 1024
    c.data.cat_buckets = 4096
    c.train.steps_per_dispatch = 4
    c.train.checkpoint_every = 0
    c.train.progress = False
  return c


def get_sweep(arg=None):
  """The six models x three seeds (smoke: LR and DLRM, seed 0)."""
  smoke = arg == "smoke"
  models = ("lr", "dlrm") if smoke else STANDARD_MODELS
  seeds = (0,) if smoke else SEEDS
  return [dict(standard_model(m, small=smoke), seed=s) for m in models for s in seeds]
