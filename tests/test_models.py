"""Tests for rectrain.models: shapes, hand-computed parameter counts and NumPy references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rectrain import models
from rectrain.models import (CrossNetwork, TableSpec, build_model, count_params,
                             default_model_config, dot_interaction, example_inputs,
                             fm_second_order, init_tables, lookup)

NUM_ROWS = 1000
B = 8
F = 3
I = 2
D = 4

# Small hyperparameters per model, used by most tests.
SMALL = {
    "lr": {},
    "fm": {"embed_dim": D},
    "wide_deep": {"embed_dim": D, "mlp_dims": (5, 3)},
    "deepfm": {"embed_dim": D, "mlp_dims": (5, 3)},
    "dcnv2": {"embed_dim": D, "mlp_dims": (5, 3), "num_cross_layers": 2},
    "dlrm": {"embed_dim": D, "bottom_mlp_dims": (5,), "top_mlp_dims": (6,)},
    "dnn": {"embed_dim": D, "mlp_dims": (5, 3)},
}


def small_model(name, **overrides):
  config = ml_collections.ConfigDict({"name": name, **SMALL[name], **overrides})
  return build_model(config)


def make_inputs(model, num_dense=I, seed=0, emb_scale=0.5):
  """Random ids -> rows via init_tables/lookup (embedding rows scaled up), dense features."""
  key_t, key_ids, key_d = jax.random.split(jax.random.PRNGKey(seed), 3)
  specs = [TableSpec(s.name, s.dim, emb_scale) for s in model.table_specs()]
  tables = init_tables(key_t, specs, NUM_ROWS)
  ids_BxF = jax.random.randint(key_ids, (B, F), 0, NUM_ROWS)
  dense_BxI = jax.random.normal(key_d, (B, num_dense))
  return lookup(tables, ids_BxF), dense_BxI


def randomized_variables(model, rows, dense_BxI, seed=1):
  """model.init, then every dense parameter redrawn ~ N(0, 0.5^2) (so zero-init ones matter)."""
  variables = model.init(jax.random.PRNGKey(seed), rows, dense_BxI)
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(0.5 * rng.normal(size=x.shape), x.dtype), variables)


def np_tree(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), tree)


def np_dense(p, x):
  return x @ p["kernel"] + p["bias"] if "bias" in p else x @ p["kernel"]


def np_mlp(p, x, n_layers, activate_last=True):
  for k in range(n_layers):
    x = np_dense(p[f"dense_{k}"], x)
    if activate_last or k < n_layers - 1:
      x = np.maximum(x, 0.0)
  return x


def np_pairwise(emb_BxNxD, self_interaction=False):
  """Explicit double loop of <v_i, v_j>, i < j (i <= j with self), row-major order."""
  n = emb_BxNxD.shape[1]
  cols = []
  for i in range(n):
    for j in range(i if self_interaction else i + 1, n):
      cols.append(np.sum(emb_BxNxD[:, i] * emb_BxNxD[:, j], axis=1))
  return np.stack(cols, axis=1) if cols else np.zeros((emb_BxNxD.shape[0], 0))


def np_first_order(p, lin_BxFx1, dense_BxI):
  out = p["bias"] + lin_BxFx1[:, :, 0].sum(axis=1)
  if dense_BxI.shape[1]:
    out = out + dense_BxI @ p["w_dense"]
  return out


def np_deep_input(emb_BxFxD, dense_BxI):
  return np.concatenate([emb_BxFxD.reshape(emb_BxFxD.shape[0], -1), dense_BxI], axis=1)


def np_cross(p, x0, num_layers, low_rank=0):
  x = x0
  for l in range(num_layers):
    if low_rank:
      u, v = p[f"cross_{l}_u"], p[f"cross_{l}_v"]
      w = (x @ v["kernel"]) @ u["kernel"] + u["bias"]
    else:
      w = x @ p[f"cross_{l}"]["kernel"] + p[f"cross_{l}"]["bias"]
    x = x0 * w + x
  return x


def np_forward(name, model, params, rows, dense_BxI):
  """A NumPy re-implementation of every model, from the papers' formulas."""
  p = np_tree(params)
  rows = np_tree(rows)
  dense_BxI = np.asarray(dense_BxI, np.float64)
  emb = rows.get("embedding")
  if name == "lr":
    return np_first_order(p["first_order"], rows["linear"], dense_BxI)
  if name == "fm":
    return np_first_order(p["first_order"], rows["linear"], dense_BxI) + np_pairwise(emb).sum(1)
  if name in ("wide_deep", "deepfm"):
    h = np_mlp(p["mlp"], np_deep_input(emb, dense_BxI), len(model.mlp_dims))
    out = (np_first_order(p["first_order"], rows["linear"], dense_BxI)
           + (h @ p["deep_out"]["kernel"])[:, 0])
    if name == "deepfm":
      out = out + np_pairwise(emb).sum(1)
    return out
  if name == "dnn":
    h = np_mlp(p["mlp"], np_deep_input(emb, dense_BxI), len(model.mlp_dims))
    return np_dense(p["out"], h)[:, 0]
  if name == "dcnv2":
    x0 = np_deep_input(emb, dense_BxI)
    cross = np_cross(p.get("cross", {}), x0, model.num_cross_layers, model.cross_low_rank)
    n = len(model.mlp_dims)
    if model.structure == "stacked":
      h = np_mlp(p.get("mlp", {}), cross, n)
    else:
      h = np.concatenate([cross, np_mlp(p.get("mlp", {}), x0, n)], axis=1)
    return np_dense(p["out"], h)[:, 0]
  if name == "dlrm":
    if dense_BxI.shape[1]:
      z0 = np_mlp(p["bottom_mlp"], dense_BxI, len(model.bottom_mlp_dims) + 1)
      t = np.concatenate([z0[:, None, :], emb], axis=1)
      top_in = np.concatenate([z0, np_pairwise(t, model.interaction_self)], axis=1)
    else:
      top_in = np_pairwise(emb, model.interaction_self)
    h = np_mlp(p["top_mlp"], top_in, len(model.top_mlp_dims))
    return np_dense(p["out"], h)[:, 0]
  raise AssertionError(name)


# ---------------------------------------------------------------------------
# Tables.

def test_init_tables_shapes_and_distributions():
  specs = [TableSpec("linear", 1, 0.0), TableSpec("embedding", 8, 0.1),
           TableSpec("uni", 8, 0.3, init="uniform")]
  tables = init_tables(jax.random.PRNGKey(0), specs, 5000)
  assert {k: v.shape for k, v in tables.items()} == {
      "linear": (5000, 1), "embedding": (5000, 8), "uni": (5000, 8)}
  assert all(v.dtype == jnp.float32 for v in tables.values())
  np.testing.assert_array_equal(np.asarray(tables["linear"]), 0.0)
  emb = np.asarray(tables["embedding"])
  # Normal truncated at +-2 sigma: |x| <= 0.2, and std = 0.1 * 0.8796 (truncation factor).
  assert np.abs(emb).max() <= 0.2 + 1e-6
  assert abs(emb.std() - 0.1 * 0.87962566) < 0.002
  uni = np.asarray(tables["uni"])
  assert np.abs(uni).max() <= 0.3 and uni.min() < -0.29 and uni.max() > 0.29
  assert abs(uni.std() - 0.3 / np.sqrt(3.0)) < 0.003
  # Deterministic in the key; table i depends only on (key, i).
  again = init_tables(jax.random.PRNGKey(0), specs[:2], 5000)
  np.testing.assert_array_equal(np.asarray(again["embedding"]), emb)
  other = init_tables(jax.random.PRNGKey(1), specs[:2], 5000)
  assert not np.allclose(np.asarray(other["embedding"]), emb)


def test_init_tables_and_specs_reject_bad_input():
  with pytest.raises(ValueError, match="duplicate table names.*'a'"):
    init_tables(jax.random.PRNGKey(0), [TableSpec("a", 1, 0.0), TableSpec("a", 2, 0.1)], 10)
  with pytest.raises(ValueError, match="num_rows"):
    init_tables(jax.random.PRNGKey(0), [TableSpec("a", 1, 0.0)], 0)
  with pytest.raises(ValueError, match="'e'.*dim"):
    TableSpec("e", 0, 0.1)
  with pytest.raises(ValueError, match="'e'.*init_scale"):
    TableSpec("e", 4, -1.0)
  with pytest.raises(ValueError, match="'e'.*init must be"):
    TableSpec("e", 4, 0.1, init="normal")


def test_lookup_matches_numpy_indexing_and_padding_gathers_zeros():
  tables = init_tables(jax.random.PRNGKey(0), [TableSpec("linear", 1, 0.5),
                                                TableSpec("embedding", 3, 0.5)], 20)
  ids = np.array([[0, 5, 19], [7, 7, 20]])  # 20 == num_rows: the padding id.
  rows = lookup(tables, ids)
  for name in tables:
    want = np.asarray(tables[name])[np.minimum(ids, 19)]
    want[1, 2] = 0.0
    np.testing.assert_array_equal(np.asarray(rows[name]), want)
  with pytest.raises(ValueError, match="integers"):
    lookup(tables, np.zeros((2, 3), np.float32))


# ---------------------------------------------------------------------------
# Every model: specs, shapes, gradients, jit, purity, NumPy reference.

EXPECTED_TABLES = {
    "lr": ("linear",), "fm": ("linear", "embedding"), "wide_deep": ("linear", "embedding"),
    "deepfm": ("linear", "embedding"), "dcnv2": ("embedding",), "dlrm": ("embedding",),
    "dnn": ("embedding",),
}


def test_registry_covers_every_model():
  # DIN reads a behaviour sequence besides the fields: tests/test_multihot.py.
  assert set(models.MODELS) - {"din"} == set(EXPECTED_TABLES) == set(SMALL)


@pytest.mark.parametrize("name", sorted(EXPECTED_TABLES))
def test_table_specs_on_unbound_module(name):
  model = build_model(default_model_config(name))
  specs = model.table_specs()
  assert tuple(s.name for s in specs) == EXPECTED_TABLES[name]
  for s in specs:
    if s.name == "linear":
      assert (s.dim, s.init_scale) == (1, 0.0)
    else:
      assert (s.dim, s.init_scale) == (16, 0.01)


@pytest.mark.parametrize("num_dense", [I, 0])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_matches_numpy_reference(name, num_dense):
  model = small_model(name)
  rows, dense_BxI = make_inputs(model, num_dense)
  variables = randomized_variables(model, rows, dense_BxI)
  logits_B = model.apply(variables, rows, dense_BxI)
  assert logits_B.shape == (B,) and logits_B.dtype == jnp.float32
  want_B = np_forward(name, model, variables["params"], rows, dense_BxI)
  assert np.std(want_B) > 1e-3  # the reference is not trivially constant
  np.testing.assert_allclose(np.asarray(logits_B), want_B, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [
    {"structure": "parallel"},
    {"cross_low_rank": 2},
    {"cross_low_rank": 2, "structure": "parallel", "mlp_dims": ()},
    {"num_cross_layers": 0},
])
def test_dcnv2_variants_match_numpy_reference(overrides):
  model = small_model("dcnv2", **overrides)
  rows, dense_BxI = make_inputs(model)
  variables = randomized_variables(model, rows, dense_BxI)
  want_B = np_forward("dcnv2", model, variables["params"], rows, dense_BxI)
  np.testing.assert_allclose(np.asarray(model.apply(variables, rows, dense_BxI)), want_B,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_dense", [I, 0])
def test_dlrm_self_interaction_matches_numpy_reference(num_dense):
  model = small_model("dlrm", interaction_self=True)
  rows, dense_BxI = make_inputs(model, num_dense)
  variables = randomized_variables(model, rows, dense_BxI)
  want_B = np_forward("dlrm", model, variables["params"], rows, dense_BxI)
  np.testing.assert_allclose(np.asarray(model.apply(variables, rows, dense_BxI)), want_B,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_gradients_reach_every_declared_table(name):
  model = small_model(name)
  rows, dense_BxI = make_inputs(model)
  variables = model.init(jax.random.PRNGKey(0), rows, dense_BxI)  # the real init
  grads = jax.grad(lambda r: jnp.sum(model.apply(variables, r, dense_BxI)))(rows)
  assert set(grads) == set(EXPECTED_TABLES[name])
  for table, g in grads.items():
    g = np.asarray(g)
    assert g.shape == rows[table].shape and np.all(np.isfinite(g))
    # Every field of the batch receives some gradient in this table.
    assert np.all(np.abs(g).sum(axis=(0, 2)) > 0), (table, np.abs(g).sum(axis=(0, 2)))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_jit_matches_eager_without_recompiling_and_is_pure(name):
  model = small_model(name)
  rows, dense_BxI = make_inputs(model)
  variables = randomized_variables(model, rows, dense_BxI)
  apply = jax.jit(model.apply)
  eager_B = np.asarray(model.apply(variables, rows, dense_BxI))
  np.testing.assert_allclose(np.asarray(apply(variables, rows, dense_BxI)), eager_B,
                             rtol=1e-6, atol=1e-6)
  rows2, dense2 = make_inputs(model, seed=5)
  other_B = np.asarray(apply(variables, rows2, dense2))
  assert apply._cache_size() == 1
  assert not np.allclose(other_B, eager_B)
  # Pure: the same variables and inputs give bit-identical outputs.
  np.testing.assert_array_equal(np.asarray(model.apply(variables, rows, dense_BxI)), eager_B)
  # Init is a function of the key.
  v1 = model.init(jax.random.PRNGKey(3), rows, dense_BxI)
  v2 = model.init(jax.random.PRNGKey(3), rows, dense_BxI)
  jax.tree_util.tree_map(np.testing.assert_array_equal, v1, v2)


# ---------------------------------------------------------------------------
# Building blocks against explicit computations.

def test_fm_second_order_equals_explicit_pairwise_sum():
  emb_BxFxD = np.random.default_rng(0).normal(size=(B, 5, D)).astype(np.float32)
  want_B = np.zeros(B)
  for i in range(5):
    for j in range(i + 1, 5):
      want_B += np.sum(emb_BxFxD[:, i].astype(np.float64) * emb_BxFxD[:, j], axis=1)
  np.testing.assert_allclose(np.asarray(fm_second_order(jnp.asarray(emb_BxFxD))), want_B,
                             rtol=1e-5, atol=1e-5)


def test_lr_logit_equals_explicit_sum():
  model = small_model("lr")
  lin_BxFx1 = np.random.default_rng(1).normal(size=(B, F, 1)).astype(np.float32)
  dense_BxI = np.random.default_rng(2).normal(size=(B, I)).astype(np.float32)
  variables = {"params": {"first_order": {"bias": jnp.float32(0.25),
                                           "w_dense": jnp.array([2.0, -3.0])}}}
  got_B = model.apply(variables, {"linear": lin_BxFx1}, dense_BxI)
  want_B = [0.25 + sum(lin_BxFx1[b, f, 0] for f in range(F))
            + 2.0 * dense_BxI[b, 0] - 3.0 * dense_BxI[b, 1] for b in range(B)]
  np.testing.assert_allclose(np.asarray(got_B), want_B, rtol=1e-6, atol=1e-6)


def test_linear_tables_and_biases_start_at_zero():
  # LR at init predicts logit 0 for any input: zero linear rows, zero bias and dense weights.
  model = small_model("lr")
  tables = init_tables(jax.random.PRNGKey(0), model.table_specs(), NUM_ROWS)
  rows = lookup(tables, np.arange(B * F).reshape(B, F))
  dense_BxI = jnp.ones((B, I))
  variables = model.init(jax.random.PRNGKey(0), rows, dense_BxI)
  np.testing.assert_array_equal(np.asarray(model.apply(variables, rows, dense_BxI)), 0.0)


@pytest.mark.parametrize("low_rank", [0, 3])
def test_cross_network_matches_numpy(low_rank):
  x0_BxX = np.random.default_rng(3).normal(size=(B, 7)).astype(np.float32)
  net = CrossNetwork(num_layers=3, low_rank=low_rank)
  variables = net.init(jax.random.PRNGKey(0), x0_BxX)
  variables = jax.tree_util.tree_map(lambda k: k + 0.1, variables)  # nonzero biases
  p = np_tree(variables["params"])
  x0 = x0_BxX.astype(np.float64)
  x = x0
  for l in range(3):  # x_{l+1} = x0 * (W_l x_l + b_l) + x_l, written out per example.
    nxt = np.empty_like(x)
    for b in range(B):
      if low_rank:
        u = p[f"cross_{l}_u"]["kernel"].T          # (X, r)
        v = p[f"cross_{l}_v"]["kernel"]            # (X, r)
        w_x = u @ (v.T @ x[b]) + p[f"cross_{l}_u"]["bias"]
      else:
        w_x = p[f"cross_{l}"]["kernel"].T @ x[b] + p[f"cross_{l}"]["bias"]
      nxt[b] = x0[b] * w_x + x[b]
    x = nxt
  np.testing.assert_allclose(np.asarray(net.apply(variables, x0_BxX)), x, rtol=1e-5, atol=1e-5)


def test_dot_interaction_equals_explicit_dot_products():
  t_BxNxD = np.random.default_rng(4).normal(size=(B, 4, D)).astype(np.float32)
  got = np.asarray(dot_interaction(jnp.asarray(t_BxNxD)))
  assert got.shape == (B, 6)
  pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
  for k, (i, j) in enumerate(pairs):
    np.testing.assert_allclose(got[:, k], np.einsum("bd,bd->b", t_BxNxD[:, i], t_BxNxD[:, j]),
                               rtol=1e-5, atol=1e-5)
  with_self = np.asarray(dot_interaction(jnp.asarray(t_BxNxD), self_interaction=True))
  assert with_self.shape == (B, 10)
  np.testing.assert_allclose(with_self[:, 0], np.sum(t_BxNxD[:, 0] ** 2, axis=1), rtol=1e-5)


# ---------------------------------------------------------------------------
# Parameter counts, written out by hand.

def _counts(name, num_dense=I, **overrides):
  return count_params(small_model(name, **overrides), NUM_ROWS, F, num_dense)


def test_param_counts_hand_computed():
  # F=3, I=2, D=4, N=1000. X = F*D + I = 14 (deep input width); MLP (5, 3).
  # LR: bias 1 + w_dense I=2 -> 3 dense; linear table N*1.
  assert _counts("lr") == {"dense": 3, "table/linear": 1000, "sparse": 1000,
                           "total": 1003, "state": 0}
  # FM: same dense part as LR (3); tables N*1 + N*4 = 5000.
  assert _counts("fm") == {"dense": 3, "table/linear": 1000, "table/embedding": 4000,
                           "sparse": 5000, "total": 5003, "state": 0}
  # W&D / DeepFM: first order 3; MLP 14*5+5 = 75, 5*3+3 = 18; head 3 (no bias) -> 99.
  for name in ("wide_deep", "deepfm"):
    assert _counts(name) == {"dense": 99, "table/linear": 1000, "table/embedding": 4000,
                             "sparse": 5000, "total": 5099, "state": 0}
  # DNN: MLP 75 + 18; head 3+1 = 4 -> 97; embedding table 4000.
  assert _counts("dnn") == {"dense": 97, "table/embedding": 4000, "sparse": 4000,
                            "total": 4097, "state": 0}
  # DCNv2 stacked, 2 full-rank cross layers: 2*(14*14+14) = 420; MLP 93; head 3+1 = 4 -> 517.
  assert _counts("dcnv2")["dense"] == 517
  # Parallel: cross 420, MLP 93, head (14+3)+1 = 18 -> 531.
  assert _counts("dcnv2", structure="parallel")["dense"] == 531
  # Low rank r=2: per layer U,V 2*14*2 + b 14 = 70 -> 140; + 93 + 4 = 237.
  assert _counts("dcnv2", cross_low_rank=2)["dense"] == 237
  # DLRM, I=2: bottom (5, D=4): 2*5+5 = 15, 5*4+4 = 24 -> 39. N = F+1 = 4 vectors,
  # P = 4*3/2 = 6 pairs, top input 4+6 = 10: 10*6+6 = 66; head 6+1 = 7 -> 112.
  assert _counts("dlrm") == {"dense": 112, "table/embedding": 4000, "sparse": 4000,
                             "total": 4112, "state": 0}
  # DLRM with self interaction: P = 10, top input 14: 14*6+6 = 90 -> 39+90+7 = 136.
  assert _counts("dlrm", interaction_self=True)["dense"] == 136
  # DLRM, I=0: no bottom MLP; P = 3*2/2 = 3; top 3*6+6 = 24; head 7 -> 31.
  assert _counts("dlrm", num_dense=0)["dense"] == 31
  # LR, I=0: bias only.
  assert _counts("lr", num_dense=0)["dense"] == 1
  # DNN with batch norm: + scale and bias per hidden unit 2*(5+3) = 16 -> 113;
  # state: running mean and variance 2*(5+3) = 16.
  with_bn = _counts("dnn", batch_norm=True)
  assert (with_bn["dense"], with_bn["state"]) == (113, 16)


def test_param_count_deepfm_criteo_defaults():
  # Criteo: F=26, I=13, D=16, MLP (400, 400, 400), N = 26 * 2**18.
  # X = 26*16 + 13 = 429; MLP 429*400+400 = 172000, 2 * (400*400+400) = 320800;
  # head 400; first order 1 + 13 = 14 -> 493214 dense.
  n = 26 * 2**18
  counts = count_params(build_model(default_model_config("deepfm")), n, 26, 13)
  assert counts["dense"] == 493214
  assert counts["table/linear"] == n and counts["table/embedding"] == 16 * n
  assert counts["total"] == 493214 + 17 * n


# ---------------------------------------------------------------------------
# Configs.

def test_default_model_configs():
  deepfm = default_model_config("deepfm")
  assert (deepfm.embed_dim, tuple(deepfm.mlp_dims)) == (16, (400, 400, 400))
  assert tuple(default_model_config("wide_deep").mlp_dims) == (400, 400, 400)
  dcn = default_model_config("dcnv2")
  assert (dcn.num_cross_layers, dcn.cross_low_rank, dcn.structure) == (3, 0, "stacked")
  dlrm = default_model_config("dlrm")
  assert tuple(dlrm.bottom_mlp_dims) == (512, 256) and tuple(dlrm.top_mlp_dims) == (512, 256)
  for name in models.MODELS:
    config = default_model_config(name)
    assert config.name == name
    model = build_model(config)
    assert isinstance(model, models.MODELS[name])
    for key, value in config.items():
      if key != "name":
        assert getattr(model, key) == value


def test_build_model_accepts_lists_and_overrides():
  config = default_model_config("deepfm")
  config.mlp_dims = [7, 2]
  config.embed_dim = 3
  model = build_model(config)
  assert model.mlp_dims == (7, 2) and model.embed_dim == 3
  assert count_params(model, 10, 2, 0)["dense"] == 1 + (6 * 7 + 7) + (7 * 2 + 2) + 2


def test_build_model_errors_name_the_problem():
  with pytest.raises(ValueError, match="unknown model 'xgboost'"):
    build_model(ml_collections.ConfigDict({"name": "xgboost"}))
  with pytest.raises(ValueError, match="unknown model 'xgboost'"):
    default_model_config("xgboost")
  with pytest.raises(ValueError, match="no key 'name'"):
    build_model(ml_collections.ConfigDict({"embed_dim": 4}))
  with pytest.raises(ValueError, match="'num_cross_layers'.*not a hyperparameter of 'deepfm'"):
    build_model(ml_collections.ConfigDict({"name": "deepfm", "num_cross_layers": 2}))
  bad_values = [
      ("deepfm", "embed_dim", 0), ("deepfm", "embed_dim", 4.0), ("deepfm", "mlp_dims", (5, 0)),
      ("dcnv2", "structure", "diagonal"), ("dcnv2", "cross_low_rank", -1),
      ("dnn", "dropout_rate", 1.0), ("fm", "embed_init_scale", -0.1),
      ("fm", "embed_init", "normal"), ("dlrm", "interaction_self", 1),
  ]
  for name, key, value in bad_values:
    config = default_model_config(name)
    with config.ignore_type():
      config[key] = value
    with pytest.raises(ValueError, match=f"'{key}'"):
      build_model(config)


def test_bad_inputs_name_the_table():
  model = small_model("deepfm")
  rows, dense_BxI = make_inputs(model)
  variables = model.init(jax.random.PRNGKey(0), rows, dense_BxI)
  with pytest.raises(ValueError, match="no table 'linear'"):
    model.apply(variables, {"embedding": rows["embedding"]}, dense_BxI)
  with pytest.raises(ValueError, match=r"rows\['embedding'\] must have shape"):
    model.apply(variables, {**rows, "embedding": rows["embedding"][:, :, :2]}, dense_BxI)
  with pytest.raises(ValueError, match=r"rows\['embedding'\] has 2 fields"):
    model.apply(variables, {**rows, "embedding": rows["embedding"][:, :2]}, dense_BxI)
  with pytest.raises(ValueError, match="dense_BxI must be 2-D"):
    model.apply(variables, rows, dense_BxI[:, 0])


# ---------------------------------------------------------------------------
# Optional stochastic / stateful layers.

def test_dropout_only_in_training_and_uses_dropout_rng():
  model = small_model("dnn", dropout_rate=0.5, mlp_dims=(64,))
  rows, dense_BxI = make_inputs(model)
  variables = model.init(jax.random.PRNGKey(0), rows, dense_BxI)
  no_dropout = small_model("dnn", mlp_dims=(64,))
  eval_B = np.asarray(model.apply(variables, rows, dense_BxI))
  np.testing.assert_array_equal(eval_B, np.asarray(no_dropout.apply(variables, rows, dense_BxI)))
  train1 = np.asarray(model.apply(variables, rows, dense_BxI, train=True,
                                  rngs={"dropout": jax.random.PRNGKey(1)}))
  train1b = np.asarray(model.apply(variables, rows, dense_BxI, train=True,
                                   rngs={"dropout": jax.random.PRNGKey(1)}))
  train2 = np.asarray(model.apply(variables, rows, dense_BxI, train=True,
                                  rngs={"dropout": jax.random.PRNGKey(2)}))
  np.testing.assert_array_equal(train1, train1b)
  assert not np.allclose(train1, eval_B) and not np.allclose(train1, train2)
  with pytest.raises(Exception, match="dropout"):
    model.apply(variables, rows, dense_BxI, train=True)


def test_batch_norm_updates_running_statistics_in_training():
  model = small_model("dnn", batch_norm=True)
  rows, dense_BxI = make_inputs(model)
  variables = model.init(jax.random.PRNGKey(0), rows, dense_BxI)
  assert set(variables) == {"params", "batch_stats"}
  logits_B, updated = model.apply(variables, rows, dense_BxI, train=True,
                                  mutable=["batch_stats"])
  assert logits_B.shape == (B,)
  mean0 = np.asarray(updated["batch_stats"]["mlp"]["bn_0"]["mean"])
  assert np.any(mean0 != 0.0)
  # Evaluation uses the running averages and leaves them alone.
  assert model.apply(variables, rows, dense_BxI).shape == (B,)


def test_example_inputs_initialise_every_model():
  for name in SMALL:
    model = small_model(name)
    rows, dense_BxI = example_inputs(model, F, I, batch_size=2)
    assert {k: v.shape for k, v in rows.items()} == {
        s.name: (2, F, s.dim) for s in model.table_specs()}
    variables = model.init(jax.random.PRNGKey(0), rows, dense_BxI)
    assert isinstance(variables, dict) and "params" in variables
    assert isinstance(model, nn.Module)
