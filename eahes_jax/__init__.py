"""eahes_jax: elastic averaging with AdaHessian and dynamic weighting, in JAX.

A reimplementation of Xu & Carr, "A Dynamic Weighting Strategy to Mitigate
Worker Node Failure in Distributed Deep Learning". The flat public API:

* second order: ``hutchinson_diag``, ``adahessian``, ``scale_by_adahessian``;
  a minibatch's terms in parts: ``mean_over_micro_batches``;
* distributed core: ``exchange``, ``log_distance``, the weighting policies
  ``fixed_weighting``, ``oracle_weighting``, ``dynamic_weighting`` with
  ``h1``/``h2``/``raw_score``, and the failure models;
* engine: ``SimConfig``, ``Simulation``, ``run`` and, as pure functions,
  ``make_engine``/``make_round``/``make_chunk``; the methods
  (``registered_methods()``, ``PAPER_METHODS``, ``register_method``);
* data and models: ``load_mnist``, ``overlap_partition``, ``get_model``,
  ``winograd_conv3x3``.
"""

from eahes_jax.adahessian import adahessian
from eahes_jax.adahessian import elastic_adam
from eahes_jax.adahessian import scale_by_adahessian
from eahes_jax.adahessian import ScaleByAdaHessianState
from eahes_jax.adahessian import spatial_average_abs
from eahes_jax.config import ConfigError
from eahes_jax.config import SimConfig
from eahes_jax.data import DataError
from eahes_jax.data import load_mnist
from eahes_jax.data import MNIST
from eahes_jax.elastic import exchange
from eahes_jax.elastic import log_distance
from eahes_jax.elastic import peer_mean_estimate
from eahes_jax.elastic import tree_sq_distance
from eahes_jax.failures import bernoulli
from eahes_jax.failures import bursty
from eahes_jax.failures import FailureModel
from eahes_jax.failures import get_failure_model
from eahes_jax.failures import no_failures
from eahes_jax.failures import RoundFailures
from eahes_jax.failures import schedule as failure_schedule
from eahes_jax.failures import stragglers
from eahes_jax.hessian import hutchinson_diag
from eahes_jax.hessian import rademacher_like
from eahes_jax.methods import get_method
from eahes_jax.methods import Method
from eahes_jax.methods import methods as registered_methods
from eahes_jax.methods import PAPER_METHODS
from eahes_jax.methods import register_method
from eahes_jax.microbatch import mean_over_micro_batches
from eahes_jax.models import CNN
from eahes_jax.models import Conv2D
from eahes_jax.models import get_model
from eahes_jax.models import init_params
from eahes_jax.models import MLP
from eahes_jax.models import param_count
from eahes_jax.models import SmallCNN
from eahes_jax.partition import label_skew_partition
from eahes_jax.partition import overlap_partition
from eahes_jax.simulator import Engine
from eahes_jax.simulator import EvalMetrics
from eahes_jax.simulator import History
from eahes_jax.simulator import make_chunk
from eahes_jax.simulator import make_engine
from eahes_jax.simulator import make_evaluate
from eahes_jax.simulator import make_init
from eahes_jax.simulator import make_local_steps
from eahes_jax.simulator import make_round
from eahes_jax.simulator import NonFiniteError
from eahes_jax.simulator import RoundMetrics
from eahes_jax.simulator import run
from eahes_jax.simulator import Simulation
from eahes_jax.simulator import SimState
from eahes_jax.weighting import dynamic as dynamic_weighting
from eahes_jax.weighting import fixed as fixed_weighting
from eahes_jax.weighting import get_policy
from eahes_jax.weighting import h1
from eahes_jax.weighting import h2
from eahes_jax.weighting import oracle as oracle_weighting
from eahes_jax.weighting import ORACLE_VARIANTS
from eahes_jax.weighting import raw_score
from eahes_jax.weighting import Weights
from eahes_jax.weighting import WeightingInputs
from eahes_jax.weighting import WeightingPolicy
from eahes_jax.winograd import conv3x3 as winograd_conv3x3

__version__ = "0.1.0"
