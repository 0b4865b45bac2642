"""GLUE: the task table, readers of GLUE's TSV download and of Hugging Face's `glue`
dataset, and the test-submission files.

Two sources of one task:
  * GLUE's own distribution (`download_glue_data.py`): `GLUE_DIR/<TASK>/{train,dev,test}.tsv`
    (MNLI: dev_matched, dev_mismatched, test_matched, test_mismatched; AX:
    `GLUE_DIR/diagnostic/diagnostic.tsv`), read with the column layouts that
    google-research/bert's run_classifier.py and transformers' GLUE processors use, and
    like them with `csv.QUOTE_NONE` (QQP's and MNLI's quote characters are text).
  * a folder written by `load_dataset("glue", "<task>").save_to_disk(...)`: a DatasetDict
    (train / validation / test; MNLI validation_matched, ...), label -1 on test.

Class ids follow the HF dataset's ClassLabel order (e.g. MNLI entailment=0, neutral=1,
contradiction=2), so both sources give the same ids; `Task.tsv_labels` are the TSV's own
label strings in that order, which is also what a GLUE submission writes (0/1 for CoLA,
SST-2, MRPC, QQP, WNLI; label names for MNLI, AX, QNLI, RTE; scores for STS-B).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Any

import numpy as np

from flax_bert import files
from flax_bert.data import corpus
from flax_bert.errors import UserError

# Our split names (GLUE's file stems) -> the HF dataset's split names.
HF_SPLITS = {"train": "train", "dev": "validation", "dev_matched": "validation_matched",
             "dev_mismatched": "validation_mismatched", "test": "test",
             "test_matched": "test_matched", "test_mismatched": "test_mismatched"}
STSB_RANGE = (0.0, 5.0)  # STS-B similarity scores


@dataclasses.dataclass(frozen=True)
class Column:
    position: int  # index in a row (-1: the last column)
    header: str | None  # its name in the file's header row (None: headerless file)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a TSV file keeps its fields (positions as the reference processors read them)."""

    has_header: bool
    text: Column
    pair: Column | None = None
    label: Column | None = None  # None: unlabelled (test files)
    id: Column | None = None  # None: the row number is the id

    def columns(self) -> list[Column]:
        return [c for c in (self.text, self.pair, self.label, self.id) if c is not None]


@dataclasses.dataclass(frozen=True)
class Task:
    name: str  # GLUE's name: "MNLI"
    hf_name: str  # the HF `glue` config: "mnli"
    folder: str  # under GLUE_DIR
    hf_columns: tuple[str, ...]  # text (and pair) columns of the HF dataset
    labels: tuple[str, ...]  # class names in id order (HF ClassLabel); () = regression
    tsv_labels: tuple[str, ...]  # the TSV's label strings in the same order
    metrics: tuple[str, ...]  # averaged into the task score (flax_bert.tasks.glue.metrics)
    evals: dict[str, str]  # dev split -> the name of its results ("MNLI-m")
    tests: dict[str, str]  # test split -> submission file ("MNLI-m.tsv")
    labelled: Layout | None  # train and dev files (None: a test-only task)
    unlabelled: Layout  # test files
    skip_short_rows: bool = False  # QQP: rows with missing fields are skipped (as HF does)
    # split -> its file name where it is not `<split>.tsv`
    files: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def splits(self) -> tuple[str, ...]:
        return (*(("train",) if self.evals else ()), *self.evals, *self.tests)

    def file(self, split: str) -> str:
        return self.files.get(split, split + ".tsv")


def _c(position: int, header: str | None = None) -> Column:
    return Column(position, header)


_PAIR_TEST = Layout(True, _c(1, "sentence1"), _c(2, "sentence2"), id=_c(0, "index"))
_NLI = ("entailment", "neutral", "contradiction")

TASKS: dict[str, Task] = {t.name: t for t in (
    Task("CoLA", "cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"), ("0", "1"),
         ("mcc",), {"dev": "CoLA"}, {"test": "CoLA.tsv"},
         # train/dev: headerless (source, label, original label, sentence)
         labelled=Layout(False, _c(3), label=_c(1)),
         unlabelled=Layout(True, _c(1, "sentence"), id=_c(0, "index"))),
    Task("SST-2", "sst2", "SST-2", ("sentence",), ("negative", "positive"), ("0", "1"),
         ("accuracy",), {"dev": "SST-2"}, {"test": "SST-2.tsv"},
         labelled=Layout(True, _c(0, "sentence"), label=_c(1, "label")),
         unlabelled=Layout(True, _c(1, "sentence"), id=_c(0, "index"))),
    Task("MRPC", "mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
         ("0", "1"), ("f1", "accuracy"), {"dev": "MRPC"}, {"test": "MRPC.tsv"},
         labelled=Layout(True, _c(3, "#1 String"), _c(4, "#2 String"), _c(0, "Quality")),
         unlabelled=Layout(True, _c(3, "#1 String"), _c(4, "#2 String"), id=_c(0, "index"))),
    Task("STS-B", "stsb", "STS-B", ("sentence1", "sentence2"), (), (),
         ("pearson", "spearman"), {"dev": "STS-B"}, {"test": "STS-B.tsv"},
         labelled=Layout(True, _c(7, "sentence1"), _c(8, "sentence2"), _c(-1, "score"),
                         _c(0, "index")),
         unlabelled=Layout(True, _c(7, "sentence1"), _c(8, "sentence2"), id=_c(0, "index"))),
    Task("QQP", "qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"),
         ("0", "1"), ("f1", "accuracy"), {"dev": "QQP"}, {"test": "QQP.tsv"},
         labelled=Layout(True, _c(3, "question1"), _c(4, "question2"), _c(5, "is_duplicate"),
                         _c(0, "id")),
         unlabelled=Layout(True, _c(1, "question1"), _c(2, "question2"), id=_c(0, "id")),
         skip_short_rows=True),
    Task("MNLI", "mnli", "MNLI", ("premise", "hypothesis"), _NLI, _NLI, ("accuracy",),
         {"dev_matched": "MNLI-m", "dev_mismatched": "MNLI-mm"},
         {"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
         labelled=Layout(True, _c(8, "sentence1"), _c(9, "sentence2"), _c(-1, "gold_label"),
                         _c(0, "index")),
         unlabelled=Layout(True, _c(8, "sentence1"), _c(9, "sentence2"), id=_c(0, "index"))),
    Task("QNLI", "qnli", "QNLI", ("question", "sentence"), ("entailment", "not_entailment"),
         ("entailment", "not_entailment"), ("accuracy",), {"dev": "QNLI"}, {"test": "QNLI.tsv"},
         labelled=Layout(True, _c(1, "question"), _c(2, "sentence"), _c(-1, "label"),
                         _c(0, "index")),
         unlabelled=Layout(True, _c(1, "question"), _c(2, "sentence"), id=_c(0, "index"))),
    Task("RTE", "rte", "RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment"),
         ("entailment", "not_entailment"), ("accuracy",), {"dev": "RTE"}, {"test": "RTE.tsv"},
         labelled=Layout(True, _c(1, "sentence1"), _c(2, "sentence2"), _c(-1, "label"),
                         _c(0, "index")),
         unlabelled=_PAIR_TEST),
    Task("WNLI", "wnli", "WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment"),
         ("0", "1"), ("accuracy",), {"dev": "WNLI"}, {"test": "WNLI.tsv"},
         labelled=Layout(True, _c(1, "sentence1"), _c(2, "sentence2"), _c(-1, "label"),
                         _c(0, "index")),
         unlabelled=_PAIR_TEST),
    # The diagnostic set: test only, predicted by the MNLI model, submitted as AX.tsv.
    Task("AX", "ax", "diagnostic", ("premise", "hypothesis"), _NLI, _NLI, (), {},
         {"test": "AX.tsv"}, labelled=None, unlabelled=_PAIR_TEST,
         files={"test": "diagnostic.tsv"}),
)}
GLUE_TASKS = tuple(name for name in TASKS if name != "AX")  # the 9 of the GLUE score


def get_task(name: str) -> Task:
    """The task of a name in any spelling: "MNLI", "mnli", "sst2", "STS-B", "sts_b"."""
    key = name.lower().replace("-", "").replace("_", "")
    for task in TASKS.values():
        if key in (task.hf_name, task.name.lower().replace("-", "")):
            return task
    raise UserError(f"GLUE task {name!r} is unknown; use one of {', '.join(TASKS)}")


@dataclasses.dataclass(frozen=True)
class GlueExamples:
    """One split of a task: texts, second texts (pair tasks), labels and ids."""

    task: Task
    split: str
    path: str
    texts: list[str]
    pairs: list[str] | None
    label: np.ndarray | None  # [n] int32 class ids or float32 scores (STS-B); None: test
    ids: list[str]  # the file's index/id column (submissions), else the row number
    skipped: int = 0  # malformed rows skipped (QQP, as the reference code does)

    def __len__(self) -> int:
        return len(self.texts)


def read_split(source: str, task: Task | str, split: str) -> GlueExamples:
    """A split ("train", "dev", "test"; MNLI "dev_matched", "test_mismatched", ...) of a task
    from GLUE_DIR (the TSV download) or a `datasets` save_to_disk folder of the task."""
    task = get_task(task) if isinstance(task, str) else task
    if split not in task.splits:
        raise UserError(f"{task.name} has no split {split!r}; use one of "
                        f"{', '.join(task.splits)}")
    if corpus.is_dataset_dir(source):
        return _read_dataset(source, task, split)
    if not os.path.isdir(source):
        raise UserError(f"{source}: no such folder; pass GLUE_DIR (download_glue_data.py's "
                        f"output) or a `datasets` save_to_disk folder")
    folder = os.path.join(source, task.folder)
    if not os.path.isdir(folder):
        raise UserError(f"{source}: no folder {task.folder!r}; download {task.name} into "
                        f"{folder} (GLUE's download_glue_data.py --tasks {task.name})")
    return read_tsv(os.path.join(folder, task.file(split)), task, split)


def read_tsv(path: str, task: Task, split: str) -> GlueExamples:
    """One GLUE TSV file in the task's official layout (QUOTE_NONE: quotes are text)."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file; {task.name}'s folder holds "
                        f"{', '.join(task.file(s) for s in task.splits)} in GLUE's download")
    layout = task.unlabelled if split.startswith("test") else task.labelled
    rows = [(number, row) for number, row in enumerate(
        csv.reader(corpus.read_lines(path), delimiter="\t", quoting=csv.QUOTE_NONE), start=1)
        if row]
    if layout.has_header and rows:
        _check_header(path, task, rows[0][1], layout)
        rows = rows[1:]
    if not rows:
        raise UserError(f"{path}: no examples (empty file); use GLUE's {task.name} file")
    # fields a row needs: up to the last fixed column, and one more for a last-column label
    width = (max(c.position for c in layout.columns()) + 1
             + any(c.position < 0 for c in layout.columns()))
    texts, pairs, labels, ids, skipped = [], [] if layout.pair else None, [], [], 0
    for number, row in rows:
        if len(row) < width:
            if task.skip_short_rows:
                skipped += 1
                continue
            raise UserError(f"{path}:{number}: {len(row)} tab-separated fields, {task.name} "
                            f"has {width}; fix or remove the line")
        texts.append(row[layout.text.position])
        if pairs is not None:
            pairs.append(row[layout.pair.position])
        if layout.label:
            labels.append(_parse_label(f"{path}:{number}", task, row[layout.label.position]))
        ids.append(row[layout.id.position] if layout.id else str(len(ids)))
    label = (None if not layout.label else
             np.array(labels, np.float32 if task.is_regression else np.int32))
    return GlueExamples(task, split, path, texts, pairs, label, ids, skipped)


def _check_header(path: str, task: Task, header: list[str], layout: Layout) -> None:
    header = [header[0].lstrip("\ufeff"), *header[1:]]  # a byte-order mark (MRPC's files)
    for column in layout.columns():
        found = header[column.position] if -len(header) <= column.position < len(header) else None
        if found != column.header:
            where = "last column" if column.position < 0 else f"column {column.position + 1}"
            raise UserError(f"{path}: {where} of the header is {found!r}, {task.name} needs "
                            f"{column.header!r} there; use GLUE's own {task.name} file")


def _parse_label(where: str, task: Task, value: str) -> int | float:
    if task.is_regression:
        try:
            score = float(value)
        except ValueError:
            score = float("nan")
        if not STSB_RANGE[0] <= score <= STSB_RANGE[1]:
            raise UserError(f"{where}: score {value!r} is not a number in "
                            f"{STSB_RANGE[0]}-{STSB_RANGE[1]}; fix the line")
        return score
    if value not in task.tsv_labels:
        raise UserError(f"{where}: label {value!r} is not one of {task.name}'s "
                        f"({', '.join(task.tsv_labels)}); fix the line")
    return task.tsv_labels.index(value)


def _read_dataset(path: str, task: Task, split: str) -> GlueExamples:
    import datasets  # heavy import, only for dataset folders

    dd = datasets.load_from_disk(path)
    if not isinstance(dd, datasets.DatasetDict):
        raise UserError(f"{path}: holds one split; save the whole DatasetDict, e.g. "
                        f"load_dataset('glue', '{task.hf_name}').save_to_disk(...)")
    name = HF_SPLITS[split]
    if name not in dd:
        raise UserError(f"{path}: no split {name!r} (has {', '.join(dd)}); save "
                        f"load_dataset('glue', '{task.hf_name}') there")
    ds = dd[name]
    labelled = not split.startswith("test")
    for column in (*task.hf_columns, *(("label",) if labelled else ())):
        if column not in ds.column_names:
            raise UserError(f"{path}/{name}: no column {column!r} (has "
                            f"{', '.join(ds.column_names)}); save the HF glue/{task.hf_name} "
                            f"dataset there")
    feature = ds.features.get("label")
    names = tuple(getattr(feature, "names", None) or ())
    if labelled and not task.is_regression and names and names != task.labels:
        raise UserError(f"{path}/{name}: label names {list(names)} are not {task.name}'s "
                        f"{list(task.labels)}; save the HF glue/{task.hf_name} dataset there")
    label = None
    if labelled:
        label = np.asarray(ds["label"], np.float32 if task.is_regression else np.int32)
        bad = (~((label >= STSB_RANGE[0]) & (label <= STSB_RANGE[1])) if task.is_regression
               else (label < 0) | (label >= len(task.labels)))
        if bad.any():
            row = int(np.argmax(bad))
            raise UserError(f"{path}/{name}: row {row} has label {label[row]}, not one of "
                            f"{task.name}'s; fix the dataset or read a labelled split")
    ids = ([str(i) for i in ds["idx"]] if "idx" in ds.column_names
           else [str(i) for i in range(len(ds))])
    texts = list(ds[task.hf_columns[0]])
    if not texts:
        raise UserError(f"{path}/{name}: no examples (empty split); save the HF "
                        f"glue/{task.hf_name} dataset there")
    pairs = list(ds[task.hf_columns[1]]) if len(task.hf_columns) > 1 else None
    return GlueExamples(task, split, f"{path}/{name}", texts, pairs, label, ids)


def encode(examples: GlueExamples, tokenizer: Any) -> dict[str, np.ndarray]:
    """input_ids, token_type_ids, attention_mask [n, S] (and label [n] when labelled), with a
    tokenizer of flax_bert.tasks.labelled_text.make_tokenizer."""
    inputs = (list(zip(examples.texts, examples.pairs)) if examples.pairs is not None
              else examples.texts)
    encodings = tokenizer.encode_batch(inputs)
    arrays = {
        "input_ids": np.array([e.ids for e in encodings], np.int32),
        "token_type_ids": np.array([e.type_ids for e in encodings], np.int32),
        "attention_mask": np.array([e.attention_mask for e in encodings], np.int32),
    }
    if examples.label is not None:
        arrays["label"] = examples.label
    return arrays


def write_submission(out_dir: str, examples: GlueExamples, predictions: np.ndarray) -> str:
    """Writes the GLUE server's file of a test split (`index<TAB>prediction` rows: class ids
    as the task's TSV labels, STS-B scores clipped to 0-5); returns its path."""
    task = examples.task
    if examples.split not in task.tests:
        raise UserError(f"{task.name} split {examples.split!r} is not a test split; submit "
                        f"{', '.join(task.tests)}")
    predictions = np.asarray(predictions)  # [n] class ids or scores
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    if task.is_regression:
        values = [f"{v:.3f}" for v in np.clip(predictions, *STSB_RANGE)]
    else:
        values = [task.tsv_labels[int(v)] for v in predictions]
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, task.tests[examples.split])
    files.write_text(path, "index\tprediction\n"
                     + "".join(f"{i}\t{v}\n" for i, v in zip(examples.ids, values)))
    return path
