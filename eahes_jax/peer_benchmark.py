"""The simulator against a sequential PyTorch program, in one invocation.

The side-by-side measurement behind ``python -m experiments.benchmark
--peer=torch`` (issue 15). For one ``benchmarking.Case`` (model × method
family × k, τ, batch), ``measure_pair`` builds the ``simulator.Simulation``
and its peer, ``torch_peer.SequentialPeer`` (the same work: k workers, τ
local steps of the same optimizer family on a minibatch each, the elastic
exchange), on the same synthetic data, and then times them *alternately*:

* the simulator's first ``run_rounds`` call compiles (``compile_s`` = first
  − steady, as in ``benchmarking``), a second warms up; the peer's first
  call warms up (allocations, oneDNN's kernel choice);
* then ``repeats`` times: one simulator call of ``rounds`` rounds, then one
  peer call of as many rounds (A B A B ...), so that a change in the load of
  a shared machine falls on both alike;
* the medians give samples/s = k · τ · batch · rounds / seconds of each, and
  ``ratio`` = simulator samples/s over PyTorch samples/s (> 1: the simulator
  is faster).

Threads: XLA's CPU backend runs a program's kernels on a pool of as many
threads as the process may use cores (its affinity mask); torch is given the
same number (``torch_peer.set_threads``; ``torch_threads`` overrides it).
PyTorch keeps its defaults otherwise (oneDNN convolutions on).

Device: the peer computes where the simulator does (``torch_device="auto"``:
CUDA when JAX's backend is a GPU and PyTorch sees one, else the CPU), each
timed call ending with ``torch.cuda.synchronize`` there as the simulator's
with ``block_until_ready``. Both frameworks keep their GPU defaults for
float32: XLA's convolutions and matmuls use TF32 tensor cores on recent
NVIDIA GPUs, PyTorch's cuDNN convolutions do too, and its cuBLAS matmuls do
not (``torch.backends.cuda.matmul.allow_tf32``, recorded per row).

Every row also carries the simulator's training FLOPs per sample
(``benchmarking.flops_per_sample``), the peer's, and, given the matmul peak
measured in the same invocation, the fraction of that peak each program
achieves. The two count the same FLOPs (they compute the same step) except
under ``conv_impl="winograd"``, whose 3 × 3 convolutions do fewer: the peer's
direct convolutions are then counted as ``im2col``'s
(``benchmarking.cpu_reference_flops_per_sample``).

PyTorch is imported here only inside ``measure_pair``: this module imports
without it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import multiprocessing
import statistics
import time
from typing import Any, Callable, Sequence

import jax

from eahes_jax import benchmarking
from eahes_jax import checks
from eahes_jax import data as data_lib
from eahes_jax import methods as methods_lib
from eahes_jax import models
from eahes_jax import simulator

PEERS = ("torch",)
PEER_MODELS = ("small_cnn", "cnn")
# The SGD family's momentum in the PyTorch program: the paper's δ = 0.5
# (the simulator's EASGD takes plain SGD steps; the momentum buffer's update
# is one elementwise pass per parameter, small beside a step's convolutions).
PEER_MOMENTUM = 0.5
TORCH_DEVICES = ("auto", "cpu", "cuda")


def resolve_torch_device(torch_device: str = "auto") -> str:
  """The torch device of the peer: ``"cpu"`` or ``"cuda"``.

  Args:
    torch_device: ``"auto"`` (the simulator's kind of device: ``"cuda"`` when
      JAX computes on a GPU and PyTorch sees one, else ``"cpu"``), ``"cpu"``
      or ``"cuda"``.

  Raises:
    ValueError: for another name, or ``"cuda"`` where PyTorch sees no GPU.
  """
  if torch_device not in TORCH_DEVICES:
    raise ValueError(f"`torch_device` must be one of {TORCH_DEVICES}, got"
                     f" {torch_device!r}")
  import torch  # pylint: disable=g-import-not-at-top
  cuda = torch.cuda.is_available()
  if torch_device == "cuda" and not cuda:
    raise ValueError("`torch_device=cuda`, but PyTorch sees no CUDA device")
  if torch_device == "auto":
    return "cuda" if cuda and jax.default_backend() == "gpu" else "cpu"
  return torch_device


def _check(case: benchmarking.Case) -> str:
  """The peer's optimizer for a case; raises ValueError for a case it lacks."""
  if case.model not in PEER_MODELS:
    raise ValueError(
        f"the PyTorch peer has models {PEER_MODELS}, got {case.model!r}")
  optimizer = methods_lib.get_method(case.method).optimizer
  if optimizer not in ("sgd", "nesterov", "adahessian"):
    raise ValueError(
        f"the PyTorch peer has no {optimizer!r} step (method {case.method})")
  return optimizer


def measure_pair(case: benchmarking.Case,
                 data: data_lib.MNIST | None = None, *,
                 torch_threads: int | None = None,
                 torch_device: str = "auto") -> dict[str, Any]:
  """Times the simulator and the PyTorch peer alternately on one case.

  Args:
    case: the model (``small_cnn`` or ``cnn``), family, k, τ, batch, rounds
      per timed call and repeats; its ``execution`` is the simulator's.
    data: the dataset; default ``benchmarking.synthetic_mnist()``.
    torch_threads: torch's intra-op threads; default the process's cores.
    torch_device: where the peer computes (``resolve_torch_device``).

  Returns:
    A JSON-friendly dict: the case's fields, ``method``, ``execution`` (the
    resolved strategy), ``load_average_start``, ``samples_per_s``,
    ``steady_s``, ``steady_all_s``, ``first_call_s``, ``compile_s``,
    ``program_bytes`` and ``flops_per_sample`` for the simulator;
    ``torch_flops_per_sample`` (the simulator's, or under a formulation that
    does fewer FLOPs, ``models.FEWER_FLOPS_IMPLS``, a direct convolution's),
    ``torch_samples_per_s``, ``torch_steady_s``, ``torch_steady_all_s``,
    ``torch_first_call_s``, ``torch_threads``, ``torch_version``,
    ``torch_mkldnn``, ``torch_device`` and ``torch_tf32_matmul`` for the
    peer; ``ratio``.

  Raises:
    ValueError: for a model or family the peer does not have, or a
      ``torch_device`` PyTorch cannot use.
  """
  optimizer = _check(case)
  device = resolve_torch_device(torch_device)
  from eahes_jax import torch_peer  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  load_start = benchmarking.load_average()
  threads = torch_peer.set_threads(torch_threads)
  data = benchmarking.synthetic_mnist() if data is None else data
  sim = simulator.Simulation(benchmarking.case_config(case), data)
  state = jax.block_until_ready(sim.init_state())

  def run_sim():
    nonlocal state
    state, _ = sim.run_rounds(state, case.rounds)
    jax.block_until_ready(state)

  peer = torch_peer.SequentialPeer(
      case.model, optimizer, case.num_workers, data.train_images,
      data.train_labels, comm_period=case.comm_period,
      batch_size=case.batch_size, lr=sim.config.lr, momentum=PEER_MOMENTUM,
      alpha=sim.config.alpha, seed=sim.config.seed, device=device)

  def run_peer():
    peer.run_rounds(case.rounds)

  def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start

  first = timed(run_sim)
  timed(run_sim)  # Warm-up: a sharded chunk can compile a second time.
  torch_first = timed(run_peer)
  sim_s, torch_s = [], []
  for _ in range(case.repeats):
    sim_s.append(timed(run_sim))
    torch_s.append(timed(run_peer))
  steady, torch_steady = statistics.median(sim_s), statistics.median(torch_s)
  samples = case.num_workers * case.comm_period * case.batch_size * case.rounds
  analysis = benchmarking.case_analysis(case, sim, state, data)
  torch_flops = analysis["flops_per_sample"]
  if getattr(sim.model, "conv_impl", None) in models.FEWER_FLOPS_IMPLS:
    torch_flops = benchmarking.cpu_reference_flops_per_sample(
        case, data, direct=True)
  return {
      **dataclasses.asdict(case),
      "method": case.method,
      "execution": sim.strategy,
      **benchmarking.program_fields(case, sim),
      "load_average_start": load_start,
      "first_call_s": first,
      "compile_s": max(first - steady, 0.0),
      "steady_s": steady,
      "steady_all_s": sim_s,
      "samples_per_s": samples / steady,
      **analysis,
      "torch_flops_per_sample": torch_flops,
      "torch_first_call_s": torch_first,
      "torch_steady_s": torch_steady,
      "torch_steady_all_s": torch_s,
      "torch_samples_per_s": samples / torch_steady,
      "torch_threads": threads,
      "torch_version": torch.__version__,
      "torch_mkldnn": bool(torch.backends.mkldnn.enabled),
      "torch_device": device,
      "torch_tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
      "ratio": torch_steady / steady,
  }


def _measure_pair_isolated(case: benchmarking.Case, torch_threads: int | None,
                           torch_device: str) -> dict[str, Any]:
  # Top-level so that a spawned process can import it.
  return measure_pair(case, torch_threads=torch_threads,
                      torch_device=torch_device)


def run_peer_benchmark(
    cases: Sequence[benchmarking.Case], *, peer: str = "torch",
    isolate: bool = False, torch_threads: int | None = None,
    torch_device: str = "auto", matmul_size: int = 3072, processes: int = 1,
    progress: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
  """Measures every case against the peer, and the matmul peak.

  Args:
    cases: from ``benchmarking.make_cases`` (models ``small_cnn``/``cnn``).
    peer: the peer program; only ``"torch"``.
    isolate: run each case in a fresh process (memory does not pile up from
      one case to the next; each process sets torch's threads itself).
    torch_threads: torch's intra-op threads; default the cores the process
      may use, as XLA.
    torch_device: where the peer computes (``resolve_torch_device``).
    matmul_size: n of the n × n float32 matmul that measures the peak, timed
      first, in this process.
    processes: measurements of each case, one after another, each in a
      fresh process under ``isolate``: on a small shared CPU one process can
      run both programs (or one) far slower than the next, for its whole
      life, which the alternation inside a process cannot even out
      (``median_row``).
    progress: called with each finished row.

  Returns:
    ``{"environment": ..., "rows": [...]}``: ``benchmarking.environment()``
    with the matmul peak and the final load average; one row per case from
    ``measure_pair`` with ``achieved_gflops``/``peak_fraction`` and
    ``torch_achieved_gflops``/``torch_peak_fraction`` added (the
    measurement with the median ratio, ``median_row``, where
    ``processes`` > 1), or an ``"error"`` for a case that cannot run.

  Raises:
    ValueError: for an unknown peer, a missing PyTorch, a case the peer
      does not have or a ``torch_device`` it cannot use (raised before
      anything runs).
  """
  if peer not in PEERS:
    raise ValueError(f"peer must be one of {PEERS}, got {peer!r}")
  checks.integer_at_least(processes, "processes", 1)
  if importlib.util.find_spec("torch") is None:
    raise ValueError('the torch peer needs PyTorch: pip install -e ".[torch]"')
  for case in cases:
    _check(case)
  resolve_torch_device(torch_device)
  env = benchmarking.environment()
  env.update(benchmarking.matmul_peak_gflops(matmul_size))

  def measure(case):
    if not isolate:
      return measure_pair(case, torch_threads=torch_threads,
                          torch_device=torch_device)
    # One pool per measurement: a spawned process that ends with it.
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
      return pool.submit(_measure_pair_isolated, case, torch_threads,
                         torch_device).result()

  rows = []
  for case in cases:
    try:
      row = median_row([measure(case) for _ in range(processes)])
    except ValueError as e:
      row = {**dataclasses.asdict(case), "method": case.method,
             "error": str(e)}
    benchmarking.add_peak_fractions(
        [row], env["matmul_peak_gflops"],
        ("samples_per_s", "torch_samples_per_s"))
    rows.append(row)
    if progress is not None:
      progress(row)
  env["load_average_end"] = benchmarking.load_average()
  return {"environment": env, "rows": rows}


def median_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Of several measurements of one case, the one with the median ratio.

  One measurement's figures stay together (its samples/s, PyTorch's and
  their ratio come from one process); for an even count the lower of the
  two middle ratios counts. The row gets every measurement's ratio and
  samples/s as ``ratio_all``, ``samples_per_s_all`` and
  ``torch_samples_per_s_all`` (in the order measured).

  Args:
    rows: ``measure_pair`` results of one case, at least one.

  Returns:
    A copy of the median row with the three lists added.
  """
  if not rows:
    raise ValueError("rows must hold at least one measurement")
  ranked = sorted(rows, key=lambda r: r["ratio"])
  row = dict(ranked[(len(ranked) - 1) // 2])
  for key in ("ratio", "samples_per_s", "torch_samples_per_s"):
    row[key + "_all"] = [r[key] for r in rows]
  return row


def _ratio_range(row: dict[str, Any]) -> str:
  """"  ratios a-b over n processes" where a row holds several."""
  ratios = row.get("ratio_all") or []
  if len(ratios) < 2:
    return ""
  return (f"  ratios {min(ratios):.2f}-{max(ratios):.2f} over"
          f" {len(ratios)} processes")


def format_table(result: dict[str, Any]) -> str:
  """The rows of ``run_peer_benchmark`` as a plain-text table."""
  fmt = benchmarking.fmt
  percent = lambda f: None if f is None else 100 * f
  header = (f"{benchmarking.CASE_HEADER} {'sim smp/s':>10}"
            f" {'torch smp/s':>11}"
            f" {'ratio':>6} {'MFLOP/smp':>9} {'sim %pk':>7}"
            f" {'torch %pk':>9} {'compile s':>9}  load avg (1, 5, 15 min)")
  lines = [header, "-" * len(header)]
  for r in result["rows"]:
    prefix = benchmarking.case_columns(r)
    if "error" in r:
      lines.append(f"{prefix}  not run: {r['error']}")
      continue
    flops = r.get("flops_per_sample")
    lines.append(
        f"{prefix} {fmt(r['samples_per_s'], '10,.0f')}"
        f" {fmt(r['torch_samples_per_s'], '11,.0f')}"
        f" {fmt(r['ratio'], '6.2f')}"
        f" {fmt(None if flops is None else flops / 1e6, '9.2f')}"
        f" {fmt(percent(r.get('peak_fraction')), '7.1f')}"
        f" {fmt(percent(r.get('torch_peak_fraction')), '9.1f')}"
        f" {fmt(r['compile_s'], '9.2f')}  {r['load_average_start']}"
        + _ratio_range(r))
  lines.append(benchmarking.format_environment(result["environment"]))
  devices = sorted({f"{r['torch_device']} (TF32 matmuls"
                    f" {'on' if r['torch_tf32_matmul'] else 'off'})"
                    for r in result["rows"] if "torch_device" in r})
  # The convolution formulation, like XLA_FLAGS in the line above, makes
  # the simulator's row another program.
  conv = sorted({r["conv_impl"] for r in result["rows"] if "conv_impl" in r})
  seeds = sorted({r["seed_execution_resolved"] for r in result["rows"]
                  if "seed_execution_resolved" in r})
  parts = sorted({r.get("micro_batches", 1) for r in result["rows"]
                  if "conv_impl" in r})
  if conv:
    lines.append(f"simulator conv_impl: {', '.join(conv)}"
                 + (f"; seed_execution: {', '.join(seeds)}" if seeds
                    else "")
                 + (f"; micro_batches: {', '.join(map(str, parts))}"
                    if parts != [1] else ""))
  direct = [f"{r['model']} {r['method']} k={r['num_workers']}"
            f" {r['torch_flops_per_sample'] / 1e6:.2f}"
            for r in result["rows"]
            if r.get("torch_flops_per_sample") not in (
                None, r.get("flops_per_sample"))]
  if direct:
    lines.append("torch %pk from a direct convolution's MFLOP/smp (the"
                 " simulator's do fewer): " + "; ".join(direct))
  if devices:
    lines.append(f"PyTorch on {', '.join(devices)}")
  r = next((r for r in result["rows"] if "torch_version" in r), None)
  if r is not None:
    lines.append(f"torch {r['torch_version']}, {r['torch_threads']}"
                 f" thread(s), oneDNN {'on' if r['torch_mkldnn'] else 'off'};"
                 " ratio = simulator samples/s / PyTorch samples/s")
  return "\n".join(lines)
