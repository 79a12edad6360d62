"""AdaHessian (Yao et al., AAAI 2021) in optax style (docs/algorithms.md §2).

AdaHessian is Adam with the second moment of the gradient replaced by the
second moment of a (spatially averaged) Hutchinson estimate of the Hessian
diagonal (paper §IV). The estimate is not computed here: compute it with
:func:`eahes_jax.hessian.hutchinson_diag`, which returns loss, gradient and
diagonal from one forward-over-reverse pass, and pass it to ``update`` as the
keyword argument ``hessian_diag``::

  opt = adahessian(learning_rate=0.01)
  state = opt.init(params)
  loss, grads, diag = hutchinson_diag(loss_fn, params, key)
  updates, state = opt.update(grads, state, params, hessian_diag=diag)
  params = optax.apply_updates(params, updates)

Because ``update`` takes the diagonal as an extra keyword argument of a
``GradientTransformationExtraArgs``, the transformation composes in
``optax.chain``, which forwards extra arguments to every member that accepts
them (e.g. after ``optax.clip_by_global_norm``, which clips only the gradient).
"""

from typing import Any, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import optax

from eahes_jax import checks

__all__ = [
    "ScaleByAdaHessianState",
    "adahessian",
    "scale_by_adahessian",
    "spatial_average_abs",
]

_MISSING_DIAG_MSG = (
    "scale_by_adahessian.update needs the Hessian-diagonal estimate as the"
    " keyword argument hessian_diag=..., a pytree with the structure of the"
    " updates. Compute it with eahes_jax.hessian.hutchinson_diag(loss_fn,"
    " params, key), which also returns the loss and gradient, and call"
    " update(grads, state, params, hessian_diag=hessian_diag)."
)


class ScaleByAdaHessianState(NamedTuple):
  """State of :func:`scale_by_adahessian`.

  Attributes:
    count: number of updates applied so far (int32 scalar), the step t of the
      bias corrections.
    mu: EMA of the gradient (first moment m), like the params.
    nu: EMA of the squared, spatially averaged Hessian diagonal (second
      moment v), like the params.
  """
  count: chex.Array
  mu: optax.Updates
  nu: optax.Updates


def _check_in_range(name: str, value: Any, low: float, high: float,
                    low_closed: bool, high_closed: bool) -> None:
  """Raises ValueError unless ``value`` lies in the interval; NaN fails too."""
  try:
    v = float(value)
  except TypeError:
    # A traced hyperparameter (e.g. under optax.inject_hyperparams inside jit)
    # cannot be checked here; it was checked where it was concrete.
    return
  above = v >= low if low_closed else v > low
  below = v <= high if high_closed else v < high
  if not (above and below):
    interval = (("[" if low_closed else "(") + f"{low:g}, {high:g}"
                + ("]" if high_closed else ")"))
    raise checks.ArgumentError(name, f"in {interval}", value)


def _check_nonnegative(name: str, value: Any) -> None:
  _check_in_range(name, value, 0.0, float("inf"), True, False)


def spatial_average_abs(d: chex.Array) -> chex.Array:
  """Takes |D| and averages it over the spatial axes of a flax conv kernel.

  Step 1 of docs/algorithms.md §2. Flax convolution kernels are laid out as
  ``kernel_size + (in_features, out_features)``, so every axis but the last two
  is spatial: axes (0, 1) of a 2-D (HWIO) kernel, axis 0 of a 1-D (WIO) kernel
  and axes (0, 1, 2) of a 3-D kernel. The mean is broadcast back to the full
  shape. Leaves with ``ndim <= 2`` (biases, dense kernels, scales) are not
  averaged, as in the authors' reference. Parameters with three or more axes
  that are not convolution kernels (e.g. ``nn.DenseGeneral`` kernels) would be
  averaged too; use ``spatial_average=False`` for such models.

  Args:
    d: one leaf of the Hessian-diagonal estimate.

  Returns:
    ``|d|``, averaged over the spatial axes when ``d.ndim >= 3``.
  """
  d = jnp.abs(d)
  if d.ndim <= 2:
    return d
  spatial_axes = tuple(range(d.ndim - 2))
  return jnp.broadcast_to(
      jnp.mean(d, axis=spatial_axes, keepdims=True), d.shape)


def _check_hessian_diag(updates: optax.Updates,
                        hessian_diag: Optional[optax.Updates]) -> None:
  """Raises a ValueError if hessian_diag is missing or is not like updates."""
  if hessian_diag is None:
    raise ValueError(_MISSING_DIAG_MSG)
  updates_struct = jax.tree_util.tree_structure(updates)
  diag_struct = jax.tree_util.tree_structure(hessian_diag)
  if updates_struct != diag_struct:
    raise ValueError(
        "hessian_diag must have the same tree structure as the updates; got"
        f" hessian_diag structure {diag_struct} and updates structure"
        f" {updates_struct}.")
  for path_and_u, d in zip(
      jax.tree_util.tree_leaves_with_path(updates),
      jax.tree_util.tree_leaves(hessian_diag)):
    path, u = path_and_u
    if jnp.shape(u) != jnp.shape(d):
      raise ValueError(
          "hessian_diag must have the same leaf shapes as the updates; at"
          f" {jax.tree_util.keystr(path)} hessian_diag has shape"
          f" {jnp.shape(d)} and updates have shape {jnp.shape(u)}.")


def scale_by_adahessian(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-4,
    hessian_power: float = 1.0,
    spatial_average: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """Rescales gradients by AdaHessian's curvature-based preconditioner.

  Implements steps 1-4 of docs/algorithms.md §2 for each leaf, with gradient g
  and Hessian-diagonal estimate D at step t = 1, 2, ...::

    D̄ = spatial_average(|D|)                      (step 1)
    m ← b1·m + (1 − b1)·g,  v ← b2·v + (1 − b2)·D̄²   (step 2)
    bc1 = 1 − b1^t,  bc2 = 1 − b2^t                (step 3)
    direction = (m / bc1) / ((sqrt(v / bc2))^k + eps)   (step 4)

  The returned direction has the sign of the gradient; chain with
  ``optax.scale_by_learning_rate`` (as :func:`adahessian` does) to descend.
  ``eps`` is added outside the Hessian power k, as the authors do.

  The denominator is floored at the smallest positive normal number of its
  dtype. For ``eps`` above that floor this changes nothing; for ``eps == 0`` it
  keeps coordinates whose gradient and curvature estimates are both exactly
  zero at a zero update instead of 0/0 = NaN. (With ``eps == 0`` a nonzero
  gradient over an exactly zero curvature estimate still gives a very large
  step; that is what ``eps == 0`` asks for, and why the default is 1e-4.)

  Args:
    b1: decay rate of the gradient EMA, in [0, 1).
    b2: decay rate of the squared Hessian-diagonal EMA, in [0, 1).
    eps: term added to the denominator, >= 0 (authors' default 1e-4).
    hessian_power: exponent k of the denominator, in (0, 1].
    spatial_average: whether to average |D| over the spatial axes of
      convolution kernels (see :func:`spatial_average_abs`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose
    ``update(updates, state, params=None, *, hessian_diag, **extra_args)``
    requires ``hessian_diag``, a pytree like ``updates``.

  Raises:
    ValueError: if an argument is outside its range.
  """
  _check_in_range("b1", b1, 0.0, 1.0, True, False)
  _check_in_range("b2", b2, 0.0, 1.0, True, False)
  _check_nonnegative("eps", eps)
  _check_in_range("hessian_power", hessian_power, 0.0, 1.0, False, True)
  power_is_one = isinstance(hessian_power, (int, float)) and hessian_power == 1

  def init_fn(params: optax.Params) -> ScaleByAdaHessianState:
    return ScaleByAdaHessianState(
        count=jnp.zeros([], jnp.int32),
        mu=jax.tree_util.tree_map(jnp.zeros_like, params),
        nu=jax.tree_util.tree_map(jnp.zeros_like, params),
    )

  def update_fn(
      updates: optax.Updates,
      state: ScaleByAdaHessianState,
      params: Optional[optax.Params] = None,
      *,
      hessian_diag: Optional[optax.Updates] = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, ScaleByAdaHessianState]:
    del params, extra_args
    _check_hessian_diag(updates, hessian_diag)

    if spatial_average:
      d_bar = jax.tree_util.tree_map(spatial_average_abs, hessian_diag)
    else:
      d_bar = jax.tree_util.tree_map(jnp.abs, hessian_diag)

    mu = jax.tree_util.tree_map(
        lambda m, g: (b1 * m + (1.0 - b1) * g).astype(m.dtype),
        state.mu, updates)
    nu = jax.tree_util.tree_map(
        lambda v, d: (b2 * v + (1.0 - b2) * jnp.square(d)).astype(v.dtype),
        state.nu, d_bar)

    count = optax.safe_int32_increment(state.count)
    bc1 = 1.0 - jnp.asarray(b1, jnp.float32) ** count
    bc2 = 1.0 - jnp.asarray(b2, jnp.float32) ** count

    def direction(m, v, g):
      root = jnp.sqrt(v / bc2)
      denom = root if power_is_one else root ** hessian_power
      denom = denom + eps
      denom = jnp.maximum(denom, jnp.finfo(denom.dtype).tiny)
      return ((m / bc1) / denom).astype(g.dtype)

    new_updates = jax.tree_util.tree_map(direction, mu, nu, updates)
    return new_updates, ScaleByAdaHessianState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adahessian(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-4,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    hessian_power: float = 1.0,
    spatial_average: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """The AdaHessian optimizer (docs/algorithms.md §2, step 5).

  ``update = −lr · ((m / bc1) / denom + wd · θ)``: the preconditioned direction
  of :func:`scale_by_adahessian`, plus decoupled weight decay as in AdamW,
  scaled by the negative learning rate. Defaults are the authors' (the paper
  uses ``learning_rate=0.01`` and one Hutchinson probe).

  Args:
    learning_rate: a float or an optax schedule of the step count.
    b1: decay rate of the gradient EMA, in [0, 1).
    b2: decay rate of the squared Hessian-diagonal EMA, in [0, 1).
    eps: term added to the denominator, >= 0.
    weight_decay: decoupled weight-decay coefficient (float >= 0 or schedule).
      When it is not the constant 0, ``update`` needs ``params``.
    hessian_power: exponent k of the denominator, in (0, 1].
    spatial_average: whether to average |D| over conv kernels' spatial axes.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; call
    ``update(grads, state, params, hessian_diag=diag)``.

  Raises:
    ValueError: if an argument is outside its range.
  """
  return _decayed_and_scaled(
      scale_by_adahessian(
          b1=b1, b2=b2, eps=eps, hessian_power=hessian_power,
          spatial_average=spatial_average),
      learning_rate, weight_decay)


def _decayed_and_scaled(direction, learning_rate, weight_decay):
  """``direction``, then decoupled weight decay, then −lr: the shared tail
  of AdaHessian and its Adam control (which checks the two rates)."""
  if not callable(learning_rate):
    _check_nonnegative("learning_rate", learning_rate)
  if not callable(weight_decay):
    _check_nonnegative("weight_decay", weight_decay)
  transforms = [direction]
  # A constant zero decay is left out so that params stay optional.
  if callable(weight_decay) or not (
      isinstance(weight_decay, (int, float)) and weight_decay == 0):
    transforms.append(optax.add_decayed_weights(weight_decay))
  transforms.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*transforms)


def elastic_adam(
    learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
    eps: float = 1e-4, weight_decay: optax.ScalarOrSchedule = 0.0
) -> optax.GradientTransformation:
  """AdaHessian's chain with Adam's second moment: the adaptivity control.

  ``update = −lr · ((m / bc1) / (√(v / bc2) + eps) + wd · θ)`` with v the EMA
  of g² where :func:`adahessian` has the EMA of D² (Hutchinson's diagonal),
  and the same b1, b2, eps and decoupled decay, so the two differ only in
  whether the denominator holds curvature or gradient magnitude. Used by the
  method EAADAM-O to ask whether AdaHessian's gains are second-order or
  merely adaptive.

  Args:
    learning_rate: a float or an optax schedule of the step count.
    b1: decay rate of the gradient EMA, in [0, 1).
    b2: decay rate of the squared-gradient EMA, in [0, 1).
    eps: term added to the denominator, >= 0 (AdaHessian's default).
    weight_decay: decoupled weight-decay coefficient (float >= 0 or schedule).

  Returns:
    An ``optax.GradientTransformation``.
  """
  return _decayed_and_scaled(optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                             learning_rate, weight_decay)
