"""Micro-batches: a minibatch's loss, gradient and Hz computed in parts."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eahes_jax import checks
from eahes_jax import hessian
from eahes_jax import microbatch


def _problem(batch=12, features=5, classes=3):
  kx, ky, kw = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (batch, features))
  y = jax.random.randint(ky, (batch,), 0, classes)
  params = {"w": jax.random.normal(kw, (features, classes)),
            "b": jnp.zeros((classes,))}
  return params, x, y


def _loss(params, x, y):
  # Softmax cross-entropy: a mean over the rows, with a Hessian that is not
  # constant (so that Hz depends on which rows are in a part).
  logits = jnp.tanh(x @ params["w"]) + params["b"]
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


@pytest.mark.parametrize("m", [2, 3, 4, 12])
def test_the_mean_over_parts_is_the_minibatchs_loss_and_gradient(m):
  params, x, y = _problem()

  def terms(batch, _):
    return jax.value_and_grad(_loss)(params, *batch)

  whole = jax.value_and_grad(_loss)(params, x, y)
  parts = microbatch.mean_over_micro_batches(terms, (x, y), m, jnp.zeros(m))
  chex.assert_trees_all_close(parts, whole, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("m", [2, 4])
def test_hutchinson_over_parts_with_one_probe_is_the_minibatchs(m):
  params, x, y = _problem()
  key = jax.random.key(7)

  def terms(batch, _):
    return hessian.hutchinson_diag(lambda p: _loss(p, *batch), params, key)

  whole = hessian.hutchinson_diag(lambda p: _loss(p, x, y), params, key)
  parts = microbatch.mean_over_micro_batches(terms, (x, y), m, jnp.zeros(m))
  chex.assert_trees_all_close(parts, whole, rtol=1e-5, atol=1e-6)
  # A probe per part would estimate another quantity: the check above
  # tells the two apart.
  def own_probe(batch, k):
    return hessian.hutchinson_diag(lambda p: _loss(p, *batch), params, k)
  other = microbatch.mean_over_micro_batches(
      own_probe, (x, y), m, jax.random.split(jax.random.key(8), m))
  assert not np.allclose(other[2]["w"], whole[2]["w"], rtol=1e-3)


def test_each_part_gets_its_rows_and_its_entry_of_args():
  x = jnp.arange(8.0)
  scale = jnp.array([1.0, 10.0, 100.0, 1000.0])
  out = microbatch.mean_over_micro_batches(
      lambda part, s: s * jnp.mean(part), x, 4, scale)
  # Parts (0, 1), (2, 3), (4, 5), (6, 7): means 0.5, 2.5, 4.5, 6.5.
  np.testing.assert_allclose(
      out, np.mean(np.array([0.5, 2.5, 4.5, 6.5]) * np.asarray(scale)))


def test_one_part_is_the_function_itself_bit_for_bit():
  params, x, y = _problem()

  def terms(batch, _):
    return jax.value_and_grad(_loss)(params, *batch)

  chex.assert_trees_all_equal(
      microbatch.mean_over_micro_batches(terms, (x, y), 1, jnp.zeros(1)),
      terms((x, y), None))


def test_the_function_is_traced_once_per_call_whatever_the_parts():
  # One scan body (and one abstract evaluation for the zeros), not one
  # copy of the function per part: compile time does not grow with m.
  x = jnp.arange(16.0)

  @chex.assert_max_traces(n=2)
  def fn(part, _):
    return jnp.mean(part ** 2)

  out = microbatch.mean_over_micro_batches(fn, x, 8, jnp.zeros(8))
  np.testing.assert_allclose(out, np.mean(np.arange(16.0) ** 2), rtol=1e-6)


@pytest.mark.parametrize("m", [0, 5, 2.0, True, None])
def test_parts_that_do_not_divide_the_batch_are_refused_by_name(m):
  with pytest.raises(checks.ArgumentError, match="micro_batches") as e:
    microbatch.mean_over_micro_batches(lambda p: p.mean(), jnp.zeros(8), m)
  assert e.value.argument == "micro_batches"


def test_args_without_one_entry_per_part_are_refused_by_name():
  with pytest.raises(checks.ArgumentError) as e:
    microbatch.mean_over_micro_batches(
        lambda p, s: s * p.mean(), jnp.zeros(8), 2, jnp.ones(3))
  assert e.value.argument == "args"


@pytest.mark.parametrize("batch", [(jnp.zeros(8), jnp.zeros(6)),
                                   (jnp.zeros(8), jnp.float32(1.0)), ()])
def test_a_batch_without_one_leading_size_is_refused_by_name(batch):
  with pytest.raises(checks.ArgumentError) as e:
    microbatch.mean_over_micro_batches(lambda b: b[0].mean(), batch, 2)
  assert e.value.argument == "batch"
