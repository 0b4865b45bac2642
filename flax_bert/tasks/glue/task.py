"""One GLUE task at one learning rate, as one fine-tuning run on the engine: the task's
splits (flax_bert.tasks.glue.data), a sequence classifier (STS-B: one output and MSE),
the dev metrics of GLUE (flax_bert.tasks.glue.metrics) as the eval rows, and at the end
the test predictions as submission files and a transformers export.

A finished run's folder holds results.json (read back by a rerun instead of training):
    {"task", "learning_rate", "steps", "score", "dev": {eval name: {metric: percent}}}
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable

import ml_collections
import numpy as np

from flax_bert import distributed, hf, hf_names as hf_layout
from flax_bert import files
from flax_bert.trainer import run_folder as workdir_lib
from flax_bert.compute import Compute
from flax_bert.data import corpus
from flax_bert.tasks import example_batches as batches, labelled_text as labelled, recipe
from flax_bert.tasks.glue import data as glue, metrics as glue_metrics
from flax_bert.tasks import (finetune_job as ft_job, model_start as start_lib, finetune_steps as ft_steps)
from flax_bert.trainer import loop as engine
from flax_bert.trainer.monitor import say

HEAD = "sequence_classification"
PLOTS = (("loss", ("loss",)),)  # one dev point a run (train.eval_every 0): no curve
DIAGNOSTIC = glue.TASKS["AX"]  # predicted by the MNLI model
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


@dataclasses.dataclass(frozen=True)
class TaskData:
    """A task's splits: train, its dev sets (task.evals order), the test sets present."""

    task: glue.Task
    train: glue.GlueExamples
    dev: list[glue.GlueExamples]
    tests: list[glue.GlueExamples]  # MNLI's include AX's diagnostic set when present


def source(data_dir: str, task: glue.Task) -> str:
    """Where a task is read from: DATA_DIR/<folder> or DATA_DIR/<hf_name> when that is a
    `datasets` save_to_disk folder of the task, else DATA_DIR (GLUE's download)."""
    for name in (task.folder, task.hf_name):
        if corpus.is_dataset_dir(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    return data_dir


def _has_split(where: str, task: glue.Task, split: str) -> bool:
    if corpus.is_dataset_dir(where):
        with open(os.path.join(where, "dataset_dict.json"), encoding="utf-8") as f:
            return glue.HF_SPLITS[split] in json.load(f)["splits"]
    return os.path.isfile(os.path.join(where, task.folder, task.file(split)))


def read_task(data_dir: str, task: glue.Task) -> TaskData:
    """A task's train and dev splits (their errors as UserErrors) and the test splits
    that are present."""
    where = source(data_dir, task)
    tests = [glue.read_split(where, task, split) for split in task.tests
             if _has_split(where, task, split)]
    if task.name == "MNLI":
        ax = source(data_dir, DIAGNOSTIC)
        if _has_split(ax, DIAGNOSTIC, "test"):
            tests.append(glue.read_split(ax, DIAGNOSTIC, "test"))
    return TaskData(task, glue.read_split(where, task, "train"),
                    [glue.read_split(where, task, split) for split in task.evals], tests)


def is_finished(run_dir: str) -> bool:
    return os.path.isfile(workdir_lib.Paths(run_dir).results)


def read_results(run_dir: str) -> dict[str, Any]:
    with open(workdir_lib.Paths(run_dir).results, encoding="utf-8") as f:
        return json.load(f)


def _arrays(examples: glue.GlueExamples, tokenizer: Any) -> dict[str, np.ndarray]:
    """Model inputs and label [n] (zeros for a test set: it is not scored)."""
    arrays = glue.encode(examples, tokenizer)
    dtype = np.float32 if examples.task.is_regression else np.int32
    arrays.setdefault("label", np.zeros(len(examples), dtype))
    return arrays


def _concat(arrays: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([a[key] for a in arrays]) for key in arrays[0]}


def run(config: ml_collections.ConfigDict, run_dir: str, start: start_lib.Start,
        data: TaskData, learning_rate: float) -> dict[str, Any]:
    """Trains (or resumes) the task in `run_dir`; writes its submission files,
    results.json and hf/ export; returns the results."""
    task, paths = data.task, workdir_lib.Paths(run_dir)
    labels = list(task.labels)  # [] for STS-B
    os.makedirs(run_dir, exist_ok=True)
    start_lib.check_run_folder(run_dir, start, labels)
    config = recipe.for_data(config, len(data.train), learning_rate)
    t = config.train
    model_config = start_lib.fine_tuned_config(start, config)
    tokenizer = labelled.make_tokenizer(start.vocab, config.data.lowercase,
                                        config.data.max_seq_length)
    train_arrays = _arrays(data.train, tokenizer)
    dev = [_arrays(examples, tokenizer) for examples in data.dev]
    tests = [_arrays(examples, tokenizer) for examples in data.tests]
    dev_arrays = _concat(dev)
    say(f"{task.name} at learning rate {learning_rate:g}: {len(data.train)} train examples, "
        f"{t.steps} steps; dev " + ", ".join(f"{name} {len(e)}" for name, e in
                                              zip(task.evals.values(), data.dev)))
    regression = task.is_regression
    eval_step = ft_steps.regression_eval_step if regression else ft_steps.eval_step
    model = hf_layout.make_model(model_config, HEAD, len(labels) or 1, Compute.from_config(t))
    final: dict[str, Any] = {}  # the final eval's dev metrics and test predictions

    def evaluate(eval_on: Any, is_final: bool, local_batches: Iterable) -> dict[str, float]:
        """GLUE's metrics (percent) of each dev set, the task score and the loss."""
        out = batches.gather(eval_on, local_batches, len(dev_arrays["label"]))
        row, metrics, offset = {}, {}, 0
        for name, examples in zip(task.evals.values(), data.dev):
            predictions = out["prediction"][offset:offset + len(examples)]
            metrics[name] = glue_metrics.compute(task, predictions, examples.label)
            row.update({f"{name}/{metric}": v for metric, v in metrics[name].items()})
            offset += len(examples)
        row["score"] = float(np.mean([glue_metrics.task_score(task, m)
                                      for m in metrics.values()]))
        row["loss"] = float(np.sum(out["loss"], dtype=np.float64)) / offset
        if is_final:
            final["dev"], final["score"] = metrics, row["score"]
            final["tests"] = [batches.gather(eval_on, ft_job.eval_batches(config, arrays),
                                             len(arrays["label"]))["prediction"]
                              for arrays in tests]
        return row

    def export(params: Any) -> None:
        hf.save_pretrained(model_config, params, paths.export, vocab=paths.vocab, head=HEAD,
                           labels=labels or None,
                           problem_type="regression" if regression
                           else "single_label_classification")

    job = ft_job.make_job(
        config, paths, start, model_config, labels, model, train_arrays=train_arrays,
        eval_arrays=dev_arrays, eval_step=eval_step, evaluate=evaluate, plots=PLOTS,
        loss=ft_steps.regression_loss if regression else ft_steps.classification_loss,
        export=export)
    engine.run(job, config, run_dir)
    results = {"task": task.name, "learning_rate": learning_rate, "steps": t.steps,
               "score": final["score"], "dev": final["dev"]}
    if distributed.is_writer():
        for examples, predictions in zip(data.tests, final["tests"]):
            glue.write_submission(paths.submission, examples, predictions)
        files.write_json(paths.results, results, indent=1)  # written last: the run is finished
    distributed.barrier(f"{task.name} finished")
    return results
