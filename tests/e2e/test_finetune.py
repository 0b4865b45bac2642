"""Fine-tuning: data reading and tokenization, metrics, the book task, the loop (exact
resume, the transformers export) and where the model starts."""

from __future__ import annotations

import csv
import json
import os

import jax
import numpy as np
import pytest

from flax_bert import hf
from flax_bert.data import split, vocab as vocab_lib
from flax_bert.errors import Interrupted
from flax_bert.tasks import (books, classification, example_batches as batches, finetuning,
                             labelled_text as labelled, model_start as start_lib)
from flax_bert.trainer import checkpoint
from tests import ckpt_helpers as h, finetune_fixtures as fx

COLUMNS = labelled.Columns("text", "text_pair", "label")


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 1, 2])
    predictions = np.array([0, 1, 1, 1])
    got = finetuning.classification_metrics(labels, predictions, loss_sum=2.0)
    # F1 per class: 0: 2*1/(1+2); 1: 2*1/(3+1); 2: 0 (never predicted, once true).
    assert got["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert got["accuracy"] == 0.5 and got["loss"] == 0.5
    # A class in neither labels nor predictions does not count (scikit-learn's macro).
    assert finetuning.classification_metrics(np.array([3, 3]), np.array([3, 3]), 0.0)[
        "macro_f1"] == 1.0


def test_formats_read_alike_and_tokenize_as_bert(tmp_path):
    rows = fx.write_task(str(tmp_path / "t.jsonl"), 6, seed=0, pairs=True)
    with open(tmp_path / "t.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["label", "text", "text_pair"])
        writer.writeheader()
        writer.writerows(rows)
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    read = [labelled.read_examples(str(tmp_path / name), COLUMNS) for name in ("t.jsonl", "t.csv", "ds")]
    for examples in read:
        assert examples.texts == [r["text"] for r in rows]
        assert examples.pairs == [r["text_pair"] for r in rows]
        assert examples.labels == [r["label"] for r in rows]
    assert labelled.label_names(read[0]) == ["animals", "food", "weather"]
    assert labelled.label_names(labelled.Examples("x", ["a"] * 3, None, ["10", "9", "b"])) == ["9", "10", "b"]

    vocab = fx.write_vocab(str(tmp_path / "vocab.txt"))
    tokens = vocab_lib.read_vocab(vocab)
    arrays = labelled.encode(read[0], labelled.make_tokenizer(vocab, True, 16), labelled.label_names(read[0]))
    for i, row in enumerate(rows):
        a, b = row["text"].split(), row["text_pair"].split()
        want = ["[CLS]", *a, "[SEP]", *b, "[SEP]"][:16]
        n = len(want)
        assert [tokens[t] for t in arrays["input_ids"][i][:n]] == want
        assert np.all(arrays["input_ids"][i][n:] == 0) and arrays["attention_mask"][i].sum() == n
        assert list(arrays["token_type_ids"][i][:n]) == [0] * (len(a) + 2) + [1] * (n - len(a) - 2)
    assert list(arrays["label"]) == [["animals", "food", "weather"].index(r["label"]) for r in rows]


def test_train_batches_are_epochs_of_permutations():
    arrays = {"label": np.arange(10), "input_ids": np.arange(10)[:, None]}
    it = batches.make_train_iterator(arrays, 5, seed=3)
    first = [next(it)["label"] for _ in range(4)]
    assert sorted(np.concatenate(first[:2])) == list(range(10))  # epoch 0
    assert sorted(np.concatenate(first[2:])) == list(range(10))  # epoch 1
    assert not np.array_equal(first[0], first[2])
    state = it.get_state()
    after = next(it)["label"]
    it2 = batches.make_train_iterator(arrays, 5, seed=3)
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["label"], after)


def test_book_task_from_held_out_chapters(tmp_path):
    from configs import finetune as ft_config

    task = ft_config.get_config().books
    counts = books.build(task, str(tmp_path))
    held = books.held_out_documents(task)
    assert len(held) == 7 and sum(len(d) for d in held.values()) == 55  # default: 0.15
    rows = {name: [json.loads(line) for line in open(tmp_path / f"{name}.jsonl")]
            for name in ("train", "test")}
    assert counts["train_passages"] == len(rows["train"]) and counts["test_documents"] >= 7
    assert {r["label"] for r in rows["train"]} == {r["label"] for r in rows["test"]} == set(held)
    # Every passage is 1-3 consecutive sentences of one held-out chapter; the chapters of
    # train and test are disjoint.
    where = {}
    for book, docs in held.items():
        for i, doc in enumerate(docs):
            assert split.is_held_out(doc, task.eval_fraction, task.prepare_seed)
            for n in (1, 2, 3):
                for s in range(len(doc) - n + 1):
                    where.setdefault(" ".join(doc[s:s + n]), set()).add((book, i))
    docs_of = {name: set() for name in rows}
    for name, split_rows in rows.items():
        for r in split_rows:
            found = where[r["text"]]  # short ones ("Chapter 1") occur in several books
            assert r["label"] in {b for b, _ in found}
            if len(found) == 1:
                docs_of[name] |= found
    assert not docs_of["train"] & docs_of["test"]
    assert len(docs_of["train"]) + len(docs_of["test"]) == 55
    assert books.build(task, str(tmp_path / "again")) == counts  # deterministic
    assert (tmp_path / "again" / "test.jsonl").read_text() == (tmp_path / "test.jsonl").read_text()


def _config(pretrained: str, train: str, eval_: str, **overrides):
    from configs import finetune as ft_config

    config = ft_config.get_config()
    config.init.checkpoint = pretrained
    config.data.train, config.data.eval = train, eval_
    h.with_flags(config, fx.TINY_RUN)
    for key, value in overrides.items():
        section, field = key.split("__")
        config[section][field] = value
    return config


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    fx.write_pretrained(str(root / "pre"))
    fx.write_task(str(root / "train.jsonl"), 40, seed=1)
    fx.write_task(str(root / "test.jsonl"), 12, seed=2)
    return root


def _rows(workdir) -> list[dict]:
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    timings = ("tokens_per_sec", "steps_per_sec", "eval_seconds", "save_seconds")
    return [{k: v for k, v in r.items() if k not in timings} for r in rows]


def test_finetune_resumes_exactly_and_exports_to_transformers(task, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    args = (str(task / "pre"), str(task / "train.jsonl"), str(task / "test.jsonl"))
    final = classification.train_and_evaluate(_config(*args), str(tmp_path / "once"))
    with pytest.raises(Interrupted, match="stopped after step 4"):
        classification.train_and_evaluate(_config(*args, train__stop_after=4), str(tmp_path / "twice"))
    assert classification.train_and_evaluate(_config(*args), str(tmp_path / "twice")) == final
    assert _rows(tmp_path / "once") == _rows(tmp_path / "twice")
    once, twice = (checkpoint.load_params(str(tmp_path / w)) for w in ("once", "twice"))
    jax.tree.map(np.testing.assert_array_equal, once, twice)

    # Started from the pretrained encoder: 8 steps of lr <= 1e-3 move a weight < 0.01.
    pre = checkpoint.load_params(str(task / "pre"))["bert"]["encoder"]["layers"]
    kernel = once["bert"]["encoder"]["layers"]["attention"]["self"]["query"]["kernel"]
    assert np.max(np.abs(kernel - pre["attention"]["self"]["query"]["kernel"])) < 0.01

    rows = _rows(tmp_path / "once")
    assert [r["step"] for r in rows if r["split"] == "eval"] == [4, 8]
    assert set(final) == {"loss", "accuracy", "macro_f1"}
    for name in ("loss.png", "accuracy.png", "finetune.json", "vocab.txt", "config.json"):
        assert (tmp_path / "once" / name).stat().st_size > 0

    out = tmp_path / "once" / "hf"
    model, info = transformers.BertForSequenceClassification.from_pretrained(
        out, output_loading_info=True, attn_implementation="eager")
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert model.config.id2label == {0: "animals", 1: "food", 2: "weather"}
    assert (out / "vocab.txt").read_text() == (task / "pre" / "vocab.txt").read_text()
    # transformers' tokenizer and model give our eval predictions.
    tokenizer = transformers.BertTokenizerFast.from_pretrained(out)
    examples = labelled.read_examples(str(task / "test.jsonl"), COLUMNS)
    enc = tokenizer(examples.texts, padding="max_length", max_length=16, truncation=True,
                    return_tensors="pt")
    with torch.no_grad():
        predictions = model.eval()(**enc).logits.argmax(-1).numpy()
    labels = labelled.label_ids(examples, ["animals", "food", "weather"])
    assert np.mean(predictions == labels) == pytest.approx(final["accuracy"])


def test_start_from_pretrained_or_scratch(task, tmp_path):
    config = _config(str(task / "pre"), "", "")
    start = start_lib.resolve_start(config, classification.HEAD)
    saved = checkpoint.load_params(str(task / "pre"))
    jax.tree.map(np.testing.assert_array_equal, start.encoder, saved["bert"])
    assert start.vocab == str(task / "pre" / "vocab.txt")
    config.init.from_scratch = True
    scratch = start_lib.resolve_start(config, classification.HEAD)
    assert scratch.encoder is None and scratch.config == start.config

    # A Hugging Face directory (here a BertForPreTraining export) starts the same encoder.
    hf_dir = str(tmp_path / "hf")
    hf.save_pretrained(start.config, saved, hf_dir, vocab=start.vocab)
    config.init.checkpoint, config.init.from_scratch = hf_dir, False
    with pytest.warns(UserWarning) as record:  # MLM/NSP heads dropped, classifier fresh
        from_hf = start_lib.resolve_start(config, classification.HEAD)
    assert any("not used by BertForSequenceClassification" in str(w.message) for w in record)
    jax.tree.map(np.testing.assert_array_equal, from_hf.encoder, saved["bert"])
    assert from_hf.vocab == os.path.join(hf_dir, "vocab.txt")
