"""Tests for eahes_jax.winograd: F(4 × 4, 3 × 3) against XLA's convolution."""

import chex
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from eahes_jax import winograd


def _direct(x, kernel, padding="VALID"):
  return lax.conv_general_dilated(
      x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=lax.Precision.HIGHEST)


def _inputs(shape, out_features, seed=0):
  kx, kk = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, shape)
  kernel = jax.random.normal(kk, (3, 3, shape[-1], out_features)) / 3
  return x, kernel


def _assert_close(actual, expected, rtol=1e-5):
  """Equal up to float32 rounding, relative to the result's scale (Winograd's
  error is relative to the sums it forms, not to each entry)."""
  scale = float(jnp.abs(expected).max())
  assert actual.shape == expected.shape and actual.dtype == expected.dtype
  chex.assert_trees_all_close(actual, expected, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("shape, padding", [
    ((2, 26, 26, 32), "VALID"),  # CNN's conv2: 6 × 6 whole tiles.
    ((3, 9, 7, 5), "VALID"),     # Outputs 7 × 5: the last tiles cropped.
    ((1, 5, 19, 3), "VALID"),    # 1 × 5 tiles: more along W than along H.
    ((2, 5, 11, 3), "SAME"),
    ((1, 3, 3, 2), "VALID"),     # One output pixel.
    ((2, 4, 6, 1), "SAME"),
])
def test_conv3x3_is_the_convolution(shape, padding):
  x, kernel = _inputs(shape, 7)
  _assert_close(winograd.conv3x3(x, kernel, padding),
                _direct(x, kernel, padding))


def test_conv3x3_gradients_are_the_convolutions():
  x, kernel = _inputs((2, 14, 10, 6), 4)
  cotangent = jax.random.normal(jax.random.key(3), (2, 12, 8, 4))

  def grads(conv):
    return jax.grad(lambda x, k: jnp.sum(conv(x, k) * cotangent),
                    argnums=(0, 1))(x, kernel)

  for got, want in zip(grads(winograd.conv3x3), grads(_direct)):
    _assert_close(got, want)


def test_conv3x3_hessian_vector_product_is_the_convolutions():
  """Forward over reverse, as Hutchinson's Hz: through a nonlinearity, so
  that the product depends on the input and the kernel together."""
  x, kernel = _inputs((2, 10, 10, 3), 5)
  tangent = jnp.sign(jax.random.normal(jax.random.key(4), kernel.shape))

  def hz(conv):
    grad = jax.grad(lambda k: jnp.sum(jnp.tanh(conv(x, k)) ** 2))
    return jax.jvp(grad, (kernel,), (tangent,))[1]

  _assert_close(hz(winograd.conv3x3), hz(_direct), rtol=1e-4)


def test_conv3x3_vmapped_over_kernels_is_each_kernels_convolution():
  """The simulator vmaps a model over workers' stacked parameters."""
  x = jax.random.normal(jax.random.key(0), (3, 2, 10, 10, 4))
  kernels = jax.random.normal(jax.random.key(1), (3, 3, 3, 4, 6))
  stacked = jax.vmap(winograd.conv3x3)(x, kernels)
  for i in range(3):
    _assert_close(stacked[i], _direct(x[i], kernels[i]))


@pytest.mark.parametrize("dtype, rtol", [(jnp.bfloat16, 2 ** -8),
                                         (jnp.float16, 2 ** -11)])
def test_conv3x3_in_reduced_precision_is_the_exact_result_rounded(dtype,
                                                                  rtol):
  """bfloat16 or float16 in and out, computed in float32: within the
  output's own rounding of the exact result (in bfloat16 throughout,
  Winograd's transforms left errors near the result's size; in float16,
  ~35 times a direct float16 convolution's)."""
  x, kernel = _inputs((2, 10, 10, 8), 8)
  x16, kernel16 = x.astype(dtype), kernel.astype(dtype)
  got = winograd.conv3x3(x16, kernel16)
  assert got.dtype == dtype
  exact = _direct(x16.astype(jnp.float32), kernel16.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(got, np.float32), exact, rtol=rtol,
                             atol=1e-5 * float(jnp.abs(exact).max()))


def test_conv3x3_of_mixed_dtypes_is_their_result_type():
  x, kernel = _inputs((1, 8, 8, 4), 3)
  got = winograd.conv3x3(x, kernel.astype(jnp.bfloat16))
  assert got.dtype == jnp.float32
  _assert_close(got, _direct(x, kernel.astype(jnp.bfloat16).astype(
      jnp.float32)))


def test_conv3x3_hands_its_precision_to_the_channel_matmuls():
  """On accelerators the precision decides TF32/bf16 passes; the CPU cannot
  show it, the lowered program can."""
  x, kernel = _inputs((1, 8, 8, 4), 3)

  def highest_count(precision):
    text = jax.jit(lambda x, k: winograd.conv3x3(
        x, k, precision=precision)).lower(x, kernel).as_text()
    return text.count("HIGHEST")

  # The kernel transform is always at HIGHEST; the matmuls add their own.
  assert highest_count(lax.Precision.HIGHEST) > highest_count(None) >= 1


def test_blank_windows_are_zero_to_rounding_and_blank_tiles_exactly():
  """What the winograd module says: an output whose 3 × 3 input window is
  all zeros is 0 to rounding in a tile that also covers non-zero input
  (where a direct convolution gives 0 exactly), and exactly 0 in a tile
  with none."""
  x, kernel = _inputs((1, 14, 14, 4), 4)
  x = x.at[:, :, 3:].set(0.0)  # Non-zero in columns 0-2 only.
  got, want = winograd.conv3x3(x, kernel), _direct(x, kernel)
  assert not np.any(want[:, :, 3:])  # Windows entirely in the blank.
  near = got[:, :, 3:4]  # Output column 3: in the tile of columns 0-3.
  assert np.abs(near).max() < 1e-5 * np.abs(want).max()
  np.testing.assert_array_equal(got[:, :, 4:], 0.0)  # Tiles without any.


def test_transform_kernel_is_g_g_gt():
  kernel = np.asarray(jax.random.normal(jax.random.key(0), (3, 3, 2, 3)),
                      np.float64)
  g = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6],
                [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
  want = np.einsum("ak,klco,bl->abco", g, kernel, g).reshape(36, 2, 3)
  got = winograd.transform_kernel(jnp.asarray(kernel, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_conv3x3_does_a_quarter_of_the_multiplications():
  """XLA's cost analysis of the compiled programs: at CNN's conv2 shapes the
  Winograd program, transforms included, costs under a third of the direct
  convolution's FLOPs (its matmuls alone, 36 against 144 products per 4 × 4
  block, a quarter)."""
  x, kernel = _inputs((4, 26, 26, 32), 64)

  def flops(conv):
    return jax.jit(conv).lower(x, kernel).compile().cost_analysis()["flops"]

  direct = flops(_direct)
  assert direct >= 2 * 4 * 24 * 24 * 9 * 32 * 64  # The count is a real one.
  assert flops(winograd.conv3x3) < direct / 3


@pytest.mark.parametrize("x_shape, kernel_shape, padding, match", [
    ((2, 8, 8), (3, 3, 8, 4), "VALID", "x must have shape"),
    ((2, 8, 8, 3), (5, 5, 3, 4), "VALID", "kernel must have shape"),
    ((2, 8, 8, 3), (3, 3, 2, 4), "VALID", "kernel must have shape"),
    ((2, 8, 8, 3), (3, 3, 3, 4), "FULL", "padding must be"),
    ((2, 2, 8, 3), (3, 3, 3, 4), "VALID", "smaller than the 3 × 3 kernel"),
])
def test_conv3x3_rejects_bad_arguments_naming_them(x_shape, kernel_shape,
                                                   padding, match):
  with pytest.raises(ValueError, match=match):
    winograd.conv3x3(jnp.zeros(x_shape), jnp.zeros(kernel_shape), padding)


@pytest.mark.parametrize("argument", ["x", "kernel"])
def test_conv3x3_refuses_integers_whose_result_it_would_truncate(argument):
  arrays = {"x": jnp.ones((1, 6, 6, 3)), "kernel": jnp.ones((3, 3, 3, 2))}
  arrays[argument] = arrays[argument].astype(jnp.int32)
  with pytest.raises(ValueError, match=f"{argument} must be floating point"):
    winograd.conv3x3(arrays["x"], arrays["kernel"])
