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

A killed master is restarted by Ray too when it checkpoints
(``checkpoint_every``): it journals every state-changing call before applying
it and saves its whole state with orbax every few exchanges, so the restarted
process restores the newest checkpoint, replays the journal after it and is
the master that died, bit for bit (``Master``).

Ray is imported only by this module (``pip install -e ".[ray]"``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import signal
import socket
import struct
import time
import uuid
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from eahes_jax import checkpoint
from eahes_jax import config as config_lib
from eahes_jax import data as data_lib
from eahes_jax import elastic
from eahes_jax import experiment
from eahes_jax import results_folder
from eahes_jax import simulator
from eahes_jax import weighting

try:
  import ray  # pylint: disable=g-import-not-at-top
  from ray import exceptions as ray_exceptions  # pylint: disable=g-import-not-at-top
  from ray.util import scheduling_strategies  # pylint: disable=g-import-not-at-top
except ImportError:  # pragma: no cover - exercised by the binary's test
  ray = None
  ray_exceptions = None
  scheduling_strategies = None

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


class MasterJournal:
  """The master's write-ahead journal: every state-changing call, in order.

  Each record is ``(seq, method, args, now)``, pickled and length-prefixed,
  appended and flushed before the call changes anything: a killed process
  loses nothing that ``write`` returned for (the page cache survives it; a
  machine crash would need an fsync, which the runtime does not model). The
  journal is cut into segments, one per checkpoint: ``journal/<seq>.pkl``
  holds the calls from the checkpoint at ``seq`` on, so a restore reads the
  newest valid checkpoint and replays the records after it. A record torn by
  a kill mid-write ends its segment.

  Args:
    directory: the master's checkpoint folder (the journal is a subfolder).
  """

  def __init__(self, directory: str):
    self.directory = os.path.join(directory, "journal")
    os.makedirs(self.directory, exist_ok=True)
    self._file = None

  def segments(self) -> list[int]:
    """The first seq of every segment, oldest first."""
    return sorted(int(name[:-4]) for name in os.listdir(self.directory)
                  if name.endswith(".pkl") and name[:-4].isdigit())

  def start_segment(self, seq: int, keep_from: int) -> None:
    """Starts the segment of calls from ``seq`` on; drops segments that end
    before ``keep_from`` (the oldest checkpoint kept)."""
    if self._file is not None:
      self._file.close()
    # A segment already at ``seq`` holds nothing valid (a restore replayed
    # everything whole up to ``seq``), at most a torn record: start afresh.
    self._file = open(os.path.join(self.directory, f"{seq:09d}.pkl"), "wb")
    starts = self.segments()
    for start, nxt in zip(starts, starts[1:]):
      if nxt <= keep_from:
        os.remove(os.path.join(self.directory, f"{start:09d}.pkl"))

  def append(self, record: tuple[Any, ...]) -> None:
    blob = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
    self._file.write(struct.pack("<Q", len(blob)) + blob)
    self._file.flush()

  def records(self, since: int) -> list[tuple[Any, ...]]:
    """The whole records from seq ``since`` on, in order, up to a gap."""
    out = []
    for start in self.segments():
      if start > since + len(out):
        break  # A gap: what follows cannot be replayed onto this state.
      path = os.path.join(self.directory, f"{start:09d}.pkl")
      end = os.path.getsize(path)
      with open(path, "rb") as f:
        while True:
          head = f.read(8)
          if len(head) < 8:
            break
          size = struct.unpack("<Q", head)[0]
          # A torn length can claim more than the file holds.
          blob = f.read(size) if size <= end - f.tell() else b""
          try:
            record = pickle.loads(blob) if len(blob) == size else None
          except Exception:  # pylint: disable=broad-except
            record = None
          if record is None:
            break  # Torn by a kill mid-write: nothing after it was applied.
          if record[0] == since + len(out):
            out.append(record)
    return out

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


def worker_name(run_id: str, worker: int) -> str:
  """The Ray actor name of a run's worker (the master kills by name)."""
  return f"eahes-{run_id}-worker-{worker}"


class Master:
  """The parameter server (run as a Ray actor; plain class for reading).

  Holds θ_m, one policy state per worker (``policy.init(1)``), the last round
  heard from each worker, each worker's incarnation epoch, and the log.

  With ``checkpoint_dir`` the master survives its own death. Every call that
  changes its state is journaled (``MasterJournal``) before it changes
  anything, and every ``checkpoint_every`` exchanges the whole state (θ_m,
  the policy states, the snapshots to evaluate, each worker's last reply, and
  as JSON the log, the evaluations and each worker's last round and epoch) is
  saved with orbax (``checkpoint.Checkpointer``). A master constructed where
  either exists (Ray restarting the killed process with the same arguments)
  restores the newest checkpoint that restores intact and replays the journal
  after it: it is the state the killed process had, bit for bit. A worker
  whose exchange was cut off by the death calls again; the restored master
  answers that call from its last reply to the worker, so the exchange
  happens once, on both sides.

  Args:
    config: the resolved config.
    data: the dataset.
    checkpoint_dir: the master's checkpoint folder (None: no recovery).
    checkpoint_every: exchanges between checkpoints (with
      ``checkpoint_dir``).
    kills: (worker, round) pairs: kill that worker's process right after
      applying its exchange of that round, before the reply reaches it.
    kill_master: rounds: kill this process (SIGKILL, as ``kill -9`` from
      outside would) right after applying the first exchange of each, before
      any checkpoint or reply.
    run_id: the run's actor names (``worker_name``), for ``kills``.
  """

  def __init__(self, config: config_lib.SimConfig, data: data_lib.MNIST, *,
               checkpoint_dir: str | None = None, checkpoint_every: int = 0,
               kills: Sequence[tuple[int, int]] = (),
               kill_master: Sequence[int] = (), run_id: str = ""):
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
    self._elastic = jax.jit(_exchange_one)
    self.last_round = [0] * k
    self.epochs = [0] * k
    self._tokens: list[str | None] = [None] * k
    # Each worker's last exchange (round, epoch) and the reply it was sent.
    self._replies: list[tuple[int, int, Any] | None] = [None] * k
    self.log: list[dict[str, Any]] = []
    self.rejected = 0
    self.restarts = 0
    self.seq = 0  # state-changing calls applied (the journal's position)
    self._kills = {tuple(x) for x in kills}
    self._kill_master = set(kill_master)
    self._run_id = run_id
    self.t0 = time.time()
    self._snapshots: list[tuple[int, float, Any]] = []
    self._next_eval = min(config.eval_every, config.rounds)
    self._every = checkpoint_every
    self._ckpt = self._journal = None
    self.evals: list[dict[str, Any]] = []
    restarted = False
    if checkpoint_dir is not None:
      self._ckpt = checkpoint.Checkpointer(checkpoint_dir)
      self._journal = MasterJournal(checkpoint_dir)
      restarted = bool(self._ckpt.rounds() or self._journal.segments())
      if restarted:
        self._restore()
    if not self.evals:  # fresh, or killed before its first checkpoint
      self.evals = [dict(round=0, wall_time_s=0.0,
                         **self._evaluate(self.params))]
    if self._journal is not None:
      self._journal.start_segment(self.seq, keep_from=min(
          self._ckpt.rounds(), default=0))
      if restarted:
        self._journaled("restored")

  def _evaluate(self, params: Any) -> dict[str, float]:
    state = self._template._replace(master=jax.tree_util.tree_map(
        lambda x: x[None], params))
    return _eval_dict(self.sim.evaluate(state))

  # -- the journal and the checkpoint -------------------------------------

  def _journaled(self, method: str, *args):
    """Journals the call, then applies it (``_<method>``)."""
    now = time.time()
    if self._journal is not None:
      self._journal.append((self.seq, method, jax.device_get(args), now))
    self.seq += 1
    return getattr(self, "_" + method)(*args, now=now, live=True)

  def _arrays(self) -> dict[str, Any]:
    """The state's arrays, in shapes fixed by the config (orbax restores
    into a like-shaped tree): snapshots and replies padded with zeros."""
    zeros = jax.tree_util.tree_map(jnp.zeros_like, self.params)
    cfg = self.config
    most = max(1, -(-cfg.rounds // cfg.eval_every))
    snaps = [s[2] for s in self._snapshots] + [zeros] * (
        most - len(self._snapshots))
    replies = [r[2] if r is not None else zeros for r in self._replies]
    return dict(params=self.params, policy=list(self.policy_states),
                snapshots=_stack(snaps), replies=_stack(replies))

  def _record(self) -> dict[str, Any]:
    """The state's JSON part."""
    return dict(
        config=_json(self.config.to_dict()), seq=self.seq,
        last_round=self.last_round, epochs=self.epochs, tokens=self._tokens,
        replies=[r[:2] if r is not None else None for r in self._replies],
        log=self.log, rejected=self.rejected, restarts=self.restarts,
        t0=self.t0, evals=self.evals,
        snapshots=[s[:2] for s in self._snapshots], next_eval=self._next_eval)

  def _save(self) -> None:
    self._ckpt.save(self._arrays(), checkpoint.Progress(
        rounds_done=self.seq, metrics_rows=len(self.log), metrics_bytes=0),
                    record=self._record())
    self._journal.start_segment(self.seq, keep_from=min(self._ckpt.rounds()))

  def _check_record(self, record: dict[str, Any] | None) -> None:
    # A field missing from the record (written before the field existed)
    # counts as its default, as for a results folder's run record.
    if record is None or not isinstance(record.get("config"), dict) or (
        results_folder.differing_config_fields(
            record["config"], _json(self.config.to_dict()))):
      raise config_lib.ConfigError(
          f"the master checkpoint in {self._ckpt.directory} is of another"
          " run's config", "checkpoint_every")

  def _restore(self) -> None:
    """The newest intact checkpoint, then the journal after it."""
    try:
      arrays, progress = self._ckpt.restore(self._arrays(),
                                            check_record=self._check_record)
    except FileNotFoundError:  # killed before its first checkpoint
      pass
    else:
      rec = self._ckpt.record(progress.rounds_done)
      self.params = arrays["params"]
      self.policy_states = list(arrays["policy"])
      for name in ("seq", "last_round", "epochs", "log", "rejected",
                   "restarts", "t0", "evals"):
        setattr(self, name, rec[name])
      self._tokens, self._next_eval = rec["tokens"], rec["next_eval"]
      self._snapshots = [(r, w, _pick(arrays["snapshots"], i))
                         for i, (r, w) in enumerate(rec["snapshots"])]
      self._replies = [None if m is None
                       else (*m, _pick(arrays["replies"], j))
                       for j, m in enumerate(rec["replies"])]
    for seq, method, args, now in self._journal.records(self.seq):
      self.seq = seq + 1
      getattr(self, "_" + method)(*args, now=now, live=False)

  def _restored(self, *, now: float, live: bool) -> None:
    del now, live
    self.restarts += 1

  # -- the calls ------------------------------------------------------------

  def start_clock(self) -> None:
    """Wall-clock zero: call once every worker is up and compiled."""
    self._journaled("start_clock")

  def _start_clock(self, *, now: float, live: bool) -> None:
    del live
    self.t0 = now

  def rejoin(self, worker: int, token: str = ""):
    """A worker (re)starts: (θ_m, its next round (1-based), its epoch).

    ``token`` names the worker process: a call repeated by the same process
    (its first reached a master that died) gets the same epoch.
    """
    return self._journaled("rejoin", worker, token)

  def _rejoin(self, worker: int, token: str, *, now: float, live: bool):
    del now, live
    if not token or token != self._tokens[worker]:
      self.epochs[worker] += 1
      self._tokens[worker] = token
    return self.params, self.last_round[worker] + 1, self.epochs[worker]

  def _heard(self, worker: int, round_: int, now: float) -> None:
    self.last_round[worker] = max(self.last_round[worker], round_)
    done = min(self.last_round)
    while self._next_eval and done >= self._next_eval:
      # A snapshot now, evaluated at the end: evaluating here would hold up
      # every worker's exchange and distort the clock.
      self._snapshots.append((self._next_eval, now - self.t0, self.params))
      nxt = self._next_eval + self.config.eval_every
      self._next_eval = (min(nxt, self.config.rounds)
                         if self._next_eval < self.config.rounds else 0)

  def exchange(self, worker: int, round_: int, epoch: int, params: Any,
               loss: float):
    """One elastic exchange (eqs. 12-13), atomic; the worker's new params.

    Returns None (and logs nothing) for a dead incarnation's call or a round
    already applied, except the worker's last exchange, whose reply is sent
    again (the worker calls again when a master death cut off the reply).
    """
    return self._journaled("exchange", worker, round_, epoch, params, loss)

  def _exchange(self, worker: int, round_: int, epoch: int, params: Any,
                loss: float, *, now: float, live: bool):
    if epoch != self.epochs[worker] or round_ <= self.last_round[worker]:
      last = self._replies[worker]
      if last is not None and tuple(last[:2]) == (round_, epoch):
        return last[2]
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
    new_worker, self.params, dist_after = self._elastic(
        params, self.params, weights.h_worker, weights.h_master)
    self.log.append(dict(
        seq=len(self.log), kind="exchange", worker=worker, round=round_,
        epoch=epoch, wall_time_s=now - self.t0,
        loss=float(loss), h_worker=float(weights.h_worker[0]),
        h_master=float(weights.h_master[0]), score=float(weights.score[0]),
        log_distance=float(weights.log_distance[0]),
        log_distance_after=float(dist_after)))
    self._replies[worker] = (round_, epoch, new_worker)
    self._heard(worker, round_, now)
    if not live:
      return new_worker
    if round_ in self._kill_master and sum(
        e["kind"] == "exchange" and e["round"] == round_
        for e in self.log) == 1:
      # Journaled and applied; not checkpointed, not replied.
      os.kill(os.getpid(), signal.SIGKILL)
    if (worker, round_) in self._kills:
      self._kills.discard((worker, round_))
      ray.kill(ray.get_actor(worker_name(self._run_id, worker)),
               no_restart=False)
    if self._every and sum(e["kind"] == "exchange"
                           for e in self.log) % self._every == 0:
      self._save()
    return new_worker

  def report_crash(self, worker: int, round_: int, epoch: int) -> None:
    """A worker about to die at ``round_`` (a scheduled crash)."""
    self._journaled("report_crash", worker, round_, epoch)

  def _report_crash(self, worker: int, round_: int, epoch: int, *,
                    now: float, live: bool) -> None:
    del live
    if epoch == self.epochs[worker] and round_ > self.last_round[worker]:
      self.log.append(dict(seq=len(self.log), kind="crash", worker=worker,
                           round=round_, epoch=epoch,
                           wall_time_s=now - self.t0))
      self._heard(worker, round_, now)

  def worker_done(self, worker: int, epoch: int) -> None:
    """A worker finished its last round (whose exchange may have dropped)."""
    self._journaled("worker_done", worker, epoch)

  def _worker_done(self, worker: int, epoch: int, *, now: float,
                   live: bool) -> None:
    del live
    if epoch == self.epochs[worker]:
      self._heard(worker, self.config.rounds, now)

  def progress(self) -> tuple[list[int], int]:
    """(last round heard per worker, exchanges logged)."""
    return list(self.last_round), len(self.log)

  def get_params(self) -> Any:
    return self.params

  def finish(self) -> dict[str, Any]:
    """The log, the evaluations (the last round's forced) and θ_m."""
    done = min(self.last_round)
    snapshots = list(self._snapshots)
    if not snapshots or snapshots[-1][0] != done:
      snapshots.append((done, time.time() - self.t0, self.params))
    evals = list(self.evals) + [
        dict(round=round_, wall_time_s=wall, **self._evaluate(params))
        for round_, wall, params in snapshots if round_ > 0]
    return dict(log=list(self.log), evals=evals, rejected=self.rejected,
                params=self.params, epochs=list(self.epochs),
                master_restarts=self.restarts)


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree_util.tree_map(lambda *x: jnp.stack(x), *trees)


def _pick(tree: Any, i: int) -> Any:
  return jax.tree_util.tree_map(lambda x: x[i], tree)


def _json(value: Any) -> Any:
  """``value`` as it reads back from JSON (tuples become lists)."""
  return json.loads(json.dumps(value))


def _exchange_one(worker, master, h_worker, h_master):
  """The simulator's sequential exchange for one worker; + log‖θ_i − θ_m‖."""
  stacked = jax.tree_util.tree_map(lambda x: x[None], worker)
  workers, master = elastic.exchange(
      stacked, master, h_worker, h_master, jnp.ones((1,), bool),
      order="sequential", key=jax.random.PRNGKey(0))
  dist = elastic.log_distance(workers, master)[0]
  return jax.tree_util.tree_map(lambda x: x[0], workers), master, dist


def _call(method: Any, *args, timeout: float | None = None,
          retry_s: float = 0.0) -> Any:
  """``ray.get(method.remote(*args))``, called again while its actor restarts.

  A call that meets the actor's death fails; one made while Ray restarts it
  waits for the new process.

  Args:
    method: an actor's method.
    *args: its arguments.
    timeout: seconds in all, retries included (None: none).
    retry_s: how long after the first try to call a dead actor again (0: do
      not).
  """
  start = time.perf_counter()
  while True:
    left = (None if timeout is None
            else max(timeout - (time.perf_counter() - start), 0.0))
    try:
      return ray.get(method.remote(*args), timeout=left)
    except (ray_exceptions.RayActorError,
            ray_exceptions.ActorUnavailableError):
      if time.perf_counter() - start > retry_s:
        raise
      time.sleep(0.1)


class Worker:
  """One worker (run as a Ray actor): τ local steps, then one exchange."""

  def __init__(self, worker: int, config: config_lib.SimConfig,
               data: data_lib.MNIST, master: Any, plan: Plan,
               exchange_timeout_s: float, master_retry_s: float = 0.0):
    self.id = worker
    self.config = config
    self.master = master
    self.plan = plan
    self.timeout = exchange_timeout_s
    self.retry_s = master_retry_s
    self.sim = simulator.Simulation(config, data)
    self.idx = jnp.asarray(self.sim.worker_idx[0][worker])
    self.params, self.round, self.epoch = _call(
        master.rejoin, worker, uuid.uuid4().hex, retry_s=master_retry_s)
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
      _call(self.master.report_crash, j, r, self.epoch, retry_s=self.retry_s)
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
        # A master that Ray restarts answers the same call again.
        new = _call(self.master.exchange, j, r, self.epoch, self.params,
                    self._loss, timeout=self.timeout, retry_s=self.retry_s)
      except (ray_exceptions.GetTimeoutError, ray_exceptions.RayActorError,
              ray_exceptions.ActorUnavailableError):
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
    _call(self.master.worker_done, self.id, self.epoch, retry_s=self.retry_s)
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
    master_restarts: how many times the master's process was restarted
      (and restored from its checkpoint and journal).
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
  master_restarts: int = 0


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


def check_runtime_args(config: config_lib.SimConfig, *, ordered: bool = False,
                       kills: Sequence[tuple[int, int]] = (),
                       checkpoint_dir: str | None = None,
                       checkpoint_every: int = 0,
                       kill_master: Sequence[int] = ()) -> None:
  """Raises a ``ConfigError`` naming the argument the runtime cannot take."""
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
  if checkpoint_every < 0:
    raise config_lib.ConfigError(
        f"checkpoint_every must be >= 0, got {checkpoint_every}",
        "checkpoint_every")
  if checkpoint_every and checkpoint_dir is None:
    raise config_lib.ConfigError(
        "checkpoint_every needs a checkpoint folder (checkpoint_dir)",
        "checkpoint_every")
  if kill_master and not checkpoint_every:
    raise config_lib.ConfigError(
        "kill_master needs checkpoint_every > 0 (a master without a"
        f" checkpoint cannot recover), got kill_master={list(kill_master)}",
        "kill_master")
  for round_ in kill_master:
    if not 1 <= round_ <= config.rounds:
      raise config_lib.ConfigError(
          f"kill_master must name rounds 1..{config.rounds}, got {round_}",
          "kill_master")


def run(config: config_lib.SimConfig, data: data_lib.MNIST, *,
        ordered: bool = False, kills: Sequence[tuple[int, int]] = (),
        checkpoint_dir: str | None = None, checkpoint_every: int = 0,
        kill_master: Sequence[int] = (),
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
    checkpoint_dir: the master's checkpoint folder (emptied first); with
      ``checkpoint_every`` Ray restarts a killed master, which restores
      from it (``Master``).
    checkpoint_every: exchanges between the master's checkpoints (0: no
      checkpoint, and a killed master ends the run).
    kill_master: rounds: the master's process is killed (SIGKILL) right
      after applying the first exchange of each, before its reply or
      checkpoint; Ray restarts it. Needs ``checkpoint_every``.
    exchange_timeout_s: a worker's exchange call that takes longer counts as
      dropped.
    max_restarts: restarts Ray allows each worker process (and the master's,
      with ``checkpoint_every``).
    restart_timeout_s: how long a worker (or the master) may stay down
      before the run fails.
    callback: called about twice a second with (last round heard per worker,
      exchanges logged).

  Returns:
    The run's ``Result``.

  Raises:
    config.ConfigError: a config the runtime cannot run; names the field.
  """
  config = check_config(config)
  check_runtime_args(config, ordered=ordered, kills=kills,
                     checkpoint_dir=checkpoint_dir,
                     checkpoint_every=checkpoint_every,
                     kill_master=kill_master)
  if ray is None or not ray.is_initialized():
    raise RayUnavailableError("call ray_runtime.connect() first")
  k = config.num_workers
  plan = make_plan(simulator.Simulation(config, data))
  data_ref = ray.put(data)
  run_id = uuid.uuid4().hex[:12]
  retry_s = restart_timeout_s if checkpoint_every else 0.0
  if checkpoint_every:
    # A fresh run: a checkpoint left here would be restored as this run's.
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
  # The master on the driver's node, so that its checkpoint folder is the
  # one the driver names (a cluster's other nodes have their own disks).
  master = ray.remote(
      num_cpus=0, max_restarts=max_restarts if checkpoint_every else 0,
      scheduling_strategy=scheduling_strategies.NodeAffinitySchedulingStrategy(
          ray.get_runtime_context().get_node_id(), soft=False))(Master).remote(
              config, data_ref,
              checkpoint_dir=checkpoint_dir if checkpoint_every else None,
              checkpoint_every=checkpoint_every, kills=list(kills),
              kill_master=list(kill_master), run_id=run_id)
  workers = [ray.remote(num_cpus=0, max_restarts=max_restarts)(Worker).options(
      name=worker_name(run_id, j)).remote(
          j, config, data_ref, master, plan, exchange_timeout_s, retry_s)
             for j in range(k)]

  def ask(method: str) -> Any:
    return _call(getattr(master, method), retry_s=retry_s)

  try:
    ray.get([w.ready.remote() for w in workers])
    ask("start_clock")
    start = time.perf_counter()
    records: list[list[dict[str, Any]]] = [[] for _ in range(k)]
    if ordered:
      for r in range(config.rounds):
        ray.get([w.local.remote() for w in workers])
        for j in plan.order[r]:
          ray.get(workers[int(j)].exchange.remote())
        if callback is not None:
          callback(*ask("progress"))
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
        last, logged = ask("progress")
        if callback is not None:
          callback(last, logged)
    wall = time.perf_counter() - start  # before the deferred evaluations
    out = ask("finish")
    worker_params = ray.get([w.get_params.remote() for w in workers])
  finally:
    for actor in workers + [master]:
      ray.kill(actor, no_restart=True)
  # Every process start (the first included) rejoined once.
  restarts = [e - 1 for e in out["epochs"]]
  return Result(config, out["params"], out["log"], out["evals"],
                worker_params, records, restarts, out["rejected"], wall,
                out["master_restarts"])


LOG_FILE = "exchanges.jsonl"
RUNTIME_FILE = "runtime.json"
CHECKPOINT_DIR = "master_checkpoint"  # the master's orbax checkpoints


def metrics_rows(result: Result) -> list[dict[str, Any]]:
  """Rows in ``results_folder.METRIC_COLUMNS`` plus ``wall_time_s``.

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
                  ordered: bool = False) -> results_folder.RunSummary:
  """Writes the simulator's results folder (plus the log and runtime stats).

  ``config.json``, ``metrics.jsonl`` (with ``wall_time_s``) and
  ``summary.json`` as ``experiment.run_experiment`` writes them, so
  ``plotting.load_run`` reads the folder; ``exchanges.jsonl`` is the master's
  log and ``runtime.json`` the restarts, latencies and idle times.
  """
  os.makedirs(out_dir, exist_ok=True)
  cfg = result.config
  with open(os.path.join(out_dir, results_folder.CONFIG_FILE), "w") as f:
    json.dump({"config": cfg.to_dict(), "data_source": data_source,
               "runtime": "ray", "ordered": ordered}, f, indent=2)
  rows = metrics_rows(result)
  with open(os.path.join(out_dir, results_folder.METRICS_FILE), "w") as f:
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
      "master_restarts": result.master_restarts,
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
  summary = results_folder.RunSummary(
      method=cfg.method, num_workers=cfg.num_workers,
      comm_period=cfg.comm_period, rounds=cfg.rounds, seeds=[cfg.seed],
      final_test_accuracy=[last["test_accuracy"]],
      final_train_loss=[last["train_loss"]],
      final_test_loss=[last["test_loss"]],
      wall_time_s=result.wall_time_s, data_source=data_source)
  with open(os.path.join(out_dir, results_folder.SUMMARY_FILE), "w") as f:
    json.dump(dataclasses.asdict(summary), f, indent=2)
  return summary


def train(config: config_lib.SimConfig, out_dir: str, *, data_source: str,
          mnist_dir: str | None = None, ray_address: str | None = None,
          ordered: bool = False, kills: Sequence[tuple[int, int]] = (),
          checkpoint_every: int = 0, kill_master: Sequence[int] = (),
          log: Callable[[str], None] = print) -> results_folder.RunSummary:
  """What ``experiments.train_distributed`` does: connect, run, write.

  The master's checkpoint (with ``checkpoint_every``) goes to
  ``out_dir/master_checkpoint``.

  Raises:
    RayUnavailableError: no Ray, or no cluster at ``ray_address``.
    config.ConfigError, data.DataError: as ``experiment.run_experiment``.
  """
  config = check_config(config)
  checkpoint_dir = os.path.abspath(os.path.join(out_dir, CHECKPOINT_DIR))
  check_runtime_args(config, ordered=ordered, kills=kills,
                     checkpoint_dir=checkpoint_dir,
                     checkpoint_every=checkpoint_every,
                     kill_master=kill_master)
  # The folder is checked before Ray starts and the run takes its time: it
  # used to fail only in write_results, losing the finished run, and a
  # folder of earlier results was overwritten.
  results_folder.check_writable(out_dir)
  held = [name for name in (results_folder.METRICS_FILE,
                            results_folder.SUMMARY_FILE)
          if os.path.exists(os.path.join(out_dir, name))]
  if held:
    raise results_folder.FolderMismatchError(
        f"`out_dir` {out_dir!r} already holds results ({', '.join(held)});"
        " refusing to overwrite them, choose another `out_dir`")
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

  result = run(config, data, ordered=ordered, kills=kills,
               checkpoint_dir=checkpoint_dir,
               checkpoint_every=checkpoint_every, kill_master=kill_master,
               callback=progress)
  summary = write_results(result, out_dir, data.source, ordered=ordered)
  log(f"{summary.line()}; total {time.perf_counter() - start:.1f} s with"
      f" start-up; restarts {result.restarts}, master restarts"
      f" {result.master_restarts}")
  log(f"results in {out_dir}")
  return summary
