"""Stale gradients on the synthetic stream: synchronous vs ASGD vs DC-ASGD against tau.

The asynchronous parameter server is simulated in one process
(rectrain/train/async_sim.py, config section ``train.async_sim``): batch t's
gradient is computed at theta_{t - tau} (dense parameters AND the embedding rows
it touches) and applied to theta_t; ``staleness = fixed`` gives tau_t =
min(tau, t). tau = 0 is the synchronous step, bit for bit. Delay compensation is
DC-ASGD (Zheng et al. 2017, ICML, "Asynchronous Stochastic Gradient Descent
with Delay Compensation"):

  g_dc = g + lambda_t * g * g * (theta_t - theta_{t - tau})

with a constant lambda (DC-ASGD-c, the paper's 0.04) or the adaptive
lambda_0 / sqrt(EMA_0.95(g^2) + eps) (DC-ASGD-a, the paper's lambda_0 = 2).

Model: DeepFM, embedding dim 16, MLP 256-128 (rectrain's default job),
2^16 hashed buckets per field. Stream: 131,072 synthetic rows in batches of
256, i.e. 512 server updates, so tau = 64 is 1/8 of the run. Progressive
validation: each batch is scored by the model that computed its gradient
(theta_{t - tau}, ``predictions = stale``, what that worker would have served)
before anyone learns from it.

Points (``get_sweep``), seeds 0 and 1 (seed = stream and initialisation):

* ``default`` family: rectrain's default optimizers (Adam 1e-3 on the dense
  parameters, row-wise AdaGrad 0.05 on the tables); sync, and ASGD, DC-ASGD-c,
  DC-ASGD-a at tau in {1, 4, 16, 64};
* ``lr/10`` family: both learning rates divided by 10 (Adam 1e-4, row-wise
  AdaGrad 0.005); sync, ASGD at tau in {4, 16, 64}, DC-ASGD-a at {16, 64};
* ``SGD`` family: plain SGD (no momentum, as in the paper) on the dense
  parameters (lr 0.1, the largest of {0.1, 0.5} that trains synchronously),
  tables as default; sync and ASGD tau = 4.

Commands (see README.md for the measured runtime and the table):

  rectrain sweep experiments/async_staleness --drop-checkpoints
  rectrain table runs/async_staleness --metrics auc,logloss,ne,pcoc,nonfinite_batches

Smoke (seconds; tests/test_study_async_staleness.py and the notebook's SMOKE
mode): ``--arg smoke`` (4,096 rows, 16 updates, MLP 32, 1,024 buckets; sync and
DC-ASGD-a tau 4, seed 0).
"""

from rectrain.configs import default_config, use_first_wave_defaults
from rectrain.experiment import experiment_section

SEEDS = (0, 1)
TAUS = (0, 1, 4, 16, 64)
METHODS = ("asgd", "dc_constant", "dc_adaptive")
METHOD_LABELS = {"sync": "sync", "asgd": "ASGD", "dc_constant": "DC-ASGD-c",
                 "dc_adaptive": "DC-ASGD-a"}
DC_MODE = {"asgd": "none", "dc_constant": "constant", "dc_adaptive": "adaptive"}
LAMBDA = {"asgd": 0.04, "dc_constant": 0.04, "dc_adaptive": 2.0}   # the paper's values
DENSE_LR, SPARSE_LR = 1e-3, 0.05   # rectrain's defaults (Adam, row-wise AdaGrad)
SGD_LR = 0.1
FAMILIES = ("default", "lr/10", "SGD")


def get_config(arg=None):
  """The base config (synchronous DeepFM); ``arg="smoke"`` shrinks the run."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"experiments/async_staleness: unknown argument {arg!r} (use smoke or none)")
  c = use_first_wave_defaults(default_config())  # as the committed table was measured
  c.experiment = experiment_section(name="async_staleness")
  c.data.source = "synthetic"
  c.data.max_rows = 131_072
  c.data.batch_size = 256
  c.data.cat_buckets = 1 << 16
  c.model.embed_dim = 16
  c.model.mlp_dims = (256, 128)
  c.optim.dense.learning_rate = DENSE_LR
  c.optim.sparse.learning_rate = SPARSE_LR
  c.train.steps_per_dispatch = 8
  c.train.async_sim.staleness = "fixed"
  c.metrics.window_rows = 8192
  c.metrics.time_windows = ""
  if arg == "smoke":
    c.data.max_rows = 4096
    c.data.cat_buckets = 1024
    c.model.mlp_dims = (32,)
    c.train.steps_per_dispatch = 4
    c.metrics.window_rows = 1024
    c.train.progress = False
  return c


def point(method, tau, family="default", seed=0):
  """Overrides of one run: ``method`` in sync | asgd | dc_constant | dc_adaptive."""
  if method not in ("sync",) + METHODS:
    raise ValueError(f"async_staleness point: unknown method {method!r}")
  if family not in FAMILIES:
    raise ValueError(f"async_staleness point: unknown family {family!r} (one of {FAMILIES})")
  if (method == "sync") != (tau == 0):
    raise ValueError(f"async_staleness point: method {method!r} with tau={tau} (sync is tau = 0)")
  p = {"experiment.label": f"{family}: {METHOD_LABELS[method]} tau={tau}", "seed": seed}
  if method != "sync":
    p.update({"train.async_sim.enabled": True, "train.async_sim.tau": tau,
              "train.async_sim.delay_compensation": DC_MODE[method],
              "train.async_sim.lambda_": LAMBDA[method]})
  if family == "lr/10":
    p.update({"optim.dense.learning_rate": DENSE_LR / 10, "optim.sparse.learning_rate": SPARSE_LR / 10})
  elif family == "SGD":
    p.update({"optim.dense.name": "sgd", "optim.dense.learning_rate": SGD_LR})
  return p


def _grid(arg=None):
  """(method, tau, family) of every table row, in table order."""
  if arg == "smoke":
    return [("sync", 0, "default"), ("dc_adaptive", 4, "default")]
  grid = [("sync", 0, "default")]
  grid += [(m, t, "default") for t in TAUS[1:] for m in METHODS]
  grid += [("sync", 0, "lr/10")] + [("asgd", t, "lr/10") for t in (4, 16, 64)]
  grid += [("dc_adaptive", t, "lr/10") for t in (16, 64)]
  grid += [("sync", 0, "SGD"), ("asgd", 4, "SGD")]
  return grid


def get_sweep(arg=None):
  """Every (method, tau, family) row x seeds (smoke: 2 rows, seed 0)."""
  seeds = (0,) if arg == "smoke" else SEEDS
  return [point(m, t, f, s) for m, t, f in _grid(arg) for s in seeds]
