"""Fine-tunes BERT: the task is the config's `job` field.

    python finetune.py                                # the book task, from runs/default
    python finetune.py --config.init.from_scratch=True --workdir runs/finetune-scratch
    python finetune.py --workdir runs/sst --config.init.checkpoint=HF_DIR \
        --config.data.train=train.csv --config.data.eval=dev.csv
    python finetune.py --config configs/glue.py --workdir runs/glue \
        --config.init.checkpoint=BERT_DIR --config.glue.data_dir=GLUE_DIR
    python finetune.py --config configs/squad.py      # the cloze task, in runs/squad
    python finetune.py --config configs/squad.py --workdir runs/squad \
        --config.init.checkpoint=BERT_DIR --config.data.train=train-v1.1.json \
        --config.data.eval=dev-v1.1.json

Jobs: classification (configs/finetune.py; a transformers BertForSequenceClassification in
WORKDIR/hf), glue (configs/glue.py; every GLUE task, the results table and the submission
files), squad (configs/squad.py; SQuAD v1.1 / v2.0 EM and F1, a BertForQuestionAnswering).
The default --workdir is runs/finetune, runs/glue or runs/squad (by job). Rerunning a
command with the same --workdir resumes it; SIGTERM or Ctrl-C saves a
checkpoint first. Mistakes end with one `error: ...` line and exit 2.
"""

import importlib
import os
from typing import Any

from flax_bert.trainer import cli

if __name__ == "__main__":
    cli.exit_on_signals()  # before the imports: absl's alone take 0.3-0.5 s

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                              "finetune.py")
# config.job -> (its task module, its default --workdir)
JOBS = {"classification": ("flax_bert.tasks.classification", "runs/finetune"),
        "glue": ("flax_bert.tasks.glue.sweep", "runs/glue"),
        "squad": ("flax_bert.tasks.squad.task", "runs/squad")}


def parse_flags(argv: list[str], flag_values: Any = None) -> list[str]:
    return cli.parse_flags(argv, DEFAULT_CONFIG, "", flag_values)  # "": the job's own


def main(argv: list[str], flag_values: Any = None) -> None:
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    job = flag_values.config.get("job", "classification")
    if job not in JOBS:
        cli.fail(f"config.job {job!r} is unknown; use one of: {', '.join(JOBS)}")
    module, workdir = JOBS[job]
    flag_values.workdir = flag_values.workdir or workdir
    config, workdir = cli.start(argv, flag_values)
    with cli.reporting(workdir):
        importlib.import_module(module).train_and_evaluate(config, workdir)


if __name__ == "__main__":
    from absl import app

    app.run(main, flags_parser=parse_flags)
