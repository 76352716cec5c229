"""Kills a ``rectrain run`` subprocess mid-stream, after a checkpoint (crash-and-resume tests)."""

import json
import os
import signal
import subprocess
import sys
import time

from rectrain.train import checkpoint as ckpt


def kill_after_checkpoint(workdir, overrides, min_batches: int, delay_s: float = 0.3,
                          timeout_s: float = 240) -> dict:
  """Runs ``rectrain run --set OVERRIDES`` into ``workdir`` and SIGKILLs it once a
  checkpoint of at least ``min_batches`` batches is complete; returns the meta.json
  of the latest checkpoint. ``delay_s`` slows each dispatch (RECTRAIN_DEBUG_DISPATCH_DELAY)
  so that the run is still going when the checkpoint lands.
  """
  cmd = [sys.executable, "-m", "rectrain.cli", "run", "--workdir", str(workdir)]
  for o in overrides:
    cmd += ["--set", o]
  env = dict(os.environ, RECTRAIN_DEBUG_DISPATCH_DELAY=str(delay_s), JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + timeout_s
  try:
    while time.time() < deadline:
      done = ckpt.latest_checkpoint(str(workdir))
      if done and json.load(open(os.path.join(done, "meta.json")))["batches"] >= min_batches:
        break
      assert proc.poll() is None, proc.stderr.read().decode()
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.wait()
  assert not os.path.exists(os.path.join(str(workdir), "summary.json"))  # it died mid-stream
  return json.load(open(os.path.join(ckpt.latest_checkpoint(str(workdir)), "meta.json")))
