r"""Runs one experiment on Ray: the master and every worker as processes.

Example (local Ray, no dashboard; 4 workers, dropped exchanges 1/3 of rounds):

  python -m experiments.train_distributed --method=DEAHES-O --model=mlp \
      --num_workers=4 --rounds=100 --out_dir=runs/ray_deahes

On a cluster (``ray start --head`` on one machine, ``ray start
--address=HEAD:6379`` on the others) add ``--ray_address=auto`` on the head.
The folder gets the simulator's config.json, metrics.jsonl (with wall_time_s)
and summary.json, plus the master's exchanges.jsonl and runtime.json.
"""

import sys

from absl import app
from absl import flags

from eahes_jax import config as config_lib
from eahes_jax import data as data_lib
from eahes_jax import experiment
from eahes_jax import methods

_D = config_lib.SimConfig()

_METHOD = flags.DEFINE_enum("method", _D.method, list(methods.methods()),
                            "Method to run (§7).")
_MODEL = flags.DEFINE_enum("model", _D.model, list(config_lib.MODELS),
                           "Network.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", _D.num_workers,
                                    "k, worker processes.")
_COMM_PERIOD = flags.DEFINE_integer("comm_period", _D.comm_period,
                                    "τ, local steps between exchanges.")
_ROUNDS = flags.DEFINE_integer("rounds", _D.rounds, "Rounds per worker.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", _D.batch_size,
                                   "Minibatch size per worker and step.")
_LR = flags.DEFINE_float("lr", None, "Local learning rate (default 0.01).")
_ALPHA = flags.DEFINE_float("alpha", _D.alpha, "Elastic moving rate α.")
_OVERLAP = flags.DEFINE_float("overlap_ratio", None,
                              "Shared data fraction (default: the method's).")
_FAILURE_RATE = flags.DEFINE_float("failure_rate", _D.failure_rate,
                                   "Fraction of rounds a worker fails.")
_FAILURE_MODEL = flags.DEFINE_enum(
    "failure_model", _D.failure_model, list(config_lib.FAILURE_MODELS),
    "Schedule of the failures (drawn from --seed as in the simulator).")
_FAILURE_MODE = flags.DEFINE_enum(
    "failure_mode", _D.failure_mode, list(config_lib.FAILURE_MODES),
    "disconnect: the exchange is dropped, the worker trains on; crash: the"
    " worker process is killed and Ray restarts it.")
_MEAN_OUTAGE = flags.DEFINE_float("mean_outage", _D.mean_outage,
                                  "Mean outage of the bursty model.")
_STRAGGLER_RATE = flags.DEFINE_float("straggler_rate", _D.straggler_rate,
                                     "Chance per round a worker straggles.")
_STRAGGLER_SLOWDOWN = flags.DEFINE_float(
    "straggler_slowdown", _D.straggler_slowdown,
    "A straggling round takes 1 / (1 - this) times as long (at most 10x).")
_SEED = flags.DEFINE_integer("seed", _D.seed, "Seed.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", _D.eval_every,
                                   "Rounds between the master's evaluations.")
_TRAIN_EVAL_SIZE = flags.DEFINE_integer(
    "train_eval_size", _D.train_eval_size,
    "Training examples whose loss is reported (0: all).")
_DATA_SOURCE = flags.DEFINE_enum("data_source", "auto",
                                 list(data_lib.SOURCES), "MNIST source.")
_MNIST_DIR = flags.DEFINE_string("mnist_dir", None,
                                 "Folder of the IDX files (or TFDS data_dir).")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Results folder.")
_RAY_ADDRESS = flags.DEFINE_string(
    "ray_address", None,
    "None: start a local Ray (no dashboard); 'auto' or host:port: join a"
    " running cluster.")
_ORDERED = flags.DEFINE_bool(
    "ordered", False,
    "Lockstep, exchanges in the simulator's order (reproduces it).")
_KILL_WORKER = flags.DEFINE_list(
    "kill_worker", [],
    "worker:round pairs: kill that worker's process once the master heard"
    " that round from it (Ray restarts it).")


def main(argv):
  experiment.binary_prologue(argv)
  # Imported here so that a missing Ray is a one-line error, not a traceback.
  from eahes_jax import ray_runtime  # pylint: disable=g-import-not-at-top
  try:
    kills = []
    for pair in _KILL_WORKER.value:
      worker, _, round_ = pair.partition(":")
      if not (worker.isdigit() and round_.isdigit()):
        raise config_lib.ConfigError(
            f"kill_worker must be worker:round pairs, got {pair!r}",
            "kill_worker")
      kills.append((int(worker), int(round_)))
    config = config_lib.SimConfig(
        method=_METHOD.value, model=_MODEL.value,
        num_workers=_NUM_WORKERS.value, comm_period=_COMM_PERIOD.value,
        rounds=_ROUNDS.value, batch_size=_BATCH_SIZE.value, lr=_LR.value,
        alpha=_ALPHA.value, overlap_ratio=_OVERLAP.value,
        failure_rate=_FAILURE_RATE.value, failure_model=_FAILURE_MODEL.value,
        failure_mode=_FAILURE_MODE.value, mean_outage=_MEAN_OUTAGE.value,
        straggler_rate=_STRAGGLER_RATE.value,
        straggler_slowdown=_STRAGGLER_SLOWDOWN.value, seed=_SEED.value,
        eval_every=_EVAL_EVERY.value, train_eval_size=_TRAIN_EVAL_SIZE.value)
    out_dir = _OUT_DIR.value or experiment.default_out_dir(config) + "_ray"
    ray_runtime.train(config, out_dir, data_source=_DATA_SOURCE.value,
                      mnist_dir=_MNIST_DIR.value,
                      ray_address=_RAY_ADDRESS.value, ordered=_ORDERED.value,
                      kills=kills)
  except experiment.EXPECTED_ERRORS + (ray_runtime.RayUnavailableError,) as e:
    sys.exit(experiment.main_error(e))


if __name__ == "__main__":
  app.run(main)
