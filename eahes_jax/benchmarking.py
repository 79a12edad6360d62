"""Throughput of the simulator: samples/s, rounds/s, compile time, memory.

The measurement behind ``python -m experiments.benchmark`` (issue 7). One
*case* is a method family (SGD-based EASGD or AdaHessian-based EAHES) × model ×
worker-axis execution × number of workers k. A case builds a
``simulator.Simulation`` on synthetic MNIST-shaped data (the benchmark measures
compute, not learning) with ``failure_rate=0``, so every worker computes all τ
local steps of every round, and times ``run_rounds``:

* the first call compiles and runs; ``compile_s`` = first − steady;
* then ``repeats`` more calls, each waited for with ``block_until_ready``; the
  median is the steady time of ``rounds`` rounds, from which
  ``samples_per_s`` = k · τ · batch · rounds / seconds and ``rounds_per_s``.

Peak memory is the process's peak resident set (``ru_maxrss``) on CPU and the
device's ``peak_bytes_in_use`` where the backend reports it. Both are
high-water marks of the whole process, so they are per case only when each
case runs in its own process (``isolate=True``, the command line's default);
in-process rows carry ``memory_scope="process_so_far"``.

The AdaHessian/SGD step-cost ratio of a model × execution × k is the SGD
case's samples/s over the AdaHessian case's: how many SGD rounds one
AdaHessian round costs.
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
from typing import Any, Sequence

import jax
import numpy as np

from eahes_jax import config as config_lib
from eahes_jax import data as data_lib
from eahes_jax import execution as execution_lib
from eahes_jax import methods as methods_lib
from eahes_jax import simulator

# Method families and the paper method that stands for each: both use the
# fixed elastic weight and no overlap, so they differ only in the local step.
FAMILIES = {"sgd": "EASGD", "adahessian": "EAHES"}
WORKERS = (1, 4, 8, 32)

# The full grid's cases left out by default on CPU: vmapping the 1.2M-parameter
# CNN over 32 workers takes minutes per round there (see the README).
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
    repeats: timed calls after the first; the median is reported.
    conv_impl: the CNNs' convolution formulation (``"auto"``: im2col on CPU).
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

  @property
  def method(self) -> str:
    return FAMILIES.get(self.family, self.family)

  @property
  def key(self) -> str:
    return f"{self.model}:{self.execution}:{self.num_workers}"


def synthetic_mnist(n_train: int = 4096, n_test: int = 256,
                    seed: int = 0) -> data_lib.MNIST:
  """Random standard-normal images and uniform labels shaped like MNIST."""
  rng = np.random.default_rng(seed)
  return data_lib.MNIST(
      train_images=rng.normal(size=(n_train, 28, 28, 1)).astype(np.float32),
      train_labels=rng.integers(0, 10, n_train).astype(np.int32),
      test_images=rng.normal(size=(n_test, 28, 28, 1)).astype(np.float32),
      test_labels=rng.integers(0, 10, n_test).astype(np.int32),
      source="synthetic")


def case_config(case: Case) -> config_lib.SimConfig:
  """The simulator configuration of a case (all workers always compute)."""
  if case.family not in FAMILIES and case.family not in methods_lib.methods():
    raise ValueError(
        f"family must be one of {sorted(FAMILIES)} or a method name, got"
        f" {case.family!r}")
  if case.rounds < 1:
    raise ValueError(f"rounds must be an integer >= 1, got {case.rounds}")
  if case.repeats < 1:
    raise ValueError(f"repeats must be an integer >= 1, got {case.repeats}")
  return config_lib.SimConfig(
      method=case.method, model=case.model, num_workers=case.num_workers,
      comm_period=case.comm_period, rounds=case.rounds,
      batch_size=case.batch_size, failure_rate=0.0, failure_model="none",
      execution=case.execution, conv_impl=case.conv_impl,
      train_eval_size=256, eval_batch_size=256)


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


def measure(case: Case, data: data_lib.MNIST | None = None) -> dict[str, Any]:
  """Times one case; see the module docstring for the method.

  Args:
    case: what to run.
    data: the dataset; default ``synthetic_mnist()``.

  Returns:
    A JSON-friendly dict: the case's fields, the method and backend,
    ``first_call_s``, ``steady_s`` (median seconds of ``rounds`` rounds),
    ``steady_all_s`` (every timed call), ``compile_s``, ``samples_per_s``,
    ``rounds_per_s``, ``peak_memory_bytes`` and ``memory_kind``.

  Raises:
    ValueError: for an invalid case, including a sharded case whose k is not a
      multiple of the device count.
  """
  config = case_config(case)
  data = synthetic_mnist() if data is None else data
  sim = simulator.Simulation(config, data)
  state = jax.block_until_ready(sim.init_state())

  start = time.perf_counter()
  state, _ = sim.run_rounds(state, case.rounds)
  jax.block_until_ready(state)
  first = time.perf_counter() - start

  times = []
  for _ in range(case.repeats):
    start = time.perf_counter()
    state, _ = sim.run_rounds(state, case.rounds)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - start)
  steady = statistics.median(times)
  samples = (case.num_workers * case.comm_period * case.batch_size
             * case.rounds)
  mem, mem_kind = peak_memory()
  return {
      **dataclasses.asdict(case),
      "method": case.method,
      "execution": sim.strategy,
      "conv_impl_resolved": (None if case.model == "mlp"
                             else getattr(sim.model, "conv_impl", None)),
      "backend": jax.default_backend(),
      "num_devices": jax.device_count(),
      "first_call_s": first,
      "steady_s": steady,
      "steady_all_s": times,
      "compile_s": max(first - steady, 0.0),
      "samples_per_s": samples / steady,
      "rounds_per_s": case.rounds / steady,
      "peak_memory_bytes": mem,
      "memory_kind": mem_kind,
  }


def _measure_isolated(case: Case) -> dict[str, Any]:
  # Top-level so that a spawned process can import it.
  row = measure(case)
  row["memory_scope"] = "case"
  return row


def add_step_cost_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The AdaHessian/SGD step-cost ratio of every matching pair of rows.

  Args:
    rows: results of ``measure`` (rows with an ``"error"`` are ignored).

  Returns:
    One dict per model × execution × k × τ × batch measured with both
    families: ``sgd_samples_per_s``, ``adahessian_samples_per_s`` and
    ``ratio`` = SGD samples/s over AdaHessian samples/s. Each AdaHessian row
    also gets ``step_cost_ratio``.
  """
  def match_key(r):
    return (r["model"], r["execution"], r["num_workers"], r["comm_period"],
            r["batch_size"], r.get("conv_impl_resolved"))

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
    })
  return ratios


def make_cases(families: Sequence[str] = ("sgd", "adahessian"),
               models: Sequence[str] = ("small_cnn", "cnn"),
               executions: Sequence[str] = execution_lib.STRATEGIES,
               workers: Sequence[int] = WORKERS,
               *,
               skip: Sequence[str] = (),
               **case_kwargs: Any) -> list[Case]:
  """The grid of cases, less those whose ``model:execution:k`` is in skip."""
  for e in executions:
    execution_lib.resolve_strategy(e)
  cases = []
  for model in models:
    for execution in executions:
      for k in workers:
        for family in families:
          case = Case(family, model, execution, int(k), **case_kwargs)
          if case.key not in skip:
            cases.append(case)
  return cases


def run_benchmark(cases: Sequence[Case], *, isolate: bool = False,
                  progress: Any = None) -> dict[str, Any]:
  """Measures every case and the step-cost ratios.

  Args:
    cases: from ``make_cases``.
    isolate: run each case in a fresh process, so that compiles do not
      accumulate and peak memory is the case's own. Sharded cases whose k
      does not divide the device count are recorded with an ``"error"``.
    progress: called with each finished row (e.g. to print it).

  Returns:
    ``{"environment": ..., "rows": [...], "ratios": [...]}``.
  """
  env = environment()
  rows = []
  pool = None
  if isolate:
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn"),
        max_tasks_per_child=1)
  try:
    for case in cases:
      try:
        if pool is not None:
          row = pool.submit(_measure_isolated, case).result()
        else:
          row = measure(case)
          row["memory_scope"] = "process_so_far"
      except ValueError as e:
        row = {**dataclasses.asdict(case), "method": case.method,
               "error": str(e)}
      rows.append(row)
      if progress is not None:
        progress(row)
  finally:
    if pool is not None:
      pool.shutdown()
  env["load_average_end"] = _load_average()
  return {"environment": env, "rows": rows,
          "ratios": add_step_cost_ratios(rows)}


def _load_average() -> list[float] | None:
  try:
    return list(os.getloadavg())
  except OSError:
    return None


def environment() -> dict[str, Any]:
  """The hardware and software a measurement ran on."""
  devices = jax.devices()
  return {
      "backend": jax.default_backend(),
      "device_kind": devices[0].device_kind,
      "num_devices": len(devices),
      "cpu_count": os.cpu_count(),
      "processor": platform.processor() or platform.machine(),
      "jax_version": jax.__version__,
      "python": platform.python_version(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      # Other processes' load skews CPU timings; record it.
      "load_average_start": _load_average(),
  }


def _fmt(x: float | None, spec: str) -> str:
  return "-" if x is None or not math.isfinite(x) else format(x, spec)


def format_table(result: dict[str, Any]) -> str:
  """The rows and ratios of ``run_benchmark`` as plain-text tables."""
  header = (f"{'method':<7} {'model':<9} {'exec':<7} {'k':>3} {'tau':>3}"
            f" {'batch':>5} {'samples/s':>10} {'rounds/s':>9}"
            f" {'compile s':>9} {'peak MiB':>8} {'ada/sgd':>7}")
  lines = [header, "-" * len(header)]
  for r in result["rows"]:
    prefix = (f"{r['method']:<7} {r['model']:<9} {r['execution']:<7}"
              f" {r['num_workers']:>3} {r['comm_period']:>3}"
              f" {r['batch_size']:>5}")
    if "error" in r:
      lines.append(f"{prefix}  skipped: {r['error']}")
      continue
    mem = r["peak_memory_bytes"]
    lines.append(
        f"{prefix} {_fmt(r['samples_per_s'], '10,.0f')}"
        f" {_fmt(r['rounds_per_s'], '9.2f')} {_fmt(r['compile_s'], '9.2f')}"
        f" {_fmt(None if mem is None else mem / 2**20, '8.0f')}"
        f" {_fmt(r.get('step_cost_ratio'), '7.2f')}")
  env = result["environment"]
  lines.append(
      f"backend {env['backend']} ({env['device_kind']}, {env['num_devices']}"
      f" device(s), {env['cpu_count']} CPUs); load average"
      f" {env['load_average_start']} -> {env.get('load_average_end')}")
  return "\n".join(lines)
