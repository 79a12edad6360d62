"""An asynchronous runtime on Ray: the master and the workers as processes.

The simulator (``simulator.py``) runs k workers and the master as one program
in synchronous rounds. Here each is a Ray actor (algorithms.md §3):

* the master actor holds θ_m, one weighting-policy state per worker and the
  log of exchanges. Ray runs an actor's calls one at a time, so every exchange
  (the policy's h1/h2, then eqs. 12-13) is atomic, applied in arrival order,
  with no barrier between workers;
* each worker actor holds its parameters, its optimizer state and its
  partition O ∪ S_j, and loops: τ local steps (``Simulation.local_steps``,
  the simulator's own jitted step), then one exchange with the master.

The seed fixes everything random exactly as in the simulator: the initial
parameters, the partition, every worker's minibatch/probe key of every round,
and the failure schedule, drawn by the simulator's failure model
(``make_plan``). With ``ordered=True`` the driver runs the workers in lockstep
and triggers their exchanges one at a time in the simulator's sequential order,
which reproduces the simulator (``tests/test_ray_runtime.py``).

Failures are real: a scheduled ``disconnect`` is an exchange that never
reaches the master (the worker trains on; neither side moves); a scheduled
``crash`` kills the worker process, which Ray restarts; a straggler really runs
slow. A worker (re)starting takes the master's current parameters, a fresh
optimizer state, and continues after the last round the master heard from it:
its own state died with its process, and the master's parameters are the
freshest consistent state there is (the same the oracle's reset gives a
rejoining worker). Each worker incarnation carries an epoch; the master rejects
exchanges of a dead incarnation, so no round is logged twice.

Ray is imported only by this module (``pip install -e ".[ray]"``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from eahes_jax import config as config_lib
from eahes_jax import data as data_lib
from eahes_jax import elastic
from eahes_jax import experiment
from eahes_jax import simulator
from eahes_jax import weighting

try:
  import ray  # pylint: disable=g-import-not-at-top
  from ray import exceptions as ray_exceptions  # pylint: disable=g-import-not-at-top
except ImportError:  # pragma: no cover - exercised by the binary's test
  ray = None
  ray_exceptions = None

INSTALL_HINT = 'pip install -e ".[ray]"'
# A straggler's round takes 1 / (1 - straggler_slowdown) times as long,
# capped here (slowdown 1 would never finish).
MAX_SLOWDOWN_FACTOR = 10.0


_NONFINITE_NAMES = ((simulator.NONFINITE_LOSS, "loss"),
                    (simulator.NONFINITE_GRAD, "gradient"),
                    (simulator.NONFINITE_HESSIAN, "Hessian diagonal"),
                    (simulator.NONFINITE_PARAMS, "parameters"))


class RayUnavailableError(RuntimeError):
  """Ray is not installed, or the cluster at the address cannot be reached."""


class Plan(NamedTuple):
  """What the seed fixes for every round, as the simulator draws it.

  Attributes:
    work_keys: uint32 (R, k, 2), worker j's local-step key of round r.
    order: int32 (R, k), the simulator's sequential exchange order.
    connected: bool (R, k), whether the exchange reaches the master.
    local_steps: int32 (R, k), the simulator's local steps (0: crashed;
      below τ while connected or disconnected: a straggler).
  """

  work_keys: np.ndarray
  order: np.ndarray
  connected: np.ndarray
  local_steps: np.ndarray


def check_config(config: config_lib.SimConfig) -> config_lib.SimConfig:
  """The resolved config, or a ``ConfigError`` for what the runtime lacks."""
  config = config.resolve()
  if config.num_seeds != 1:
    raise config_lib.ConfigError(
        f"num_seeds must be 1 for the Ray runtime (one run per seed), got"
        f" {config.num_seeds}", "num_seeds")
  if config.exchange_order != "sequential":
    raise config_lib.ConfigError(
        "exchange_order must be 'sequential' for the Ray runtime (a master"
        f" that meets one worker at a time), got {config.exchange_order!r}",
        "exchange_order")
  if (config.dw_master_estimate != "exact"
      and config.method_spec.weighting == "dynamic"):
    raise config_lib.ConfigError(
        "dw_master_estimate must be 'exact' for the Ray runtime, got"
        f" {config.dw_master_estimate!r}", "dw_master_estimate")
  # The workers run one at a time in their own processes: no worker mesh.
  return config.replace(execution="vmap")


def check_run_options(config: config_lib.SimConfig, *, ordered: bool,
                      kills: Sequence[tuple[int, int]]) -> None:
  """Checks ``run``'s options against the config, before Ray starts.

  Raises:
    config.ConfigError: ``ordered`` with crashes or kills, or a kill of a
      worker the run does not have; names the field.
  """
  if ordered and config.failure_mode == "crash":
    raise config_lib.ConfigError(
        "failure_mode must be 'disconnect' with ordered=True, got 'crash'",
        "failure_mode")
  if ordered and kills:
    raise config_lib.ConfigError(
        f"kill_worker must be empty with ordered=True, got {list(kills)}",
        "kill_worker")
  for worker, _ in kills:
    if not 0 <= worker < config.num_workers:
      raise config_lib.ConfigError(
          f"kill_worker must name workers 0..{config.num_workers - 1}, got"
          f" {worker}", "kill_worker")


def make_plan(sim: simulator.Simulation) -> Plan:
  """Every round's keys, exchange order and failures, as ``sim`` draws them.

  The same key chain as ``Simulation._round``: round key → (next key,
  failure key, work key, exchange key), with the failure model's ``update``.
  """
  cfg = sim.config
  k = cfg.num_workers
  state = sim.init_state()
  key = state.key[0]
  fstate = jax.tree_util.tree_map(lambda x: x[0], state.failure_state)

  def body(carry, _):
    key, fstate = carry
    key, fail_key, work_key, exchange_key = jax.random.split(key, 4)
    failures, fstate = sim.failure_model.update(fstate, fail_key)
    out = (jax.random.split(work_key, k), elastic.exchange_order(exchange_key, k),
           failures.connected, failures.local_steps)
    return (key, fstate), out

  @jax.jit
  def scan(key, fstate):
    return jax.lax.scan(body, (key, fstate), None, length=cfg.rounds)[1]

  if cfg.rounds == 0:
    return Plan(np.zeros((0, k, 2), np.uint32), np.zeros((0, k), np.int32),
                np.zeros((0, k), bool), np.zeros((0, k), np.int32))
  return Plan(*(np.asarray(x) for x in scan(key, fstate)))


def _eval_dict(evals: simulator.EvalMetrics) -> dict[str, float]:
  return {"test_accuracy": float(evals.test_accuracy[0]),
          "test_loss": float(evals.test_loss[0]),
          "train_loss": float(evals.train_loss[0])}


class Master:
  """The parameter server (run as a Ray actor; plain class for reading).

  Holds θ_m, one policy state per worker (``policy.init(1)``), the last round
  heard from each worker, each worker's incarnation epoch, and the log.
  """

  def __init__(self, config: config_lib.SimConfig, data: data_lib.MNIST):
    self.config = config
    self.sim = simulator.Simulation(config, data)
    self._template = self.sim.init_state()
    self.params = jax.tree_util.tree_map(lambda x: x[0],
                                         self._template.master)
    k = config.num_workers
    policy = self.sim.policy
    self._oracle = config.method_spec.weighting == "oracle"
    self.policy_states = [policy.init(1) for _ in range(k)]
    self._policy_update = jax.jit(policy.update)
    self._exchange = jax.jit(_exchange_one)
    self.last_round = [0] * k
    self.epochs = [0] * k
    self.log: list[dict[str, Any]] = []
    self.rejected = 0
    self._workers: list[Any] = []
    self._kills: set[tuple[int, int]] = set()
    self.t0 = time.perf_counter()
    self.evals = [dict(round=0, wall_time_s=0.0,
                       **self._evaluate(self.params))]
    self._snapshots: list[tuple[int, float, Any]] = []
    self._next_eval = min(config.eval_every, config.rounds)

  def _evaluate(self, params: Any) -> dict[str, float]:
    state = self._template._replace(master=jax.tree_util.tree_map(
        lambda x: x[None], params))
    return _eval_dict(self.sim.evaluate(state))

  def start_clock(self, workers: Sequence[Any] = (),
                  kills: Sequence[tuple[int, int]] = ()) -> None:
    """Wall-clock zero: call once every worker is up and compiled.

    Args:
      workers: the workers' actor handles (for ``kills``).
      kills: (worker, round) pairs: kill that worker's process right after
        applying its exchange of that round, before the reply reaches it.
    """
    self._workers = list(workers)
    self._kills = {tuple(x) for x in kills}
    self.t0 = time.perf_counter()

  def rejoin(self, worker: int):
    """A worker (re)starts: (θ_m, its next round (1-based), its epoch)."""
    self.epochs[worker] += 1
    return self.params, self.last_round[worker] + 1, self.epochs[worker]

  def _heard(self, worker: int, round_: int) -> None:
    self.last_round[worker] = max(self.last_round[worker], round_)
    done = min(self.last_round)
    while self._next_eval and done >= self._next_eval:
      # A snapshot now, evaluated at the end: evaluating here would hold up
      # every worker's exchange and distort the clock.
      self._snapshots.append((self._next_eval,
                              time.perf_counter() - self.t0, self.params))
      nxt = self._next_eval + self.config.eval_every
      self._next_eval = (min(nxt, self.config.rounds)
                         if self._next_eval < self.config.rounds else 0)

  def exchange(self, worker: int, round_: int, epoch: int, params: Any,
               loss: float):
    """One elastic exchange (eqs. 12-13), atomic; the worker's new params.

    Returns None (and logs nothing) for a dead incarnation's call.
    """
    if epoch != self.epochs[worker] or round_ <= self.last_round[worker]:
      self.rejected += 1
      return None
    state = self.policy_states[worker]
    if self._oracle:
      # The oracle knows the failures: the rounds missed since the last
      # exchange count as disconnected rounds, as in the simulator.
      for _ in range(round_ - self.last_round[worker] - 1):
        _, state = self._policy_update(state, weighting.WeightingInputs(
            jax.tree_util.tree_map(lambda x: x[None], params), self.params,
            jnp.zeros((1,), bool)))
    weights, state = self._policy_update(state, weighting.WeightingInputs(
        jax.tree_util.tree_map(lambda x: x[None], params), self.params,
        jnp.ones((1,), bool)))
    self.policy_states[worker] = state
    new_worker, self.params, dist_after = self._exchange(
        params, self.params, weights.h_worker, weights.h_master)
    self.log.append(dict(
        seq=len(self.log), kind="exchange", worker=worker, round=round_,
        epoch=epoch, wall_time_s=time.perf_counter() - self.t0,
        loss=float(loss), h_worker=float(weights.h_worker[0]),
        h_master=float(weights.h_master[0]), score=float(weights.score[0]),
        log_distance=float(weights.log_distance[0]),
        log_distance_after=float(dist_after)))
    self._heard(worker, round_)
    if (worker, round_) in self._kills:
      self._kills.discard((worker, round_))
      ray.kill(self._workers[worker], no_restart=False)
    return new_worker

  def report_crash(self, worker: int, round_: int, epoch: int) -> None:
    """A worker about to die at ``round_`` (a scheduled crash)."""
    if epoch == self.epochs[worker]:
      self.log.append(dict(seq=len(self.log), kind="crash", worker=worker,
                           round=round_, epoch=epoch,
                           wall_time_s=time.perf_counter() - self.t0))
      self._heard(worker, round_)

  def worker_done(self, worker: int, epoch: int) -> None:
    """A worker finished its last round (whose exchange may have dropped)."""
    if epoch == self.epochs[worker]:
      self._heard(worker, self.config.rounds)

  def progress(self) -> tuple[list[int], int]:
    """(last round heard per worker, exchanges logged)."""
    return list(self.last_round), len(self.log)

  def get_params(self) -> Any:
    return self.params

  def finish(self) -> dict[str, Any]:
    """The log, the evaluations (the last round's forced) and θ_m."""
    done = min(self.last_round)
    if not self._snapshots or self._snapshots[-1][0] != done:
      self._snapshots.append((done, time.perf_counter() - self.t0,
                              self.params))
    for round_, wall, params in self._snapshots:
      if round_ > 0:
        self.evals.append(dict(round=round_, wall_time_s=wall,
                               **self._evaluate(params)))
    self._snapshots = []
    return dict(log=list(self.log), evals=list(self.evals),
                rejected=self.rejected, params=self.params,
                epochs=list(self.epochs))


def _exchange_one(worker, master, h_worker, h_master):
  """The simulator's sequential exchange for one worker; + log‖θ_i − θ_m‖."""
  stacked = jax.tree_util.tree_map(lambda x: x[None], worker)
  workers, master = elastic.exchange(
      stacked, master, h_worker, h_master, jnp.ones((1,), bool),
      order="sequential", key=jax.random.PRNGKey(0))
  dist = elastic.log_distance(workers, master)[0]
  return jax.tree_util.tree_map(lambda x: x[0], workers), master, dist


class Worker:
  """One worker (run as a Ray actor): τ local steps, then one exchange."""

  def __init__(self, worker: int, config: config_lib.SimConfig,
               data: data_lib.MNIST, master: Any, plan: Plan,
               exchange_timeout_s: float):
    self.id = worker
    self.config = config
    self.master = master
    self.plan = plan
    self.timeout = exchange_timeout_s
    self.sim = simulator.Simulation(config, data)
    self.idx = jnp.asarray(self.sim.worker_idx[0][worker])
    self.params, self.round, self.epoch = ray.get(
        master.rejoin.remote(worker))
    self.opt_state = self.sim.optimizer.init(self.params)
    tau = jnp.int32(config.comm_period)
    # Compile now, so the clock measures training, not XLA.
    self._steps = jax.jit(self.sim.local_steps).lower(
        self.params, self.opt_state, jnp.asarray(plan.work_keys[0, worker])
        if config.rounds else jax.random.PRNGKey(0), self.idx, tau).compile()
    self._loss = 0.0
    self._compute_s = 0.0
    self.records: list[dict[str, Any]] = []

  def ready(self) -> int:
    return self.round

  def local(self) -> None:
    """The local steps of this worker's current round (may crash by plan)."""
    r, j, cfg = self.round, self.id, self.config
    connected = bool(self.plan.connected[r - 1, j])
    steps = int(self.plan.local_steps[r - 1, j])
    if cfg.failure_mode == "crash" and not connected and steps == 0:
      ray.get(self.master.report_crash.remote(j, r, self.epoch))
      os._exit(1)  # a real crash: Ray restarts the process.
    start = time.perf_counter()
    self.params, self.opt_state, loss, bad = self._steps(
        self.params, self.opt_state, jnp.asarray(self.plan.work_keys[r - 1, j]),
        self.idx, jnp.int32(cfg.comm_period))
    loss = float(loss)
    compute_s = time.perf_counter() - start
    if int(bad):
      names = [name for bit, name in _NONFINITE_NAMES if int(bad) & bit]
      raise simulator.NonFiniteError(r, cfg.seed, j, names)
    if steps < cfg.comm_period:  # a straggler: really slow.
      factor = min(1.0 / max(1.0 - cfg.straggler_slowdown, 1e-9),
                   MAX_SLOWDOWN_FACTOR)
      time.sleep(compute_s * (factor - 1.0))
    self._loss = loss
    self._compute_s = time.perf_counter() - start

  def exchange(self) -> None:
    """This round's exchange (or its drop), then on to the next round."""
    r, j = self.round, self.id
    record = dict(round=r, epoch=self.epoch, loss=self._loss,
                  compute_s=self._compute_s, exchange_s=0.0, dropped=False)
    if not self.plan.connected[r - 1, j]:
      record["dropped"] = True  # the message never leaves: nothing moves.
    else:
      start = time.perf_counter()
      try:
        new = ray.get(self.master.exchange.remote(j, r, self.epoch,
                                                  self.params, self._loss),
                      timeout=self.timeout)
      except (ray_exceptions.GetTimeoutError, ray_exceptions.RayActorError):
        new = None
      record["exchange_s"] = time.perf_counter() - start
      if new is None:
        record["dropped"] = True
      else:
        self.params = new
    self.records.append(record)
    self.round += 1

  def run(self) -> list[dict[str, Any]]:
    """Rounds until the last: the asynchronous loop. Returns its records."""
    while self.round <= self.config.rounds:
      self.local()
      self.exchange()
    ray.get(self.master.worker_done.remote(self.id, self.epoch))
    return self.records

  def get_params(self) -> Any:
    return self.params


@dataclasses.dataclass
class Result:
  """A finished run.

  Attributes:
    config: the resolved config.
    master: θ_m at the end.
    log: the master's exchange log (dicts, in arrival order).
    evals: the master's evaluations, each with round and wall_time_s.
    worker_params: every worker's parameters at the end.
    worker_records: per worker, its per-round records (last incarnation's
      run, plus earlier incarnations' that returned).
    restarts: per worker, how many times its process was restarted.
    rejected: exchanges the master rejected (dead incarnations').
    wall_time_s: seconds from the clock's start to the end.
  """

  config: config_lib.SimConfig
  master: Any
  log: list[dict[str, Any]]
  evals: list[dict[str, Any]]
  worker_params: list[Any]
  worker_records: list[list[dict[str, Any]]]
  restarts: list[int]
  rejected: int
  wall_time_s: float


def connect(address: str | None = None) -> None:
  """Starts local Ray (``None``), or joins ``"auto"`` / ``"host:port"``.

  Raises:
    RayUnavailableError: Ray is not installed, or nothing answers at
      ``address`` (checked with a 5 s TCP connect first: Ray itself retries
      an unreachable address for minutes).
  """
  if ray is None:
    raise RayUnavailableError(
        f"the Ray runtime needs Ray; install it with {INSTALL_HINT}")
  if address not in (None, "", "auto", "local"):
    host, _, port = address.rpartition(":")
    if address.startswith("ray://") or not host or not port.isdigit():
      raise RayUnavailableError(
          f"ray_address must be 'auto' or host:port, got {address!r}")
    try:
      socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
      raise RayUnavailableError(
          f"no Ray cluster at ray_address {address!r}: {e}") from None
  if ray.is_initialized():
    return
  try:
    ray.init(address=None if address in (None, "", "local") else address,
             include_dashboard=False, log_to_driver=False,
             configure_logging=False)
  except ConnectionError as e:
    raise RayUnavailableError(
        f"cannot join the Ray cluster at ray_address {address!r}:"
        f" {str(e).splitlines()[0]}") from None


def run(config: config_lib.SimConfig, data: data_lib.MNIST, *,
        ordered: bool = False, kills: Sequence[tuple[int, int]] = (),
        exchange_timeout_s: float = 120.0, max_restarts: int = 100,
        restart_timeout_s: float = 600.0,
        callback: Callable[[list[int], int], None] | None = None) -> Result:
  """Runs ``config`` on the connected Ray (``connect`` first).

  Args:
    config: the experiment; ``num_seeds`` 1, ``exchange_order`` sequential.
    data: the dataset, shipped once to Ray's object store.
    ordered: lockstep: every worker does its round's local steps, then the
      driver triggers the exchanges one at a time in the simulator's order
      (failure_mode 'crash' is not allowed). False: asynchronous.
    kills: (worker, round) pairs: kill that worker's process (``ray.kill``;
      Ray restarts it) right when the master has applied its exchange of
      ``round``, before the reply reaches it: the exchange is logged, the
      worker never sees it. Asynchronous runs only.
    exchange_timeout_s: a worker's exchange call that takes longer counts as
      dropped.
    max_restarts: restarts Ray allows each worker process.
    restart_timeout_s: how long a worker may stay down before the run fails.
    callback: called about twice a second with (last round heard per worker,
      exchanges logged).

  Returns:
    The run's ``Result``.

  Raises:
    config.ConfigError: a config the runtime cannot run; names the field.
  """
  config = check_config(config)
  check_run_options(config, ordered=ordered, kills=kills)
  if ray is None or not ray.is_initialized():
    raise RayUnavailableError("call ray_runtime.connect() first")
  k = config.num_workers
  plan = make_plan(simulator.Simulation(config, data))
  data_ref = ray.put(data)
  master = ray.remote(num_cpus=0)(Master).remote(config, data_ref)
  workers = [ray.remote(num_cpus=0, max_restarts=max_restarts)(Worker).remote(
      j, config, data_ref, master, plan, exchange_timeout_s)
             for j in range(k)]
  try:
    ray.get([w.ready.remote() for w in workers])
    ray.get(master.start_clock.remote(workers, list(kills)))
    start = time.perf_counter()
    records: list[list[dict[str, Any]]] = [[] for _ in range(k)]
    if ordered:
      for r in range(config.rounds):
        ray.get([w.local.remote() for w in workers])
        for j in plan.order[r]:
          ray.get(workers[int(j)].exchange.remote())
        if callback is not None:
          callback(*ray.get(master.progress.remote()))
      for j, w in enumerate(workers):
        records[j] = ray.get(w.run.remote())
    else:
      pending = {w.run.remote(): j for j, w in enumerate(workers)}
      retry: dict[int, float] = {}  # worker -> when to call run() again
      down_since: dict[int, float] = {}
      while pending or retry:
        ready, _ = ray.wait(list(pending), timeout=0.5) if pending else (
            [], time.sleep(0.5))
        for ref in ready:
          j = pending.pop(ref)
          try:
            records[j].extend(ray.get(ref))
            down_since.pop(j, None)
          except (ray_exceptions.RayActorError,
                  ray_exceptions.ActorUnavailableError):
            # The process died; Ray restarts it (up to max_restarts) and it
            # rejoins from the master. Calls meeting the restarting actor
            # fail too: call again shortly, for at most restart_timeout_s.
            now = time.perf_counter()
            if now - down_since.setdefault(j, now) > restart_timeout_s:
              raise
            retry[j] = now + 1.0
        for j, when in list(retry.items()):
          if time.perf_counter() >= when:
            del retry[j]
            pending[workers[j].run.remote()] = j
        last, logged = ray.get(master.progress.remote())
        if callback is not None:
          callback(last, logged)
    wall = time.perf_counter() - start  # before the deferred evaluations
    out = ray.get(master.finish.remote())
    worker_params = ray.get([w.get_params.remote() for w in workers])
  finally:
    for actor in workers + [master]:
      ray.kill(actor, no_restart=True)
  # Every process start (the first included) rejoined once.
  restarts = [e - 1 for e in out["epochs"]]
  return Result(config, out["params"], out["log"], out["evals"],
                worker_params, records, restarts, out["rejected"], wall)


LOG_FILE = "exchanges.jsonl"
RUNTIME_FILE = "runtime.json"


def metrics_rows(result: Result) -> list[dict[str, Any]]:
  """Rows in ``experiment.METRIC_COLUMNS`` plus ``wall_time_s``.

  Round r's row gathers the exchanges of round r from the log (per-worker
  columns are null for a worker whose exchange did not arrive). Its
  ``wall_time_s`` is the master's clock at that round's evaluation, or else
  at the round's last arriving exchange.
  """
  cfg = result.config
  k = cfg.num_workers
  evals = {e["round"]: e for e in result.evals}
  by_round: dict[int, dict[int, dict[str, Any]]] = {}
  for e in result.log:
    if e["kind"] == "exchange":
      by_round.setdefault(e["round"], {})[e["worker"]] = e
  crashed = {(e["round"], e["worker"]) for e in result.log
             if e["kind"] == "crash"}
  rows = []
  for r in range(cfg.rounds + 1):
    got = by_round.get(r, {})
    row: dict[str, Any] = {"round": r, "seed": cfg.seed}
    losses = [e["loss"] for e in got.values()]
    row["minibatch_loss"] = float(np.mean(losses)) if losses else None
    ev = evals.get(r)
    for name in ("train_loss", "test_loss", "test_accuracy"):
      row[name] = ev[name] if ev else None
    for name in ("h_worker", "h_master", "log_distance", "log_distance_after",
                 "score"):
      row[name] = ([got[j][name] if j in got else None for j in range(k)]
                   if r else None)
    row["connected"] = [j in got for j in range(k)] if r else None
    row["local_steps"] = ([0 if (r, j) in crashed else cfg.comm_period
                           for j in range(k)] if r else None)
    times = [e["wall_time_s"] for e in got.values()]
    row["wall_time_s"] = (ev["wall_time_s"] if ev
                          else (max(times) if times else None))
    rows.append(row)
  return rows


def write_results(result: Result, out_dir: str, data_source: str, *,
                  ordered: bool = False) -> experiment.RunSummary:
  """Writes the simulator's results folder (plus the log and runtime stats).

  ``config.json``, ``metrics.jsonl`` (with ``wall_time_s``) and
  ``summary.json`` as ``experiment.run_experiment`` writes them, so
  ``plotting.load_run`` reads the folder; ``exchanges.jsonl`` is the master's
  log and ``runtime.json`` the restarts, latencies and idle times.
  """
  os.makedirs(out_dir, exist_ok=True)
  cfg = result.config
  with open(os.path.join(out_dir, experiment.CONFIG_FILE), "w") as f:
    json.dump({"config": cfg.to_dict(), "data_source": data_source,
               "runtime": "ray", "ordered": ordered}, f, indent=2)
  rows = metrics_rows(result)
  with open(os.path.join(out_dir, experiment.METRICS_FILE), "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  with open(os.path.join(out_dir, LOG_FILE), "w") as f:
    for entry in result.log:
      f.write(json.dumps(entry) + "\n")
  records = [rec for worker in result.worker_records for rec in worker]
  compute = [rec["compute_s"] for rec in records]
  latency = [rec["exchange_s"] for rec in records if not rec["dropped"]]
  stats = {
      "restarts": result.restarts, "rejected": result.rejected,
      "exchanges": sum(e["kind"] == "exchange" for e in result.log),
      "crashes": sum(e["kind"] == "crash" for e in result.log),
      "dropped": sum(rec["dropped"] for rec in records),
      "mean_compute_s": float(np.mean(compute)) if compute else None,
      "mean_exchange_latency_s": float(np.mean(latency)) if latency else None,
      # A worker idles while it waits for the master's reply.
      "idle_fraction": (float(np.sum(latency) / (np.sum(latency)
                                                  + np.sum(compute)))
                        if compute else None),
      "wall_time_s": result.wall_time_s}
  with open(os.path.join(out_dir, RUNTIME_FILE), "w") as f:
    json.dump(stats, f, indent=2)
  last = rows[-1]
  summary = experiment.RunSummary(
      method=cfg.method, num_workers=cfg.num_workers,
      comm_period=cfg.comm_period, rounds=cfg.rounds, seeds=[cfg.seed],
      final_test_accuracy=[last["test_accuracy"]],
      final_train_loss=[last["train_loss"]],
      final_test_loss=[last["test_loss"]],
      wall_time_s=result.wall_time_s, data_source=data_source)
  with open(os.path.join(out_dir, experiment.SUMMARY_FILE), "w") as f:
    json.dump(dataclasses.asdict(summary), f, indent=2)
  return summary


def train(config: config_lib.SimConfig, out_dir: str, *, data_source: str,
          mnist_dir: str | None = None, ray_address: str | None = None,
          ordered: bool = False, kills: Sequence[tuple[int, int]] = (),
          log: Callable[[str], None] = print) -> experiment.RunSummary:
  """What ``experiments.train_distributed`` does: connect, run, write.

  Raises:
    RayUnavailableError: no Ray, or no cluster at ``ray_address``.
    config.ConfigError, data.DataError: as ``experiment.run_experiment``.
  """
  config = check_config(config)
  check_run_options(config, ordered=ordered, kills=kills)
  # The folder is checked before Ray starts and the run takes its time: it
  # used to fail only in write_results, losing the finished run, and a
  # folder of earlier results was overwritten.
  experiment.check_writable(out_dir)
  held = [name for name in (experiment.METRICS_FILE, experiment.SUMMARY_FILE)
          if os.path.exists(os.path.join(out_dir, name))]
  if held:
    raise experiment.ResultsDirError(
        f"--out_dir {out_dir!r} already holds results ({', '.join(held)});"
        " refusing to overwrite them, choose another --out_dir")
  connect(ray_address)
  data = experiment.load_data(data_source, mnist_dir)
  log(f"Ray: {len(ray.nodes())} node(s), {ray.cluster_resources().get('CPU', 0):g}"
      f" CPUs; starting {config.num_workers} workers and the master")
  start = time.perf_counter()
  state = {"t": None, "done": 0, "shown": 0.0}

  def progress(last: list[int], logged: int) -> None:
    done = min(last)
    now = time.perf_counter()
    if state["t"] is None:
      state["t"], state["done0"] = now, done  # workers up and compiled.
      return
    if (done < config.rounds and now - state["shown"] < 2.0) or (
        done == state.get("shown_round")):
      return
    state["shown"], state["shown_round"] = now, done
    rate = (done - state["done0"]) / max(now - state["t"], 1e-9)
    eta = (f"ETA {(config.rounds - done) / rate:.0f} s" if rate > 0
           else "ETA unknown")
    log(f"round {done}/{config.rounds} (every worker): {logged} exchanges,"
        f" {rate:.2f} rounds/s, {eta}")

  result = run(config, data, ordered=ordered, kills=kills, callback=progress)
  summary = write_results(result, out_dir, data.source, ordered=ordered)
  log(f"{summary.line()}; total {time.perf_counter() - start:.1f} s with"
      f" start-up; restarts {result.restarts}")
  log(f"results in {out_dir}")
  return summary
