"""The Ray runtime against the simulator, and its real failures.

On a local Ray instance (started once for the module), with the mlp, k = 2-3
and a few rounds of synthetic data. Skipped where Ray is not installed
(``pip install -e ".[ray]"``); CI installs it.
"""

import collections
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from eahes_jax import config as config_lib
from eahes_jax import data as data_lib
from eahes_jax import plotting
from eahes_jax import simulator

ray = pytest.importorskip(
    "ray", reason='Ray is not installed (pip install -e ".[ray]")')

# pylint: disable=g-import-not-at-top,wrong-import-position
from eahes_jax import ray_runtime
from eahes_jax import results_folder

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def local_ray():
  ray_runtime.connect(None)
  yield
  ray.shutdown()


def _config(**kw):
  base = dict(model="mlp", num_workers=2, rounds=3, batch_size=16,
              failure_model="none", eval_every=2, train_eval_size=0)
  base.update(kw)
  return config_lib.SimConfig(**base)


def _simulate(config, data):
  sim = simulator.Simulation(ray_runtime.check_config(config), data)
  state = sim.init_state()
  initial = jax.tree_util.tree_map(np.asarray, state.master)
  state, metrics = sim.run_rounds(state, config.rounds)
  return sim, initial, state, metrics


def _assert_trees_close(a, b, atol=1e-6):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5,
                               atol=atol)


@pytest.mark.parametrize("method,num_workers,failure_rate,rounds", [
    ("EASGD", 3, 0.5, 4),      # SGD, fixed weights, dropped exchanges
    ("EAHES-OM", 2, 0.5, 4),   # AdaHessian + Hutchinson, the oracle's rejoins
    ("DEAHES-O", 2, 0.0, 3),   # dynamic weights while a = 0 (first p rounds)
])
def test_ordered_run_equals_simulator(local_ray, method, num_workers,
                                      failure_rate, rounds):
  """Lockstep in the simulator's order = the simulator's sequential rounds.

  Same seed: same initial parameters, partition, per-round worker keys,
  failure schedule and exchange order. Compared: the master, every worker,
  the connected mask and weights of every exchange, the evaluations.
  """
  data = data_lib.synthetic_mnist(256, 128, 0)
  cfg = _config(method=method, num_workers=num_workers, rounds=rounds,
                failure_model="bernoulli" if failure_rate else "none",
                failure_rate=failure_rate)
  result = ray_runtime.run(cfg, data, ordered=True)
  sim, _, state, metrics = _simulate(cfg, data)
  master = jax.tree_util.tree_map(lambda x: x[0], state.master)
  _assert_trees_close(result.master, master)
  for j in range(num_workers):
    _assert_trees_close(result.worker_params[j], jax.tree_util.tree_map(
        lambda x, j=j: x[0, j], state.workers))
  # The log: exactly the simulator's connected exchanges, with its weights.
  connected = metrics.connected[0]
  assert connected.any() and (failure_rate == 0 or not connected.all())
  log = {(e["round"], e["worker"]): e for e in result.log}
  assert len(log) == len(result.log) == connected.sum()
  plan = ray_runtime.make_plan(sim)
  for r in range(rounds):
    order = [e["worker"] for e in result.log if e["round"] == r + 1]
    for j in range(num_workers):
      assert ((r + 1, j) in log) == connected[r, j]
      if connected[r, j]:
        assert log[r + 1, j]["h_worker"] == pytest.approx(
            metrics.h_worker[0, r, j])
        assert log[r + 1, j]["h_master"] == pytest.approx(
            metrics.h_master[0, r, j])
    assert order == [int(j) for j in plan.order[r] if connected[r, j]]
  final = sim.evaluate(state)
  assert result.evals[-1]["round"] == rounds
  assert result.evals[-1]["test_accuracy"] == pytest.approx(
      float(final.test_accuracy[0]))


def test_dropped_exchange_leaves_both_sides_unchanged(local_ray):
  """Every exchange dropped: the master never moves, workers train on."""
  data = data_lib.synthetic_mnist(256, 128, 0)
  cfg = _config(method="EASGD", rounds=2, failure_model="bernoulli",
                failure_rate=1.0)
  result = ray_runtime.run(cfg, data, ordered=True)
  _, initial, state, _ = _simulate(cfg, data)
  assert not result.log
  _assert_trees_close(result.master, jax.tree_util.tree_map(
      lambda x: x[0], initial), atol=0)
  for j in range(2):
    # Exactly the simulator's never-pulled workers, away from the master.
    _assert_trees_close(result.worker_params[j], jax.tree_util.tree_map(
        lambda x, j=j: x[0, j], state.workers))
  assert all(rec["dropped"] for recs in result.worker_records for rec in recs)


def test_killed_worker_restarts_and_no_exchange_lost_or_duplicated(
    local_ray, tmp_path):
  """ray.kill a worker process mid-run: Ray restarts it, it rejoins."""
  data = data_lib.synthetic_mnist(256, 128, 0)
  rounds = 6
  cfg = _config(method="DEAHES-O", rounds=rounds, eval_every=3)
  result = ray_runtime.run(cfg, data, kills=[(0, 2)])
  assert result.restarts == [1, 0]
  counts = collections.Counter((e["worker"], e["round"]) for e in result.log)
  assert set(counts) == {(j, r) for j in range(2)
                         for r in range(1, rounds + 1)}
  assert set(counts.values()) == {1}
  # The restarted incarnation (epoch 2) took over after the kill.
  epochs = [e["epoch"] for e in result.log if e["worker"] == 0]
  assert epochs == sorted(epochs) and epochs[-1] == 2
  assert [e["round"] for e in result.evals] == [0, 3, 6]
  # The results folder reads like the simulator's, with wall-clock time.
  summary = ray_runtime.write_results(result, str(tmp_path), data.source)
  assert summary.rounds == rounds
  curves = plotting.load_run(str(tmp_path))
  assert list(curves.eval_rounds) == [0, 3, 6] and curves.complete
  rows = [r for r in ray_runtime.results_folder.read_metrics(str(tmp_path))]
  assert len(rows) == rounds + 1
  assert rows[-1]["wall_time_s"] > 0


def test_scheduled_crashes_and_stragglers(local_ray):
  """failure_mode=crash kills the process at the scheduled rounds."""
  data = data_lib.synthetic_mnist(256, 128, 0)
  cfg = _config(method="EASGD", rounds=4, failure_model="bernoulli",
                failure_rate=0.3, failure_mode="crash", straggler_rate=0.3,
                comm_period=2, seed=1)
  sim = simulator.Simulation(ray_runtime.check_config(cfg), data)
  plan = ray_runtime.make_plan(sim)
  crashes = ~plan.connected
  assert crashes.any() and not crashes.all()
  result = ray_runtime.run(cfg, data)
  kinds = {(e["round"] - 1, e["worker"]): e["kind"] for e in result.log}
  assert len(kinds) == len(result.log) == plan.connected.size
  for (r, j), kind in kinds.items():
    assert kind == ("crash" if crashes[r, j] else "exchange")
  assert result.restarts == list(crashes.sum(axis=0))


@pytest.mark.parametrize("method,num_workers,failure_rate,every,kill", [
    ("EASGD", 3, 0.0, 4, [3]),         # no failures; journal after a save
    ("EAHES-OM", 2, 0.5, 1, [2, 4]),   # the oracle's state; two deaths
])
def test_killed_master_resumes_and_ordered_run_still_equals_simulator(
    local_ray, tmp_path, method, num_workers, failure_rate, every, kill):
  """A master killed mid-exchange is restored as it was: nothing changes.

  Killed (SIGKILL) right after applying an exchange, before its checkpoint
  or reply: Ray restarts it, it restores the newest checkpoint and replays
  its journal, and the worker's repeated call gets the lost reply. So the
  ordered run still equals the simulator's, and the log holds each
  connected (worker, round) exactly once, in the simulator's order.
  """
  data = data_lib.synthetic_mnist(256, 128, 0)
  rounds = 4
  cfg = _config(method=method, num_workers=num_workers, rounds=rounds,
                failure_model="bernoulli" if failure_rate else "none",
                failure_rate=failure_rate)
  sim, _, state, metrics = _simulate(cfg, data)
  connected = metrics.connected[0]
  assert all(connected[r - 1].any() for r in kill)  # each kill happens
  result = ray_runtime.run(cfg, data, ordered=True,
                           checkpoint_dir=str(tmp_path / "ckpt"),
                           checkpoint_every=every, kill_master=kill)
  assert result.master_restarts == len(kill)
  _assert_trees_close(result.master, jax.tree_util.tree_map(
      lambda x: x[0], state.master))
  for j in range(num_workers):
    _assert_trees_close(result.worker_params[j], jax.tree_util.tree_map(
        lambda x, j=j: x[0, j], state.workers))
  plan = ray_runtime.make_plan(sim)
  assert [(e["round"], e["worker"]) for e in result.log] == [
      (r + 1, int(j)) for r in range(rounds) for j in plan.order[r]
      if connected[r, j]]
  assert [e["seq"] for e in result.log] == list(range(len(result.log)))
  assert result.rejected == 0
  assert result.evals[-1]["test_accuracy"] == pytest.approx(
      float(sim.evaluate(state).test_accuracy[0]))


def _damage_newest_checkpoint(ckpt: pathlib.Path) -> None:
  newest = max((p for p in ckpt.iterdir() if p.name.isdigit()),
               key=lambda p: int(p.name))
  for p in (newest / "state").rglob("*"):
    if p.is_file():
      p.write_bytes(b"garbage" * 8)


def test_killed_master_loses_no_exchange_and_its_folder_restores_it(
    local_ray, tmp_path):
  """Asynchronous, a master death after a worker's: the log is whole.

  Every (worker, round) is logged exactly once, the master's restarts are
  counted, and the checkpoint folder alone rebuilds the final master: from
  the newest checkpoint plus its journal, and, with that checkpoint
  damaged, from the one before plus a longer journal.
  """
  data = data_lib.synthetic_mnist(256, 128, 0)
  rounds, k = 6, 3
  cfg = _config(method="DEAHES-O", num_workers=k, rounds=rounds,
                eval_every=3)
  ckpt = tmp_path / "ckpt"
  result = ray_runtime.run(cfg, data, kills=[(1, 2)], checkpoint_dir=str(ckpt),
                           checkpoint_every=4, kill_master=[4])
  assert result.master_restarts == 1
  # The worker's rejoin (its new epoch) survived the master's death.
  assert result.restarts == [0, 1, 0]
  assert {e["epoch"] for e in result.log
          if e["worker"] == 1 and e["round"] > 2} == {2}
  counts = collections.Counter((e["worker"], e["round"]) for e in result.log)
  assert set(counts) == {(j, r) for j in range(k)
                         for r in range(1, rounds + 1)}
  assert set(counts.values()) == {1}
  assert [e["seq"] for e in result.log] == list(range(len(result.log)))
  times = [e["wall_time_s"] for e in result.log]
  assert times == sorted(times)
  assert [e["round"] for e in result.evals] == [0, 3, 6]
  for damage in (False, True):
    if damage:
      _damage_newest_checkpoint(ckpt)
    master = ray_runtime.Master(ray_runtime.check_config(cfg), data,
                                checkpoint_dir=str(ckpt), checkpoint_every=4)
    _assert_trees_close(master.params, result.master, atol=0)
    assert master.log == result.log
  ray_runtime.write_results(result, str(tmp_path / "out"), data.source)
  stats = json.loads((tmp_path / "out" / ray_runtime.RUNTIME_FILE).read_text())
  assert stats["master_restarts"] == 1


def test_master_restored_from_its_folder_is_the_master_that_died(tmp_path):
  """In one process: the journal after the checkpoint, a torn last record,
  and the repeated call of a cut-off exchange answered with its reply."""
  data = data_lib.synthetic_mnist(256, 128, 0)
  cfg = ray_runtime.check_config(_config(method="DEAHES-O", rounds=4))
  ckpt = str(tmp_path / "ckpt")
  master = ray_runtime.Master(cfg, data, checkpoint_dir=ckpt,
                              checkpoint_every=3)
  for j in range(2):
    master.rejoin(j, f"worker{j}")
  master.start_clock()
  theta = master.params
  replies = {}
  for r, j in ((1, 0), (1, 1), (2, 1), (2, 0), (3, 0)):  # saved after 3
    theta = jax.tree_util.tree_map(lambda x: x + 0.01, theta)
    replies[r, j] = master.exchange(j, r, 1, theta, 0.5)
  segments = sorted((tmp_path / "ckpt" / "journal").iterdir())
  with open(segments[-1], "ab") as f:  # a record torn by a kill mid-write
    f.write(b"\xff" * 12)
  restored = ray_runtime.Master(cfg, data, checkpoint_dir=ckpt,
                                checkpoint_every=3)
  assert restored.restarts == 1 and restored.seq == master.seq + 1
  _assert_trees_close(restored.params, master.params, atol=0)
  assert restored.log == master.log
  assert restored.last_round == [3, 2] and restored.epochs == [1, 1]
  # The snapshot of round 2 (both workers past it), with its time: the same
  # evaluations.
  assert restored.finish()["evals"] == master.finish()["evals"]
  assert [e["round"] for e in master.finish()["evals"]] == [0, 2]
  # The cut-off exchange, called again: the same reply, applied once.
  _assert_trees_close(restored.exchange(0, 3, 1, theta, 0.5),
                      replies[3, 0], atol=0)
  _assert_trees_close(restored.params, master.params, atol=0)
  assert len(restored.log) == 5 and restored.rejected == 0
  # An older round is a duplicate: rejected, nothing moves.
  assert restored.exchange(1, 1, 1, theta, 0.5) is None
  assert restored.rejected == 1
  _assert_trees_close(restored.params, master.params, atol=0)


def test_kill_master_needs_a_checkpoint():
  cfg = ray_runtime.check_config(_config())
  with pytest.raises(config_lib.ConfigError) as e:
    ray_runtime.check_runtime_args(cfg, kill_master=[2])
  assert e.value.field == "kill_master"
  with pytest.raises(config_lib.ConfigError) as e:
    ray_runtime.check_runtime_args(cfg, checkpoint_dir="x",
                                   checkpoint_every=1, kill_master=[4])
  assert e.value.field == "kill_master"


def test_unreachable_address_is_one_clear_error():
  with pytest.raises(ray_runtime.RayUnavailableError, match="127.0.0.1:9"):
    ray_runtime.connect("127.0.0.1:9")


def test_core_does_not_import_ray():
  code = ("import sys, eahes_jax, eahes_jax.simulator, eahes_jax.experiment;"
          " assert 'ray' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_a_checkpoint_from_before_a_field_existed_is_of_the_same_run(
    tmp_path):
  # A master checkpoint's record written before a config field existed
  # (micro_batches, say) stands for the run with that field's default, as a
  # results folder's record does; a record of another config is refused.
  data = data_lib.synthetic_mnist(256, 128, 0)
  cfg = ray_runtime.check_config(_config(rounds=4))
  master = ray_runtime.Master(cfg, data, checkpoint_dir=str(tmp_path / "c"),
                              checkpoint_every=3)
  stored = json.loads(json.dumps(cfg.to_dict()))
  del stored["micro_batches"]
  master._check_record({"config": stored})  # pylint: disable=protected-access
  for changed in ({**stored, "lr": 0.5}, {**stored, "micro_batches": 2}):
    with pytest.raises(config_lib.ConfigError):
      master._check_record({"config": changed})  # pylint: disable=protected-access
  with pytest.raises(config_lib.ConfigError):
    master._check_record(None)  # pylint: disable=protected-access
