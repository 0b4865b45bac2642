"""The sequence-classification job: labelled text -> the engine -> eval accuracy and
macro-F1 -> a transformers BertForSequenceClassification folder.

    python finetune.py [--config configs/finetune.py] --workdir DIR

A fine-tune run folder holds what a pretraining one does (flax_bert.trainer.run_folder) plus
finetune.json, books/ (the book task, when built) and hf/ (the export).
"""

from __future__ import annotations

from typing import Any, Iterable

import ml_collections
import numpy as np

from flax_bert import hf, hf_names as hf_layout
from flax_bert.trainer import run_folder as workdir_lib
from flax_bert.compute import Compute
from flax_bert.tasks import (example_batches as batches, books, bundled_data as bundled,
                             labelled_text as labelled, model_start as start_lib)
from flax_bert.tasks import finetune_job as ft_job, finetune_steps as ft_steps
from flax_bert.trainer import loop as engine
from flax_bert.trainer.monitor import say

HEAD = "sequence_classification"
PLOTS = (("loss", ("loss",)), ("accuracy", ("accuracy", "macro_f1")))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs (or resumes) fine-tuning in `workdir`; returns the final eval metrics."""
    return engine.run_locked(_finetune, config, workdir)


def _finetune(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    t, paths = config.train, workdir_lib.Paths(workdir)
    export_dir = start_lib.export_dir(config, paths)
    columns = labelled.Columns(config.data.text_column, config.data.text_pair_column,
                               config.data.label_column)
    train_path, eval_path = bundled.data_paths(
        config.data, "the book task", lambda out: books.build(config.books, out), paths.books,
        (books.TRAIN_FILE, books.TEST_FILE))
    train_examples = labelled.read_examples(train_path, columns)
    eval_examples = labelled.read_examples(eval_path, columns)
    labels = labelled.label_names(train_examples)

    start = start_lib.resolve_start(config, HEAD)
    model_config = start_lib.fine_tuned_config(start, config)
    seq_len = config.data.max_seq_length
    start_lib.check_run_folder(workdir, start, labels)
    tokenizer = labelled.make_tokenizer(start.vocab, config.data.lowercase, seq_len)
    train_arrays = labelled.encode(train_examples, tokenizer, labels)
    eval_arrays = labelled.encode(eval_examples, tokenizer, labels)  # unknown labels: an error
    say(f"{len(labels)} labels, {len(train_examples.labels)} train and "
        f"{len(eval_examples.labels)} eval examples; starting from {start.description}")

    model = hf_layout.make_model(model_config, HEAD, len(labels), Compute.from_config(t))

    def evaluate(eval_on: Any, final: bool, local_batches: Iterable) -> dict[str, float]:
        """Accuracy, macro-F1 and loss over the whole eval set."""
        out = batches.gather(eval_on, local_batches, len(eval_arrays["label"]))
        return ft_steps.classification_metrics(eval_arrays["label"], out["prediction"],
                                               float(np.sum(out["loss"], dtype=np.float64)))

    def export(params: Any) -> None:
        hf.save_pretrained(model_config, params, export_dir, vocab=paths.vocab, head=HEAD,
                           labels=labels)
        say(f"exported transformers BertForSequenceClassification to {export_dir}")

    job = ft_job.make_job(config, paths, start, model_config, labels, model,
                          train_arrays=train_arrays, eval_arrays=eval_arrays,
                          loss=ft_steps.classification_loss, eval_step=ft_steps.eval_step,
                          evaluate=evaluate, plots=PLOTS, export=export)
    return engine.run(job, config, workdir)
