"""GLUE (`python finetune.py --config configs/glue.py`): the 9 tasks from one pretrained
model, with the usual recipe (transformers' run_glue.py as its README runs it: learning
rate 2e-5, batch 32, 3 epochs, 128 tokens; BERT's 10% warmup and dropout 0.1).

Each task (and learning rate) is its own run in WORKDIR/<TASK>/lr_<LR>/; the end writes
WORKDIR/glue_results.json, GLUE's submission files in WORKDIR/submission/ and prints the
table (flax_bert/tasks/glue/sweep.py). The other fields are configs/finetune.py's
(init, model, train, optimizer, mesh, checkpoint), with the changes below:
      python finetune.py --config configs/glue.py --workdir runs/glue \
          --config.init.checkpoint=BERT_DIR --config.glue.data_dir=GLUE_DIR \
          [--config.glue.tasks=CoLA,RTE] [--config.glue.learning_rates=5e-5,3e-5,2e-5]
"""

import ml_collections

from configs import finetune


def get_config() -> ml_collections.ConfigDict:
    config = finetune.get_config()
    config.job = "glue"
    del config.books, config.export_dir  # each run exports to its own hf/

    # ---- The tasks. -------------------------------------------------------------------------
    g = config.glue = ml_collections.ConfigDict()
    # GLUE's download (download_glue_data.py: DATA_DIR/CoLA/train.tsv, ..., MNLI's
    # dev_matched.tsv, diagnostic/diagnostic.tsv), or a folder holding each task's
    # `load_dataset("glue", name).save_to_disk(DATA_DIR/<name>)` (cola, sst2, ..., ax).
    g.data_dir = ""
    # Comma-separated, run in this order; any spelling (sst2, STS-B). AX, the diagnostic
    # set, is predicted by the MNLI run whenever its file is there.
    g.tasks = "CoLA,SST-2,MRPC,STS-B,QQP,MNLI,QNLI,RTE,WNLI"
    # Comma-separated: each task is fine-tuned at each, and keeps the one of its best dev
    # score (the GLUE score is then a best-of-sweep dev figure, as papers report it). The
    # BERT paper's sweep: 5e-5,4e-5,3e-5,2e-5.
    g.learning_rates = "2e-5"

    # ---- Inputs. -----------------------------------------------------------------------------
    d = config.data = ml_collections.ConfigDict()
    d.lowercase = True  # BertNormalizer lower-casing and accent stripping (the vocab's).
    d.max_seq_length = 128  # Tokens per example with [CLS]/[SEP]; longer pairs are cut.

    # ---- Training (per task). -------------------------------------------------------------
    t = config.train
    t.steps = 0  # 0: train.epochs over the task's train set; > 0: this many for every task.
    t.epochs = 3.0  # Passes over the train set (steps = epochs x train size / batch, up).
    t.global_batch_size = 32
    t.log_every = 100
    t.eval_every = 0  # Dev evaluations during a run (0: only at its end, the result).
    t.eval_batch_size = 128

    # ---- Optimizer: as configs/finetune.py; the learning rate is glue.learning_rates. ------
    o = config.optimizer
    del o.learning_rate, o.warmup_steps
    o.warmup_fraction = 0.1  # Of each run's steps: linear warmup, then linear decay to 0.
    o.b2 = 0.999

    config.checkpoint.every = 1000  # Steps between saves within a run.
    config.checkpoint.keep = 1
    return config
