"""The cloze task from pretraining's held-out chapters: deterministic, SQuAD-readable,
answers are spans of their passages, every question has its blank, dev and train chapters
are disjoint, and the guesses without a model score low."""

import json
import re

import pytest

from flax_bert.data import split
from configs import squad as squad_config
from flax_bert.tasks import books
from flax_bert.tasks.squad import cloze, data as squad

TASK = squad_config.get_config().cloze
WORDS = re.compile(r"[^\W\d_]+")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("cloze")
    counts = cloze.build(TASK, str(out))
    files = {name: json.loads((out / f"{name}.json").read_text()) for name in ("train", "dev")}
    return out, counts, files


def test_defaults_are_the_pretraining_runs():
    from configs import default

    data = default.get_config().data
    assert (TASK.input, TASK.input_format, TASK.text_column, TASK.eval_fraction,
            TASK.prepare_seed) == (data.input, data.input_format, data.text_column,
                                   data.eval_fraction, data.prepare_seed)


def test_deterministic(built, tmp_path):
    out, counts, _ = built
    assert cloze.build(TASK, str(tmp_path)) == counts
    for name in ("train.json", "dev.json"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


def test_questions_and_answers(built):
    out, counts, files = built
    for name, dataset in files.items():
        examples = squad.read_squad(str(out / f"{name}.json"))  # answers at answer_start
        assert len(examples) == counts[f"{name}_questions"]
        for article in dataset["data"]:
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    (answer,) = qa["answers"]
                    text, start = answer["text"], answer["answer_start"]
                    assert context[start:].startswith(text)
                    end = start + len(text)
                    assert not context[start - 1:start].isalpha()  # a whole word
                    assert not context[end:end + 1].isalpha()
                    assert text.lower() not in WORDS.findall(context[end:].lower())  # the last
                    assert qa["question"].count(TASK.placeholder) == 1
                    assert text.lower() not in WORDS.findall(qa["question"].lower())
    assert counts["train_questions"] > 2000 and counts["dev_questions"] > 500


def test_chapters_are_held_out_and_disjoint(built):
    _, counts, files = built
    held = books.held_out_documents(TASK)
    titles = {name: {a["title"] for a in files[name]["data"]} for name in files}
    assert not titles["train"] & titles["dev"]
    assert len(titles["train"] | titles["dev"]) == sum(len(d) for d in held.values()) == 55
    for name, dataset in files.items():
        for article in dataset["data"]:
            book, index = article["title"].rsplit("-", 1)
            doc = held[book][int(index)]
            assert split.is_held_out(doc, TASK.eval_fraction, TASK.prepare_seed)
            text = " ".join(doc)
            for paragraph in article["paragraphs"]:
                assert paragraph["context"] in text  # consecutive sentences of this chapter
                qa = paragraph["qas"][0]
                question = qa["question"].replace(TASK.placeholder, "\0")
                blanked = re.escape(question).replace("\0", WORDS.pattern)
                assert any(re.fullmatch(blanked, sentence) for sentence in doc)


def test_baselines_are_low(built):
    out, _, _ = built
    dev = squad.read_squad(str(out / "dev.json"))
    scores = cloze.baselines(dev, TASK)
    assert 1.0 < scores["random"] < 5.0 and scores["random"] < scores["frequent"] < 20.0
