"""Produces the FTRL golden values hard-coded in tests/test_optim.py.

Runs ``tf.keras.optimizers.Ftrl`` (Keras 3) for 5 steps on fixed gradients and
several argument settings, and prints the weights after every step plus the
final accumulator / linear slots. Also runs TF's raw ``ResourceApplyFtrlV2``
kernel on the same inputs, to record whether it agrees with Keras.

Needs TensorFlow, which rectrain does NOT depend on; run it in a throwaway venv:

  python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu
  /tmp/tfvenv/bin/python tests/data/ftrl_tf_golden.py

Last run: tensorflow-cpu 2.21.0, keras 3.15.1, CPU.
"""

import json

import numpy as np
import tensorflow as tf

W0 = np.array([0.5, -0.3, 0.0, 1.2], np.float32)
GRADS = (np.random.RandomState(0).randn(5, 4) * 0.5).astype(np.float32)

SETTINGS = {
    "default": dict(learning_rate=0.1),
    "l1_l2": dict(learning_rate=0.1, l1=0.05, l2=0.01),
    "power_beta": dict(learning_rate=0.2, learning_rate_power=-0.3, l1=0.1, beta=0.5,
                       initial_accumulator_value=0.05),
    "shrinkage": dict(learning_rate=0.1, l2=0.02, l2_shrinkage=0.05,
                      initial_accumulator_value=0.2),
    "power0": dict(learning_rate=0.05, learning_rate_power=0.0),
}


def keras_run(s):
  opt = tf.keras.optimizers.Ftrl(
      learning_rate=s["learning_rate"],
      learning_rate_power=s.get("learning_rate_power", -0.5),
      initial_accumulator_value=s.get("initial_accumulator_value", 0.1),
      l1_regularization_strength=s.get("l1", 0.0),
      l2_regularization_strength=s.get("l2", 0.0),
      l2_shrinkage_regularization_strength=s.get("l2_shrinkage", 0.0),
      beta=s.get("beta", 0.0))
  var = tf.Variable(W0)
  ws = []
  for g in GRADS:
    opt.apply_gradients([(tf.constant(g), var)])
    ws.append(var.numpy().tolist())
  return dict(w=ws, n=opt._accumulators[0].numpy().tolist(),
              z=opt._linears[0].numpy().tolist())


def raw_op_run(s):
  """TF's C++ kernel (no beta argument; Keras folds beta into l2)."""
  lr = s["learning_rate"]
  var = tf.Variable(W0)
  acc = tf.Variable(np.full(4, s.get("initial_accumulator_value", 0.1), np.float32))
  lin = tf.Variable(np.zeros(4, np.float32))
  ws = []
  for g in GRADS:
    tf.raw_ops.ResourceApplyFtrlV2(
        var=var.handle, accum=acc.handle, linear=lin.handle, grad=tf.constant(g),
        lr=np.float32(lr), l1=np.float32(s.get("l1", 0.0)),
        l2=np.float32(s.get("l2", 0.0) + s.get("beta", 0.0) / (2 * lr)),
        l2_shrinkage=np.float32(s.get("l2_shrinkage", 0.0)),
        lr_power=np.float32(s.get("learning_rate_power", -0.5)))
    ws.append(var.numpy().tolist())
  return dict(w=ws, n=acc.numpy().tolist(), z=lin.numpy().tolist())


if __name__ == "__main__":
  out = {"w0": W0.tolist(), "grads": GRADS.tolist(), "settings": SETTINGS,
         "keras": {k: keras_run(s) for k, s in SETTINGS.items()},
         "raw_op": {k: raw_op_run(s) for k, s in SETTINGS.items()}}
  print(json.dumps(out))
