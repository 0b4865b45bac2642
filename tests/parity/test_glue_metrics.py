"""GLUE metrics against scikit-learn and scipy on random inputs; the two averages on the
BERT-base row of the paper and of the GLUE leaderboard."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk

from flax_bert.tasks.glue import data as glue, metrics as gm

# BERT-base on the GLUE test sets (Devlin et al. 2019, Table 1; the leaderboard's row adds
# MRPC/QQP accuracy, STS-B Pearson and WNLI).
BERT_BASE = {"CoLA": {"mcc": 52.1}, "SST-2": {"accuracy": 93.5},
             "MRPC": {"f1": 88.9, "accuracy": 84.8}, "STS-B": {"pearson": 87.1, "spearman": 85.8},
             "QQP": {"f1": 71.2, "accuracy": 89.2}, "MNLI-m": {"accuracy": 84.6},
             "MNLI-mm": {"accuracy": 83.4}, "QNLI": {"accuracy": 90.5}, "RTE": {"accuracy": 66.4},
             "WNLI": {"accuracy": 65.1}}


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    for classes in (2, 3):
        labels, preds = rng.integers(0, classes, n), rng.integers(0, classes, n)
        preds[: n // 2] = labels[: n // 2]  # correlated, as a model's are
        assert gm.accuracy(preds, labels) == pytest.approx(sk.accuracy_score(labels, preds))
        assert gm.matthews_corrcoef(preds, labels) == pytest.approx(
            sk.matthews_corrcoef(labels, preds), abs=1e-12)
    labels, preds = rng.integers(0, 2, n), rng.integers(0, 2, n)
    assert gm.f1(preds, labels) == pytest.approx(sk.f1_score(labels, preds), abs=1e-12)


def test_degenerate_cases_match_sklearn():
    labels = np.array([0, 1, 1, 0])
    for preds in (np.zeros(4, int), np.ones(4, int)):  # one class predicted: MCC 0
        assert gm.matthews_corrcoef(preds, labels) == sk.matthews_corrcoef(labels, preds)
    zeros = np.zeros(4, int)
    assert gm.f1(zeros, zeros) == sk.f1_score(zeros, zeros, zero_division=0) == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_correlations_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, 50).astype(np.float32)  # STS-B-like scores, many ties
    preds = np.round(labels + rng.normal(0, 1.5, 50), 1)
    assert gm.pearson(preds, labels) == pytest.approx(stats.pearsonr(preds, labels)[0])
    rho = gm.spearman(preds, labels)
    ranks = stats.rankdata(preds), stats.rankdata(labels)  # ties: mean ranks
    assert rho == pytest.approx(np.corrcoef(*ranks)[0, 1])


def test_compute_and_task_scores():
    labels = np.array([1, 0, 1, 1])
    preds = np.array([1, 0, 0, 1])
    mrpc = gm.compute(glue.TASKS["MRPC"], preds, labels)
    assert mrpc == pytest.approx({"f1": 80.0, "accuracy": 75.0})
    assert gm.task_score(glue.TASKS["MRPC"], mrpc) == pytest.approx(77.5)
    assert set(gm.compute(glue.TASKS["STS-B"], preds + 0.5, labels)) == {"pearson", "spearman"}
    assert set(gm.compute(glue.TASKS["CoLA"], preds, labels)) == {"mcc"}


def test_averages_of_bert_base():
    # Devlin et al. Table 1: 84.6, 83.4, 71.2, 90.5, 93.5, 52.1, 85.8, 88.9, 66.4 -> 79.6
    assert round(gm.bert_paper_average(BERT_BASE), 1) == 79.6
    # The leaderboard's score: 9 task scores (MNLI the mean of m and mm), WNLI included.
    expected = np.mean([52.1, 93.5, (88.9 + 84.8) / 2, (87.1 + 85.8) / 2, (71.2 + 89.2) / 2,
                        (84.6 + 83.4) / 2, 90.5, 66.4, 65.1])
    assert gm.glue_score(BERT_BASE) == pytest.approx(expected)
    assert round(gm.glue_score(BERT_BASE), 1) == 78.3  # BERT-base's GLUE leaderboard score
    partial = {k: v for k, v in BERT_BASE.items() if k != "WNLI"}
    assert gm.glue_score(partial) is None and gm.bert_paper_average(partial) is not None


def test_table():
    table = gm.format_table(BERT_BASE).splitlines()
    assert table[0].split() == ["task", "metrics", "score"]
    assert [row.split()[0] for row in table[1:11]] == list(gm.EVAL_ORDER)
    assert table[3].split() == ["MRPC", "f1/accuracy", "88.9/84.8", "86.8"]
    assert table[-2].startswith("GLUE score") and table[-2].endswith("78.3")
    assert table[-1].startswith("BERT-paper average") and table[-1].endswith("79.6")
    assert gm.format_table({"RTE": {"accuracy": 70.0}}).splitlines()[-1].endswith(
        "n/a (missing MNLI-m, MNLI-mm, QQP, QNLI, SST-2, CoLA, STS-B, MRPC)")
