"""Generated downstream data for the GLUE and SQuAD runner tests: a GLUE_DIR of all 9 tasks
and AX in the download's layouts (flax_bert.tasks.glue.data's table), SQuAD v1.1 / v2.0
files, and the flags of tiny runs."""

from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any, Callable

import numpy as np

from flax_bert.tasks.glue import data as glue
from tests import finetune_fixtures as fx

TOPICS = [words.split() for words in fx.TOPICS.values()]
# finetune.py flags of tiny GLUE and SQuAD runs (the rest from configs/glue.py, squad.py).
TINY = ["--config.data.max_seq_length=16", "--config.train.global_batch_size=8",
        "--config.train.steps=4", "--config.train.steps_per_call=2",
        "--config.train.log_every=2", "--config.train.eval_batch_size=8",
        "--config.checkpoint.every=4", "--config.train.tensorboard=False"]
GLUE_RUN = [*TINY, "--config.glue.learning_rates=1e-3"]
SQUAD_RUN = [*TINY, "--config.train.eval_every=2", "--config.squad.doc_stride=4",
             "--config.squad.max_query_length=4", "--config.squad.max_answer_length=3"]
SQUAD_QUESTION = "where is"  # + the word before the answer
SQUAD_EXTRA_VOCAB = ("where", "is", ".")


def _text(rng: np.random.Generator, topic: int) -> str:
    """4-7 words, mostly of one topic."""
    pool = TOPICS[topic % len(TOPICS)] + fx.FILLER
    return " ".join(rng.choice(pool, int(rng.integers(4, 8))))


def _row(layout: glue.Layout, fields: dict[str, str]) -> list[str]:
    """A TSV row (or header) of the layout: each column's field at its position."""
    columns = {"text": layout.text, "pair": layout.pair, "label": layout.label, "id": layout.id}
    width = (max(c.position for c in layout.columns()) + 1
             + any(c.position < 0 for c in layout.columns()))
    row = ["x"] * width
    for name, column in columns.items():
        if column is not None and name in fields:
            row[column.position] = fields[name]
    return row


def write_glue_dir(root: str, sizes: dict[str, int], seed: int = 0) -> dict[str, int]:
    """GLUE_DIR with every split of every task (sizes: train / dev / test rows; no test
    files for 0); a row's label picks its words' topic. Returns test rows by submission
    file name."""
    rng = np.random.default_rng(seed)
    tests = {}
    for task in glue.TASKS.values():
        os.makedirs(os.path.join(root, task.folder), exist_ok=True)
        for split in task.splits:
            test = split.startswith("test")
            layout = task.unlabelled if test else task.labelled
            n = sizes["test" if test else "train" if split == "train" else "dev"]
            if not n:
                continue
            lines = []
            if layout.has_header:
                lines.append(_row(layout, {k: c.header for k, c in
                                           (("text", layout.text), ("pair", layout.pair),
                                            ("label", layout.label), ("id", layout.id)) if c}))
            for i in range(n):
                k = i % (len(task.labels) or 3)  # STS-B: scores 0, 2.5, 5
                label = f"{2.5 * k:.1f}" if task.is_regression else task.tsv_labels[k]
                lines.append(_row(layout, {"text": _text(rng, k), "pair": _text(rng, k),
                                           "label": label, "id": str(100 + i)}))
            with open(os.path.join(root, task.folder, task.file(split)), "w") as f:
                f.writelines("\t".join(line) + "\n" for line in lines)
            if test:
                tests[task.tests[split]] = n
    return tests


def write_squad(path: str, num: int, seed: int, impossible_every: int = 0) -> list[dict]:
    """SQuAD-format questions "where is W": the answer is the word after W's one
    occurrence in a context of 12-16 vocab words (a few windows at 16 tokens); with
    impossible_every, every that many-th question asks for a word not in its context
    (v2.0)."""
    rng = np.random.default_rng(seed)
    words = sorted(fx.WORDS)
    paragraphs = []
    for i in range(num):
        n = int(rng.integers(12, 17))
        context_words = list(rng.permutation(words)[:n])
        asked = int(rng.integers(0, n - 1))
        question = f"{SQUAD_QUESTION} {context_words[asked]}"
        answers = []
        if impossible_every and i % impossible_every == impossible_every - 1:
            question = f"{SQUAD_QUESTION} {rng.choice(sorted(set(words) - set(context_words)))}"
        else:
            text = context_words[asked + 1]
            answers.append({"text": text,
                            "answer_start": len(" ".join(context_words[:asked + 1])) + 1})
        qa = {"id": f"q{i}", "question": question, "answers": answers}
        if impossible_every:
            qa["is_impossible"] = not answers
        paragraphs.append({"context": " ".join(context_words) + " .", "qas": [qa]})
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"version": "2.0" if impossible_every else "1.1",
                   "data": [{"title": "t", "paragraphs": paragraphs}]}, f)
    return paragraphs


def run_here(train_and_evaluate: Callable, config: Any, workdir: str) -> tuple[Any, str]:
    """A job's train_and_evaluate in this process: (what it returns, what it printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        result = train_and_evaluate(config, workdir)
    return result, out.getvalue()
