"""The cloze task: find, in a passage of a novel, the word blanked out of the next sentence.

A span-extraction task in SQuAD v1.1's format (train.json, dev.json), so that the SQuAD
runner trains and scores it (flax_bert.tasks.squad.data), built like the book task
(flax_bert.tasks.books) from the chapters that pretraining holds out
(flax_bert.data.split.is_held_out with the pretraining run's data.eval_fraction and
data.prepare_seed): a pretrained encoder has seen none of its text. Per book, the
`dev_fraction` of those chapters with the smallest hash are the dev set, the rest train.

A question (in the spirit of the Children's Book Test, Hill et al. 2016): the sentence
that follows a passage, with one word replaced by `placeholder`. The passage is the
`min_sentences`..`max_sentences` sentences before it (the count drawn per question), less
its earliest sentences while it has more than `max_passage_words` words. The blanked word
is a candidate: letters only, at least `min_word_length` long, not a stop word, once in
the sentence, among its first `max_blank_position` words, and also in the passage; up to
`blanks_per_sentence` of them a sentence give one question each. The answer is the word's
last occurrence in the passage (any case). Deterministic: each chapter's draws are seeded
by `seed` and the chapter's hash. The settings (`task`) are config.cloze of
configs/squad.py.
"""

from __future__ import annotations

import collections
import os
import re
from typing import Any

import numpy as np

from flax_bert import files
from flax_bert.data import split
from flax_bert.tasks import books
from flax_bert.tasks.squad import data as squad

TRAIN_FILE, DEV_FILE = "train.json", "dev.json"
WORD = re.compile(r"[^\W\d_]+")  # a run of letters
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before
being below between both but by can cannot could did do does doing done down during each
even ever every few for from further had has have having he her here hers herself him
himself his how however i if in into is it its itself just let may me might more most much
must my myself never no nor not now of off on once one only or other ought our ours
ourselves out over own quite said same say says shall she should since so some still such
than that the their theirs them themselves then there these they this those though through
thus till to too under unless until up upon us very was we well were what when where
whether which while who whom whose why will with would yet you your yours yourself
yourselves mr mrs miss sir lady madam
""".split())


def _words(text: str) -> list[re.Match]:
    return list(WORD.finditer(text))


def is_candidate(word: str, min_word_length: int) -> bool:
    """A word that may be blanked (and a baseline may guess): letters, long enough, not a
    stop word."""
    return len(word) >= min_word_length and word.lower() not in STOPWORDS


def _passage(doc: list[str], i: int, task: Any, rng: np.random.Generator) -> str | None:
    """The sentences before doc[i] that make its passage, or None if too few fit."""
    n = int(rng.integers(task.min_sentences, task.max_sentences + 1))
    sentences = doc[max(0, i - n):i]
    while sentences and sum(len(s.split()) for s in sentences) > task.max_passage_words:
        sentences = sentences[1:]
    return " ".join(sentences) if len(sentences) >= task.min_passage_sentences else None


def chapter_questions(doc: list[str], name: str, task: Any) -> list[dict]:
    """SQuAD paragraphs ({"context", "qas"}) of one chapter, its questions' ids prefixed
    with `name`."""
    rng = np.random.default_rng([task.seed, int(split.document_hash(doc, task.seed) * 2**32)])
    paragraphs = []
    for i in range(1, len(doc)):
        passage = _passage(doc, i, task, rng)
        if passage is None:
            continue
        in_passage = collections.defaultdict(list)  # lower-cased word -> its matches
        for m in _words(passage):
            in_passage[m.group().lower()].append(m)
        sentence = _words(doc[i])
        counts = collections.Counter(m.group().lower() for m in sentence)
        candidates = [m for m in sentence if counts[m.group().lower()] == 1
                      and is_candidate(m.group(), task.min_word_length)
                      and m.group().lower() in in_passage
                      and len(doc[i][:m.start()].split()) < task.max_blank_position]
        chosen = rng.permutation(len(candidates))[:task.blanks_per_sentence]
        qas = []
        for k in sorted(chosen):
            blank = candidates[k]
            answer = in_passage[blank.group().lower()][-1]
            question = doc[i][:blank.start()] + task.placeholder + doc[i][blank.end():]
            qas.append({"id": f"{name}-{i}-{blank.group().lower()}", "question": question,
                        "answers": [{"text": answer.group(), "answer_start": answer.start()}]})
        if qas:
            paragraphs.append({"context": passage, "qas": qas})
    return paragraphs


def build(task: Any, out_dir: str) -> dict[str, int]:
    """Writes out_dir/train.json and dev.json (SQuAD v1.1 format, one article a chapter);
    returns the number of questions, passages and chapters of each."""
    held = books.held_out_documents(task)
    splits = books.split_documents(held, task.dev_fraction, task.prepare_seed + books.SPLIT_SALT)
    position = {id(doc): i for docs in held.values() for i, doc in enumerate(docs)}
    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    for name, filename in (("train", TRAIN_FILE), ("test", DEV_FILE)):
        articles = []
        for book, doc in splits[name]:
            title = f"{book}-{position[id(doc)]}"  # the book's n-th held-out chapter, from 0
            articles.append({"title": title, "paragraphs": chapter_questions(doc, title, task)})
        files.write_json(os.path.join(out_dir, filename), {"version": "1.1", "data": articles},
                         ensure_ascii=False)
        key = "dev" if name == "test" else name
        paragraphs = [p for a in articles for p in a["paragraphs"]]
        counts[f"{key}_questions"] = sum(len(p["qas"]) for p in paragraphs)
        counts[f"{key}_passages"] = len(paragraphs)
        counts[f"{key}_chapters"] = len(articles)
    return counts


def baselines(examples: list[squad.SquadExample], task: Any) -> dict[str, float]:
    """Exact match (percent) of two guesses that read no model: `frequent`, the passage's
    most frequent candidate word that is not in the question (ties: the last); `random`,
    the expected score of a uniformly random such word."""
    frequent = random = 0.0
    for example in examples:
        in_question = {m.group().lower() for m in _words(example.question)}
        words = [m.group().lower() for m in _words(example.context)
                 if is_candidate(m.group(), task.min_word_length)
                 and m.group().lower() not in in_question]
        counts = collections.Counter(words)
        gold = example.answers[0].text.lower()
        if counts:
            frequent += max(reversed(words), key=counts.__getitem__) == gold
            random += (gold in counts) / len(counts)
    return {"frequent": 100.0 * frequent / len(examples), "random": 100.0 * random / len(examples)}
