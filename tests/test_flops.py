"""FLOPs per sample from XLA's cost analysis, and the matmul peak (issue 15).

``benchmarking.flops_per_sample`` divides a compiled chunk's FLOPs by the
work XLA's cost analysis counts: one pass of each loop body. These tests pin
that reading: if the analysis began to multiply loop bodies by their trip
counts, the per-sample figure would change with k under ``map`` and fail.
"""

import dataclasses

import pytest

from eahes_jax import benchmarking
from eahes_jax import config as config_lib
from eahes_jax import simulator
from tests.conftest import tiny_mnist

# The mlp's forward pass per sample: 784 -> 32 -> 10, two FLOPs a MAC.
MLP_FORWARD_FLOPS = 2 * (784 * 32 + 32 * 10)


def _flops_per_sample(execution, k, batch, rounds=2, comm_period=2,
                      num_seeds=1, seed_execution="auto"):
  config = config_lib.SimConfig(
      method="EASGD", model="mlp", num_workers=k, comm_period=comm_period,
      rounds=rounds, batch_size=batch, failure_rate=0.0,
      failure_model="none", execution=execution, train_eval_size=64,
      eval_batch_size=64, num_seeds=num_seeds,
      seed_execution=seed_execution)
  sim = simulator.Simulation(config, tiny_mnist())
  state, _ = sim.run_rounds(sim.init_state(), rounds)
  return benchmarking.chunk_analysis(sim, state, rounds)["flops_per_sample"]


@pytest.fixture(scope="module")
def flops():
  return {(e, k, b): _flops_per_sample(e, k, b)
          for e, k, b in [("map", 1, 16), ("map", 1, 32), ("map", 1, 64),
                          ("map", 2, 64), ("vmap", 2, 64)]}


def _chunk(flops, b):
  """The FLOPs of one step of one worker on a batch of b (map, k = 1)."""
  return flops[("map", 1, b)] * b


def test_chunk_flops_grow_by_a_training_step_per_sample(flops):
  assert all(f > 0 for f in flops.values())
  # The chunk's FLOPs are affine in the batch: a step's per-parameter work
  # (optimizer, exchange, checks) plus the model's work per sample.
  per_sample = (_chunk(flops, 64) - _chunk(flops, 32)) / 32
  assert (_chunk(flops, 32) - _chunk(flops, 16)) / 16 == pytest.approx(
      per_sample, rel=0.02)
  # Forward, plus the backward's weight gradients (as much again) and the
  # second layer's input gradient: 2-3x forward.
  assert 2 * MLP_FORWARD_FLOPS <= per_sample <= 3 * MLP_FORWARD_FLOPS
  # The per-parameter work is amortised over the batch: small at 64.
  assert flops[("map", 1, 64)] == pytest.approx(per_sample, rel=0.15)


def test_flops_per_sample_does_not_depend_on_k_or_the_execution(flops):
  # Were loop bodies counted once per trip, map's k = 2 would double.
  one = flops[("map", 1, 64)]
  assert flops[("map", 2, 64)] == pytest.approx(one, rel=0.1)
  assert flops[("vmap", 2, 64)] == pytest.approx(one, rel=0.1)


@pytest.mark.parametrize("seed_execution", ["vmap", "map"])
def test_flops_per_sample_does_not_depend_on_the_seeds(flops, seed_execution):
  # Three seeds in the vmapped program count three times the FLOPs; in a
  # lax.map the body (one seed) counts once: per sample, the same.
  three = _flops_per_sample("map", 1, 64, num_seeds=3,
                            seed_execution=seed_execution)
  assert three == pytest.approx(flops[("map", 1, 64)], rel=0.1)


def test_matmul_peak_is_positive():
  peak = benchmarking.matmul_peak_gflops(n=128, repeats=2)
  assert peak["matmul_n"] == 128 and len(peak["matmul_all_gflops"]) == 2
  assert peak["matmul_peak_gflops"] == max(peak["matmul_all_gflops"]) > 0


def test_peak_fractions_are_achieved_flops_over_the_peak():
  rows = [{"flops_per_sample": 2e6, "samples_per_s": 500.0,
           "torch_samples_per_s": 250.0},
          {"flops_per_sample": None, "samples_per_s": 500.0}]
  benchmarking.add_peak_fractions(rows, 4.0,
                                  ("samples_per_s", "torch_samples_per_s"))
  assert rows[0]["achieved_gflops"] == pytest.approx(1.0)
  assert rows[0]["peak_fraction"] == pytest.approx(0.25)
  assert rows[0]["torch_achieved_gflops"] == pytest.approx(0.5)
  assert rows[0]["torch_peak_fraction"] == pytest.approx(0.125)
  assert rows[1]["peak_fraction"] is None


def test_a_rate_takes_its_own_flops_where_the_row_has_them():
  """The PyTorch peer's direct convolutions do more FLOPs than winograd's:
  its share of the peak is of its own count, the simulator's of its own."""
  rows = [{"flops_per_sample": 1e6, "torch_flops_per_sample": 3e6,
           "samples_per_s": 500.0, "torch_samples_per_s": 250.0}]
  benchmarking.add_peak_fractions(rows, 4.0,
                                  ("samples_per_s", "torch_samples_per_s"))
  assert rows[0]["achieved_gflops"] == pytest.approx(0.5)
  assert rows[0]["torch_achieved_gflops"] == pytest.approx(0.75)
  assert rows[0]["torch_peak_fraction"] == pytest.approx(0.1875)


def _case(model, k, execution, conv_impl="auto"):
  return benchmarking.Case(family="sgd", model=model, execution=execution,
                           num_workers=k, rounds=1, repeats=1,
                           batch_size=16, conv_impl=conv_impl)


# small_cnn: XLA's convolutions count 2.6 % fewer FLOPs than im2col's dots
# here, so a reference that kept the case's conv_impl would fail the tight
# tolerance. The mlp's per-parameter work of two workers moves it ~4 %.
@pytest.mark.parametrize("model,rel", [("mlp", 0.05), ("small_cnn", 0.005)])
def test_the_cpu_reference_counts_what_the_cpu_chunk_counts(
    model, rel, monkeypatch):
  # Off the CPU the benchmark reads FLOPs from this reference; on the CPU it
  # must agree with the analysis of the case's own chunk (k = 2, vmap).
  data = tiny_mnist()
  sim = simulator.Simulation(
      benchmarking.case_config(_case(model, 2, "vmap", "im2col")), data)
  state, _ = sim.run_rounds(sim.init_state(), 1)
  chunk = benchmarking.chunk_analysis(sim, state, 1)["flops_per_sample"]
  built = []

  class Recording(simulator.Simulation):

    def __init__(self, config, data):
      built.append(config)
      super().__init__(config, data)

  monkeypatch.setattr(benchmarking.simulator, "Simulation", Recording)
  reference = benchmarking.cpu_reference_flops_per_sample(
      _case(model, 2, "vmap", "xla"), data)
  assert chunk > 0
  assert reference == pytest.approx(chunk, rel=rel)
  (config,) = built
  assert (config.num_workers, config.execution) == (1, "map")
  if model == "small_cnn":
    assert config.conv_impl == "im2col"


def test_the_cpu_reference_keeps_winograd_unless_asked_for_direct_flops():
  """Off the CPU a winograd row's FLOPs are winograd's own (a direct count
  would overstate its share of the peak); the PyTorch peer's are a direct
  convolution's."""
  case = _case("cnn", 2, "vmap", "winograd")
  data = tiny_mnist()
  own = benchmarking.cpu_reference_flops_per_sample(case, data)
  direct = benchmarking.cpu_reference_flops_per_sample(case, data,
                                                       direct=True)
  im2col = benchmarking.cpu_reference_flops_per_sample(
      _case("cnn", 2, "vmap", "im2col"), data)
  assert direct == im2col
  assert 0 < own < direct / 2  # conv2, ~86 % of the step, at about a third.


def test_the_cpu_reference_says_none_where_there_is_no_cpu_backend(
    monkeypatch):
  def no_cpu(*args):
    raise RuntimeError("Unknown backend cpu")  # as under JAX_PLATFORMS=cuda

  monkeypatch.setattr(benchmarking.jax, "devices", no_cpu)
  assert benchmarking.cpu_reference_flops_per_sample(
      _case("mlp", 2, "map"), tiny_mnist()) is None


def test_off_the_cpu_rows_take_their_flops_from_the_cpu_reference(
    monkeypatch):
  data = tiny_mnist()
  case = _case("mlp", 1, "map")  # the reference's own program on the CPU
  on_cpu = benchmarking.measure_group([case], data)[0]
  assert on_cpu["flops_source"] == "chunk"
  # A backend whose own analysis says nothing (as a GPU's says too little).
  monkeypatch.setattr(benchmarking, "chunk_analysis",
                      lambda *a: {"program_bytes": None,
                                  "flops_per_sample": None})
  monkeypatch.setattr(benchmarking.jax, "default_backend", lambda: "gpu")
  off_cpu = benchmarking.measure_group([case], data)[0]
  assert off_cpu["flops_source"] == "cpu_reference"
  assert off_cpu["flops_per_sample"] == pytest.approx(
      on_cpu["flops_per_sample"], rel=1e-6)


def test_the_environment_line_names_xla_flags_only_where_set():
  # A row measured under other XLA flags (README: the YNN fusion setting)
  # is another program; the printed footer must say so.
  env = {"backend": "cpu", "device_kind": "cpu", "num_devices": 1,
         "cpu_count": 2, "jax_version": "0", "matmul_peak_gflops": 100.0,
         "matmul_n": 8, "load_average_start": [1.0, 1.0, 1.0],
         "load_average_end": [1.0, 1.0, 1.0], "xla_flags": ""}
  assert "XLA_FLAGS" not in benchmarking.format_environment(env)
  flag = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
  line = benchmarking.format_environment({**env, "xla_flags": flag})
  assert line.endswith("; XLA_FLAGS=" + flag)


_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu avx512f

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: Something else
"""


def test_cpu_model_names_the_family_and_model_of_the_first_processor():
  # Two 2-core machines both called "AMD EPYC" had matmul peaks of 170-185
  # and about 423-436 GFLOP/s: the record must tell them apart.
  assert (benchmarking.cpu_model(_CPUINFO)
          == "AMD EPYC (family 26, model 2)")
  assert benchmarking.cpu_model("model name\t: Some CPU\n") == "Some CPU"


def test_cpu_model_falls_back_without_a_model_name(monkeypatch):
  monkeypatch.setattr(benchmarking.platform, "processor", lambda: "")
  monkeypatch.setattr(benchmarking.platform, "machine", lambda: "arm64")
  assert benchmarking.cpu_model("") == "arm64"
  assert benchmarking.cpu_model("processor\t: 0\nBogoMIPS\t: 50\n") == "arm64"
  # ARM Linux names no model: the implementer and part tell cores apart.
  arm = ("\nprocessor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n"
         "CPU part\t: 0xd0c\n\nprocessor\t: 1\nCPU part\t: 0xd40\n")
  assert (benchmarking.cpu_model(arm)
          == "arm64 (implementer 0x41, part 0xd0c)")


def test_the_environment_line_names_the_cpu_model():
  env = {"backend": "cpu", "device_kind": "cpu", "num_devices": 1,
         "cpu_count": 2, "processor": "AMD EPYC (family 26, model 2)",
         "jax_version": "0", "matmul_peak_gflops": 100.0, "matmul_n": 8,
         "load_average_start": None, "load_average_end": None}
  line = benchmarking.format_environment(env)
  assert "2 CPUs of AMD EPYC (family 26, model 2), jax 0" in line
  # And the record a run writes holds it.
  assert benchmarking.environment()["processor"] == benchmarking.cpu_model()
  # Results written before the field existed still format.
  del env["processor"]
  assert "2 CPUs, jax 0" in benchmarking.format_environment(env)


def test_micro_batched_rows_count_the_whole_step_not_one_part():
  # XLA's analysis counts the parts' scan body once: the chunk's own figure
  # is about one part's. The row takes the step's FLOPs computed at once.
  data = tiny_mnist()
  whole = benchmarking.measure_group([_case("mlp", 1, "map")], data)[0]
  case = dataclasses.replace(_case("mlp", 1, "map"), micro_batches=4)
  sim = simulator.Simulation(benchmarking.case_config(case), data)
  own = benchmarking.chunk_analysis(sim, sim.init_state(), case.rounds)
  row = benchmarking.measure_group([case], data)[0]
  assert row["flops_source"] == "cpu_reference"
  assert row["flops_per_sample"] == pytest.approx(whole["flops_per_sample"],
                                                  rel=1e-6)
  assert own["flops_per_sample"] < 0.5 * row["flops_per_sample"]
