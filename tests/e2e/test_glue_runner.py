"""The GLUE runner end to end on generated GLUE-format data: all 9 tasks and AX from one
tiny pretrained model (the table, the results JSON, the submission files), STS-B's
regression export loaded by transformers, and a rerun that reads finished tasks back and
resumes an interrupted one to the same results, bit for bit."""

from __future__ import annotations

import csv
import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import glue as glue_config
from flax_bert import hf_names
from flax_bert.errors import Interrupted
from flax_bert.tasks import labelled_text as labelled
from flax_bert.tasks.glue import (data as glue, metrics as glue_metrics, sweep as glue_runner,
                                  task as glue_task)
from flax_bert.trainer import checkpoint
from flax_bert.trainer.run_folder import Paths
from tests import ckpt_helpers as h, downstream_fixtures as dx, finetune_fixtures as fx

SIZES = {"train": 16, "dev": 8, "test": 5}
SUBMITTED_BY = {name: task for task in glue.TASKS.values() for name in task.tests.values()}


@pytest.fixture(scope="module")
def glue_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    fx.write_pretrained(str(root / "pre"))
    tests = dx.write_glue_dir(str(root / "GLUE"), SIZES)
    return root, tests


def run_glue(root, workdir: str, *flags: str) -> tuple[dict, str]:
    """finetune.py --config configs/glue.py with `flags`, in this process; returns the
    results and what it printed."""
    config = h.with_flags(glue_config.get_config(), [
        *dx.GLUE_RUN, f"--config.init.checkpoint={root}/pre",
        f"--config.glue.data_dir={root}/GLUE", *flags])
    return dx.run_here(glue_runner.train_and_evaluate, config, workdir)


@pytest.fixture(scope="module")
def all_tasks(glue_root, tmp_path_factory):
    root, _ = glue_root
    workdir = str(tmp_path_factory.mktemp("glue_all") / "run")
    results, printed = run_glue(root, workdir)
    return workdir, results, printed


def test_all_nine_tasks(glue_root, all_tasks):
    root, test_rows = glue_root
    workdir, results, printed = all_tasks
    with open(Paths(workdir).glue_results) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(results))
    assert list(saved["dev"]) == list(glue_metrics.EVAL_ORDER)  # MNLI-m and MNLI-mm
    for name, metrics in saved["dev"].items():
        assert set(metrics) == set(glue_metrics.EVAL_TASKS[name].metrics)
        assert all(-100.0 <= v <= 100.0 for v in metrics.values())
    assert saved["glue_score"] == pytest.approx(glue_metrics.glue_score(saved["dev"]))
    assert saved["bert_paper_average"] == pytest.approx(
        glue_metrics.bert_paper_average(saved["dev"]))
    assert saved["learning_rate"] == dict.fromkeys(glue.GLUE_TASKS, 1e-3)
    table = glue_metrics.format_table(saved["dev"])
    assert table in printed and f"{saved['glue_score']:.1f}" in table.splitlines()[-2]

    # One submission file per test split (AX from the MNLI model): a row per test example,
    # the ids of the test file, labels as GLUE spells them.
    assert sorted(saved["submission_files"]) == sorted(test_rows)
    for name, rows in test_rows.items():
        with open(os.path.join(Paths(workdir).submission, name)) as f:
            submitted = list(csv.reader(f, delimiter="\t"))
        assert submitted[0] == ["index", "prediction"] and len(submitted) == rows + 1
        assert [r[0] for r in submitted[1:]] == [str(100 + i) for i in range(rows)]
        task = SUBMITTED_BY[name]
        for _, value in submitted[1:]:
            assert (0.0 <= float(value) <= 5.0 if task.is_regression
                    else value in task.tsv_labels)

    # Each task its own run folder: the trainer's files, its dev rows, its export.
    for name in glue.GLUE_TASKS:
        run = Paths(Paths(workdir).glue_run(name, 1e-3))
        rows = [json.loads(line) for line in open(run.metrics)]
        assert [r["step"] for r in rows if r["split"] == "eval"] == [4]
        assert os.path.isfile(os.path.join(run.export, "model.safetensors"))
        assert os.listdir(run.checkpoints) == ["4"]


def test_regression_export_loads_in_transformers(glue_root, all_tasks):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    root, _ = glue_root
    workdir, _, _ = all_tasks
    run = Paths(workdir).glue_run("STS-B", 1e-3)
    model = transformers.BertForSequenceClassification.from_pretrained(
        os.path.join(run, "hf"), attn_implementation="eager").eval()
    assert model.config.problem_type == "regression" and model.config.num_labels == 1

    dev = glue.read_split(str(root / "GLUE"), "STS-B", "dev")
    arrays = glue.encode(dev, labelled.make_tokenizer(str(root / "pre" / "vocab.txt"), True, 16))
    with torch.no_grad():
        theirs = model(**{k: torch.tensor(v, dtype=torch.long) for k, v in arrays.items()
                          if k != "label"}).logits.numpy()  # [n, 1]
    ours = hf_names.make_model(checkpoint.load_config(run), "sequence_classification", 1).apply(
        {"params": checkpoint.load_params(run)}, arrays["input_ids"], arrays["token_type_ids"],
        arrays["attention_mask"])
    np.testing.assert_allclose(theirs, np.asarray(ours), atol=1e-5)
    with torch.no_grad():  # its MSE loss on dev is the run's final dev loss
        loss = model(**{k: torch.tensor(v, dtype=torch.long) for k, v in arrays.items()
                        if k != "label"}, labels=torch.tensor(dev.label)).loss
    final = [json.loads(line) for line in open(Paths(run).metrics)][-1]
    assert final["split"] == "eval" and float(loss) == pytest.approx(final["loss"], rel=1e-5)


def test_rerun_reads_finished_tasks_back_and_resumes(glue_root, all_tasks, tmp_path):
    """A copy of the 9-task run without STS-B's folder: CoLA is read back, STS-B trained,
    stopped at step 2 and resumed, to the first run's numbers."""
    root, _ = glue_root
    reference, full, _ = all_tasks
    workdir = str(tmp_path / "run")
    shutil.copytree(reference, workdir)
    shutil.rmtree(Paths(workdir).glue_run("STS-B", 1e-3))
    cola = Paths(Paths(workdir).glue_run("CoLA", 1e-3))
    before = {name: open(os.path.join(cola.root, name), "rb").read()
              for name in ("metrics.jsonl", "results.json")}
    with pytest.raises(Interrupted, match="stopped after step 2"):
        run_glue(root, workdir, "--config.glue.tasks=CoLA,STS-B", "--config.train.stop_after=2")
    results, printed = run_glue(root, workdir, "--config.glue.tasks=CoLA,STS-B")
    assert "CoLA at learning rate 0.001: finished; results read from" in printed
    assert "resumed from" in printed and "at step 2" in printed
    for name, content in before.items():  # CoLA was not trained again
        assert open(os.path.join(cola.root, name), "rb").read() == content
    for name in ("CoLA", "STS-B"):  # the numbers of the uninterrupted run
        assert results["dev"][name] == full["dev"][name]
    ours, theirs = (checkpoint.load_params(Paths(w).glue_run("STS-B", 1e-3))
                    for w in (workdir, reference))
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    assert results["glue_score"] is None  # 2 of 9 tasks
    assert "n/a (missing SST-2" in printed


def test_read_task_from_saved_datasets(glue_root, tmp_path):
    """DATA_DIR/<name> save_to_disk folders (as load_dataset("glue", name) gives them):
    MNLI's splits and AX's test, which the MNLI run predicts; test splits only if there."""
    datasets = pytest.importorskip("datasets")
    root, _ = glue_root
    features = datasets.Features({
        "premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
        "label": datasets.ClassLabel(names=list(glue.TASKS["MNLI"].labels)),
        "idx": datasets.Value("int32")})

    def split(n: int, label: int) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"premise": [f"p{i}" for i in range(n)],
                                           "hypothesis": ["h"] * n, "label": [label] * n,
                                           "idx": list(range(n))}, features)

    datasets.DatasetDict({"train": split(3, 1), "validation_matched": split(2, 0),
                          "validation_mismatched": split(2, 2), "test_matched": split(2, -1),
                          "test_mismatched": split(1, -1)}).save_to_disk(str(tmp_path / "mnli"))
    datasets.DatasetDict({"test": split(4, -1)}).save_to_disk(str(tmp_path / "ax"))
    data = glue_task.read_task(str(tmp_path), glue.TASKS["MNLI"])
    assert len(data.train) == 3 and [len(d) for d in data.dev] == [2, 2]
    assert [(t.task.name, t.split, len(t)) for t in data.tests] == [
        ("MNLI", "test_matched", 2), ("MNLI", "test_mismatched", 1), ("AX", "test", 4)]
    # GLUE's TSV download without test files: no test sets, nothing to submit.
    no_tests = tmp_path / "tsv"
    shutil.copytree(root / "GLUE", no_tests)
    os.remove(no_tests / "RTE" / "test.tsv")
    assert glue_task.read_task(str(no_tests), glue.TASKS["RTE"]).tests == []
