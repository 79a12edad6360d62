"""Tests for eahes_jax.hessian (docs/algorithms.md §1)."""

import functools

import chex
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest

from eahes_jax import hessian
from eahes_jax.hessian import rademacher_like

# Jitted once per (loss_fn, num_samples, has_aux): compiling the whole estimate
# is much faster than dispatching it op by op.
hutchinson_diag = jax.jit(
    hessian.hutchinson_diag, static_argnums=0,
    static_argnames=("num_samples", "has_aux"))


def _separable_quadratic():
  """f(x) = Σ c_i x_i² over a nested, multi-dtype pytree; diag(H) = 2c."""
  coeffs = {
      "a": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) - 5.0,
      "b": {"c": jnp.array([1.0, 2.0, 3.0, -4.0, 0.5], jnp.float32)},
      "low": jnp.array([3.0, -1.0, 2.0], jnp.bfloat16),
  }
  params = {
      "a": jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(3, 4),
      "b": {"c": jnp.array([0.3, -0.2, 0.1, 0.7, -1.5], jnp.float32)},
      "low": jnp.array([0.5, 0.25, -1.0], jnp.bfloat16),
  }

  def f(p):
    terms = jax.tree_util.tree_map(
        lambda c, x: jnp.sum(c.astype(jnp.float32) * x.astype(jnp.float32)**2),
        coeffs, p)
    return sum(jax.tree_util.tree_leaves(terms))

  return f, params, coeffs


@pytest.mark.parametrize("num_samples", [1, 3])
def test_exact_diagonal_for_separable_quadratic(num_samples):
  f, params, coeffs = _separable_quadratic()
  loss, grads, diag = hutchinson_diag(
      f, params, jax.random.key(0), num_samples=num_samples)

  expected_diag = jax.tree_util.tree_map(lambda c: 2 * c, coeffs)
  chex.assert_trees_all_equal_dtypes(diag, params)
  chex.assert_trees_all_equal(diag, expected_diag)
  # The primal of the jvp is the ordinary loss and gradient.
  ref_loss, ref_grads = jax.value_and_grad(f)(params)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  chex.assert_trees_all_close(grads, ref_grads, rtol=1e-6)


def _dense_quadratic():
  """x^T A x / 2 with x split over two leaves, so cross-leaf terms matter."""
  rng = np.random.default_rng(0)
  m = rng.normal(size=(6, 6))
  a = jnp.asarray((m + m.T) / 2, jnp.float32)
  params = {"u": jnp.ones((2,), jnp.float32), "w": jnp.ones((4,), jnp.float32)}

  def f(p):
    x, _ = ravel_pytree(p)
    return 0.5 * x @ a @ x

  return f, params


def _tiny_mlp():
  """A non-quadratic loss: 2-3-1 tanh MLP, squared error on 4 points."""
  k1, k2, k3, k4 = jax.random.split(jax.random.key(1), 4)
  params = {
      "dense1": {"kernel": 0.8 * jax.random.normal(k1, (2, 3)),
                 "bias": 0.1 * jnp.ones((3,))},
      "dense2": {"kernel": 0.8 * jax.random.normal(k2, (3, 1)),
                 "bias": jnp.zeros((1,))},
  }
  x = jax.random.normal(k3, (4, 2))
  y = jax.random.normal(k4, (4, 1))

  def f(p):
    h = jnp.tanh(x @ p["dense1"]["kernel"] + p["dense1"]["bias"])
    out = h @ p["dense2"]["kernel"] + p["dense2"]["bias"]
    return jnp.mean((out - y)**2)

  return f, params


@pytest.mark.parametrize("make_problem", [_dense_quadratic, _tiny_mlp])
def test_unbiased_within_standard_errors(make_problem):
  f, params = make_problem()
  n = 2000
  _, _, diag = hutchinson_diag(f, params, jax.random.key(42), num_samples=n)
  flat_diag, _ = ravel_pytree(diag)

  x0, unravel = ravel_pytree(params)
  hess = np.asarray(
      jax.jit(jax.hessian(lambda x: f(unravel(x))))(x0), np.float64)
  true_diag = np.diag(hess)
  # z_i (Hz)_i = H_ii + Σ_{j≠i} H_ij z_i z_j with z_i z_j independent ±1, so
  # the per-probe variance at coordinate i is Σ_{j≠i} H_ij².
  off_diag_sq = np.sum(hess**2, axis=1) - true_diag**2
  std_err = np.sqrt(off_diag_sq / n)
  assert np.all(off_diag_sq > 0)  # the test would be vacuous otherwise.
  err = np.abs(np.asarray(flat_diag, np.float64) - true_diag)
  assert np.all(err <= 5 * std_err + 1e-5), (err, std_err)


def test_equal_shaped_leaves_get_independent_probes():
  tree = {"a": jnp.zeros((256,)), "b": jnp.zeros((256,))}
  probes = rademacher_like(jax.random.key(3), tree)
  assert not np.array_equal(probes["a"], probes["b"])
  for leaf in jax.tree_util.tree_leaves(probes):
    assert set(np.unique(np.asarray(leaf)).tolist()) == {-1.0, 1.0}

  # f = Σ a_i b_i has zero Hessian diagonal but unit a-b cross terms: a probe
  # shared between the leaves would estimate exactly 1 everywhere.
  n = 2000
  _, _, diag = hutchinson_diag(
      lambda p: jnp.sum(p["a"] * p["b"]), tree, jax.random.key(4),
      num_samples=n)
  for leaf in jax.tree_util.tree_leaves(diag):
    assert np.max(np.abs(leaf)) < 5 / np.sqrt(n)


def test_rademacher_like_casts_to_leaf_dtype():
  tree = {"f32": jnp.zeros((3, 2)), "bf16": jnp.zeros((5,), jnp.bfloat16)}
  probes = rademacher_like(jax.random.PRNGKey(0), tree)
  chex.assert_trees_all_equal_shapes_and_dtypes(probes, tree)


def test_has_aux():
  f, params = _tiny_mlp()

  def f_aux(p):
    loss = f(p)
    return loss, {"twice": 2 * loss}

  key = jax.random.key(5)
  (loss, aux), grads, diag = hutchinson_diag(f_aux, params, key, has_aux=True)
  ref_loss, ref_grads, ref_diag = hutchinson_diag(f, params, key)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  np.testing.assert_allclose(aux["twice"], 2 * ref_loss, rtol=1e-6)
  chex.assert_trees_all_close(grads, ref_grads, rtol=1e-6)
  chex.assert_trees_all_close(diag, ref_diag, rtol=1e-6)

  (loss_n, aux_n), _, _ = hutchinson_diag(
      f_aux, params, key, has_aux=True, num_samples=3)
  np.testing.assert_allclose(loss_n, ref_loss, rtol=1e-6)
  np.testing.assert_allclose(aux_n["twice"], 2 * ref_loss, rtol=1e-6)


def _mlp_loss(params, batch):
  x, y = batch
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((h @ params["w2"] - y)**2)


def test_jit_vmap_over_workers_traces_once():
  num_workers = 3
  keys = jax.random.split(jax.random.key(6), 4)
  params = {
      "w1": jax.random.normal(keys[0], (num_workers, 2, 3)),
      "b1": jnp.zeros((num_workers, 3)),
      "w2": jax.random.normal(keys[1], (num_workers, 3, 1)),
  }
  batch = (jax.random.normal(keys[2], (num_workers, 5, 2)),
           jax.random.normal(keys[3], (num_workers, 5, 1)))
  worker_keys = jax.random.split(jax.random.key(7), num_workers)

  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, keys, batch):
    def one_worker(p, k, b):
      return hessian.hutchinson_diag(
          functools.partial(_mlp_loss, batch=b), p, k)
    return jax.vmap(one_worker)(params, keys, batch)

  loss, grads, diag = step(params, worker_keys, batch)
  # Same shapes, new values: must not retrace (assert_max_traces would raise).
  params2 = jax.tree_util.tree_map(lambda x: x + 0.5, params)
  step(params2, jax.random.split(jax.random.key(8), num_workers), batch)

  assert loss.shape == (num_workers,)
  single = jax.jit(lambda p, k, b: hessian.hutchinson_diag(
      functools.partial(_mlp_loss, batch=b), p, k))
  for i in range(num_workers):
    take = lambda t, i=i: jax.tree_util.tree_map(lambda x: x[i], t)
    ref_loss, ref_grads, ref_diag = single(
        take(params), worker_keys[i], take(batch))
    np.testing.assert_allclose(loss[i], ref_loss, rtol=1e-5)
    chex.assert_trees_all_close(take(grads), ref_grads, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(take(diag), ref_diag, rtol=1e-5, atol=1e-6)
  # Different worker keys give different probes, hence different estimates.
  assert not np.allclose(diag["w1"][0], diag["w1"][1])


@pytest.mark.parametrize("num_samples", [0, -1, 1.5, True])
def test_invalid_num_samples(num_samples):
  f, params, _ = _separable_quadratic()
  with pytest.raises(ValueError, match="num_samples"):
    hessian.hutchinson_diag(
        f, params, jax.random.key(0), num_samples=num_samples)
