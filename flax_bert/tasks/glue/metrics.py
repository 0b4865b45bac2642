"""GLUE's metrics, each task's score, the two averages, and the printed table.

Metrics as GLUE defines them (Wang et al. 2019): CoLA the Matthews correlation; MRPC and
QQP the F1 of the positive class (1) and accuracy; STS-B the Pearson and Spearman
correlations; accuracy elsewhere. The metric functions return fractions (as scikit-learn
and scipy do); `compute` and everything after it work in percent, as papers print them.

Results are keyed by evaluation name ("CoLA", ..., "MNLI-m", "MNLI-mm"; `Task.evals`).
Two averages, named for what they are:
  * `glue_score`: the GLUE leaderboard's score: each task's metrics averaged into a task
    score, MNLI's the mean of MNLI-m and MNLI-mm, then the mean of the 9 tasks.
  * `bert_paper_average`: the "Average" column of Devlin et al. 2019, Table 1: the mean
    of 9 entries, MNLI-m, MNLI-mm, QQP F1, QNLI, SST-2, CoLA, STS-B Spearman, MRPC F1, RTE
    (WNLI excluded).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from flax_bert.tasks.glue.data import GLUE_TASKS, TASKS, Task

# Evaluation name -> the metric that the BERT paper's Table 1 reports for it.
BERT_PAPER_ENTRIES = {"MNLI-m": "accuracy", "MNLI-mm": "accuracy", "QQP": "f1",
                      "QNLI": "accuracy", "SST-2": "accuracy", "CoLA": "mcc",
                      "STS-B": "spearman", "MRPC": "f1", "RTE": "accuracy"}
EVAL_TASKS = {name: task for task in TASKS.values() for name in task.evals.values()}
EVAL_ORDER = tuple(name for t in GLUE_TASKS for name in TASKS[t].evals.values())


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class (1); 0 when it is never predicted nor present."""
    pred, gold = np.asarray(predictions) == 1, np.asarray(labels) == 1  # [n]
    tp = np.sum(pred & gold)
    return float(2 * tp / (pred.sum() + gold.sum())) if tp else 0.0


def matthews_corrcoef(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation (its multi-class form, Gorodkin 2004); 0 when undefined."""
    classes, inverse = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    gold, pred = np.split(inverse, 2)  # [n] each, ids into classes
    confusion = np.zeros((len(classes), len(classes)), np.float64)  # [true, predicted]
    np.add.at(confusion, (gold, pred), 1)
    t, p, n = confusion.sum(1), confusion.sum(0), confusion.sum()  # [C], [C], []
    cov_tp = np.trace(confusion) * n - t @ p
    cov_pp, cov_tt = n * n - p @ p, n * n - t @ t
    return float(cov_tp / np.sqrt(cov_tt * cov_pp)) if cov_tt * cov_pp else 0.0


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(stats.pearsonr(predictions, labels)[0])


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their mean rank)."""
    return float(stats.spearmanr(predictions, labels)[0])


METRICS = {"accuracy": accuracy, "f1": f1, "mcc": matthews_corrcoef, "pearson": pearson,
           "spearman": spearman}


def compute(task: Task, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics in percent: predictions are class ids (scores for STS-B), [n]."""
    return {name: 100.0 * METRICS[name](predictions, labels) for name in task.metrics}


def task_score(task: Task, metrics: dict[str, float]) -> float:
    """The task's metrics averaged into one number (GLUE's rule for two-metric tasks)."""
    return float(np.mean([metrics[name] for name in task.metrics]))


def _missing(results: dict[str, dict[str, float]], names: tuple[str, ...]) -> list[str]:
    return [name for name in names if name not in results]


def glue_score(results: dict[str, dict[str, float]]) -> float | None:
    """The GLUE leaderboard's average of the 9 task scores (MNLI: mean of m and mm); None
    until every evaluation has a result."""
    if _missing(results, EVAL_ORDER):
        return None
    per_task = []
    for name in GLUE_TASKS:
        task = TASKS[name]
        per_task.append(np.mean([task_score(task, results[e]) for e in task.evals.values()]))
    return float(np.mean(per_task))


def bert_paper_average(results: dict[str, dict[str, float]]) -> float | None:
    """Devlin et al. 2019 Table 1's "Average" (9 entries, no WNLI); None until all exist."""
    if _missing(results, tuple(BERT_PAPER_ENTRIES)):
        return None
    return float(np.mean([results[e][m] for e, m in BERT_PAPER_ENTRIES.items()]))


def format_table(results: dict[str, dict[str, float]]) -> str:
    """One row per evaluation (its metrics and task score), then both averages."""
    rows = [("task", "metrics", "score")]
    for name in (n for n in EVAL_ORDER if n in results):
        task, metrics = EVAL_TASKS[name], results[name]
        rows.append((name, "/".join(task.metrics) + " " +
                     "/".join(f"{metrics[m]:.1f}" for m in task.metrics),
                     f"{task_score(task, metrics):.1f}"))
    for label, value, names in (
            ("GLUE score (9 tasks, MNLI = mean of m and mm)", glue_score(results), EVAL_ORDER),
            ("BERT-paper average (Devlin et al. Table 1, no WNLI)", bert_paper_average(results),
             tuple(BERT_PAPER_ENTRIES))):
        rows.append((label, "", f"{value:.1f}" if value is not None else
                     "n/a (missing " + ", ".join(_missing(results, names)) + ")"))
    widths = [max(len(r[i]) for r in rows[:-2]) for i in range(2)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}".rstrip() for r in rows[:-2]]
    lines += [f"{r[0]}  {r[2]}" for r in rows[-2:]]
    return "\n".join(lines)
