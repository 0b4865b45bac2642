"""The sequence-classification job: labelled text -> the engine -> eval accuracy and
macro-F1 -> a transformers BertForSequenceClassification folder.

    python finetune.py [--config configs/finetune.py] --workdir DIR

A fine-tune run folder holds what a pretraining one does (flax_bert.workdir) plus
finetune.json, books/ (the book task, when built) and hf/ (the export).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable

import jax
import ml_collections
import numpy as np

from flax_bert import distributed, hf, hf_layout, workdir as workdir_lib
from flax_bert.compute import Compute
from flax_bert.errors import UserError
from flax_bert.finetune import books, labelled, start as start_lib, steps as ft_steps
from flax_bert.training import engine, optimizer
from flax_bert.training.monitor import say

HEAD = "sequence_classification"
PLOTS = (("loss", ("loss",)), ("accuracy", ("accuracy", "macro_f1")))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs (or resumes) fine-tuning in `workdir`; returns the final eval metrics."""
    return engine.run_locked(_finetune, config, workdir)


def _finetune(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    t, paths = config.train, workdir_lib.Paths(workdir)
    export_dir = config.export_dir or paths.export
    if (config.export_dir and os.path.exists(os.path.join(export_dir, hf.SAFETENSORS_FILE))
            and not os.path.isdir(paths.checkpoints)):  # a started run's export is its own
        raise UserError(f"{export_dir} already holds a model.safetensors; choose another "
                        f"config.export_dir")
    columns = labelled.Columns(config.data.text_column, config.data.text_pair_column,
                               config.data.label_column)
    train_path, eval_path = data_paths(config, paths)
    train_examples = labelled.read_examples(train_path, columns)
    eval_examples = labelled.read_examples(eval_path, columns)
    labels = labelled.label_names(train_examples)

    start = start_lib.resolve_start(config, HEAD)
    model_config = dataclasses.replace(start.config, hidden_dropout_prob=t.dropout,
                                       attention_probs_dropout_prob=t.dropout)
    seq_len = config.data.max_seq_length
    if seq_len > model_config.max_position_embeddings:
        raise UserError(f"config.data.max_seq_length ({seq_len}) exceeds the model's "
                        f"max_position_embeddings ({model_config.max_position_embeddings})")
    start_lib.check_run_folder(workdir, start, labels)
    tokenizer = labelled.make_tokenizer(start.vocab, config.data.lowercase, seq_len)
    train_arrays = labelled.encode(train_examples, tokenizer, labels)
    eval_arrays = labelled.encode(eval_examples, tokenizer, labels)  # unknown labels: an error
    say(f"{len(labels)} labels, {len(train_examples.labels)} train and "
        f"{len(eval_examples.labels)} eval examples; starting from {start.description}")

    def write_files() -> None:
        model_config.to_json_file(paths.config)
        start_lib.write_run_file(paths, start, labels)
        workdir_lib.install_vocab(start.vocab, paths)

    model = hf_layout.make_model(model_config, HEAD, len(labels), Compute.from_config(t))
    tx, schedule = optimizer.make_optimizer(config.optimizer, t.steps)
    process, processes = jax.process_index(), jax.process_count()

    def evaluate(eval_on: Any, final: bool, batches: Iterable) -> dict[str, float]:
        """Accuracy, macro-F1 and loss over the whole eval set."""
        predictions, loss_sum = [], 0.0
        for local in batches:
            out = jax.device_get(eval_on(local))
            predictions.append(out["prediction"])
            loss_sum += float(np.sum(out["loss"]))
        n = len(eval_arrays["label"])
        return ft_steps.classification_metrics(eval_arrays["label"],
                                               np.concatenate(predictions)[:n], loss_sum)

    def export(params: Any) -> None:
        hf.save_pretrained(model_config, params, export_dir, vocab=paths.vocab, head=HEAD,
                           labels=labels)
        say(f"exported transformers BertForSequenceClassification to {export_dir}")

    job = engine.Job(
        model=model, seq_length=seq_len, tx=tx, schedule=schedule,
        train_step=ft_steps.train_step, eval_step=ft_steps.eval_step,
        train_iter=labelled.make_train_iterator(train_arrays, t.global_batch_size, config.seed,
                                                process, processes),
        eval_batches=lambda: labelled.eval_batches(eval_arrays, t.eval_batch_size, process,
                                                   processes),
        evaluate=evaluate, summarize=ft_steps.summarize_train, plots=PLOTS,
        init_params=None if start.encoder is None else lambda: {"bert": start.encoder},
        write_files=write_files, finish=export)
    return engine.run(job, config, workdir)


def data_paths(config: ml_collections.ConfigDict, paths: workdir_lib.Paths) -> tuple[str, str]:
    """(train, eval) files; the book task is built into WORKDIR/books when both are ''."""
    d = config.data
    if bool(d.train) != bool(d.eval):
        raise UserError("set both config.data.train and config.data.eval (a held-out file), "
                        "or neither (the book task)")
    if d.train:
        return d.train, d.eval
    if distributed.is_writer():
        counts = books.build(config.books, paths.books)
        say(f"book task in {paths.books}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    distributed.barrier("book task built")
    return (os.path.join(paths.books, books.TRAIN_FILE),
            os.path.join(paths.books, books.TEST_FILE))
