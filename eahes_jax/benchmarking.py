"""Throughput of the simulator: samples/s, rounds/s, compile time, memory.

The measurement behind ``python -m experiments.benchmark`` (issue 7). One
*case* is a method family (SGD-based EASGD or AdaHessian-based EAHES) × model ×
worker-axis execution × number of workers k. A case builds a
``simulator.Simulation`` on synthetic MNIST-shaped data (the benchmark measures
compute, not learning) with ``failure_rate=0``, so every worker computes all τ
local steps of every round, and times ``run_rounds``:

* the first call compiles and runs; ``compile_s`` = first − steady;
* a second call warms up (and is recorded: where the first call's outputs
  carry other shardings than ``init_state``'s, it compiles again);
* then ``repeats`` more calls, each waited for with ``block_until_ready``; the
  median is the steady time of ``rounds`` rounds, from which
  ``samples_per_s`` = k · τ · batch · rounds / seconds and ``rounds_per_s``.

The families of one model × execution × k are timed side by side, their calls
alternating, so that other processes' load on a shared CPU falls on both
alike: timing them one after another let a load change between the two skew
the ratio (a measured 2.6 that was 1.8 when interleaved). Each call's process
CPU time (all threads) is recorded too; it is less sensitive to that load than
wall time.

Memory: ``program_bytes`` is XLA's plan for the compiled chunk (arguments +
outputs − donated + temporaries), exact per case. ``peak_memory_bytes`` is the
process's peak resident set (``ru_maxrss``) on CPU, or the device's
``peak_bytes_in_use`` where the backend reports it; it is a high-water mark of
the whole process, so it covers one group only when each group runs in its own
process (``isolate=True``, the command line's default); in-process rows carry
``memory_scope="process_so_far"``.

The AdaHessian/SGD step-cost ratio of a model × execution × k is the SGD
case's samples/s over the AdaHessian case's: how many SGD rounds one
AdaHessian round costs.

How close to the machine's limit (issue 15): ``flops_per_sample`` is the
training FLOPs of one local step per sample, from XLA's cost analysis of the
compiled chunk (``Simulation.lower_rounds``), and ``matmul_peak_gflops`` times
a large float32 matmul in the same invocation. A row's ``achieved_gflops`` is
samples/s × FLOPs per sample, and ``peak_fraction`` that over the matmul's
GFLOP/s: the share of what this machine's cores reach on the friendliest
kernel there is. Off the CPU the FLOPs are counted on the host CPU
(``cpu_reference_flops_per_sample``): a GPU's cost analysis leaves out the
cuDNN and cuBLAS calls that do the work.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from eahes_jax import checks
from eahes_jax import config as config_lib
from eahes_jax import data as data_lib
from eahes_jax import execution as execution_lib
from eahes_jax import methods as methods_lib
from eahes_jax import models as models_lib
from eahes_jax import simulator

# Method families and the paper method that stands for each: both use the
# fixed elastic weight and no overlap, so they differ only in the local step.
FAMILIES = {"sgd": "EASGD", "adahessian": "EAHES"}
WORKERS = (1, 4, 8, 32)

# The full grid's cases left out by default on CPU: vmapping the 1.2M-parameter
# CNN over 32 workers there takes about 25 s per AdaHessian round and plans
# about 8 GiB (measured at k = 4: 2.8 s per round, 1.0 GiB, on 2 cores).
DEFAULT_CPU_SKIP = ("cnn:vmap:32", "cnn:sharded:32")


@dataclasses.dataclass(frozen=True)
class Case:
  """One benchmark case.

  Attributes:
    family: ``"sgd"`` or ``"adahessian"`` (or a registered method name).
    model: ``"mlp"``, ``"small_cnn"`` or ``"cnn"``.
    execution: ``"map"``, ``"vmap"`` or ``"sharded"``.
    num_workers: k.
    comm_period: τ, local steps per round.
    batch_size: minibatch per worker and local step.
    rounds: rounds per timed ``run_rounds`` call.
    repeats: timed calls after the compiling and the warm-up call; the
      median is reported.
    conv_impl: the CNNs' convolution formulation (``"auto"``: im2col on CPU).
    seed_execution: how the case's one seed is compiled (``SimConfig``'s
      field: ``"vmap"``, ``"map"`` or ``"auto"``).
    micro_batches: the parts each local step's minibatch is computed in
      (``SimConfig``'s field; 1: at once).
  """

  family: str
  model: str
  execution: str
  num_workers: int
  comm_period: int = 1
  batch_size: int = 64
  rounds: int = 10
  repeats: int = 3
  conv_impl: str = "auto"
  seed_execution: str = "auto"
  micro_batches: int = 1

  @property
  def method(self) -> str:
    return FAMILIES.get(self.family, self.family)

  @property
  def key(self) -> str:
    return f"{self.model}:{self.execution}:{self.num_workers}"


# Benchmarks time compute, not digits: random MNIST-shaped data.
synthetic_mnist = data_lib.synthetic_mnist


def case_config(case: Case) -> config_lib.SimConfig:
  """The simulator configuration of a case (all workers always compute)."""
  if case.family not in FAMILIES and case.family not in methods_lib.methods():
    raise ValueError(
        f"family must be one of {sorted(FAMILIES)} or a method name, got"
        f" {case.family!r}")
  # ConfigErrors (ValueErrors) that name the field, as the binary's flag.
  for field in ("rounds", "repeats"):
    try:
      checks.count(getattr(case, field), field, 1)
    except checks.ArgumentError as e:
      raise config_lib.ConfigError(str(e), field) from None
  return config_lib.SimConfig(
      method=case.method, model=case.model, num_workers=case.num_workers,
      comm_period=case.comm_period, rounds=case.rounds,
      batch_size=case.batch_size, failure_rate=0.0, failure_model="none",
      execution=case.execution, conv_impl=case.conv_impl,
      seed_execution=case.seed_execution, micro_batches=case.micro_batches,
      train_eval_size=256,
      eval_batch_size=256)


def peak_memory() -> tuple[int | None, str]:
  """The process's memory high-water mark in bytes, and what it measures.

  Returns:
    ``(bytes, kind)``: the device's ``peak_bytes_in_use`` (kind
    ``"device_peak_bytes_in_use"``) where the backend reports memory stats,
    else the peak resident set of the process (``"process_peak_rss"``).
  """
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device_peak_bytes_in_use"
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  # Linux reports kilobytes, macOS bytes.
  scale = 1 if sys.platform == "darwin" else 1024
  return int(rss * scale), "process_peak_rss"


def _program_bytes(compiled: jax.stages.Compiled) -> int | None:
  """Bytes XLA plans for the compiled chunk: arguments + outputs − aliased
  (donated) + temporaries; ``None`` where the backend does not say."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes
               - m.alias_size_in_bytes + m.temp_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    return None


def workers_per_program(sim: simulator.Simulation) -> int:
  """How many workers' local steps one pass of the chunk's loop body holds.

  ``map`` runs one worker per iteration of a loop; ``vmap`` all k at once;
  ``sharded`` the k / (mesh size) workers of one device (the cost analysis
  is of one device's program).
  """
  k = sim.config.num_workers
  if sim.strategy == "map":
    return 1
  if sim.strategy == "sharded":
    return k // sim.mesh.size
  return k


def flops_per_sample(sim: simulator.Simulation,
                     compiled: jax.stages.Compiled) -> float | None:
  """Training FLOPs of one local step per sample, from XLA's cost analysis.

  XLA's cost analysis counts the body of a loop once, whatever its trip
  count (checked by a test): the chunk's scans over rounds and over the τ
  local steps, and ``lax.map``'s loop over workers, each count one pass. So
  the chunk's FLOPs are one local step of ``workers_per_program`` workers on
  a minibatch each, for every seed, plus the work per parameter of a step
  and a round (optimizer, exchange, checks), here amortised over the batch:
  for the CNNs at batch 64 and k = 1 under 1 % of the figure, for the
  25k-parameter mlp about 10 %. Under ``map`` the round's exchange and checks
  of all k workers sit outside the counted loop pass and are divided by one
  worker's batch, so the figure grows with k (``cnn`` SGD: 73.8 MFLOP at
  k = 1, 83.2 at k = 64).

  Args:
    sim: the simulation whose chunk was compiled.
    compiled: ``sim.lower_rounds(state, rounds).compile()``.

  Returns:
    FLOPs per training sample, or ``None`` where the backend does not say.
  """
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  # Older jax returned one dict per program.
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  if not flops or flops <= 0:
    return None
  cfg = sim.config
  # Seeds under the vmap are all in the counted program; under "map" they
  # are a loop whose body (one seed) is counted once.
  seeds = (cfg.num_seeds
           if simulator.seed_execution_mode(sim.engine) == "vmap" else 1)
  return float(flops) / (workers_per_program(sim) * cfg.batch_size * seeds)


def cpu_reference_flops_per_sample(case: Case,
                                   data: data_lib.MNIST | None = None,
                                   direct: bool = False) -> float | None:
  """``flops_per_sample`` of a case's local step, counted on the CPU.

  On a GPU, XLA hands convolutions and matrix products to cuDNN and cuBLAS as
  custom calls, which its cost analysis does not count: the figure of a GPU
  chunk is the element-wise remainder (an H200's gave 0.2 MFLOP per sample
  for ``small_cnn``'s SGD step and 9 for ``cnn``'s, where the CPU's counts
  2.76 and 73.8 at k = 1). A training step's FLOPs per sample are the
  model's and the method's, not the device's, so off the CPU they are read
  from the same method and model compiled for the host CPU: one worker,
  ``execution="map"``, im2col convolutions (plain dots, which the CPU's
  analysis counts in full) unless the case's formulation does fewer FLOPs
  (``models.FEWER_FLOPS_IMPLS``: winograd, kept), one round. Nothing runs;
  only the compile.

  The figure is k = 1's (a CPU ``map`` chunk's own creeps up with k: see
  ``flops_per_sample``).

  Args:
    case: the case whose FLOPs to count (its k, execution and rounds are
      replaced as above).
    data: the dataset; default ``synthetic_mnist()``.
    direct: count a direct convolution's FLOPs (im2col's) whatever the
      case's formulation: what a program of direct convolutions, such as
      the PyTorch peer, does for the same step.

  Returns:
    FLOPs per training sample, or ``None`` where the analysis does not say.
  """
  conv_impl = case.conv_impl
  if case.model != "mlp" and (
      direct or conv_impl not in models_lib.FEWER_FLOPS_IMPLS):
    conv_impl = "im2col"
  # Micro-batches are the same work, but XLA's cost analysis counts a scan's
  # body once: the reference computes the minibatch at once.
  reference = dataclasses.replace(
      case, num_workers=1, execution="map", rounds=1, conv_impl=conv_impl,
      micro_batches=1)
  try:
    # JAX_PLATFORMS=cuda, say, leaves no CPU backend: no figure, no crash.
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
      sim = simulator.Simulation(case_config(reference),
                                 synthetic_mnist() if data is None else data)
      compiled = sim.lower_rounds(sim.init_state(), 1).compile()
      return flops_per_sample(sim, compiled)
  except Exception:  # pylint: disable=broad-except
    return None


def chunk_analysis(sim: simulator.Simulation, state: simulator.SimState,
                   rounds: int) -> dict[str, Any]:
  """``program_bytes`` and ``flops_per_sample`` of a chunk ``run_rounds``
  has run (lowering the cached jit again hits its cache: no compile)."""
  try:
    compiled = sim.lower_rounds(state, rounds).compile()
  except Exception:  # pylint: disable=broad-except
    return {"program_bytes": None, "flops_per_sample": None}
  return {"program_bytes": _program_bytes(compiled),
          "flops_per_sample": flops_per_sample(sim, compiled)}


def program_fields(case: Case, sim: simulator.Simulation) -> dict[str, Any]:
  """What the ``auto`` settings of a case resolved to, which makes its row
  one program or another: ``conv_impl_resolved`` (None for the mlp) and
  ``seed_execution_resolved``."""
  return {
      "conv_impl_resolved": (None if case.model == "mlp"
                             else getattr(sim.model, "conv_impl", None)),
      "seed_execution_resolved": simulator.seed_execution_mode(sim.engine),
  }


def case_analysis(case: Case, sim: simulator.Simulation,
                  state: simulator.SimState,
                  data: data_lib.MNIST | None = None) -> dict[str, Any]:
  """``chunk_analysis`` of a case's chunk, with FLOPs that count everything.

  On the CPU the FLOPs are the chunk's own (``flops_source="chunk"``);
  elsewhere the chunk's analysis leaves out the library calls that do the
  work, and they come from ``cpu_reference_flops_per_sample``
  (``flops_source="cpu_reference"``, or ``"unavailable"`` where that cannot
  be compiled: then no FLOPs and no share of the peak). So do they for a
  case in micro-batches on the CPU too: XLA's analysis counts the parts'
  scan body once, a part's FLOPs, and the reference computes the same step
  at once.
  """
  result = chunk_analysis(sim, state, case.rounds)
  if jax.default_backend() == "cpu" and case.micro_batches == 1:
    return {**result, "flops_source": "chunk"}
  flops = cpu_reference_flops_per_sample(case, data)
  return {**result, "flops_per_sample": flops,
          "flops_source": "cpu_reference" if flops is not None
                          else "unavailable"}


def matmul_peak_gflops(n: int = 3072, repeats: int = 5) -> dict[str, Any]:
  """GFLOP/s of a large float32 matmul on the default device: the peak.

  An (n, n) @ (n, n) float32 ``jnp.dot``, jitted, run once to compile and
  warm up, then timed ``repeats`` times; the best call counts (2·n³ FLOPs),
  since load from other processes only ever slows a call down.

  Args:
    n: the matrices' size.
    repeats: timed calls.

  Returns:
    ``{"matmul_peak_gflops", "matmul_n", "matmul_all_gflops"}``.
  """
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), jnp.float32)
  b = jax.random.normal(kb, (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, b))
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(dot(a, b))
    rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
  return {"matmul_peak_gflops": max(rates), "matmul_n": n,
          "matmul_all_gflops": rates}


def add_peak_fractions(rows: list[dict[str, Any]], peak_gflops: float | None,
                       rate_keys: Sequence[str] = ("samples_per_s",)
                       ) -> list[dict[str, Any]]:
  """Adds achieved GFLOP/s and the fraction of the matmul peak to rows.

  For every key ``x`` of ``rate_keys`` (a samples/s column) that a row has,
  with the row's FLOPs per sample (``x`` with ``samples_per_s`` replaced by
  ``flops_per_sample`` where the row has that key, as the PyTorch peer's
  ``torch_flops_per_sample``, else ``flops_per_sample``): ``x`` with
  ``samples_per_s`` replaced by ``achieved_gflops`` (samples/s × FLOPs per
  sample / 1e9) and by ``peak_fraction`` (that over ``peak_gflops``).

  Args:
    rows: benchmark rows (changed in place).
    peak_gflops: the measured matmul peak.
    rate_keys: samples/s columns to convert.

  Returns:
    The rows.
  """
  for row in rows:
    for key in rate_keys:
      flops = row.get(key.replace("samples_per_s", "flops_per_sample"),
                      row.get("flops_per_sample"))
      rate = row.get(key)
      achieved = key.replace("samples_per_s", "achieved_gflops")
      fraction = key.replace("samples_per_s", "peak_fraction")
      if flops and rate is not None:
        row[achieved] = rate * flops / 1e9
        row[fraction] = (row[achieved] / peak_gflops if peak_gflops
                         else None)
      else:
        row[achieved] = row[fraction] = None
  return rows


def measure_group(cases: Sequence[Case],
                  data: data_lib.MNIST | None = None) -> list[dict[str, Any]]:
  """Times cases side by side; see the module docstring for the method.

  Every case is compiled and run once first; then the timed calls alternate
  between the cases (case 1, case 2, ..., case 1, ...), so that a change in
  the machine's load during the measurement (other processes on a shared CPU)
  affects all of them alike and their ratio stays fair.

  Args:
    cases: cases to compare, usually one model × execution × k for each
      method family.
    data: the dataset; default ``synthetic_mnist()``.

  Returns:
    One JSON-friendly dict per case: the case's fields, the method and
    backend, ``first_call_s``, ``second_call_s`` (untimed warm-up; a second
    compile shows here), ``steady_s`` (median seconds of ``rounds``
    rounds), ``steady_all_s`` (every timed call), ``cpu_s`` (median process
    CPU seconds of a timed call, all threads: less sensitive to other
    processes' load than wall time), ``compile_s`` (first − steady),
    ``samples_per_s``, ``rounds_per_s``, ``program_bytes`` (XLA's plan for
    the compiled chunk), ``flops_per_sample`` (``flops_per_sample``),
    ``flops_source`` (``case_analysis``), ``peak_memory_bytes`` and
    ``memory_kind`` (the process's high-water mark when the group
    finished).

  Raises:
    ValueError: for an invalid case, including a sharded case whose k is not a
      multiple of the device count (raised before anything compiles).
  """
  data = synthetic_mnist() if data is None else data
  runs = []
  for case in cases:
    sim = simulator.Simulation(case_config(case), data)
    state = jax.block_until_ready(sim.init_state())
    start = time.perf_counter()
    state, _ = sim.run_rounds(state, case.rounds)
    jax.block_until_ready(state)
    first = time.perf_counter() - start
    # One untimed call more: the first call's outputs can carry other
    # shardings than init_state's (execution="sharded"), which costs a second
    # compile; recorded so that it shows, but kept out of the steady time.
    start = time.perf_counter()
    state, _ = sim.run_rounds(state, case.rounds)
    jax.block_until_ready(state)
    runs.append({"case": case, "sim": sim, "state": state, "first": first,
                 "second": time.perf_counter() - start, "wall": [],
                 "cpu": []})
  for _ in range(max(c.repeats for c in cases)):
    for run in runs:
      if len(run["wall"]) >= run["case"].repeats:
        continue
      wall0, cpu0 = time.perf_counter(), time.process_time()
      run["state"], _ = run["sim"].run_rounds(run["state"], run["case"].rounds)
      jax.block_until_ready(run["state"])
      run["wall"].append(time.perf_counter() - wall0)
      run["cpu"].append(time.process_time() - cpu0)
  mem, mem_kind = peak_memory()
  rows = []
  for run in runs:
    case, sim = run["case"], run["sim"]
    steady = statistics.median(run["wall"])
    samples = (case.num_workers * case.comm_period * case.batch_size
               * case.rounds)
    rows.append({
        **dataclasses.asdict(case),
        "method": case.method,
        "execution": sim.strategy,
        **program_fields(case, sim),
        "backend": jax.default_backend(),
        "num_devices": jax.device_count(),
        "first_call_s": run["first"],
        "second_call_s": run["second"],
        "steady_s": steady,
        "steady_all_s": run["wall"],
        "cpu_s": statistics.median(run["cpu"]),
        "compile_s": max(run["first"] - steady, 0.0),
        "samples_per_s": samples / steady,
        "rounds_per_s": case.rounds / steady,
        **case_analysis(case, sim, run["state"], data),
        "peak_memory_bytes": mem,
        "memory_kind": mem_kind,
    })
  return rows


def measure(case: Case, data: data_lib.MNIST | None = None) -> dict[str, Any]:
  """Times one case alone (``measure_group`` of one case)."""
  return measure_group([case], data)[0]


def _measure_group_isolated(cases: Sequence[Case]) -> list[dict[str, Any]]:
  # Top-level so that a spawned process can import it.
  rows = measure_group(cases)
  for row in rows:
    row["memory_scope"] = "group"
  return rows


def add_step_cost_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The AdaHessian/SGD step-cost ratio of every matching pair of rows.

  Args:
    rows: results of ``measure_group`` (rows with an ``"error"`` are ignored).

  Returns:
    One dict per model × execution × k × τ × batch measured with both
    families: ``sgd_samples_per_s``, ``adahessian_samples_per_s``, ``ratio``
    = SGD samples/s over AdaHessian samples/s (wall time) and ``cpu_ratio``
    (the same from process CPU time). Each AdaHessian row also gets
    ``step_cost_ratio`` (= ``ratio``).
  """
  def match_key(r):
    return (r["model"], r["execution"], r["num_workers"], r["comm_period"],
            r["batch_size"], r.get("conv_impl_resolved"),
            r.get("seed_execution_resolved"), r.get("micro_batches", 1))

  by_family: dict[str, dict[Any, dict[str, Any]]] = {}
  for r in rows:
    if "error" in r:
      continue
    optimizer = methods_lib.get_method(r["method"]).optimizer
    by_family.setdefault(optimizer, {})[match_key(r)] = r
  ratios = []
  for key, ada in by_family.get("adahessian", {}).items():
    sgd = by_family.get("sgd", {}).get(key)
    if sgd is None:
      continue
    ratio = sgd["samples_per_s"] / ada["samples_per_s"]
    ada["step_cost_ratio"] = ratio
    ratios.append({
        "model": key[0], "execution": key[1], "num_workers": key[2],
        "comm_period": key[3], "batch_size": key[4],
        "sgd_samples_per_s": sgd["samples_per_s"],
        "adahessian_samples_per_s": ada["samples_per_s"],
        "ratio": ratio,
        "cpu_ratio": (ada["cpu_s"] / sgd["cpu_s"] if sgd.get("cpu_s")
                      else None),
    })
  return ratios


def make_cases(families: Sequence[str] = tuple(FAMILIES),
               models: Sequence[str] = ("small_cnn", "cnn"),
               executions: Sequence[str] = execution_lib.STRATEGIES,
               workers: Sequence[int] = WORKERS,
               *,
               skip: Sequence[str] = (),
               **case_kwargs: Any) -> list[Case]:
  """The grid of cases, less those whose ``model:execution:k`` is in skip.

  Args:
    families: method families (``FAMILIES`` keys) or method names.
    models: model names.
    executions: ``"map"``, ``"vmap"``, ``"sharded"`` (or ``"auto"``).
    workers: values of k.
    skip: ``"model:execution:k"`` keys to leave out.
    **case_kwargs: further ``Case`` fields (comm_period, batch_size, rounds,
      repeats, conv_impl, seed_execution).

  Returns:
    The cases, ordered so that a model × execution × k's families are
    adjacent (``run_benchmark`` times them side by side).
  """
  for e in executions:
    execution_lib.resolve_strategy(e)
  for key in skip:
    # A key that can never match would silently leave nothing out.
    parts = key.split(":")
    if len(parts) != 3 or not parts[2].isdigit():
      raise config_lib.ConfigError(
          f"skip must hold model:execution:k keys, got {key!r}", "skip")
  cases = []
  for model in models:
    for execution in executions:
      for k in workers:
        for family in families:
          case = Case(family, model, execution, int(k), **case_kwargs)
          case_config(case)  # Validates before anything runs.
          if case.key not in skip:
            cases.append(case)
  return cases


def _groups(cases: Sequence[Case]) -> list[list[Case]]:
  """Cases that differ only in their family, in order of first appearance."""
  groups: dict[Any, list[Case]] = {}
  for case in cases:
    key = dataclasses.replace(case, family="")
    groups.setdefault(key, []).append(case)
  return list(groups.values())


def run_benchmark(cases: Sequence[Case], *, isolate: bool = False,
                  progress: Callable[[dict[str, Any]], None] | None = None,
                  matmul_size: int = 3072) -> dict[str, Any]:
  """Measures every case, the step-cost ratios and the fraction of peak.

  Cases that differ only in their method family form a group and are timed
  side by side (``measure_group``). The matmul peak is measured first, in
  this process (``matmul_peak_gflops``).

  Args:
    cases: from ``make_cases``.
    isolate: run each group in a fresh process, so that compiled programs do
      not accumulate and the peak memory is the group's own.
    progress: called with each finished row (e.g. to print it).
    matmul_size: n of the n × n matmul that measures the peak.

  Returns:
    ``{"environment": ..., "rows": [...], "ratios": [...]}``; the
    environment holds the matmul peak, every row ``achieved_gflops`` and
    ``peak_fraction`` (``add_peak_fractions``). A group that cannot run (a
    sharded k that is not a multiple of the device count) gets rows with an
    ``"error"`` message instead of timings.
  """
  env = environment()
  env.update(matmul_peak_gflops(matmul_size))
  rows = []
  pool = None
  if isolate:
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn"),
        max_tasks_per_child=1)
  try:
    for group in _groups(cases):
      try:
        if pool is not None:
          group_rows = pool.submit(_measure_group_isolated, group).result()
        else:
          group_rows = measure_group(group)
          for row in group_rows:
            row["memory_scope"] = "process_so_far"
      except ValueError as e:
        group_rows = [{**dataclasses.asdict(c), "method": c.method,
                       "error": str(e)} for c in group]
      for row in group_rows:
        rows.append(row)
        if progress is not None:
          progress(row)
  finally:
    if pool is not None:
      pool.shutdown()
  env["load_average_end"] = load_average()
  add_peak_fractions(rows, env["matmul_peak_gflops"])
  return {"environment": env, "rows": rows,
          "ratios": add_step_cost_ratios(rows)}


def load_average() -> list[float] | None:
  """The 1, 5 and 15 minute load averages (other processes skew timings)."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def cpu_model(cpuinfo: str | None = None) -> str:
  """The host CPU's model, as specific as the system says.

  On Linux, ``/proc/cpuinfo``'s model name with its family and model numbers
  ("AMD EPYC (family 26, model 2)"): a virtual machine may name only the
  vendor's product line, and two machines of one name can differ by a CPU
  generation (on this project's 2-core machines, float32 matmul peaks of
  170-185 and about 423-436 GFLOP/s), so timings from them are not
  comparable. Where it names no model (ARM Linux), the machine type with the
  CPU implementer and part ("aarch64 (implementer 0x41, part 0xd0c)");
  where there is no ``/proc/cpuinfo`` (macOS, Windows),
  ``platform.processor()`` or the machine type. The first processor's entry
  is taken to describe all of them.

  Args:
    cpuinfo: the text of ``/proc/cpuinfo``; read from the system if None.

  Returns:
    A one-line description.
  """
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo", encoding="utf-8") as f:
        cpuinfo = f.read()
    except OSError:
      cpuinfo = ""
  fields: dict[str, str] = {}
  for line in cpuinfo.strip().splitlines():
    if not line.strip():
      break  # The end of the first processor's entry.
    name, _, value = line.partition(":")
    fields.setdefault(name.strip(), value.strip())

  def numbers(keys):
    found = [f"{label} {fields[key]}" for key, label in keys if key in fields]
    return f" ({', '.join(found)})" if found else ""

  if fields.get("model name"):
    return fields["model name"] + numbers(
        (("cpu family", "family"), ("model", "model")))
  machine = platform.processor() or platform.machine()
  return machine + numbers(
      (("CPU implementer", "implementer"), ("CPU part", "part")))


def environment() -> dict[str, Any]:
  """The hardware and software a measurement ran on."""
  devices = jax.devices()
  return {
      "backend": jax.default_backend(),
      "device_kind": devices[0].device_kind,
      "num_devices": len(devices),
      "cpu_count": os.cpu_count(),
      "processor": cpu_model(),
      "jax_version": jax.__version__,
      "python": platform.python_version(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      # Other processes' load skews CPU timings; record it.
      "load_average_start": load_average(),
  }


def fmt(x: float | None, spec: str) -> str:
  """``format(x, spec)``, or ``"-"`` for a missing or non-finite number."""
  return "-" if x is None or not math.isfinite(x) else format(x, spec)


def add_speedups(rows: list[dict[str, Any]],
                 baseline: dict[str, Any]) -> list[dict[str, Any]]:
  """Each row's speed-up over the same case measured on another machine.

  A row is matched, by method, model, k, τ and batch, to the rows of
  ``baseline`` (an earlier ``run_benchmark`` result: the JSON that
  ``--json_out`` wrote, say on a CPU) in any execution; the fastest of them
  counts, so that each machine is taken at its best execution (``map`` on a
  CPU, ``vmap`` on a GPU).

  Args:
    rows: this run's rows (rows with an ``"error"`` are left alone).
    baseline: the other result, ``{"environment": ..., "rows": [...]}``.

  Returns:
    ``rows``, each given ``baseline_samples_per_s``, ``baseline_execution``
    and ``speedup`` (its samples/s over the baseline's), all ``None`` where
    the baseline has no such case.
  """
  def key(r):
    return (r["method"], r["model"], r["num_workers"], r["comm_period"],
            r["batch_size"])

  best: dict[Any, dict[str, Any]] = {}
  for r in baseline["rows"]:
    if "error" in r or r.get("samples_per_s") is None:
      continue
    if key(r) not in best or r["samples_per_s"] > best[key(r)][
        "samples_per_s"]:
      best[key(r)] = r
  for r in rows:
    if "error" in r:
      continue
    match = best.get(key(r))
    r["baseline_samples_per_s"] = match and match["samples_per_s"]
    r["baseline_execution"] = match and match["execution"]
    r["speedup"] = match and r["samples_per_s"] / match["samples_per_s"]
  return rows


def format_speedups(result: dict[str, Any]) -> str:
  """Lines of ``add_speedups``' figures, after the baseline's machine; empty
  if the result has none."""
  base = result["environment"].get("baseline_environment")
  if base is None:
    return ""
  lines = [f"speed-up over the baseline: {format_environment(base)}"]
  for r in result["rows"]:
    if "error" in r:
      continue
    if r.get("speedup") is None:
      lines.append(f"{case_columns(r)}  no such case in the baseline")
    else:
      lines.append(
          f"{case_columns(r)} {r['speedup']:8.1f}x  ({r['samples_per_s']:,.0f}"
          f" against {r['baseline_samples_per_s']:,.0f} samples/s,"
          f" {r['baseline_execution']})")
  return "\n".join(lines)


def format_environment(env: dict[str, Any]) -> str:
  """One line: the hardware, the matmul peak, the load averages and the
  XLA flags where any were set (they change the compiled programs)."""
  peak = env.get("matmul_peak_gflops")
  xla_flags = env.get("xla_flags")
  return (
      f"backend {env['backend']} ({env['device_kind']}, {env['num_devices']}"
      f" device(s), {env['cpu_count']} CPUs"
      + (f" of {env['processor']}" if env.get("processor") else "")
      + f", jax {env['jax_version']});"
      f" float32 matmul peak {fmt(peak, '.1f')} GFLOP/s"
      f" (n = {env.get('matmul_n')}); load average"
      f" {env['load_average_start']} -> {env.get('load_average_end')}"
      + (f"; XLA_FLAGS={xla_flags}" if xla_flags else ""))


# The columns that name a benchmark case, shared by every table of rows.
CASE_HEADER = (f"{'method':<7} {'model':<9} {'exec':<7} {'k':>3} {'tau':>3}"
               f" {'batch':>5}")


def case_columns(row: dict[str, Any]) -> str:
  """A row's case under ``CASE_HEADER``: method, model, execution, k, τ,
  batch."""
  return (f"{row['method']:<7} {row['model']:<9} {row['execution']:<7}"
          f" {row['num_workers']:>3} {row['comm_period']:>3}"
          f" {row['batch_size']:>5}")


def format_table(result: dict[str, Any]) -> str:
  """The rows of ``run_benchmark`` as a plain-text table."""
  header = (f"{CASE_HEADER} {'samples/s':>10} {'rounds/s':>9}"
            f" {'cpu ms/rnd':>10} {'compile s':>9} {'prog MiB':>8}"
            f" {'peak MiB':>8} {'ada/sgd':>7} {'MFLOP/smp':>9}"
            f" {'% peak':>6}")
  lines = [header, "-" * len(header)]
  mib = lambda b: None if b is None else b / 2**20
  mflop = lambda f: None if f is None else f / 1e6
  percent = lambda f: None if f is None else 100 * f
  for r in result["rows"]:
    prefix = case_columns(r)
    if "error" in r:
      lines.append(f"{prefix}  not run: {r['error']}")
      continue
    lines.append(
        f"{prefix} {fmt(r['samples_per_s'], '10,.0f')}"
        f" {fmt(r['rounds_per_s'], '9.2f')}"
        f" {fmt(1e3 * r['cpu_s'] / r['rounds'], '10.1f')}"
        f" {fmt(r['compile_s'], '9.2f')}"
        f" {fmt(mib(r['program_bytes']), '8.1f')}"
        f" {fmt(mib(r['peak_memory_bytes']), '8.0f')}"
        f" {fmt(r.get('step_cost_ratio'), '7.2f')}"
        f" {fmt(mflop(r.get('flops_per_sample')), '9.2f')}"
        f" {fmt(percent(r.get('peak_fraction')), '6.1f')}")
  lines.append(format_environment(result["environment"]))
  # What else makes a row another program (as XLA_FLAGS above does).
  programs = sorted({(r.get("conv_impl_resolved") or "-",
                      r.get("seed_execution_resolved") or "-",
                      r.get("micro_batches", 1))
                     for r in result["rows"] if "error" not in r})
  if programs:
    lines.append("simulator conv_impl, seed_execution, micro_batches: "
                 + "; ".join(f"{conv}, {seeds}, {parts}"
                             for conv, seeds, parts in programs))
  return "\n".join(lines)
