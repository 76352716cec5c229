"""A config is data: building and overriding one loads no jax / flax / optax, and the
model hyperparameter defaults kept there equal the Flax modules' fields."""

import subprocess
import sys

from rectrain import config_sections
from rectrain.models.registry import MODELS, _hparam_defaults


def test_configs_import_no_accelerator_stack():
  code = ("import sys, rectrain.configs as c; cfg = c.default_config(); "
          "c.apply_overrides(cfg, ['model.name=dcnv2', 'data.batch_size=512']); "
          "print(sorted(m for m in ('jax', 'flax', 'optax', 'orbax') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", out.stdout


def test_model_hparams_match_the_flax_modules():
  assert set(config_sections.MODEL_NAMES) == set(MODELS)
  for name, cls in MODELS.items():
    assert config_sections.MODEL_HPARAMS[name] == _hparam_defaults(cls), name


def test_overrides_take_true_false_none_in_any_case():
  from rectrain import configs
  c = configs.apply_overrides(configs.default_config(), [
      "train.progress=false", "train.async_sim.enabled=true", "metrics.window_rows=none"])
  assert c.train.progress is False and c.train.async_sim.enabled is True
  assert c.metrics.window_rows is None
  c = configs.apply_overrides(configs.default_config(), ["train.progress=False", "data.path=true"])
  assert c.train.progress is False and c.data.path == "true"   # a string key keeps the text
