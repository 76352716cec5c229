"""The search space of :mod:`rectrain.tune`: ``--param KEY=SPEC`` parsing and the configs
a trial runs.

:class:`Param` (one searched key and its Optuna distribution),
:func:`split_values` / :func:`parse_param` (the ``KEY=SPEC`` grammar of the
:mod:`rectrain.tune` docstring), :func:`base_config` / :func:`trial_config`
(the base config with the ``--set`` values and a trial's values) and
``_check_space``, which fails before any trial when a key or a value does not
fit the config.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from typing import Any, List, Mapping, Sequence

import optuna

SAMPLERS = ("tpe", "random", "grid")
OBJECTIVES = ("ne", "logloss")
KINDS = ("loguniform", "uniform", "int", "choice", "grid")


@dataclasses.dataclass(frozen=True)
class Param:
  """One searched config key: ``kind`` in :data:`KINDS`, bounds or values."""

  key: str
  kind: str
  low: float = 0.0
  high: float = 0.0
  log: bool = False
  values: tuple = ()

  def distribution(self) -> optuna.distributions.BaseDistribution:
    if self.kind in ("choice", "grid"):
      return optuna.distributions.CategoricalDistribution(self.values)
    if self.kind == "int":
      return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
    return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)

  def examples(self) -> list:
    """The values checked against the config before any trial."""
    if self.values:
      return list(self.values)
    return [int(self.low), int(self.high)] if self.kind == "int" else [self.low, self.high]


def split_values(text: str) -> List[str]:
  """Splits at commas outside brackets and quotes: ``"(1,2),3"`` -> ``["(1,2)", "3"]``."""
  out, cur, depth, quote = [], "", 0, None
  for ch in text:
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      out.append(cur.strip())
      cur = ""
      continue
    cur += ch
  return out + [cur.strip()]


def _value(text: str):
  """A choice value: a Python scalar literal, else the ``--set`` text itself
  (Optuna stores only scalars; ``(64,32)`` stays text and parses at ``--set``)."""
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text
  return value if value is None or isinstance(value, (bool, int, float, str)) else text


def parse_param(text: str) -> Param:
  """``KEY=SPEC`` (module docstring) as a :class:`Param`; errors name the text."""
  key, sep, spec = text.partition("=")
  key, spec = key.strip(), spec.strip()
  if not sep or not key or not spec:
    raise ValueError(f"--param {text!r}: expected KEY=SPEC, e.g. "
                     "optim.sparse.learning_rate=loguniform:1e-3:1")
  kind, _, rest = spec.partition(":")
  if kind not in KINDS:
    raise ValueError(f"--param {text!r}: unknown kind {kind!r}; use one of {KINDS}")
  if kind in ("choice", "grid"):
    texts = [v for v in split_values(rest) if v] if rest.strip() else []
    if not texts:
      raise ValueError(f"--param {text!r}: {kind} needs values, e.g. {kind}:0.01,0.1")
    values = tuple(_value(v) for v in texts)
    if len(set(map(repr, values))) != len(values):
      raise ValueError(f"--param {text!r}: a value is given twice")
    return Param(key, kind, values=values)
  parts = rest.split(":")
  log = kind == "loguniform"
  if kind == "int" and len(parts) == 3 and parts[2] == "log":
    parts, log = parts[:2], True
  try:
    low, high = (float(p) for p in parts)
  except ValueError:
    raise ValueError(f"--param {text!r}: {kind} needs LO:HI numbers, e.g. {kind}:1:10") from None
  if not (math.isfinite(low) and math.isfinite(high) and low < high) or (log and low <= 0):
    raise ValueError(f"--param {text!r}: need finite LO < HI"
                     f"{' and LO > 0 (log scale)' if log else ''}")
  if kind == "int" and (low != int(low) or high != int(high)):
    raise ValueError(f"--param {text!r}: int bounds must be integers")
  return Param(key, kind, low, high, log)


def _override(key: str, value) -> str:
  """The ``--set`` text of a value (floats exact: ``str`` is the shortest repr)."""
  return f"{key}={value!r}" if isinstance(value, str) and value == "" else f"{key}={value}"


def base_config(config_path: str | None = None, config_arg: str | None = None,
                overrides: Sequence[str] = ()):
  """The config a tuning run starts from: CONFIG (or the default) plus ``--set`` values.

  ``overrides`` are applied in one :func:`rectrain.configs.apply_overrides`
  call (as ``rectrain run`` does), so a ``model.name`` among them is applied
  first and the other values survive it.
  """
  from rectrain import configs
  config = (configs.load_config(config_path, config_arg) if config_path
            else configs.default_config())
  return configs.apply_overrides(config, list(overrides))


def trial_config(spec: Mapping[str, Any], values: Mapping[str, Any]):
  """The base config of ``spec`` with a trial's ``values`` set (validated)."""
  from rectrain import configs
  config = base_config(spec["config"], spec["arg"],
                       list(spec["set"]) + [_override(k, v) for k, v in values.items()])
  configs.validate(config)
  return config


def _check_space(spec, params: Sequence[Param]) -> None:
  """Fails before any trial when a key or a value does not fit the config: every
  value of each param (range ends, choices), the others at their first value."""
  from rectrain.experiments.records import resolve_windows
  first = {p.key: p.examples()[0] for p in params}
  for p in params:
    for value in p.examples():
      try:
        config = resolve_windows(trial_config(spec, {**first, p.key: value}))
      except (KeyError, ValueError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ValueError(f"--param {p.key}={value!r}: {msg}") from None
  if spec["sampler"] == "grid":
    bad = [p.key for p in params if p.kind not in ("grid", "choice")]
    if bad:
      raise ValueError(f"--sampler grid: {bad} are not grid:/choice: params")
  if config.offline.epochs or (config.get("delayed", None) is not None and config.delayed.method):
    raise ValueError("tune runs streaming trials: set offline.epochs=0 and delayed.method=''")
  if spec["holdout_rows"]:
    if config.data.source != "synthetic":
      raise ValueError("--holdout-rows: held-out rows after the prefix need data.source=synthetic;"
                       " for a file, tune on its progressive objective")
    if not config.data.max_rows or config.data.get("split", "") or config.idmap.enabled:
      raise ValueError("--holdout-rows needs data.max_rows > 0 (the prefix), no data.split and "
                       "idmap.enabled=False")
  if config.metrics.window_rows <= 0 and spec["prune"]:
    raise ValueError("pruning needs count windows: set metrics.window_rows > 0 (or --no-prune)")
