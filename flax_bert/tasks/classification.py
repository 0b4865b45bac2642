"""Sequence classification as a task of the trainer: labelled text (the book task when
config.data names none) -> BertForSequenceClassification -> eval accuracy and macro-F1 ->
a transformers BertForSequenceClassification folder.

    python finetune.py [--config configs/finetune.py] --workdir DIR

A fine-tune run folder holds what a pretraining one does (flax_bert.trainer.run_folder)
plus finetune.json, books/ (the book task, when built) and hf/ (the export).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import ml_collections
import numpy as np

from flax_bert import hf
from flax_bert.compute import Compute
from flax_bert.console import say
from flax_bert.heads import BertForSequenceClassification
from flax_bert.tasks import books, bundled_data, example_batches, finetuning, labelled_text
from flax_bert.tasks import model_start
from flax_bert.trainer import loop
from flax_bert.trainer.run_folder import Paths

HEAD = "sequence_classification"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs (or resumes) fine-tuning in `workdir`; returns the final eval metrics."""
    with loop.run_folder(config, workdir) as workdir:
        return loop.train_and_evaluate(Classification.for_run(config, workdir), config, workdir)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Classification(finetuning.FineTuning):
    """A sequence classifier of labelled text; exported for transformers."""

    export_dir: str
    plots = (("loss", ("loss",)), ("accuracy", ("accuracy", "macro_f1")))

    @classmethod
    def for_run(cls, config: ml_collections.ConfigDict, workdir: str) -> Classification:
        """config.data's files (or the book task, built into the run folder), tokenized
        with the start's vocab; checked against the run folder before anything trains."""
        paths = Paths(workdir)
        export_dir = model_start.export_dir(config, paths)
        columns = labelled_text.Columns(config.data.text_column, config.data.text_pair_column,
                                        config.data.label_column)
        train_path, eval_path = bundled_data.data_paths(
            config.data, "the book task", lambda out: books.build(config.books, out),
            paths.books, (books.TRAIN_FILE, books.TEST_FILE))
        train_examples = labelled_text.read_examples(train_path, columns)
        eval_examples = labelled_text.read_examples(eval_path, columns)
        labels = labelled_text.label_names(train_examples)

        start = model_start.resolve_start(config, HEAD)
        model_config = model_start.fine_tuned_config(start, config)
        model_start.check_run_folder(workdir, start, labels)
        tokenizer = labelled_text.make_tokenizer(start.vocab, config.data.lowercase,
                                                 config.data.max_seq_length)
        train_arrays = labelled_text.encode(train_examples, tokenizer, labels)
        eval_arrays = labelled_text.encode(eval_examples, tokenizer, labels)  # unknown: error
        say(f"{len(labels)} labels, {len(train_examples.labels)} train and "
            f"{len(eval_examples.labels)} eval examples; starting from {start.description}")
        model = BertForSequenceClassification(model_config, Compute.from_config(config.train),
                                              num_labels=len(labels))
        return cls(config, paths, start, model_config, labels, model, train_arrays,
                   eval_arrays, export_dir=export_dir)

    def head_loss(self, logits: Any, batch: dict, total: int) -> tuple[Any, dict]:
        return finetuning.classification_loss(logits, batch, total)

    def eval_step(self, params: Any, batch: dict) -> dict:
        return finetuning.class_predictions(self.outputs(params, batch, None), batch)

    def evaluate(self, eval_on: Callable[[dict], Any], batches: Iterable[dict],
                 final: bool) -> dict[str, float]:
        """Accuracy, macro-F1 and loss over the whole eval set."""
        labels = self.eval_arrays["label"]
        out = example_batches.gather(eval_on, batches, len(labels))
        return finetuning.classification_metrics(labels, out["prediction"],
                                                 float(np.sum(out["loss"], dtype=np.float64)))

    def export(self, params: Any) -> None:
        hf.save_pretrained(self.model_config, params, self.export_dir, vocab=self.paths.vocab,
                           head=HEAD, labels=self.labels)
        say(f"exported transformers BertForSequenceClassification to {self.export_dir}")
