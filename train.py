"""Pretrains BERT (MLM + NSP).

    python train.py                                   # the default run, in ./runs/default
    python train.py --config configs/base.py --workdir runs/base --config.train.steps=1000

Rerunning a command with the same --workdir resumes from its newest checkpoint.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")
DEFAULT_WORKDIR = "runs/default"

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", DEFAULT_WORKDIR, "Directory for data cache, checkpoints, metrics.")
config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Run config file.", lock_config=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax and grain log every save at INFO
    from flax_bert.errors import UserError
    from flax_bert.training import loop

    try:
        loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
