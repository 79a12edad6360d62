"""A minibatch's terms computed in equal micro-batches, one after another.

A local step's loss, gradient and Hutchinson estimate are means over its
minibatch, so they can be computed on m equal parts of it in turn
(``lax.scan``) and averaged: the same quantities, rounded differently. On a
CPU this is faster where a whole minibatch's activations overflow the
caches: `cnn`'s worker-steps under ``conv_impl="winograd"`` at batch 64
took 15-25 % less time in two halves of 32 (README, Performance).
Hutchinson's probe z is one for the whole minibatch, so averaging the parts'
z ⊙ H_j z gives z ⊙ H z of the minibatch's loss (docs/algorithms.md §1).
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp

from eahes_jax import checks

__all__ = ["check_micro_batches", "mean_over_micro_batches"]


def check_micro_batches(micro_batches: Any, batch_size: int) -> int:
  """``micro_batches`` as an int: an integer >= 1 that divides ``batch_size``.

  Raises:
    checks.ArgumentError: naming ``micro_batches``.
  """
  checks.count(micro_batches, "micro_batches", 1)
  checks.require(batch_size % micro_batches == 0, "micro_batches",
                 f"a divisor of the batch size {batch_size}", micro_batches)
  return int(micro_batches)


def mean_over_micro_batches(fn: Callable[..., chex.ArrayTree],
                            batch: chex.ArrayTree, micro_batches: int,
                            *args: chex.ArrayTree) -> chex.ArrayTree:
  """The mean of ``fn`` over ``micro_batches`` equal parts of ``batch``.

  Computes ``fn(part_j, *args_j)`` for j = 0, ..., m - 1 one after another
  in a ``lax.scan`` and returns the mean of its outputs. ``fn`` must return
  means over its part (a loss, a gradient), so that the result is the same
  quantity for the whole batch. With m = 1 it is ``fn(batch, *args_0)``,
  computed at once.

  Args:
    fn: ``fn(part, *args) -> pytree`` of floating-point arrays (summed in
      their own dtypes).
    batch: pytree of arrays with one leading batch axis B, which m divides;
      part j holds the rows j·B/m, ..., (j + 1)·B/m - 1.
    micro_batches: m, an integer >= 1 dividing B.
    *args: pytrees with a leading axis of length m: part j gets entry j
      (for instance one dropout key per part).

  Returns:
    The mean of ``fn``'s outputs over the parts, a pytree like one output.

  Raises:
    checks.ArgumentError: the leaves of ``batch`` have no one leading size
      B, m is not an integer >= 1 dividing B, or an entry of ``args`` has
      no leading axis of length m (naming ``batch``, ``micro_batches`` or
      ``args``).
  """
  sizes = {x.shape[0] if x.ndim else None
           for x in jax.tree_util.tree_leaves(batch)}
  checks.require(len(sizes) == 1 and None not in sizes, "batch",
                 "a pytree of arrays with one leading batch size",
                 sorted(sizes, key=str))
  m = check_micro_batches(micro_batches, sizes.pop())
  lengths = {x.shape[0] if x.ndim else None
             for x in jax.tree_util.tree_leaves(args)}
  checks.require(lengths <= {m}, "args", f"arrays with a leading axis of"
                 f" length micro_batches ({m})", sorted(lengths, key=str))
  if m == 1:
    return fn(batch, *jax.tree_util.tree_map(lambda a: a[0], args))
  parts = jax.tree_util.tree_map(
      lambda x: x.reshape((m, x.shape[0] // m) + x.shape[1:]), batch)

  def add(total, part_and_args):
    part, part_args = part_and_args
    return jax.tree_util.tree_map(jnp.add, total, fn(part, *part_args)), None

  # One scan over all m parts, from zeros (0 + a is a, up to a zero's
  # sign): one compiled copy of fn, whatever m, where peeling the first
  # part off would compile the model twice.
  shapes = jax.eval_shape(
      fn, *jax.tree_util.tree_map(lambda a: a[0], (parts, *args)))
  zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  total, _ = jax.lax.scan(add, zeros, (parts, args))
  return jax.tree_util.tree_map(lambda t: t / m, total)
