"""The training engine end to end: methods, failures, seeds."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eahes_jax import config as config_lib
from eahes_jax import methods
from eahes_jax import simulator
from tests.conftest import tiny_mnist

# One small configuration that every test varies: an MLP, few workers,
# few rounds, so each compile stays around a second on 2 cores.
BASE = config_lib.SimConfig(model="mlp", num_workers=2, comm_period=2,
                            rounds=3, batch_size=8, eval_every=3,
                            train_eval_size=64, eval_batch_size=64,
                            execution="vmap")


@pytest.fixture(scope="module")
def data():
  return tiny_mnist()


@pytest.mark.parametrize("method", methods.PAPER_METHODS)
def test_every_method_runs_with_documented_shapes(method, data):
  cfg = BASE.replace(method=method, num_seeds=2)
  h = simulator.run(cfg, data)
  s, r, k = 2, cfg.rounds, cfg.num_workers
  assert h.metrics.worker_loss.shape == (s, r, k)
  assert h.metrics.train_loss.shape == (s, r)
  for name in ("log_distance", "score", "h_worker", "h_master", "connected",
               "local_steps", "nonfinite"):
    assert getattr(h.metrics, name).shape == (s, r, k), name
  np.testing.assert_array_equal(h.eval_rounds, [0, 3])
  for v in h.evals:
    assert v.shape == (s, 2)
  for v in jax.tree_util.tree_leaves((h.metrics, h.evals)):
    assert np.all(np.isfinite(v))
  assert not h.metrics.nonfinite.any()
  # The elastic weights are the method's: α for healthy exchanges.
  assert np.all((h.metrics.h_worker >= 0.1 - 1e-6)
                & (h.metrics.h_worker <= 1))
  if methods.get_method(method).weighting == "fixed":
    np.testing.assert_allclose(h.metrics.h_worker, 0.1, rtol=1e-6)
    np.testing.assert_allclose(h.metrics.h_master, 0.1, rtol=1e-6)


def test_deahes_learns_on_real_sample_digits(sample_mnist):
  # DEAHES-O, 4 workers, 1/3 failures, 60 rounds of batch 32 on the 4,000
  # real training digits: measured 0.705 test accuracy on the 1,000 held-out
  # digits (0.077 at round 0, chance 0.10; CPU, jax 0.10.2). The threshold,
  # five times chance, leaves room for other backends' rounding.
  cfg = config_lib.SimConfig(method="DEAHES-O", model="mlp", num_workers=4,
                             rounds=60, batch_size=32, eval_every=30,
                             train_eval_size=1000)
  h = simulator.run(cfg, sample_mnist)
  assert h.evals.test_accuracy[0, 0] < 0.25
  assert h.evals.test_accuracy[0, -1] > 0.5
  assert h.evals.train_loss[0, -1] < h.evals.train_loss[0, 0]


def _final_state(cfg, data):
  sim = simulator.Simulation(cfg, data)
  state, metrics = sim.run_rounds(sim.init_state(), cfg.rounds)
  return sim, state, metrics


def test_oracle_equals_fixed_without_failures(data):
  cfg = BASE.replace(failure_rate=0.0)
  _, a, _ = _final_state(cfg.replace(method="EAHES-OM"), data)
  _, b, _ = _final_state(cfg.replace(method="EAHES-O"), data)
  chex.assert_trees_all_equal((a.workers, a.master), (b.workers, b.master))


def test_dynamic_never_triggered_equals_fixed(data):
  # With more history than rounds the raw score stays 0 and h = (α, α).
  cfg = BASE.replace(failure_rate=0.0, dw_history=5,
                     dw_coeffs=(0.2,) * 5)
  _, a, ma = _final_state(cfg.replace(method="DEAHES-O"), data)
  _, b, _ = _final_state(cfg.replace(method="EAHES-O"), data)
  np.testing.assert_array_equal(ma.score, 0)
  chex.assert_trees_all_equal((a.workers, a.master), (b.workers, b.master))


def test_single_always_failed_worker_is_local_training(data):
  cfg = BASE.replace(method="EAHES", num_workers=1, failure_rate=1.0)
  sim, a, ma = _final_state(cfg, data)
  _, b, _ = _final_state(cfg.replace(alpha=1.0, exchange_order="parallel"),
                         data)
  init = sim.init_state()
  # The master never moves; the worker trains as if alone: the elastic
  # settings cannot matter.
  chex.assert_trees_all_equal(a.master, init.master)
  chex.assert_trees_all_equal(a.workers, b.workers)
  assert not ma.connected.any()
  np.testing.assert_array_equal(a.steps, [[cfg.rounds * cfg.comm_period]])
  moved = jax.tree_util.tree_map(lambda x, y: np.abs(x - y).max(),
                                 a.workers, init.workers)
  assert max(jax.tree_util.tree_leaves(moved)) > 0


@pytest.mark.parametrize("mode", ["disconnect", "crash"])
def test_failed_workers_skip_exchange_and_compute_per_mode(mode, data):
  # Worker 0 of 2 fails every round (rate 1 for everyone, then worker 1 is
  # compared with a run where nobody fails).
  cfg = BASE.replace(method="EAHES", failure_rate=1.0, failure_mode=mode,
                     rounds=1)
  sim = simulator.Simulation(cfg, data)
  init = sim.init_state()
  init_copy = jax.tree_util.tree_map(np.array, init)
  state, metrics = sim.run_rounds(init, 1)
  chex.assert_trees_all_equal(state.master, init_copy.master)
  moved = max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda x, y: np.abs(x - y).max(), state.workers, init_copy.workers)))
  if mode == "crash":
    assert moved == 0
    np.testing.assert_array_equal(metrics.local_steps, 0)
  else:
    assert moved > 0
    np.testing.assert_array_equal(metrics.local_steps, cfg.comm_period)
  # A disconnected worker's parameters are exactly its local training's:
  # the same run with a different α gives the same workers.
  sim2 = simulator.Simulation(cfg.replace(alpha=0.9), data)
  state2, _ = sim2.run_rounds(sim2.init_state(), 1)
  chex.assert_trees_all_equal(state.workers, state2.workers)


def test_seeds_in_one_program_equal_separate_runs(data):
  cfg = BASE.replace(method="DEAHES-O", seed=5, num_seeds=3)
  together = simulator.run(cfg, data)
  for i in range(3):
    alone = simulator.run(cfg.replace(seed=5 + i, num_seeds=1), data)
    chex.assert_trees_all_close(
        jax.tree_util.tree_map(lambda x, i=i: x[i], together.metrics),
        jax.tree_util.tree_map(lambda x: x[0], alone.metrics),
        rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(
        jax.tree_util.tree_map(lambda x, i=i: x[i], together.evals),
        jax.tree_util.tree_map(lambda x: x[0], alone.evals),
        rtol=1e-5, atol=1e-6)


def _batched_dots(config, data):
  """dot_generals with batch dimensions in one round's program: under the
  seeds' vmap even one seed's matmuls carry a (unit) seed batch axis."""
  sim = simulator.Simulation(config, data)
  return sim.lower_rounds(sim.init_state(), 1).as_text().count(
      "batching_dims")


@pytest.mark.parametrize("model,conv_impl,seed_execution,method", [
    ("small_cnn", "im2col_cf", "auto", "EAHES-O"),   # map by default there
    ("small_cnn", "im2col", "map", "EAHES-O"),
    ("cnn", "im2col", "map", "EAMSGD"),
    ("mlp", "auto", "map", "EAHES-O"),
])
def test_mapped_single_seed_runs_as_the_seed_in_a_stack(
    model, conv_impl, seed_execution, method, data):
  # Without the seed vmap (a separate code path) one seed's run must be
  # that seed's run in a stack of two, to float32 rounding (XLA picks other
  # matmul kernels without the unit seed axis). cnn with SGD: under
  # AdaHessian its loss on these random digits reaches 16 by round 2, a
  # run that amplifies rounding differences past any tolerance.
  cfg = BASE.replace(method=method, model=model, conv_impl=conv_impl,
                     seed_execution=seed_execution, execution="map", seed=5,
                     num_seeds=1, rounds=2, eval_every=2)
  stack = cfg.replace(num_seeds=2, seed_execution="vmap")
  together = simulator.run(stack, data)
  alone = simulator.run(cfg, data)
  for field in ("metrics", "evals"):
    chex.assert_trees_all_close(
        jax.tree_util.tree_map(lambda x: x[:1], getattr(together, field)),
        getattr(alone, field), rtol=1e-4, atol=1e-5)
  chex.assert_shape(alone.metrics.score, (1, 2, 2))
  assert np.all(np.isfinite(alone.metrics.train_loss))
  # And the separate path is taken: without the seed vmap the chunk's
  # matmuls lose their seed batch axis (with it, one seed's program would
  # batch as many dot_generals as two seeds' does).
  assert _batched_dots(cfg, data) < _batched_dots(stack, data)


def _branches(lowered) -> int:
  """Branching operations in a lowered program (a lax.cond whose predicate
  is not batched lowers to one; under vmap it becomes a select)."""
  text = lowered.as_text()
  return text.count("stablehlo.case") + text.count("stablehlo.if")


def _local_steps_fn(config, data):
  sim = simulator.Simulation(config, data)
  state = sim.init_state()
  one = lambda x: x[0, 0]   # seed 0, worker 0
  args = (jax.tree_util.tree_map(one, state.workers),
          jax.tree_util.tree_map(one, state.opt_state), jax.random.key(4),
          jax.numpy.asarray(sim.worker_idx[0][0]))
  return jax.jit(sim.local_steps), args


@pytest.mark.parametrize("model,method", [
    ("mlp", "EAHES-O"), ("small_cnn", "EAMSGD"), ("cnn", "EAHES")])
def test_skipping_steps_keeps_every_bit_of_local_steps(model, method, data):
  # The same worker's τ local steps, num_steps 0..τ, from a configuration
  # whose failures can skip steps (a cond per step) and one whose cannot
  # (each step computed, then selected): byte for byte the same.
  base = BASE.replace(model=model, method=method, comm_period=3,
                      batch_size=4, num_seeds=1)
  crash = base.replace(failure_mode="crash")
  skipping, args = _local_steps_fn(crash, data)
  masking, _ = _local_steps_fn(base, data)
  for num_steps in range(crash.comm_period + 1):
    n = jax.numpy.int32(num_steps)
    chex.assert_trees_all_equal(skipping(*args, n), masking(*args, n))
  assert _branches(skipping.lower(*args, jax.numpy.int32(1))) == 1
  assert _branches(masking.lower(*args, jax.numpy.int32(1))) == 0


def _conditionals(config, data):
  """Branching operations in one round's program."""
  sim = simulator.Simulation(config, data)
  return _branches(sim.lower_rounds(sim.init_state(), 1))


@pytest.mark.parametrize("method,mode,straggler_rate,skips", [
    ("EAHES-O", "crash", 0.5, True),
    ("EAMSGD", "disconnect", 0.5, True),    # stragglers only
    ("EASGD", "disconnect", 0.0, False),    # every step always computed
])
def test_steps_a_worker_does_not_compute_are_skipped_in_a_round(
    method, mode, straggler_rate, skips, data):
  # Crashed workers (0 of τ steps) and stragglers (fewer steps): under
  # lax.map with one seed run without the seed axis, the round's program
  # branches around each step a worker may not compute; under the seeds'
  # vmap the cond becomes a select. The two give the same run (to rounding: the seed
  # axis changes XLA's kernels; bit-for-bit equality of the two step forms
  # is the test above). Where no step can go uncomputed, no cond.
  cfg = BASE.replace(method=method, failure_rate=0.5, failure_mode=mode,
                     straggler_rate=straggler_rate, comm_period=3,
                     execution="map", seed_execution="map", seed=2,
                     num_seeds=2, rounds=3, eval_every=3)
  together = simulator.run(cfg.replace(seed_execution="vmap"), data)
  alone = simulator.run(cfg.replace(num_seeds=1), data)
  steps = np.asarray(alone.metrics.local_steps)
  assert (steps < cfg.comm_period).any() == skips
  for field in ("metrics", "evals"):
    chex.assert_trees_all_close(
        jax.tree_util.tree_map(lambda x: x[:1], getattr(together, field)),
        getattr(alone, field), rtol=1e-5, atol=1e-6)
  assert (_conditionals(cfg.replace(num_seeds=1), data) > 0) == skips
  # Batched (workers under vmap), the cond becomes a select.
  assert _conditionals(cfg.replace(num_seeds=1, execution="vmap"), data) == 0


@pytest.mark.parametrize("model,conv_impl,seed_execution", [
    ("small_cnn", "im2col", "auto"),      # the default: earlier runs' bits
    ("small_cnn", "im2col_cf", "vmap"),
    ("mlp", "auto", "auto"),
])
def test_vmap_single_seed_compiles_as_a_stack_of_one(
    model, conv_impl, seed_execution, data):
  cfg = BASE.replace(method="EAHES-O", model=model, conv_impl=conv_impl,
                     seed_execution=seed_execution, execution="map", rounds=1,
                     num_seeds=2, batch_size=4)
  assert _batched_dots(cfg.replace(num_seeds=1), data) == _batched_dots(
      cfg, data) > 0


@pytest.mark.parametrize("model,conv_impl,seed_execution,num_seeds,mode", [
    ("small_cnn", "im2col", "auto", 1, "vmap"),
    ("small_cnn", "auto", "auto", 1, "vmap"),
    ("cnn", "im2col_cf", "auto", 1, "map"),
    # Several seeds under auto stay in one vmap, as before the option.
    ("cnn", "im2col_cf", "auto", 3, "vmap"),
    ("mlp", "auto", "auto", 1, "vmap"),
    # The model's formulation decides, not the config's field: the mlp has
    # no convolutions, so im2col_cf leaves its runs as they were.
    ("mlp", "im2col_cf", "auto", 1, "vmap"),
    ("small_cnn", "im2col_cf", "vmap", 1, "vmap"),
    ("cnn", "winograd", "auto", 1, "map"),
    ("cnn", "winograd", "auto", 2, "vmap"),
    ("mlp", "auto", "map", 1, "map"),
    ("mlp", "auto", "map", 3, "map"),
])
def test_seed_execution_mode_resolves_auto_by_the_formulation(
    model, conv_impl, seed_execution, num_seeds, mode):
  cfg = BASE.replace(model=model, conv_impl=conv_impl,
                     seed_execution=seed_execution, num_seeds=num_seeds)
  assert simulator.seed_execution_mode(simulator.make_engine(cfg)) == mode


def test_seed_execution_refuses_an_unknown_value_naming_the_field():
  with pytest.raises(config_lib.ConfigError, match="seed_execution") as e:
    BASE.replace(seed_execution="fast")
  assert e.value.field == "seed_execution"


@pytest.mark.parametrize("legacy,mode", [
    ("plain", "map"), ("vmap", "vmap"), ("auto", "auto")])
def test_config_files_with_the_fields_earlier_name_still_load(legacy, mode):
  d = BASE.to_dict()
  del d["seed_execution"]
  d["single_seed"] = legacy
  assert config_lib.SimConfig.from_dict(d) == BASE.replace(
      seed_execution=mode)


def test_a_config_naming_both_names_must_agree():
  d = BASE.replace(seed_execution="map").to_dict()
  assert config_lib.SimConfig.from_dict(
      {**d, "single_seed": "plain"}).seed_execution == "map"
  with pytest.raises(config_lib.ConfigError, match="contradicts") as e:
    config_lib.SimConfig.from_dict({**d, "single_seed": "vmap"})
  assert e.value.field == "single_seed"


@pytest.mark.parametrize("model,method", [
    ("cnn", "EASGD"), ("small_cnn", "EAHES-O"), ("mlp", "DEAHES-O")])
def test_mapped_seeds_each_run_as_that_seed_alone(model, method, data):
  # Several seeds under "map" run one after another, each the program of a
  # single seed: every seed's run is that seed's run alone, byte for byte
  # (crashes on, so that each seed also skips its own uncomputed steps).
  cfg = BASE.replace(method=method, model=model, seed_execution="map",
                     execution="map", seed=7, num_seeds=2, rounds=2,
                     eval_every=2, failure_mode="crash", batch_size=4)
  together = simulator.run(cfg, data)
  for i in range(2):
    alone = simulator.run(cfg.replace(num_seeds=1, seed=7 + i), data)
    for field in ("metrics", "evals"):
      chex.assert_trees_all_equal(
          jax.tree_util.tree_map(lambda x, i=i: x[i:i + 1],
                                 getattr(together, field)),
          getattr(alone, field))
  # No seed axis on the matmuls (as few batched ones as one seed's
  # program has), and a branch around each local step.
  assert (_batched_dots(cfg, data)
          == _batched_dots(cfg.replace(num_seeds=1), data)
          < _batched_dots(cfg.replace(seed_execution="vmap"), data))
  assert _conditionals(cfg, data) > 0


def test_chunking_does_not_change_results(data):
  cfg = BASE.replace(method="DEAHES-O", rounds=4, eval_every=4)
  sim = simulator.Simulation(cfg, data)
  one, m_one = sim.run_rounds(sim.init_state(), 4)
  two, m_a = sim.run_rounds(sim.init_state(), 2)
  two, m_b = sim.run_rounds(two, 2)
  chex.assert_trees_all_equal(one.workers, two.workers)
  np.testing.assert_array_equal(
      m_one.h_worker, np.concatenate([m_a.h_worker, m_b.h_worker], axis=1))


def test_nonfinite_is_caught_with_round_and_worker(data):
  cfg = BASE.replace(method="EASGD", lr=1e30, rounds=3)
  with pytest.raises(simulator.NonFiniteError) as e:
    simulator.run(cfg, data)
  assert e.value.round >= 1 and 0 <= e.value.worker < cfg.num_workers
  assert "round" in str(e.value) and "worker" in str(e.value)


def test_chunk_schedule_ends_on_evaluations():
  assert simulator.chunk_schedule(0, 25, 10) == [10, 10, 5]
  assert simulator.chunk_schedule(10, 25, 10) == [10, 5]
  assert simulator.chunk_schedule(0, 0, 10) == []


@pytest.mark.parametrize("model,num_workers", [("small_cnn", 2), ("cnn", 1),
                                               ("mlp", 64)])
def test_every_model_and_worker_count_runs(model, num_workers, data):
  cfg = BASE.replace(method="DEAHES-O", model=model, num_workers=num_workers,
                     comm_period=1, rounds=2, eval_every=2, batch_size=4,
                     execution="auto")
  h = simulator.run(cfg, data)
  assert h.metrics.worker_loss.shape == (1, 2, num_workers)
  for v in jax.tree_util.tree_leaves((h.metrics, h.evals)):
    assert np.all(np.isfinite(v))
  # Some worker reached the master in two rounds of 1/3 failures (k = 1 may
  # fail both: (1/3)^2), and the master moved only if one did.
  moved = not np.allclose(h.evals.test_loss[0, 0], h.evals.test_loss[0, 1])
  assert moved == bool(h.metrics.connected.any())


@pytest.mark.parametrize("failure_rate", [0.0, 1.0])
def test_log_distance_after_follows_the_exchange(failure_rate, data):
  # One worker, the parallel (synchronous) exchange: a connected worker and
  # the master each move α of the way, so the gap shrinks by (1 − 2α) and
  # u_after = u + log(1 − 2α); a worker that missed the exchange keeps u.
  cfg = BASE.replace(method="EAHES", num_workers=1, exchange_order="parallel",
                     failure_rate=failure_rate, alpha=0.1)
  h = simulator.run(cfg, data)
  shift = np.log(1 - 2 * 0.1) if failure_rate == 0 else 0.0
  np.testing.assert_allclose(h.metrics.log_distance_after,
                             h.metrics.log_distance + shift, atol=1e-4)


def test_lower_rounds_is_the_chunk_run_rounds_runs(data):
  sim = simulator.Simulation(BASE.replace(method="EASGD"), data)
  compiled = sim.lower_rounds(sim.init_state(), 2).compile()
  assert compiled.memory_analysis() is not None
  # The same program as run_rounds: the same outputs from the same state.
  _, expected = sim.run_rounds(sim.init_state(), 2)
  _, out = compiled(sim.init_state(), sim.worker_idx, sim.data)
  chex.assert_trees_all_equal(jax.tree_util.tree_map(np.asarray, out),
                              expected)


@pytest.mark.parametrize("bit", [0, 1])  # The loop runs not at all, or once.
def test_written_once_keeps_every_value(bit):
  tree = {"a": jnp.array([1.5, -0.0, jnp.nan, jnp.inf]),
          "b": jnp.arange(6.0).reshape(2, 3)}
  key = jnp.array([bit, 0], jnp.uint32)  # Its first word's low bit decides.
  chex.assert_trees_all_equal(
      jax.jit(simulator._written_once)(tree, key), tree)
  # Under a vmap the loop's predicate is batched: still every value kept.
  keys = jnp.array([[bit, 0], [1 - bit, 0]], jnp.uint32)
  stacked = jax.tree_util.tree_map(lambda x: jnp.stack([x, 2 * x]), tree)
  chex.assert_trees_all_equal(
      jax.jit(jax.vmap(simulator._written_once))(stacked, keys), stacked)
  typed = jax.random.wrap_key_data(key)
  chex.assert_trees_all_equal(simulator._written_once(tree, typed), tree)


@pytest.mark.parametrize("model,execution,num_seeds", [
    ("mlp", "map", 1), ("mlp", "vmap", 2), ("small_cnn", "map", 1)])
def test_writing_hz_once_changes_no_bit_of_a_run(model, execution, num_seeds,
                                                 data, monkeypatch):
  """Hz through `_written_once` (in the program: one more loop) and Hz used
  where it is computed give the same run, bit for bit."""
  cfg = BASE.replace(method="DEAHES-O", model=model, execution=execution,
                     num_seeds=num_seeds, rounds=2, eval_every=2)

  def run_and_loops():
    sim = simulator.Simulation(cfg, data)
    loops = sim.lower_rounds(sim.init_state(), 1).as_text().count(
        "stablehlo.while")
    return simulator.run(cfg, data), loops

  once, loops_once = run_and_loops()
  monkeypatch.setattr(simulator, "_written_once", lambda tree, key: tree)
  direct, loops_direct = run_and_loops()
  assert loops_once == loops_direct + 1
  chex.assert_trees_all_equal((once.metrics, once.evals),
                              (direct.metrics, direct.evals))


@pytest.mark.parametrize("method", ["EASGD", "DEAHES-O"])
def test_micro_batches_run_the_same_steps_rounded_differently(method, data):
  # The mlp has no dropout, so the parts see the minibatch's rows under the
  # same parameters (and one Hutchinson probe): the runs agree up to
  # rounding, which AdaHessian's division by sqrt(D) magnifies where D is
  # tiny (3e-4 at most here, the weights' scale 3). A probe per part, parts
  # of other rows or a sum for a mean moved them by about the weights' scale.
  cfg = BASE.replace(method=method, rounds=3, batch_size=16)
  _, whole, m_whole = _final_state(cfg, data)
  for m in (2, 4):
    _, parts, m_parts = _final_state(cfg.replace(micro_batches=m), data)
    chex.assert_trees_all_close((parts.workers, parts.master),
                                (whole.workers, whole.master),
                                rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(m_parts.worker_loss, m_whole.worker_loss,
                               rtol=1e-4)


def test_micro_batches_must_divide_the_batch_naming_the_field():
  with pytest.raises(config_lib.ConfigError) as e:
    BASE.replace(batch_size=8, micro_batches=3)
  assert e.value.field == "micro_batches"


def test_each_micro_batch_draws_its_own_dropout_masks(data):
  # Every training row the same image: without dropout the minibatch's
  # size does not matter, so 8 rows in two parts take the step 4 rows take
  # at once. cnn has dropout: with a key per part the two halves' masks
  # differ and the step moves away from that; with the step's own key for
  # both halves (the key it uses at once) it would be the 4-row step again.
  same = data._replace(
      train_images=np.repeat(data.train_images[:1], len(data.train_labels),
                             axis=0),
      train_labels=np.repeat(data.train_labels[:1], len(data.train_labels)))
  cfg = BASE.replace(method="EASGD", num_workers=1, comm_period=1, rounds=1,
                     failure_model="none", execution="map")

  def moved(model, batch_size, m):
    _, state, _ = _final_state(cfg.replace(model=model, batch_size=batch_size,
                                           micro_batches=m), same)
    return state.workers

  chex.assert_trees_all_close(moved("mlp", 8, 2), moved("mlp", 4, 1),
                              rtol=1e-5, atol=1e-7)
  halves, four = moved("cnn", 8, 2), moved("cnn", 4, 1)
  chex.assert_tree_all_finite(halves)
  assert not np.allclose(halves["fc1"]["kernel"], four["fc1"]["kernel"],
                         rtol=1e-3, atol=1e-5)
