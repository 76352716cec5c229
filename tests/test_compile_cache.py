"""The command line's persistent compilation cache (rectrain.cli.compile_cache)."""

import os
import subprocess
import sys


def _run(tmp_path, name, home, cache=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", HOME=str(home))
  env.pop("RECTRAIN_COMPILE_CACHE", None)
  if cache is not None:
    env["RECTRAIN_COMPILE_CACHE"] = cache
  cmd = [sys.executable, "-m", "rectrain.cli", "run", "--set", "data.max_rows=2048",
         "--set", "data.batch_size=512", "--set", "train.progress=False",
         "--set", "data.cat_buckets=1000", "--workdir", str(tmp_path / name)]
  r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]


def test_the_cli_stores_compiled_steps_and_a_switch_turns_it_off(tmp_path):
  home = tmp_path / "home"
  _run(tmp_path, "first", home)                       # on by default, under ~/.cache
  cache = home / ".cache" / "rectrain" / "jax"
  stored = sorted(os.listdir(cache))
  assert stored, "no compiled program was stored"
  _run(tmp_path, "second", tmp_path / "other", str(cache))  # same shapes: loaded, none new
  assert sorted(os.listdir(cache)) == stored
  _run(tmp_path, "third", tmp_path / "off", "0")
  assert not (tmp_path / "off" / ".cache").exists()
