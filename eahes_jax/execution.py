"""How the stacked worker axis is executed: vmap, lax.map or a device mesh.

Every strategy computes the same function; they differ in how XLA lays the
work out:

* ``vmap``: one batched program over all workers. Best on GPU/TPU, where the
  per-worker matmuls and convolutions become one large batched kernel.
* ``map``: ``lax.map`` over workers inside the jitted round, one worker after
  another. On CPU this avoids the grouped convolutions that vmapping a conv
  over per-worker kernels turns into, which XLA's CPU backend runs slowly.
* ``sharded``: ``vmap`` with the worker axis laid over a 1-D
  ``jax.sharding.Mesh`` (axis ``"workers"``) by sharding constraints, so XLA's
  partitioner runs each device's workers locally and turns the master
  reductions of the exchange into collectives. Works over every device JAX
  sees, several hosts included after ``jax.distributed.initialize()``. The
  number of workers must be a multiple of the number of devices: padding with
  phantom workers would change the sequential exchange's random order, so a
  mismatch is an error rather than silently padded.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

WORKER_AXIS = "workers"
STRATEGIES = ("vmap", "map", "sharded")


def default_strategy(backend: str | None = None) -> str:
  """``map`` on CPU, ``vmap`` on accelerators (measured; see the README)."""
  backend = backend or jax.default_backend()
  return "map" if backend == "cpu" else "vmap"


def resolve_strategy(execution: str) -> str:
  """Maps ``"auto"`` to the backend's default; checks the name."""
  if execution == "auto":
    return default_strategy()
  if execution not in STRATEGIES:
    raise ValueError(
        f"execution must be one of {('auto',) + STRATEGIES}, got {execution!r}")
  return execution


def worker_mesh(num_workers: int, devices: Any = None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all) for the worker axis.

  Args:
    num_workers: k; must be a multiple of the device count.
    devices: the devices to use; default ``jax.devices()``.

  Returns:
    A ``Mesh`` with the single axis ``"workers"``.

  Raises:
    ValueError: if k is not a multiple of the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if num_workers % n:
    raise ValueError(
        f"num_workers must be a multiple of the {n} devices for"
        f" execution='sharded', got {num_workers} (use a multiple of {n}, or"
        " execution='vmap')")
  return Mesh(devices, (WORKER_AXIS,))


def shard_workers(tree: Any, mesh: Mesh) -> Any:
  """Constrains the leading (worker) axis of every leaf to the mesh."""
  sharding = NamedSharding(mesh, PartitionSpec(WORKER_AXIS))
  return jax.tree_util.tree_map(
      lambda x: lax.with_sharding_constraint(x, sharding), tree)


def state_shardings(tree: Any, mesh: Mesh, num_workers: int,
                    batch_dims: int = 0) -> Any:
  """Shardings that lay a state's worker axis over the mesh.

  A leaf whose axis ``batch_dims`` has size k is split over the ``"workers"``
  mesh axis; every other leaf is replicated. Giving the initial state and
  every chunk's output these shardings keeps the jitted chunk from compiling
  a second time for differently laid-out inputs.

  Args:
    tree: the state (arrays or shape-dtype structs).
    mesh: the worker mesh.
    num_workers: k.
    batch_dims: leading axes before the worker axis (1 for a seed axis).

  Returns:
    A tree of ``NamedSharding`` matching ``tree``.
  """
  def one(x):
    spec = [None] * batch_dims
    if x.ndim > batch_dims and x.shape[batch_dims] == num_workers:
      spec.append(WORKER_AXIS)
    return NamedSharding(mesh, PartitionSpec(*spec))

  return jax.tree_util.tree_map(one, tree)


def to_host(tree: Any) -> Any:
  """Every leaf as a NumPy array holding its global value, on every process.

  With ``sharded`` over several processes (``jax.distributed.initialize()``),
  an output whose worker axis is split over the processes' devices is not
  addressable from any one of them, and ``np.asarray`` refuses it; such
  leaves are gathered from all processes (a collective: every process must
  call this). Leaves a process holds whole are copied as they are.

  Args:
    tree: a pytree of arrays.

  Returns:
    The same tree of NumPy arrays.
  """
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree_util.tree_map(one, tree)


def map_workers(fn: Callable[..., Any], strategy: str,
                mesh: Mesh | None = None) -> Callable[..., Any]:
  """Maps ``fn`` over the leading axis of all its (positional) arguments.

  Args:
    fn: a function of one worker's arguments.
    strategy: ``"vmap"``, ``"map"`` or ``"sharded"``.
    mesh: the worker mesh, required for ``"sharded"``.

  Returns:
    A function of stacked arguments returning stacked results.
  """
  if strategy == "vmap":
    return jax.vmap(fn)
  if strategy == "map":
    return lambda *args: lax.map(lambda a: fn(*a), args)
  if strategy == "sharded":
    if mesh is None:
      raise ValueError("execution='sharded' needs a mesh")
    batched = jax.vmap(fn)

    def sharded(*args):
      return shard_workers(batched(*shard_workers(args, mesh)), mesh)

    return sharded
  raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
