"""Fine-tunes BERT: the job is the config's `job` field.

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

import functools
import importlib
import os

from absl import app

import train

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                              "finetune.py")
DEFAULT_WORKDIR = ""  # the job's own, below
# config.job -> (its module, its default --workdir)
JOBS = {"classification": ("flax_bert.tasks.classification", "runs/finetune"),
        "glue": ("flax_bert.tasks.glue.sweep", "runs/glue"),
        "squad": ("flax_bert.tasks.squad.task", "runs/squad")}


parse_flags = functools.partial(train.parse_flags, default_config=DEFAULT_CONFIG,
                                default_workdir=DEFAULT_WORKDIR)


def main(argv: list[str], flag_values: train.flags.FlagValues = train.FLAGS) -> None:
    job = flag_values.config.get("job", "classification")
    if job not in JOBS:
        train.fail(f"config.job {job!r} is unknown; use one of: {', '.join(JOBS)}")
    module, workdir = JOBS[job]
    flag_values.workdir = flag_values.workdir or workdir
    train.run(argv, importlib.import_module(module).train_and_evaluate, flag_values)


if __name__ == "__main__":
    train.exit_on_signals()
    app.run(main, flags_parser=parse_flags)
