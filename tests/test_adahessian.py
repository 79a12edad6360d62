"""Tests for eahes_jax.adahessian (docs/algorithms.md §2)."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eahes_jax.adahessian import ScaleByAdaHessianState
from eahes_jax.adahessian import adahessian
from eahes_jax.adahessian import elastic_adam
from eahes_jax.adahessian import scale_by_adahessian
from eahes_jax.adahessian import spatial_average_abs
from eahes_jax.hessian import hutchinson_diag

_SHAPES = {
    "conv": {"kernel": (3, 3, 2, 4), "bias": (4,)},   # flax HWIO
    "conv1d": {"kernel": (3, 2, 4)},                  # flax WIO
    "dense": {"kernel": (5, 4), "bias": (4,)},
}
_NUM_STEPS = 5


def _random_tree(rng, scale=1.0):
  return jax.tree_util.tree_map(
      lambda shape: (scale * rng.normal(size=shape)).astype(np.float32),
      _SHAPES, is_leaf=lambda x: isinstance(x, tuple))


def _sequences(seed=0, num_steps=_NUM_STEPS, grad_scale=1.0):
  rng = np.random.default_rng(seed)
  params = _random_tree(rng)
  grads = [_random_tree(rng, grad_scale) for _ in range(num_steps)]
  diags = [_random_tree(rng) for _ in range(num_steps)]
  return params, grads, diags


def _numpy_adahessian(params, grads, diags, lrs, *, b1=0.9, b2=0.999,
                      eps=1e-4, hessian_power=1.0, weight_decay=0.0,
                      spatial_average=True):
  """Plain float64 NumPy transcription of docs/algorithms.md §2, steps 1-5.

  Returns the list of per-step updates (pytrees like params).
  """
  leaves, treedef = jax.tree_util.tree_flatten(params)
  theta = [np.asarray(p, np.float64) for p in leaves]
  m = [np.zeros_like(p) for p in theta]
  v = [np.zeros_like(p) for p in theta]
  all_updates = []
  for t, (g_tree, d_tree, lr) in enumerate(zip(grads, diags, lrs), start=1):
    g_leaves = jax.tree_util.tree_leaves(g_tree)
    d_leaves = jax.tree_util.tree_leaves(d_tree)
    step_updates = []
    for i, (g, d) in enumerate(zip(g_leaves, d_leaves)):
      g = np.asarray(g, np.float64)
      d = np.abs(np.asarray(d, np.float64))
      if spatial_average and d.ndim == 4:    # HWIO: space is axes (0, 1)
        d = np.broadcast_to(d.mean(axis=(0, 1), keepdims=True), d.shape)
      elif spatial_average and d.ndim == 3:  # WIO: space is axis 0
        d = np.broadcast_to(d.mean(axis=0, keepdims=True), d.shape)
      m[i] = b1 * m[i] + (1 - b1) * g
      v[i] = b2 * v[i] + (1 - b2) * d**2
      bc1 = 1 - b1**t
      bc2 = 1 - b2**t
      denom = np.sqrt(v[i] / bc2)**hessian_power + eps
      update = -lr * ((m[i] / bc1) / denom + weight_decay * theta[i])
      theta[i] = theta[i] + update
      step_updates.append(update)
    all_updates.append(jax.tree_util.tree_unflatten(treedef, step_updates))
  return all_updates


def _run_optax(opt, params, grads, diags):
  params = jax.tree_util.tree_map(jnp.asarray, params)
  update = jax.jit(lambda g, s, p, d: opt.update(g, s, p, hessian_diag=d))
  state = opt.init(params)
  all_updates = []
  for g, d in zip(grads, diags):
    updates, state = update(g, state, params, d)
    params = optax.apply_updates(params, updates)
    all_updates.append(updates)
  return all_updates, state


@pytest.mark.parametrize("hessian_power", [1.0, 0.5])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("spatial_average", [True, False])
def test_matches_numpy_reference(hessian_power, weight_decay, spatial_average):
  lr = 0.01
  params, grads, diags = _sequences()
  opt = adahessian(lr, weight_decay=weight_decay, hessian_power=hessian_power,
                   spatial_average=spatial_average)
  got, state = _run_optax(opt, params, grads, diags)
  expected = _numpy_adahessian(
      params, grads, diags, [lr] * _NUM_STEPS, hessian_power=hessian_power,
      weight_decay=weight_decay, spatial_average=spatial_average)
  for got_t, expected_t in zip(got, expected):
    chex.assert_trees_all_close(got_t, expected_t, rtol=2e-5, atol=1e-7)
  assert state[0].count == _NUM_STEPS
  assert state[0].count.dtype == jnp.int32


def test_spatial_average_abs_axes():
  d = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 2, 4)),
                  jnp.float32)
  out = spatial_average_abs(d)
  expected = np.broadcast_to(
      np.abs(np.asarray(d)).mean(axis=(0, 1), keepdims=True), d.shape)
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  # Averaging over channels (PyTorch's OIHW axes) would give a different result.
  assert not np.allclose(out, np.broadcast_to(
      np.abs(np.asarray(d)).mean(axis=(2, 3), keepdims=True), d.shape))

  dense = jnp.asarray([[-1.0, 2.0], [3.0, -4.0]])
  np.testing.assert_array_equal(spatial_average_abs(dense), jnp.abs(dense))
  bias = jnp.asarray([-1.0, 0.5])
  np.testing.assert_array_equal(spatial_average_abs(bias), jnp.abs(bias))


def test_composes_in_chain_with_clipping_and_schedule():
  params, grads, diags = _sequences(seed=2, grad_scale=3.0)
  sched = optax.exponential_decay(0.05, transition_steps=1, decay_rate=0.5)
  opt = optax.chain(
      optax.clip_by_global_norm(1.0),
      scale_by_adahessian(b1=0.8, b2=0.99, eps=1e-3),
      optax.scale_by_learning_rate(sched),
  )
  got, _ = _run_optax(opt, params, grads, diags)

  def clip(tree):
    norm = math.sqrt(sum(
        float(np.sum(np.asarray(x, np.float64)**2))
        for x in jax.tree_util.tree_leaves(tree)))
    assert norm > 1.0  # clipping is active in this test
    return jax.tree_util.tree_map(lambda x: np.asarray(x) / norm, tree)

  expected = _numpy_adahessian(
      params, [clip(g) for g in grads], diags,
      [0.05 * 0.5**t for t in range(_NUM_STEPS)], b1=0.8, b2=0.99, eps=1e-3)
  for got_t, expected_t in zip(got, expected):
    chex.assert_trees_all_close(got_t, expected_t, rtol=2e-5, atol=1e-7)


def test_jit_vmap_over_workers():
  num_workers = 3
  opt = adahessian(0.01, weight_decay=0.1, hessian_power=0.5)
  rng = np.random.default_rng(3)
  stack = lambda: jax.tree_util.tree_map(
      lambda *xs: jnp.stack(xs),
      *[_random_tree(rng) for _ in range(num_workers)])
  params, grads, diags = stack(), stack(), stack()

  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def update(g, s, p, d):
    return jax.vmap(lambda g, s, p, d: opt.update(g, s, p, hessian_diag=d))(
        g, s, p, d)

  state = jax.vmap(opt.init)(params)
  updates, state = update(grads, state, params, diags)
  updates2, state2 = update(grads, state, params, diags)  # no retrace

  single_update = jax.jit(
      lambda g, s, p, d: opt.update(g, s, p, hessian_diag=d))
  for i in range(num_workers):
    take = lambda t, i=i: jax.tree_util.tree_map(lambda x: x[i], t)
    s = opt.init(take(params))
    u1, s = single_update(take(grads), s, take(params), take(diags))
    u2, s = single_update(take(grads), s, take(params), take(diags))
    chex.assert_trees_all_close(take(updates), u1, rtol=1e-6)
    chex.assert_trees_all_close(take(updates2), u2, rtol=1e-6)
  np.testing.assert_array_equal(state2[0].count, [2, 2, 2])


def test_state_dtypes_follow_params():
  params = {"w": jnp.ones((2, 3), jnp.bfloat16), "b": jnp.ones((3,))}
  opt = scale_by_adahessian()
  state = opt.init(params)
  assert isinstance(state, ScaleByAdaHessianState)
  chex.assert_trees_all_equal_dtypes(state.mu, params)
  chex.assert_trees_all_equal_dtypes(state.nu, params)
  grads = jax.tree_util.tree_map(lambda x: 0.5 * x, params)
  updates, state = opt.update(grads, state, hessian_diag=params)
  chex.assert_trees_all_equal_dtypes(updates, params)
  chex.assert_trees_all_equal_dtypes(state.mu, params)
  chex.assert_trees_all_equal_dtypes(state.nu, params)


def test_zero_eps_is_guarded():
  params = {"w": jnp.ones((2, 2))}
  zeros = {"w": jnp.zeros((2, 2))}
  opt = scale_by_adahessian(eps=0.0)
  updates, _ = opt.update(zeros, opt.init(params), hessian_diag=zeros)
  # 0/0 without the guard.
  np.testing.assert_array_equal(updates["w"], np.zeros((2, 2)))


def test_minimizes_quadratic_with_hutchinson():
  coeffs = {"a": jnp.array([1.0, 10.0, 0.1]), "b": jnp.array([[2.0, 5.0]])}
  loss_fn = lambda p: sum(
      jnp.sum(c * x**2) for c, x in zip(jax.tree_util.tree_leaves(coeffs),
                                        jax.tree_util.tree_leaves(p)))
  params = {"a": jnp.array([1.0, -1.0, 2.0]), "b": jnp.array([[1.5, -0.5]])}
  opt = adahessian(0.1)

  def step(carry, key):
    p, s = carry
    loss, grads, diag = hutchinson_diag(loss_fn, p, key)
    updates, s = opt.update(grads, s, p, hessian_diag=diag)
    return (optax.apply_updates(p, updates), s), loss

  keys = jax.random.split(jax.random.key(0), 100)
  _, losses = jax.jit(lambda c: jax.lax.scan(step, c, keys))(
      (params, opt.init(params)))
  assert losses[-1] < 1e-2 * losses[0]


def test_missing_hessian_diag_raises_clear_error():
  params = {"w": jnp.ones((2,))}
  for opt in (scale_by_adahessian(), adahessian(0.01)):
    with pytest.raises(ValueError, match="hessian_diag=.*hutchinson_diag"):
      opt.update(params, opt.init(params), params)


@pytest.mark.parametrize(
    "bad_diag, match",
    [
        ({"w": jnp.ones((2,))}, "tree structure"),
        ({"w": jnp.ones((2,)), "b": jnp.ones((3,)), "x": jnp.ones(())},
         "tree structure"),
        ({"w": jnp.ones((2,)), "b": jnp.ones((4,))}, r"\['b'\].*shape"),
    ],
)
def test_mismatched_hessian_diag_raises(bad_diag, match):
  params = {"w": jnp.ones((2,)), "b": jnp.ones((3,))}
  opt = scale_by_adahessian()
  with pytest.raises(ValueError, match=match):
    opt.update(params, opt.init(params), hessian_diag=bad_diag)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"b1": -0.1}, "b1"),
        ({"b1": 1.0}, "b1"),
        ({"b2": 1.0}, "b2"),
        ({"b2": -1e-3}, "b2"),
        ({"b2": float("nan")}, "b2"),
        ({"eps": -1e-8}, "eps"),
        ({"hessian_power": 0.0}, "hessian_power"),
        ({"hessian_power": 1.5}, "hessian_power"),
        ({"hessian_power": -0.5}, "hessian_power"),
    ],
)
def test_bad_construction_args_raise(kwargs, name):
  with pytest.raises(ValueError, match=name):
    scale_by_adahessian(**kwargs)
  with pytest.raises(ValueError, match=name):
    adahessian(0.01, **kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"learning_rate": -0.01}, "learning_rate"),
     ({"learning_rate": 0.01, "weight_decay": -0.1}, "weight_decay")],
)
def test_bad_adahessian_args_raise(kwargs, name):
  with pytest.raises(ValueError, match=name):
    adahessian(**kwargs)


def test_boundary_args_accepted():
  scale_by_adahessian(b1=0.0, b2=0.0, eps=0.0, hessian_power=1.0)
  adahessian(optax.constant_schedule(0.1), weight_decay=optax.constant_schedule(
      1e-4))


def test_elastic_adam_is_adahessian_with_the_squared_gradient():
  # With the Hessian diagonal replaced by the gradient itself (and no
  # spatial averaging), AdaHessian's update is Adam's with the same b1, b2,
  # eps: the only difference between the two methods is the denominator.
  params = {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array([0.1])}
  grads = [{"w": jnp.array([0.3, -0.2, 0.05]), "b": jnp.array([1.0])},
           {"w": jnp.array([-0.1, 0.4, 0.2]), "b": jnp.array([-0.5])}]
  adam = elastic_adam(0.01)
  ada = adahessian(0.01, spatial_average=False)
  sa, sh = adam.init(params), ada.init(params)
  for g in grads:
    ua, sa = adam.update(g, sa, params)
    uh, sh = ada.update(g, sh, params, hessian_diag=g)
    chex.assert_trees_all_close(ua, uh, rtol=1e-6)
