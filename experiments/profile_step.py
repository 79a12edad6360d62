r"""Where one local step's time goes: XLA's per-operation profile.

Jits a scan of local steps of one model (a gradient step, or a Hutchinson
step for the AdaHessian family), runs it under `jax.profiler.trace` with
XLA's CPU runtime tracing every operation, and prints the operations that
cost the most, per step (`eahes_jax.step_profile`). `--dump_hlo=DIR` also
writes XLA's optimized HLO, where each operation's name says what it is.

Usage:

  python -m experiments.profile_step --model=small_cnn --family=sgd
  taskset -c 0 python -m experiments.profile_step --model=cnn \
      --family=adahessian --top=15 --dump_hlo=/tmp/hlo   # one core
"""

import os
import sys

# XLA reads its flags when the backend starts, so they are set before JAX is
# imported: the operation tracing this binary is about, and --dump_hlo's
# --xla_dump_to (read from argv here, as flags are parsed only in main).
def _dump_dirs(argv: list[str]) -> list[str]:
  """--dump_hlo's values in argv, as absl reads them: --dump_hlo=DIR or
  --dump_hlo DIR."""
  dirs = []
  for i, arg in enumerate(argv):
    if arg.startswith("--dump_hlo="):
      dirs.append(arg.split("=", 1)[1])
    elif arg == "--dump_hlo" and i + 1 < len(argv):
      dirs.append(argv[i + 1])
  return dirs


_EXTRA = ["--xla_cpu_enable_xprof_traceme=true"] + [  # step_profile.TRACE_FLAG
    "--xla_dump_to=" + d for d in _dump_dirs(sys.argv[1:])[-1:]]
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", "")] + _EXTRA).strip()

from collections.abc import Sequence  # pylint: disable=g-import-not-at-top

from absl import app
from absl import flags

from eahes_jax import checks
from eahes_jax import models
from eahes_jax import step_profile
from experiments import cli

flags.DEFINE_enum("model", "small_cnn", sorted(models.MODELS), "Model.")
flags.DEFINE_enum("family", "sgd", list(step_profile.FAMILIES),
                  "sgd: a gradient step; adahessian: a Hutchinson step.")
flags.DEFINE_integer("batch_size", 64, "Images per step.")
flags.DEFINE_integer("steps", 20, "Steps of the profiled call.")
flags.DEFINE_enum("conv_impl", "im2col", list(models.CONV_IMPLS),
                  "Convolution formulation of the CNNs.")
flags.DEFINE_integer("top", 25, "Operations to print.")
flags.DEFINE_string("trace_dir", None,
                    "Keep jax.profiler's trace here (for TensorBoard or"
                    " Perfetto); default: a temporary folder.")
flags.DEFINE_string("dump_hlo", None,
                    "Write XLA's HLO (--xla_dump_to) to this folder.")
FLAGS = flags.FLAGS


def main(argv: Sequence[str]) -> None:
  cli.binary_prologue(argv)
  if FLAGS.top < 1:
    cli.usage_error(f"--top must be >= 1, got {FLAGS.top}")
  try:
    result = step_profile.profile_steps(
        FLAGS.model, FLAGS.family, FLAGS.batch_size, FLAGS.steps,
        conv_impl=FLAGS.conv_impl, trace_dir=FLAGS.trace_dir)
  except checks.ArgumentError as e:
    cli.usage_error(cli.flag_text(str(e)))
  print(step_profile.format_table(result, FLAGS.top))


if __name__ == "__main__":
  app.run(main)
