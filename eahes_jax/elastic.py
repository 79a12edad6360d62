"""Elastic averaging between stacked workers and a master (EASGD exchange).

Implements the elastic exchange of EASGD (Zhang, Choromanska & LeCun, 2015) with
per-worker weights, as used by the paper's equations (12) and (13):

  diff_i = θ_i − θ_m
  θ_i ← θ_i − h_worker[i] · diff_i        (12)
  θ_m ← θ_m + h_master[i] · diff_i        (13)

The paper's equations (8) and (9) print the difference the other way round; the
sign used here is the one every reference implementation uses (see
docs/algorithms.md §3).

Every per-worker pytree holds the k workers stacked along a leading axis of size
k; the master pytree has the same structure without that axis. Everything here
is a pure function of arrays and is jit-able; which workers take part in a round
is given by a boolean mask, never by Python control flow over workers.
"""

from typing import Optional

import chex
import jax
import jax.numpy as jnp

ORDERS = ("sequential", "parallel")

# Floor on the squared distance before taking the log: the smallest normal
# float32. It keeps u = log‖θ_i − θ_m‖ finite (≈ −43.7) when a worker equals
# the master exactly (e.g. at initialisation), so score differences stay finite.
_SQ_DISTANCE_FLOOR = float(jnp.finfo(jnp.float32).tiny)


def _compute_dtype(dtype) -> jnp.dtype:
  """At least float32, so low-precision params do not lose the update."""
  return jnp.promote_types(dtype, jnp.float32)


def _as_jax(tree: chex.ArrayTree) -> chex.ArrayTree:
  """Leaves as jax arrays (numpy leaves cannot take traced indices)."""
  return jax.tree.map(jnp.asarray, tree)


def _num_workers(workers: chex.ArrayTree) -> int:
  """The static size k of the leading (worker) axis, checked across leaves."""
  leaves = jax.tree.leaves(workers)
  if not leaves:
    raise ValueError("workers must hold at least one array leaf, got none")
  sizes = {leaf.shape[0] if leaf.ndim else None for leaf in leaves}
  if None in sizes or len(sizes) != 1:
    raise ValueError(
        "every leaf of workers must have the same leading (worker) axis, got"
        f" leading sizes {sorted(str(s) for s in sizes)}")
  return sizes.pop()


def _check_master(workers: chex.ArrayTree, master: chex.ArrayTree,
                  stacked_master: bool) -> None:
  """Raises ValueError unless master's leaves fit the workers' shapes."""
  def check(w, m):
    expected = w.shape if stacked_master else w.shape[1:]
    if m.shape != expected:
      raise ValueError(
          f"master leaf shape {m.shape} does not match the workers' per-worker"
          f" shape {expected}")
  # tree.map also raises if the two tree structures differ.
  jax.tree.map(check, workers, master)


def _per_worker(x: chex.Array, ndim: int) -> chex.Array:
  """Reshapes a (k,) vector so it broadcasts against a (k, ...) leaf."""
  return x.reshape(x.shape + (1,) * (ndim - 1))


def tree_sq_distance(workers: chex.ArrayTree,
                     master: chex.ArrayTree,
                     *,
                     stacked_master: bool = False) -> chex.Array:
  """Squared global 2-norm ‖θ_i − θ_m‖² of every worker, over all leaves.

  Args:
    workers: pytree of arrays with the k workers stacked on axis 0.
    master: pytree with the same structure; without the worker axis, or with it
      when `stacked_master` is True (one reference per worker, e.g. the peer
      mean of `peer_mean_estimate`).
    stacked_master: whether `master` carries the worker axis.

  Returns:
    float32 array of shape (k,). Differences and sums are accumulated in (at
    least) float32 whatever the parameter dtype.
  """
  workers, master = _as_jax(workers), _as_jax(master)
  k = _num_workers(workers)
  _check_master(workers, master, stacked_master)

  def leaf_sq(w, m):
    dtype = _compute_dtype(jnp.result_type(w, m))
    m = m.astype(dtype) if stacked_master else m.astype(dtype)[None]
    diff = w.astype(dtype) - m
    return jnp.sum(jnp.square(diff).reshape(k, -1), axis=1).astype(jnp.float32)

  per_leaf = jax.tree.leaves(jax.tree.map(leaf_sq, workers, master))
  return sum(per_leaf[1:], per_leaf[0])


def log_distance(workers: chex.ArrayTree,
                 master: chex.ArrayTree,
                 *,
                 stacked_master: bool = False) -> chex.Array:
  """u_i = log‖θ_i − θ_m‖ for every worker (paper §V-B).

  Computed as 0.5 · log(max(d², tiny)), with d² from `tree_sq_distance` and
  tiny the smallest normal float32. The floor keeps u finite (≈ −43.7) when a
  worker coincides with its reference; without it u would be −inf and the
  differences of u in the raw score would be NaN or infinite.

  Args:
    workers: pytree of arrays with the k workers stacked on axis 0.
    master: the reference, as in `tree_sq_distance`.
    stacked_master: whether `master` carries the worker axis.

  Returns:
    float32 array of shape (k,).
  """
  sq = tree_sq_distance(workers, master, stacked_master=stacked_master)
  return 0.5 * jnp.log(jnp.maximum(sq, _SQ_DISTANCE_FLOOR))


def peer_mean_estimate(workers: chex.ArrayTree) -> chex.ArrayTree:
  """For every worker i, the mean of the other k − 1 workers.

  The paper's estimate θ̃_m of the master that worker i can obtain from its
  peers (§V-B). Computed as (Σ_j θ_j − θ_i) / (k − 1) in at least float32, then
  cast back to each leaf's dtype.

  Args:
    workers: pytree of arrays with the k workers stacked on axis 0.

  Returns:
    Pytree like `workers` (stacked, shape (k, ...)): entry i is worker i's
    estimate.

  Raises:
    ValueError: at trace time if k < 2 (a single worker has no peers).
  """
  workers = _as_jax(workers)
  k = _num_workers(workers)
  if k < 2:
    raise ValueError(
        f"peer_mean_estimate needs num_workers >= 2, got {k}")

  def leaf_mean(w):
    x = w.astype(_compute_dtype(w.dtype))
    total = jnp.sum(x, axis=0, keepdims=True)
    return ((total - x) / (k - 1)).astype(w.dtype)

  return jax.tree.map(leaf_mean, workers)


def exchange_order(key: chex.PRNGKey, num_workers: int) -> chex.Array:
  """The order in which `exchange(order="sequential")` visits the workers.

  Args:
    key: the key given to `exchange`.
    num_workers: k.

  Returns:
    int32 permutation of range(k): `jax.random.permutation(key, k)`.
  """
  return jax.random.permutation(key, num_workers)


def _broadcast_weights(h: chex.Numeric, k: int, name: str) -> chex.Array:
  h = jnp.asarray(h)
  if h.ndim > 1 or (h.ndim == 1 and h.shape[0] not in (1, k)):
    raise ValueError(
        f"{name} must be a scalar or have shape ({k},), got {h.shape}")
  return jnp.broadcast_to(h, (k,))


def exchange(workers: chex.ArrayTree,
             master: chex.ArrayTree,
             h_worker: chex.Numeric,
             h_master: chex.Numeric,
             connected: chex.Array,
             *,
             order: str = "sequential",
             key: Optional[chex.PRNGKey] = None
             ) -> tuple[chex.ArrayTree, chex.ArrayTree]:
  """One round of elastic exchange between the connected workers and the master.

  For a connected worker i, with diff_i = θ_i − θ_m taken against the master it
  meets (paper eqs. 12-13):

    θ_i ← θ_i − h_worker[i] · diff_i
    θ_m ← θ_m + h_master[i] · diff_i

  A worker with connected[i] False is left untouched and does not move the
  master; it is masked out with `jnp.where`, so even non-finite parameters of a
  disconnected worker cannot leak into the master.

  Args:
    workers: pytree of arrays with the k workers stacked on axis 0.
    master: pytree with the same structure, without the worker axis.
    h_worker: the worker's pull toward the master, shape (k,) or scalar.
    h_master: the master's pull toward the worker, shape (k,) or scalar.
    connected: bool (k,) (or scalar), which workers exchange this round.
    order: "parallel": every connected worker meets the same pre-exchange
      master and the master takes the sum of the moves, θ_m ← θ_m +
      Σ_i connected_i · h_master[i] · diff_i (synchronous EASGD).
      "sequential": the connected workers meet the master one after another in
      the order `exchange_order(key, k)`, each seeing the master as the
      previous one left it (a parameter server; asynchronous EASGD).
    key: PRNG key for the visiting order; required for "sequential", ignored
      for "parallel".

  Returns:
    (workers, master) after the exchange, with the input dtypes. Arithmetic is
    done in at least float32.

  Raises:
    ValueError: unknown `order`, missing `key` for "sequential", or shapes that
      do not match.
  """
  if order not in ORDERS:
    raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
  if order == "sequential" and key is None:
    raise ValueError("key must be given for order='sequential', got None")

  workers, master = _as_jax(workers), _as_jax(master)
  k = _num_workers(workers)
  _check_master(workers, master, stacked_master=False)
  h_worker = _broadcast_weights(h_worker, k, "h_worker")
  h_master = _broadcast_weights(h_master, k, "h_master")
  connected = _broadcast_weights(connected, k, "connected").astype(bool)

  if order == "parallel":
    return _exchange_parallel(workers, master, h_worker, h_master, connected)
  return _exchange_sequential(workers, master, h_worker, h_master, connected,
                              exchange_order(key, k))


def _elastic_move(w, m, hw, hm):
  """Eqs. 12-13 for one leaf: the worker's new value and the master's step.

  diff = θ_i − θ_m; returns (θ_i − hw · diff, hm · diff), the first in the
  worker's dtype, the second in the compute dtype (at least float32), so
  that the master can add one step (sequential) or the sum of several
  (parallel) before casting back.
  """
  dtype = _compute_dtype(jnp.result_type(w, m))
  diff = w.astype(dtype) - m.astype(dtype)
  new_w = (w.astype(dtype) - hw.astype(dtype) * diff).astype(w.dtype)
  return new_w, hm.astype(dtype) * diff


def _add_to_master(m, step):
  return (m.astype(step.dtype) + step).astype(m.dtype)


def _exchange_parallel(workers, master, h_worker, h_master, connected):
  """All connected workers against the same pre-exchange master."""

  def leaf(w, m):
    c = _per_worker(connected, w.ndim)
    new_w, steps = _elastic_move(w, m[None], _per_worker(h_worker, w.ndim),
                                 _per_worker(h_master, w.ndim))
    step = jnp.sum(jnp.where(c, steps, 0), axis=0)
    return jnp.where(c, new_w, w), _add_to_master(m, step)

  moved = jax.tree.map(leaf, workers, master)
  outer = jax.tree.structure(workers)
  new_workers, new_master = jax.tree.transpose(
      outer, jax.tree.structure((0, 0)), moved)
  return new_workers, new_master


def _exchange_sequential(workers, master, h_worker, h_master, connected, perm):
  """Connected workers visit the master one at a time, in the order `perm`."""
  # Everything per-worker is gathered into visiting order and fed to the scan
  # as xs rather than closed over: closed-over arrays become constants of the
  # scan body, and XLA may then fold them differently from call to call, so
  # equal weights could give results differing in the last bit.
  xs = (jax.tree.map(lambda w: w[perm], workers), h_worker[perm],
        h_master[perm], connected[perm])

  def visit(m_tree, x):
    w_tree, hw, hm, c = x

    # Both moves use the master as this worker finds it (EASGD).
    def leaf(w, m):
      new_w, step = _elastic_move(w, m, hw, hm)
      return jnp.where(c, new_w, w), jnp.where(c, _add_to_master(m, step), m)

    moved = jax.tree.map(leaf, w_tree, m_tree)
    new_w, new_m = jax.tree.transpose(
        jax.tree.structure(w_tree), jax.tree.structure((0, 0)), moved)
    return new_m, new_w

  new_master, visited = jax.lax.scan(visit, master, xs)
  # visited[j] is worker perm[j]; every worker is visited exactly once, so a
  # scatter by perm restores worker order.
  new_workers = jax.tree.map(lambda w, v: w.at[perm].set(v), workers, visited)
  return new_workers, new_master
