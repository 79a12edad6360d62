"""The paper's CNNs and AdaHessian in PyTorch, for cross-checking.

An independent PyTorch implementation of docs/algorithms.md §1 (Hutchinson)
and §2 (AdaHessian), written from the notes to follow the same equations as
`eahes_jax.adahessian.scale_by_adahessian`, and the networks
(`eahes_jax.models.SmallCNN`, the paper's, §7, and `eahes_jax.models.CNN`)
as `torch.nn.Module`s, with exact conversion of parameter-shaped pytrees
between the two layouts. `experiments.crosscheck_torch` trains both side by
side; `eahes_jax.torch_peer` runs them as the benchmark's sequential peer.

PyTorch is an optional dependency (`pip install -e ".[torch]"`): this module
imports it at the top, and only `eahes_jax.torch_peer` imports this module,
which nothing imports when `eahes_jax` is imported.

Layouts (flax -> torch), all pure permutations, so conversion is exact both
ways:

- conv kernel: flax HWIO (5, 5, in, out) -> torch OIHW (out, in, 5, 5);
- dense kernel: flax (in, out) -> torch (out, in);
- the first dense layer's inputs: flax flattens NHWC activations, (h, w, c),
  torch NCHW ones, (c, h, w), so its rows are permuted as well (the shape
  (h, w, c) is the model's: `TorchSmallCNN.FLAT_HWC`, `TorchCNN.FLAT_HWC`);
- biases: unchanged.

The conversion applies to any pytree shaped like the parameters (gradients,
Hessian diagonals, Rademacher probes), since every equation of AdaHessian is
elementwise apart from the spatial average over a conv kernel's spatial axes,
which the permutation maps onto each other.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "PARAM_NAMES",
    "TorchAdaHessian",
    "TorchCNN",
    "TorchSmallCNN",
    "flax_to_torch",
    "hutchinson_diag_torch",
    "images_to_torch",
    "load_flax_params",
    "torch_to_flax",
]

# The torch parameter names, in the module's order (both CNNs).
PARAM_NAMES = ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
               "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")


class TorchSmallCNN(nn.Module):
  """`eahes_jax.models.SmallCNN` in PyTorch (NCHW input), 21,840 params.

  conv 10@5x5 -> max-pool 2 -> relu -> conv 20@5x5 -> max-pool 2 -> relu
  -> flatten -> dense 50 -> relu -> dense 10; VALID padding, stride 1, no
  dropout.
  """

  # The activation before flattening: (height, width, channels).
  FLAT_HWC = (4, 4, 20)

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
    self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
    self.fc1 = nn.Linear(320, 50)
    self.fc2 = nn.Linear(50, 10)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Maps images (B, 1, 28, 28) to logits (B, 10)."""
    x = F.relu(F.max_pool2d(self.conv1(x), 2))
    x = F.relu(F.max_pool2d(self.conv2(x), 2))
    x = torch.flatten(x, 1)
    x = F.relu(self.fc1(x))
    return self.fc2(x)


class TorchCNN(nn.Module):
  """`eahes_jax.models.CNN` in PyTorch (NCHW input), 1,199,882 params.

  PyTorch's MNIST example network: conv 32@3x3 -> relu -> conv 64@3x3 ->
  relu -> max-pool 2 -> dropout 0.25 -> flatten -> dense 128 -> relu ->
  dropout 0.5 -> dense 10; VALID padding, stride 1. Dropout acts in
  `train()` mode only, as flax's under ``train=True``.
  """

  # The activation before flattening: (height, width, channels).
  FLAT_HWC = (12, 12, 64)

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 32, kernel_size=3)
    self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
    self.dropout1 = nn.Dropout(0.25)
    self.fc1 = nn.Linear(9216, 128)
    self.dropout2 = nn.Dropout(0.5)
    self.fc2 = nn.Linear(128, 10)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Maps images (B, 1, 28, 28) to logits (B, 10)."""
    x = F.relu(self.conv1(x))
    x = F.relu(self.conv2(x))
    x = self.dropout1(F.max_pool2d(x, 2))
    x = torch.flatten(x, 1)
    x = self.dropout2(F.relu(self.fc1(x)))
    return self.fc2(x)


def images_to_torch(images: Any) -> torch.Tensor:
  """NHWC images (numpy or JAX) to a float32 NCHW torch tensor."""
  x = np.asarray(images, np.float32).transpose(0, 3, 1, 2)
  return torch.from_numpy(np.array(x, order="C"))


def _fc1_to_torch(kernel: np.ndarray, flat_hwc: Sequence[int]) -> np.ndarray:
  h, w, c = flat_hwc
  out = kernel.shape[-1]
  # Rows indexed (h, w, c) -> (c, h, w); then (in, out) -> (out, in).
  return kernel.reshape(h, w, c, out).transpose(2, 0, 1, 3).reshape(
      h * w * c, out).T


def _fc1_to_flax(weight: np.ndarray, flat_hwc: Sequence[int]) -> np.ndarray:
  h, w, c = flat_hwc
  out = weight.shape[0]
  return weight.T.reshape(c, h, w, out).transpose(1, 2, 0, 3).reshape(
      h * w * c, out)


def flax_to_torch(tree: Mapping[str, Any],
                  flat_hwc: Sequence[int] = TorchSmallCNN.FLAT_HWC
                  ) -> dict[str, torch.Tensor]:
  """A CNN-shaped flax pytree as torch tensors named like its params.

  Args:
    tree: a pytree with the structure of SmallCNN's or CNN's params
      ({"conv1": {"kernel", "bias"}, ..., "fc2": {...}}): params, gradients,
      probes.
    flat_hwc: the model's activation shape before flattening
      (`TorchSmallCNN.FLAT_HWC`, the default, or `TorchCNN.FLAT_HWC`).

  Returns:
    A dict from the names of `PARAM_NAMES` to contiguous torch tensors of the
    same dtype in torch's layout (values copied, bit for bit).
  """
  a = lambda layer, leaf: np.asarray(tree[layer][leaf])
  out = {
      "conv1.weight": a("conv1", "kernel").transpose(3, 2, 0, 1),
      "conv1.bias": a("conv1", "bias"),
      "conv2.weight": a("conv2", "kernel").transpose(3, 2, 0, 1),
      "conv2.bias": a("conv2", "bias"),
      "fc1.weight": _fc1_to_torch(a("fc1", "kernel"), flat_hwc),
      "fc1.bias": a("fc1", "bias"),
      "fc2.weight": a("fc2", "kernel").T,
      "fc2.bias": a("fc2", "bias"),
  }
  # np.array copies: the tensors own writable memory, not JAX's buffers.
  return {k: torch.from_numpy(np.array(v, order="C")) for k, v in out.items()}


def torch_to_flax(named: Mapping[str, torch.Tensor],
                  flat_hwc: Sequence[int] = TorchSmallCNN.FLAT_HWC
                  ) -> dict[str, dict[str, np.ndarray]]:
  """The inverse of `flax_to_torch`: numpy arrays in flax's structure.

  Args:
    named: a dict from the names of `PARAM_NAMES` to tensors (e.g. a
      `TorchSmallCNN`'s `state_dict()`).
    flat_hwc: as in `flax_to_torch`.

  Returns:
    {"conv1": {"kernel", "bias"}, ..., "fc2": {...}} of numpy arrays.
  """
  t = lambda name: named[name].detach().cpu().numpy()
  c = np.ascontiguousarray
  return {
      "conv1": {"kernel": c(t("conv1.weight").transpose(2, 3, 1, 0)),
                "bias": c(t("conv1.bias"))},
      "conv2": {"kernel": c(t("conv2.weight").transpose(2, 3, 1, 0)),
                "bias": c(t("conv2.bias"))},
      "fc1": {"kernel": c(_fc1_to_flax(t("fc1.weight"), flat_hwc)),
              "bias": c(t("fc1.bias"))},
      "fc2": {"kernel": c(t("fc2.weight").T), "bias": c(t("fc2.bias"))},
  }


def load_flax_params(module: nn.Module, params: Mapping[str, Any]) -> None:
  """Copies flax params into a `TorchSmallCNN` or `TorchCNN` (exactly)."""
  module.load_state_dict(flax_to_torch(params, module.FLAT_HWC))


def hutchinson_diag_torch(
    loss: torch.Tensor, params: Sequence[torch.Tensor],
    probes: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
  """Gradient and Hutchinson's diagonal z ⊙ Hz (docs/algorithms.md §1).

  As the authors do it: the gradient with `create_graph=True`, then Hz as the
  gradient of g·z (reverse over reverse); the probes are given, so that a
  cross-check can feed the probes JAX drew.

  Args:
    loss: a scalar computed from `params`.
    params: the tensors (requires_grad) whose Hessian diagonal is estimated.
    probes: one Rademacher tensor per param, same shapes.

  Returns:
    (gradients, diagonal estimates), detached, one per param.
  """
  grads = torch.autograd.grad(loss, params, create_graph=True)
  hz = torch.autograd.grad(grads, params, grad_outputs=list(probes))
  diag = [z * h for z, h in zip(probes, hz)]
  return [g.detach() for g in grads], [d.detach() for d in diag]


class TorchAdaHessian(torch.optim.Optimizer):
  """AdaHessian (docs/algorithms.md §2) as a torch optimizer.

  Per param, at step t with gradient g (`p.grad`) and diagonal D::

    D̄ = |D| averaged over dims 2.. when p.ndim >= 3 (OIHW: the spatial dims)
    m ← b1·m + (1 − b1)·g,  v ← b2·v + (1 − b2)·D̄²
    bc1 = 1 − b1^t,  bc2 = 1 − b2^t          (in float32)
    u = (m / bc1) / max((sqrt(v / bc2))^k + eps, tiny)  [+ wd·p]
    p ← p + (−lr)·u

  in the same order of float32 operations as `eahes_jax.adahessian`. The
  diagonal is passed to `step` rather than computed in it, so that the
  probes can be chosen by the caller (`hutchinson_diag_torch`).
  """

  def __init__(self, params, lr: float = 0.01,
               betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-4,
               weight_decay: float = 0.0, hessian_power: float = 1.0,
               spatial_average: bool = True):
    defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                    hessian_power=hessian_power,
                    spatial_average=spatial_average)
    super().__init__(params, defaults)

  @torch.no_grad()
  def step(self, hessian_diag: Sequence[torch.Tensor]) -> None:  # pylint: disable=arguments-differ
    """One update of every param from `p.grad` and `hessian_diag`.

    Args:
      hessian_diag: one diagonal estimate per param, in the order of the
        param groups' params.
    """
    diags = iter(hessian_diag)
    for group in self.param_groups:
      b1, b2 = group["betas"]
      k = group["hessian_power"]
      for p in group["params"]:
        d = next(diags)
        g = p.grad
        state = self.state[p]
        if not state:
          state["step"] = 0
          state["m"] = torch.zeros_like(p)
          state["v"] = torch.zeros_like(p)
        state["step"] += 1
        t = state["step"]
        d = d.abs()
        if group["spatial_average"] and d.ndim >= 3:
          d = d.mean(dim=tuple(range(2, d.ndim)), keepdim=True).expand_as(p)
        m = b1 * state["m"] + (1.0 - b1) * g
        v = b2 * state["v"] + (1.0 - b2) * (d * d)
        state["m"], state["v"] = m, v
        # In float32, as optax computes them.
        bc1 = 1.0 - torch.tensor(b1, dtype=torch.float32) ** t
        bc2 = 1.0 - torch.tensor(b2, dtype=torch.float32) ** t
        root = torch.sqrt(v / bc2)
        denom = root if k == 1 else root ** k
        denom = denom + group["eps"]
        denom = torch.clamp(denom, min=torch.finfo(denom.dtype).tiny)
        u = (m / bc1) / denom
        if group["weight_decay"] != 0:
          u = u + group["weight_decay"] * p
        p.add_(u * (-group["lr"]))
