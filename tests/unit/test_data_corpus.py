"""Corpus reading: sentence rule, formats, gzip, `datasets` folders, and bad-input errors."""

import dataclasses
import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.data_fixtures import marker_corpus, read_split
from flax_bert.data import corpus, prepare as prepare_lib, split
from flax_bert.data.config import DataOptions
from flax_bert.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Mr. Darcy came. He left!", ["Mr. Darcy came.", "He left!"]),
        ('"Is it?" she said. "Yes." Then', ['"Is it?" she said.', '"Yes."', "Then"]),
        ("J. R. Smith wrote e.g. this. And 3 more.",
         ["J. R. Smith wrote e.g. this.", "And 3 more."]),
        ("no capital. after period", ["no capital. after period"]),
        ("Wrapped\nline one. Next\n  line.", ["Wrapped line one.", "Next line."]),
    ],
)
def test_split_sentences(text, expected):
    assert corpus.split_sentences(text) == expected


def test_formats_and_gzip(tmp_path):
    sentences = "First one.\nSecond one.\n\nOther doc.\nMore.\n"
    prose = (
        "A wrapped paragraph that goes on. It has two\nsentences over lines.\n\n"
        "Second paragraph here.\n\n\nNew document now. Yes.\n"
    )
    assert corpus.guess_format(sentences) == "sentences"
    assert corpus.guess_format(prose) == "paragraphs"
    assert corpus.text_to_documents(sentences, "auto") == [
        ["First one.", "Second one."], ["Other doc.", "More."]
    ]
    assert corpus.text_to_documents(prose, "auto") == [
        ["A wrapped paragraph that goes on.", "It has two sentences over lines.",
         "Second paragraph here."],
        ["New document now.", "Yes."],
    ]
    gz = tmp_path / "c.txt.gz"
    gz.write_bytes(gzip.compress(sentences.encode()))
    plain = tmp_path / "c.txt"
    plain.write_text(sentences.replace("\n", "\r\n"))  # CRLF reads as LF
    for path in (gz, plain):
        docs = [d for _, d in corpus.iter_raw_documents([str(path)], "auto", "text")]
        assert docs == [["First one.", "Second one."], ["Other doc.", "More."]]
    prose_gz = tmp_path / "p.txt.gz"
    prose_gz.write_bytes(gzip.compress(prose.encode()))
    docs = [d for _, d in corpus.iter_raw_documents([str(prose_gz)], "auto", "text")]
    assert docs == corpus.text_to_documents(prose, "auto")


def test_datasets_folder_gives_the_same_examples_as_text(tmp_path):
    datasets = pytest.importorskip("datasets")
    txt = str(tmp_path / "c.txt")
    marker_corpus(txt, num_docs=6, sentences=20)
    docs = open(txt).read().strip().split("\n\n")
    ds_dir = str(tmp_path / "ds")
    datasets.Dataset.from_dict({"body": docs}).save_to_disk(ds_dir)
    base = DataOptions().replace(
        vocab_size=500, max_seq_length=32, eval_fraction=0, num_workers=1, text_column="body"
    )
    m1 = prepare_lib.prepare(dataclasses.replace(base, input=(txt,)), str(tmp_path / "a"),
                             progress=False)
    vocab = str(tmp_path / "a" / "vocab.txt")  # same vocab: compare reading + tokenizing
    m2 = prepare_lib.prepare(dataclasses.replace(base, input=(ds_dir,), vocab=vocab),
                             str(tmp_path / "b"), progress=False)
    assert m1["num_documents"] == m2["num_documents"] == 6
    assert m1["num_train_examples"] == m2["num_train_examples"] > 0
    a, b = read_split(str(tmp_path / "a"), "train"), read_split(str(tmp_path / "b"), "train")
    for name in ("input_ids", "len_a", "next_sentence_label"):
        assert np.array_equal(a[name], b[name])
    with pytest.raises(UserError, match="no column 'text'"):
        prepare_lib.prepare(dataclasses.replace(base, input=(ds_dir,), text_column="text"),
                            str(tmp_path / "c"), progress=False)


def _bad_inputs(tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (path, expected message fragment)."""
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    one = tmp_path / "one.txt"
    one.write_text("Just a single sentence here.\n")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("Caf\xe9 au lait.\n\nOther doc.\n".encode("latin-1"))
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    cut = tmp_path / "cut.txt.gz"
    cut.write_bytes(gzip.compress(b"One sentence.\nTwo.\n\nOther doc.\n" * 200)[:60])
    return {
        "empty": (str(empty), "empty.txt: empty file"),
        "binary": (str(binary), "image.png: binary data (a NUL byte at offset 8), not text"),
        "truncated_gzip": (str(cut), "cut.txt.gz: cannot read (Compressed file ended"),
        "gcs_without_gcsfs": ("gs://some-bucket/corpus.txt",
                              "gs://some-bucket/corpus.txt: gs:// paths need the GCS filesystem"),
        "one_sentence": (str(one), "one.txt: 1 document(s); need at least 2"),
        "not_utf8": (str(latin), "latin1.txt: not UTF-8 (byte 0xe9 at offset 3)"),
        "missing": (str(tmp_path / "missing.txt"), "missing.txt: no such file"),
    }


@pytest.mark.parametrize("name", ["empty", "one_sentence", "not_utf8", "missing", "binary",
                                  "truncated_gzip", "gcs_without_gcsfs"])
def test_bad_input_is_a_one_line_user_error(tmp_path, name):
    path, message = _bad_inputs(tmp_path)[name]
    good = tmp_path / "good.txt"
    marker_corpus(str(good), num_docs=6, sentences=10)
    # The bad file after a good one: the error comes mid-way, and leaves no meta.json.
    opts = DataOptions().replace(input=(str(good), path), vocab_size=100, num_workers=1,
                                      eval_fraction=0)
    if name == "one_sentence":
        opts = dataclasses.replace(opts, input=(path,))
    with pytest.raises(UserError) as err:
        prepare_lib.prepare(opts, str(tmp_path / "out"), progress=False)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not os.path.exists(tmp_path / "out" / "meta.json")


def test_gcs_output_without_gcsfs_is_a_one_line_error(tmp_path):
    path = str(tmp_path / "c.txt")
    marker_corpus(path, num_docs=4, sentences=10)
    opts = DataOptions().replace(input=(path,), vocab_size=100, num_workers=1)
    with pytest.raises(UserError, match=r"^gs://b/prep: gs:// paths need the GCS filesystem; "
                                        r"pip install gcsfs"):
        prepare_lib.prepare(opts, "gs://b/prep", progress=False)


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    """Every bad input through the CLI's main (in this process); the first also as a real
    process (its exit code, no traceback)."""
    for i, (path, message) in enumerate(_bad_inputs(tmp_path).values()):
        argv = ["--input", path, "--output", str(tmp_path / "out"), "--vocab-size", "100",
                "--num-workers", "1"]
        if i == 0:
            proc = subprocess.run([sys.executable, "-m", "flax_bert.data.prepare", *argv],
                                  cwd=ROOT, capture_output=True, text=True)
            rc, stderr = proc.returncode, proc.stderr
        else:
            rc, stderr = prepare_lib.main(argv), capsys.readouterr().err
        assert rc == 2, stderr
        assert stderr.count("\n") == 1 and stderr.startswith("error: ")
        assert message in stderr and "Traceback" not in stderr


def test_cli_prepares(tmp_path):
    path = str(tmp_path / "c.txt")
    marker_corpus(path, num_docs=8, sentences=20)
    proc = subprocess.run(
        [sys.executable, "-m", "flax_bert.data.prepare", "--input", path, "--output",
         str(tmp_path / "out"), "--vocab-size", "300", "--max-seq-length", "32",
         "--num-workers", "1", "--eval-fraction", "0.25"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    meta = prepare_lib.json.load(open(tmp_path / "out" / "meta.json"))
    docs = [d for _, d in corpus.iter_raw_documents([path], "auto", "text")]
    held = sum(split.is_held_out(d, 0.25, DataOptions().prepare_seed) for d in docs)
    assert meta["num_eval_documents"] == held >= 2 and meta["num_train_documents"] == 8 - held
    assert meta["max_seq_length"] == 32 and meta["vocab_size"] <= 300
