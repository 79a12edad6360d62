"""The training engine: k workers and a master as one state pytree.

One communication round (algorithms.md §3, §5, §6) is one pure function of a
``SimState``:

1. draw this round's failures (which workers reach the master, and how many of
   the τ local steps each computes);
2. every worker takes its τ local steps (SGD, Nesterov SGD or AdaHessian with
   Hutchinson's diagonal) on minibatches drawn on the device from its own
   partition O ∪ S_j; the worker axis runs by ``vmap``, ``lax.map`` or over a
   device mesh (``execution.py``);
3. the weighting policy scores every worker (fixed α, the oracle, or the
   paper's dynamic weights, eqs. 10-13);
4. the connected workers meet the master in the masked elastic exchange.

Rounds run in ``lax.scan`` chunks of ``eval_every`` rounds between evaluations
of the master, and several seeds run side by side by ``vmap`` over a leading
seed axis (or, under ``seed_execution="map"``, one after another in a
``lax.map``), so "the mean of three runs" is one compiled program. Python
only loops over chunks.

The round's order (local steps, then the exchange) reads the asynchronous
EASGD update of §3 in the synchronous-round way: the exchange after the last
local step uses the worker's latest parameters, and the next round's first
gradient is taken at the post-exchange parameters (the reference's worker
takes it at the pre-exchange ones; the difference is one step in τ).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Iterator, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from eahes_jax import config as config_lib
from eahes_jax import data as data_lib
from eahes_jax import elastic
from eahes_jax import execution as execution_lib
from eahes_jax import failures as failures_lib
from eahes_jax import hessian
from eahes_jax import microbatch
from eahes_jax import models as models_lib
from eahes_jax import partition
from eahes_jax import weighting

# Bits of ``RoundMetrics.nonfinite``: which quantity went non-finite. The
# first four are a worker's local steps; EXCHANGE is the worker's parameters
# after the elastic exchange, MASTER the master's (set on every worker).
NONFINITE_LOSS = 1
NONFINITE_GRAD = 2
NONFINITE_HESSIAN = 4
NONFINITE_PARAMS = 8
NONFINITE_EXCHANGE = 16
NONFINITE_MASTER = 32
_NONFINITE_NAMES = ((NONFINITE_LOSS, "loss"), (NONFINITE_GRAD, "gradient"),
                    (NONFINITE_HESSIAN, "Hessian diagonal"),
                    (NONFINITE_PARAMS, "parameters"),
                    (NONFINITE_EXCHANGE, "parameters after the exchange"),
                    (NONFINITE_MASTER, "master parameters after the exchange"))


class NonFiniteError(FloatingPointError):
  """A worker's loss, gradient, Hessian diagonal or parameters, or the
  parameters of a worker or the master after the exchange, went non-finite.

  Attributes:
    round: the first communication round (1-based) where it happened.
    seed: the seed of the run it happened in.
    worker: the first worker it happened to.
    quantities: the names of the non-finite quantities.
  """

  def __init__(self, round_: int, seed: int, worker: int,
               quantities: list[str]):
    self.round = round_
    self.seed = seed
    self.worker = worker
    self.quantities = quantities
    super().__init__(
        f"non-finite {', '.join(quantities)} in round {round_}, worker"
        f" {worker} (seed {seed}); lower `lr` or check the data")


class SimState(NamedTuple):
  """Everything that evolves during a run (one seed; a run stacks seeds).

  Attributes:
    workers: worker parameters, stacked on a leading axis of size k.
    opt_state: the workers' local optimizer states, stacked likewise.
    master: the master's parameters.
    policy_state: the weighting policy's state (u history, miss counters).
    failure_state: the failure model's state (e.g. bursty chains).
    steps: int32 (k,), local steps each worker has computed.
    key: the PRNG key of the next round.
    round: int32 scalar, rounds completed.
  """

  workers: chex.ArrayTree
  opt_state: chex.ArrayTree
  master: chex.ArrayTree
  policy_state: chex.ArrayTree
  failure_state: chex.ArrayTree
  steps: chex.Array
  key: chex.PRNGKey
  round: chex.Array


class RoundMetrics(NamedTuple):
  """Per-round outputs of the scan (leading axes: seeds, rounds).

  Attributes:
    worker_loss: (k,) each worker's mean minibatch loss over the steps it
      computed this round (0 for a worker that computed none).
    train_loss: scalar, the mean of ``worker_loss`` over computing workers.
    log_distance: (k,) u = log‖θ_i − θ_m‖ before the exchange (§5), as the
      policy measured it.
    log_distance_after: (k,) log‖θ_i − θ_m‖ after the round's exchange,
      against the true master: the reading "score u after the exchange" of
      the mechanism study, recorded for every policy.
    score: (k,) the dynamic raw score a (0 for the other policies).
    h_worker: (k,) the worker's pull toward the master this round.
    h_master: (k,) the master's pull toward the worker this round.
    connected: (k,) bool, whether the worker reached the master.
    local_steps: (k,) int32, local steps computed this round.
    nonfinite: (k,) int32 bit mask of ``NONFINITE_*`` (0: all finite),
      covering the local steps and the exchange's outputs.
  """

  worker_loss: chex.Array
  train_loss: chex.Array
  log_distance: chex.Array
  log_distance_after: chex.Array
  score: chex.Array
  h_worker: chex.Array
  h_master: chex.Array
  connected: chex.Array
  local_steps: chex.Array
  nonfinite: chex.Array


class EvalMetrics(NamedTuple):
  """The master's evaluation (leading axis: seeds).

  Attributes:
    test_accuracy: accuracy on the full test set.
    test_loss: mean cross-entropy on the full test set.
    train_loss: mean cross-entropy on the fixed training subset (the paper's
      "training loss", Figure 5).
  """

  test_accuracy: chex.Array
  test_loss: chex.Array
  train_loss: chex.Array


@dataclasses.dataclass
class History:
  """A finished run's metrics as NumPy arrays.

  Attributes:
    config: the resolved configuration.
    seeds: (S,) the seeds.
    rounds: (R,) round numbers 1..R of the per-round metrics.
    metrics: ``RoundMetrics`` with arrays (S, R, ...).
    eval_rounds: (E,) rounds at which the master was evaluated (0 first).
    evals: ``EvalMetrics`` with arrays (S, E).
    wall_time_s: seconds the run took, compiles included.
  """

  config: config_lib.SimConfig
  seeds: np.ndarray
  rounds: np.ndarray
  metrics: RoundMetrics
  eval_rounds: np.ndarray
  evals: EvalMetrics
  wall_time_s: float

  @property
  def final_test_accuracy(self) -> np.ndarray:
    return self.evals.test_accuracy[:, -1]


def cross_entropy(logits: chex.Array, labels: chex.Array) -> chex.Array:
  """Mean softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_optimizer(config: config_lib.SimConfig
                   ) -> optax.GradientTransformationExtraArgs:
  """The workers' local optimizer: the config's method builds it (§7)."""
  return config.method_spec.make_optimizer(config)


def make_policy(config: config_lib.SimConfig) -> weighting.WeightingPolicy:
  """The elastic weighting policy: the config's method builds it."""
  return config.method_spec.make_policy(config)


def make_failure_model(config: config_lib.SimConfig
                       ) -> failures_lib.FailureModel:
  """The failure model: base outages, then stragglers on top if asked."""
  return failures_lib.from_settings(
      failure_model=config.failure_model, failure_rate=config.failure_rate,
      failure_mode=config.failure_mode, mean_outage=config.mean_outage,
      straggler_rate=config.straggler_rate,
      straggler_slowdown=config.straggler_slowdown)


def make_model(config: config_lib.SimConfig):
  """The flax model, with the convolution formulation resolved."""
  if config.model == "mlp":
    return models_lib.get_model("mlp")
  conv_impl = config.conv_impl
  if conv_impl == "auto":
    conv_impl = "im2col" if jax.default_backend() == "cpu" else "xla"
  return models_lib.get_model(config.model, conv_impl=conv_impl)


def _all_finite(tree: Any) -> chex.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _written_once(tree: Any, key: chex.PRNGKey) -> Any:
  """tree, value for value, as one buffer that XLA's CPU backend must write.

  That backend leaves the transpose of a dense kernel's Hz (the sum of two
  tangent matmuls, which come out (out, in)) to each of its consumers: the
  non-finite check, AdaHessian's update and the write into the workers'
  stacked optimizer state each read it with a stride (`cnn`'s fc1: 3-6 ms
  apiece, ~14 of a 63-75 ms worker-step under conv_impl="winograd").
  ``lax.optimization_barrier`` would say "write it once", but on this
  backend a barrier on the diagonal left the three fusions as they were
  (XLA's trace). A while loop's carry is a buffer: this loop runs once or
  not at all (a bit of key decides, which XLA cannot see), and its body
  passes every value through a select that keeps it, so the values are the
  same bits (tested) and the consumers read one copy.
  Measured with k = 8 in a script around ``Simulation.run_rounds``, 2-3
  alternating pairs of fresh processes: cnn AdaHessian
  59.9-63.8 -> 55.2-59.4 ms a worker-step under winograd, 101.5-102.3 ->
  97.0-97.5 with the defaults; small_cnn 6.90-7.17 -> 6.67-6.79.
  """
  bits = (jax.random.key_data(key) if jax.dtypes.issubdtype(
      key.dtype, jax.dtypes.prng_key) else key)
  runs = (jnp.ravel(bits)[0] & 1).astype(jnp.int32)

  def body(carry):
    i, values = carry
    return i + 1, jax.tree_util.tree_map(
        lambda x: jnp.where(i < 0, jnp.zeros_like(x), x), values)

  return jax.lax.while_loop(lambda carry: carry[0] < runs, body,
                            (jnp.int32(0), tree))[1]


class DeviceData(NamedTuple):
  """The dataset as device arrays (shared by all seeds)."""

  train_x: chex.Array
  train_y: chex.Array
  test_x: chex.Array
  test_y: chex.Array
  train_eval_x: chex.Array
  train_eval_y: chex.Array


def check_data(config: config_lib.SimConfig, data: data_lib.MNIST) -> None:
  """Checks that the training set can be split among the config's workers.

  Raises:
    config.ConfigError: the overlap partition would leave a worker without
      an example of its own (named after ``num_workers``), or a minibatch
      is larger than the training set (named after ``batch_size``).
  """
  config = config.resolve()
  n_train = int(data.train_images.shape[0])
  # Minibatches are drawn with replacement, so a larger one is not refused
  # by the sampler; it only fails to allocate, deep inside XLA.
  if config.batch_size > n_train:
    raise config_lib.ConfigError(
        f"batch_size must be at most the training set's size ({n_train}),"
        f" got {config.batch_size}", "batch_size")
  try:
    partition.sizes(n_train, config.num_workers, config.overlap_ratio)
  except ValueError:
    if n_train < 1:
      raise
    raise config_lib.ConfigError(
        f"num_workers must leave every worker at least one training example"
        f" of its own; {config.num_workers} workers are too many for"
        f" {n_train} examples with overlap_ratio {config.overlap_ratio:g}",
        "num_workers") from None


class Engine(NamedTuple):
  """What a round is made of, built once from a config (all static).

  Attributes:
    config: the resolved config.
    model: the flax model.
    optimizer: the workers' local optimizer (the method's factory).
    second_order: whether the local step feeds it Hutchinson's diagonal.
    policy: the elastic weighting policy.
    failure_model: the failure model.
    strategy: how the worker axis runs (``execution.STRATEGIES``).
    mesh: the worker mesh for ``sharded``, else None.
  """
  config: config_lib.SimConfig
  model: Any
  optimizer: optax.GradientTransformationExtraArgs
  second_order: bool
  policy: weighting.WeightingPolicy
  failure_model: failures_lib.FailureModel
  strategy: str
  mesh: Any


def check_seed_execution(config: config_lib.SimConfig) -> None:
  """Refuses several seeds under ``seed_execution="map"`` with
  ``execution="sharded"``.

  Raises:
    config.ConfigError: named after ``seed_execution``.
  """
  if (execution_lib.resolve_strategy(config.execution) == "sharded"
      and config.seed_execution == "map" and config.num_seeds > 1):
    # Two seeds in a lax.map over a mesh of workers drifted from the same
    # seeds unsharded by up to 1e-3 in two mlp rounds (one seed: 5e-6),
    # more than sharding's rounding elsewhere: not examined, so not offered.
    raise config_lib.ConfigError(
        "`seed_execution=map` with several seeds runs them one after"
        " another, which `execution=sharded` does not support; use"
        " `seed_execution=vmap`, or one seed per run", "seed_execution")


def make_engine(config: config_lib.SimConfig, *, devices: Any = None
                ) -> Engine:
  """The ``Engine`` of ``config`` (resolved here)."""
  config = config.resolve()
  strategy = execution_lib.resolve_strategy(config.execution)
  check_seed_execution(config)
  mesh = (execution_lib.worker_mesh(config.num_workers, devices)
          if strategy == "sharded" else None)
  return Engine(config, make_model(config), make_optimizer(config),
                config.method_spec.second_order, make_policy(config),
                make_failure_model(config), strategy, mesh)


def make_init(engine: Engine) -> Callable[[chex.Array], SimState]:
  """``init(seed) -> SimState`` of one seed: every worker a copy of the
  master (paper §II), fresh optimizer, policy and failure states."""
  cfg = engine.config

  def init(seed: chex.Array) -> SimState:
    key = jax.random.PRNGKey(seed)
    init_key, fail_key, key = jax.random.split(key, 3)
    master = models_lib.init_params(engine.model, init_key)
    k = cfg.num_workers
    workers = jax.tree_util.tree_map(
        lambda x: jnp.broadcast_to(x, (k,) + x.shape), master)
    return SimState(
        workers=workers,
        opt_state=jax.vmap(engine.optimizer.init)(workers),
        master=master,
        policy_state=engine.policy.init(k),
        failure_state=engine.failure_model.init(fail_key, k,
                                                cfg.comm_period),
        steps=jnp.zeros((k,), jnp.int32),
        key=key,
        round=jnp.zeros((), jnp.int32))

  return init


def make_local_steps(engine: Engine) -> Callable[..., Any]:
  """``local_steps(params, opt_state, key, worker_idx, num_steps, data)``:
  τ local steps of ONE worker (pure, jit-able); steps >= ``num_steps`` are
  no-ops. Returns (params, opt_state, mean minibatch loss, non-finite bit
  mask).

  Where the configuration can leave a worker fewer than τ steps in a round
  (crashes, or stragglers who lose a step:
  ``failures.settings_skip_steps``), each step is a ``lax.cond`` on
  ``t < num_steps``: where its predicate is not batched
  (``execution="map"`` with ``seed_execution="map"``) a step the worker does
  not compute is skipped; under a ``vmap`` (of workers or seeds) JAX runs
  both branches and selects. Otherwise every step is computed and its
  result selected by ``t < num_steps``. Either way a step's result is the
  step's or the carry's, bit for bit.

  With ``micro_batches`` m > 1 a step's minibatch is computed in m equal
  parts, one after another, with one Hutchinson probe and a dropout key per
  part, and their terms averaged (``microbatch.mean_over_micro_batches``)."""
  cfg = engine.config
  model, optimizer = engine.model, engine.optimizer
  # Skipping a step pays only where steps can go uncomputed: with none
  # skipped, the cond made small_cnn SGD rounds 1-5 % slower and cnn's
  # 3-4 % faster than the select (k = 8, one seed without the seed axis,
  # the README's newer CPU); with crashes at rate 1/3 it took 29-34 % off
  # SGD rounds (README, Performance).
  can_skip = failures_lib.settings_skip_steps(
      failure_model=cfg.failure_model, failure_rate=cfg.failure_rate,
      failure_mode=cfg.failure_mode, straggler_rate=cfg.straggler_rate,
      straggler_slowdown=cfg.straggler_slowdown, comm_period=cfg.comm_period)
  # Only where it was measured (see `_written_once`): elsewhere the loop is
  # an untested cost (a copy, and on a GPU a loop predicate every step).
  write_hz_once = jax.default_backend() == "cpu"

  def local_steps(params, opt_state, key, worker_idx, num_steps, data):

    def step(carry, t):
      params, opt_state, loss_sum, bad = carry
      batch_key, probe_key, dropout_key = jax.random.split(
          jax.random.fold_in(key, t), 3)

      def compute(carry):
        params, opt_state, loss_sum, bad = carry
        pick = jax.random.randint(batch_key, (cfg.batch_size,), 0,
                                  worker_idx.shape[0])
        rows = worker_idx[pick]
        x, y = data.train_x[rows], data.train_y[rows]

        def terms(batch, dropout_key):
          # The minibatch's (or a micro-batch's) loss, gradient and, for
          # AdaHessian, Hutchinson's estimate: means over its rows.
          x, y = batch

          def loss_fn(p):
            logits = model.apply({"params": p}, x, train=True,
                                 rngs={"dropout": dropout_key})
            return cross_entropy(logits, y)

          if engine.second_order:
            # One probe key for every micro-batch: the same z throughout.
            return hessian.hutchinson_diag(
                loss_fn, params, probe_key, num_samples=cfg.hessian_samples)
          return jax.value_and_grad(loss_fn)(params)

        if cfg.micro_batches == 1:
          out = terms((x, y), dropout_key)
        else:
          out = microbatch.mean_over_micro_batches(
              terms, (x, y), cfg.micro_batches,
              jax.random.split(dropout_key, cfg.micro_batches))
        if engine.second_order:
          loss, grads, hdiag = out
          if write_hz_once:
            hdiag = _written_once(hdiag, probe_key)
          updates, new_opt = optimizer.update(
              grads, opt_state, params, hessian_diag=hdiag)
          hess_ok = _all_finite(hdiag)
        else:
          loss, grads = out
          updates, new_opt = optimizer.update(grads, opt_state, params)
          hess_ok = jnp.bool_(True)
        new_params = optax.apply_updates(params, updates)
        flags = (jnp.where(jnp.isfinite(loss), 0, NONFINITE_LOSS)
                 | jnp.where(_all_finite(grads), 0, NONFINITE_GRAD)
                 | jnp.where(hess_ok, 0, NONFINITE_HESSIAN)
                 | jnp.where(_all_finite(new_params), 0, NONFINITE_PARAMS))
        return new_params, new_opt, loss_sum + loss, bad | flags

      active = t < num_steps
      if can_skip:
        return jax.lax.cond(active, compute, lambda c: c, carry), None
      return jax.tree_util.tree_map(
          lambda new, old: jnp.where(active, new, old), compute(carry),
          carry), None

    init = (params, opt_state, jnp.zeros((), jnp.float32),
            jnp.zeros((), jnp.int32))
    (params, opt_state, loss_sum, bad), _ = jax.lax.scan(
        step, init, jnp.arange(cfg.comm_period))
    loss = loss_sum / jnp.maximum(num_steps, 1).astype(jnp.float32)
    return params, opt_state, loss, bad

  return local_steps


def make_round(engine: Engine) -> Callable[..., tuple[SimState,
                                                      RoundMetrics]]:
  """``round(state, worker_idx, data) -> (state, metrics)``: one
  communication round of one seed (the module docstring's steps 1-4)."""
  cfg = engine.config
  local_steps = make_local_steps(engine)

  def round_(state: SimState, worker_idx: chex.Array,
             data: DeviceData) -> tuple[SimState, RoundMetrics]:
    key, fail_key, work_key, exchange_key = jax.random.split(state.key, 4)
    failures, failure_state = engine.failure_model.update(
        state.failure_state, fail_key)
    local = execution_lib.map_workers(
        functools.partial(local_steps, data=data), engine.strategy,
        engine.mesh)
    workers, opt_state, worker_loss, nonfinite = local(
        state.workers, state.opt_state,
        jax.random.split(work_key, cfg.num_workers), worker_idx,
        failures.local_steps)
    weights, policy_state = engine.policy.update(
        state.policy_state,
        weighting.WeightingInputs(workers=workers, master=state.master,
                                  connected=failures.connected))
    workers, master = elastic.exchange(
        workers, state.master, weights.h_worker, weights.h_master,
        failures.connected, order=cfg.exchange_order, key=exchange_key)
    # The exchange can overflow finite inputs (e.g. a huge learning rate):
    # its outputs are inside the guard too.
    nonfinite = (nonfinite
                 | jnp.where(jax.vmap(_all_finite)(workers), 0,
                             NONFINITE_EXCHANGE)
                 | jnp.where(_all_finite(master), 0, NONFINITE_MASTER))
    computed = failures.local_steps > 0
    train_loss = (jnp.sum(jnp.where(computed, worker_loss, 0.0))
                  / jnp.maximum(jnp.sum(computed), 1))
    new_state = SimState(workers, opt_state, master, policy_state,
                         failure_state, state.steps + failures.local_steps,
                         key, state.round + 1)
    metrics = RoundMetrics(
        worker_loss=worker_loss, train_loss=train_loss,
        log_distance=weights.log_distance,
        log_distance_after=elastic.log_distance(workers, master),
        score=weights.score,
        h_worker=weights.h_worker, h_master=weights.h_master,
        connected=failures.connected, local_steps=failures.local_steps,
        nonfinite=nonfinite)
    return new_state, metrics

  return round_


def seed_execution_mode(engine: Engine) -> str:
  """How a run's seeds are compiled, ``"vmap"`` or ``"map"``: the config's
  ``seed_execution`` with ``"auto"`` resolved (``"map"`` for a single seed
  under the convolutions that round differently anyway, im2col_cf and
  winograd)."""
  mode = engine.config.seed_execution
  if mode == "auto":
    rerounding = (getattr(engine.model, "conv_impl", None)
                  in models_lib.REROUNDING_IMPLS)
    mode = ("map" if rerounding and engine.config.num_seeds == 1
            else "vmap")
  return mode


def make_chunk(engine: Engine, length: int) -> Callable[..., Any]:
  """``chunk(states, worker_idx, data) -> (states, metrics)``: ``length``
  rounds in one ``lax.scan`` for each seed along the leading axis of
  ``states`` and ``worker_idx`` (not jitted; ``Simulation`` jits it): all
  seeds in one ``vmap``, or, where ``seed_execution_mode`` is ``"map"``,
  each seed's program without a seed axis (several seeds in a
  ``lax.map``)."""
  round_ = make_round(engine)
  constrain = functools.partial(_constrain, engine)

  def chunk(state, worker_idx, data):
    state, metrics = jax.lax.scan(
        lambda s, _: round_(s, worker_idx, data), constrain(state), None,
        length=length)
    return constrain(state), metrics

  seeds_chunk = jax.vmap(chunk, in_axes=(0, 0, None))
  if seed_execution_mode(engine) == "vmap":
    return seeds_chunk

  def seeds(states, worker_idx, data):
    # Without the seed vmap: its axis (a unit one for a single seed) rides
    # on every matmul, and XLA's CPU backend then lays out the
    # convolutions' gradients with transposing copies (channel-first
    # small_cnn, k = 8: 4.5-5.0 -> 3.7-3.9 ms a gradient step), and a
    # batched predicate would turn the skipping of uncomputed local steps
    # into a select. XLA then picks other matmul kernels, which round
    # differently: an option (``SimConfig.seed_execution``), the default
    # only with the formulations that already round differently (im2col_cf,
    # winograd).
    if worker_idx.shape[0] == 1:
      # One seed without a loop of one around it: the program runs of one
      # seed have had since the option came (as `single_seed="plain"`).
      one = lambda tree: jax.tree_util.tree_map(lambda x: x[0], tree)
      state, metrics = chunk(one(states), worker_idx[0], data)
      return jax.tree_util.tree_map(lambda x: x[None], (state, metrics))
    return jax.lax.map(lambda args: chunk(*args, data), (states, worker_idx))

  return seeds


def _constrain(engine: Engine, state: SimState) -> SimState:
  """Pins a (per-seed) state to the worker mesh, for ``sharded``."""
  if engine.mesh is None:
    return state
  return jax.tree_util.tree_map(
      jax.lax.with_sharding_constraint, state,
      execution_lib.state_shardings(state, engine.mesh,
                                    engine.config.num_workers))


def make_evaluate(engine: Engine) -> Callable[[SimState, DeviceData],
                                              EvalMetrics]:
  """``evaluate(state, data)``: the master's test accuracy and loss and its
  loss on the fixed training subset, for one seed."""
  model = engine.model
  batch_size = engine.config.eval_batch_size

  def dataset_metrics(params, x, y):
    """Loss and accuracy of ``params`` on (x, y), in fixed-size batches."""
    bs = min(batch_size, x.shape[0])
    n = x.shape[0]
    pad = (-n) % bs
    x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
    y = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)])
    valid = jnp.arange(n + pad) < n
    batches = (x.reshape((-1, bs) + x.shape[1:]), y.reshape(-1, bs),
               valid.reshape(-1, bs))

    def one(batch):
      bx, by, bv = batch
      logits = model.apply({"params": params}, bx, train=False)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, by)
      correct = jnp.argmax(logits, -1) == by
      return jnp.sum(jnp.where(bv, losses, 0.0)), jnp.sum(correct & bv)

    loss_sums, correct = jax.lax.map(one, batches)
    return jnp.sum(loss_sums) / n, jnp.sum(correct) / n

  def evaluate(state: SimState, data: DeviceData) -> EvalMetrics:
    test_loss, test_acc = dataset_metrics(state.master, data.test_x,
                                          data.test_y)
    train_loss, _ = dataset_metrics(state.master, data.train_eval_x,
                                    data.train_eval_y)
    return EvalMetrics(test_acc, test_loss, train_loss)

  return evaluate


class Simulation:
  """A compiled simulation of one configuration over its seeds.

  ``init_state`` builds the initial state (leading seed axis), ``run_rounds``
  advances it by whole rounds in one jitted scan, ``evaluate`` scores the
  master. ``run`` strings them together; experiment binaries drive them
  directly to checkpoint between chunks.

  With ``execution="sharded"`` the workers are laid over a 1-D mesh of
  ``devices`` (default: every device JAX sees); k must be a multiple of their
  number, checked here, before anything compiles.
  """

  def __init__(self, config: config_lib.SimConfig, data: data_lib.MNIST,
               *, devices: Any = None):
    self.engine = make_engine(config, devices=devices)
    config = self.config = self.engine.config
    self.method = config.method_spec
    self.strategy = self.engine.strategy
    self.mesh = self.engine.mesh
    self.seeds = np.arange(config.seed, config.seed + config.num_seeds)
    self.model = self.engine.model
    self.optimizer = self.engine.optimizer
    self.policy = self.engine.policy
    self.failure_model = self.engine.failure_model

    n_train = int(data.train_images.shape[0])
    check_data(config, data)
    # Each seed draws its own overlap partition (§4), like a fresh run would.
    self.worker_idx = np.stack([
        partition.label_skew_partition(data.train_labels, config.num_workers,
                                       config.overlap_ratio,
                                       config.label_skew, int(s))[1]
        for s in self.seeds])
    eval_idx = np.arange(n_train)
    if 0 < config.train_eval_size < n_train:
      eval_idx = np.sort(np.random.default_rng(0).choice(
          n_train, config.train_eval_size, replace=False))
    self.data = DeviceData(
        jnp.asarray(data.train_images), jnp.asarray(data.train_labels),
        jnp.asarray(data.test_images), jnp.asarray(data.test_labels),
        jnp.asarray(data.train_images[eval_idx]),
        jnp.asarray(data.train_labels[eval_idx]))
    self._worker_idx = jnp.asarray(self.worker_idx)
    self._chunks: dict[int, Callable[..., Any]] = {}
    self._init = jax.jit(jax.vmap(make_init(self.engine)))
    self._local_steps = make_local_steps(self.engine)
    stacked = jax.vmap(make_evaluate(self.engine), in_axes=(0, None))
    if (seed_execution_mode(self.engine) == "map"
        and config.num_seeds > 1):
      # Several mapped seeds are evaluated one after another, each as the
      # stack of one a single seed's run evaluates (evaluation is rare, and
      # a seed's run is then the same bytes alone or among others).
      def one_by_one(state, data):
        def one(seed_state):
          stack = jax.tree_util.tree_map(lambda x: x[None], seed_state)
          return jax.tree_util.tree_map(lambda x: x[0], stacked(stack, data))
        return jax.lax.map(one, state)
      self._evaluate = jax.jit(one_by_one)
    else:
      self._evaluate = jax.jit(stacked)

  def init_state(self) -> SimState:
    """The initial state of every seed, stacked on a leading seed axis."""
    state = self._init(jnp.asarray(self.seeds, jnp.uint32))
    if self.mesh is not None:
      state = jax.device_put(state, execution_lib.state_shardings(
          state, self.mesh, self.config.num_workers, batch_dims=1))
    return state

  def local_steps(self, params, opt_state, key, worker_idx, num_steps):
    """τ local steps of ONE worker, on this simulation's data (pure, jit-able).

    The exact step the rounds run (``make_local_steps``), for runtimes that
    run workers apart (``eahes_jax.ray_runtime``).

    Args:
      params: the worker's parameters (no worker axis).
      opt_state: its local optimizer state.
      key: its key for the round (``split(work_key, k)[j]`` in ``make_round``).
      worker_idx: int (n_j,), its rows of the training set.
      num_steps: int32 scalar; steps >= num_steps are no-ops.

    Returns:
      (params, opt_state, mean minibatch loss, non-finite bit mask).
    """
    return self._local_steps(params, opt_state, key, worker_idx, num_steps,
                             self.data)

  def _chunk_fn(self, length: int) -> Callable[..., Any]:
    if length not in self._chunks:
      self._chunks[length] = jax.jit(make_chunk(self.engine, length),
                                     donate_argnums=0)
    return self._chunks[length]

  def lower_rounds(self, state: SimState, num_rounds: int
                   ) -> jax.stages.Lowered:
    """The jitted chunk of ``num_rounds`` rounds, lowered for ``state``.

    For benchmarks and inspection (``.compile().memory_analysis()``,
    ``.cost_analysis()``); lowering a chunk ``run_rounds`` has already run
    hits the jit's cache and compiles nothing new.
    """
    return self._chunk_fn(num_rounds).lower(state, self._worker_idx,
                                            self.data)

  def run_rounds(self, state: SimState, num_rounds: int
                 ) -> tuple[SimState, RoundMetrics]:
    """Advances every seed by ``num_rounds`` rounds in one jitted scan.

    The input state's buffers are donated: use only the returned state.

    Args:
      state: the stacked state.
      num_rounds: rounds to run, >= 1.

    Returns:
      The new state and the per-round metrics as NumPy arrays with leading
      axes (seeds, num_rounds).
    """
    state, metrics = self._chunk_fn(num_rounds)(state, self._worker_idx,
                                                self.data)
    return state, execution_lib.to_host(metrics)

  def evaluate(self, state: SimState) -> EvalMetrics:
    """The master's test accuracy, test loss and training loss, per seed."""
    return jax.tree_util.tree_map(np.asarray,
                                  self._evaluate(state, self.data))

  # --------------------------------------------------------------- guards --
  def check_finite(self, metrics: RoundMetrics, first_round: int) -> None:
    """Raises ``NonFiniteError`` for the first non-finite round in a chunk.

    Args:
      metrics: a chunk's metrics from ``run_rounds`` (NumPy).
      first_round: the 1-based number of the chunk's first round.
    """
    bad = np.asarray(metrics.nonfinite)
    if not bad.any():
      return
    # The earliest bad round across all seeds, then its first seed and worker.
    rounds_bad = np.nonzero(bad.any(axis=(0, 2)))[0]
    round_i = int(rounds_bad[0])
    seed_i = int(np.nonzero(bad[:, round_i].any(axis=-1))[0][0])
    worker = int(np.nonzero(bad[seed_i, round_i])[0][0])
    code = int(bad[seed_i, round_i, worker])
    names = [name for bit, name in _NONFINITE_NAMES if code & bit]
    raise NonFiniteError(first_round + round_i, int(self.seeds[seed_i]),
                         worker, names)


ChunkCallback = Callable[[int, RoundMetrics, EvalMetrics | None, SimState],
                         None]


def chunk_schedule(start_round: int, rounds: int, eval_every: int
                   ) -> list[int]:
  """Chunk lengths from ``start_round`` to ``rounds``, ending on evaluations.

  Chunks end at every multiple of ``eval_every`` and at ``rounds``, so a run
  resumed from any chunk boundary follows the same chunks as an uninterrupted
  one.
  """
  out = []
  r = start_round
  while r < rounds:
    n = min(eval_every - r % eval_every, rounds - r)
    out.append(n)
    r += n
  return out


def iterate_chunks(sim: Simulation, state: SimState, start_round: int = 0
                   ) -> Iterator[tuple[int, SimState, RoundMetrics,
                                       EvalMetrics | None]]:
  """Runs ``sim`` from ``state`` to its last round, one chunk at a time.

  Args:
    sim: the simulation.
    state: its state after ``start_round`` rounds (donated to the first chunk).
    start_round: rounds already done.

  Yields:
    ``(rounds_done, state, metrics, evals)`` after every chunk; ``evals`` is
    the master's evaluation at chunk ends on the ``eval_every`` grid and at
    the last round, else None.

  Raises:
    NonFiniteError: as soon as a chunk reports a non-finite quantity.
  """
  cfg = sim.config
  done = start_round
  for n in chunk_schedule(start_round, cfg.rounds, cfg.eval_every):
    state, metrics = sim.run_rounds(state, n)
    sim.check_finite(metrics, done + 1)
    done += n
    evals = None
    if done % cfg.eval_every == 0 or done == cfg.rounds:
      evals = sim.evaluate(state)
    yield done, state, metrics, evals


def run(config: config_lib.SimConfig, data: data_lib.MNIST, *,
        callback: ChunkCallback | None = None) -> History:
  """Runs a configuration over all its seeds and returns the history.

  Args:
    config: the experiment (validated at construction).
    data: the dataset, e.g. from ``load_mnist``.
    callback: called after every chunk as ``callback(rounds_done, metrics,
      evals_or_None, state)``, e.g. to print progress.

  Returns:
    The run's ``History``.

  Raises:
    NonFiniteError: if any worker's loss, gradient, Hessian diagonal or
      parameters go non-finite (checked once per chunk, inside the jitted
      round, without per-step host syncs).
  """
  start = time.perf_counter()
  sim = Simulation(config, data)
  state = sim.init_state()
  eval_rounds, evals, chunks = [0], [sim.evaluate(state)], []
  for done, state, metrics, ev in iterate_chunks(sim, state):
    chunks.append(metrics)
    if ev is not None:
      eval_rounds.append(done)
      evals.append(ev)
    if callback is not None:
      callback(done, metrics, ev, state)
  return make_history(sim, chunks, eval_rounds, evals,
                      time.perf_counter() - start)


def make_history(sim: Simulation, chunks: list[RoundMetrics],
                 eval_rounds: list[int], evals: list[EvalMetrics],
                 wall_time_s: float) -> History:
  """Concatenates chunk metrics (seeds, rounds, ...) into a ``History``."""
  k = sim.config.num_workers
  s = len(sim.seeds)
  if chunks:
    metrics = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=1),
                                     *chunks)
  else:
    empty = lambda *shape: np.zeros((s, 0) + shape)
    metrics = RoundMetrics(empty(k), empty(), empty(k), empty(k), empty(k),
                           empty(k), empty(k), empty(k).astype(bool),
                           empty(k).astype(np.int32),
                           empty(k).astype(np.int32))
  return History(
      config=sim.config,
      seeds=sim.seeds,
      rounds=np.arange(1, metrics.train_loss.shape[1] + 1),
      metrics=metrics,
      eval_rounds=np.asarray(eval_rounds),
      evals=jax.tree_util.tree_map(lambda *xs: np.stack(xs, axis=1), *evals),
      wall_time_s=wall_time_s)
