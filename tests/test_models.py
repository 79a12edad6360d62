"""Tests for eahes_jax.models."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from eahes_jax import data
from eahes_jax import models

_CONV_MODELS = ("small_cnn", "cnn")
_IMPLS = ("im2col", "im2col_lax", "im2col_cf", "winograd")


def _images(key, batch):
  return jax.random.normal(key, (batch, 28, 28, 1), jnp.float32)


@pytest.mark.parametrize("name, kwargs, expected", [
    ("mlp", {}, 784 * 32 + 32 + 32 * 10 + 10),
    ("mlp", {"hidden": 5}, 784 * 5 + 5 + 5 * 10 + 10),
    ("small_cnn", {}, 21_840),
    ("small_cnn", {"conv_impl": "im2col"}, 21_840),
    ("cnn", {}, 1_199_882),
    ("cnn", {"conv_impl": "im2col"}, 1_199_882),
])
def test_param_count(name, kwargs, expected):
  model = models.get_model(name, **kwargs)
  # Shapes suffice to count; eval_shape skips the (slow, eager) init compute.
  shapes = jax.eval_shape(lambda k: models.init_params(model, k),
                          jax.random.key(0))
  assert models.param_count(shapes) == expected


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_output_shape_and_dropout(name):
  model = models.get_model(name)

  @jax.jit
  def outputs(key):  # One compile per model for every mode below.
    params = models.init_params(model, key)
    x = _images(key, 3)
    k1, k2 = jax.random.split(key)
    apply = lambda **kw: model.apply({"params": params}, x, **kw)
    return dict(
        eval=apply(),
        eval_rng=apply(train=False, rngs={"dropout": k1}),
        train_k1=apply(train=True, rngs={"dropout": k1}),
        train_k1_again=apply(train=True, rngs={"dropout": k1}),
        train_k2=apply(train=True, rngs={"dropout": k2}))

  out = outputs(jax.random.key(0))
  chex.assert_shape(out["eval"], (3, 10))
  chex.assert_type(out["eval"], jnp.float32)
  assert np.all(np.isfinite(out["eval"]))
  chex.assert_trees_all_equal(out["eval"], out["eval_rng"])
  chex.assert_trees_all_equal(out["train_k1"], out["train_k1_again"])
  if name == "cnn":  # Dropout, in training only.
    assert not np.allclose(out["train_k1"], out["train_k2"])
    assert not np.allclose(out["train_k1"], out["eval"])
  else:  # No dropout: `train` changes nothing.
    chex.assert_trees_all_equal(out["train_k1"], out["eval"])
    chex.assert_trees_all_equal(out["train_k2"], out["eval"])


@pytest.mark.parametrize("name", _CONV_MODELS)
def test_conv_impls_share_the_parameter_tree(name):
  trees = [
      jax.eval_shape(lambda k, m=models.get_model(name, conv_impl=impl):
                     models.init_params(m, k), jax.random.key(0))
      for impl in ("xla",) + _IMPLS]
  for tree in trees[1:]:
    # Same names, shapes and dtypes; test_im2col_matches_xla_under_vmap feeds
    # one impl's parameters to the other.
    chex.assert_trees_all_equal_structs(trees[0], tree)
    chex.assert_trees_all_equal_shapes_and_dtypes(trees[0], tree)
  assert trees[0]["conv1"]["kernel"].shape[:2] == (
      (5, 5) if name == "small_cnn" else (3, 3))  # HWIO, as nn.Conv.


def test_get_model_rejects_unknown_name():
  with pytest.raises(ValueError, match="model must be one of"):
    models.get_model("resnet")


@pytest.mark.parametrize("name", _CONV_MODELS)
def test_rejects_unknown_conv_impl(name):
  with pytest.raises(ValueError, match="conv_impl"):
    models.get_model(name, conv_impl="fft")


def test_mlp_rejects_empty_hidden_layer():
  with pytest.raises(ValueError, match="hidden"):
    models.get_model("mlp", hidden=0)


def test_conv2d_rejects_bad_padding():
  with pytest.raises(ValueError, match="padding"):
    models.Conv2D(4, (3, 3), padding="CIRCULAR")


@pytest.mark.parametrize("kernel_size, padding", [
    ((5, 5), "VALID"), ((3, 2), "VALID"), ((4, 3), "SAME"),
    ((3, 3), "VALID"), ((3, 3), "SAME")])  # 3 × 3: winograd's own path.
def test_conv2d_matches_nn_conv(kernel_size, padding):
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 3))
  ref = nn.Conv(5, kernel_size, padding=padding)
  params = ref.init(jax.random.key(1), x)["params"]
  # Non-zero bias, so a dropped bias would show.
  params = {**params, "bias": jnp.arange(5.0)}
  expected = ref.apply({"params": params}, x)
  for impl in models.CONV_IMPLS:
    conv = models.Conv2D(5, kernel_size, padding=padding, impl=impl)
    if impl in models.CHANNEL_FIRST_IMPLS:  # (C, B, H, W) in and out.
      x_in = jnp.transpose(x, (3, 0, 1, 2))
      out = lambda p: jnp.transpose(conv.apply({"params": p}, x_in),
                                    (1, 2, 3, 0))
    else:
      x_in, out = x, lambda p: conv.apply({"params": p}, x)
    chex.assert_trees_all_equal_shapes(
        conv.init(jax.random.key(1), x_in)["params"], params)
    chex.assert_trees_all_close(out(params), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size, padding", [
    ((5, 5), "VALID"), ((3, 2), "VALID"), ((4, 3), "SAME")])
def test_extract_patches_is_lax_patches_in_hwc_order(kernel_size, padding):
  x = jax.random.normal(jax.random.key(0), (2, 7, 6, 3))
  kh, kw = kernel_size
  ref = lax.conv_general_dilated_patches(
      x, kernel_size, (1, 1), padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  b, h, w, _ = ref.shape
  # lax orders features (C, kh, kw); extract_patches orders them (kh, kw, C).
  ref = ref.reshape(b, h, w, 3, kh, kw).transpose(0, 1, 2, 4, 5, 3)
  chex.assert_trees_all_equal(
      models.extract_patches(x, kernel_size, padding),
      ref.reshape(b, h, w, kh * kw * 3))


@pytest.mark.parametrize("kernel_size, padding", [
    ((5, 5), "VALID"), ((3, 2), "VALID"), ((4, 3), "SAME")])
def test_channel_first_patches_are_the_patches_transposed(kernel_size, padding):
  x = jax.random.normal(jax.random.key(0), (2, 7, 6, 3))
  ref = models.extract_patches(x, kernel_size, padding)  # (B, H', W', F)
  b, h, w, f = ref.shape
  chex.assert_trees_all_equal(
      models.extract_patches_channel_first(
          jnp.transpose(x, (3, 0, 1, 2)), kernel_size, padding),
      ref.reshape(b * h * w, f).T)


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_channel_first_patches_ones_row_is_a_last_row_of_ones(padding):
  """The bias's row comes out of the same concatenation as the windows: the
  patches unchanged, then ones."""
  x = jax.random.normal(jax.random.key(0), (3, 2, 7, 6))
  plain = models.extract_patches_channel_first(x, (3, 2), padding)
  with_ones = models.extract_patches_channel_first(x, (3, 2), padding,
                                                   ones_row=True)
  assert with_ones.shape == (plain.shape[0] + 1, plain.shape[1])
  chex.assert_trees_all_equal(with_ones[:-1], plain)
  chex.assert_trees_all_equal(with_ones[-1], jnp.ones(plain.shape[1]))


def _one_concatenation_patches_nhwc(x, kernel_size, padding="VALID"):
  """extract_patches as first written: all kh * kw windows in one
  concatenation."""
  kh, kw = kernel_size
  if padding == "SAME":
    x = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2),
                    (0, 0)))
  h, w = x.shape[1], x.shape[2]
  ho, wo = h - kh + 1, w - kw + 1
  shifted = [x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)]
  return jnp.concatenate(shifted, axis=-1)


def _one_concatenation_patches(x, kernel_size, padding="VALID",
                               ones_row=False):
  """extract_patches_channel_first as first written: all kh * kw windows
  (and the ones) in one concatenation."""
  kh, kw = kernel_size
  if padding == "SAME":
    x = jnp.pad(x, ((0, 0), (0, 0), ((kh - 1) // 2, kh // 2),
                    ((kw - 1) // 2, kw // 2)))
  c, _, h, w = x.shape
  ho, wo = h - kh + 1, w - kw + 1
  rows = [x[:, :, i:i + ho, j:j + wo] for i in range(kh) for j in range(kw)]
  if ones_row:
    rows.append(jnp.ones((1,) + rows[0].shape[1:], x.dtype))
  return jnp.concatenate(rows).reshape(kh * kw * c + int(ones_row), -1)


def _concatenate_widths(compiled):
  """Operand counts of the concatenations XLA left in a compiled program
  (fused or not): after its simplifier, which flattens nested
  concatenations that nothing keeps apart."""
  widths = []
  for line in compiled.as_text().splitlines():
    if " concatenate(" in line:
      operands = line.split(" concatenate(", 1)[1].split("), dimensions")[0]
      widths.append(operands.count("%"))
  return widths


def _compiled_concatenate_widths(fn, *args):
  return _concatenate_widths(jax.jit(fn).lower(*args).compile())


@pytest.mark.parametrize("kernel_size", [(5, 5), (3, 3)])
@pytest.mark.parametrize("channel_first", [True, False])
def test_patches_concatenate_at_most_8_operands(kernel_size, channel_first):
  """XLA's CPU backend fuses a concatenation of at most 8 operands with its
  slices and copies each window twice for a wider one; the patch matrix
  must be built from such narrow concatenations (the first versions
  concatenated all 25 or 9 windows, and the ones, at once)."""
  if channel_first:
    x = jax.random.normal(jax.random.key(0), (10, 4, 12, 12))
    patches = functools.partial(models.extract_patches_channel_first,
                                kernel_size=kernel_size, ones_row=True)
    wide = functools.partial(_one_concatenation_patches,
                             kernel_size=kernel_size, ones_row=True)
  else:
    # One channel, as the CNNs' first convolutions: under 128 features a
    # patch, where the narrow form pays.
    x = jax.random.normal(jax.random.key(0), (4, 12, 12, 1))
    patches = functools.partial(models.extract_patches,
                                kernel_size=kernel_size)
    wide = functools.partial(_one_concatenation_patches_nhwc,
                             kernel_size=kernel_size)
  chex.assert_trees_all_equal(patches(x), wide(x))
  widths = _compiled_concatenate_widths(patches, x)
  assert widths and max(widths) <= 8, widths
  assert max(_compiled_concatenate_widths(wide, x)) > 8  # It can fail.


@pytest.mark.parametrize("name", _CONV_MODELS)
@pytest.mark.parametrize("impl", ["im2col", "im2col_cf"])
def test_narrow_concatenations_keep_the_one_concatenation_bits(name, impl,
                                                               monkeypatch):
  """Building the patches in narrow concatenations changes no bit of the
  loss, gradient or Hz of a compiled step: the same values reach the same
  matmuls in the same layout."""
  model = models.get_model(name, conv_impl=impl)
  params = models.init_params(model, jax.random.key(0))
  x = _images(jax.random.key(1), 8)
  y = jnp.arange(8) % 10
  z = jax.tree.map(lambda p: jnp.sign(jax.random.normal(
      jax.random.key(2), p.shape)), params)

  def compiled_step():
    # Traced anew each time: under jit, one function would keep its first
    # trace. The images are an argument: as a constant, XLA would fold the
    # first convolution's patches away in both programs.
    def step(p, images):
      def loss(q):
        logits = model.apply({"params": q}, images, train=True,
                             rngs={"dropout": jax.random.key(3)})
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                             y[:, None], 1))
      grad = jax.grad(loss)
      return loss(p), grad(p), jax.jvp(grad, (p,), (z,))[1]
    return jax.jit(step).lower(params, x).compile()

  narrow_step = compiled_step()
  if impl == "im2col_cf":
    monkeypatch.setattr(models, "extract_patches_channel_first",
                        _one_concatenation_patches)
  else:
    monkeypatch.setattr(models, "extract_patches",
                        _one_concatenation_patches_nhwc)
  wide_step = compiled_step()
  # The first convolution's patches, at least, are narrow in one program
  # and wide in the other (im2col keeps the second's wide: see
  # extract_patches).
  assert _concatenate_widths(narrow_step) != _concatenate_widths(wide_step)
  chex.assert_trees_all_equal(narrow_step(params, x), wide_step(params, x))


@pytest.mark.parametrize("in_features, same_bits", [(1, True), (2, False)])
def test_winograd_conv2d_leaves_one_channel_inputs_to_im2col(in_features,
                                                             same_bits):
  """An image's first convolution (one channel) runs as im2col, bit for bit;
  from two channels on, Winograd's (other) rounding shows."""
  x = jax.random.normal(jax.random.key(0), (2, 10, 10, in_features))
  outputs = []
  for impl in ("im2col", "winograd"):
    conv = models.Conv2D(8, (3, 3), impl=impl)
    params = conv.init(jax.random.key(1), x)
    outputs.append(conv.apply(params, x))
  assert np.array_equal(outputs[0], outputs[1]) == same_bits
  chex.assert_trees_all_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)


def test_winograd_small_cnn_is_im2col_bit_for_bit():
  """small_cnn's kernels are 5 × 5: under "winograd" it is "im2col"."""
  x = _images(jax.random.key(1), 4)
  logits = []
  for impl in ("im2col", "winograd"):
    model = models.get_model("small_cnn", conv_impl=impl)
    params = models.init_params(model, jax.random.key(0))
    logits.append(jax.jit(lambda p, x, m=model: m.apply({"params": p}, x))(
        params, x))
  chex.assert_trees_all_equal(logits[0], logits[1])


@pytest.mark.parametrize("impl", ["im2col_cf", "winograd"])
@pytest.mark.parametrize("name", _CONV_MODELS)
def test_rerounding_model_matches_im2col(name, impl):
  """Same parameters, images and dropout key: same logits, loss, gradient
  and Hutchinson Hz up to float32 rounding (the formulations round
  differently, which is why im2col_cf and winograd are options)."""
  nhwc = models.get_model(name, conv_impl="im2col")
  cf = models.get_model(name, conv_impl=impl)
  params = models.init_params(nhwc, jax.random.key(0))
  # Real-looking digits: a zero border, so pooling windows tie.
  x = jnp.zeros((6, 28, 28, 1)).at[:, 6:22, 6:22].set(
      jax.random.uniform(jax.random.key(1), (6, 16, 16, 1)))
  if impl == "winograd":
    # As load_mnist gives them, normalised: Winograd's outputs over an
    # all-zero window are rounding noise, not zeros (the winograd module),
    # so at the zero-initialised biases' ReLU kink the raw digits' zero
    # border sends conv2's bias another (equally valid) subgradient.
    x = data.normalize_images(np.asarray(x) * 255)
  y = jnp.arange(6) % 10
  z = jax.tree.map(lambda p: jnp.sign(jax.random.normal(
      jax.random.key(2), p.shape)), params)

  def loss(model, p):
    logits = model.apply({"params": p}, x, train=True,
                         rngs={"dropout": jax.random.key(3)})
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                         y[:, None], 1))

  @jax.jit
  def both():
    out = []
    for m in (nhwc, cf):
      grad = jax.grad(functools.partial(loss, m))
      out.append((loss(m, params), grad(params),
                  jax.jvp(grad, (params,), (z,))[1]))
    return out

  (loss_a, grad_a, hz_a), (loss_b, grad_b, hz_b) = both()
  chex.assert_trees_all_close(loss_b, loss_a, rtol=1e-5)
  chex.assert_trees_all_close(grad_b, grad_a, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(hz_b, hz_a, rtol=1e-3, atol=1e-5)
  assert np.abs(np.asarray(grad_a["conv1"]["kernel"])).max() > 1e-4


@pytest.mark.parametrize("name", _CONV_MODELS)
def test_im2col_matches_xla_under_vmap(name):
  """Per-worker params and batches, vmapped: outputs and gradients agree."""
  num_workers, batch = 3, 4
  xla_model = models.get_model(name, conv_impl="xla")
  # "im2col_lax" is checked against nn.Conv in test_conv2d_matches_nn_conv;
  # compiling it here too would add to the cost of this test.
  im2col_model = models.get_model(name, conv_impl="im2col")

  def loss_and_logits(model, params, x, y):
    logits = model.apply({"params": params}, x)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], 1)), logits

  @jax.jit
  def both(key):
    keys = jax.random.split(key, num_workers)
    # One compile for both impls; params come from the xla model's init.
    stacked = jax.vmap(lambda k: models.init_params(xla_model, k))(keys)
    x = jax.random.normal(key, (num_workers, batch, 28, 28, 1))
    y = jax.random.randint(key, (num_workers, batch), 0, 10)
    return [
        jax.vmap(jax.value_and_grad(
            lambda p, x, y, m=m: loss_and_logits(m, p, x, y), has_aux=True))(
                stacked, x, y)
        for m in (xla_model, im2col_model)]

  ((loss_a, logits_a), grad_a), ((loss_b, logits_b), grad_b) = both(
      jax.random.key(0))
  chex.assert_shape(logits_a, (num_workers, batch, 10))
  # Workers really differ (else vmap over params would be vacuous).
  assert not np.allclose(logits_a[0], logits_a[1])
  chex.assert_trees_all_close(logits_b, logits_a, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(grad_b, grad_a, rtol=1e-4, atol=1e-5)


def test_init_params_returns_the_params_collection():
  shapes = jax.eval_shape(
      lambda k: models.init_params(models.get_model("small_cnn"), k),
      jax.random.key(0))
  assert set(shapes) == {"conv1", "conv2", "fc1", "fc2"}
  mlp = models.get_model("mlp", hidden=3)
  params = models.init_params(mlp, jax.random.key(0))
  assert set(params) == {"fc1", "fc2"}
  chex.assert_shape(params["fc1"]["kernel"], (784, 3))
  different = models.init_params(mlp, jax.random.key(1))
  assert not np.allclose(params["fc1"]["kernel"], different["fc1"]["kernel"])
  assert models.param_count({"a": jnp.zeros((2, 3)), "b": [jnp.zeros(4)]}) == 10


def _tied_activations(key, shape=(3, 8, 12, 4)):
  """Activations with many ties: a zero band (a digit's background) and
  values rounded to halves."""
  x = jnp.round(jax.random.normal(key, shape) * 2) / 2
  return x.at[:, :4].set(0.0)


def _reference_pool(x):
  return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))


def test_max_pool2_value_and_gradient_are_nn_max_pool_bit_for_bit():
  x = _tied_activations(jax.random.PRNGKey(0))
  g = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 6, 4))
  np.testing.assert_array_equal(models.max_pool2(x), _reference_pool(x))
  grad = lambda pool: jax.grad(lambda x: jnp.sum(pool(x) * g))(x)
  np.testing.assert_array_equal(grad(models.max_pool2), grad(_reference_pool))


def test_max_pool2_routes_a_tie_to_the_first_maximum():
  # Each window of one is [[0, 1], [1, 0]]: the tie is between members 1 and
  # 2 (row-major); select_and_scatter and PyTorch give member 1 everything.
  x = jnp.array([0., 1., 1., 0.]).reshape(1, 2, 2, 1)
  t = jnp.array([1., 10., 100., 1000.]).reshape(1, 2, 2, 1)
  assert float(jax.jvp(models.max_pool2, (x,), (t,))[1].squeeze()) == 10.
  grad = jax.grad(lambda x: models.max_pool2(x).sum())(x)
  np.testing.assert_array_equal(grad.ravel(), [0., 1., 0., 0.])


def test_max_pool2_hessian_vector_product_is_nn_max_pool_bit_for_bit():
  # Hutchinson's Hz is a jvp of the gradient (forward over reverse); with ties
  # a rule that let jnp.max differentiate the value would split the tangent.
  x = _tied_activations(jax.random.PRNGKey(2))
  g = jax.random.normal(jax.random.PRNGKey(3), (3, 4, 6, 4))
  z = jax.random.normal(jax.random.PRNGKey(4), x.shape)
  def hz(pool):
    grad = jax.grad(lambda x: jnp.sum(jnp.tanh(pool(x)) * g))
    return jax.jvp(grad, (x,), (z,))[1]
  np.testing.assert_array_equal(hz(models.max_pool2), hz(_reference_pool))


def _cf(x):
  return jnp.transpose(x, (3, 0, 1, 2))


def test_channel_first_max_pool2_is_max_pool2_transposed_bit_for_bit():
  # Value, gradient and Hz, ties included: the same first-maximum routing
  # in the other layout.
  x = _tied_activations(jax.random.PRNGKey(5))
  g = jax.random.normal(jax.random.PRNGKey(6), (3, 4, 6, 4))
  z = jax.random.normal(jax.random.PRNGKey(7), x.shape)
  pools = {"nhwc": lambda x: models.max_pool2(x),
           "cf": lambda x: jnp.transpose(
               models.max_pool2_channel_first(_cf(x)), (1, 2, 3, 0))}
  values = {k: pool(x) for k, pool in pools.items()}
  np.testing.assert_array_equal(values["cf"], values["nhwc"])
  def hz(pool):
    grad = jax.grad(lambda x: jnp.sum(jnp.tanh(pool(x)) * g))
    return jax.jvp(grad, (x,), (z,))
  (grad_cf, hz_cf), (grad_nhwc, hz_nhwc) = hz(pools["cf"]), hz(pools["nhwc"])
  np.testing.assert_array_equal(grad_cf, grad_nhwc)
  np.testing.assert_array_equal(hz_cf, hz_nhwc)


def test_channel_first_max_pool2_routes_a_tie_to_the_first_maximum():
  x = jnp.array([0., 1., 1., 0.]).reshape(1, 1, 2, 2)
  t = jnp.array([1., 10., 100., 1000.]).reshape(1, 1, 2, 2)
  assert float(jax.jvp(models.max_pool2_channel_first, (x,), (t,))[1]
               .squeeze()) == 10.
  grad = jax.grad(lambda x: models.max_pool2_channel_first(x).sum())(x)
  np.testing.assert_array_equal(grad.ravel(), [0., 1., 0., 0.])
  with pytest.raises(ValueError, match="H and W even"):
    models.max_pool2_channel_first(jnp.zeros((1, 1, 4, 5)))


@pytest.mark.parametrize("pool, shape", [
    ("max_pool2", (1, 4, 5, 1)), ("max_pool2_channel_first", (1, 1, 4, 5))])
def test_pools_reject_odd_sizes_under_differentiation_too(pool, shape):
  # The derivative rule reshapes before the function's own check runs.
  f = getattr(models, pool)
  with pytest.raises(ValueError, match="H and W even"):
    jax.grad(lambda x: f(x).sum())(jnp.zeros(shape))


def test_channel_first_pool_gives_a_nan_window_the_tangent_max_pool2_gives():
  # Window [1, NaN, 3, 2]: its value is NaN; max_pool2's rule finds no
  # maximum equal to it and gives a zero tangent, and so must this one.
  x = jnp.array([1., jnp.nan, 3., 2.]).reshape(1, 2, 2, 1)
  t = jnp.array([1., 10., 100., 1000.]).reshape(1, 2, 2, 1)
  nhwc = jax.jvp(models.max_pool2, (x,), (t,))[1]
  cf = jax.jvp(models.max_pool2_channel_first, (_cf(x),), (_cf(t),))[1]
  np.testing.assert_array_equal(cf.ravel(), nhwc.ravel())
  assert float(cf.squeeze()) == 0.


def test_max_pool2_rejects_odd_sizes():
  with pytest.raises(ValueError, match="H and W even"):
    models.max_pool2(jnp.zeros((1, 5, 4, 1)))
