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

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import app
from absl import flags
import jax
import optax

from eahes_jax import experiment
from eahes_jax import models
from eahes_jax.hessian import hutchinson_diag

SMOKE_SETTINGS = {"model_names": ("mlp",), "batch_size": 8, "repeats": 3}


def _time_ms(fn: Callable[[], Any]) -> float:
  """Milliseconds of one call of fn, including waiting for its outputs."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return 1e3 * (time.perf_counter() - start)


def measure_hutchinson_cost(
    model_name: str,
    batch_size: int = 64,
    repeats: int = 30,
    *,
    conv_impl: str = "xla",
    seed: int = 0,
) -> dict[str, Any]:
  """Times one jitted Hutchinson step against one jitted gradient step.

  Both functions are compiled and run twice before timing; each timed call is
  followed by `block_until_ready`. The two are timed in alternation, so slow
  drifts of the machine affect both alike.

  Args:
    model_name: a name of `eahes_jax.models.MODELS`.
    batch_size: images per step.
    repeats: timed calls of each function; the median is reported.
    conv_impl: convolution implementation for the CNNs ("xla" or "im2col").
    seed: seed of parameters, data and probes.

  Returns:
    A dict with the model name, batch size, parameter count, repeats, backend,
    `grad_ms`, `hutchinson_ms` (median milliseconds per call) and `ratio`
    (hutchinson_ms / grad_ms).

  Raises:
    ValueError: if batch_size or repeats is below 1.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  kwargs = {} if model_name == "mlp" else {"conv_impl": conv_impl}
  model = models.get_model(model_name, **kwargs)
  key_params, key_x, key_y, key_dropout, key_probe = jax.random.split(
      jax.random.key(seed), 5)
  params = models.init_params(model, key_params)
  x = jax.random.normal(key_x, (batch_size,) + models.INPUT_SHAPE)
  y = jax.random.randint(key_y, (batch_size,), 0, models.NUM_CLASSES)

  def loss_fn(p, x, y, dropout_key):
    logits = model.apply({"params": p}, x, train=True,
                         rngs={"dropout": dropout_key})
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  grad_step = jax.jit(jax.value_and_grad(loss_fn))

  @jax.jit
  def hutchinson_step(p, x, y, dropout_key, probe_key):
    return hutchinson_diag(
        functools.partial(loss_fn, x=x, y=y, dropout_key=dropout_key), p,
        probe_key)

  run_grad = lambda: grad_step(params, x, y, key_dropout)
  run_hutchinson = lambda: hutchinson_step(params, x, y, key_dropout,
                                           key_probe)
  for _ in range(2):  # compile, then one more to settle caches
    jax.block_until_ready(run_grad())
    jax.block_until_ready(run_hutchinson())

  grad_times, hutchinson_times = [], []
  for _ in range(repeats):
    grad_times.append(_time_ms(run_grad))
    hutchinson_times.append(_time_ms(run_hutchinson))
  grad_ms = statistics.median(grad_times)
  hutchinson_ms = statistics.median(hutchinson_times)
  return {
      "model": model_name,
      "batch_size": batch_size,
      "num_params": models.param_count(params),
      "repeats": repeats,
      "backend": jax.default_backend(),
      "conv_impl": None if model_name == "mlp" else conv_impl,
      "grad_ms": grad_ms,
      "hutchinson_ms": hutchinson_ms,
      "ratio": hutchinson_ms / grad_ms,
  }


def run_benchmark(
    model_names: Sequence[str] = ("small_cnn", "cnn"),
    batch_size: int = 64,
    repeats: int = 30,
    *,
    conv_impl: str = "xla",
    smoke: bool = False,
) -> list[dict[str, Any]]:
  """Runs `measure_hutchinson_cost` for each model.

  Args:
    model_names: names of `eahes_jax.models.MODELS`.
    batch_size: images per step.
    repeats: timed calls per function.
    conv_impl: convolution implementation of the CNNs.
    smoke: if True, ignore the other sizes and use `SMOKE_SETTINGS`.

  Returns:
    One result dict per model, in order.
  """
  if smoke:
    model_names = SMOKE_SETTINGS["model_names"]
    batch_size = SMOKE_SETTINGS["batch_size"]
    repeats = SMOKE_SETTINGS["repeats"]
  return [
      measure_hutchinson_cost(name, batch_size, repeats, conv_impl=conv_impl)
      for name in model_names
  ]


def format_table(results: Sequence[dict[str, Any]]) -> str:
  """A plain-text table of (model, grad ms, hutchinson ms, ratio)."""
  header = (f"{'model':<10} {'params':>10} {'batch':>5} {'grad ms':>9}"
            f" {'hutchinson ms':>14} {'ratio':>6}")
  lines = [header, "-" * len(header)]
  for r in results:
    lines.append(
        f"{r['model']:<10} {r['num_params']:>10,} {r['batch_size']:>5}"
        f" {r['grad_ms']:>9.2f} {r['hutchinson_ms']:>14.2f}"
        f" {r['ratio']:>6.2f}")
  return "\n".join(lines)


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
  if len(argv) > 1:
    experiment.usage_error(f"unexpected arguments: {argv[1:]}")
  fv = flag_values
  if not fv.models:  # An empty list would measure nothing and say so as 0.
    experiment.usage_error("--models must not be empty")
  try:
    results = run_benchmark(
        fv.models, fv.batch_size, fv.repeats, conv_impl=fv.conv_impl,
        smoke=fv.smoke)
  except ValueError as e:  # A batch size or repeats below 1.
    experiment.usage_error(f"--{e}")
  print(f"backend: {jax.default_backend()}, devices: {jax.devices()}")
  print(format_table(results))


if __name__ == "__main__":
  define_flags()
  app.run(main)
