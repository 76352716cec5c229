"""The default sections of a run config, with no jax / flax / optax import.

``rectrain.configs`` builds a config from these; the modules that use a
section (rectrain/train/sharding.py, async_sim.py, distributed.py,
delayed.py, rectrain/data/idmap.py, rectrain/models/registry.py) import
them from here, so reading or validating a config's shape never loads the
accelerator stack. ``MODEL_HPARAMS`` are the fields of each Flax model
module (rectrain/models/ctr.py) with their defaults; a test checks that they
stay equal.
"""

from __future__ import annotations

import ml_collections

MODEL_NAMES = ("lr", "fm", "wide_deep", "deepfm", "dcnv2", "dlrm", "dnn", "din")

_EMBED = {"embed_dim": 16, "embed_init_scale": 0.01, "embed_init": "truncated_normal"}
_MLP = {"mlp_dims": (400, 400, 400), "batch_norm": False, "dropout_rate": 0.0}
MODEL_HPARAMS = {
    "lr": {},
    "fm": dict(_EMBED),
    "wide_deep": {**_EMBED, **_MLP},
    "deepfm": {**_EMBED, **_MLP},
    "dcnv2": {**_EMBED, "num_cross_layers": 3, "cross_low_rank": 0, "structure": "stacked", **_MLP},
    "dlrm": {**_EMBED, "bottom_mlp_dims": (512, 256), "top_mlp_dims": (512, 256),
             "interaction_self": False, "batch_norm": False, "dropout_rate": 0.0},
    "dnn": {**_EMBED, **_MLP},
    # DIN (Zhou et al. 2018): needs a multi:seq field and the candidate's field as target.
    "din": {**_EMBED, "att_dims": (80, 40), "mlp_dims": (200, 80), "target": "",
            "batch_norm": False, "dropout_rate": 0.0},
}


def default_model_config(name: str) -> ml_collections.ConfigDict:
  """``name`` plus the usual hyperparameters of that model.

  embed_dim 16 and an MLP of (400, 400, 400) (the Criteo setting of DeepFM /
  Wide & Deep); DCN-V2: 3 full-rank cross layers, stacked; DLRM: bottom MLP
  (512, 256, D), top MLP (512, 256), dot interaction (the reference Criteo
  Kaggle setting). Embedding rows ~ truncated normal, stddev 0.01.
  """
  if name not in MODEL_HPARAMS:
    raise ValueError(f"model config key 'name': unknown model {name!r}; "
                     f"expected one of {sorted(MODEL_HPARAMS)}")
  config = ml_collections.ConfigDict()
  config.name = name
  for key, value in MODEL_HPARAMS[name].items():
    config[key] = value
  return config


def mesh_config_defaults() -> ml_collections.ConfigDict:
  """``config.mesh``: the device mesh; ``shape=(1, 1)`` is one device (the default).

  ``shape`` is ``(data, model)``; one entry may be -1 (all remaining
  devices), e.g. ``(-1, 1)`` = data parallel over every device with the
  tables row-sharded over all of them.
  """
  return ml_collections.ConfigDict({"shape": (1, 1)})


def async_config_defaults() -> ml_collections.ConfigDict:
  """Defaults of ``config.train.async_sim`` (disabled: the synchronous step)."""
  c = ml_collections.ConfigDict()
  c.enabled = False
  c.staleness = "fixed"            # fixed | round_robin | random
  c.tau = 0                        # fixed: tau; random: max tau; round_robin: 0 or workers - 1
  c.workers = 1                    # round_robin: number of workers W (tau = W - 1)
  c.delay_compensation = "none"    # none | constant | adaptive (DC-ASGD / DC-ASGD-a)
  c.lambda_ = 0.04
  c.mean_square_decay = 0.95
  c.eps = 1e-7
  c.seed = 0                       # random staleness
  c.distribution = "uniform"       # random staleness: uniform | geometric
  c.geometric_p = 0.5
  c.predictions = "stale"          # stale (the worker's) | current (theta_t, one more forward)
  return c


def distributed_config_defaults() -> ml_collections.ConfigDict:
  """``config.distributed``: empty coordinator = single process (or the environment)."""
  return ml_collections.ConfigDict({
      "coordinator": "",       # host:port of process 0
      "num_processes": 0,
      "process_id": -1,
      "cpu_collectives": "gloo",
  })


def delayed_config_defaults() -> ml_collections.ConfigDict:
  """Defaults of ``config.delayed``: method, join, windows, seed/incremental days, aux model."""
  c = ml_collections.ConfigDict()
  c.method = "vanilla"        # one of METHODS
  c.join_mode = ""            # "" = the method's own (METHOD_JOIN); vanilla may use any mode
  c.wait_s = 900.0            # wait / elapsed-time window e (wait, esdfm, defer)
  c.attribution_s = 3 * 86400.0  # conversions later than A after the impression do not count
  # multihead: label snapshots after the impression; head k learns (s_{k-1}, s_k].
  c.snapshot_s = (3600.0, 6 * 3600.0, 86400.0, 3 * 86400.0)
  c.scatter_rows = 0          # positive scattering of the joiner (0 = off)
  c.window_s = 3600.0         # test-then-train window of event time
  c.seed_days = 1.0           # seed model: the first days, complete labels
  c.incremental_days = 0.0    # then incremental training; 0 = the rest of data.max_rows
  c.multihead = ml_collections.ConfigDict()
  c.multihead.train_heads = "mature"  # mature: heads k <= snapshot j | newest: k == j
  c.aux = ml_collections.ConfigDict()  # ES-DFM / DEFER auxiliary (dp, rn) model
  c.aux.embed_dim = 8
  c.aux.mlp_dims = (64,)
  c.aux.rn_source = "aux"     # aux: the rn head | model: (1 - p) / (1 - p + f_dp)
  c.aux.online = True         # defer: keep training the aux model on the second emissions
  return c


def idmap_config_defaults() -> ml_collections.ConfigDict:
  """The ``idmap`` section of a run config (see :func:`from_config`)."""
  c = ml_collections.ConfigDict()
  c.enabled = False
  # Rows per field, reserved rows included; 0 = the stream's layout
  # (data.cat_buckets / data.int_buckets). field_capacity: one value per
  # field (layout order), overrides capacity when not empty.
  c.capacity = 0
  c.field_capacity = ()
  c.min_count = 1            # sightings before an id gets a row (1 = at once)
  c.ttl = 0.0                # free ids unseen for this many clock units; 0 = never
  c.clock = "time"           # time (event seconds) | index (stream position, e.g. Criteo logs)
  c.policy = "lru"           # lru | lfu: which rows go when a field is full
  c.unadmitted = "missing"   # missing | shared | zero: what an id without a row reads
  c.max_admit_per_batch = 0  # static R of the row reset; 0 = batch_size * fields (no cap)
  c.sketch_width = 1 << 20   # count-min sketch counters per row (power of two)
  c.sketch_depth = 4
  c.sketch_halve_every = 0.0  # clock units between halvings of the sketch; 0 = never
  return c
