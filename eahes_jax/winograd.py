"""3 × 3 convolutions by Winograd's minimal filtering F(4 × 4, 3 × 3).

A stride-1 3 × 3 convolution computes each 4 × 4 block of its output from a
6 × 6 tile of its input. Winograd's algorithm (Lavin & Gray, "Fast Algorithms
for Convolutional Neural Networks", CVPR 2016) writes that block as

    Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A

for each input channel's tile d and kernel slice g, summed over input
channels. Summed over channels, the elementwise product becomes 36
independent matmuls, one per entry of the 6 × 6 transformed tile, each
(tiles × C) @ (C × O): 36 multiplications where a direct convolution makes
144 (4 × 4 outputs × 9 taps), 4 × fewer. The transforms are sums of a few
shifted slices, and their derivatives are too, so a gradient and a
Hessian-vector product (Hutchinson's Hz, forward over reverse) inherit the
saving: `CNN`'s second convolution is ~86 % of its training FLOPs.

The transforms' entries are not all powers of two (G has sixths), and their
sums have terms up to 8 × their inputs, so the result rounds differently from
a direct convolution, and more: in float32 its error is a few 1e-6 of the
result's scale at `CNN`'s shapes (5e-6 against a float64 reference, where a
direct convolution's is under 1e-6; tested against
``lax.conv_general_dilated``). That is why ``conv_impl="winograd"`` is an
option of the CNNs and not their default. One consequence to know: an output
whose 3 × 3 input window is all zeros, in a tile that also covers non-zero
input, is rounding noise (~1e-6 of the tile's values) where a direct
convolution gives 0 exactly. Under a ReLU at a zero bias (the CNNs'
initialisation) on images with a zero background, such outputs pass some
gradient on the first steps where a direct convolution passes none: another
subgradient at the kink, not another function. `data.load_mnist`'s
normalised digits have no zero background (their blank is −0.42).

Everything here is shaped for XLA's CPU backend, measured on `CNN`'s second
convolution (comments say what each choice bought); it is plain JAX and
runs wherever JAX does.
"""

from collections.abc import Sequence

import chex
import jax.numpy as jnp
from jax import lax
import numpy as np

# Output block m = 4, kernel r = 3, tile m + r - 1 = 6 (Lavin & Gray's
# F(4 × 4, 3 × 3), interpolation points 0, ±1, ±2 and ∞), in the correlation
# form a CNN's "convolution" computes.
_M, _R, _TILE = 4, 3, 6
_BT = np.array([[4, 0, -5, 0, 1, 0],
                [0, -4, -4, 1, 1, 0],
                [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0],
                [0, 4, 0, -5, 0, 1]], np.float64)
_G = np.array([[1 / 4, 0, 0],
               [-1 / 6, -1 / 6, -1 / 6],
               [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6],
               [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 1, 1, 0],
                [0, 1, -1, 2, -2, 0],
                [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], np.float64)


def _combine(matrix: np.ndarray,
             parts: Sequence[chex.Array]) -> list[chex.Array]:
  """``[sum_k matrix[a, k] * parts[k] for a]``, skipping zero entries.

  Elementwise, so that XLA fuses each combination with the slices it reads;
  a dot with the 6 × 6 matrix would first copy the tiles out.
  """
  out = []
  for row in matrix:
    total = None
    for coefficient, part in zip(row, parts):
      if coefficient == 0:
        continue
      if coefficient == 1:
        term = part
      elif coefficient == -1:
        term = -part
      else:
        term = part * float(coefficient)  # A Python float keeps the dtype.
      total = term if total is None else total + term
    out.append(total)
  return out


def _split(x: chex.Array, axis: int) -> list[chex.Array]:
  """The entries of x along axis, each without that axis.

  By ``lax.split``, whose transpose (in a gradient) is one concatenation of
  the pieces' cotangents. Indexing each entry instead transposes to a sum of
  zero-padded full-size copies: XLA's CPU backend evaluated the 24 of the
  output transform's in one fusion of 17.5 ms, a third of a `CNN` gradient
  step.
  """
  pieces = lax.split(x, [1] * x.shape[axis], axis=axis)
  return [jnp.squeeze(piece, axis) for piece in pieces]


def _tiles(x: chex.Array, axis: int, num_tiles: int) -> list[chex.Array]:
  """The six rows of overlapping tiles along axis: ``[x[4 i + k] for i]``
  for k = 0..5, each of size num_tiles along axis (x has at most
  4 * num_tiles + 2 entries there; the rest are zeros).

  x is zero-padded to 4 * (num_tiles + 1) and reshaped to (num_tiles + 1, 4)
  there, so a tile row is one of four contiguous splits, shifted by a block
  for k = 4, 5: the gradient is a concatenation, not six strided scatters.
  """
  padding = [(0, 0)] * x.ndim
  padding[axis] = (0, _M * (num_tiles + 1) - x.shape[axis])
  blocks = jnp.pad(x, padding).reshape(
      x.shape[:axis] + (num_tiles + 1, _M) + x.shape[axis + 1:])
  rows = _split(blocks, axis + 1)
  first = [lax.slice_in_dim(row, 0, num_tiles, axis=axis) for row in rows]
  shifted = [lax.slice_in_dim(rows[k], 1, num_tiles + 1, axis=axis)
             for k in range(_TILE - _M)]
  return first + shifted


def transform_kernel(kernel: chex.Array) -> chex.Array:
  """G g Gᵀ for every (input, output) channel pair of an HWIO 3 × 3 kernel.

  Args:
    kernel: shape (3, 3, C, O).

  Returns:
    The transformed kernel, shape (36, C, O): entry (6 a + b) is row a,
    column b of the 6 × 6 transformed slice.
  """
  g = jnp.asarray(_G, kernel.dtype)
  # At full precision: on accelerators the default would round the kernel to
  # TF32/bf16 here, and the product below rounds once more. Tiny (36 C O).
  u = jnp.einsum("ak,klco,bl->abco", g, kernel, g,
                 precision=lax.Precision.HIGHEST)
  return u.reshape(_TILE * _TILE, *kernel.shape[2:])


def conv3x3(x: chex.Array, kernel: chex.Array, padding: str = "VALID",
            precision: lax.PrecisionLike = None) -> chex.Array:
  """Stride-1 3 × 3 convolution by Winograd's F(4 × 4, 3 × 3).

  ``lax.conv_general_dilated(x, kernel, (1, 1), padding,
  dimension_numbers=("NHWC", "HWIO", "NHWC"))`` in value up to rounding (a
  few 1e-6 of the result's scale in float32), with a quarter of its
  multiplications. Any output size: the last tiles are zero-padded and
  cropped. vmap over stacked kernels gives batched matmuls, as the im2col
  formulations do.

  Args:
    x: images of shape (B, H, W, C), H and W ≥ 3 under "VALID", floating
      point. Reduced-precision floats are computed in float32 and the result
      cast back.
    kernel: HWIO kernel of shape (3, 3, C, O).
    padding: "VALID", or "SAME" (one row/column of zeros on every side).
    precision: precision of the 36 channel matmuls.

  Returns:
    Shape (B, H - 2, W - 2, O) under "VALID", (B, H, W, O) under "SAME".

  Raises:
    ValueError: if x is not 4-D, kernel is not (3, 3, C, O) for x's C,
      padding is neither "VALID" nor "SAME", the output would be empty, or
      x or kernel is not floating point (the transforms' fractions would
      be truncated).
  """
  if x.ndim != 4:
    raise ValueError(f"x must have shape (B, H, W, C), got {x.shape}")
  if kernel.shape[:2] != (_R, _R) or kernel.ndim != 4 or (
      kernel.shape[2] != x.shape[-1]):
    raise ValueError(f"kernel must have shape (3, 3, {x.shape[-1]}, O) for x"
                     f" of shape {x.shape}, got {kernel.shape}")
  for name, array in (("x", x), ("kernel", kernel)):
    if not jnp.issubdtype(array.dtype, jnp.floating):
      raise ValueError(f"{name} must be floating point, got {array.dtype}")
  if padding == "SAME":
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  elif padding != "VALID":
    raise ValueError(
        f"padding must be 'VALID' or 'SAME', got {padding!r}")
  # Reduced-precision floats (bfloat16, float16) are transformed and
  # multiplied in float32: the transforms' sums of terms up to 8 × and 5 ×
  # their inputs cost bfloat16 all its bits (errors near the result's own
  # size in a test), and float16 ~35 times a direct convolution's error.
  out_dtype = jnp.result_type(x.dtype, kernel.dtype)
  compute_dtype = jnp.promote_types(out_dtype, jnp.float32)
  x, kernel = x.astype(compute_dtype), kernel.astype(compute_dtype)
  b, h, w, c = x.shape
  out_h, out_w = h - _R + 1, w - _R + 1
  if out_h < 1 or out_w < 1:
    raise ValueError(f"x of shape {x.shape} is smaller than the 3 × 3 kernel")
  tiles_h, tiles_w = -(-out_h // _M), -(-out_w // _M)
  num_tiles = b * tiles_h * tiles_w
  o = kernel.shape[-1]

  # Bᵀ d B, separably: rows, then columns. Channels stay minor, so that the
  # 36 matmuls below contract them with tiles as rows ((P, C) @ (C, O)): on
  # XLA's CPU backend that layout ran the forward, input-gradient and
  # kernel-gradient matmuls in 1.0 + 1.1 + 2.0-2.7 ms, against 1.7-2.8 +
  # 1.4 + 3.7 ms channel-first (CNN, batch 64).
  by_row = _combine(_BT, _tiles(x, 1, tiles_h))  # 6 × (B, th, W, C).
  v = []
  for row in by_row:
    entries = _combine(_BT, _tiles(row, 2, tiles_w))  # 6 × (B, th, tw, C).
    # Stacked a row at a time, the reshape between the levels keeping XLA
    # from flattening them into one 36-operand concatenation: its CPU
    # backend fuses a concatenation with what feeds it only up to 8 operands.
    v.append(jnp.stack(entries).reshape(_TILE * num_tiles, c))
  v = jnp.stack(v).reshape(_TILE * _TILE, num_tiles, c)

  m = jnp.matmul(v, transform_kernel(kernel),
                 precision=precision)  # (36, P, O).

  # Aᵀ M A, separably, each level split (not indexed: see `_split`).
  m = [row.reshape(_TILE, num_tiles, o)
       for row in _split(m.reshape(_TILE, _TILE * num_tiles, o), 0)]
  blocks = []
  for row in _combine(_AT, m):  # 4 × (6, P, O): Aᵀ applied.
    block_row = [y.reshape(b, tiles_h, tiles_w, o)
                 for y in _combine(_AT, _split(row, 0))]  # 4 × (B, th, tw, O)
    blocks.append(jnp.stack(block_row, axis=3).reshape(
        b, tiles_h, _M * tiles_w, o))
  y = jnp.stack(blocks, axis=2).reshape(b, _M * tiles_h, _M * tiles_w, o)
  return y[:, :out_h, :out_w].astype(out_dtype)
