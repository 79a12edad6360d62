"""The worker-axis executions agree, and the benchmark runs (issue 7).

`map` and `vmap` are compared in this process; `sharded` needs several
devices, so it is compared with `vmap` in a subprocess that forces 8 CPU
devices (XLA_FLAGS=--xla_force_host_platform_device_count=8) and lays the
workers over meshes of 4 and 8 of them.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import chex
from absl import flags
import jax
import numpy as np
import pytest

from eahes_jax import benchmarking
from eahes_jax import config as config_lib
from eahes_jax import execution
from eahes_jax import simulator
from experiments import benchmark
from tests.conftest import tiny_mnist

REPO = pathlib.Path(__file__).resolve().parent.parent

# AdaHessian workers, dynamic weighting, failures and the sequential
# (random-order) exchange: every part of a round that the worker axis touches.
CONFIG = config_lib.SimConfig(
    method="DEAHES-O", model="mlp", num_workers=4, comm_period=2, rounds=2,
    batch_size=8, exchange_order="sequential", failure_rate=0.25,
    eval_every=2, train_eval_size=64, eval_batch_size=64)
TOL = dict(rtol=1e-5, atol=1e-6)


def _final(config, data, devices=None):
  sim = simulator.Simulation(config, data, devices=devices)
  state, metrics = sim.run_rounds(sim.init_state(), config.rounds)
  return jax.tree_util.tree_map(np.asarray, state), metrics


def test_map_equals_vmap():
  data = tiny_mnist()
  state_v, metrics_v = _final(CONFIG.replace(execution="vmap"), data)
  state_m, metrics_m = _final(CONFIG.replace(execution="map"), data)
  chex.assert_trees_all_close(state_m, state_v, **TOL)
  chex.assert_trees_all_close(metrics_m, metrics_v, **TOL)
  # Non-trivial: workers trained, some exchanges were missed.
  assert not np.allclose(state_v.workers["fc1"]["kernel"][0, 0],
                         state_v.workers["fc1"]["kernel"][0, 1])
  assert not metrics_v.connected.all()


# Run in a subprocess with 8 forced CPU devices; writes the results as .npz.
_SHARDED_SCRIPT = r"""
import sys
import jax
import numpy as np
from eahes_jax import config as config_lib
from eahes_jax import simulator
from tests import test_execution as t
from tests.conftest import tiny_mnist

assert jax.device_count() == 8, jax.devices()
data = tiny_mnist()
cfg = t.CONFIG.replace(num_workers=8)
out = {}
for name, config, devices in [
    ("vmap", cfg.replace(execution="vmap"), None),
    ("mesh4", cfg.replace(execution="sharded"), jax.devices()[:4]),
    ("mesh8", cfg.replace(execution="sharded"), None),
    # One seed without the seed axis, over the mesh.
    ("mesh4map", cfg.replace(execution="sharded", seed_execution="map"),
     jax.devices()[:4]),
    ("vmapmap", cfg.replace(execution="vmap", seed_execution="map"), None)]:
  sim = simulator.Simulation(config, data, devices=devices)
  state, metrics = sim.run_rounds(sim.init_state(), config.rounds)
  # Where the workers lie: one device per mesh position.
  out[name + "_devices"] = np.array(
      len(jax.tree_util.tree_leaves(state.workers)[0].sharding.device_set))
  leaves = jax.tree_util.tree_leaves((state, metrics))
  for i, leaf in enumerate(leaves):
    out[f"{name}_{i}"] = np.asarray(jax.random.key_data(leaf)
                                    if jax.dtypes.issubdtype(
                                        leaf.dtype, jax.dtypes.prng_key)
                                    else leaf)
  # A second chunk reuses the first one's executable (no backend compile):
  # the initial state is laid out as the chunk lays out its output.
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, secs, **kw: compiles.append(event)
      if event == "/jax/core/compile/backend_compile_duration" else None)
  sim.run_rounds(state, config.rounds)
  out[name + "_recompiles"] = np.array(len(compiles))
  jax.monitoring.clear_event_listeners()
errors = []
for k, devices in [(6, jax.devices()[:4]), (6, None)]:
  try:
    simulator.Simulation(cfg.replace(num_workers=k, execution="sharded"),
                         data, devices=devices)
    errors.append("")
  except ValueError as e:
    errors.append(str(e))
try:
  simulator.Simulation(cfg.replace(execution="sharded", seed_execution="map",
                                   num_seeds=2), data)
  errors.append("")
except config_lib.ConfigError as e:
  errors.append(f"{e.field}: {e}")
np.savez(sys.argv[1], errors=np.array(errors), **out)
"""


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory):
  path = tmp_path_factory.mktemp("sharded") / "results.npz"
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                      + " --xla_force_host_platform_device_count=8").strip()
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
      [sys.executable, "-c", _SHARDED_SCRIPT, str(path)], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return dict(np.load(path))


@pytest.mark.parametrize("mesh,reference", [
    ("mesh4", "vmap"), ("mesh8", "vmap"), ("mesh4map", "vmapmap")])
def test_sharded_equals_vmap(sharded_results, mesh, reference):
  r = sharded_results
  n = len([k for k in r if k.startswith(reference + "_")
           and k.split("_")[1].isdigit()])
  assert n > 0 and n == len(
      [k for k in r if k.startswith(mesh + "_") and k.split("_")[1].isdigit()])
  # Without the seed axis XLA partitions other programs, whose rounding
  # two rounds amplify past TOL in a few weights (5e-6 absolute).
  tol = TOL if mesh != "mesh4map" else dict(rtol=1e-4, atol=1e-5)
  for i in range(n):
    np.testing.assert_allclose(r[f"{mesh}_{i}"], r[f"{reference}_{i}"],
                               **tol, err_msg=f"leaf {i}")
  # The workers really were laid over the mesh's devices.
  assert int(r[f"{mesh}_devices"]) == int(mesh[4:5])
  # The second chunk compiled nothing.
  assert int(r[f"{mesh}_recompiles"]) == 0


def test_sharded_rejects_k_not_divisible_by_devices(sharded_results):
  errors = sharded_results["errors"]
  assert "num_workers" in errors[0] and "4 devices" in errors[0]
  assert "num_workers" in errors[1] and "8 devices" in errors[1]
  assert "got 6" in errors[0]
  # Several seeds in a lax.map over a mesh: refused, naming the field.
  assert errors[2].startswith("seed_execution: ") and "sharded" in errors[2]


def test_worker_mesh_error_names_the_argument():
  # One device divides every k; the check is the mesh's, before compiling.
  devices = jax.devices()
  mesh = execution.worker_mesh(3, devices[:1])
  assert mesh.shape == {execution.WORKER_AXIS: 1}
  with pytest.raises(ValueError, match="num_workers"):
    execution.worker_mesh(3, devices[:1] * 2)


# ---------------------------------------------------------------- benchmark --
def test_benchmark_smoke_writes_positive_finite_rates(tmp_path, capsys):
  flag_values = flags.FlagValues()
  benchmark.define_flags(flag_values)
  out = tmp_path / "bench.json"
  # --seed_execution reaches every case (and the smoke settings keep it).
  flag_values(["benchmark", "--smoke", f"--json_out={out}",
               "--seed_execution=map"])
  benchmark.main(["benchmark"], flag_values=flag_values)
  result = json.loads(out.read_text())
  rows = result["rows"]
  assert {(r["seed_execution"], r["seed_execution_resolved"])
          for r in rows} == {("map", "map")}
  s = benchmark.SMOKE_SETTINGS
  assert len(rows) == (len(benchmarking.FAMILIES) * len(s["workers"])
                       * len(s["executions"]))
  for row in rows:
    assert "error" not in row, row
    assert row["model"] == "mlp"
    for name in ("samples_per_s", "rounds_per_s", "steady_s", "cpu_s",
                 "compile_s"):
      assert math.isfinite(row[name]) and row[name] >= 0, (name, row)
    assert row["samples_per_s"] > 0 and row["rounds_per_s"] > 0
    expected = (row["num_workers"] * row["comm_period"] * row["batch_size"]
                * row["rounds"] / row["steady_s"])
    assert row["samples_per_s"] == pytest.approx(expected)
    assert row["peak_memory_bytes"] > 0 and row["program_bytes"] > 0
  # One ratio per model × execution × k, on the AdaHessian rows too.
  assert len(result["ratios"]) == len(rows) // 2
  for ratio in result["ratios"]:
    assert math.isfinite(ratio["ratio"]) and ratio["ratio"] > 0
  assert {r["method"] for r in rows} == set(benchmarking.FAMILIES.values())
  assert result["environment"]["backend"] == jax.default_backend()
  printed = capsys.readouterr().out
  assert "samples/s" in printed and "EAHES" in printed
  assert ("simulator conv_impl, seed_execution, micro_batches: -, map, 1"
          in printed)


def test_step_cost_ratio_pairs_matching_rows():
  def row(method, execution_, k, sps, cpu):
    return {"method": method, "model": "small_cnn", "execution": execution_,
            "num_workers": k, "comm_period": 1, "batch_size": 64,
            "conv_impl_resolved": "im2col", "samples_per_s": sps,
            "cpu_s": cpu}

  rows = [row("EASGD", "map", 8, 1000.0, 1.0),
          row("EAHES", "map", 8, 400.0, 2.0),
          row("EAHES", "vmap", 8, 300.0, 2.0),   # no SGD partner
          row("EASGD", "map", 4, 900.0, 1.0),    # no AdaHessian partner
          # Another program: its partner is an SGD row in halves too.
          {**row("EAHES", "map", 4, 100.0, 2.0), "micro_batches": 2}]
  ratios = benchmarking.add_step_cost_ratios(rows)
  assert len(ratios) == 1
  assert ratios[0]["ratio"] == pytest.approx(2.5)
  assert ratios[0]["cpu_ratio"] == pytest.approx(2.0)
  assert rows[1]["step_cost_ratio"] == pytest.approx(2.5)
  assert "step_cost_ratio" not in rows[2]
  assert "step_cost_ratio" not in rows[4]


def test_make_cases_groups_families_and_skips():
  cases = benchmarking.make_cases(
      models=["small_cnn", "cnn"], executions=["map", "vmap"],
      workers=[1, 32], skip=["cnn:vmap:32"])
  assert len(cases) == 2 * (2 * 2 * 2 - 1)
  assert not any(c.key == "cnn:vmap:32" for c in cases)
  groups = benchmarking._groups(cases)  # pylint: disable=protected-access
  assert all([c.family for c in g] == ["sgd", "adahessian"] for g in groups)
  with pytest.raises(ValueError, match="execution"):
    benchmarking.make_cases(executions=["pmap"])
  with pytest.raises(ValueError, match="family"):
    benchmarking.make_cases(families=["adam"])


def test_speedups_take_the_baselines_fastest_execution_of_the_same_case():
  def row(method, execution_, k, sps):
    return {"method": method, "model": "small_cnn", "execution": execution_,
            "num_workers": k, "comm_period": 1, "batch_size": 64,
            "samples_per_s": sps}

  baseline = {"environment": {}, "rows": [
      row("EASGD", "map", 64, 8000.0), row("EASGD", "vmap", 64, 4000.0),
      row("EAHES", "map", 64, 4000.0), {"method": "EAHES", "error": "x"}]}
  rows = [row("EASGD", "vmap", 64, 720000.0), row("EAHES", "vmap", 64,
                                                  300000.0),
          row("EASGD", "vmap", 8, 400000.0), {"method": "EASGD", "error": "y"}]
  benchmarking.add_speedups(rows, baseline)
  assert rows[0]["speedup"] == pytest.approx(90.0)  # against map's 8,000
  assert rows[0]["baseline_execution"] == "map"
  assert rows[1]["speedup"] == pytest.approx(75.0)
  assert rows[2]["speedup"] is None  # k = 8 is not in the baseline
  assert "speedup" not in rows[3]


def test_benchmark_compares_to_an_earlier_runs_json(tmp_path, capsys):
  def run(*args):
    flag_values = flags.FlagValues()
    benchmark.define_flags(flag_values)
    flag_values(["benchmark", "--smoke", *args])
    benchmark.main(["benchmark"], flag_values=flag_values)

  first, second = tmp_path / "first.json", tmp_path / "second.json"
  run(f"--json_out={first}")
  capsys.readouterr()
  run(f"--compare_to={first}", f"--json_out={second}")
  before = json.loads(first.read_text())
  after = json.loads(second.read_text())
  assert after["environment"]["baseline_environment"] == (
      before["environment"])
  for r in after["rows"]:
    same = [b for b in before["rows"]
            if (b["method"], b["num_workers"]) == (r["method"],
                                                   r["num_workers"])]
    fastest = max(b["samples_per_s"] for b in same)
    assert r["speedup"] == pytest.approx(r["samples_per_s"] / fastest)
  assert "speed-up over the baseline" in capsys.readouterr().out
  # A file that is no benchmark result is refused before anything runs.
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"rows": [{"model": "mlp"}], "environment": {}}))
  with pytest.raises(SystemExit):
    run(f"--compare_to={bad}")
  assert "--compare_to" in capsys.readouterr().err
