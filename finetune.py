"""Fine-tunes BERT for sequence classification (one label per text or text pair).

    python finetune.py                                # the book task, from runs/default
    python finetune.py --config.init.from_scratch=True --workdir runs/finetune-scratch
    python finetune.py --workdir runs/sst --config.init.checkpoint=HF_DIR \
        --config.data.train=train.csv --config.data.eval=dev.csv

Rerunning a command with the same --workdir resumes from its newest checkpoint; the end of
a run evaluates on config.data.eval and writes a transformers BertForSequenceClassification
directory (WORKDIR/hf). Mistakes end with one `error: ...` line and exit 2.
"""

import functools
import os

from absl import app

import train

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                              "finetune.py")
DEFAULT_WORKDIR = "runs/finetune"


parse_flags = functools.partial(train.parse_flags, default_config=DEFAULT_CONFIG,
                                default_workdir=DEFAULT_WORKDIR)


def main(argv: list[str], flag_values: train.flags.FlagValues = train.FLAGS) -> None:
    from flax_bert.finetune import classification

    train.run(argv, classification.train_and_evaluate, flag_values)


if __name__ == "__main__":
    train.exit_on_signals()
    app.run(main, flags_parser=parse_flags)
