"""The conventional offline Criteo protocol: a 7:2:1 random split, one epoch, test metrics.

For comparison with published offline numbers (BARS / FuxiCTR Criteo_x1, see
README.md): the rows of the Criteo Kaggle train.txt are split at random into
train / valid / test in the ratio 7:2:1 by a hash of the row index
(rectrain/data/split.py, split seed 0); the models train on the train split
(rectrain.train.loop.train_offline, ``offline.epochs`` = 1, shuffled through a
bounded buffer) and are scored once, after the last epoch, on the test split.
The valid split is held out untouched (for tuning). Embedding dimension 10 as
in BARS. ``seed`` seeds the model initialisation and the shuffle, not the split.

The split of the first N source rows is sized exactly:
``data.max_rows = count_split(N, "train")`` and
``offline.eval_data.max_rows = count_split(N, "test")``, so train and test
are disjoint and, with valid, cover exactly those N rows. N is set by the
argument, not by ``--set`` (``data.max_rows``, ``data.split_*`` are derived).

Arguments (``--arg``; comma separated, e.g. ``synthetic,rows=200000``):

  (none)       the real Criteo train.txt, all 45,840,617 rows
               (``--set data.path=/data/criteo/train.txt``).
  rows=N       only the first N rows of the file (or of the synthetic stream).
  sample       the real 4,222-line Criteo sample in tests/data (exercises the
               real parsing path; far too small for a meaningful AUC).
  synthetic    the built-in synthetic stream, 500,000 source rows.
  smoke        the synthetic stream, 16,384 rows, LR and DeepFM, seed 0 (seconds).

Commands (see README.md for runtimes and tables):

  rectrain sweep experiments/criteo_offline --set data.path=/data/criteo/train.txt --drop-checkpoints
  rectrain sweep experiments/criteo_offline --arg sample
  rectrain sweep experiments/criteo_offline --arg synthetic
  rectrain table runs/criteo_offline_synthetic --metrics auc,logloss,ne,pcoc,wall_time_sec,param_count
"""

import os

import ml_collections

from rectrain.configs import default_config, use_first_wave_defaults
from rectrain.data.split import split_counts
from rectrain.experiment import STANDARD_MODELS, experiment_section, standard_model

CRITEO_KAGGLE_TRAIN_ROWS = 45_840_617
SAMPLE_PATH = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data",
    "criteo_dac_head4222.tsv"))
SAMPLE_ROWS = 4222
SYNTHETIC_ROWS = 500_000
SMOKE_ROWS = 16_384
EMBED_DIM = 10                 # BARS Criteo_x1
SPLIT_RATIOS = (7, 2, 1)
SPLIT_SEED = 0
SEEDS = (0, 1, 2)
_MODES = ("criteo", "sample", "synthetic", "smoke")


def parse_arg(arg):
  """``(mode, source_rows)`` from the ``--arg`` string (see the module docstring)."""
  mode, rows = "criteo", None
  for token in [t.strip() for t in str(arg or "").split(",") if t.strip()]:
    key, eq, value = token.partition("=")
    if eq and key == "rows":
      try:
        rows = int(value.replace("_", ""))
      except ValueError:
        raise ValueError(f"experiments/criteo_offline: argument {token!r}: rows must be "
                         "an integer") from None
      if rows < 1:
        raise ValueError(f"experiments/criteo_offline: argument {token!r}: rows must be >= 1")
    elif not eq and token in _MODES:
      mode = token
    else:
      raise ValueError(f"experiments/criteo_offline: unknown argument {token!r} (use "
                       f"{', '.join(_MODES)} and/or rows=N)")
  default_rows = {"criteo": CRITEO_KAGGLE_TRAIN_ROWS, "sample": SAMPLE_ROWS,
                  "synthetic": SYNTHETIC_ROWS, "smoke": SMOKE_ROWS}[mode]
  if mode == "sample" and rows is not None and rows > SAMPLE_ROWS:
    raise ValueError(f"experiments/criteo_offline: the sample has {SAMPLE_ROWS} rows, "
                     f"got rows={rows}")
  return mode, rows or default_rows


def get_config(arg=None):
  """The base config of the protocol on the source the argument names."""
  mode, source_rows = parse_arg(arg)
  sizes = split_counts(source_rows, SPLIT_RATIOS, SPLIT_SEED)
  c = use_first_wave_defaults(default_config())  # as the committed table was measured
  c.experiment = experiment_section(name="criteo_offline")
  c.data.source = "criteo"
  c.data.path = ""                       # --set data.path=.../train.txt (required)
  c.data.batch_size = 4096               # as BARS
  c.data.cat_buckets = 1 << 20           # hashed buckets per categorical field
  c.data.split = "train"
  c.data.split_ratios = SPLIT_RATIOS
  c.data.split_seed = SPLIT_SEED
  c.data.max_rows = sizes["train"]       # rows of the train split among source_rows
  c.data.shuffle_buffer = 1 << 21        # shuffles the train split's rows (~0.4 GB)
  c.offline.epochs = 1
  c.offline.evals_per_epoch = 1          # test metrics once, after the epoch
  c.offline.between_epochs = "none"
  c.offline.eval_data = ml_collections.ConfigDict(
      {"split": "test", "max_rows": sizes["test"], "start_row": 0, "shuffle_buffer": 0})
  c.metrics.time_windows = ""
  c.train.progress = True
  if mode == "sample":
    c.data.path = SAMPLE_PATH
    c.data.batch_size = 256
    c.data.cat_buckets = 1 << 12
    c.data.shuffle_buffer = 4096         # >= the train rows: a full shuffle
    c.train.steps_per_dispatch = 4
    c.train.progress = False
  elif mode in ("synthetic", "smoke"):
    c.data.source = "synthetic"
    c.data.cat_buckets = 1 << 18
    c.data.shuffle_buffer = 1 << 19      # >= the train rows: a full shuffle
    if mode == "smoke":
      c.data.batch_size = 1024
      c.data.cat_buckets = 4096
      c.data.shuffle_buffer = 1 << 14
      c.train.steps_per_dispatch = 4
      c.train.progress = False
  return c


def get_sweep(arg=None):
  """The six models x three seeds (smoke: LR and DeepFM with small MLPs, seed 0)."""
  mode, _ = parse_arg(arg)
  smoke = mode == "smoke"
  models = ("lr", "deepfm") if smoke else STANDARD_MODELS
  seeds = (0,) if smoke else SEEDS
  points = []
  for m in models:
    point = standard_model(m, small=smoke)
    if m != "lr":
      point["model.embed_dim"] = EMBED_DIM
    points += [dict(point, seed=s) for s in seeds]
  return points
