"""One GLUE task at one learning rate, as one fine-tuning task of the trainer: the task's
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
from typing import Any, Callable, Iterable

import ml_collections
import numpy as np

from flax_bert import distributed, files, hf
from flax_bert.compute import Compute
from flax_bert.console import say
from flax_bert.data import corpus
from flax_bert.heads import BertForSequenceClassification
from flax_bert.tasks import example_batches, finetuning, labelled_text, model_start
from flax_bert.tasks.glue import data as glue_data, metrics as glue_metrics
from flax_bert.trainer import loop
from flax_bert.trainer.run_folder import Paths

HEAD = "sequence_classification"
DIAGNOSTIC = glue_data.TASKS["AX"]  # predicted by the MNLI model


@dataclasses.dataclass(frozen=True)
class TaskData:
    """A task's splits: train, its dev sets (task.evals order), the test sets present."""

    task: glue_data.Task
    train: glue_data.GlueExamples
    dev: list[glue_data.GlueExamples]
    tests: list[glue_data.GlueExamples]  # MNLI's include AX's diagnostic set when present


def source(data_dir: str, task: glue_data.Task) -> str:
    """Where a task is read from: DATA_DIR/<folder> or DATA_DIR/<hf_name> when that is a
    `datasets` save_to_disk folder of the task, else DATA_DIR (GLUE's download)."""
    for name in (task.folder, task.hf_name):
        if corpus.is_dataset_dir(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    return data_dir


def _has_split(where: str, task: glue_data.Task, split: str) -> bool:
    if corpus.is_dataset_dir(where):
        with open(os.path.join(where, "dataset_dict.json"), encoding="utf-8") as f:
            return glue_data.HF_SPLITS[split] in json.load(f)["splits"]
    return os.path.isfile(os.path.join(where, task.folder, task.file(split)))


def read_task(data_dir: str, task: glue_data.Task) -> TaskData:
    """A task's train and dev splits (their errors as UserErrors) and the test splits
    that are present."""
    where = source(data_dir, task)
    tests = [glue_data.read_split(where, task, split) for split in task.tests
             if _has_split(where, task, split)]
    if task.name == "MNLI":
        ax = source(data_dir, DIAGNOSTIC)
        if _has_split(ax, DIAGNOSTIC, "test"):
            tests.append(glue_data.read_split(ax, DIAGNOSTIC, "test"))
    return TaskData(task, glue_data.read_split(where, task, "train"),
                    [glue_data.read_split(where, task, split) for split in task.evals], tests)


def is_finished(run_dir: str) -> bool:
    return os.path.isfile(Paths(run_dir).results)


def read_results(run_dir: str) -> dict[str, Any]:
    with open(Paths(run_dir).results, encoding="utf-8") as f:
        return json.load(f)


def _arrays(examples: glue_data.GlueExamples, tokenizer: Any) -> dict[str, np.ndarray]:
    """Model inputs and label [n] (zeros for a test set: it is not scored)."""
    arrays = glue_data.encode(examples, tokenizer)
    dtype = np.float32 if examples.task.is_regression else np.int32
    arrays.setdefault("label", np.zeros(len(examples), dtype))
    return arrays


def _concat(arrays: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([a[key] for a in arrays]) for key in arrays[0]}


def run(config: ml_collections.ConfigDict, run_dir: str, start: model_start.Start,
        data: TaskData, learning_rate: float) -> dict[str, Any]:
    """Trains (or resumes) the task in `run_dir`; writes its submission files,
    results.json and hf/ export; returns the results."""
    task, paths = data.task, Paths(run_dir)
    labels = list(task.labels)  # [] for STS-B
    os.makedirs(run_dir, exist_ok=True)
    model_start.check_run_folder(run_dir, start, labels)
    config = finetuning.for_data(config, len(data.train), learning_rate)
    model_config = model_start.fine_tuned_config(start, config)
    tokenizer = labelled_text.make_tokenizer(start.vocab, config.data.lowercase,
                                             config.data.max_seq_length)
    train_arrays = _arrays(data.train, tokenizer)
    dev = [_arrays(examples, tokenizer) for examples in data.dev]
    say(f"{task.name} at learning rate {learning_rate:g}: {len(data.train)} train examples, "
        f"{config.train.steps} steps; dev " + ", ".join(
            f"{name} {len(e)}" for name, e in zip(task.evals.values(), data.dev)))
    model = BertForSequenceClassification(model_config, Compute.from_config(config.train),
                                          num_labels=len(labels) or 1)
    run_task = GlueRun(config, paths, start, model_config, labels, model, train_arrays,
                       _concat(dev), data=data,
                       test_arrays=[_arrays(examples, tokenizer) for examples in data.tests])
    loop.train_and_evaluate(run_task, config, run_dir)
    results = {"task": task.name, "learning_rate": learning_rate,
               "steps": config.train.steps, "score": run_task.final["score"],
               "dev": run_task.final["dev"]}
    if distributed.is_writer():
        for examples, predictions in zip(data.tests, run_task.final["tests"]):
            glue_data.write_submission(paths.submission, examples, predictions)
        files.write_json(paths.results, results, indent=1)  # last: the run is finished
    distributed.barrier(f"{task.name} finished")
    return results


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class GlueRun(finetuning.FineTuning):
    """One GLUE task's run: a sequence classifier (STS-B: one output and MSE) scored with
    GLUE's dev metrics; its final eval also predicts the test sets."""

    data: TaskData
    test_arrays: list[dict[str, np.ndarray]]
    final: dict[str, Any] = dataclasses.field(default_factory=dict)  # the final eval's

    def head_loss(self, logits: Any, batch: dict, total: int) -> tuple[Any, dict]:
        if self.data.task.is_regression:
            return finetuning.regression_loss(logits, batch, total)
        return finetuning.classification_loss(logits, batch, total)

    def eval_step(self, params: Any, batch: dict) -> dict:
        logits = self.outputs(params, batch, None)
        if self.data.task.is_regression:
            return finetuning.score_predictions(logits, batch)
        return finetuning.class_predictions(logits, batch)

    def evaluate(self, eval_on: Callable[[dict], Any], batches: Iterable[dict],
                 final: bool) -> dict[str, float]:
        """GLUE's metrics (percent) of each dev set, the task score and the loss; the final
        eval keeps its dev metrics and the test sets' predictions in `final`."""
        task = self.data.task
        out = example_batches.gather(eval_on, batches, len(self.eval_arrays["label"]))
        row, metrics, offset = {}, {}, 0
        for name, examples in zip(task.evals.values(), self.data.dev):
            predictions = out["prediction"][offset:offset + len(examples)]
            metrics[name] = glue_metrics.compute(task, predictions, examples.label)
            row.update({f"{name}/{metric}": v for metric, v in metrics[name].items()})
            offset += len(examples)
        row["score"] = float(np.mean([glue_metrics.task_score(task, m)
                                      for m in metrics.values()]))
        row["loss"] = float(np.sum(out["loss"], dtype=np.float64)) / offset
        if final:
            self.final["dev"], self.final["score"] = metrics, row["score"]
            self.final["tests"] = [
                example_batches.gather(eval_on, self.eval_batches(arrays),
                                       len(arrays["label"]))["prediction"]
                for arrays in self.test_arrays]
        return row

    def export(self, params: Any) -> None:
        regression = self.data.task.is_regression
        hf.save_pretrained(self.model_config, params, self.paths.export, vocab=self.paths.vocab,
                           head=HEAD, labels=self.labels or None,
                           problem_type="regression" if regression
                           else "single_label_classification")
