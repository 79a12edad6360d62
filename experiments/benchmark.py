r"""Throughput of the simulator per method family, model, execution and k.

For each method family (SGD-based: EASGD; AdaHessian-based: EAHES) × model ×
worker-axis execution (map, vmap, sharded) × number of workers k, measures
steady-state samples/s and rounds/s, the first call's compile time, XLA's
planned program memory and the process's peak memory, and the AdaHessian/SGD
step-cost ratio; prints a table and optionally writes JSON. The method is
`eahes_jax.benchmarking` (synthetic MNIST-shaped data, no failures, the two
families of each model × execution × k timed in alternation, each group in a
fresh process).

Usage:

  python -m experiments.benchmark --json_out=bench.json   # the default grid
  python -m experiments.benchmark --models=small_cnn --executions=map,vmap \
      --workers=8 --rounds=20 --repeats=5                 # the issue's target
  python -m experiments.benchmark --smoke                 # seconds; for tests

  # On a GPU, the speed-up over a CPU run of the same cases (its JSON):
  python -m experiments.benchmark --models=small_cnn --workers=64 \
      --executions=map --json_out=cpu.json                # on the CPU
  python -m experiments.benchmark --models=small_cnn --workers=64 \
      --executions=vmap --compare_to=cpu.json             # on the GPU

  # The simulator against a sequential PyTorch program, alternating (issue 15)
  python -m experiments.benchmark --peer=torch --repeats=5 --json_out=peer.json
  python -m experiments.benchmark --peer=torch --workers=1,8,32 --repeats=5
  python -m experiments.benchmark --peer=torch --smoke    # seconds; for tests

The default grid is small_cnn and cnn × map, vmap, sharded × k in {1, 4, 8,
32}, less --skip: on CPU, cnn with vmap/sharded at k = 32 (a grouped 1.2M-
parameter CNN step over 32 workers: ~25 s per AdaHessian round and ~8 GiB
there). It took 15 minutes on an otherwise idle 2-core CPU. `--rounds`
defaults per model (mlp 20, small_cnn 10, cnn 2 rounds per timed call).
`sharded` uses every device JAX sees (one on a plain CPU: a mesh of one); a k
that is not a multiple of the device count is reported as not run. Set
XLA_FLAGS in the environment to try compiler flags; the JSON records them,
the load average (other processes skew CPU timings) and the hardware.

Every row reports the training FLOPs per sample of one local step (XLA's cost
analysis of the compiled chunk) and the fraction of a float32 matmul's
GFLOP/s, measured first in the same invocation (--matmul_size), that the
row's samples/s achieve.

`--peer=torch` (needs the `torch` extra) times the simulator and a plain
sequential PyTorch program of the same work (`eahes_jax.torch_peer`: k
workers one after another, τ steps each of SGD with momentum 0.5 or the
authors' AdaHessian, then the elastic exchange) alternately in one process
per row (A B A B ..., --repeats of each, medians), and prints one row per
model × family × k: simulator samples/s, PyTorch samples/s, their ratio, the
FLOPs per sample, each one's fraction of the matmul peak, the simulator's
first-call compile seconds and the load average when the row started. Its
defaults: small_cnn and cnn, sgd and adahessian, k = 8, the backend's
default execution (map on CPU), τ = 1, batch 64. torch gets as many threads
as XLA uses, the cores the process may run on (--torch_threads overrides).
--processes=N measures each row in N fresh processes and shows the one with
the median ratio, with the ratios' range.

The fast CPU option for small_cnn (README, "Performance"): channel-first
convolutions and XLA's YNN library left to the matmuls,

  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=individual_dot \
      python -m experiments.benchmark --peer=torch --models=small_cnn \
      --workers=1,8,32 --conv_impl=im2col_cf --processes=3

and for cnn, Winograd's 3 × 3 convolutions (no flag):

  python -m experiments.benchmark --peer=torch --models=cnn \
      --workers=1,8,32 --conv_impl=winograd --processes=3

Either with --micro_batches=2 computes each minibatch in two halves, one
after the other (README, "Micro-batches"): the fastest settings measured.
"""

import json
import os
from collections.abc import Sequence

from absl import app
from absl import flags
import jax

from eahes_jax import benchmarking
from eahes_jax import checks
from eahes_jax import config as config_lib
from eahes_jax import execution as execution_lib
from eahes_jax import peer_benchmark
from experiments import cli

# Rounds per timed call when --rounds is not given: about a second or more of
# work per call on a 2-core CPU at k = 8.
DEFAULT_ROUNDS = {"mlp": 20, "small_cnn": 10, "cnn": 2}

SMOKE_SETTINGS = {
    "models": ("mlp",), "executions": ("map", "vmap"), "workers": (1, 2),
    "rounds": 2, "repeats": 2, "batch_size": 16,
}
# --peer=torch --smoke: the paper's small CNN (the peer has no mlp).
PEER_SMOKE_SETTINGS = {
    "models": ("small_cnn",), "executions": ("auto",), "workers": (2,),
    "rounds": 2, "repeats": 2, "batch_size": 16,
}
SMOKE_MATMUL_SIZE = 256
# --peer's defaults where --workers / --executions are not given: the
# paper's setting (k = 8 on one device) and the backend's own execution.
PEER_WORKERS = (8,)
PEER_EXECUTIONS = ("auto",)


def cases_from_flags(fv: flags.FlagValues) -> list[benchmarking.Case]:
  """The benchmark's cases from the parsed flags (smoke settings win)."""
  if fv.smoke:
    s = PEER_SMOKE_SETTINGS if fv.peer else SMOKE_SETTINGS
    return benchmarking.make_cases(
        fv.methods, s["models"], s["executions"], s["workers"],
        comm_period=fv.comm_period, batch_size=s["batch_size"],
        rounds=s["rounds"], repeats=s["repeats"], conv_impl=fv.conv_impl,
        seed_execution=fv.seed_execution, micro_batches=fv.micro_batches)
  for name in ("methods", "models", "executions", "workers"):
    if not fv[name].value:  # An empty list would benchmark nothing.
      raise config_lib.ConfigError(f"{name} must not be empty", name)
  if fv.rounds is not None and fv.rounds < 1:  # 0 is not the default.
    raise config_lib.ConfigError(
        f"rounds must be an integer >= 1, got {fv.rounds}", "rounds")
  skip = fv.skip
  if skip is None:
    skip = (benchmarking.DEFAULT_CPU_SKIP
            if jax.default_backend() == "cpu" and not fv.peer else ())
  workers, executions = fv.workers, fv.executions
  if fv.peer:
    workers = workers if fv["workers"].present else PEER_WORKERS
    executions = executions if fv["executions"].present else PEER_EXECUTIONS
  cases = []
  for model in fv.models:
    cases += benchmarking.make_cases(
        fv.methods, [model], executions,
        cli.parse_numbers(workers, "workers", int),
        skip=skip, comm_period=fv.comm_period, batch_size=fv.batch_size,
        rounds=fv.rounds or DEFAULT_ROUNDS[model], repeats=fv.repeats,
        conv_impl=fv.conv_impl, seed_execution=fv.seed_execution,
        micro_batches=fv.micro_batches)
  return cases


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command-line flags of this script in `flag_values`.

  Flags are defined only when the script runs (or a test asks for them), not
  on import, so that importing several experiment modules in one process
  cannot collide on common names such as --batch_size.

  Args:
    flag_values: the registry to define them in.
  """
  fv = flag_values
  flags.DEFINE_list("methods", list(benchmarking.FAMILIES),
                    "Method families (sgd: EASGD, adahessian: EAHES) or"
                    " method names.", flag_values=fv)
  flags.DEFINE_list("models", ["small_cnn", "cnn"], "Models.", flag_values=fv)
  flags.DEFINE_list("executions", list(execution_lib.STRATEGIES),
                    "Worker-axis executions: map, vmap, sharded.",
                    flag_values=fv)
  flags.DEFINE_list("workers", [str(k) for k in benchmarking.WORKERS],
                    "Numbers of workers k.", flag_values=fv)
  flags.DEFINE_list("skip", None,
                    "model:execution:k cases to leave out (default on CPU: "
                    + ",".join(benchmarking.DEFAULT_CPU_SKIP) + "; none"
                    " elsewhere). Pass --skip= to run everything.",
                    flag_values=fv)
  flags.DEFINE_integer("comm_period", 1, "τ, local steps per round.",
                       flag_values=fv)
  flags.DEFINE_integer("batch_size", 64, "Minibatch per worker and step.",
                       flag_values=fv)
  flags.DEFINE_integer("rounds", None,
                       "Rounds per timed call (default per model: "
                       + ", ".join(f"{m} {r}" for m, r in
                                   DEFAULT_ROUNDS.items()) + ").",
                       flag_values=fv)
  flags.DEFINE_integer("repeats", 3,
                       "Timed calls after the compiling one; the median is"
                       " reported.", flag_values=fv)
  flags.DEFINE_enum("conv_impl", "auto", list(config_lib.CONV_IMPLS),
                    "Convolution formulation of the CNNs (auto: im2col on"
                    " CPU, xla elsewhere).", flag_values=fv)
  flags.DEFINE_enum("seed_execution", "auto",
                    list(config_lib.SEED_EXECUTIONS),
                    "How the simulator compiles its one seed: vmap (a stack"
                    " of one), map (without the seeds' vmap: faster on CPU,"
                    " rounds differently) or auto (map under im2col_cf and"
                    " winograd).",
                    flag_values=fv)
  flags.DEFINE_integer("micro_batches", 1,
                       "Parts each local step's minibatch is computed in, one"
                       " after another (1: at once; 2 is the fastest for cnn"
                       " under winograd on CPU; rounds differently).",
                       flag_values=fv)
  flags.DEFINE_bool("isolate", True,
                    "Run each model × execution × k in a fresh process (peak"
                    " memory per group; compiled programs do not pile up).",
                    flag_values=fv)
  flags.DEFINE_string("compare_to", None,
                      "A JSON an earlier run wrote (--json_out), e.g. on a"
                      " CPU: print each row's speed-up over the same case"
                      " there (its fastest execution).", flag_values=fv)
  flags.DEFINE_string("json_out", None, "Write the results here as JSON.",
                      flag_values=fv)
  flags.DEFINE_bool("smoke", False,
                    "Tiny run: mlp, k in {1, 2}, map and vmap, 2 rounds, in"
                    " process (with --peer: small_cnn, k = 2); for tests.",
                    flag_values=fv)
  flags.DEFINE_enum("peer", None, list(peer_benchmark.PEERS),
                    "Time the simulator against this peer program, the two"
                    " alternating (torch: a sequential PyTorch program of"
                    " the same work; needs the torch extra). Defaults then:"
                    " --workers=" + ",".join(map(str, PEER_WORKERS))
                    + ", --executions=auto.", flag_values=fv)
  flags.DEFINE_enum("torch_device", "auto", list(peer_benchmark.TORCH_DEVICES),
                    "Where the torch peer computes (auto: CUDA when JAX's"
                    " backend is a GPU and PyTorch sees one, else the CPU).",
                    flag_values=fv)
  flags.DEFINE_integer("torch_threads", None,
                       "torch's intra-op threads with --peer=torch (default:"
                       " the cores this process may use, as XLA).",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("processes", 1,
                       "With --peer: measure each row this many times, each"
                       " in a fresh process (with --isolate), and show the"
                       " one with the median ratio; the table adds the"
                       " ratios' range. One process of a small shared CPU"
                       " can run far slower than the next for its whole"
                       " life.", flag_values=fv)
  flags.DEFINE_integer("matmul_size", 3072,
                       "n of the n x n float32 matmul that measures the"
                       " machine's peak GFLOP/s.", lower_bound=1,
                       flag_values=fv)


# Flags that only the peer benchmark (--peer) reads.
PEER_ONLY_FLAGS = ("torch_device", "torch_threads", "processes")


def read_baseline(path: str) -> dict:
  """The result JSON that --compare_to names; ValueError if it is none."""
  try:
    with open(path) as f:
      baseline = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"--compare_to={path} cannot be read: {e}") from None
  fields = ("method", "model", "execution", "num_workers", "comm_period",
            "batch_size", "samples_per_s")
  if (not isinstance(baseline, dict)
      or not isinstance(baseline.get("rows"), list)
      or not isinstance(baseline.get("environment"), dict)
      or not all(isinstance(r, dict) and ("error" in r or all(
          name in r for name in fields)) for r in baseline["rows"])):
    raise ValueError(f"--compare_to={path} is not a result that --json_out"
                     " wrote (rows of cases, and an environment)")
  return baseline


def main(argv: Sequence[str],
         flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Runs the benchmark configured by `flag_values`; prints and saves it."""
  cli.binary_prologue(argv)
  fv = flag_values
  # Isolated groups run in child processes beside this one, which holds the
  # matmul peak's buffers on the same device: under XLA's default (75 % of a
  # GPU's memory preallocated per process) each child's allocation fails and
  # is retried smaller, logging an error each time. Set before any JAX call.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  # The peer's flags do nothing without a peer: a run that names one
  # without --peer would otherwise measure something else than was asked.
  ignored = [f"--{name}" for name in PEER_ONLY_FLAGS if fv[name].present]
  if ignored and not fv.peer:
    cli.usage_error(f"{', '.join(ignored)} only apply with --peer")
  try:
    cases = cases_from_flags(fv)
    if fv.json_out:  # Before the benchmark, not after it.
      cli.check_output_file(fv.json_out, "json_out")
    baseline = read_baseline(fv.compare_to) if fv.compare_to else None
  except config_lib.ConfigError as e:
    cli.exit_with(e)
  except (ValueError, KeyError) as e:
    cli.usage_error(str(e))

  def progress(row):
    if "error" in row:
      print(f"{row['method']} {row['model']} {row['execution']}"
            f" k={row['num_workers']}: not run: {row['error']}", flush=True)
    else:
      print(f"{row['method']} {row['model']} {row['execution']}"
            f" k={row['num_workers']}: {row['samples_per_s']:,.0f} samples/s,"
            f" compile {row['compile_s']:.1f} s", flush=True)

  def peer_progress(row):
    if "error" in row:
      progress(row)
    else:
      print(f"{row['method']} {row['model']} {row['execution']}"
            f" k={row['num_workers']}: simulator {row['samples_per_s']:,.0f},"
            f" torch {row['torch_samples_per_s']:,.0f} samples/s, ratio"
            f" {row['ratio']:.2f}", flush=True)

  matmul_size = SMOKE_MATMUL_SIZE if fv.smoke else fv.matmul_size
  isolate = fv.isolate and not fv.smoke
  if fv.peer:
    try:
      result = peer_benchmark.run_peer_benchmark(
          cases, peer=fv.peer, isolate=isolate,
          torch_threads=fv.torch_threads, torch_device=fv.torch_device,
          matmul_size=matmul_size, processes=fv.processes,
          progress=peer_progress)
    except checks.ArgumentError as e:  # The argument is the flag's name.
      cli.usage_error(f"--{e}")
    except ValueError as e:
      cli.usage_error(cli.flag_text(str(e)))
    print(peer_benchmark.format_table(result))
  else:
    result = benchmarking.run_benchmark(
        cases, isolate=isolate, progress=progress, matmul_size=matmul_size)
    print(benchmarking.format_table(result))
  if baseline is not None:
    benchmarking.add_speedups(result["rows"], baseline)
    result["environment"]["baseline_environment"] = baseline["environment"]
    print(benchmarking.format_speedups(result))
  if fv.json_out:
    with open(fv.json_out, "w") as f:
      json.dump(result, f, indent=2)
    print(f"wrote {fv.json_out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
