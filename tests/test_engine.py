"""The engine as pure functions, methods holding their factories, and the
constructors as the one gate for their arguments."""

import chex
import jax
import numpy as np
import optax
import pytest

from eahes_jax import checks
from eahes_jax import config as config_lib
from eahes_jax import data as data_lib
from eahes_jax import failures
from eahes_jax import methods
from eahes_jax import simulator
from eahes_jax import weighting


def _data():
  return data_lib.synthetic_mnist(n_train=256, n_test=64)


def test_pure_rounds_in_python_equal_the_jitted_chunk():
  """``make_round`` called round by round gives what the scanned, vmapped,
  jitted chunk of ``Simulation.run_rounds`` gives, bit for bit."""
  config = config_lib.SimConfig(method="DEAHES-O", model="mlp", num_workers=3,
                                rounds=4, batch_size=8, num_seeds=2,
                                execution="vmap", train_eval_size=64)
  sim = simulator.Simulation(config, _data())
  state0 = sim.init_state()
  round_ = jax.jit(simulator.make_round(sim.engine))
  per_seed = []
  for s in range(2):
    state = jax.tree_util.tree_map(lambda x, s=s: x[s], state0)
    for _ in range(4):
      state, _ = round_(state, sim.worker_idx[s], sim.data)
    per_seed.append(state)
  stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *per_seed)
  chunk_state, metrics = sim.run_rounds(sim.init_state(), 4)
  chex.assert_trees_all_close(stacked, chunk_state, rtol=0, atol=0)
  assert metrics.train_loss.shape == (2, 4)


def test_a_round_is_a_pure_function_of_its_state():
  config = config_lib.SimConfig(method="EAHES-OM", model="mlp", num_workers=2,
                                rounds=1, batch_size=8, execution="map",
                                train_eval_size=64)
  sim = simulator.Simulation(config, _data())
  state = jax.tree_util.tree_map(lambda x: x[0], sim.init_state())
  round_ = simulator.make_round(sim.engine)
  a = round_(state, sim.worker_idx[0], sim.data)
  b = round_(state, sim.worker_idx[0], sim.data)
  chex.assert_trees_all_equal(a, b)
  assert int(a[0].round) == 1 and int(state.round) == 0


@pytest.mark.parametrize("name", sorted(methods.methods()))
def test_every_method_builds_its_own_optimizer_and_policy(name):
  method = methods.get_method(name)
  config = config_lib.SimConfig(method=name, model="mlp")
  opt = method.make_optimizer(config)
  params = {"w": np.ones((3,), np.float32)}
  state = opt.init(params)
  grads = {"w": np.full((3,), 0.5, np.float32)}
  extra = {"hessian_diag": grads} if method.second_order else {}
  updates, _ = opt.update(grads, state, params, **extra)
  # Every local optimizer descends: the first step moves against the gradient.
  assert np.all(np.asarray(updates["w"]) < 0)
  if method.second_order:
    with pytest.raises(ValueError, match="hessian_diag"):
      opt.update(grads, state, params)
  assert isinstance(method.make_policy(config), weighting.WeightingPolicy)


def test_sgd_and_nesterov_follow_the_config():
  config = config_lib.SimConfig(method="EAMSGD", model="mlp", lr=0.2,
                                momentum=0.25)
  ref = optax.sgd(0.2, momentum=0.25, nesterov=True)
  got = methods.get_method("EAMSGD").make_optimizer(config)
  params = {"w": np.ones((2,), np.float32)}
  grads = {"w": np.asarray([1.0, -2.0], np.float32)}
  chex.assert_trees_all_close(
      got.update(grads, got.init(params), params)[0],
      ref.update(grads, ref.init(params), params)[0])
  easgd = methods.get_method("EASGD").make_optimizer(
      config_lib.SimConfig(method="EASGD"))
  step = easgd.update(grads, easgd.init(params), params)[0]
  chex.assert_trees_all_close(step["w"], -config_lib.DEFAULT_LR * grads["w"])


def test_an_unknown_optimizer_label_is_refused_not_taken_for_adahessian():
  with pytest.raises(ValueError, match="optimizer must be one of"):
    methods.Method("X", optimizer="lbfgs", overlap=False, weighting="fixed",
                   make_optimizer=methods.sgd,
                   make_policy=methods.fixed_policy)


def test_argument_error_names_the_argument():
  with pytest.raises(checks.ArgumentError) as e:
    weighting.dynamic(0.1, p=2, coeffs=(0.5, 0.6))
  assert e.value.argument == "coeffs"
  with pytest.raises(checks.ArgumentError) as e:
    failures.bursty(0.9, 2.0)
  assert (e.value.argument, e.value.value) == ("rate", 0.9)
  # Still a ValueError, as before, for callers that catch that.
  assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("fields, field", [
    (dict(dw_history=2, dw_coeffs=(0.5, 0.6)), "dw_coeffs"),  # coeffs
    (dict(dw_history=0, dw_coeffs=()), "dw_history"),  # p
    (dict(dw_threshold=0.5), "dw_threshold"),  # threshold
    (dict(alpha=0.0), "alpha"),
    (dict(oracle_variant="never"), "oracle_variant"),
    (dict(failure_model="bursty", failure_rate=0.9, mean_outage=2.0),
     "failure_rate"),  # bursty's rate
    (dict(mean_outage=0.5), "mean_outage"),
    (dict(straggler_rate=1.5), "straggler_rate"),  # stragglers' rate
    (dict(straggler_slowdown=-0.1), "straggler_slowdown"),
    (dict(hessian_power=1.5), "hessian_power"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(dw_master_estimate="peer_mean", num_workers=1), "num_workers"),
])
def test_config_asks_the_constructors_and_names_the_field(fields, field):
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.SimConfig(**fields)
  assert e.value.field == field
  assert str(e.value).startswith(f"{field} must be ")


def test_failure_settings_build_the_models_the_simulator_ran():
  key = jax.random.PRNGKey(0)
  for settings, model in [
      (dict(failure_model="bernoulli", failure_rate=0.3),
       failures.bernoulli(0.3)),
      (dict(failure_model="bursty", failure_rate=0.3, mean_outage=5.0),
       failures.bursty(0.3, 5.0)),
      (dict(failure_model="bernoulli", failure_rate=0.0),
       failures.no_failures()),
      (dict(failure_model="none", failure_rate=0.3), failures.no_failures()),
      (dict(failure_model="bernoulli", failure_rate=0.2, straggler_rate=0.5),
       failures.stragglers(0.5, 0.5, base=failures.bernoulli(0.2))),
  ]:
    got = failures.schedule(failures.from_settings(**settings), key, 20, 4, 2)
    want = failures.schedule(model, key, 20, 4, 2)
    chex.assert_trees_all_equal(got, want)


def test_building_a_config_starts_no_jax_backend():
  # SimConfig asks the constructors to check its fields; none of them may
  # create a device array, or a config built before
  # jax.distributed.initialize() (or before XLA_FLAGS are final) would
  # start the backend too early.
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = (
      "from jax._src import xla_bridge as xb\n"
      "from eahes_jax import config\n"
      "for m in config.choices()['method']:\n"
      "  config.SimConfig(method=m, failure_model='bursty', mean_outage=5.0,\n"
      "                   straggler_rate=0.2, dw_master_estimate='peer_mean')\n"
      "print(sorted(xb._backends))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True).stdout
  assert out.strip() == "[]"
