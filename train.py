"""Pretrains BERT (MLM + NSP).

    python train.py                                   # the default run, in ./runs/default
    python train.py --config configs/base.py --workdir runs/base --config.train.steps=1000

Rerunning a command with the same --workdir resumes from its newest checkpoint; rerunning a
finished run says so and changes nothing. SIGTERM or Ctrl-C ends the run within seconds
with 128 + the signal number and a line saying how to resume (once it has trained, after
saving a checkpoint of the current step).
A workdir that holds a model (trained, or imported with `python -m flax_bert.hf import`)
continues it: only the --config.model.* flags given here are compared with it.
Mistakes on the command line or in the config end with one `error: ...` line and exit 2.
"""

import os
from typing import Any

from flax_bert.trainer import cli

if __name__ == "__main__":
    cli.exit_on_signals()  # before the imports: absl's alone take 0.3-0.5 s

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")


def parse_flags(argv: list[str], flag_values: Any = None) -> list[str]:
    return cli.parse_flags(argv, DEFAULT_CONFIG, "runs/default", flag_values)


def main(argv: list[str], flag_values: Any = None) -> None:
    config, workdir = cli.start(argv, flag_values)
    from flax_bert.tasks import pretraining

    with cli.reporting(workdir):
        pretraining.train_and_evaluate(
            config, workdir, explicit_model_fields=cli.overridden_model_fields(flag_values))


if __name__ == "__main__":
    from absl import app

    app.run(main, flags_parser=parse_flags)
