r"""Cross-check of AdaHessian's learning dynamics against PyTorch (issue 11).

Trains the paper's small CNN (docs/algorithms.md §7) with AdaHessian (§2) on
one worker, no elastic averaging, in JAX (`eahes_jax.adahessian`,
`eahes_jax.hessian.hutchinson_diag`) and in PyTorch (an independent
implementation, `eahes_jax.torch_crosscheck`), from the same initial weights
(flax's, converted), on the same minibatches (indices drawn once with numpy)
and with the same Rademacher probes (drawn in JAX with `rademacher_like` from
the key that `hutchinson_diag` uses at that step, converted to torch's
layout). At each report step it prints the largest absolute parameter
difference and both test accuracies.

As a yardstick for float32 rounding it also trains JAX against itself with
the other convolution algorithm (`conv_impl="im2col"`, a matmul over patches
instead of XLA's convolution): the same equations summed in another order.
The torch difference should be of the order of that control, not zero;
a wrong equation or layout would show up as a difference of the order of the
learning rate within the first steps.

Usage (torch is the optional extra: pip install -e ".[torch]"):

  python -m experiments.crosscheck_torch --data_source=idx \
      --mnist_dir=/path/to/mnist
  python -m experiments.crosscheck_torch --data_source=synthetic --steps=3 \
      --report_steps=1,3    # seconds; for tests
"""

import functools
import math
import time
from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from eahes_jax import config as config_lib
from eahes_jax import data as data_lib
from eahes_jax import experiment
from eahes_jax import models
from eahes_jax.adahessian import adahessian
from eahes_jax.hessian import hutchinson_diag
from eahes_jax.hessian import rademacher_like
from experiments import cli

DATA_SOURCES = data_lib.SOURCES + ("synthetic",)


def minibatch_indices(n_train: int, steps: int, batch_size: int,
                      seed: int) -> np.ndarray:
  """Indices of every step's minibatch: epochs of numpy permutations.

  Args:
    n_train: training-set size.
    steps: number of steps.
    batch_size: images per step.
    seed: numpy seed.

  Returns:
    int array (steps, batch_size); each epoch visits every example once.
  """
  rng = np.random.default_rng(seed)
  epochs = -(-steps * batch_size // n_train)
  order = np.concatenate([rng.permutation(n_train) for _ in range(epochs)])
  return order[:steps * batch_size].reshape(steps, batch_size)


def _jax_trainer(conv_impl: str, lr: float):
  """Jitted init/step/accuracy of the JAX side for one conv implementation."""
  model = models.get_model("small_cnn", conv_impl=conv_impl)
  opt = adahessian(learning_rate=lr)

  @jax.jit
  def step(params, opt_state, x, y, key):
    def loss_fn(p):
      logits = model.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads, diag = hutchinson_diag(loss_fn, params, key)
    updates, opt_state = opt.update(grads, opt_state, params,
                                    hessian_diag=diag)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def correct(params, x, y):
    return jnp.sum(jnp.argmax(model.apply({"params": params}, x), -1) == y)

  return model, opt, step, correct


def _accuracy(correct_fn, images: np.ndarray, labels: np.ndarray,
              batch: int = 1000) -> float:
  n = sum(int(correct_fn(images[i:i + batch], labels[i:i + batch]))
          for i in range(0, len(labels), batch))
  return n / len(labels)


def _abs_diffs(a: Any, b: Any) -> list[np.ndarray]:
  """|a − b| per leaf of two pytrees of equal structure."""
  return jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda u, v: np.abs(np.asarray(u) - np.asarray(v)), a, b))


def _max_and_median(diffs: list[np.ndarray]) -> tuple[float, float]:
  """The largest |Δθ|, and the largest over tensors of a tensor's median.

  The median within each tensor, not over all parameters, so that an error
  confined to one tensor (a conv kernel's layout or spatial average: 250 of
  21,840 parameters) is not hidden by the others.
  """
  return (max(float(d.max()) for d in diffs),
          max(float(np.median(d)) for d in diffs))


def run_crosscheck(
    mnist: data_lib.MNIST,
    steps: int = 1200,
    report_steps: Sequence[int] = (100, 300, 1200),
    lr: float = 0.01,
    batch_size: int = 64,
    seed: int = 0,
    control: bool = True,
    torch_mkldnn: bool = False,
) -> list[dict[str, Any]]:
  """Trains JAX and PyTorch side by side and measures how far they drift.

  Args:
    mnist: the data (test accuracy is on all of `mnist.test_*`).
    steps: AdaHessian steps.
    report_steps: steps (1-based, <= steps) after which to report.
    lr: learning rate (the paper's 0.01); other hyperparameters are
      AdaHessian's defaults, one probe, no weight decay.
    batch_size: images per step.
    seed: seed of the initial weights, the minibatches and the probes.
    control: also train JAX with conv_impl="im2col" (the rounding yardstick).
    torch_mkldnn: let PyTorch use its oneDNN (mkldnn) CPU convolutions. Off
      by default: on MNIST's first minibatch they gave gradients and
      Hessian-diagonal estimates 2e-3 to 1e-2 (relative) away from a float64
      reference, against 3e-7 for PyTorch's native convolutions and for XLA.

  Returns:
    One dict per report step: step, max_abs_diff (largest |Δθ|) and
    median_abs_diff (largest over the 8 tensors of the median |Δθ| within a
    tensor), torch vs JAX, max_abs_diff_control and
    median_abs_diff_control (JAX im2col vs JAX xla, or None), max_abs_param
    (largest |θ| on the JAX side), loss_jax, loss_torch (the step's
    minibatch loss, before its update), test_acc_jax,
    test_acc_torch, seconds (wall time so far).

  Raises:
    ValueError: if a report step is outside [1, steps].
  """
  # pylint: disable-next=g-import-not-at-top
  import torch
  from eahes_jax import torch_crosscheck as tc  # pylint: disable=g-import-not-at-top

  report = sorted(set(int(s) for s in report_steps))
  if steps < 1 or not report or report[0] < 1 or report[-1] > steps:
    raise ValueError(
        f"report steps must lie in [1, steps={steps}], got {report_steps}")
  start = time.perf_counter()
  batches = minibatch_indices(len(mnist.train_labels), steps, batch_size, seed)
  key_init, key_probe = jax.random.split(jax.random.key(seed))

  model, opt, step_jax, correct_jax = _jax_trainer("xla", lr)
  params = models.init_params(model, key_init)
  opt_state = opt.init(params)
  sides = [[params, opt_state, step_jax, correct_jax]]
  if control:
    _, _, step_ctl, correct_ctl = _jax_trainer("im2col", lr)
    sides.append([params, opt.init(params), step_ctl, correct_ctl])
  probes_fn = jax.jit(rademacher_like)

  net = tc.TorchSmallCNN()
  tc.load_flax_params(net, params)
  torch_params = [dict(net.named_parameters())[n] for n in tc.PARAM_NAMES]
  torch_opt = tc.TorchAdaHessian(torch_params, lr=lr)

  with torch.backends.mkldnn.flags(enabled=torch_mkldnn):
    return _train_side_by_side(
        mnist, steps, report, batches, sides, probes_fn, key_probe, net,
        torch_params, torch_opt, correct_jax, control, start)


def _train_side_by_side(mnist, steps, report, batches, sides, probes_fn,
                        key_probe, net, torch_params, torch_opt, correct_jax,
                        control, start):
  """The training loop of `run_crosscheck`."""
  # pylint: disable-next=g-import-not-at-top
  import torch
  from eahes_jax import torch_crosscheck as tc  # pylint: disable=g-import-not-at-top

  test_x_torch = tc.images_to_torch(mnist.test_images)
  test_y_torch = torch.from_numpy(np.asarray(mnist.test_labels, np.int64))
  rows = []
  for t in range(1, steps + 1):
    idx = batches[t - 1]
    x, y = mnist.train_images[idx], mnist.train_labels[idx]
    # The key hutchinson_diag gets; it draws rademacher_like(key, params).
    key = jax.random.fold_in(key_probe, t)
    losses_jax = []
    for side in sides:
      side[0], side[1], loss = side[2](side[0], side[1], x, y, key)
      losses_jax.append(loss)
    z = tc.flax_to_torch(probes_fn(key, sides[0][0]))
    loss_torch = torch.nn.functional.cross_entropy(
        net(tc.images_to_torch(x)), torch.from_numpy(y.astype(np.int64)))
    grads, diag = tc.hutchinson_diag_torch(
        loss_torch, torch_params, [z[n] for n in tc.PARAM_NAMES])
    for p, g in zip(torch_params, grads):
      p.grad = g
    torch_opt.step(diag)
    if t in report:
      params = sides[0][0]
      with torch.no_grad():
        pred = torch.cat([net(test_x_torch[i:i + 1000]).argmax(-1)
                          for i in range(0, len(test_y_torch), 1000)])
      diff = _max_and_median(_abs_diffs(
          params, tc.torch_to_flax(dict(net.named_parameters()))))
      diff_ctl = (_max_and_median(_abs_diffs(params, sides[1][0]))
                  if control else (None, None))
      rows.append({
          "step": t,
          "max_abs_diff": diff[0],
          "median_abs_diff": diff[1],
          "max_abs_diff_control": diff_ctl[0],
          "median_abs_diff_control": diff_ctl[1],
          "max_abs_param": max(float(jnp.max(jnp.abs(p)))
                               for p in jax.tree_util.tree_leaves(params)),
          "loss_jax": float(losses_jax[0]),
          "loss_torch": loss_torch.item(),
          "test_acc_jax": _accuracy(
              functools.partial(correct_jax, params), mnist.test_images,
              mnist.test_labels),
          "test_acc_torch": float((pred == test_y_torch).float().mean()),
          "seconds": time.perf_counter() - start,
      })
  return rows


EXPECTATION = """\
Expected: agreement up to float32 rounding, not bit-equality. Both sides
compute in float32 (ulp of 1: 1.2e-7), but XLA and PyTorch convolve and
reduce in different orders, so gradients and Hessian-diagonal estimates agree
to about 1e-6 relative, and training amplifies such differences step by step.
AdaHessian amplifies them most where the curvature estimate |D| is near zero
while the gradient is not: there the step lr*m/(|D|+eps), with eps = 1e-4,
changes by lr*|g|*dD/eps^2 for a change dD of |D|, so a few coordinates
differ by up to ~1e-2 after a few steps while every tensor's median stays
at rounding level at first. The yardstick is the control: JAX against JAX with the other
convolution algorithm (im2col), the same equations rounded differently. Torch
vs JAX of the order of the control means the two implementations agree up to
rounding. PyTorch's oneDNN (mkldnn) CPU convolutions are off unless
--torch_mkldnn: they are less accurate in float32 (see run_crosscheck)."""


def format_report(rows: Sequence[dict[str, Any]], settings: str) -> str:
  """The table the script prints."""
  lines = [settings,
           "|Δθ|, torch vs JAX and the control (JAX conv_impl=im2col vs JAX"
           " xla): the largest, and the largest of the 8 tensors' medians",
           f"{'step':>5} {'max|Δθ| torch':>13} {'median':>9}"
           f" {'max|Δθ| ctl':>11} {'median':>9} {'max|θ|':>7}"
           f" {'loss jax':>9} {'loss torch':>10}"
           f" {'test acc jax':>12} {'test acc torch':>14} {'time s':>7}"]
  fmt = lambda v: "-" if v is None else f"{v:.2e}"
  for r in rows:
    lines.append(
        f"{r['step']:>5} {r['max_abs_diff']:>13.2e}"
        f" {r['median_abs_diff']:>9.2e}"
        f" {fmt(r['max_abs_diff_control']):>11}"
        f" {fmt(r['median_abs_diff_control']):>9}"
        f" {r['max_abs_param']:>7.3f} {r['loss_jax']:>9.4f}"
        f" {r['loss_torch']:>10.4f} {r['test_acc_jax']:>12.4f}"
        f" {r['test_acc_torch']:>14.4f} {r['seconds']:>7.1f}")
  lines.append(EXPECTATION)
  return "\n".join(lines)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this script's flags in `flag_values` (only when it runs)."""
  flags.DEFINE_integer("steps", 1200, "AdaHessian steps.",
                       flag_values=flag_values)
  flags.DEFINE_list("report_steps", ["100", "300", "1200"],
                    "Steps after which to report (each <= --steps).",
                    flag_values=flag_values)
  flags.DEFINE_float("lr", 0.01, "Learning rate (the paper's 0.01).",
                     flag_values=flag_values)
  flags.DEFINE_integer("batch_size", 64, "Images per step.",
                       flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "Seed of weights, minibatches and probes.",
                       flag_values=flag_values)
  flags.DEFINE_enum("data_source", "auto", list(DATA_SOURCES),
                    "MNIST source (eahes_jax.data.load_mnist), or 'synthetic'"
                    " (random images; for tests).", flag_values=flag_values)
  flags.DEFINE_string("mnist_dir", None,
                      "Folder of the IDX files (--data_source=idx/auto).",
                      flag_values=flag_values)
  flags.DEFINE_bool("torch_mkldnn", False,
                    "Let PyTorch use its oneDNN CPU convolutions (less"
                    " accurate in float32).", flag_values=flag_values)
  flags.DEFINE_bool("control", True,
                    "Also train JAX with conv_impl=im2col as the float32"
                    " rounding yardstick.", flag_values=flag_values)


def main(argv: Sequence[str],
         flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Loads the data, runs `run_crosscheck` and prints its report."""
  cli.binary_prologue(argv)
  fv = flag_values
  try:
    report_steps = [int(s) for s in fv.report_steps]
  except ValueError:
    cli.usage_error(
        f"--report_steps must be integers, got {','.join(fv.report_steps)!r}")
  # Checked before any data loads or compiles; JAX would take a NaN rate or
  # an empty batch without complaint, and a seed past uint32 would alias.
  if fv.steps < 1:
    cli.usage_error(f"--steps must be >= 1, got {fv.steps}")
  if fv.batch_size < 1:
    cli.usage_error(f"--batch_size must be >= 1, got {fv.batch_size}")
  if not (math.isfinite(fv.lr) and fv.lr > 0):
    cli.usage_error(f"--lr must be a number > 0, got {fv.lr}")
  if not 0 <= fv.seed < 2**32:
    cli.usage_error(f"--seed must be in [0, 2**32), got {fv.seed}")
  report_steps = [s for s in report_steps if s <= fv.steps] or [fv.steps]
  try:
    if fv.data_source == "synthetic":
      mnist = data_lib.synthetic_mnist(n_train=512, n_test=256, seed=fv.seed)
    else:
      mnist = experiment.load_data(fv.data_source, fv.mnist_dir)
  except (config_lib.ConfigError, data_lib.DataError) as e:
    cli.exit_with(e)
  try:
    # pylint: disable-next=g-import-not-at-top,unused-import
    import torch  # noqa: F401
  except ImportError:
    cli.usage_error(
        'PyTorch is missing; install the extra: pip install -e ".[torch]"')
  try:
    rows = run_crosscheck(mnist, fv.steps, report_steps, fv.lr, fv.batch_size,
                          fv.seed, control=fv.control,
                          torch_mkldnn=fv.torch_mkldnn)
  except ValueError as e:  # A report step outside [1, steps].
    cli.usage_error(str(e))
  print(format_report(rows, (
      f"small_cnn, AdaHessian lr={fv.lr}, batch {fv.batch_size}, one worker,"
      f" seed {fv.seed}, data {mnist.source}"
      f" ({len(mnist.train_labels)} train / {len(mnist.test_labels)} test),"
      f" float32; jax {jax.__version__} ({jax.default_backend()}),"
      f" torch {__import__('torch').__version__}"
      f" (oneDNN convolutions {'on' if fv.torch_mkldnn else 'off'})")))


if __name__ == "__main__":
  define_flags()
  app.run(main)
