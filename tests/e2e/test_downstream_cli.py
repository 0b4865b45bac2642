"""Mistakes with finetune.py's GLUE and SQuAD jobs: one `error:` line, exit 2, nothing
written to the workdir (but its lock file). Through finetune.py's own flag parsing and
main, in this process; one case as a real process (what it prints is all it prints)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import finetune
from flax_bert.trainer.run_folder import LOCK_FILE
from tests import ckpt_helpers as h, downstream_fixtures as dx, finetune_fixtures as fx

GLUE = ["--config=configs/glue.py", "--config.glue.data_dir={root}/GLUE"]
SQUAD = ["--config=configs/squad.py", "--config.data.train={root}/train.json",
         "--config.data.eval={root}/dev.json"]
# name -> (flags ({root}: the fixture folder), expected fragment of the error line)
CASES = {
    "job": (["--config.job=ner"], "config.job 'ner' is unknown; use one of: classification, "
                                  "glue, squad"),
    "glue_task_name": ([*GLUE, "--config.glue.tasks=CoLA,SQuAD"], "GLUE task 'SQuAD' is unknown"),
    "glue_no_data_dir": ([*GLUE, "--config.glue.data_dir="], "config.glue.data_dir is ''"),
    "glue_task_folder": ([*GLUE, "--config.glue.data_dir={root}/no_rte",
                          "--config.glue.tasks=CoLA,RTE"],
                         "no_rte: no folder 'RTE'; download RTE into"),
    "glue_columns": ([*GLUE, "--config.glue.data_dir={root}/bad_header",
                      "--config.glue.tasks=SST-2"],
                     "SST-2/train.tsv: column 1 of the header is 'text', SST-2 needs 'sentence'"),
    "glue_label": ([*GLUE, "--config.glue.data_dir={root}/bad_label", "--config.glue.tasks=RTE"],
                   "RTE/dev.tsv:2: label 'maybe' is not one of RTE's (entailment, "
                   "not_entailment)"),
    "glue_learning_rates": ([*GLUE, "--config.glue.learning_rates=fast"],
                            "config.glue.learning_rates 'fast': give positive numbers"),
    "squad_answer": ([*SQUAD, "--config.data.eval={root}/moved.json"],
                     "moved.json: question 'q0': answer "),
    "squad_version": ([*SQUAD, "--config.data.train={root}/train-v2.json"],
                      "train-v2.json: question 'q2' has no answer (SQuAD v2.0); set "
                      "config.squad.version_2=True"),
    "squad_only_train": ([*SQUAD, "--config.data.eval="],
                         "set both config.data.train and config.data.eval"),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dcli")
    fx.write_pretrained(str(root / "pre"))
    dx.write_glue_dir(str(root / "GLUE"), {"train": 4, "dev": 2, "test": 0})
    shutil.copytree(root / "GLUE", root / "no_rte")
    shutil.rmtree(root / "no_rte" / "RTE")
    shutil.copytree(root / "GLUE", root / "bad_header")
    train_tsv = root / "bad_header" / "SST-2" / "train.tsv"
    train_tsv.write_text(train_tsv.read_text().replace("sentence\t", "text\t", 1))
    shutil.copytree(root / "GLUE", root / "bad_label")
    dev_tsv = root / "bad_label" / "RTE" / "dev.tsv"
    dev_tsv.write_text(dev_tsv.read_text().replace("\tentailment\n", "\tmaybe\n", 1))
    dx.write_squad(str(root / "train.json"), 4, seed=1)
    dx.write_squad(str(root / "dev.json"), 2, seed=2)
    dx.write_squad(str(root / "train-v2.json"), 4, seed=1, impossible_every=3)
    moved = json.loads((root / "dev.json").read_text())
    moved["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 1
    (root / "moved.json").write_text(json.dumps(moved))
    return root


def _args(root, workdir, extra: list[str]) -> list[str]:
    return [f"--workdir={workdir}", *(a.format(root=root) for a in extra), *dx.TINY,
            f"--config.init.checkpoint={root}/pre"]


@pytest.mark.parametrize("name", list(CASES))
def test_one_line_error(root, tmp_path, name):
    extra, expected = CASES[name]
    workdir = tmp_path / "run"
    code, stderr = h.cli_here(finetune, ["finetune.py", *_args(root, workdir, extra)])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert expected.format(root=root) in lines[0], lines[0]
    written = set(os.listdir(workdir)) - {LOCK_FILE} if workdir.exists() else set()
    assert not written, written


def test_one_line_error_from_a_process(root, tmp_path):
    extra, expected = CASES["glue_task_folder"]
    p = subprocess.run([sys.executable, "finetune.py", *_args(root, tmp_path / "run", extra)],
                       cwd=fx.ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.strip().startswith("error: "), p.stderr[-3000:]
    assert len(p.stderr.strip().splitlines()) == 1 and expected in p.stderr, p.stderr
