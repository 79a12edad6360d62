"""Hutchinson's estimate of the Hessian diagonal (docs/algorithms.md §1).

The estimator (paper §IV, after Bekas, Kokiopoulou & Saad 2007, ref. [15]) is

    diag(H) ≈ (1/n) Σ_i z_i ⊙ (H z_i),   z_i Rademacher (±1, equal probability).

The Hessian-vector product is computed forward-over-reverse, i.e. as the JVP of
``jax.value_and_grad(loss_fn)``. That single call returns the loss, the gradient
(the primal output) and ``H z`` (the tangent output), so a step of AdaHessian
needs no separate gradient pass.
"""

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import optax

__all__ = ["hutchinson_diag", "rademacher_like"]


def rademacher_like(key: chex.PRNGKey, tree: chex.ArrayTree) -> chex.ArrayTree:
  """Draws a Rademacher (±1) pytree shaped like ``tree`` (shapes and dtypes).

  Each leaf gets its own key (``key`` is split over the leaves), so two leaves
  of equal shape get independent probes: reusing one key would give them
  identical probes and bias the Hessian-diagonal estimate by the cross terms
  between them (docs/algorithms.md §1). Signs are drawn in float32 and cast to
  each leaf's dtype, so low-precision leaves get exactly ±1 as well.

  Args:
    key: a JAX PRNG key (raw ``uint32[2]`` or typed).
    tree: a pytree of floating-point arrays (only shapes and dtypes are used).

  Returns:
    A pytree like ``tree`` whose entries are independently ±1 with probability
    1/2 each.
  """
  if not jax.tree_util.tree_leaves(tree):
    return tree

  def signs(k, shape, dtype):
    # Drawn in float32 (rademacher takes no low-precision float dtype
    # everywhere), then cast: ±1 is exact in every float dtype.
    return jax.random.rademacher(k, shape, dtype=jnp.float32).astype(dtype)

  # optax splits the key over the leaves, one key per leaf, in leaf order.
  return optax.tree.random_like(key, tree, sampler=signs)


def hutchinson_diag(
    loss_fn: Callable[..., Any],
    params: chex.ArrayTree,
    key: chex.PRNGKey,
    *,
    num_samples: int = 1,
    has_aux: bool = False,
) -> tuple[Any, chex.ArrayTree, chex.ArrayTree]:
  """Loss, gradient and Hutchinson's Hessian-diagonal estimate in one pass.

  Computes ``jax.jvp(jax.value_and_grad(loss_fn), (params,), (z,))``: the primal
  output is ``(loss, grads)`` and the tangent output of the gradient is ``H z``
  (forward-over-reverse Hessian-vector product), so the step costs one forward
  pass plus about two backward-pass equivalents. With ``num_samples > 1`` the
  probes are vmapped over; the primal does not depend on the probe, so it is
  computed once and ``loss``/``grads`` are returned unbatched.

  Only ``params`` get probes: any data ``loss_fn`` closes over is a constant of
  the function whose Hessian is estimated. The function is pure and traceable,
  so it works under ``jax.jit`` and under ``jax.vmap`` over a stacked worker
  axis (vmap ``params`` and ``key`` together).

  Args:
    loss_fn: ``loss_fn(params) -> scalar`` (or ``(scalar, aux)`` when
      ``has_aux``); twice differentiable in ``params``.
    params: pytree of floating-point parameters at which to estimate.
    key: PRNG key for the Rademacher probes.
    num_samples: number n of independent probes to average (paper: 1).
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

  Returns:
    ``(loss, grads, hessian_diag)``, or ``((loss, aux), grads, hessian_diag)``
    when ``has_aux``; ``grads`` and ``hessian_diag`` are pytrees like
    ``params``, ``hessian_diag`` = (1/n) Σ_i z_i ⊙ H z_i.

  Raises:
    ValueError: if ``num_samples`` is not an integer >= 1.
  """
  if isinstance(num_samples, bool) or not isinstance(num_samples, int):
    raise ValueError(
        f"num_samples must be an integer >= 1, got {num_samples!r}")
  if num_samples < 1:
    raise ValueError(f"num_samples must be an integer >= 1, got {num_samples}")

  value_and_grad_fn = jax.value_and_grad(loss_fn, has_aux=has_aux)

  def hvp(z):
    (value, grads), (_, hz) = jax.jvp(value_and_grad_fn, (params,), (z,))
    return value, grads, hz

  if num_samples == 1:
    # No vmap here: a batch axis of size one on the tangents would still turn
    # convolutions with a batched kernel into grouped convolutions.
    z = rademacher_like(key, params)
    value, grads, hz = hvp(z)
    diag = jax.tree_util.tree_map(jnp.multiply, z, hz)
    return value, grads, diag

  keys = jax.random.split(key, num_samples)
  zs = jax.vmap(rademacher_like, in_axes=(0, None))(keys, params)
  # The primal outputs do not depend on z, so vmap leaves them unbatched and
  # out_axes=None returns them as-is (computed once, not once per probe).
  value, grads, hzs = jax.vmap(hvp, out_axes=(None, None, 0))(zs)
  diag = jax.tree_util.tree_map(
      lambda z, hz: jnp.mean(z * hz, axis=0), zs, hzs)
  return value, grads, diag
