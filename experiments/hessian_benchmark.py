r"""Cost of one Hutchinson step relative to one gradient step.

`eahes_jax.hessian.hutchinson_diag` computes loss, gradient and one
Hessian-vector product with a single forward-over-reverse pass
(docs/algorithms.md §1), which costs about two gradients in theory. This
benchmark measures the wall time of one jitted `hutchinson_diag` step over one
jitted `jax.value_and_grad` step of the same cross-entropy loss on random
MNIST-shaped inputs (median over repeats, after warm-up, with
`block_until_ready`).

Usage:

  python -m experiments.hessian_benchmark
  python -m experiments.hessian_benchmark --models=small_cnn,cnn --repeats=50
  python -m experiments.hessian_benchmark --smoke   # seconds; for tests
"""

from collections.abc import Sequence

from absl import app
from absl import flags
import jax

from eahes_jax import hessian_cost
from eahes_jax import models
from experiments import cli

def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command-line flags of this script in `flag_values`.

  Flags are defined only when the script runs (or a test asks for them), not
  on import, so that importing several experiment modules in one process
  cannot collide on common names such as --batch_size.

  Args:
    flag_values: the registry to define them in.
  """
  flags.DEFINE_list("models", ["small_cnn", "cnn"],
                    "Models (eahes_jax.models names).", flag_values=flag_values)
  flags.DEFINE_integer("batch_size", 64, "Batch size.",
                       flag_values=flag_values)
  flags.DEFINE_integer("repeats", 30, "Timed calls per function.",
                       flag_values=flag_values)
  flags.DEFINE_enum("conv_impl", "xla", list(models.CONV_IMPLS),
                    "Convolution implementation of the CNNs.",
                    flag_values=flag_values)
  flags.DEFINE_bool("smoke", False,
                    "Tiny run on 'mlp' (batch 8, 3 repeats); for tests.",
                    flag_values=flag_values)


def main(argv: Sequence[str],
         flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Runs the benchmark configured by `flag_values` and prints a table."""
  cli.binary_prologue(argv)
  fv = flag_values
  if not fv.models:  # An empty list would measure nothing and say so as 0.
    cli.usage_error("--models must not be empty")
  try:
    results = hessian_cost.run_benchmark(
        fv.models, fv.batch_size, fv.repeats, conv_impl=fv.conv_impl,
        smoke=fv.smoke)
  except ValueError as e:  # A batch size or repeats below 1.
    cli.usage_error(f"--{e}")
  print(f"backend: {jax.default_backend()}, devices: {jax.devices()}")
  print(hessian_cost.format_table(results))


if __name__ == "__main__":
  define_flags()
  app.run(main)
