"""Tests for rectrain.optim: NumPy references, TF golden values, equivalences,
sparse == dense, untouched rows bit-identical, padding, no recompilation."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rectrain import optim
from rectrain.optim.adamom import adamom_math
from rectrain.optim.ftrl import ftrl_math

RTOL, ATOL = 2e-5, 1e-6


def run_dense(opt, w0, grads, **extra):
  """Applies ``opt`` to ``w0`` for each gradient; returns the weights after each step."""
  w = jnp.asarray(w0, jnp.float32)
  state = opt.init(w)
  out = []
  for g in grads:
    updates, state = opt.update(jnp.asarray(g, jnp.float32), state, w, **extra)
    w = optax.apply_updates(w, updates)
    out.append(np.asarray(w))
  return np.stack(out), state


def rand_grads(seed, steps, shape, scale=1.0):
  return (np.random.RandomState(seed).randn(steps, *shape) * scale).astype(np.float32)


# ----------------------------------------------------------------------------
# NumPy references (float64).
# ----------------------------------------------------------------------------

def np_ftrl(w0, grads, lr, p=-0.5, init_acc=0.1, l1=0., l2=0., shrink=0., beta=0.):
  w = np.array(w0, np.float64)
  z = np.zeros_like(w)
  n = np.full_like(w, init_acc)
  ws = []
  for g in grads:
    g = g.astype(np.float64)
    gs = g + 2 * shrink * w
    n_new = n + g * g
    sigma = (n_new ** -p - n ** -p) / lr
    z = z + gs - sigma * w
    n = n_new
    q = n ** -p / lr + 2 * l2 + beta / lr
    w = np.where(np.abs(z) > l1, (np.sign(z) * l1 - z) / q, 0.0)
    ws.append(w)
  return np.stack(ws), z, n


def np_rowwise_adagrad(w0, grads, lr, init_acc=0., eps=1e-8):
  w = np.array(w0, np.float64)
  acc = np.full((w.shape[0],), init_acc)
  ws = []
  for g in grads:
    g = g.astype(np.float64).reshape(w.shape[0], -1)
    acc = acc + (g * g).mean(axis=1)
    step = lr * g / (np.sqrt(acc) + eps)[:, None]
    w = w - step.reshape(w.shape)
    ws.append(w)
  return np.stack(ws), acc


def np_adagrad(w0, grads, lr, init_acc=0.1, eps=1e-7):
  w = np.array(w0, np.float64)
  acc = np.full_like(w, init_acc)
  ws = []
  for g in grads:
    acc = acc + g.astype(np.float64) ** 2
    w = w - lr * g / np.sqrt(acc + eps)
    ws.append(w)
  return np.stack(ws)


def np_adamom(w0, grads, lr, ada=0.9999, mom=0.99, eps=1e-6, wd=0., inside=True):
  w = np.array(w0, np.float64)
  m = np.zeros_like(w)
  v = np.zeros_like(w)
  c = np.zeros_like(w)
  ws = []
  for g in grads:
    g = g.astype(np.float64) + wd * w
    m = mom * m + (1 - mom) * g
    v = ada * v + g * g
    c = ada * c + 1
    if inside:
      w = w - lr * m / np.sqrt(v / c + eps)
    else:
      w = w - lr * m / (np.sqrt(v / c) + eps)
    ws.append(w)
  return np.stack(ws), v / c


def np_ogd(w0, grads, lr, l1=0.):
  w = np.array(w0, np.float64)
  ws = []
  for t, g in enumerate(grads, start=1):
    w = w - lr / np.sqrt(t) * (g + l1 * np.sign(w))
    ws.append(w)
  return np.stack(ws)


def np_adam(w0, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
  w = np.array(w0, np.float64)
  m = np.zeros_like(w)
  v = np.zeros_like(w)
  ws = []
  for t, g in enumerate(grads, start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    w = w - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    ws.append(w)
  return np.stack(ws)


# ----------------------------------------------------------------------------
# FTRL: TensorFlow golden values (see tests/data/ftrl_tf_golden.py).
# ----------------------------------------------------------------------------

# Output of tests/data/ftrl_tf_golden.py (tensorflow-cpu 2.21.0, keras 3.15.1):
# tf.keras.optimizers.Ftrl weights after each of 5 steps, final accumulator n and linear z.
# TF's raw ResourceApplyFtrlV2 kernel produced identical values for every setting.
# Output of tests/data/ftrl_tf_golden.py (tensorflow-cpu 2.21.0, keras 3.15.1):
# tf.keras.optimizers.Ftrl weights after each of 5 steps, final accumulator n and linear z.
# TF's raw ResourceApplyFtrlV2 kernel produced identical values for every setting.
TF_W0 = [0.5, -0.30000001192092896, 0.0, 1.2000000476837158]
TF_GRADS = [
    [0.882026195526123, 0.20007860660552979, 0.4893690049648285, 1.1204465627670288],
    [0.9337790012359619, -0.4886389374732971, 0.47504422068595886, -0.07567860186100006],
    [-0.051609426736831665, 0.2052992582321167, 0.07202178239822388, 0.7271367311477661],
    [0.3805188536643982, 0.060837507247924805, 0.22193162143230438, 0.1668371707201004],
    [0.7470395565032959, -0.10257913172245026, 0.1565338522195816, -0.42704787850379944],
]
TF_SETTINGS = {
    'default': {'learning_rate': 0.1},
    'l1_l2': {'learning_rate': 0.1, 'l1': 0.05, 'l2': 0.01},
    'power_beta': {'learning_rate': 0.2, 'learning_rate_power': -0.3, 'l1': 0.1, 'beta': 0.5, 'initial_accumulator_value': 0.05},
    'shrinkage': {'learning_rate': 0.1, 'l2': 0.02, 'l2_shrinkage': 0.05, 'initial_accumulator_value': 0.2},
    'power0': {'learning_rate': 0.05, 'learning_rate_power': 0.0},
}
TF_GOLDEN = {
    'default': dict(
        w=[
            [0.23712235689163208, -0.09994945675134659, -0.08399008959531784, 0.7778124213218689],
            [0.16653355956077576, -0.020556239411234856, -0.1471806913614273, 0.7842990756034851],
            [0.17043200135231018, -0.05219893902540207, -0.15671740472316742, 0.7314056158065796],
            [0.14280714094638824, -0.06153485178947449, -0.1849120855331421, 0.7193579077720642],
            [0.09513342380523682, -0.045984894037246704, -0.20441655814647675, 0.7488266229629517],
        ],
        n=[2.455439567565918, 0.4351709485054016, 0.6440927386283875, 2.100060224533081],
        z=[-1.4907257556915283, 0.3033508062362671, 1.6405529975891113, -10.851683616638184]),
    'l1_l2': dict(
        w=[
            [0.2312924861907959, -0.08612757176160812, -0.07515065371990204, 0.772191047668457],
            [0.16081024706363678, -0.006991514004766941, -0.13817359507083893, 0.778666615486145],
            [0.16470280289649963, -0.03853697329759598, -0.14768511056900024, 0.7258500456809998],
            [0.13711801171302795, -0.04784431681036949, -0.17580832540988922, 0.7138197422027588],
            [0.08950506150722504, -0.0323413647711277, -0.1952643096446991, 0.7432478666305542],
        ],
        n=[2.455439567565918, 0.4351709485054016, 0.6440927386283875, 2.100060224533081],
        z=[-1.4543201923370361, 0.2639946937561035, 1.6210066080093384, -10.83570384979248]),
    'power_beta': dict(
        w=[
            [0.05018872395157814, -0.04421660676598549, -0.06547185033559799, 0.35830748081207275],
            [-0.037555497139692307, 0.0032462002709507942, -0.13747234642505646, 0.36785888671875],
            [-0.03138614818453789, 0.0, -0.1483680158853531, 0.2823486626148224],
            [-0.07609597593545914, -0.00738496845588088, -0.18137796223163605, 0.2627912163734436],
            [-0.159043088555336, 0.0, -0.20447620749473572, 0.31186842918395996],
        ],
        n=[2.405439615249634, 0.38517093658447266, 0.5940927267074585, 2.050060272216797],
        z=[1.5323761701583862, 0.043617427349090576, 1.4857091903686523, -2.813737392425537]),
    'shrinkage': dict(
        w=[
            [0.1789185255765915, -0.060378581285476685, -0.0733758807182312, 0.6501809358596802],
            [0.10915382951498032, 0.010700435377657413, -0.13044342398643494, 0.6510599851608276],
            [0.11213486641645432, -0.0177342239767313, -0.13761185109615326, 0.5950561165809631],
            [0.08449522405862808, -0.02584378980100155, -0.16203679144382477, 0.5791664123535156],
            [0.037352997809648514, -0.011546601541340351, -0.17822982370853424, 0.6039859056472778],
        ],
        n=[2.5554394721984863, 0.5351709127426147, 0.7440927028656006, 2.2000603675842285],
        z=[-0.5986095070838928, 0.08493146300315857, 1.5445539951324463, -8.982841491699219]),
    'power0': dict(
        w=[
            [-0.04410130903124809, -0.01000392995774746, -0.024468449875712395, -0.05602232739329338],
            [-0.09079025685787201, 0.014428016729652882, -0.04822066053748131, -0.05223839730024338],
            [-0.08820979297161102, 0.004163053818047047, -0.0518217496573925, -0.08859523385763168],
            [-0.10723572969436646, 0.0011211782693862915, -0.06291832774877548, -0.09693709760904312],
            [-0.1445877104997635, 0.006250134669244289, -0.07074502110481262, -0.07558470219373703],
        ],
        n=[2.455439567565918, 0.4351709485054016, 0.6440927386283875, 2.100060224533081],
        z=[2.891754150390625, -0.1250026971101761, 1.4149004220962524, 1.511694073677063]),
}


@pytest.mark.parametrize("name", sorted(TF_SETTINGS))
def test_ftrl_matches_tensorflow_keras(name):
  kwargs = dict(TF_SETTINGS[name])
  golden = TF_GOLDEN[name]
  grads = np.asarray(TF_GRADS, np.float32)
  ws, state = run_dense(optim.ftrl(**kwargs), TF_W0, grads)
  np.testing.assert_allclose(ws, golden["w"], rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(state.n, golden["n"], rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(state.z, golden["z"], rtol=RTOL, atol=ATOL)
  # The sparse path (one row of width 4) gives the same numbers.
  sp = optim.ftrl_sparse(**kwargs)
  table = jnp.asarray([TF_W0], jnp.float32)
  sstate = sp.init(table)
  for g in grads:
    table, sstate = optim.sparse_apply(sp, table, sstate, jnp.array([0]), jnp.asarray(g)[None])
  np.testing.assert_allclose(table[0], golden["w"][-1], rtol=RTOL, atol=ATOL)
  # And the NumPy transcription agrees with TF too.
  ref, _, _ = np_ftrl(TF_W0, grads, kwargs["learning_rate"], kwargs.get("learning_rate_power", -0.5),
                      kwargs.get("initial_accumulator_value", 0.1), kwargs.get("l1", 0.),
                      kwargs.get("l2", 0.), kwargs.get("l2_shrinkage", 0.), kwargs.get("beta", 0.))
  np.testing.assert_allclose(ref, golden["w"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kw", [
    dict(learning_rate=0.3),
    dict(learning_rate=0.05, learning_rate_power=-0.7, l1=0.2, l2=0.1, beta=1.0),
    dict(learning_rate=0.1, l2_shrinkage=0.1, initial_accumulator_value=0.0, l2=0.5),
])
def test_ftrl_matches_numpy(kw):
  grads = rand_grads(1, 8, (3, 5))
  w0 = np.random.RandomState(2).randn(3, 5).astype(np.float32)
  ws, state = run_dense(optim.ftrl(**kw), w0, grads)
  ref, z, n = np_ftrl(w0, grads, kw["learning_rate"], kw.get("learning_rate_power", -0.5),
                      kw.get("initial_accumulator_value", 0.1), kw.get("l1", 0.), kw.get("l2", 0.),
                      kw.get("l2_shrinkage", 0.), kw.get("beta", 0.))
  np.testing.assert_allclose(ws, ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(state.z, z, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(state.n, n, rtol=1e-5)


def test_ftrl_exact_zeros_where_z_within_l1():
  grads = rand_grads(3, 6, (200,), scale=0.3)
  l1 = 0.4
  ws, state = run_dense(optim.ftrl(0.1, l1=l1), np.zeros(200, np.float32), grads)
  z = np.asarray(state.z)
  inside = np.abs(z) <= l1
  assert inside.any() and (~inside).any(), "test needs both cases"
  assert np.all(ws[-1][inside] == 0.0)          # exactly zero, not just small
  assert np.all(ws[-1][~inside] != 0.0)
  assert np.all(np.sign(ws[-1][~inside]) == -np.sign(z[~inside]))
  # Boundary: |z| == l1 exactly gives 0 (TF selects 0 unless |z| > l1).
  w_new, _, _ = ftrl_math(jnp.float32(0.), jnp.float32(0.), jnp.float32(l1), jnp.float32(1.0),
                          0.1, -0.5, jnp.float32(l1), 0., 0., 0.)
  assert float(w_new) == 0.0


def test_ftrl_power_minus_half_equals_adagrad():
  grads = rand_grads(4, 10, (6,))
  w0 = np.zeros(6, np.float32)
  ws_ftrl, _ = run_dense(optim.ftrl(0.2, initial_accumulator_value=0.3), w0, grads)
  ws_ada, _ = run_dense(optim.adagrad(0.2, initial_accumulator_value=0.3, eps=0.0), w0, grads)
  np.testing.assert_allclose(ws_ftrl, ws_ada, rtol=1e-5, atol=1e-6)


def test_ftrl_power_zero_equals_sgd():
  grads = rand_grads(5, 10, (6,))
  w0 = np.zeros(6, np.float32)
  ws_ftrl, _ = run_dense(optim.ftrl(0.07, learning_rate_power=0.0), w0, grads)
  ws_sgd, _ = run_dense(optax.sgd(0.07), w0, grads)
  np.testing.assert_allclose(ws_ftrl, ws_sgd, rtol=1e-5, atol=1e-6)


def test_ftrl_l2_shrinks_weights():
  """More online L2 -> smaller weights (same z, larger denominator q)."""
  grads = rand_grads(6, 5, (4,))
  ws0, s0 = run_dense(optim.ftrl(0.1), np.zeros(4, np.float32), grads)
  ws1, s1 = run_dense(optim.ftrl(0.1, l2=1.0), np.zeros(4, np.float32), grads)
  assert np.all(np.abs(ws1[-1]) < np.abs(ws0[-1]))


# ----------------------------------------------------------------------------
# AdaGrad, row-wise AdaGrad.
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(), dict(initial_accumulator_value=0.5, eps=1e-3)])
def test_rowwise_adagrad_matches_numpy(kw):
  grads = rand_grads(7, 6, (4, 3))
  w0 = np.random.RandomState(8).randn(4, 3).astype(np.float32)
  ws, state = run_dense(optim.rowwise_adagrad(0.1, **kw), w0, grads)
  ref, acc = np_rowwise_adagrad(w0, grads, 0.1, kw.get("initial_accumulator_value", 0.),
                                kw.get("eps", 1e-8))
  np.testing.assert_allclose(ws, ref, rtol=1e-5, atol=1e-6)
  accumulator = state[0].accumulator
  assert accumulator.shape == (4, 1)
  np.testing.assert_allclose(accumulator[:, 0], acc, rtol=1e-5)


def test_rowwise_adagrad_leaf_layouts():
  """3-D leaf: one accumulator per leading index (mean over the rest); 1-D leaf:
  one per coordinate; scalar leaf: one."""
  params = {"t": jnp.ones((2, 3, 4)), "b": jnp.ones((5,)), "s": jnp.ones(())}
  opt = optim.rowwise_adagrad(0.1)
  state = opt.init(params)
  acc = state[0].accumulator
  assert acc["t"].shape == (2, 1, 1) and acc["b"].shape == (5,) and acc["s"].shape == ()
  grads = jax.tree.map(lambda p: jnp.asarray(rand_grads(9, 1, p.shape)[0]), params)
  updates, state = opt.update(grads, state, params)
  g = np.asarray(grads["t"], np.float64)
  acc_t = (g ** 2).reshape(2, -1).mean(axis=1)
  np.testing.assert_allclose(state[0].accumulator["t"][:, 0, 0], acc_t, rtol=1e-5)
  np.testing.assert_allclose(updates["t"], -0.1 * g / (np.sqrt(acc_t)[:, None, None] + 1e-8),
                             rtol=1e-5)
  gb = np.asarray(grads["b"], np.float64)
  np.testing.assert_allclose(updates["b"], -0.1 * gb / (np.abs(gb) + 1e-8), rtol=1e-5)


def test_adagrad_matches_numpy_and_optax():
  grads = rand_grads(10, 8, (5,))
  w0 = np.random.RandomState(11).randn(5).astype(np.float32)
  ws, _ = run_dense(optim.adagrad(0.3), w0, grads)
  np.testing.assert_allclose(ws, np_adagrad(w0, grads, 0.3), rtol=1e-5, atol=1e-6)
  ws_optax, _ = run_dense(optax.adagrad(0.3), w0, grads)
  np.testing.assert_allclose(ws, ws_optax, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------
# AdaMom, OGD, Adam.
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(learning_rate=0.01),
    dict(learning_rate=0.05, ada_decay=0.9, mom_decay=0.5, epsilon=1e-3, weight_decay=0.1),
    dict(learning_rate=0.05, ada_decay=0.95, mom_decay=0.8, epsilon=1e-2, eps_inside_sqrt=False),
])
def test_adamom_matches_numpy(kw):
  grads = rand_grads(12, 8, (3, 4))
  w0 = np.random.RandomState(13).randn(3, 4).astype(np.float32)
  ws, _ = run_dense(optim.adamom(**kw), w0, grads)
  ref, _ = np_adamom(w0, grads, kw["learning_rate"], kw.get("ada_decay", 0.9999),
                     kw.get("mom_decay", 0.99), kw.get("epsilon", 1e-6), kw.get("weight_decay", 0.),
                     kw.get("eps_inside_sqrt", True))
  np.testing.assert_allclose(ws, ref, rtol=1e-5, atol=1e-6)


def test_adamom_ada_decay_one_is_running_mean():
  grads = rand_grads(14, 7, (5,))
  opt = optim.adamom(0.01, ada_decay=1.0)
  _, state = run_dense(opt, np.zeros(5, np.float32), grads)
  inner = state[0]
  np.testing.assert_allclose(inner.v / inner.c, (grads.astype(np.float64) ** 2).mean(axis=0),
                             rtol=1e-5)
  np.testing.assert_array_equal(inner.c, 7.0)  # one c per row (each coordinate of a 1-D leaf)


def test_adamom_c_per_row_sparse_is_lazy():
  """A row touched k times has c = sum_{i<k} ada^i, however many global steps passed."""
  sp = optim.adamom_sparse(0.01, ada_decay=0.5)
  table = jnp.zeros((3, 2))
  state = sp.init(table)
  for step in range(4):
    ids = jnp.array([0, 1]) if step == 0 else jnp.array([0, 3])  # row 1 once, row 0 four times
    table, state = optim.sparse_apply(sp, table, state, ids, jnp.ones((2, 2)))
  c, m = optax.tree_utils.tree_get(state, "c"), optax.tree_utils.tree_get(state, "m")
  np.testing.assert_allclose(c[:, 0], [1 + .5 + .25 + .125, 1.0, 0.0])
  # Row 1's momentum stays frozen at its value after its single update.
  np.testing.assert_allclose(m[1], [0.01, 0.01], rtol=1e-6)


def test_ogd_matches_numpy():
  grads = rand_grads(15, 9, (6,))
  w0 = np.random.RandomState(16).randn(6).astype(np.float32)
  for l1 in (0.0, 0.3):
    ws, _ = run_dense(optim.ogd(0.2, l1=l1), w0, grads)
    np.testing.assert_allclose(ws, np_ogd(w0, grads, 0.2, l1), rtol=1e-5, atol=1e-6)


def test_sparse_adam_matches_numpy():
  grads = rand_grads(17, 6, (4, 3))
  w0 = np.random.RandomState(18).randn(4, 3).astype(np.float32)
  sp = optim.adam_sparse(0.05)
  table = jnp.asarray(w0)
  state = sp.init(table)
  for g in grads:
    table, state = optim.sparse_apply(sp, table, state, jnp.arange(4), jnp.asarray(g))
  np.testing.assert_allclose(table, np_adam(w0, grads, 0.05)[-1], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# Sparse application.
# ----------------------------------------------------------------------------

SPARSE_KW = {
    "rowwise_adagrad": dict(learning_rate=0.1),
    "adagrad": dict(learning_rate=0.1),
    "ftrl": dict(learning_rate=0.1, l1=0.05, l2=0.01, beta=0.5),
    "adamom": dict(learning_rate=0.01, ada_decay=0.9, weight_decay=0.01),
    "ogd": dict(learning_rate=0.1, l1=0.01),
    "sgd": dict(learning_rate=0.1),
    "adam": dict(learning_rate=0.01),
}
N, W = 7, 3


def test_sparse_names_cover_registry():
  assert sorted(SPARSE_KW) == sorted(optim.SPARSE_NAMES)


@pytest.mark.parametrize("name", sorted(SPARSE_KW))
def test_sparse_equals_dense_when_all_rows_touched(name):
  kw = SPARSE_KW[name]
  sp = optim.get_sparse_optimizer(name, **kw)
  dense = optim.get_optimizer(name, **kw)
  table0 = jnp.asarray(np.random.RandomState(19).randn(N, W), jnp.float32)
  grads = rand_grads(20, 5, (N, W))
  ws_dense, _ = run_dense(dense, table0, grads)
  table, state = table0, sp.init(table0)
  apply = jax.jit(lambda t, s, i, g: optim.sparse_apply(sp, t, s, i, g))
  for step, g in enumerate(grads):
    perm = np.random.RandomState(step).permutation(N)       # any order of unique ids
    ids = np.concatenate([perm, [N, N]]).astype(np.int32)   # plus padding
    g_rows = np.concatenate([g[perm], np.full((2, W), 1e3, np.float32)])
    table, state = apply(table, state, jnp.asarray(ids), jnp.asarray(g_rows))
  np.testing.assert_allclose(table, ws_dense[-1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SPARSE_KW))
def test_sparse_untouched_rows_and_state_bit_identical(name):
  sp = optim.get_sparse_optimizer(name, **SPARSE_KW[name])
  table = jnp.asarray(np.random.RandomState(21).randn(N, W), jnp.float32)
  state = sp.init(table)
  # Two warm-up steps over all rows so the state is not trivially constant.
  for step in range(2):
    table, state = optim.sparse_apply(sp, table, state, jnp.arange(N),
                                      jnp.asarray(rand_grads(22 + step, 1, (N, W))[0]))
  touched = np.array([5, 2], np.int32)
  ids = jnp.asarray(np.array([5, 2, N, N], np.int32))
  g = np.random.RandomState(24).randn(4, W).astype(np.float32)
  g[2:] = np.nan                                             # padding grads are garbage
  new_table, new_state = optim.sparse_apply(sp, table, state, ids, jnp.asarray(g))
  untouched = np.setdiff1d(np.arange(N), touched)
  assert np.array_equal(np.asarray(new_table)[untouched], np.asarray(table)[untouched])
  assert not np.any(np.isnan(np.asarray(new_table)))
  assert np.all(np.asarray(new_table)[touched] != np.asarray(table)[touched])
  for old, new in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
    assert new.shape == old.shape
    if not optim.is_row_leaf(old, N):   # a global leaf: the step count
      assert old.ndim == 0 and int(new) == int(old) + 1
      continue
    assert np.array_equal(np.asarray(new)[untouched], np.asarray(old)[untouched])
    assert not np.any(np.isnan(np.asarray(new)))
  # Touched rows equal an unpadded application of the same rows.
  ref_table, ref_state = optim.sparse_apply(sp, table, state, jnp.asarray(touched),
                                            jnp.asarray(g[:2]))
  np.testing.assert_allclose(new_table, ref_table, rtol=1e-6, atol=0)
  for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(ref_state)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)


def test_padding_reads_zeros_and_writes_nothing():
  table = jnp.arange(12.0).reshape(4, 3)
  rows = optim.gather_rows(table, jnp.array([2, 4, 4]))
  np.testing.assert_array_equal(rows, [[6., 7., 8.], [0., 0., 0.], [0., 0., 0.]])
  out = optim.scatter_rows(table, jnp.array([4, 1]), jnp.full((2, 3), -1.0))
  expected = np.arange(12.0).reshape(4, 3)
  expected[1] = -1.0                                          # id 4 == N is dropped
  np.testing.assert_array_equal(out, expected)


def test_rowwise_adagrad_sparse_state_shape_and_values():
  sp = optim.get_sparse_optimizer("rowwise_adagrad", learning_rate=0.1,
                                  initial_accumulator_value=0.25)
  table = jnp.zeros((5, 4))
  state = sp.init(table)
  accumulator = optax.tree_utils.tree_get(state, "accumulator")
  assert accumulator.shape == (5, 1)
  np.testing.assert_array_equal(accumulator, 0.25)
  g = jnp.asarray([[1., 2., 3., 4.]])
  table, state = optim.sparse_apply(sp, table, state, jnp.array([3]), g)
  acc = 0.25 + np.mean([1., 4., 9., 16.])
  np.testing.assert_allclose(optax.tree_utils.tree_get(state, "accumulator")[3, 0], acc,
                             rtol=1e-6)
  np.testing.assert_allclose(table[3], -0.1 * np.array([1., 2., 3., 4.]) / (np.sqrt(acc) + 1e-8),
                             rtol=1e-6)


def test_sparse_learning_rate_schedule_counts_the_tables_updates():
  # The schedule's count is a global leaf: it counts the table's updates, whichever
  # rows they touch (row 1 four times, then row 0 at count 4: lr 0.6); a skipped
  # update (applied=False) neither moves a row nor counts.
  sched = optax.linear_schedule(1.0, 0.0, 10)
  sp = optim.get_sparse_optimizer("sgd", learning_rate=sched)
  table, state = jnp.zeros((2, 1)), sp.init(jnp.zeros((2, 1)))
  for _ in range(4):
    table, state = optim.sparse_apply(sp, table, state, jnp.array([1]), jnp.zeros((1, 1)))
  skipped = optim.sparse_apply(sp, table, state, jnp.array([2]), jnp.ones((1, 1)), applied=False)
  np.testing.assert_array_equal(skipped[0], table)
  assert int(optax.tree_utils.tree_get(skipped[1], "count")) == 4
  table, state = optim.sparse_apply(sp, table, state, jnp.array([0]), jnp.ones((1, 1)))
  np.testing.assert_allclose(table[0, 0], -0.6, rtol=1e-6)


def test_sparse_apply_bad_input_errors():
  sp = optim.get_sparse_optimizer("sgd", learning_rate=0.1)
  table = jnp.zeros((4, 3))
  with pytest.raises(ValueError, match="grad_UxW has shape"):
    optim.sparse_apply(sp, table, (), jnp.array([0, 1]), jnp.zeros((3, 3)))
  with pytest.raises(ValueError, match="ids_U must be integer"):
    optim.sparse_apply(sp, table, (), jnp.array([0.0]), jnp.zeros((1, 3)))
  with pytest.raises(ValueError, match="table_NxW must be 2-D"):
    optim.sparse_apply(sp, jnp.zeros(4), (), jnp.array([0]), jnp.zeros((1, 4)))
  with pytest.raises(ValueError, match=r"the state has structure"):
    optim.sparse_apply(sp, table, (jnp.zeros((3, 1)),), jnp.array([0]), jnp.zeros((1, 3)))
  with pytest.raises(ValueError, match="unknown optimizer 'nope'"):
    optim.get_sparse_optimizer("nope", learning_rate=0.1)
  with pytest.raises(TypeError, match=r"unknown argument\(s\) \['lr'\]"):
    optim.get_sparse_optimizer("ftrl", lr=0.1)
  with pytest.raises(ValueError, match="unknown optimizer 'nope'"):
    optim.get_optimizer("nope", learning_rate=0.1)
  with pytest.raises(ValueError, match="learning_rate_power must be a float <= 0"):
    optim.ftrl(0.1, learning_rate_power=0.5)


# ----------------------------------------------------------------------------
# No recompilation; convergence.
# ----------------------------------------------------------------------------

DENSE_KW = dict(SPARSE_KW)


@pytest.mark.parametrize("name", sorted(DENSE_KW))
def test_no_recompilation_on_second_call(name):
  opt = optim.get_optimizer(name, **DENSE_KW[name])
  sp = optim.get_sparse_optimizer(name, **DENSE_KW[name])
  traces = {"dense": 0, "sparse": 0}

  @jax.jit
  def dense_step(params, state, grads):
    traces["dense"] += 1
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  @jax.jit
  def sparse_step(table, state, ids, grads):
    traces["sparse"] += 1
    return optim.sparse_apply(sp, table, state, ids, grads)

  params = {"w": jnp.ones((4, 3)), "b": jnp.ones((3,))}
  state = opt.init(params)
  table = jnp.ones((6, 3))
  sstate = sp.init(table)
  for step in range(3):
    grads = jax.tree.map(lambda p: p * (step + 1.0), params)
    params, state = dense_step(params, state, grads)
    table, sstate = sparse_step(table, sstate, jnp.array([1, 6], jnp.int32),
                                jnp.ones((2, 3)))
  assert traces == {"dense": 1, "sparse": 1}


@pytest.mark.parametrize("name,kw,steps", [
    ("sgd", dict(learning_rate=0.1), 300),
    ("adagrad", dict(learning_rate=0.5), 300),
    ("rowwise_adagrad", dict(learning_rate=0.5), 300),
    ("ftrl", dict(learning_rate=0.5), 300),
    ("ogd", dict(learning_rate=0.5), 300),
    ("adamom", dict(learning_rate=0.02, ada_decay=0.99, mom_decay=0.9), 600),
    ("adam", dict(learning_rate=0.05), 600),
])
def test_convergence_on_quadratic(name, kw, steps):
  curvature = jnp.asarray([1.0, 3.0, 0.5])
  target = jnp.asarray([1.0, -2.0, 0.5])
  loss = lambda x: 0.5 * jnp.sum(curvature * (x - target) ** 2)
  opt = optim.get_optimizer(name, **kw)

  @jax.jit
  def run(x):
    def body(_, carry):
      x, state = carry
      updates, state = opt.update(jax.grad(loss)(x), state, x)
      return optax.apply_updates(x, updates), state
    return jax.lax.fori_loop(0, steps, body, (x, opt.init(x)))[0]

  x = run(jnp.zeros(3))
  assert float(loss(x)) < 1e-4 * float(loss(jnp.zeros(3))), (name, x)


# ----------------------------------------------------------------------------
# Delay compensation.
# ----------------------------------------------------------------------------

def test_delay_compensation_is_identity_without_staleness():
  grads = {"a": jnp.asarray(rand_grads(25, 1, (4, 2))[0])}
  params = {"a": jnp.asarray(rand_grads(26, 1, (4, 2))[0])}
  for adaptive in (False, True):
    dc = optim.delay_compensation(0.5, adaptive=adaptive)
    out, _ = dc.update(grads, dc.init(params), params, stale_params=params)
    assert np.array_equal(np.asarray(out["a"]), np.asarray(grads["a"]))


def test_delay_compensation_matches_numpy():
  rs = np.random.RandomState(27)
  gs = rand_grads(28, 4, (5,))
  w, w_stale = rs.randn(4, 5).astype(np.float32), rs.randn(4, 5).astype(np.float32)
  lam, decay, eps = 0.3, 0.9, 1e-7
  for adaptive in (False, True):
    dc = optim.delay_compensation(lam, adaptive=adaptive, mean_square_decay=decay, eps=eps)
    state = dc.init(jnp.zeros(5))
    ms = np.zeros(5)
    for t in range(4):
      out, state = dc.update(jnp.asarray(gs[t]), state, jnp.asarray(w[t]),
                             stale_params=jnp.asarray(w_stale[t]))
      g = gs[t].astype(np.float64)
      if adaptive:
        ms = decay * ms + (1 - decay) * g * g
        lam_t = lam / np.sqrt(ms + eps)
      else:
        lam_t = lam
      ref = g + lam_t * g * g * (w[t] - w_stale[t])
      np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_delay_compensation_chains_before_optimizer():
  opt = optax.chain(optim.delay_compensation(0.5), optax.sgd(0.1))
  params = jnp.asarray([1.0, 2.0])
  stale = jnp.asarray([0.0, 2.0])
  g = jnp.asarray([2.0, 2.0])
  updates, _ = jax.jit(lambda g, s, p, st: opt.update(g, s, p, stale_params=st))(
      g, opt.init(params), params, stale)
  np.testing.assert_allclose(updates, [-0.1 * (2 + 0.5 * 4 * 1), -0.1 * 2], rtol=1e-6)


# ----------------------------------------------------------------------------
# Stale-parameter simulator.
# ----------------------------------------------------------------------------

def test_stale_params_ring_buffer():
  buf = optim.stale_params_init({"w": jnp.zeros(2)}, capacity=3)
  for tau in range(5):
    np.testing.assert_array_equal(optim.stale_params_get(buf, tau)["w"], 0.0)
  for k in range(1, 6):
    buf = optim.stale_params_push(buf, {"w": jnp.full(2, float(k))})
  got = [float(optim.stale_params_get(buf, tau)["w"][0]) for tau in range(5)]
  assert got == [5.0, 4.0, 3.0, 3.0, 3.0]   # tau clipped to capacity - 1


def _async_sgd(schedule, steps, capacity, lr=0.1, dc=None):
  """SGD on a quadratic with gradients taken at stale parameters (jitted scan)."""
  curvature = jnp.asarray([1.0, 3.0])
  grad = lambda x: curvature * (x - jnp.asarray([1.0, -1.0]))
  opt = optax.sgd(lr) if dc is None else optax.chain(dc, optax.sgd(lr))

  @jax.jit
  def run(x0):
    def body(carry, step):
      x, state, buf = carry
      buf = optim.stale_params_push(buf, x)
      stale = optim.stale_params_get(buf, schedule(step))
      updates, state = opt.update(grad(stale), state, x, stale_params=stale)
      x = optax.apply_updates(x, updates)
      return (x, state, buf), x
    carry0 = (x0, opt.init(x0), optim.stale_params_init(x0, capacity))
    return jax.lax.scan(body, carry0, jnp.arange(steps, dtype=jnp.int32))[1]

  return np.asarray(run(jnp.zeros(2)))


def test_tau_zero_equals_synchronous():
  xs = _async_sgd(optim.fixed_staleness(0), 20, capacity=4)
  x = np.zeros(2, np.float32)
  ref = []
  for _ in range(20):
    x = x - np.float32(0.1) * (np.array([1., 3.], np.float32) * (x - np.array([1., -1.], np.float32)))
    ref.append(x)
  np.testing.assert_allclose(xs, np.stack(ref), rtol=1e-6, atol=1e-7)


def test_fixed_staleness_matches_delayed_gradient_reference():
  tau = 3
  xs = _async_sgd(optim.fixed_staleness(tau), 15, capacity=tau + 1)
  hist = [np.zeros(2)]
  for t in range(15):
    stale = hist[max(t - tau, 0)]
    hist.append(hist[-1] - 0.1 * np.array([1., 3.]) * (stale - np.array([1., -1.])))
  np.testing.assert_allclose(xs, np.stack(hist[1:]), rtol=1e-5, atol=1e-6)
  # Delay compensation pulls the stale gradient towards the fresh one: with the
  # exact Hessian diagonal as g*g it would be exact; here it must at least change it.
  xs_dc = _async_sgd(optim.fixed_staleness(tau), 15, tau + 1,
                     dc=optim.delay_compensation(0.5))
  assert not np.allclose(xs_dc, xs)


def test_staleness_schedules():
  steps = jnp.arange(8, dtype=jnp.int32)
  rr = jax.vmap(optim.round_robin_staleness(3))(steps)
  np.testing.assert_array_equal(rr, [0, 1, 2, 2, 2, 2, 2, 2])
  np.testing.assert_array_equal(optim.round_robin_worker(steps, 3), [0, 1, 2, 0, 1, 2, 0, 1])
  fx = jax.vmap(optim.fixed_staleness(5))(steps)
  np.testing.assert_array_equal(fx, [0, 1, 2, 3, 4, 5, 5, 5])
  key = jax.random.PRNGKey(0)
  many = jnp.arange(4000, dtype=jnp.int32)
  uni = np.asarray(jax.jit(jax.vmap(optim.random_staleness(key, 4)))(many))
  assert uni.min() == 0 and uni.max() == 4
  assert np.all(uni <= np.minimum(np.arange(4000), 4))
  np.testing.assert_array_equal(uni, jax.vmap(optim.random_staleness(key, 4))(many))
  other = np.asarray(jax.vmap(optim.random_staleness(jax.random.PRNGKey(1), 4))(many))
  assert not np.array_equal(uni, other)
  geo = np.asarray(jax.vmap(optim.random_staleness(key, 1000, "geometric", p=0.5))(many))[100:]
  assert geo.min() == 0
  assert abs(geo.mean() - 1.0) < 0.1          # E[failures before success] = (1-p)/p = 1
  with pytest.raises(ValueError, match="distribution must be"):
    optim.random_staleness(key, 3, "poisson")


def test_optim_does_not_import_flax():
  code = "import sys, rectrain.optim; assert 'flax' not in sys.modules, 'flax imported'"
  subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------
# Table optimizers are optax transforms: chains and aliases row-wise.
# ----------------------------------------------------------------------------

def test_chain_on_a_table_equals_the_dense_chain_on_touched_rows():
  # clip_by_global_norm sees the touched rows' gradient, which is the whole table's
  # gradient (untouched rows have none), so row-wise == dense for a stateless rule.
  tx = optax.chain(optax.clip_by_global_norm(0.5), optax.sgd(0.3))
  sp = optim.SparseOptimizer(tx)
  table0 = jnp.asarray(np.random.RandomState(31).randn(N, W), jnp.float32)
  touched = np.array([4, 1], np.int32)
  g = rand_grads(32, 1, (2, W), scale=3.0)[0]
  full = np.zeros((N, W), np.float32)
  full[touched] = g
  ws_dense, _ = run_dense(tx, table0, full[None])
  table, _ = optim.sparse_apply(sp, table0, sp.init(table0), jnp.asarray(touched), jnp.asarray(g))
  np.testing.assert_allclose(table, ws_dense[-1], rtol=1e-6, atol=1e-7)
  assert np.linalg.norm(np.asarray(table0 - table)) == pytest.approx(0.3 * 0.5, rel=1e-5)


def test_optax_alias_runs_row_wise_and_is_lazy():
  sp = optim.get_sparse_optimizer("adamw", learning_rate=0.1, weight_decay=0.5)
  table0 = jnp.ones((4, 2))
  table, state = optim.sparse_apply(sp, table0, sp.init(table0), jnp.array([2, 4]),
                                    jnp.ones((2, 2)))
  assert np.array_equal(np.asarray(table)[[0, 1, 3]], np.ones((3, 2)))  # untouched: no decay
  # Adam's first step is -lr * sign(g); AdamW adds -lr * wd * w.
  np.testing.assert_allclose(table[2], 1 - 0.1 - 0.1 * 0.5, rtol=1e-6)
  assert int(optax.tree_utils.tree_get(state, "count")) == 1


def test_config_chain_keys_reach_the_table_optimizer():
  from rectrain import configs
  from rectrain.train.build import build_optimizers
  config = configs.default_config()
  configs.apply_overrides(config, [
      "model.name=lr", "optim.sparse={'name': 'sgd', 'learning_rate': 1.0}",
      "optim.sparse.clip_norm=0.5", "optim.sparse.decoupled_weight_decay=0.1"])
  _, sparse = build_optimizers(config, ["linear"])
  table = jnp.full((3, 1), 2.0)
  new, _ = optim.sparse_apply(sparse["linear"], table, sparse["linear"].init(table),
                              jnp.array([0, 3]), jnp.array([[10.0], [0.0]]))
  # clipped to norm 0.5: w = 2 - 0.5, then decoupled decay: - 0.1 * 2.
  np.testing.assert_allclose(np.asarray(new)[:, 0], [2 - 0.5 - 0.2, 2.0, 2.0], rtol=1e-6)
  with pytest.raises(ValueError, match="optim.sparse: clip_norm must be a number >= 0"):
    configs.apply_overrides(config, ["optim.sparse.clip_norm=-1"])
    build_optimizers(config, ["linear"])
