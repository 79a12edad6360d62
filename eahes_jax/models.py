"""MNIST classifiers in flax.linen: an MLP and two CNNs.

Every model maps float32 images of shape (B, 28, 28, 1) to logits of shape
(B, 10) and is called as

    model.apply({"params": params}, x, train=False, rngs={"dropout": key})

Only `CNN` uses dropout; the other models accept `train` and ignore it.

The simulator vmaps these models over a leading worker axis of stacked
parameters. Vmapping a convolution over per-worker kernels turns it into a
grouped convolution, which XLA's CPU backend runs slowly. The CNNs therefore
take `conv_impl="im2col"`, under which a convolution is an explicit patch
extraction (shifted slices) followed by a matmul, so that vmap over workers
becomes a batched matmul. `conv_impl="im2col_cf"` is the same matmul with
the activations held channel-first, (C, B, H, W), between the input and the
dense layers: patches become contiguous slices, a convolution's weight
gradient contracts the two operands' minor axes, and 2 × 2 pooling reduces
adjacent elements of one row. Together with XLA's YNN fusions limited to the
matmuls (``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=individual_dot``)
it is faster on XLA's CPU backend for `SmallCNN` (not alone, and not for
`CNN`), but it rounds differently, so it is an option, not the default
(README, "The fast CPU option for small_cnn"). `conv_impl="winograd"` runs
`CNN`'s 3 × 3 convolution on 32 channels by Winograd's minimal filtering
(`winograd.conv3x3`), a quarter of the multiplications; it too rounds
differently and is an option (README, "Winograd's 3 × 3 convolutions for
cnn"). All implementations share the parameter tree (`nn.Conv`'s names,
shapes and initialisers), so parameters move freely between them.
"""

from collections.abc import Callable, Sequence
import functools
import math
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from eahes_jax import winograd

NUM_CLASSES = 10
INPUT_SHAPE = (28, 28, 1)
CONV_IMPLS = ("xla", "im2col", "im2col_lax", "im2col_cf", "winograd")
# Formulations whose activations are channel-first, (C, B, H, W).
CHANNEL_FIRST_IMPLS = ("im2col_cf",)
# Formulations that round differently from "xla" and "im2col" (the options
# faster on some CPU setting, never a default).
REROUNDING_IMPLS = ("im2col_cf", "winograd")
# Formulations that do fewer FLOPs than a direct convolution (or im2col).
FEWER_FLOPS_IMPLS = ("winograd",)

# NHWC activations and HWIO kernels, as nn.Conv.
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def extract_patches(x: chex.Array, kernel_size: Sequence[int],
                    padding: str = "VALID") -> chex.Array:
  """Stride-1 image patches, features ordered (kh, kw, C) like an HWIO kernel.

  Built by concatenating kh * kw shifted slices rather than with
  `lax.conv_general_dilated_patches`, which is itself a grouped convolution
  (one group per input channel) and, with its transpose in the backward pass,
  runs about twice as slow on XLA's CPU backend. The (kh, kw, C) order keeps
  each slice's channels contiguous and lets an HWIO kernel be flattened
  without a transpose; `lax.conv_general_dilated_patches` orders features
  channel-major, (C, kh, kw), instead.

  Args:
    x: images of shape (B, H, W, C).
    kernel_size: (kh, kw).
    padding: "VALID", or "SAME" (padded as lax pads: the extra row/column of an
      even kernel goes at the high end).

  Returns:
    Patches of shape (B, H', W', kh * kw * C).
  """
  kh, kw = kernel_size
  if padding == "SAME":
    x = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2),
                    (0, 0)))
  b, h, w, c = x.shape
  ho, wo = h - kh + 1, w - kw + 1
  if kh * kw * c >= 128:
    # XLA's CPU backend never fuses a concatenation along the minor axis
    # whose result has 128 or more entries there: copying the windows out,
    # then into the patches, is what it does with any grouping.
    shifted = [x[:, i:i + ho, j:j + wo, :]
               for i in range(kh) for j in range(kw)]
    return jnp.concatenate(shifted, axis=-1)
  # Kernel rows, each a stack of its kw windows, then one concatenation of
  # the rows, so that XLA fuses the patches into one pass: see
  # extract_patches_channel_first (small_cnn's first convolution, default
  # settings: +27 % SGD samples/s).
  rows = [jnp.stack([x[:, i:i + ho, j:j + wo, :] for j in range(kw)], axis=3
                    ).reshape(b, ho, wo, kw * c) for i in range(kh)]
  return jnp.concatenate(rows, axis=-1)


def extract_patches_channel_first(x: chex.Array, kernel_size: Sequence[int],
                                  padding: str = "VALID",
                                  ones_row: bool = False) -> chex.Array:
  """Stride-1 patches of channel-first images, as the rows of a matrix.

  The channel-first counterpart of `extract_patches`: each of the kh * kw
  shifted windows is a (C, B, H', W') slice of x, and concatenating
  them on the leading axis gives the patch matrix with its features,
  (kh, kw, C) as there, on the leading axis, so a convolution is
  ``kernel.reshape(-1, O).T @ patches``.

  Args:
    x: images of shape (C, B, H, W).
    kernel_size: (kh, kw).
    padding: "VALID", or "SAME" (padded as `extract_patches` pads).
    ones_row: also append a last row of ones (the row a bias multiplies),
      in the same concatenation as the windows. Appending it to the finished
      matrix instead costs XLA's CPU backend one more copy of the whole
      matrix.

  Returns:
    Patches of shape (kh * kw * C, B * H' * W'), or (kh * kw * C + 1,
    B * H' * W') with `ones_row`.
  """
  kh, kw = kernel_size
  if padding == "SAME":
    x = jnp.pad(x, ((0, 0), (0, 0), ((kh - 1) // 2, kh // 2),
                    ((kw - 1) // 2, kw // 2)))
  c, b, h, w = x.shape
  ho, wo = h - kh + 1, w - kw + 1
  # The matrix is built as a concatenation of kernel rows, each a stack of
  # its kw windows, rather than as one concatenation of all kh * kw windows:
  # XLA's CPU backend fuses a concatenation of at most 8 operands with the
  # slices that feed it (one pass over the patch matrix), while a wider one
  # runs as a copy of every window followed by a copy into the matrix
  # (small_cnn: 2.1-2.3 -> 1.8 ms of operations a gradient step under the
  # fast option). The stack's reshape keeps XLA from flattening the two
  # levels back into one. The same values in the same layout, so the same
  # bits downstream (tested).
  rows = [jnp.stack([x[:, :, i:i + ho, j:j + wo] for j in range(kw)]
                    ).reshape(kw * c, b, ho, wo) for i in range(kh)]
  if ones_row:
    rows.append(jnp.ones((1, b, ho, wo), x.dtype))
  return jnp.concatenate(rows).reshape(kh * kw * c + int(ones_row), -1)


def _check_conv_impl(conv_impl: str) -> None:
  if conv_impl not in CONV_IMPLS:
    raise ValueError(
        f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")


class Conv2D(nn.Module):
  """Stride-1 2-D convolution with nn.Conv's parameters, five implementations.

  Attributes:
    features: number of output channels.
    kernel_size: (height, width) of the kernel.
    padding: "VALID" or "SAME".
    impl: "xla" runs `lax.conv_general_dilated`, exactly as nn.Conv does;
      "im2col" extracts patches with `extract_patches` (slices) and multiplies
      them by the flattened kernel, so that vmap over stacked kernels gives a
      batched matmul instead of a grouped convolution; "im2col_lax" is the
      same with `lax.conv_general_dilated_patches` (slower on CPU);
      "im2col_cf" is "im2col" on channel-first activations: x of shape
      (C, B, H, W) in, (features, B, H', W') out
      (`extract_patches_channel_first`); "winograd" runs 3 × 3 kernels on
      more than one input channel by Winograd's F(4 × 4, 3 × 3)
      (`winograd.conv3x3`: a quarter of the multiplications, rounding
      differently) and other convolutions as "im2col".
    precision: precision of the convolution / matmul.
    kernel_init: initialiser of the HWIO kernel (nn.Conv's default).
    bias_init: initialiser of the bias (nn.Conv's default).
  """
  features: int
  kernel_size: Sequence[int]
  padding: str = "VALID"
  impl: str = "xla"
  precision: Any = None
  kernel_init: Callable[..., chex.Array] = nn.initializers.lecun_normal()
  bias_init: Callable[..., chex.Array] = nn.initializers.zeros_init()

  def __post_init__(self):
    _check_conv_impl(self.impl)
    if self.padding not in ("VALID", "SAME"):
      raise ValueError(
          f"padding must be 'VALID' or 'SAME', got {self.padding!r}")
    if len(tuple(self.kernel_size)) != 2:
      raise ValueError(
          f"kernel_size must have 2 entries, got {self.kernel_size!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: chex.Array) -> chex.Array:
    """Convolves x of shape (B, H, W, C) and returns (B, H', W', features);
    under impl "im2col_cf", (C, B, H, W) and (features, B, H', W')."""
    kh, kw = tuple(self.kernel_size)
    channel_first = self.impl in CHANNEL_FIRST_IMPLS
    in_features = x.shape[0] if channel_first else x.shape[-1]
    kernel = self.param("kernel", self.kernel_init,
                        (kh, kw, in_features, self.features))
    bias = self.param("bias", self.bias_init, (self.features,))
    if self.impl == "xla":
      y = lax.conv_general_dilated(
          x, kernel, window_strides=(1, 1), padding=self.padding,
          dimension_numbers=_DIMENSION_NUMBERS, precision=self.precision)
    elif channel_first:
      # The bias rides in the matmul, as one more row of the kernel against
      # a row of ones: its gradient then comes out of the kernel's gradient
      # matmul instead of a separate reduction over B * H' * W', which made
      # XLA's CPU backend evaluate the incoming (pooling) gradient twice
      # (small_cnn: 4.6 -> 3.6 ms a gradient step, on the older of the
      # README's two CPUs). The ones are built with the windows (+6 % small_cnn
      # and +9 % cnn samples/s on the newer one).
      patches = extract_patches_channel_first(x, (kh, kw), self.padding,
                                              ones_row=True)
      w = kernel.reshape(kh * kw * in_features, self.features)
      w = jnp.concatenate([w, bias[None].astype(w.dtype)])
      y = jnp.matmul(w.T, patches, precision=self.precision)
      _, b, h, wd = x.shape
      if self.padding == "VALID":
        h, wd = h - kh + 1, wd - kw + 1
      return y.reshape(self.features, b, h, wd)
    elif self.impl == "winograd" and (kh, kw) == (3, 3) and in_features > 1:
      # One input channel (an image's first convolution) stays im2col: each
      # of Winograd's 36 matmuls would contract that single channel, saving
      # nothing, and its transforms cost more than a 9-column patch matrix
      # (CNN's conv1: 45.6 against 51.2 ms an AdaHessian step).
      y = winograd.conv3x3(x, kernel, self.padding, self.precision)
    elif self.impl in ("im2col", "winograd"):
      patches = extract_patches(x, (kh, kw), self.padding)
      w = kernel.reshape(kh * kw * in_features, self.features)
      y = jnp.matmul(patches, w, precision=self.precision)
    else:
      # The patch extraction only copies values, so run it at full precision:
      # a reduced-precision pass (TF32/bf16 on accelerators) would round x.
      patches = lax.conv_general_dilated_patches(
          x, filter_shape=(kh, kw), window_strides=(1, 1),
          padding=self.padding, dimension_numbers=_DIMENSION_NUMBERS,
          precision=lax.Precision.HIGHEST)
      # These patch features are channel-major, (C, kh, kw) flattened, so the
      # HWIO kernel is brought to (C, kh, kw, O) before flattening.
      w = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(
          in_features * kh * kw, self.features)
      y = jnp.matmul(patches, w, precision=self.precision)
    return y + bias


@jax.custom_jvp
def max_pool2(x: chex.Array) -> chex.Array:
  """2 × 2 max-pooling with stride 2 (VALID) of x of shape (B, H, W, C).

  Equal to ``nn.max_pool(x, (2, 2), strides=(2, 2))`` in value, gradient and
  Hessian-vector product, bit for bit, ties included, and cheaper on XLA's
  CPU backend. The value is a reshape and a max over the two window axes (a
  plain reduction, not a ``reduce_window``). The derivative routes each
  window's tangent from its *first* maximum in row-major order, as
  ``select_and_scatter`` (``nn.max_pool``'s gradient) and PyTorch's
  ``max_pool2d`` do; its transpose (the gradient) is one select over the
  input, where XLA's CPU backend lowered ``select_and_scatter`` to an
  index-tracking ``reduce_window`` and a scatter (with the forward pool,
  4.9 of 12.4 ms of a one-core ``small_cnn`` step). H and W must be even
  (the CNNs pool 24 × 24 and 8 × 8 maps).

  Args:
    x: activations of shape (B, H, W, C), H and W even.

  Returns:
    The pooled activations, of shape (B, H / 2, W / 2, C).

  Raises:
    ValueError: if x is not 4-D or H or W is odd.
  """
  _check_pool_shape(x, "(B, H, W, C)", (1, 2))
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _check_pool_shape(x: chex.Array, layout: str,
                      spatial: tuple[int, int]) -> None:
  """The pools' shape check, run by the functions and by their derivative
  rules (which reshape before the function itself is called)."""
  if x.ndim != 4 or x.shape[spatial[0]] % 2 or x.shape[spatial[1]] % 2:
    raise ValueError(f"x must have shape {layout} with H and W even, got"
                     f" {x.shape}")


def _first_max_mask(x: chex.Array) -> chex.Array:
  """One-hot of each 2 × 2 window's first maximum (row-major), x reshaped to
  (B, H / 2, 2, W / 2, 2, C)."""
  b, h, w, c = x.shape
  r = x.reshape(b, h // 2, 2, w // 2, 2, c)
  hit = r == r.max(axis=(2, 4), keepdims=True)
  members = [hit[:, :, i, :, j, :] for i in range(2) for j in range(2)]
  first, seen = [], jnp.zeros_like(members[0])
  for hit_k in members:
    first.append(hit_k & ~seen)
    seen = seen | hit_k
  first = jnp.stack(first, axis=-1).reshape(b, h // 2, w // 2, c, 2, 2)
  return jnp.transpose(first, (0, 1, 4, 2, 5, 3))


@max_pool2.defjvp
def _max_pool2_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  _check_pool_shape(x, "(B, H, W, C)", (1, 2))
  b, h, w, c = x.shape
  mask = _first_max_mask(x)
  # One member of each window is selected and three zeros are added, so the
  # tangent is the first maximum's exactly; as a mask over the whole input,
  # its transpose (the gradient) is one elementwise select, which XLA fuses
  # with what produces the cotangent.
  t = t.reshape(b, h // 2, 2, w // 2, 2, c)
  out = jnp.where(mask, t, jnp.zeros_like(t)).sum(axis=(2, 4))
  # The value through max_pool2 itself, so that a jvp of this rule (forward
  # over reverse: Hutchinson's Hz) differentiates it by this rule again and
  # not by jnp.max, whose derivative splits a tie evenly.
  return max_pool2(x), out


@jax.custom_jvp
def max_pool2_channel_first(x: chex.Array) -> chex.Array:
  """2 × 2 max-pooling with stride 2 (VALID) of channel-first x, (C, B, H, W).

  `max_pool2` for channel-first activations: the same value and the same
  derivative rule (each window's tangent comes from its first maximum in
  row-major order, as ``nn.max_pool`` and PyTorch's ``max_pool2d``), the
  window being over the last two axes. H and W must be even.

  Args:
    x: activations of shape (C, B, H, W), H and W even.

  Returns:
    The pooled activations, of shape (C, B, H / 2, W / 2).

  Raises:
    ValueError: if x is not 4-D or H or W is odd.
  """
  _check_pool_shape(x, "(C, B, H, W)", (2, 3))
  c, b, h, w = x.shape
  return x.reshape(c, b, h // 2, 2, w // 2, 2).max(axis=(3, 5))


@max_pool2_channel_first.defjvp
def _max_pool2_channel_first_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  _check_pool_shape(x, "(C, B, H, W)", (2, 3))
  c, b, h, w = x.shape
  r = x.reshape(c, b, h // 2, 2, w // 2, 2)
  m = r.max(axis=(3, 5))
  # Row-major position (0..3) of each window's first maximum, then a mask
  # that compares it with each member's position: elementwise, no transpose.
  # A window whose maximum is NaN has none (4), and its tangent is 0, as
  # under max_pool2.
  first = jnp.where(r[:, :, :, 0, :, 0] == m, 0,
                    jnp.where(r[:, :, :, 0, :, 1] == m, 1,
                              jnp.where(r[:, :, :, 1, :, 0] == m, 2,
                                        jnp.where(r[:, :, :, 1, :, 1] == m,
                                                  3, 4))))
  position = (2 * jnp.arange(2)[:, None] + jnp.arange(2)).reshape(
      1, 1, 1, 2, 1, 2)
  mask = position == first[:, :, :, None, :, None]
  out = jnp.where(mask, t.reshape(r.shape), jnp.zeros((), t.dtype)).sum(
      axis=(3, 5))
  # Dividing by the mask's count (1; 0 under NaN, taken as 1) changes no
  # bit, but its transpose makes XLA compute the pooled cotangent once:
  # without it, XLA's CPU backend fused the cotangent's producer (the next
  # convolution's im2col transpose, a sum of shifted slices) into the select
  # over all four window members and evaluated it four times (small_cnn:
  # 4.2 -> 15 ms a gradient step on two cores).
  out = out / jnp.maximum(mask.astype(t.dtype).sum(axis=(3, 5)), 1)
  # The value through the rule again, so that a jvp of this rule (Hz) keeps
  # the first-maximum routing (see max_pool2).
  return max_pool2_channel_first(x), out


def _to_channel_first(x: chex.Array) -> chex.Array:
  """(B, H, W, C) -> (C, B, H, W)."""
  return jnp.transpose(x, (3, 0, 1, 2))


def _from_channel_first(x: chex.Array) -> chex.Array:
  """(C, B, H, W) -> (B, H, W, C)."""
  return jnp.transpose(x, (1, 2, 3, 0))


def _reduce_window_max_pool2(x: chex.Array) -> chex.Array:
  return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))


class MLP(nn.Module):
  """flatten -> dense(hidden) -> relu -> dense(10). For fast tests.

  Attributes:
    hidden: width of the hidden layer.
  """
  hidden: int = 32

  def __post_init__(self):
    if self.hidden < 1:
      raise ValueError(f"hidden must be >= 1, got {self.hidden}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: chex.Array, train: bool = False) -> chex.Array:
    del train  # No dropout.
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden, name="fc1")(x))
    return nn.Dense(NUM_CLASSES, name="fc2")(x)


class _ConvNet(nn.Module):
  """What the CNNs share: the convolution formulation, checked once.

  Attributes:
    conv_impl: "xla", "im2col", "im2col_lax", "im2col_cf" or "winograd" (see
      `Conv2D`).
  """
  conv_impl: str = "xla"

  def __post_init__(self):
    _check_conv_impl(self.conv_impl)
    super().__post_init__()


class SmallCNN(_ConvNet):
  """PyTorch's classic MNIST example net without its dropouts: 21,840 params.

  conv 10@5x5 -> max-pool 2 -> relu -> conv 20@5x5 -> max-pool 2 -> relu
  -> flatten -> dense 50 -> relu -> dense 10.

  Attributes:
    conv_impl: as in `_ConvNet`.
  """

  @nn.compact
  def __call__(self, x: chex.Array, train: bool = False) -> chex.Array:
    del train  # No dropout.
    channel_first = self.conv_impl in CHANNEL_FIRST_IMPLS
    conv = functools.partial(Conv2D, impl=self.conv_impl)
    if channel_first:
      x = _to_channel_first(x)
    x = conv(10, (5, 5), name="conv1")(x)
    # Under NHWC the first pool stays a reduce_window: its gradient is fed by
    # conv2's im2col transpose (a sum of 25 padded slices), which XLA's CPU
    # backend fuses into max_pool2's selects and evaluates several times over
    # (10.5 -> 18 ms a step, one core); behind select_and_scatter it is
    # computed once. Both pools give the same numbers bit for bit.
    x = nn.relu(max_pool2_channel_first(x) if channel_first
                else _reduce_window_max_pool2(x))
    x = conv(20, (5, 5), name="conv2")(x)
    x = nn.relu(max_pool2_channel_first(x) if channel_first
                else max_pool2(x))
    if channel_first:
      # Back to (B, H, W, C): the flatten sees what it sees under the other
      # formulations, so fc1's kernel means the same thing.
      x = _from_channel_first(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(50, name="fc1")(x))
    return nn.Dense(NUM_CLASSES, name="fc2")(x)


class CNN(_ConvNet):
  """The Keras/PyTorch MNIST CNN with dropout: 1,199,882 params.

  conv 32@3x3 -> relu -> conv 64@3x3 -> relu -> max-pool 2 -> dropout 0.25
  -> flatten -> dense 128 -> relu -> dropout 0.5 -> dense 10.

  Attributes:
    conv_impl: as in `_ConvNet`.
  """

  @nn.compact
  def __call__(self, x: chex.Array, train: bool = False) -> chex.Array:
    channel_first = self.conv_impl in CHANNEL_FIRST_IMPLS
    conv = functools.partial(Conv2D, impl=self.conv_impl)
    if channel_first:
      x = _to_channel_first(x)
    x = nn.relu(conv(32, (3, 3), name="conv1")(x))
    x = nn.relu(conv(64, (3, 3), name="conv2")(x))
    if channel_first:
      # Back to (B, H, W, C) before the dropout, so that its mask (drawn for
      # the activations' shape) is the other formulations' mask.
      x = _from_channel_first(max_pool2_channel_first(x))
    else:
      x = max_pool2(x)
    x = nn.Dropout(0.25, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(128, name="fc1")(x))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(NUM_CLASSES, name="fc2")(x)


MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "small_cnn": SmallCNN,
    "cnn": CNN,
}


def get_model(name: str, **kwargs: Any) -> nn.Module:
  """Builds a registered model.

  Args:
    name: one of `MODELS` ("mlp", "small_cnn", "cnn").
    **kwargs: fields of the model class, e.g. `hidden` for "mlp" or
      `conv_impl` for the CNNs.

  Returns:
    The flax module.
  """
  if name not in MODELS:
    raise ValueError(
        f"model must be one of {sorted(MODELS)}, got {name!r}")
  return MODELS[name](**kwargs)


def init_params(model: nn.Module, key: chex.PRNGKey) -> chex.ArrayTree:
  """Initialises `model` on a (1, 28, 28, 1) dummy batch.

  Args:
    model: a flax module taking (B, 28, 28, 1) images.
    key: PRNG key for the initialisers.

  Returns:
    The "params" collection.
  """
  dummy = jnp.zeros((1,) + INPUT_SHAPE, jnp.float32)
  return model.init(key, dummy, train=False)["params"]


def param_count(params: chex.ArrayTree) -> int:
  """Number of scalars in a parameter pytree."""
  return sum(math.prod(jnp.shape(p)) for p in jax.tree_util.tree_leaves(params))
