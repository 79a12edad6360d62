"""A plain sequential PyTorch program doing a simulator round's work.

The benchmark's peer (issue 15): what a researcher would write in PyTorch to
simulate k elastic-averaging workers on one machine, with PyTorch's own
layers and optimizers. Per round, for each worker j = 1..k in turn:

1. τ local steps, each on a minibatch of ``batch_size`` rows drawn uniformly
   from the worker's own shard: SGD with momentum (``torch.optim.SGD``,
   momentum 0.5 by default; the EASGD/EAMSGD family) or the authors'
   AdaHessian step (the Hessian diagonal by Hutchinson's estimator with one
   Rademacher probe, Hz by double backprop, then
   `torch_crosscheck.TorchAdaHessian`);
2. the elastic exchange with the master (algorithms.md §3, fixed α):
   ``θ_j ← θ_j − α(θ_j − θ_m)``, ``θ_m ← θ_m + α(θ_j − θ_m)``.

The simulator runs all local steps of a round first and then the exchanges
in a random order; doing each worker's exchange right after its steps is the
same work in a sequential program's natural order. Nothing here reproduces
the simulator's numbers (other random streams); it reproduces its *work*.

PyTorch is the optional extra (`pip install -e ".[torch]"`): this module
imports it at the top, and only `eahes_jax.peer_benchmark` imports this
module, inside a function.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from eahes_jax import torch_crosscheck as tc

MODELS = {"small_cnn": tc.TorchSmallCNN, "cnn": tc.TorchCNN}
OPTIMIZERS = ("sgd", "nesterov", "adahessian")


def available_cores() -> int:
  """The cores this process may run on (its CPU affinity), as XLA counts.

  XLA's CPU client sizes its intra-op thread pool by the schedulable CPUs of
  the process (its affinity mask), so giving torch this many threads makes
  both programs use the same cores (e.g. one under ``taskset -c 0``).
  """
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


def set_threads(num_threads: int | None = None) -> int:
  """Sets torch's intra-op threads (default: `available_cores`).

  Args:
    num_threads: threads for torch's intra-op parallelism.

  Returns:
    The number set.
  """
  num_threads = num_threads or available_cores()
  torch.set_num_threads(num_threads)
  return num_threads


def rademacher_probes(params: list[torch.Tensor]) -> list[torch.Tensor]:
  """One ±1 tensor per param, as the authors draw them (randint, 0 → −1)."""
  probes = [torch.randint_like(p, high=2) for p in params]
  for z in probes:
    z[z == 0] = -1
  return probes


class SequentialPeer:
  """k PyTorch workers and a master, stepped one after another.

  Attributes:
    workers: the k `torch.nn.Module`s, in train mode.
    optimizers: one optimizer per worker.
    master: the master's parameters, one tensor per worker parameter.
  """

  def __init__(self, model: str, optimizer: str, num_workers: int,
               images: np.ndarray, labels: np.ndarray, *,
               comm_period: int = 1, batch_size: int = 64, lr: float = 0.01,
               momentum: float = 0.5, alpha: float = 0.1, seed: int = 0,
               flax_params: Any = None, device: str = "cpu"):
    """Builds the workers, their optimizers, the master and the shards.

    Args:
      model: ``"small_cnn"`` or ``"cnn"``.
      optimizer: ``"sgd"`` (SGD with ``momentum``), ``"nesterov"`` (the same
        with Nesterov's momentum) or ``"adahessian"`` (the authors' step).
      num_workers: k.
      images: training images, NHWC float32 (N, 28, 28, 1).
      labels: int labels (N,).
      comm_period: τ, local steps per round.
      batch_size: minibatch per worker and step.
      lr: the local learning rate.
      momentum: SGD's momentum (the EASGD/EAMSGD family).
      alpha: the elastic moving rate α.
      seed: torch's random seed (initial weights, minibatches, probes,
        dropout).
      flax_params: optional flax params of the model for every worker and
        the master (default: torch's own initialisation).
      device: the torch device every tensor lives on (``"cpu"``,
        ``"cuda"``); ``run_rounds`` returns when its work there is done.
    """
    if model not in MODELS:
      raise ValueError(f"model must be one of {sorted(MODELS)}, got {model!r}")
    if optimizer not in OPTIMIZERS:
      raise ValueError(
          f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if num_workers < 1 or len(labels) < num_workers:
      raise ValueError(
          f"num_workers must be in [1, {len(labels)}], got {num_workers}")
    self.device = torch.device(device)
    torch.manual_seed(seed)
    self.comm_period = comm_period
    self.batch_size = batch_size
    self.alpha = alpha
    self.second_order = optimizer == "adahessian"
    self.images = tc.images_to_torch(images).to(self.device)
    self.labels = torch.from_numpy(np.asarray(labels, np.int64)).to(
        self.device)
    # Disjoint shards, as EASGD's and EAHES's partition (no overlap).
    self.shards = [s.to(self.device) for s in
                   torch.randperm(len(labels)).chunk(num_workers)]
    first = MODELS[model]()
    if flax_params is not None:
      tc.load_flax_params(first, flax_params)
    first.to(self.device)
    # Every worker starts as a copy of the master (paper §II).
    self.master = [p.detach().clone() for p in first.parameters()]
    self.workers = []
    self.optimizers = []
    for _ in range(num_workers):
      net = MODELS[model]()
      net.to(self.device)
      net.load_state_dict(first.state_dict())
      net.train()
      self.workers.append(net)
      if self.second_order:
        opt = tc.TorchAdaHessian(net.parameters(), lr=lr)
      else:
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum,
                              nesterov=optimizer == "nesterov")
      self.optimizers.append(opt)

  def _local_step(self, j: int) -> None:
    net, opt, shard = self.workers[j], self.optimizers[j], self.shards[j]
    rows = shard[torch.randint(len(shard), (self.batch_size,),
                               device=self.device)]
    loss = F.cross_entropy(net(self.images[rows]), self.labels[rows])
    if self.second_order:
      params = list(net.parameters())
      grads, diag = tc.hutchinson_diag_torch(loss, params,
                                             rademacher_probes(params))
      for p, g in zip(params, grads):
        p.grad = g
      opt.step(diag)
    else:
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()

  @torch.no_grad()
  def _exchange(self, j: int) -> None:
    for p, m in zip(self.workers[j].parameters(), self.master):
      diff = p - m
      p.sub_(diff, alpha=self.alpha)
      m.add_(diff, alpha=self.alpha)

  def run_rounds(self, num_rounds: int) -> None:
    """Runs ``num_rounds`` rounds: every worker's τ steps, then its exchange.

    Args:
      num_rounds: rounds to run.
    """
    for _ in range(num_rounds):
      for j in range(len(self.workers)):
        for _ in range(self.comm_period):
          self._local_step(j)
        self._exchange(j)
    if self.device.type == "cuda":  # Kernels run asynchronously there.
      torch.cuda.synchronize(self.device)
