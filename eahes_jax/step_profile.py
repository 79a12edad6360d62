"""Where one local step's time goes: XLA's per-operation profile.

``profile_steps`` jits ``steps`` local steps of one model, as a ``lax.scan``
over ``steps`` random minibatches (a gradient step for the SGD family, a Hutchinson step for AdaHessian, each
followed by a plain parameter update), runs it under ``jax.profiler.trace``
and sums the trace's events per name. XLA's CPU runtime records every
fusion, dot, concatenate or scatter of the compiled step as one event (the
binary ``experiments.profile_step`` also sets ``TRACE_FLAG``, which asks for
it explicitly), so the table says which of them costs what; the binary's
``--dump_hlo`` (XLA's ``--xla_dump_to``) shows what each one is.

This is how the README's "where the time goes" figures were found (the
max-pooling rewrite in ``models.max_pool2``, for one).
"""

import collections
import glob
import gzip
import json
import os
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax

from eahes_jax import checks
from eahes_jax import models
from eahes_jax.hessian import hutchinson_diag

FAMILIES = ("sgd", "adahessian")
TRACE_FLAG = "--xla_cpu_enable_xprof_traceme=true"
# Events that wrap the step rather than being one of its operations: the
# runtime's executor, the Python frames JAX's profiler records ("$..."), the
# jitted call itself and the scan's loop.
_WRAPPERS = ("ThunkExecutor", "PjitFunction", "while")


def _is_operation(name: str) -> bool:
  return not name.startswith("$") and not name.startswith(_WRAPPERS)


def _trace_events(trace_dir: str) -> list[dict[str, Any]]:
  files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"),
                    recursive=True)
  if not files:
    raise RuntimeError(f"jax.profiler wrote no trace under {trace_dir}")
  with gzip.open(max(files, key=os.path.getmtime)) as f:
    trace = json.load(f)
  return trace["traceEvents"] if isinstance(trace, dict) else trace


def profile_steps(model_name: str, family: str = "sgd", batch_size: int = 64,
                  steps: int = 20, *, conv_impl: str = "im2col",
                  trace_dir: str | None = None, seed: int = 0
                  ) -> dict[str, Any]:
  """Profiles ``steps`` jitted local steps of one model.

  Args:
    model_name: a name of ``models.MODELS``.
    family: ``"sgd"`` (one gradient step) or ``"adahessian"`` (one
      Hutchinson step: loss, gradient and Hz in one forward-over-reverse
      pass, docs/algorithms.md §1).
    batch_size: images per step.
    steps: steps of the profiled call (a ``lax.scan``).
    conv_impl: the CNNs' convolution formulation.
    trace_dir: where ``jax.profiler`` writes its trace (default: a temporary
      folder, removed afterwards).
    seed: seed of parameters, data and probes.

  Returns:
    A dict with the settings, ``wall_ms_per_step`` (the profiled call's wall
    time over ``steps``) and ``operations``: one dict per event name, most
    expensive first, with ``name``, ``us_per_step`` (summed duration over
    ``steps``) and ``calls_per_step`` (events of that name over ``steps``;
    operations of nested computations can share a name).

  Raises:
    checks.ArgumentError: for a family outside ``FAMILIES`` or a count below 1.
  """
  checks.one_of(family, "family", FAMILIES)
  checks.count(batch_size, "batch_size", 1)
  checks.count(steps, "steps", 1)
  kwargs = {} if model_name == "mlp" else {"conv_impl": conv_impl}
  model = models.get_model(model_name, **kwargs)
  k_params, k_x, k_y, k_run = jax.random.split(jax.random.key(seed), 4)
  params = models.init_params(model, k_params)
  # A new minibatch every step, as in training: with one fixed batch XLA
  # would compute anything that depends on the images alone (conv1's im2col
  # patches) once, outside the steps, and the profile would miss it.
  xs = jax.random.normal(k_x, (steps, batch_size) + models.INPUT_SHAPE)
  ys = jax.random.randint(k_y, (steps, batch_size), 0, models.NUM_CLASSES)

  def loss_fn(p, x, y, dropout_key):
    logits = model.apply({"params": p}, x, train=True,
                         rngs={"dropout": dropout_key})
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def run(params, key, xs, ys):
    def step(carry, batch):
      p, key = carry
      x, y = batch
      key, dropout_key, probe_key = jax.random.split(key, 3)
      if family == "sgd":
        g = jax.grad(loss_fn)(p, x, y, dropout_key)
        update = g
      else:
        _, g, hz = hutchinson_diag(lambda q: loss_fn(q, x, y, dropout_key),
                                   p, probe_key)
        update = jax.tree.map(lambda a, b: a * jnp.abs(b), g, hz)
      return (jax.tree.map(lambda a, u: a - 1e-3 * u, p, update), key), None
    return jax.lax.scan(step, (params, key), (xs, ys))[0]

  for _ in range(2):  # compile, then one call more to settle caches
    jax.block_until_ready(run(params, k_run, xs, ys))
  with tempfile.TemporaryDirectory() as tmp:
    where = trace_dir or tmp
    start = time.perf_counter()
    with jax.profiler.trace(where, create_perfetto_trace=True):
      jax.block_until_ready(run(params, k_run, xs, ys))
    wall = time.perf_counter() - start
    events = _trace_events(where)
  total, calls = collections.Counter(), collections.Counter()
  for event in events:
    if event.get("ph") == "X" and _is_operation(event.get("name", "")):
      total[event["name"]] += event.get("dur", 0)
      calls[event["name"]] += 1
  return {
      "model": model_name, "family": family, "batch_size": batch_size,
      "steps": steps, "conv_impl": kwargs.get("conv_impl"),
      "backend": jax.default_backend(),
      "wall_ms_per_step": 1e3 * wall / steps,
      "operations": [{"name": name, "us_per_step": us / steps,
                      "calls_per_step": calls[name] / steps}
                     for name, us in total.most_common()],
  }


def format_table(result: dict[str, Any], top: int = 25) -> str:
  """The ``top`` most expensive operations of a ``profile_steps`` result."""
  ops = result["operations"]
  traced = sum(op["us_per_step"] for op in ops)
  lines = [
      f"{result['model']} {result['family']} step, batch"
      f" {result['batch_size']}, {result['backend']}:"
      f" {result['wall_ms_per_step']:.2f} ms a step (wall, profiled),"
      f" {traced / 1e3:.2f} ms in XLA's operations, the costliest below",
      f"{'us/step':>10} {'share':>6} {'calls':>5}  operation"]
  for op in ops[:top]:
    share = op["us_per_step"] / traced if traced else 0.0
    lines.append(f"{op['us_per_step']:10.0f} {share:6.1%}"
                 f" {op['calls_per_step']:5.1f}  {op['name']}")
  return "\n".join(lines)
