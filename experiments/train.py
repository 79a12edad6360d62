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


from absl import app
from absl import flags

from eahes_jax import experiment
from eahes_jax import tensorboard_log
from experiments import cli
from experiments import config_flags

# One flag per SimConfig field (type, default and help from the dataclass).
_CONFIG = config_flags.define_config_flags()
_DATA_SOURCE, _MNIST_DIR = cli.define_data_flags()
# Listed in this binary's --help, not only under --helpfull.
flags.adopt_module_key_flags(config_flags)
flags.adopt_module_key_flags(cli)
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
  cli.binary_prologue(argv)
  try:
    config = config_flags.config_from_flags(_CONFIG)
    out_dir = _OUT_DIR.value or experiment.default_out_dir(config)
    experiment.run_experiment(
        config, out_dir, data_source=_DATA_SOURCE.value,
        mnist_dir=_MNIST_DIR.value, checkpoint_every=_CHECKPOINT_EVERY.value,
        resume=_RESUME.value,
        tensorboard_dir=tensorboard_log.resolve_dir(_TENSORBOARD_DIR.value,
                                                    out_dir))
  except cli.EXPECTED_ERRORS as e:
    cli.exit_with(e)


if __name__ == "__main__":
  app.run(main)
